//! `panic`: a panic (from the panic hook), or a task that ended panicked.

use awaitscope_wire::{CloseKind, SpanId};

use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::model::span::Location;
use crate::model::{Change, ChangeKind, Process};

/// The `panic` detector: judges panics caught by the producer's hook (the
/// [`awaitscope_wire::Panic`] events), and tasks that close panicked
/// without one.
#[derive(Debug, Default)]
pub struct Panics;

impl Detector for Panics {
    fn kind(&self) -> FindingKind {
        FindingKind::Panic
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            changes: &[ChangeKind::Panic, ChangeKind::TaskClosing],
            ..Hooks::default()
        }
    }

    fn on_change(&mut self, p: &Process, change: &Change<'_>, cx: &mut Cx<'_>) {
        match change {
            Change::Panic {
                task,
                span,
                message,
                location,
                ts,
                trace,
            } => {
                let mut o = observe(p, *task, *span, message, location.cloned(), *ts);
                if !trace.is_empty() {
                    // The producer's causal trace crosses spawns and queues
                    // and survives closed spans: prefer it.
                    o.trace = trace.to_vec();
                }
                // The line that panicked first, innermost, unless a frame of
                // the trace already names it (a panic in an async block
                // without a span of its own has only its spawn lines).
                if let Some(l) = &o.location {
                    let at = format!("{}:{}", l.file, l.line);
                    if !o.trace.iter().any(|line| line.contains(&at)) {
                        o.trace.insert(0, format!("panicked at {at}"));
                    }
                }
                cx.observe(o);
            }
            Change::TaskClosing {
                task,
                kind: CloseKind::Panicked,
                ts,
            } if task.panic.is_none() => {
                let o = observe(p, Some(task.id), None, "task ended panicked", None, *ts);
                cx.observe(o);
            }
            _ => {}
        }
    }
}

/// Observation for a panic.
pub fn observe(
    p: &Process,
    task: Option<SpanId>,
    span: Option<SpanId>,
    message: &str,
    location: Option<Location>,
    ts: u64,
) -> Observation {
    let t = task.and_then(|t| p.task(t));
    Observation {
        kind: FindingKind::Panic,
        process: p.key,
        key: location
            .as_ref()
            .map_or_else(|| message.to_string(), |l| l.to_string()),
        tasks: t.map(FindingTask::of).into_iter().collect(),
        location,
        message: format!("panicked: {message}"),
        trace: p.trace(span, task),
        duration_ns: None,
        ts,
        new_occurrence: true,
    }
}

#[cfg(test)]
mod tests {
    use crate::model::TaskState;
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;

    #[test]
    fn panic_is_found_and_task_marked() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("boom"), 0);
        s.begin_poll(t, 10);
        s.panic(t, "index out of bounds", 11);
        s.end_poll(t, 12);
        s.close(t, awaitscope_wire::CloseKind::Panicked, 13);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Panic).collect();
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("index out of bounds"));
        assert_eq!(f[0].location.as_ref().unwrap().line, 42);
        assert_eq!(
            f[0].trace.first().map(String::as_str),
            Some("panicked at src/main.rs:42"),
            "{:?}",
            f[0].trace
        );
        let p = m.processes().next().unwrap();
        assert_eq!(p.completed[0].state, TaskState::Panicked);
    }

    #[test]
    fn panicked_close_without_hook_event_is_a_panic() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("silent"), 0);
        s.poll(t, 10, 12);
        s.close(t, awaitscope_wire::CloseKind::Panicked, 13);
        assert_eq!(s.model().findings().of_kind(FindingKind::Panic).count(), 1);
    }
}
