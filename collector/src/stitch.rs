//! Causal traces across processes: a consumer's trace that ends at a
//! context read from another process's `traceparent` (the line
//! [`REMOTE_HANDOFF_PREFIX`]`<traceparent> --`) goes on in the process that
//! sent it, when the model holds that process too (its
//! [`Handover`](awaitscope_wire::Handover) with the same ids):
//!
//! ```text
//! 0: worker::send_welcome_email{user=7} at examples/worker.rs:31 (task 3 "job")
//! -- handed over through a queue from process api (pid 4242), task 7 "handle_signup" --
//! 1: api::handle_signup{user=7} at examples/api.rs:20 (task 7 "handle_signup")
//! -- task 7 "handle_signup" spawned at examples/api.rs:52 --
//! ```
//!
//! The lines of the producer's part are its own causal trace, numbered on
//! from the consumer's. Done on the findings' traces when they are made
//! and again when a process's handovers arrive later (a recording read
//! after the consumer's, a producer whose frames come in late).

use awaitscope_wire::names::REMOTE_HANDOFF_PREFIX;

use crate::model::handover::{SentContext, W3cIds};
use crate::model::Process;

/// Most processes one trace is followed through (a chain of queues).
const MAX_HOPS: usize = 8;

/// The ids of a `traceparent` line of a trace, if `line` is one.
pub fn remote_ids(line: &str) -> Option<W3cIds> {
    let rest = line.trim_start().strip_prefix(REMOTE_HANDOFF_PREFIX)?;
    let tp = rest.strip_suffix(" --")?.trim();
    parse_traceparent(tp)
}

