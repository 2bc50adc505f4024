//! `starvation`: woken but not polled for longer than the threshold (the
//! runtime's workers are busy or blocked).

use super::poll_trace;
use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation, Tally};
use crate::config::Thresholds;
use crate::model::labels::push_task_label;
use crate::model::process::{RECENT_POLLS, RECENT_POLL_NS};
use crate::model::span::Location;
use crate::model::task::{group_key, group_key_into};
use crate::model::{Change, ChangeKind, Process, Task, TaskState};
use crate::units::push_ns_brief;
use awaitscope_wire::SpanId;

/// The `starvation` detector: judges each wait that a poll ends, and the
/// tasks still waiting at a scan. An episode lasts until the poll that ends
/// it, across scans.
#[derive(Debug, Default)]
pub struct Starvation {
    /// The group key of the task of the wait being judged, written over
    /// for each wait (most are only counted, by their key).
    key: String,
}

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
                // what the finding shows), the others are counted, in
                // place when they can be.
                group_key_into(t, &mut self.key);
                let new_occurrence = !cx.episodes().active(FindingKind::Starvation, task);
                let kind = FindingKind::Starvation;
                let tally = cx.tally(kind, p.key, &self.key, t, Some(waited), ts, new_occurrence);
                let mut o = match tally {
                    Tally::Counted => {
                        cx.episodes().end(FindingKind::Starvation, task);
                        return;
                    }
                    Tally::Describe => {
                        let key = self.key.clone();
                        // The wait ends at the poll's start on the thread
                        // that polls it now: who held that thread while it
                        // waited.
                        let from = ts.saturating_sub(waited);
                        // Where it points: where the task waited, else the
                        // line of the poll that held its thread longest
                        // (what starved it), else its spawn site.
                        let location = wait_line(p, t)
                            .or_else(|| poll_trace::holder_line(p, p.cur_thread, from, ts, task))
                            .or_else(|| t.location.clone());
                        let mut o = observe(p, t, key, waited, ts, cx.thresholds, location);
                        let held = poll_trace::held_the_thread(p, p.cur_thread, from, ts, task);
                        if held.is_empty() && no_task_held_a_worker(p, task, from, ts) {
                            o.message.push_str(NO_TASK_HELD);
                        }
                        o.trace.extend(held);
                        o
                    }
                    Tally::Observe => Observation {
                        kind: FindingKind::Starvation,
                        process: p.key,
                        key: self.key.clone(),
                        tasks: vec![FindingTask::of(t)],
                        location: None,
                        message: String::new(),
                        trace: Vec::new(),
                        duration_ns: Some(waited),
                        ts,
                        new_occurrence: true,
                    },
                };
                o.new_occurrence = new_occurrence;
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

/// Told of a wait during which no task of the program held a worker.
pub(super) const NO_TASK_HELD: &str =
    "; no task of the program polled for 1ms or more meanwhile, on any \
     thread: no task held its workers (the machine was busy, or many short polls)";

/// Whether, as far as the model knows, no task other than `task` ran a poll
/// of [`RECENT_POLL_NS`] or more on any thread of `p` between `from` and
/// `to` (ns): none of the polls kept per thread overlaps the window (and
/// none overlapping it can have been forgotten), and no poll still running
/// has run in it that long.
pub(super) fn no_task_held_a_worker(p: &Process, task: SpanId, from: u64, to: u64) -> bool {
    for th in p.threads.values() {
        let polls = &th.recent_polls;
        // Full, and its oldest poll started inside the window: one before
        // it may have overlapped it.
        if polls.len() >= RECENT_POLLS && polls.front().is_some_and(|&(_, s, _)| s > from) {
            return false;
        }
        if polls
            .iter()
            .any(|&(h, s, e)| h != task && e.min(to) > s.max(from))
        {
            return false;
        }
    }
    !p.tasks.values().any(|t| {
        t.id != task
            && t.poll_start
                .is_some_and(|s| to.saturating_sub(s.max(from)) >= RECENT_POLL_NS)
    })
}

/// Where `t` waits, as `stuck` and `lost_waker` judge it: the innermost
/// frame with a line on the path to its await point (not a span that
/// closed in its last poll, nor a resource it only touched). `None` when
/// its await tree names none (a task awaiting only futures without spans,
/// such as `yield_now`).
fn wait_line(p: &Process, t: &Task) -> Option<Location> {
    let leaf = p.await_point(&t.await_tree)?;
    p.await_frames(&t.await_tree, leaf)
        .into_iter()
        .find_map(|f| f.location)
}

