//! `long_poll`: a poll that ran longer than the threshold, blocking its
//! worker thread; `descheduled` when the worker's scheduler statistics say
//! that most of that time it was waiting for a CPU (the machine was busy,
//! not the code). Blocking tasks (`spawn_blocking`) are exempt: their
//! single poll is the whole blocking closure.
//!
//! The finding says where the poll was (see [`super::poll_trace`]): the
//! producer's stall of the poll when it sent one, else the poll's await
//! tree. A stall that arrives after the poll was judged judges it again,
//! as the same occurrence, with the fuller trace.

use awaitscope_wire::Sched;

use super::poll_trace::{self, is_descheduled, sched_split, stall_of};
use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::config::Thresholds;
use crate::model::task::group_key;
use crate::model::{task_label, Change, ChangeKind, Process, Task};
use crate::units::fmt_ns_brief;

/// The `long_poll` detector (and `descheduled`): judges each committed
/// poll, and each stall of a poll already committed.
#[derive(Debug, Default)]
pub struct LongPoll;

impl Detector for LongPoll {
    fn kind(&self) -> FindingKind {
        FindingKind::LongPoll
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            changes: &[ChangeKind::PollCommitted, ChangeKind::Stalled],
            ..Hooks::default()
        }
    }

    fn quiet_up_to(&self, _kind: ChangeKind, th: &Thresholds) -> Option<u64> {
        Some(th.long_poll_ns)
    }

    fn on_change(&mut self, p: &Process, change: &Change<'_>, cx: &mut Cx<'_>) {
        match *change {
            Change::PollCommitted {
                task,
                start,
                duration,
            } => {
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
            Change::Stalled { task, start, .. } => {
                // Only a poll already committed: a running or ended one is
                // judged at its commit, with the stall.
                let Some(t) = p.task(task) else {
                    return;
                };
                let Some(s) = stall_of(t, start) else {
                    return;
                };
                let Some(d) = s.poll_ns else {
                    return;
                };
                // Judged as at the commit, told with what is known now.
                if let Some(mut o) = judge(p, t, start, d, cx.thresholds, s.sched_at_commit) {
                    o.new_occurrence = false;
                    cx.observe(o);
                }
            }
            _ => {}
        }
    }
}

/// Checks a committed poll of `t` that started at `start` and lasted `d` ns.
pub fn check(p: &Process, t: &Task, start: u64, d: u64, th: &Thresholds) -> Option<Observation> {
    let sched = stall_of(t, start).and_then(|s| s.sched);
    judge(p, t, start, d, th, sched)
}

/// Judges the poll of `t` that started at `start` and lasted `d` ns: a
/// `long_poll`, or a `descheduled` one when `judged_by` (the worker's
/// statistics the poll is judged by) says it mostly waited for a CPU.
fn judge(
    p: &Process,
    t: &Task,
    start: u64,
    d: u64,
    th: &Thresholds,
    judged_by: Option<Sched>,
) -> Option<Observation> {
    if d <= th.long_poll_ns || t.is_blocking() {
        return None;
    }
    let pt = poll_trace::of_poll(p, t, start, start.saturating_add(d));
    let sched = stall_of(t, start).and_then(|s| s.sched).or(judged_by);
    let descheduled = judged_by.is_some_and(|s| is_descheduled(&s, d, th.long_poll_ns));
    let message = match (descheduled, sched) {
        (true, Some(s)) => format!(
            "{} took {} but waited {} of it for a CPU: the machine was busy, not the code ({})",
            task_label(t),
            fmt_ns_brief(d),
            fmt_ns_brief(s.waiting_ns),
            sched_split(&s)
        ),
        _ => {
            let mut m = format!(
                "{} polled for {} without yielding",
                task_label(t),
                fmt_ns_brief(d)
            );
            if let Some(c) = &pt.culprit {
                m.push_str(&format!(" in {c}"));
            }
            m.push_str(&format!(" (threshold {})", fmt_ns_brief(th.long_poll_ns)));
            if let Some(s) = sched {
                m.push_str(&format!(": {}", sched_split(&s)));
            }
            m
        }
    };
    Some(Observation {
        kind: if descheduled {
            FindingKind::Descheduled
        } else {
            FindingKind::LongPoll
        },
        process: p.key,
        key: group_key(t),
        tasks: vec![FindingTask::of(t)],
        location: pt.location,
        message,
        trace: pt.trace,
        duration_ns: Some(d),
        ts: start,
        new_occurrence: true,
    })
}

#[cfg(test)]
mod tests {
    use awaitscope_wire::{FrameOrigin, Sched, SpanId, StackState};

    use crate::config::MS;
    use crate::model::span::Location;
    use crate::testing::{native_frame, stall, Scenario, TaskOpts};
    use crate::{Finding, FindingKind};

