//! `--format junit`: JUnit XML, as GitLab's test reports and the common
//! GitHub reporting actions read it (schema: `docs/junit.xsd`).
//!
//! One `<testsuite>` per process; one `<testcase>` per root task group (root
//! tasks, spawned outside any task, grouped by name and spawn location,
//! with every task spawned under them: a test of a test harness whose tasks
//! are named after their tests is one testcase per test). Each finding is a
//! `<failure>` of the testcase of its first task's root group (findings
//! without a task, like dropped events, go to a testcase named `process`),
//! with the finding's causal trace or await tree in the body. The report's
//! warnings about its inputs (a process that did not end, a recording cut
//! short) go to a last testsuite, `awaitscope input`, as its `system-err`;
//! an input unreadable past its header is an `<error>` there. Deterministic:
//! no wall-clock time of the report itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use awaitscope_wire::ProcessKey;

use super::timeline::{RootGroup, WalkSummary};
use super::xml_escape;
use crate::detect::Finding;
use crate::units::fmt_ns_precise;
use crate::Report;

/// Name of the testcase of findings without a task.
pub const PROCESS_CASE: &str = "process";

fn secs(ns: u64) -> String {
    format!("{:.6}", ns as f64 / 1e9)
}

pub use crate::units::iso8601;

/// The body of a finding's failure: what, where, and its trace (innermost
/// first, as every view shows it: [`crate::trace`]).
pub fn failure_body(f: &Finding) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", f.message);
    let _ = writeln!(s, "kind: {} ({:?})", f.kind, f.severity);
    if let Some(l) = &f.location {
        let _ = writeln!(s, "at: {l}");
    }
    let _ = writeln!(s, "occurrences: {}", f.count);
    if let Some(w) = f.worst_ns {
        let _ = writeln!(s, "worst: {}", fmt_ns_precise(w));
    }
    let _ = writeln!(
        s,
        "seen: {} .. {} after process start",
        fmt_ns_precise(f.first_seen),
        fmt_ns_precise(f.last_seen)
    );
    for t in &f.tasks {
        let _ = write!(s, "task: {}#{}", t.name.as_deref().unwrap_or(""), t.id);
        if let Some(l) = &t.spawned_at {
            let _ = write!(s, " spawned at {l}");
        }
        s.push('\n');
    }
    crate::trace::write_block(&mut s, &f.trace, 0);
    s
}

fn task_group(t: &crate::detect::FindingTask) -> String {
    let loc = t
        .spawned_at
        .as_ref()
        .map_or_else(|| "?".to_string(), |l| l.to_string());
    match &t.name {
        Some(n) => format!("{n}@{loc}"),
        None => loc,
    }
}