/// The trace and parent ids of a `traceparent` (as the producer's
/// awaitscope wrote it: lowercase, version `00`); `None` if malformed.
fn parse_traceparent(tp: &str) -> Option<W3cIds> {
    let b = tp.as_bytes();
    if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let hex = |d: &[u8]| -> Option<u8> {
        let v = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
        Some(v(d[0])? << 4 | v(d[1])?)
    };
    let mut trace = [0u8; 16];
    for (i, t) in trace.iter_mut().enumerate() {
        *t = hex(&b[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, s) in span.iter_mut().enumerate() {
        *s = hex(&b[36 + 2 * i..38 + 2 * i])?;
    }
    Some((trace, span))
}

/// Whether `trace` has a hand-over from another process still to join.
pub fn needs_stitching(trace: &[String]) -> bool {
    trace.iter().any(|l| remote_ids(l).is_some())
}

/// Finds who sent the context with `ids` among `processes`.
fn sender<'a>(
    mut processes: impl Iterator<Item = &'a Process>,
    ids: &W3cIds,
) -> Option<(&'a Process, &'a SentContext)> {
    processes.find_map(|p| p.handovers.get(ids).map(|s| (p, s)))
}

/// The line that stands for the boundary: who sent the context.
fn boundary(p: &Process, sent: &SentContext) -> String {
    let mut s = format!(
        "-- handed over through a queue from process {} (pid {})",
        p.name(),
        p.key.pid
    );
    if let Some(t) = sent.task {
        s.push_str(&format!(", task {}", t.0));
        if let Some(n) = &sent.task_name {
            s.push_str(&format!(" {n:?}"));
        }
    }
    s.push_str(" --");
    s
}

/// The process (pid) and task a joined trace's boundary line names as the
/// sender of its context, if `line` is such a line (as [`stitch`] writes
/// it).
pub fn sent_from(line: &str) -> Option<(u32, Option<u64>)> {
    let rest = line
        .trim_start()
        .strip_prefix("-- handed over through a queue from process ")?;
    let (_, after) = rest.rsplit_once(" (pid ")?;
    let (pid, after) = after.split_once(')')?;
    let pid = pid.parse().ok()?;
    let task = after
        .strip_prefix(", task ")
        .and_then(|t| t.split([' ', ',']).next())
        .and_then(|t| t.parse().ok());
    Some((pid, task))
}

/// The number of a numbered trace line (`7: app::f at ...`).
fn number(line: &str) -> Option<(u64, &str)> {
    let (n, rest) = line.split_once(": ")?;
    Some((n.parse().ok()?, rest))
}

/// `trace` continued in the processes that sent its contexts, or `None`
/// when it has no hand-over whose sender `processes` holds.
pub fn stitch<'a, F, I>(trace: &[String], processes: F) -> Option<Vec<String>>
where
    F: Fn() -> I,
    I: Iterator<Item = &'a Process>,
{
    let mut out: Vec<String> = trace.to_vec();
    let mut joined = false;
    for _ in 0..MAX_HOPS {
        let Some((at, ids)) = out
            .iter()
            .enumerate()
            .find_map(|(i, l)| remote_ids(l).map(|ids| (i, ids)))
        else {
            break;
        };
        let Some((p, sent)) = sender(processes(), &ids) else {
            break;
        };
        joined = true;
        let next = out[..at]
            .iter()
            .rev()
            .find_map(|l| number(l))
            .map_or(0, |(n, _)| n + 1);
        let mut rest: Vec<String> = vec![boundary(p, sent)];
        let mut n = next;
        for l in &sent.trace {
            match number(l) {
                Some((_, body)) => {
                    rest.push(format!("{n}: {body}"));
                    n += 1;
                }
                None => rest.push(l.clone()),
            }
        }
        // What followed the hand-over line in the consumer's trace (nothing,
        // for a trace awaitscope made) stays after the producer's part.
        let tail: Vec<String> = out.drain(at..).skip(1).collect();
        out.extend(rest);
        out.extend(tail);
    }
    joined.then_some(out)
}

#[cfg(test)]
mod tests {
    use awaitscope_wire::{Handover, ProcessInfo, ProcessKey, SpanId};

    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn producer() -> Process {
        let mut p = Process::new(ProcessKey {
            pid: 4242,
            start_unix_ns: 1,
        });
        p.hello(&ProcessInfo {
            name: "api".into(),
            cmdline: vec![],
            producer_version: "0.1.0".into(),
            tokio_unstable: true,
            reconnect: false,
            token: None,
        });
        let (trace_id, span_id) = parse_traceparent(TP).unwrap();
        p.handovers.insert(
            &Handover {
                span: Some(SpanId(3)),
                task: Some(SpanId(7)),
                trace_id,
                span_id,
                ts: 5,
                trace: vec![
                    "0: api::handle_signup{user=7} at src/api.rs:20 (task 7 \"handle_signup\")"
                        .into(),
                    "-- task 7 \"handle_signup\" spawned at src/api.rs:52 --".into(),
                ],
            },
            Some("handle_signup".into()),
        );
        p
    }

    #[test]
    fn a_consumers_trace_goes_on_in_the_producer() {
        let consumer = vec![
            "0: worker::send_email{user=7} at src/worker.rs:31 (task 3 \"job\")".to_string(),
            "1: worker::run_job at src/worker.rs:20 (task 3)".to_string(),
            format!("{REMOTE_HANDOFF_PREFIX}{TP} --"),
        ];
        assert!(needs_stitching(&consumer));
        let ps = [producer()];
        let out = stitch(&consumer, || ps.iter()).expect("joined");
        assert_eq!(
            out,
            [
                "0: worker::send_email{user=7} at src/worker.rs:31 (task 3 \"job\")",
                "1: worker::run_job at src/worker.rs:20 (task 3)",
                "-- handed over through a queue from process api (pid 4242), task 7 \"handle_signup\" --",
                "2: api::handle_signup{user=7} at src/api.rs:20 (task 7 \"handle_signup\")",
                "-- task 7 \"handle_signup\" spawned at src/api.rs:52 --",
            ]
        );
        assert!(!needs_stitching(&out));
        assert_eq!(sent_from(&out[2]), Some((4242, Some(7))));
        assert_eq!(sent_from(&out[0]), None);
    }

    #[test]
    fn unknown_senders_and_other_lines_are_left_alone() {
        let other = "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01";
        let consumer = vec![format!("{REMOTE_HANDOFF_PREFIX}{other} --")];
        let ps = [producer()];
        assert_eq!(stitch(&consumer, || ps.iter()), None);
        assert_eq!(
            remote_ids("-- handed over through a queue from task 3 --"),
            None
        );
        assert_eq!(
            remote_ids(&format!("{REMOTE_HANDOFF_PREFIX}00-xyz --")),
            None
        );
    }
}