/// `t`'s wait of `wait` ns, ended (or seen going on) at `ts`, described,
/// as an observation under `key` (its [`group_key`]), at `location`.
fn observe(
    p: &Process,
    t: &Task,
    key: String,
    wait: u64,
    ts: u64,
    th: &Thresholds,
    location: Option<Location>,
) -> Observation {
    Observation {
        kind: FindingKind::Starvation,
        process: p.key,
        key,
        tasks: vec![FindingTask::of(t)],
        location,
        message: {
            // Written in one go, sized once (room for the task's id and the
            // two times): a starved runtime describes a wait often.
            let name = t.name.as_deref().map_or(0, str::len);
            let file = t.location.as_ref().map_or(0, |l| l.file.len());
            let mut m = String::with_capacity(name + file + 120);
            push_task_label(&mut m, t);
            m.push_str(" was woken but not polled for ");
            push_ns_brief(&mut m, wait);
            m.push_str(" (threshold ");
            push_ns_brief(&mut m, th.starvation_ns);
            m.push(')');
            m
        },
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
    (wait > th.starvation_ns).then(|| {
        let location = wait_line(p, t).or_else(|| t.location.clone());
        observe(p, t, group_key(t), wait, now, th, location)
    })
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
        // It points where the task waited, not at its spawn site.
        let at = f[0].location.as_ref().expect("a location");
        assert_eq!((at.file.as_str(), at.line), ("src/main.rs", 101));
    }

    /// A task whose await tree names no line (it awaited futures without
    /// spans, as `yield_now`) points at the line of the poll that held its
    /// thread longest, what starved it; with no such line either, at its
    /// spawn site.
    #[test]
    fn a_wait_without_a_line_points_at_what_held_the_thread() {
        let run = |hog_in_span: bool| {
            let mut s = Scenario::new();
            let t = s.spawn(TaskOpts::named("late"), 0);
            let hog = s.spawn(TaskOpts::named("hog"), 0);
            let burn = s.user_span("burn_cpu", 0);
            s.poll(t, 1000, 2000);
            s.poll(hog, 3000, 4000);
            s.wake(t, None, 10 * MS);
            s.begin_poll(hog, 20 * MS);
            if hog_in_span {
                s.enter(burn, 21 * MS);
                s.exit(burn, 99 * MS);
            }
            s.end_poll(hog, 100 * MS);
            s.poll(t, 200 * MS, 201 * MS);
            let m = s.model();
            let f: Vec<_> = m
                .findings()
                .of_kind(FindingKind::Starvation)
                .filter(|f| f.tasks.iter().any(|x| x.id == t.0))
                .cloned()
                .collect();
            assert_eq!(f.len(), 1);
            let at = f[0].location.clone().expect("a location");
            (at.file, at.line)
        };
        assert_eq!(run(true), ("src/main.rs".to_string(), 100));
        assert_eq!(run(false), ("src/main.rs".to_string(), 10));
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

    /// A wait during which no task of the program held a worker says so;
    /// one during which another task's poll did (on its thread or
    /// another) does not.
    #[test]
    fn a_wait_no_task_caused_says_so() {
        // (thread of the other task's 30ms poll, if any)
        let run = |hog: Option<u32>| {
            let mut s = Scenario::new();
            let t = s.spawn(TaskOpts::named("late"), 0);
            let other = s.spawn(TaskOpts::named("other"), 0);
            s.poll(t, 1000, 2000);
            s.poll(other, 3000, 4000);
            s.wake(t, None, 10 * MS);
            if let Some(th) = hog {
                s.thread(th);
                s.poll_v2(other, 20 * MS, 50 * MS, 1);
                s.thread(0);
            }
            s.poll(t, 200 * MS, 201 * MS);
            let m = s.model();
            let f: Vec<_> = m
                .findings()
                .of_kind(FindingKind::Starvation)
                .cloned()
                .collect();
            assert_eq!(f.len(), 1);
            (f[0].message.clone(), f[0].trace.clone())
        };
        let (m, _) = run(None);
        assert!(
            m.ends_with(
                "was woken but not polled for 190.0ms (threshold 50.0ms); no task of the \
                 program polled for 1ms or more meanwhile, on any thread: no task held its \
                 workers (the machine was busy, or many short polls)"
            ),
            "{m}"
        );
        let (m, trace) = run(Some(0));
        assert!(m.ends_with("(threshold 50.0ms)"), "{m}");
        assert!(
            trace
                .iter()
                .any(|l| l.starts_with("held the thread 30.0ms: task other#")),
            "{trace:?}"
        );
        let (m, _) = run(Some(1));
        assert!(m.ends_with("(threshold 50.0ms)"), "{m}");
    }

    /// Of more polls that held the thread than a description names, the
    /// four that held it longest are named, longest first.
    #[test]
    fn the_four_longest_hogs_are_named_longest_first() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("late"), 0);
        s.poll(t, 1000, 2000);
        s.wake(t, None, 10 * MS);
        let mut at = 20 * MS;
        for (i, ms) in [2u64, 7, 3, 9, 5, 4].into_iter().enumerate() {
            let hog = s.spawn(TaskOpts::named(&format!("hog{i}")), 0);
            s.poll(hog, at, at + ms * MS);
            at += ms * MS + MS;
        }
        s.poll(t, 200 * MS, 201 * MS);
        let m = s.model();
        // (The hogs, first polled long after their spawn, waited too.)
        let f: Vec<_> = m
            .findings()
            .of_kind(FindingKind::Starvation)
            .filter(|f| f.tasks.iter().any(|x| x.id == t.0))
            .collect();
        assert_eq!(f.len(), 1);
        let held: Vec<_> = f[0]
            .trace
            .iter()
            .filter_map(|l| l.strip_prefix("held the thread "))
            .map(|l| l.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            held,
            ["9.0ms", "7.0ms", "5.0ms", "4.0ms"],
            "{:?}",
            f[0].trace
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
