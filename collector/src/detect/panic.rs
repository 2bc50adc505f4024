//! `panic`: a panic (from the panic hook), or a task that ended panicked.

use awaitscope_wire::SpanId;

use super::{FindingKind, Observation};
use crate::model::span::Location;
use crate::model::Process;

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
        tasks: t.map(|t| p.task_ref(t)).into_iter().collect(),
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
