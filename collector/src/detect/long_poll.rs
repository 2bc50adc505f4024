//! `long_poll`: a poll that ran longer than the threshold, blocking its
//! worker thread; `descheduled` when the worker's scheduler statistics say
//! that most of that time it was waiting for a CPU (the machine was busy,
//! not the code; statistics that cover less than half of the poll, the
//! watchdog's first reading late on a busy machine, judge it by the part
//! they cover, and the finding says how much that is). Blocking tasks (`spawn_blocking`) are exempt: their
//! single poll is the whole blocking closure.
//!
//! The finding says where the poll was (see [`super::poll_trace`]): the
//! producer's stall of the poll when it sent one, else the poll's await
//! tree. A stall that arrives after the poll was judged judges it again,
//! as the same occurrence, with the fuller trace and the statistics known
//! then: until the stall's statistics are final the occurrence stays open
//! ([`super::Findings::observe_occurrence`]), so that a `long_poll` later
//! found `descheduled` (or the other way round) is reported as that alone.

use super::poll_trace::{
    self, is_descheduled, is_descheduled_as_far_as_covered, sched_split, stall_of, PollTrace,
};
use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation, Occurrence};
use crate::config::Thresholds;
use crate::model::stall::PollStall;
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
                let Some(t) = p.tasks.get(&task) else {
                    return;
                };
                if let Some(o) = check(p, t, start, duration, cx.thresholds) {
                    let open = !stall_of(t, start).is_some_and(final_stats);
                    cx.observe_occurrence(Occurrence { task, at: start }, o, open);
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
                let occurrence = Occurrence { task, at: start };
                // The poll's duration: known to the stall when the poll was
                // committed while the task kept it; else (the poll's first
                // half came after later polls committed) the open
                // occurrence's, so that the
                // poll is judged by its own statistics whenever they come
                // while it may still be judged again. Neither: not a
                // committed long poll, or its verdict is final.
                let Some(d) = s.poll_ns.or_else(|| {
                    cx.open_observation(occurrence, p.key)
                        .and_then(|o| o.duration_ns)
                }) else {
                    return;
                };
                // Judged again by what is known now, as the same
                // occurrence: a `long_poll` the worker's statistics now say
                // mostly waited for a CPU becomes `descheduled`, and the
                // other way round.
                // Without its crossing's half the stall says nothing of
                // where the poll was (the half has not come, or never
                // will): the
                // occurrence stays described as it was, by what was known
                // of the poll then; the task's await tree is a later
                // poll's now.
                let described = match cx.open_observation(occurrence, p.key) {
                    Some(prev) if !s.crossed => Some(PollTrace {
                        trace: prev.trace.clone(),
                        location: prev.location.clone(),
                        culprit: None,
                    }),
                    _ => None,
                };
                let o = match described {
                    Some(pt) => judge(p, t, start, d, cx.thresholds, pt),
                    None => check(p, t, start, d, cx.thresholds),
                };
                if let Some(mut o) = o {
                    o.new_occurrence = false;
                    cx.observe_occurrence(occurrence, o, !final_stats(s));
                }
            }
            _ => {}
        }
    }
}

/// Whether the statistics of stall `s` are the last it will have: the
/// end's half arrived with its statistics, or both halves did. Until then
/// a half to come may change the verdict on the poll.
fn final_stats(s: &PollStall) -> bool {
    s.ended && (s.crossed || s.sched.is_some())
}

/// Told of a long poll without scheduler statistics.
const NOT_KNOWN: &str =
    "; no scheduler statistics came for it: whether the code or a busy machine held it is not known";

/// `part` as a whole percentage of `whole` (0 for an empty whole).
fn pct(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    (part.min(whole) as f64 * 100.0 / whole as f64).round() as u64
}

/// Judges the committed poll of `t` that started at `start` and lasted `d`
/// ns: a `long_poll`, or a `descheduled` one when the worker's statistics
/// known now (its stall's) say it mostly waited for a CPU.
pub fn check(p: &Process, t: &Task, start: u64, d: u64, th: &Thresholds) -> Option<Observation> {
    if d <= th.long_poll_ns || t.is_blocking() {
        return None;
    }
    let pt = poll_trace::of_poll(p, t, start, start.saturating_add(d));
    judge(p, t, start, d, th, pt)
}