/// Renders the JUnit document.
pub fn render(report: &Report, walk: &WalkSummary) -> String {
    let mut suites = String::new();
    let (mut all_tests, mut all_failures, mut all_time) = (0u64, 0u64, 0u64);
    for p in &report.processes {
        let key = ProcessKey {
            pid: p.pid,
            start_unix_ns: p.start_unix_ns,
        };
        let mut cases: BTreeMap<String, (Option<RootGroup>, Vec<&Finding>)> = walk
            .root_groups
            .range((key, String::new())..)
            .take_while(|((k, _), _)| *k == key)
            .map(|((_, g), rg)| (g.clone(), (Some(rg.clone()), Vec::new())))
            .collect();
        for f in report
            .findings
            .iter()
            .filter(|f| f.pid == p.pid && f.process_start_unix_ns == p.start_unix_ns)
        {
            let group = match f.tasks.first() {
                Some(t) => walk
                    .finding_roots
                    .get(&(key, t.id))
                    .cloned()
                    .unwrap_or_else(|| task_group(t)),
                None => PROCESS_CASE.to_string(),
            };
            cases.entry(group).or_default().1.push(f);
        }
        let tests = cases.len() as u64;
        let failures: u64 = cases.values().filter(|(_, f)| !f.is_empty()).count() as u64;
        all_tests += tests;
        all_failures += failures;
        all_time = all_time.max(p.now_ns);
        let class = format!("awaitscope.{}", p.name.replace(['.', ' '], "_"));
        let _ = writeln!(
            suites,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{}\" timestamp=\"{}\" hostname=\"localhost\">",
            xml_escape(&format!("{} (pid {})", p.name, p.pid)),
            secs(p.now_ns),
            iso8601(p.start_unix_ns)
        );
        suites.push_str("    <properties>\n");
        let mut props = vec![
            ("pid", p.pid.to_string()),
            ("start_unix_ns", p.start_unix_ns.to_string()),
            ("cmdline", p.cmdline.join(" ")),
            ("events", p.events.to_string()),
        ];
        if let Some(v) = &p.producer_version {
            props.push(("producer_version", v.clone()));
        }
        for (n, v) in props {
            let _ = writeln!(
                suites,
                "      <property name=\"{n}\" value=\"{}\"/>",
                xml_escape(&v)
            );
        }
        suites.push_str("    </properties>\n");
        for (name, (rg, findings)) in &cases {
            let time = rg
                .as_ref()
                .map_or(0, |g| g.last_ns.saturating_sub(g.first_ns));
            let _ = write!(
                suites,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
                xml_escape(name),
                xml_escape(&class),
                secs(time)
            );
            if findings.is_empty() && rg.is_none() {
                suites.push_str("/>\n");
                continue;
            }
            suites.push_str(">\n");
            for f in findings {
                let msg = format!(
                    "[{}] {}{}",
                    f.kind,
                    f.message,
                    f.location
                        .as_ref()
                        .map_or(String::new(), |l| format!(" at {l}"))
                );
                let _ = writeln!(
                    suites,
                    "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                    xml_escape(&msg),
                    f.kind,
                    xml_escape(&failure_body(f))
                );
            }
            if let Some(g) = rg {
                let _ = writeln!(
                    suites,
                    "      <system-out>{}</system-out>",
                    xml_escape(&format!(
                        "{} task(s) ({} root): {} completed, {} cancelled, {} panicked, {} still open",
                        g.tasks,
                        g.roots,
                        g.completed,
                        g.cancelled,
                        g.panicked,
                        g.tasks
                            .saturating_sub(g.completed + g.cancelled + g.panicked)
                    ))
                );
            }
            suites.push_str("    </testcase>\n");
        }
        suites.push_str("  </testsuite>\n");
    }
    let mut all_errors = 0u64;
    if !report.warnings.is_empty() {
        let damaged: Vec<_> = report.damaged_inputs().collect();
        let errors = u64::from(!damaged.is_empty());
        all_tests += 1;
        all_errors += errors;
        let _ = writeln!(
            suites,
            "  <testsuite name=\"awaitscope input\" tests=\"1\" failures=\"0\" errors=\"{errors}\" skipped=\"0\">"
        );
        if damaged.is_empty() {
            suites.push_str("    <testcase name=\"input\" classname=\"awaitscope.input\"/>\n");
        } else {
            suites.push_str("    <testcase name=\"input\" classname=\"awaitscope.input\">\n");
            for i in damaged {
                let msg = format!(
                    "{}: damaged, the rest of the file unread: {}",
                    i.path,
                    i.error.as_deref().unwrap_or("")
                );
                let _ = writeln!(
                    suites,
                    "      <error message=\"{}\" type=\"damaged_input\"/>",
                    xml_escape(&msg)
                );
            }
            suites.push_str("    </testcase>\n");
        }
        let _ = writeln!(
            suites,
            "    <system-err>{}</system-err>",
            xml_escape(&report.warnings.join("\n"))
        );
        suites.push_str("  </testsuite>\n");
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"awaitscope\" tests=\"{all_tests}\" failures=\"{all_failures}\" errors=\"{all_errors}\" time=\"{}\">",
        secs(all_time)
    );
    out.push_str(&suites);
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00");
        assert_eq!(iso8601(1_700_000_000_000_000_000), "2023-11-14T22:13:20");
        assert_eq!(iso8601(951_782_400_000_000_000), "2000-02-29T00:00:00");
    }
}
