//! `error`: an ERROR event of the program, with its span chain and the
//! chain of spawning tasks as trace.

use awaitscope_wire::SpanId;

use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::model::span::Location;
use crate::model::{Change, ChangeKind, Process};

/// The `error` detector: judges each ERROR event. (Not an error type: a
/// detector, named for the events it watches.)
#[derive(Debug, Default)]
pub struct ErrorEvents;

impl Detector for ErrorEvents {
    fn kind(&self) -> FindingKind {
        FindingKind::Error
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            changes: &[ChangeKind::Error],
            ..Hooks::default()
        }
    }

    fn on_change(&mut self, p: &Process, change: &Change<'_>, cx: &mut Cx<'_>) {
        let Change::Error {
            callsite,
            span,
            task,
            message,
            location,
            ts,
            trace,
        } = change
        else {
            return;
        };
        let mut o = observe(p, *callsite, *span, *task, message, location.cloned(), *ts);
        if !trace.is_empty() {
            // The producer's causal trace: see `Change::Panic`.
            o.trace = trace.to_vec();
        }
        cx.observe(o);
    }
}

/// Observation for an ERROR event of callsite `callsite`.
pub fn observe(
    p: &Process,
    callsite: u32,
    span: Option<SpanId>,
    task: Option<SpanId>,
    message: &str,
    location: Option<Location>,
    ts: u64,
) -> Observation {
    let t = task.and_then(|t| p.task(t));
    Observation {
        kind: FindingKind::Error,
        process: p.key,
        key: format!("{callsite}"),
        tasks: t.map(FindingTask::of).into_iter().collect(),
        location,
        message: message.to_string(),
        trace: p.trace(span, task),
        duration_ns: None,
        ts,
        new_occurrence: true,
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;

    #[test]
    fn error_events_with_trace_deduplicated_by_callsite() {
        let mut s = Scenario::new();
        let parent = s.spawn(TaskOpts::named("server"), 0);
        s.begin_poll(parent, 5);
        let t = s.spawn_child(TaskOpts::named("conn"), parent, 6);
        s.end_poll(parent, 7);
        let req = s.user_span("handle_request", 8);
        s.begin_poll(t, 10);
        s.enter(req, 11);
        s.error(t, Some(req), "db failed", 12);
        s.error(t, Some(req), "db failed again", 13);
        s.warn(t, Some(req), "slow", 14);
        s.exit(req, 15);
        s.end_poll(t, 16);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Error).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 2);
        assert_eq!(f[0].tasks[0].name.as_deref(), Some("conn"));
        assert_eq!(f[0].trace.len(), 3, "{:?}", f[0].trace);
        // Innermost first: the span, its task, the task that spawned it.
        assert!(f[0].trace[0].starts_with("span handle_request"));
        assert!(f[0].trace[1].starts_with("task conn"));
        assert!(f[0].trace[2].starts_with("task server"));
        let p = m.processes().next().unwrap();
        assert_eq!(p.tasks[&t].error_count, 2);
        assert_eq!(p.tasks[&t].warn_count, 1);
        assert_eq!(p.tasks[&t].logs.len(), 3);
    }
}
