//! `--format markdown`: a summary for a CI page (GitHub's
//! `$GITHUB_STEP_SUMMARY`, a GitLab or any Markdown viewer).
//!
//! Sections: run metadata, tasks by end state, findings by kind with the top
//! offenders (a compact table) and, under it, their traces as short code
//! blocks (innermost first, as every view shows them: [`crate::trace`]),
//! the slowest awaits (p50/p95/p99 per await point), links to the other
//! artifacts. The summary stays under
//! [`MAX_BYTES`] (GitHub takes at most 1 MiB per step summary): past it, it is
//! cut at a line and ends with a note saying so. Deterministic: the same
//! recording gives the same bytes (nothing depends on the time of the report
//! or on hash order).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::timeline::WalkSummary;
use crate::detect::{Finding, FindingKind, Severity};
use crate::trace;
use crate::units::fmt_ns_precise;
use crate::Report;

/// Default size cap: 1,000,000 bytes, under GitHub's 1 MiB (1,048,576).
pub const MAX_BYTES: usize = 1_000_000;
/// Findings listed per kind.
pub const TOP_PER_KIND: usize = 5;
/// Traces shown per kind.
pub const TRACES_PER_KIND: usize = 3;
/// Most lines of one trace shown (the JSON report has all of them).
pub const TRACE_LINES: usize = 12;
/// Await points listed.
pub const TOP_AWAITS: usize = 20;

