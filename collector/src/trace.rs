//! How every view shows a finding's trace: the text report, Markdown,
//! JUnit, GitHub annotations, the test guard's failure message and the TUI
//! all print [`Finding::trace`](crate::Finding::trace) the same way, with
//! the same heading, one line per step, in the order the detectors gave it
//! (innermost first, like a backtrace; views never re-sort it). Lines that
//! fold frames (`… 14 runtime frames`) are part of the trace and shown as
//! they are; [`is_fold`] tells a view which ones to dim.

use std::borrow::Cow;

/// The heading over a finding's trace, in every view.
pub const HEADING: &str = "trace (innermost first)";

/// Whether `line` stands for frames folded away (`… 14 runtime frames`)
/// rather than naming a function.
pub fn is_fold(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with('…') || l.starts_with("...")
}

/// `line` on one line: a line break or other control character (a trace
/// names functions and paths, but span names are the program's to choose)
/// becomes a space, so one step stays one line in a text view.
pub fn one_line(line: &str) -> Cow<'_, str> {
    if line.chars().any(char::is_control) {
        Cow::Owned(
            line.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(line)
    }
}

/// At most `max` steps of `trace` (`max` ≥ 1): when it is longer, the first
/// `max - 1` and a last line saying how many more steps the full trace (the
/// JSON report) has.
pub fn clipped(trace: &[String], max: usize) -> Vec<Cow<'_, str>> {
    let max = max.max(1);
    if trace.len() <= max {
        return trace.iter().map(|l| one_line(l)).collect();
    }
    let mut out: Vec<Cow<'_, str>> = trace[..max - 1].iter().map(|l| one_line(l)).collect();
    out.push(Cow::Owned(format!(
        "… {} more line(s) of trace",
        trace.len() - (max - 1)
    )));
    out
}

/// Appends `trace` as a text block: the heading, then one step a line,
/// indented by `indent` spaces (the heading) and `indent + 2` (the steps).
/// Appends nothing for an empty trace.
pub fn write_block(out: &mut String, trace: &[String], indent: usize) {
    if trace.is_empty() {
        return;
    }
    out.extend(std::iter::repeat_n(' ', indent));
    out.push_str(HEADING);
    out.push_str(":\n");
    for line in trace {
        out.extend(std::iter::repeat_n(' ', indent + 2));
        out.push_str(&one_line(line));
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn block_keeps_the_order_and_one_step_a_line() {
        let trace = t(&[
            "hash_password @ examples/examples/blocking.rs:40",
            "… 14 runtime frames",
            "charge_card @ examples/examples/blocking.rs:31\nforged",
        ]);
        let mut s = String::new();
        write_block(&mut s, &trace, 2);
        assert_eq!(
            s,
            "  trace (innermost first):\n    hash_password @ examples/examples/blocking.rs:40\n    … 14 runtime frames\n    charge_card @ examples/examples/blocking.rs:31 forged\n"
        );
        let mut empty = String::new();
        write_block(&mut empty, &[], 2);
        assert!(empty.is_empty());
    }

    #[test]
    fn folds_are_told_apart() {
        assert!(is_fold("… 14 runtime frames"));
        assert!(is_fold("  ... 3 frames"));
        assert!(!is_fold("hash_password @ src/lib.rs:3"));
    }

    #[test]
    fn clipping_says_how_much_is_left_out() {
        let trace = t(&["a", "b", "c", "d"]);
        assert_eq!(clipped(&trace, 4), vec!["a", "b", "c", "d"]);
        assert_eq!(
            clipped(&trace, 3),
            vec!["a", "b", "… 2 more line(s) of trace"]
        );
        assert_eq!(clipped(&trace, 0), vec!["… 4 more line(s) of trace"]);
    }
}
