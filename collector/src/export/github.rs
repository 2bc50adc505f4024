//! `--format github`: GitHub Actions workflow commands annotating the
//! culprits' source locations, at most [`MAX_ANNOTATIONS`] (GitHub shows 10
//! error annotations per step), e.g.
//!
//! ```text
//! ::error file=src/main.rs,line=42,title=awaitscope deadlock::2 tasks wait on each other...%0Atrace (innermost first):%0A  ...
//! ```
//!
//! The message is the finding's message and its trace (innermost first, as
//! every view shows it: [`crate::trace`]), line breaks escaped as `%0A`;
//! GitHub shows it under the annotation on the finding's `location`.
//!
//! Findings with a source location only, errors first, then by occurrences;
//! informational kinds are `::notice` annotations ([`command`]).
//! Absolute paths under the current directory are made relative to it
//! (GitHub wants paths relative to the repository root); locations in
//! dependencies (`.cargo/registry`, `/rustc/`) come last.
//!
//! The report's warnings (a recording that ends without its process's
//! goodbye, one cut short) follow as `::warning` annotations without a
//! file, at most [`MAX_ANNOTATIONS`]; an input unreadable past its header
//! is an `::error`.

use std::fmt::Write as _;
use std::path::Path;

use crate::detect::{Finding, Severity};
use crate::Report;

/// Most annotations written.
pub const MAX_ANNOTATIONS: usize = 10;

/// Escapes the message of a workflow command.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property of a workflow command.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// Whether `file` is not the program's own code (a dependency or the
/// standard library, absolute or shortened for display).
fn foreign(file: &str) -> bool {
    file.contains("/.cargo/registry/")
        || file.starts_with("/rustc/")
        || file.contains("/.rustup/")
        || awaitscope_wire::paths::origin(file) != awaitscope_wire::paths::PathOrigin::Local
}

/// The workflow command of a finding: `notice` for an informational kind
/// (a poll that only waited for a CPU is not the code's fault and must not
/// read as an error on a busy runner), `error` for the others.
pub fn command(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "notice",
        Severity::Warning | Severity::Error => "error",
    }
}

/// `file` relative to `root` when under it.
pub fn relative(file: &str, root: Option<&Path>) -> String {
    if let Some(root) = root {
        if let Ok(rel) = Path::new(file).strip_prefix(root) {
            return rel.display().to_string();
        }
    }
    file.to_string()
}

/// Renders the annotations; `root` is the repository root for relative
/// paths (usually the current directory).
pub fn render(report: &Report, root: Option<&Path>) -> String {
    let mut list: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.location.is_some())
        .collect();
    list.sort_by(|a, b| {
        let fa = foreign(&a.location.as_ref().expect("filtered").file);
        let fb = foreign(&b.location.as_ref().expect("filtered").file);
        fa.cmp(&fb)
            .then(b.severity.cmp(&a.severity))
            .then(b.count.cmp(&a.count))
            .then(a.message.cmp(&b.message))
    });
    let mut out = String::new();
    for f in list.into_iter().take(MAX_ANNOTATIONS) {
        let l = f.location.as_ref().expect("filtered");
        let mut msg = f.message.clone();
        if f.count > 1 {
            let _ = write!(msg, " ({} occurrences)", f.count);
        }
        if !f.trace.is_empty() {
            msg.push('\n');
            crate::trace::write_block(&mut msg, &f.trace, 0);
            msg.pop();
        }
        let col = l.col.map_or(String::new(), |c| format!(",col={c}"));
        let _ = writeln!(
            out,
            "::{} file={},line={}{col},title={}::{}",
            command(f.severity),
            escape_property(&relative(&l.file, root)),
            l.line,
            escape_property(&format!("awaitscope {}", f.kind)),
            escape_data(&msg)
        );
    }
    for w in report.warnings.iter().take(MAX_ANNOTATIONS) {
        let damaged = report
            .damaged_inputs()
            .any(|i| w.starts_with(&format!("{}: damaged", i.path)));
        let _ = writeln!(
            out,
            "::{} title={}::{}",
            if damaged { "error" } else { "warning" },
            escape_property("awaitscope input"),
            escape_data(w)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_relativizes() {
        assert_eq!(escape_data("a%b\nc"), "a%25b%0Ac");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
        assert_eq!(
            relative("/repo/src/main.rs", Some(Path::new("/repo"))),
            "src/main.rs"
        );
        assert_eq!(
            relative("src/main.rs", Some(Path::new("/repo"))),
            "src/main.rs"
        );
    }
}
