//! `long_poll`: a poll that ran longer than the threshold, blocking its
//! worker thread. Blocking tasks (`spawn_blocking`) are exempt: their single
//! poll is the whole blocking closure.

use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::config::Thresholds;
use crate::model::task::group_key;
use crate::model::{task_label, Change, ChangeKind, Process, Task};
use crate::units::fmt_ns_brief;

/// The `long_poll` detector: judges each committed poll.
#[derive(Debug, Default)]
pub struct LongPoll;

impl Detector for LongPoll {
    fn kind(&self) -> FindingKind {
        FindingKind::LongPoll
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            changes: &[ChangeKind::PollCommitted],
            ..Hooks::default()
        }
    }

    fn quiet_up_to(&self, _kind: ChangeKind, th: &Thresholds) -> Option<u64> {
        Some(th.long_poll_ns)
    }

    fn on_change(&mut self, p: &Process, change: &Change<'_>, cx: &mut Cx<'_>) {
        let Change::PollCommitted {
            task,
            start,
            duration,
        } = *change
        else {
            return;
        };
        if duration <= cx.thresholds.long_poll_ns {
            return;
        }
        if let Some(o) = p
            .tasks
            .get(&task)
            .and_then(|t| check(p, t, start, duration, cx.thresholds))
        {
            cx.observe(o);
        }
    }
}

/// Checks a committed poll of `t` that started at `start` and lasted `d` ns.
pub fn check(p: &Process, t: &Task, start: u64, d: u64, th: &Thresholds) -> Option<Observation> {
    if d <= th.long_poll_ns || t.is_blocking() {
        return None;
    }
    let leaf = t.await_tree.deepest_leaf();
    let location = leaf
        .and_then(|i| {
            let n = &t.await_tree.nodes[p.culprit(&t.await_tree, i)];
            p.span_location(n.span, n.callsite)
        })
        .or_else(|| t.location.clone());
    let trace = leaf.map_or_else(Vec::new, |i| p.await_path(&t.await_tree, i));
    Some(Observation {
        kind: FindingKind::LongPoll,
        process: p.key,
        key: group_key(t),
        tasks: vec![FindingTask::of(t)],
        location,
        message: format!(
            "{} polled for {} without yielding (threshold {})",
            task_label(t),
            fmt_ns_brief(d),
            fmt_ns_brief(th.long_poll_ns)
        ),
        trace,
        duration_ns: Some(d),
        ts: start,
        new_occurrence: true,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::MS;
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;

    #[test]
    fn long_poll_found_and_deduplicated() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("hot"), 0);
        for i in 0..100u64 {
            let start = 1 + i * 100 * MS;
            s.poll(t, start, start + if i == 50 { 40 * MS } else { 15 * MS });
        }
        s.poll(t, 20_000 * MS, 20_000 * MS + 1000);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::LongPoll).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 100);
        assert_eq!(f[0].worst_ns, Some(40 * MS));
        assert_eq!(f[0].tasks[0].name.as_deref(), Some("hot"));
    }

    #[test]
    fn short_polls_and_the_drop_are_not_long_polls() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("ok"), 0);
        s.poll(t, 1, 1 + 5 * MS);
        // The drop of the future takes long, but is not a poll.
        s.complete_with_drop(t, 10 * MS, 100 * MS);
        let m = s.model();
        assert_eq!(m.findings().of_kind(FindingKind::LongPoll).count(), 0);
        let task = &m.processes().next().unwrap().completed[0];
        assert_eq!(task.polls, 1);
        assert_eq!(task.busy_ns, 5 * MS - 1 + 1);
    }

    #[test]
    fn blocking_tasks_are_exempt() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::blocking(), 0);
        s.poll(t, 1, 1 + 500 * MS);
        s.poll(t, 600 * MS, 601 * MS);
        assert_eq!(
            s.model().findings().of_kind(FindingKind::LongPoll).count(),
            0
        );
    }
}
