//! `lost_waker`: a pending task that is not running, has no live waker and
//! was not woken since its last poll: nothing can ever wake it.
//!
//! Exempt: blocking tasks (`kind == "blocking"`) and `block_on`
//! (`kind == "block_on"`), which are not woken through task wakers. A grace
//! period ([`Thresholds::lost_waker_grace_ns`]) lets events of other threads
//! (a waker clone) arrive.

use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::config::Thresholds;
use crate::model::task::group_key;
use crate::model::{task_label, Process, Task, TaskState};
use crate::units::fmt_ns_brief;

/// The `lost_waker` detector: judges live tasks at each scan. An episode lasts while the
/// task stays so.
#[derive(Debug, Default)]
pub struct LostWaker;

impl Detector for LostWaker {
    fn kind(&self) -> FindingKind {
        FindingKind::LostWaker
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            tasks: true,
            ..Hooks::default()
        }
    }

    fn on_task(&mut self, p: &Process, t: &Task, now: u64, cx: &mut Cx<'_>) {
        cx.episode(
            FindingKind::LostWaker,
            t.id,
            check(p, t, now, cx.thresholds),
        );
    }
}

/// Checks `t` at `now`.
pub fn check(p: &Process, t: &Task, now: u64, th: &Thresholds) -> Option<Observation> {
    if t.state != TaskState::Idle
        || t.poll_start.is_some()
        || t.woken_since_poll
        || t.wakers_alive > 0
        || t.is_blocking_or_block_on()
    {
        return None;
    }
    let end = t.last_poll_end?;
    let idle = now.saturating_sub(end);
    if idle <= th.lost_waker_grace_ns {
        return None;
    }
    // Where it waits, as `stuck` judges it: not a span that closed in its
    // last poll, nor a resource it only touched (a guard dropped). Nowhere
    // named: the task's own location says where to look.
    let leaf = p.await_point(&t.await_tree);
    let frames = leaf.map_or_else(Vec::new, |i| p.await_frames(&t.await_tree, i));
    let location = frames
        .iter()
        .find_map(|f| f.location.clone())
        .or_else(|| t.location.clone());
    Some(Observation {
        kind: FindingKind::LostWaker,
        process: p.key,
        key: format!("{}|{:?}", group_key(t), location),
        tasks: vec![FindingTask::of(t)],
        location,
        message: format!(
            "{} is pending with no live waker and was not woken: it will never be polled again (idle {})",
            task_label(t),
            fmt_ns_brief(idle)
        ),
        trace: frames.iter().map(ToString::to_string).collect(),
        duration_ns: Some(idle),
        ts: now,
        new_occurrence: true,
    })
}

#[cfg(test)]
mod tests {
    use awaitscope_wire::names;

    use crate::config::MS;
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;

    fn lost(opts: TaskOpts, clone_waker: bool, wake: bool) -> usize {
        let mut s = Scenario::new();
        let t = s.spawn(opts, 0);
        s.poll(t, 1000, 2000);
        if clone_waker {
            s.waker(t, awaitscope_wire::WakeOp::Clone, 1500);
        }
        if wake {
            s.wake(t, None, 3000);
        }
        s.tick(5_000 * MS);
        s.model().findings().of_kind(FindingKind::LostWaker).count()
    }

    #[test]
    fn pending_without_waker_is_lost() {
        assert_eq!(lost(TaskOpts::named("forgotten"), false, false), 1);
    }

    #[test]
    fn live_waker_or_wake_is_not_lost() {
        assert_eq!(lost(TaskOpts::named("a"), true, false), 0);
        assert_eq!(lost(TaskOpts::named("b"), false, true), 0);
    }

    #[test]
    fn waker_dropped_again_is_lost() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("dropper"), 0);
        s.poll(t, 1000, 2000);
        s.waker(t, awaitscope_wire::WakeOp::Clone, 1500);
        s.waker(t, awaitscope_wire::WakeOp::Drop, 3000);
        s.tick(5_000 * MS);
        assert_eq!(
            s.model().findings().of_kind(FindingKind::LostWaker).count(),
            1
        );
    }

    /// Version-2 producers count wakers themselves and send the count with
    /// each poll's end, and the drop of the last waker outside the poll.
    #[test]
    fn counted_wakers_decide() {
        let count = |wakers: u32, last_drop: bool, wake: bool| {
            let mut s = Scenario::new();
            let t = s.spawn(TaskOpts::named("counted"), 0);
            s.poll_v2(t, 1000, 2000, wakers);
            if last_drop {
                s.waker(t, awaitscope_wire::WakeOp::LastDrop, 3000);
            }
            if wake {
                s.wake(t, None, 4000);
            }
            s.tick(5_000 * MS);
            s.model().findings().of_kind(FindingKind::LostWaker).count()
        };
        assert_eq!(count(0, false, false), 1, "no waker left at the poll's end");
        assert_eq!(count(2, false, false), 0, "wakers alive");
        assert_eq!(count(2, true, false), 1, "its last waker dropped later");
        assert_eq!(count(0, false, true), 0, "woken after all");
    }

    /// A task that took a lock, dropped the guard (which enters the
    /// Mutex's span) and was left without a waker is not said to wait on
    /// the Mutex: its finding names the task's own location, as one whose
    /// tree names nothing live; a task that lost its waker while waiting
    /// for the lock names the lock.
    #[test]
    fn the_trace_names_where_it_waits_not_a_lock_it_released() {
        let trace = |acquired: bool| {
            let mut s = Scenario::new();
            let m = s.mutex(0);
            let t = s.spawn(TaskOpts::named("forgetful"), 0);
            s.begin_poll(t, 1000);
            if acquired {
                s.lock_and_release(t, m, 1100);
            } else {
                s.lock(t, m, false, 1100);
            }
            s.end_poll(t, 1400);
            s.tick(5_000 * MS);
            let f: Vec<_> = s
                .model()
                .findings()
                .of_kind(FindingKind::LostWaker)
                .cloned()
                .collect();
            assert_eq!(f.len(), 1, "{f:?}");
            f[0].trace.join(" / ")
        };
        let released = trace(true);
        assert!(!released.contains("Mutex"), "{released}");
        let waiting = trace(false);
        assert!(waiting.contains("Mutex::lock"), "{waiting}");
    }

    #[test]
    fn blocking_tasks_are_exempt() {
        assert_eq!(lost(TaskOpts::blocking(), false, false), 0);
    }

    #[test]
    fn block_on_is_exempt() {
        assert_eq!(lost(TaskOpts::kind(names::KIND_BLOCK_ON), false, false), 0);
    }

    #[test]
    fn within_grace_is_not_lost() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("x"), 0);
        s.poll(t, 1000, 2000);
        s.tick(2000 + 50 * MS);
        assert_eq!(
            s.model().findings().of_kind(FindingKind::LostWaker).count(),
            0
        );
    }

    #[test]
    fn completed_tasks_are_not_lost() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("done"), 0);
        s.poll(t, 1000, 2000);
        s.complete(t, 3000);
        s.tick(5_000 * MS);
        assert_eq!(
            s.model().findings().of_kind(FindingKind::LostWaker).count(),
            0
        );
    }
}
