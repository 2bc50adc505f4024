//! `self_wake`: a task that woke itself in more than a fraction (default
//! half) of at least a minimum number of wakes (busy-looping through the
//! scheduler, e.g. `yield_now` in a loop).

use super::native_frames::push_file_line;
use super::poll_trace::{self, fold_frames};
use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::config::Thresholds;
use crate::model::task::group_key;
use crate::model::{task_label, Change, ChangeKind, Process, Task};

/// The `self_wake` detector: judges live tasks at each scan, and each task
/// as it closes (unless an episode of it was already found).
#[derive(Debug, Default)]
pub struct SelfWake;

impl Detector for SelfWake {
    fn kind(&self) -> FindingKind {
        FindingKind::SelfWake
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            changes: &[ChangeKind::TaskClosing],
            tasks: true,
            ..Hooks::default()
        }
    }

    fn on_change(&mut self, p: &Process, change: &Change<'_>, cx: &mut Cx<'_>) {
        let Change::TaskClosing { task, ts, .. } = *change else {
            return;
        };
        if cx.episodes().active(FindingKind::SelfWake, task.id) {
            return;
        }
        if let Some(o) = check(p, task, ts, cx.thresholds) {
            cx.observe(o);
        }
    }

    fn on_task(&mut self, p: &Process, t: &Task, now: u64, cx: &mut Cx<'_>) {
        cx.episode(FindingKind::SelfWake, t.id, check(p, t, now, cx.thresholds));
    }
}

/// Checks `t` (live or just closed) at `now`.
pub fn check(p: &Process, t: &Task, now: u64, th: &Thresholds) -> Option<Observation> {
    if t.wakes < th.self_wake_min_wakes.max(1)
        || (t.self_wakes as f64) <= th.self_wake_ratio * t.wakes as f64
    {
        return None;
    }
    let mut message = format!(
        "{} woke itself {} of {} times ({:.0}%)",
        task_label(t),
        t.self_wakes,
        t.wakes,
        100.0 * t.self_wakes as f64 / t.wakes as f64
    );
    // Where it wakes itself, when the producer sent the stack of one such
    // wake: that line, and the stack; else where it is spawned, and where
    // its await tree says it is now (which need not be where it wakes
    // itself: a future without a span that calls `wake_by_ref` shows in
    // no tree).
    let stack = t.self_wake_stack.as_deref();
    let (location, trace) = match stack.and_then(|s| Some((s, poll_trace::user_frame(&s.frames)?)))
    {
        Some((s, (first, at, name))) => {
            message.push_str(", waking itself in ");
            message.push_str(&name);
            message.push_str(" (");
            push_file_line(&mut message, &at.file, at.line);
            message.push(')');
            // From the program's own frame that woke it: the frames inside
            // (the waker, `tracing`'s dispatch, the capture's unwind) are
            // not the program's.
            let mut trace = fold_frames(&s.frames[first..]);
            if let Some(why) = &s.unresolved {
                trace.push(format!("(some frames not symbolised: {why})"));
            }
            trace.push(poll_trace::task_line(t));
            (Some(at), trace)
        }
        None => (t.location.clone(), poll_trace::of_task(p, t)),
    };
    Some(Observation {
        kind: FindingKind::SelfWake,
        process: p.key,
        key: group_key(t),
        tasks: vec![FindingTask::of(t)],
        location,
        message,
        trace,
        duration_ns: None,
        ts: now,
        new_occurrence: true,
    })
}

#[cfg(test)]
mod tests {
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;

    fn run(self_wakes: u64, other_wakes: u64) -> Vec<crate::Finding> {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("yielder"), 0);
        let busy = s.user_span("busy_loop", 0);
        let mut ts = 1000;
        for i in 0..self_wakes + other_wakes {
            s.begin_poll(t, ts);
            s.enter(busy, ts + 1);
            s.exit(busy, ts + 2);
            if i < self_wakes {
                s.wake(t, Some(t), ts + 10);
            }
            s.end_poll(t, ts + 20);
            if i >= self_wakes {
                s.wake(t, None, ts + 30);
            }
            ts += 100;
        }
        s.tick(ts + 2_000_000_000);
        s.model()
            .findings()
            .of_kind(FindingKind::SelfWake)
            .cloned()
            .collect()
    }

    #[test]
    fn mostly_self_woken_is_found_once() {
        let f = run(30, 5);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 1);
        assert!(f[0].message.contains("30 of 35"), "{}", f[0].message);
        assert_eq!(f[0].trace[0], "busy_loop @ src/main.rs:100");
        assert!(f[0].trace[1].starts_with("task #"), "{:?}", f[0].trace);
    }

    #[test]
    fn few_wakes_or_mostly_others_is_fine() {
        assert!(run(5, 0).is_empty(), "below the minimum wake count");
        assert!(run(10, 20).is_empty(), "under half");
    }
}