/// [`check`], the poll described by `pt`.
fn judge(
    p: &Process,
    t: &Task,
    start: u64,
    d: u64,
    th: &Thresholds,
    pt: PollTrace,
) -> Option<Observation> {
    if d <= th.long_poll_ns || t.is_blocking() {
        return None;
    }
    let sched = stall_of(t, start).and_then(|s| s.sched);
    let whole = sched.is_some_and(|s| is_descheduled(&s, d, th.long_poll_ns));
    // Statistics over less than half of the poll that mostly waited for a
    // CPU: the part known says the machine was busy, and the rest is not
    // known; the poll's duration alone does not make it the code's.
    let covered =
        !whole && sched.is_some_and(|s| is_descheduled_as_far_as_covered(&s, d, th.long_poll_ns));
    let descheduled = whole || covered;
    let message = match (whole, covered, sched) {
        (true, _, Some(s)) => format!(
            "{} took {} but waited {} of it for a CPU: the machine was busy, not the code ({})",
            task_label(t),
            fmt_ns_brief(d),
            fmt_ns_brief(s.waiting_ns),
            sched_split(&s)
        ),
        (_, true, Some(s)) => format!(
            "{} took {}; over the {} of it its worker's statistics cover ({}%), it mostly \
             waited for a CPU ({}): judged by that part, the machine was busy, not the code \
             (the rest of the poll is not known)",
            task_label(t),
            fmt_ns_brief(d),
            fmt_ns_brief(s.window_ns),
            pct(s.window_ns, d),
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
                // Statistics that cover too little of the poll to judge it
                // by (the watchdog's first reading came late) say so.
                if s.window_ns.saturating_mul(2) < d {
                    m.push_str(&format!(": over {} of it, ", fmt_ns_brief(s.window_ns)));
                } else {
                    m.push_str(": ");
                }
                m.push_str(&sched_split(&s));
            } else if !p.is_console() {
                // Nothing says how its worker spent it: undecided, said so
                // (the trace says why no stall came).
                m.push_str(NOT_KNOWN);
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
        // Nothing says whether its worker ran it or waited for a CPU.
        assert!(
            f[0].message.ends_with(
                "(threshold 10.0ms); no scheduler statistics came for it: whether the code or a \
                 busy machine held it is not known"
            ),
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
    fn without_a_stall_a_span_closed_early_in_the_poll_is_not_named() {
        // A server's connection task: a request's span opens and closes
        // within microseconds, then the poll blocks 30ms in the connection's
        // own code (a contended lock on the way back to its next read).
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("conn"), 0);
        let run = s.user_span("run", 0);
        s.begin_poll(t, MS);
        s.enter(run, MS + 1);
        let apply = s.user_span("apply", MS + 2);
        s.enter(apply, MS + 2);
        s.exit(apply, MS + 5);
        s.close(apply, awaitscope_wire::CloseKind::Span, MS + 5);
        s.exit(run, 31 * MS);
        s.end_poll(t, 31 * MS);
        s.poll(t, 40 * MS, 41 * MS);
        let f = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.contains("in run (src/main.rs:100)"),
            "{}",
            f[0].message
        );
        assert_eq!(f[0].trace[1], "run @ src/main.rs:100");
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

    /// The statistics of the stall of `t`'s poll from `start`, lasting `d`
    /// (a 15.2ms poll): mostly waiting for a CPU, or on one.
    fn waiting(t: SpanId, start: u64, d: u64) -> awaitscope_wire::Stall {
        ended(t, start, d, d / 8, d * 7 / 8)
    }

    #[test]
    fn a_long_poll_whose_late_statistics_say_it_waited_for_a_cpu_is_only_descheduled() {
        // The end's half alone, then the crossing's; or the crossing's
        // first (its statistics too short to judge by), then the end's.
        for end_first in [true, false] {
            let mut s = Scenario::new();
            let t = s.spawn(TaskOpts::named("x"), 0);
            s.begin_poll(t, MS);
            s.end_poll(t, MS + 15_200_000);
            // Committed by the next poll, before any stall arrived: judged
            // a long poll, with nothing to say otherwise yet.
            s.poll(t, 100 * MS, 101 * MS);
            assert_eq!(findings(&mut s, FindingKind::LongPoll).len(), 1);
            let halves = [waiting(t, MS, 15_200_000), crossing(t, MS, vec![])];
            let halves = if end_first {
                halves
            } else {
                let [a, b] = halves;
                [b, a]
            };
            for h in halves {
                s.stall(h);
            }
            let case = format!("end first: {end_first}");
            assert!(
                findings(&mut s, FindingKind::LongPoll).is_empty(),
                "{case}: {:?}",
                s.model().findings().list()
            );
            let d = findings(&mut s, FindingKind::Descheduled);
            assert_eq!(d.len(), 1, "{case}");
            assert_eq!(d[0].count, 1, "{case}");
            assert_eq!(d[0].worst_ns, Some(15_200_000), "{case}");
            assert!(
                d[0].message.contains("waited 13.3ms of it for a CPU"),
                "{case}: {}",
                d[0].message
            );
            assert_eq!(d[0].trace[1], "hash_password @ src/auth.rs:12", "{case}");
            assert_eq!(s.model().findings().list().len(), 1, "{case}");
        }
    }

    #[test]
    fn a_descheduled_poll_whose_statistics_up_to_its_end_say_it_ran_is_a_long_poll() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("x"), 0);
        s.begin_poll(t, MS);
        // Up to the crossing, 10ms of a 15.2ms poll: waiting for a CPU.
        let mut c = crossing(t, MS, vec![]);
        c.sched = Some(Sched {
            window_ns: 10 * MS,
            on_cpu_ns: MS,
            kernel_ns: 0,
            waiting_ns: 9 * MS,
        });
        s.stall(c);
        s.end_poll(t, MS + 15_200_000);
        s.poll(t, 100 * MS, 101 * MS);
        assert_eq!(findings(&mut s, FindingKind::Descheduled).len(), 1);
        // Up to its end: on a CPU most of it.
        s.stall(ended(t, MS, 15_200_000, 14 * MS, MS));
        assert!(findings(&mut s, FindingKind::Descheduled).is_empty());
        let l = findings(&mut s, FindingKind::LongPoll);
        assert_eq!((l.len(), l[0].count), (1, 1));
        assert!(
            l[0].message.contains("waiting for a CPU 7%"),
            "{}",
            l[0].message
        );
    }

    #[test]
    fn a_long_poll_taken_back_leaves_the_others_of_its_finding_as_they_were() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("x"), 0);
        // A 30ms long poll, its stall's statistics final at its commit.
        s.begin_poll(t, MS);
        s.end_poll(t, 31 * MS);
        s.stall(ended(t, MS, 30 * MS, 29 * MS, 0));
        s.poll(t, 40 * MS, 41 * MS);
        let before = findings(&mut s, FindingKind::LongPoll);
        // A longer one, judged a long poll at its commit...
        s.begin_poll(t, 100 * MS);
        s.end_poll(t, 150 * MS);
        s.poll(t, 200 * MS, 201 * MS);
        let l = findings(&mut s, FindingKind::LongPoll);
        assert_eq!((l[0].count, l[0].worst_ns), (2, Some(50 * MS)));
        // ... then found waiting for a CPU: the finding is the first poll's
        // again.
        s.stall(waiting(t, 100 * MS, 50 * MS));
        assert_eq!(findings(&mut s, FindingKind::LongPoll), before);
        let d = findings(&mut s, FindingKind::Descheduled);
        assert_eq!((d.len(), d[0].count, d[0].worst_ns), (1, 1, Some(50 * MS)));
        // Judged again with nothing new: still one occurrence.
        s.stall(crossing(t, 100 * MS, vec![]));
        let d = findings(&mut s, FindingKind::Descheduled);
        assert_eq!((d.len(), d[0].count), (1, 1));
        assert_eq!(findings(&mut s, FindingKind::LongPoll), before);
    }

    #[test]
    fn statistics_over_too_little_of_the_poll_say_how_much_they_cover() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("x"), 0);
        s.begin_poll(t, MS);
        s.end_poll(t, 23 * MS);
        // The watchdog's first reading came 15.6ms into the 22ms poll; the
        // part covered was mostly blocked.
        s.stall(ended(t, MS, 6_400_000, 200_000, 400_000));
        s.poll(t, 100 * MS, 101 * MS);
        let l = findings(&mut s, FindingKind::LongPoll);
        assert_eq!(l.len(), 1);
        assert!(
            l[0].message.contains(
                ": over 6.4ms of it, on CPU 3% (kernel 0%), waiting for a CPU 6%, blocked/sleeping 91%"
            ),
            "{}",
            l[0].message
        );
        assert!(findings(&mut s, FindingKind::Descheduled).is_empty());
    }

    #[test]
    fn a_poll_whose_covered_part_mostly_waited_for_a_cpu_is_descheduled_as_far_as_known() {
        // A 25ms poll of an ordinary task on a busy machine: the watchdog's
        // first reading came 20.5ms into it; over the 4.5ms after, its
        // worker waited for a CPU 82% of the time.
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("card-charge"), 0);
        s.begin_poll(t, MS);
        s.stall(crossing(t, MS, vec![]));
        s.end_poll(t, 26 * MS);
        s.stall(ended(t, MS, 4_500_000, 800_000, 3_700_000));
        s.poll(t, 100 * MS, 101 * MS);
        let l = findings(&mut s, FindingKind::LongPoll);
        assert!(l.is_empty(), "{l:?}");
        let d = findings(&mut s, FindingKind::Descheduled);
        assert_eq!((d.len(), d[0].count), (1, 1));
        let m = &d[0].message;
        assert!(
            m.contains(
                "took 25.0ms; over the 4.5ms of it its worker's statistics cover (18%), it \
                 mostly waited for a CPU (on CPU 18% (kernel 0%), waiting for a CPU 82%, \
                 blocked/sleeping 0%): judged by that part, the machine was busy, not the code \
                 (the rest of the poll is not known)"
            ),
            "{m}"
        );
        // Where it was is still told.
        assert_eq!(d[0].trace[1], "hash_password @ src/auth.rs:12");

        // The same share over too little of a longer poll: by that part,
        // 45ms of the 250ms were its own, over the threshold.
        s.begin_poll(t, 200 * MS);
        s.end_poll(t, 450 * MS);
        s.stall(ended(t, 200 * MS, 4_500_000, 800_000, 3_700_000));
        s.poll(t, 500 * MS, 501 * MS);
        let l = findings(&mut s, FindingKind::LongPoll);
        assert_eq!((l.len(), l[0].worst_ns), (1, Some(250 * MS)));
        assert!(
            l[0].message.contains(": over 4.5ms of it, on CPU 18%"),
            "{}",
            l[0].message
        );
        // A window under a millisecond judges nothing.
        s.begin_poll(t, 600 * MS);
        s.end_poll(t, 615 * MS);
        s.stall(ended(t, 600 * MS, 900_000, 100_000, 800_000));
        s.poll(t, 700 * MS, 701 * MS);
        assert_eq!(findings(&mut s, FindingKind::LongPoll)[0].count, 2);
        assert_eq!(findings(&mut s, FindingKind::Descheduled)[0].count, 1);
    }

    #[test]
    fn an_older_polls_late_half_leaves_a_newer_polls_crossing_in_place() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("conn"), 0);
        // A 30ms poll, sampled at its crossing.
        s.begin_poll(t, MS);
        s.stall(crossing(t, MS, vec![]));
        s.end_poll(t, 31 * MS);
        // The next, 50ms, sampled in another function...
        s.begin_poll(t, 40 * MS);
        let mut c = crossing(t, 40 * MS, vec![]);
        c.frames[1] = native_frame("app::stock::reserve", "src/stock.rs", 40, FrameOrigin::User);
        s.stall(c);
        // ... before the first poll's end half, sent late.
        s.stall(ended(t, MS, 30 * MS, 29 * MS, 0));
        s.end_poll(t, 90 * MS);
        s.stall(ended(t, 40 * MS, 50 * MS, 49 * MS, 0));
        s.poll(t, 100 * MS, 101 * MS);
        let l = findings(&mut s, FindingKind::LongPoll);
        assert_eq!((l.len(), l[0].count), (1, 2));
        assert_eq!(l[0].worst_ns, Some(50 * MS));
        // The worst, described by its own stack.
        assert_eq!(
            l[0].trace[1], "reserve @ src/stock.rs:40",
            "{:?}",
            l[0].trace
        );
        assert!(
            l[0].message
                .contains("polled for 50.0ms without yielding in reserve"),
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