    /// The stall's crossing half of `t`'s poll from `start`, with the
    /// async stack `spans` and a native stack blocked in `hash_password`.
    fn crossing(t: SpanId, start: u64, spans: Vec<SpanId>) -> awaitscope_wire::Stall {
        let mut st = stall(t, start, start + 20 * MS, false);
        st.spans = spans;
        st.stack = StackState::Sampled;
        st.frames = vec![
            native_frame(
                "std::thread::sleep",
                "std/src/thread/mod.rs",
                1,
                FrameOrigin::Runtime,
            ),
            native_frame(
                "app::auth::hash_password",
                "src/auth.rs",
                12,
                FrameOrigin::User,
            ),
            native_frame(
                "app::charge_card::{{closure}}",
                "src/main.rs",
                31,
                FrameOrigin::User,
            ),
            native_frame(
                "tokio::task::poll",
                "tokio-1.47.1/src/a.rs",
                5,
                FrameOrigin::Runtime,
            ),
            native_frame("std::rt::main", "std/src/rt.rs", 9, FrameOrigin::Runtime),
        ];
        st.sched = Some(Sched {
            window_ns: 5 * MS,
            on_cpu_ns: 5 * MS,
            kernel_ns: 0,
            waiting_ns: 0,
        });
        st
    }

    /// The half after the poll's end: a poll of `window` that spent
    /// `waiting` waiting for a CPU and `on_cpu` on one.
    fn ended(
        t: SpanId,
        start: u64,
        window: u64,
        on_cpu: u64,
        waiting: u64,
    ) -> awaitscope_wire::Stall {
        let mut st = stall(t, start, start + window + 1, true);
        st.sched = Some(Sched {
            window_ns: window,
            on_cpu_ns: on_cpu,
            kernel_ns: 0,
            waiting_ns: waiting,
        });
        st
    }

    fn findings(s: &mut Scenario, kind: FindingKind) -> Vec<Finding> {
        s.model().findings().of_kind(kind).cloned().collect()
    }

    fn task_line(t: SpanId, name: &str) -> String {
        format!("task #{} \"{name}\" spawned @ src/main.rs:10", t.0)
    }

