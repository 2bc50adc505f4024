//! `never_yielded`: a task still in its first poll after longer than the
//! threshold (it never returned to the scheduler). Blocking tasks are exempt.

use super::poll_trace;
use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::config::Thresholds;
use crate::model::task::group_key;
use crate::model::{task_label, Process, Task};
use crate::units::fmt_ns_brief;

/// The `never_yielded` detector: judges live tasks at each scan. An episode lasts while the
/// task stays so.
#[derive(Debug, Default)]
pub struct NeverYielded;

impl Detector for NeverYielded {
    fn kind(&self) -> FindingKind {
        FindingKind::NeverYielded
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            tasks: true,
            ..Hooks::default()
        }
    }

    fn on_task(&mut self, p: &Process, t: &Task, now: u64, cx: &mut Cx<'_>) {
        cx.episode(
            FindingKind::NeverYielded,
            t.id,
            check(p, t, now, cx.thresholds),
        );
    }
}

/// Checks `t` at `now`.
pub fn check(p: &Process, t: &Task, now: u64, th: &Thresholds) -> Option<Observation> {
    let start = t.poll_start?;
    if t.polls > 0 || t.pending_poll.is_some() || t.is_blocking() {
        return None;
    }
    let busy = now.saturating_sub(start);
    if busy <= th.never_yielded_ns {
        return None;
    }
    // The stall sent at the crossing while the poll still runs, else the
    // spans entered so far.
    let pt = poll_trace::of_poll(p, t, start, now);
    let mut message = format!(
        "{} has been running its first poll for {} without yielding",
        task_label(t),
        fmt_ns_brief(busy)
    );
    if let Some(c) = &pt.culprit {
        message.push_str(&format!(" in {c}"));
    }
    Some(Observation {
        kind: FindingKind::NeverYielded,
        process: p.key,
        key: group_key(t),
        tasks: vec![FindingTask::of(t)],
        location: pt.location,
        message,
        trace: pt.trace,
        duration_ns: Some(busy),
        ts: now,
        new_occurrence: true,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::MS;
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;

    #[test]
    fn first_poll_running_too_long() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("spin"), 0);
        s.begin_poll(t, 1000);
        s.tick(3_000 * MS);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::NeverYielded).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].tasks[0].name.as_deref(), Some("spin"));
    }

    #[test]
    fn the_crossing_stall_names_where_the_first_poll_runs() {
        use awaitscope_wire::{FrameOrigin, StackState};

        use crate::testing::{native_frame, stall};

        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("spin"), 0);
        let outer = s.user_span("crunch", 0);
        s.begin_poll(t, 1000);
        s.enter(outer, 2000);
        let mut st = stall(t, 1000, 20 * MS, false);
        st.spans = vec![outer];
        st.stack = StackState::Sampled;
        st.frames = vec![
            native_frame("app::checksum", "src/crc.rs", 7, FrameOrigin::User),
            native_frame("std::rt", "std/src/rt.rs", 1, FrameOrigin::Runtime),
        ];
        s.stall(st);
        s.tick(3_000 * MS);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::NeverYielded).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].trace,
            [
                "checksum @ src/crc.rs:7".to_string(),
                "… 1 runtime frame".into(),
                "crunch @ src/main.rs:100".into(),
                format!("task #{} \"spin\" spawned @ src/main.rs:10", t.0),
            ]
        );
        assert_eq!(
            f[0].location.as_ref().map(|l| l.to_string()),
            Some("src/crc.rs:7".into())
        );
        assert!(
            f[0].message.contains("in checksum (src/crc.rs:7)"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn second_poll_or_short_first_poll_is_fine() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("ok"), 0);
        s.poll(t, 1000, 2000);
        s.begin_poll(t, 3000);
        let u = s.spawn(TaskOpts::named("young"), 0);
        s.begin_poll(u, 2_500 * MS);
        s.tick(3_000 * MS);
        assert_eq!(
            s.model()
                .findings()
                .of_kind(FindingKind::NeverYielded)
                .count(),
            0
        );
    }

    #[test]
    fn blocking_tasks_are_exempt() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::blocking(), 0);
        s.begin_poll(t, 1000);
        s.tick(30_000 * MS);
        assert_eq!(
            s.model()
                .findings()
                .of_kind(FindingKind::NeverYielded)
                .count(),
            0
        );
    }
}
