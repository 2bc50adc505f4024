//! `never_yielded`: a task still in its first poll after longer than the
//! threshold (it never returned to the scheduler). Blocking tasks are exempt.

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
    let leaf = t.await_tree.deepest_leaf();
    Some(Observation {
        kind: FindingKind::NeverYielded,
        process: p.key,
        key: group_key(t),
        tasks: vec![FindingTask::of(t)],
        location: t.location.clone(),
        message: format!(
            "{} has been running its first poll for {} without yielding",
            task_label(t),
            fmt_ns_brief(busy)
        ),
        trace: leaf.map_or_else(Vec::new, |i| p.await_path(&t.await_tree, i)),
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