    #[test]
    fn stall_during_the_poll_gives_native_and_async_stacks_innermost_first() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("checkout"), 0);
        let charge = s.user_span("charge_card", 0);
        s.begin_poll(t, MS);
        s.enter(charge, MS + 1);
        s.stall(crossing(t, MS, vec![charge]));
        s.exit(charge, 300 * MS);
        s.end_poll(t, 301 * MS);
        // The end's half after the poll's end, before its commit.
        s.stall(ended(t, MS, 300 * MS, 3 * MS, 0));
        s.poll(t, 400 * MS, 401 * MS);
        let f = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].trace,
            [
                "… 1 runtime frame in std::thread::sleep".to_string(),
                "hash_password @ src/auth.rs:12".into(),
                "charge_card @ src/main.rs:31".into(),
                "… 2 runtime frames".into(),
                // The span `charge_card` is the native frame above: once.
                task_line(t, "checkout"),
            ]
        );
        assert_eq!(
            f[0].location,
            Some(Location {
                file: "src/auth.rs".into(),
                line: 12,
                col: None
            })
        );
        let m = &f[0].message;
        assert!(
            m.contains("polled for 300.0ms without yielding in hash_password (src/auth.rs:12)"),
            "{m}"
        );
        // The split up to the poll's end, not the crossing's.
        assert!(
            m.contains("on CPU 1% (kernel 0%), waiting for a CPU 0%, blocked/sleeping 99%"),
            "{m}"
        );
        assert!(findings(&mut s, FindingKind::Descheduled).is_empty());
    }

    #[test]
    fn without_a_stall_the_poll_tree_with_its_closed_spans_is_the_trace() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("checkout"), 0);
        let outer = s.user_span("checkout_flow", 0);
        let charge = s.user_span("charge_card", 0);
        s.begin_poll(t, MS);
        s.enter(outer, MS + 1);
        s.enter(charge, MS + 2);
        s.exit(charge, 300 * MS);
        // Both returned within the poll: closed before its await tree is
        // sent (at the poll's end).
        s.close(charge, awaitscope_wire::CloseKind::Completed, 300 * MS);
        s.exit(outer, 300 * MS);
        s.close(outer, awaitscope_wire::CloseKind::Completed, 300 * MS);
        s.end_poll(t, 301 * MS);
        s.poll(t, 400 * MS, 401 * MS);
        let f = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].trace,
            [
                "no native stack: no stall was reported for this poll (it ended before the \
                 watchdog saw it, or the producer is older)"
                    .to_string(),
                "charge_card @ src/main.rs:101".into(),
                "checkout_flow @ src/main.rs:100".into(),
                task_line(t, "checkout"),
            ]
        );
        assert_eq!(f[0].location.as_ref().map(|l| l.line), Some(101));
        assert!(
            f[0].message
                .contains("without yielding in charge_card (src/main.rs:101)"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn without_a_user_frame_the_innermost_instrumented_fn_is_named() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("shop"), 0);
        let inventory = s.user_span("inventory", 0);
        let mutex = s.mutex(0);
        s.begin_poll(t, MS);
        s.enter(inventory, MS + 1);
        s.enter(mutex, MS + 2);
        s.exit(mutex, 30 * MS);
        s.exit(inventory, 30 * MS);
        s.end_poll(t, 30 * MS);
        s.poll(t, 40 * MS, 41 * MS);
        let f = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(f.len(), 1);
        // The resource as every await path names it.
        assert_eq!(f[0].trace[1], "tokio::sync::Mutex @ src/main.rs:20");
        assert_eq!(f[0].trace[2], "inventory @ src/main.rs:100");
        assert_eq!(f[0].location.as_ref().map(|l| l.line), Some(100));
        assert!(
            f[0].message.contains("in inventory (src/main.rs:100)"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn without_a_stall_the_path_is_to_the_span_that_took_the_poll() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("checkout"), 0);
        let outer = s.user_span("checkout", 0);
        s.begin_poll(t, MS);
        s.enter(outer, MS + 1);
        // `charge_card` opens, blocks 28ms and returns within the poll;
        // then the poll goes deeper, into a wait it ends pending on.
        let charge = s.user_span("charge_card", MS + 2);
        s.enter(charge, MS + 2);
        s.exit(charge, 30 * MS);
        s.close(charge, awaitscope_wire::CloseKind::Completed, 30 * MS);
        let wait = s.user_span("wait", 30 * MS);
        let timer = s.timer(30 * MS);
        s.enter(wait, 30 * MS);
        s.enter(timer, 30 * MS);
        s.exit(timer, 30 * MS);
        s.exit(wait, 30 * MS);
        s.exit(outer, 30 * MS);
        s.end_poll(t, 30 * MS + 1);
        s.poll(t, 40 * MS, 41 * MS);
        let f = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(
            f[0].trace[1..3],
            [
                "charge_card @ src/main.rs:101".to_string(),
                "checkout @ src/main.rs:100".into()
            ]
        );
        assert!(f[0].message.contains("in charge_card"), "{}", f[0].message);
    }

    #[test]
    fn a_stall_after_the_commit_fills_in_the_same_occurrence() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("checkout"), 0);
        let charge = s.user_span("charge_card", 0);
        s.begin_poll(t, MS);
        s.enter(charge, MS + 1);
        s.exit(charge, 300 * MS);
        s.close(charge, awaitscope_wire::CloseKind::Completed, 300 * MS);
        s.end_poll(t, 301 * MS);
        s.poll(t, 400 * MS, 401 * MS);
        let before = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(before.len(), 1);
        assert!(
            before[0].trace[0].starts_with("no native stack"),
            "{:?}",
            before[0].trace
        );
        // The stall's halves come late, the end's first; its span has
        // closed since, and is still named.
        s.stall(ended(t, MS, 300 * MS, 3 * MS, 0));
        s.stall(crossing(t, MS, vec![charge]));
        let after = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].count, 1, "the same occurrence, not a new one");
        assert_eq!(after[0].trace[1], "hash_password @ src/auth.rs:12");
        // The span the native stack named is not told twice.
        assert_eq!(after[0].trace[2], "charge_card @ src/main.rs:31");
        assert!(!after[0]
            .trace
            .iter()
            .any(|l| l == "charge_card @ src/main.rs:100"));
        assert_eq!(after[0].location.as_ref().map(|l| l.line), Some(12));
        assert!(
            after[0].message.contains("blocked/sleeping 99%"),
            "{}",
            after[0].message
        );
        // A stall of a poll still running is judged at its commit only.
        s.begin_poll(t, 500 * MS);
        s.stall(crossing(t, 500 * MS, vec![]));
        assert_eq!(findings(&mut s, FindingKind::LongPoll)[0].count, 1);
    }

    #[test]
    fn a_poll_mostly_waiting_for_a_cpu_is_descheduled_not_long() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("x"), 0);
        s.begin_poll(t, MS);
        s.stall(crossing(t, MS, vec![]));
        s.end_poll(t, MS + 15_200_000);
        s.stall(ended(t, MS, 15_200_000, 2_000_000, 12_900_000));
        // A blocked one of the same task stays a long poll.
        s.begin_poll(t, 100 * MS);
        s.end_poll(t, 130 * MS);
        s.stall(ended(t, 100 * MS, 30 * MS, MS, 0));
        s.poll(t, 200 * MS, 201 * MS);
        let d = findings(&mut s, FindingKind::Descheduled);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].severity, crate::Severity::Info);
        assert!(
            d[0].message.contains(
                "took 15.2ms but waited 12.9ms of it for a CPU: the machine was busy, not the code"
            ),
            "{}",
            d[0].message
        );
        assert!(
            d[0].message.contains("waiting for a CPU 85%"),
            "{}",
            d[0].message
        );
        assert_eq!(d[0].trace[1], "hash_password @ src/auth.rs:12");
        let l = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].worst_ns, Some(30 * MS));
        assert!(
            l[0].message.contains("waiting for a CPU 0%"),
            "{}",
            l[0].message
        );
    }

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