/// What the Markdown summary may hold: its size cap and the links to the
/// other files of the same run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size cap in bytes.
    pub max_bytes: usize,
    /// Other artifacts to link to: (label, relative path or URL).
    pub artifacts: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_bytes: MAX_BYTES,
            artifacts: Vec::new(),
        }
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn code(s: &str) -> String {
    format!("`{}`", cell(&s.replace('`', "'")))
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// Renders the summary.
pub fn render(report: &Report, walk: &WalkSummary, opts: &Options) -> String {
    let mut s = String::new();
    s.push_str("# awaitscope report\n\n");
    let n = report.findings.len();
    if n == 0 {
        s.push_str("**No findings.**\n\n");
    } else {
        let by = |sev| report.findings.iter().filter(|f| f.severity == sev).count();
        let _ = writeln!(
            s,
            "**{n} finding(s)**: {} error, {} warning, {} info.\n",
            by(Severity::Error),
            by(Severity::Warning),
            by(Severity::Info)
        );
    }

    // Run metadata.
    s.push_str("## Run\n\n| | |\n| --- | --- |\n");
    let _ = writeln!(s, "| generator | {} |", cell(&report.generator));
    for i in &report.inputs {
        let _ = writeln!(
            s,
            "| input | {} ({} frames, {} bytes{}) |",
            code(&i.path),
            i.frames,
            i.bytes,
            if i.truncated {
                ", truncated"
            } else if i.damaged() {
                ", damaged"
            } else {
                ""
            }
        );
    }
    for p in &report.processes {
        let _ = writeln!(
            s,
            "| process | {} pid {}, started {} UTC, ran {}, {} events{} |",
            code(&p.name),
            p.pid,
            super::junit::iso8601(p.start_unix_ns),
            fmt_ns_precise(p.now_ns),
            p.events,
            if p.cmdline.is_empty() {
                String::new()
            } else {
                format!(", {}", code(&p.cmdline.join(" ")))
            }
        );
        if p.source == crate::model::process::SOURCE_CONSOLE {
            // What its findings could not see.
            for n in &p.notes {
                let _ = writeln!(s, "| note | {} |", cell(n));
            }
        }
    }
    let _ = writeln!(s, "| dropped events | {} |", report.dropped.total);
    s.push('\n');
    for w in &report.warnings {
        let _ = writeln!(s, "> warning: {}\n", cell(w));
    }

    // Tasks by end state.
    let mut states: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &report.tasks {
        *states.entry(t.state).or_default() += 1;
    }
    for p in &report.processes {
        for g in &p.summary {
            *states.entry("completed").or_default() += g.completed;
            *states.entry("cancelled").or_default() += g.cancelled;
            *states.entry("panicked").or_default() += g.panicked;
        }
    }
    s.push_str("## Tasks by end state\n\n| state | tasks |\n| --- | ---: |\n");
    for st in [
        "completed",
        "cancelled",
        "panicked",
        "idle",
        "scheduled",
        "running",
    ] {
        let c = states.get(st).copied().unwrap_or(0);
        let label = match st {
            "idle" | "scheduled" | "running" => format!("{st} (still open at the end)"),
            _ => st.to_string(),
        };
        let _ = writeln!(s, "| {label} | {c} |");
    }
    s.push('\n');

    // Findings by kind.
    if n > 0 {
        s.push_str("## Findings\n\n");
        let mut kinds: BTreeMap<(std::cmp::Reverse<Severity>, FindingKind), Vec<&Finding>> =
            BTreeMap::new();
        for f in &report.findings {
            kinds
                .entry((std::cmp::Reverse(f.severity), f.kind))
                .or_default()
                .push(f);
        }
        for ((sev, kind), mut list) in kinds {
            list.sort_by(|a, b| {
                b.count
                    .cmp(&a.count)
                    .then(b.worst_ns.cmp(&a.worst_ns))
                    .then(a.message.cmp(&b.message))
            });
            let total: u64 = list.iter().map(|f| f.count).sum();
            let _ = writeln!(
                s,
                "### `{kind}` ({}): {} finding(s), {total} occurrence(s)\n",
                severity(sev.0),
                list.len()
            );
            s.push_str("| # | where | task | count | worst | message |\n| ---: | --- | --- | ---: | ---: | --- |\n");
            for (i, f) in list.iter().take(TOP_PER_KIND).enumerate() {
                let task = f.tasks.first().map_or(String::new(), |t| {
                    format!("{}#{}", t.name.as_deref().unwrap_or(""), t.id)
                });
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    i + 1,
                    f.location
                        .as_ref()
                        .map_or("?".to_string(), |l| code(&l.to_string())),
                    cell(&task),
                    f.count,
                    f.worst_ns.map_or(String::new(), fmt_ns_precise),
                    cell(&f.message)
                );
            }
            if list.len() > TOP_PER_KIND {
                let _ = writeln!(
                    s,
                    "\n_… and {} more (see the JSON report)._",
                    list.len() - TOP_PER_KIND
                );
            }
            s.push('\n');
            for (i, f) in list
                .iter()
                .take(TRACES_PER_KIND)
                .enumerate()
                .filter(|(_, f)| !f.trace.is_empty())
            {
                let _ = writeln!(s, "**#{}** {}:\n\n```text", i + 1, trace::HEADING);
                for line in trace::clipped(&f.trace, TRACE_LINES) {
                    let _ = writeln!(s, "{}", line.replace("```", "'''"));
                }
                s.push_str("```\n\n");
            }
        }
    }

    // Slowest awaits.
    let mut points: Vec<_> = walk.await_points.values().collect();
    points.sort_by(|a, b| {
        b.hist
            .value_at_quantile(0.99)
            .cmp(&a.hist.value_at_quantile(0.99))
            .then(a.point.cmp(&b.point))
    });
    s.push_str("## Slowest awaits\n\n");
    if points.is_empty() {
        s.push_str("No await points recorded.\n\n");
    } else {
        s.push_str("| await point | awaits | p50 | p95 | p99 | max |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
        for p in points.iter().take(TOP_AWAITS) {
            let h = &p.hist;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                code(&p.point),
                p.count,
                fmt_ns_precise(h.value_at_quantile(0.5)),
                fmt_ns_precise(h.value_at_quantile(0.95)),
                fmt_ns_precise(h.value_at_quantile(0.99)),
                fmt_ns_precise(h.max())
            );
        }
        if points.len() > TOP_AWAITS {
            let _ = writeln!(
                s,
                "\n_{} await points in all; the {TOP_AWAITS} slowest by p99._",
                points.len()
            );
        }
        s.push('\n');
    }

    // Artifacts.
    if !opts.artifacts.is_empty() {
        s.push_str("## Artifacts\n\n");
        for (label, link) in &opts.artifacts {
            let _ = writeln!(s, "- [{}]({})", cell(label), link.replace(' ', "%20"));
        }
        s.push('\n');
    }
    truncate(s, opts.max_bytes)
}

/// Cuts `s` at a line boundary to fit in `max` bytes, with a note.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let note = format!(
        "\n\n> **Truncated**: this summary was cut to stay under {max} bytes (GitHub's step summary takes at most 1 MiB). The JSON report has everything.\n"
    );
    let mut cut = max.saturating_sub(note.len() + 16);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    if let Some(nl) = s[..cut].rfind('\n') {
        cut = nl;
    }
    s.truncate(cut);
    // Close an open code fence or details block.
    if s.matches("```").count() % 2 == 1 {
        s.push_str("\n```");
    }
    if s.matches("<details>").count() > s.matches("</details>").count() {
        s.push_str("\n\n</details>");
    }
    s.push_str(&note);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_fits_and_says_so() {
        let big = "line\n".repeat(100_000);
        let t = truncate(big, 10_000);
        assert!(t.len() <= 10_000, "{}", t.len());
        assert!(t.contains("Truncated"));
        let small = truncate("ok\n".into(), 10_000);
        assert_eq!(small, "ok\n");
        let fenced = truncate(format!("```text\n{}", "x\n".repeat(10_000)), 1000);
        assert_eq!(fenced.matches("```").count() % 2, 0);
    }
}
