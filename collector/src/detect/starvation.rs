//! `starvation`: woken but not polled for longer than the threshold (the
//! runtime's workers are busy or blocked).

use super::poll_trace;
use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::config::Thresholds;
use crate::model::task::group_key;
use crate::model::{task_label, Change, ChangeKind, Process, Task, TaskState};
use crate::units::fmt_ns_brief;

/// The `starvation` detector: judges each wait that a poll ends, and the
/// tasks still waiting at a scan. An episode lasts until the poll that ends
/// it, across scans.
#[derive(Debug, Default)]
pub struct Starvation;

impl Detector for Starvation {
    fn kind(&self) -> FindingKind {
        FindingKind::Starvation
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            changes: &[ChangeKind::WaitEnded],
            tasks: true,
            ..Hooks::default()
        }
    }

    fn quiet_up_to(&self, _kind: ChangeKind, th: &Thresholds) -> Option<u64> {
        // A brief wait matters only to end an episode.
        Some(th.starvation_ns)
    }

    fn on_change(&mut self, p: &Process, change: &Change<'_>, cx: &mut Cx<'_>) {
        let Change::WaitEnded { task, ts, waited } = *change else {
            return;
        };
        if waited > cx.thresholds.starvation_ns {
            if let Some(t) = p.tasks.get(&task) {
                // On a starved runtime nearly every wait is one: only the
                // worst so far is described (its message and traces are
                // what the finding shows), the others are counted.
                let key = group_key(t);
                let mut o = if cx.describes(FindingKind::Starvation, p.key, &key, Some(waited)) {
                    let mut o = observe(p, t, key, waited, ts, cx.thresholds);
                    // The wait ends at the poll's start on the thread that
                    // polls it now: who held that thread while it waited.
                    let held = poll_trace::held_the_thread(
                        p,
                        p.cur_thread,
                        ts.saturating_sub(waited),
                        ts,
                        task,
                    );
                    o.trace.extend(held);
                    o
                } else {
                    Observation {
                        kind: FindingKind::Starvation,
                        process: p.key,
                        key,
                        tasks: vec![FindingTask::of(t)],
                        location: None,
                        message: String::new(),
                        trace: Vec::new(),
                        duration_ns: Some(waited),
                        ts,
                        new_occurrence: true,
                    }
                };
                o.new_occurrence = !cx.episodes().active(FindingKind::Starvation, task);
                cx.observe(o);
            }
        }
        // A starvation episode ends at the poll that ends it.
        cx.episodes().end(FindingKind::Starvation, task);
    }

    fn on_task(&mut self, p: &Process, t: &Task, now: u64, cx: &mut Cx<'_>) {
        // An episode goes on while the task waits (see `on_change`).
        if let Some(o) = check(p, t, now, cx.thresholds) {
            cx.observe_episode(t.id, o);
        }
    }
}

/// `t`'s wait of `wait` ns, ended (or seen going on) at `ts`, described,
/// as an observation under `key` (its [`group_key`]).
fn observe(p: &Process, t: &Task, key: String, wait: u64, ts: u64, th: &Thresholds) -> Observation {
    Observation {
        kind: FindingKind::Starvation,
        process: p.key,
        key,
        tasks: vec![FindingTask::of(t)],
        location: t.location.clone(),
        message: format!(
            "{} was woken but not polled for {} (threshold {})",
            task_label(t),
            fmt_ns_brief(wait),
            fmt_ns_brief(th.starvation_ns)
        ),
        trace: poll_trace::of_task(p, t),
        duration_ns: Some(wait),
        ts,
        new_occurrence: true,
    }
}

/// Checks a task still waiting to be polled at `now`.
pub fn check(p: &Process, t: &Task, now: u64, th: &Thresholds) -> Option<Observation> {
    if t.state != TaskState::Scheduled {
        return None;
    }
    let since = t.scheduled_since?;
    let wait = now.saturating_sub(since);
    (wait > th.starvation_ns).then(|| observe(p, t, group_key(t), wait, now, th))
}

#[cfg(test)]
mod tests {
    use crate::config::MS;
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;

    #[test]
    fn late_poll_after_wake_is_starvation() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("late"), 0);
        s.poll(t, 1000, 2000);
        s.wake(t, None, 10 * MS);
        s.poll(t, 200 * MS, 201 * MS);
        s.tick(300 * MS);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Starvation).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 1);
        assert_eq!(f[0].worst_ns, Some(190 * MS));
    }

    #[test]
    fn the_trace_is_the_await_path_of_the_last_poll() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("late"), 0);
        let tick = s.user_span("ticker", 0);
        let wait = s.user_span("wait_tick", 0);
        s.begin_poll(t, 1000);
        s.enter(tick, 1100);
        s.enter(wait, 1200);
        s.exit(wait, 1300);
        s.exit(tick, 1400);
        s.end_poll(t, 2000);
        s.wake(t, None, 10 * MS);
        s.poll(t, 200 * MS, 201 * MS);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Starvation).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].trace,
            [
                "wait_tick @ src/main.rs:101".to_string(),
                "ticker @ src/main.rs:100".into(),
                format!("task #{} \"late\" spawned @ src/main.rs:10", t.0),
            ]
        );
    }

    /// A lock taken and released in the last poll is no wait of the task:
    /// its trace is the span it waits in.
    #[test]
    fn the_trace_names_no_lock_released_in_the_last_poll() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("late"), 0);
        let serve = s.user_span("serve", 0);
        let m = s.mutex(0);
        s.begin_poll(t, 1000);
        s.enter(serve, 1100);
        s.lock_and_release(t, m, 1200);
        s.exit(serve, 1400);
        s.end_poll(t, 2000);
        s.wake(t, None, 10 * MS);
        s.poll(t, 200 * MS, 201 * MS);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Starvation).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].trace,
            [
                "serve @ src/main.rs:100".to_string(),
                format!("task #{} \"late\" spawned @ src/main.rs:10", t.0),
            ]
        );
    }

    #[test]
    fn still_waiting_is_found_by_the_scan_once() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("waiting"), 0);
        s.poll(t, 1000, 2000);
        s.wake(t, None, 10 * MS);
        s.tick(2_000 * MS);
        s.tick(3_000 * MS);
        s.poll(t, 3_500 * MS, 3_501 * MS);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Starvation).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 1, "one episode, seen by scans and by the poll");
        assert_eq!(f[0].worst_ns, Some(3_490 * MS));
    }

    #[test]
    fn prompt_polls_are_fine() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("ok"), 0);
        for i in 0..50 {
            s.wake(t, None, i * 10 * MS);
            s.poll(t, i * 10 * MS + MS, i * 10 * MS + 2 * MS);
        }
        assert_eq!(
            s.model()
                .findings()
                .of_kind(FindingKind::Starvation)
                .count(),
            0
        );
    }
}
