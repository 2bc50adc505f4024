//! `starvation` by a late timer: a tokio timer (`Sleep`) whose wake came
//! later than the starvation threshold past its deadline. The task's wait
//! for a poll after the wake can look fine; the time was lost before the
//! wake, while the thread that runs the timers was busy polling other
//! tasks. The model keeps these wakes ([`crate::model::timer`]); the
//! finding names the late task's await path and the tasks whose polls held
//! its thread meanwhile.

use std::collections::HashMap;

use awaitscope_wire::ProcessKey;

use super::{starvation, Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use crate::model::late_wake::LateWake;
use crate::model::task::group_key;
use crate::model::{task_label, Process};
use crate::units::fmt_ns_brief;

/// The late-timer `starvation` detector: at each scan, reports the late
/// wakes the model kept since the last scan.
#[derive(Debug, Default)]
pub struct LateTimer {
    /// Per process, the wake time of the latest late wake reported.
    reported: HashMap<ProcessKey, u64>,
}

impl Detector for LateTimer {
    fn kind(&self) -> FindingKind {
        FindingKind::Starvation
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            scan: true,
            ..Hooks::default()
        }
    }

    fn on_scan(&mut self, p: &Process, _now: u64, cx: &mut Cx<'_>) {
        let seen = self.reported.entry(p.key).or_default();
        for w in p.late_wakes.iter().filter(|w| w.woken > *seen) {
            if let Some(o) = observe(p, w, cx.thresholds.starvation_ns) {
                cx.observe(o);
            }
        }
        if let Some(last) = p.late_wakes.back() {
            *seen = (*seen).max(last.woken);
        }
    }
}

/// The finding of late wake `w`.
pub fn observe(p: &Process, w: &LateWake, threshold: u64) -> Option<Observation> {
    let t = p.task(w.task)?;
    let late = w.woken.saturating_sub(w.deadline);
    let mut trace = w.path.clone();
    let mut tasks = vec![FindingTask::of(t)];
    let mut names = Vec::new();
    for (h, busy) in &w.hogs {
        if let Some(ht) = p.task(*h) {
            trace.push(format!(
                "held the thread: {} (polled {} past the deadline)",
                task_label(ht),
                fmt_ns_brief(*busy)
            ));
            names.push(task_label(ht));
            tasks.push(FindingTask::of(ht));
        }
    }
    let what = w.path.get(w.named).map_or("its timer", String::as_str);
    let by = if names.is_empty() {
        // Nobody held the timers' thread: say so when no task held any
        // worker either (the machine, not the program, was late).
        if starvation::no_task_held_a_worker(p, w.task, w.deadline, w.woken) {
            starvation::NO_TASK_HELD.to_string()
        } else {
            String::new()
        }
    } else {
        format!("; the thread was busy polling {}", names.join(", "))
    };
    Some(Observation {
        kind: FindingKind::Starvation,
        process: p.key,
        key: format!("timer|{}", group_key(t)),
        tasks,
        location: w.location.clone().or_else(|| t.location.clone()),
        message: format!(
            "{} was woken {} after its timer's deadline ({what}; threshold {}){by}",
            task_label(t),
            fmt_ns_brief(late),
            fmt_ns_brief(threshold)
        ),
        trace,
        duration_ns: Some(late),
        ts: w.woken,
        new_occurrence: true,
    })
}

#[cfg(test)]
mod tests {
    use awaitscope_wire::WakeOp;

    use crate::config::MS;
    use crate::testing::{Scenario, TaskOpts};
    use crate::{Config, FindingKind, Model, Retention};

    /// A task sleeping on `timer`, woken 190ms past its deadline by the
    /// timer wheel; its last poll took and released a lock first. With
    /// `room`, its await tree has room for the sleep; else the lock filled
    /// it (two nodes).
    fn late(room: bool) -> crate::Finding {
        let cfg = Config {
            retention: Retention {
                max_await_nodes: if room { 64 } else { 2 },
                ..Default::default()
            },
            ..Default::default()
        };
        let mut s = Scenario::with_model(Model::new(cfg));
        let timer = s.timer(0);
        let m = s.mutex(0);
        let t = s.spawn(TaskOpts::named("ticker"), 0);
        s.begin_poll(t, 1000);
        s.lock_and_release(t, m, 1100);
        s.timer_due(t, timer, 10, 1300);
        s.sleep(t, timer, 1300);
        s.end_poll(t, 1400);
        s.waker(t, WakeOp::Clone, 1300);
        s.wake(t, None, 200 * MS + 1300);
        s.poll(t, 201 * MS, 202 * MS);
        s.tick(300 * MS);
        let m = s.model();
        let f: Vec<_> = m
            .findings()
            .of_kind(FindingKind::Starvation)
            .cloned()
            .collect();
        assert_eq!(f.len(), 1, "{:?}", m.findings().list());
        f[0].clone()
    }

    #[test]
    fn the_late_timer_is_named_where_the_task_sleeps_on_it() {
        let f = late(true);
        assert!(
            f.message
                .contains("was woken 190.0ms after its timer's deadline (tokio::time::sleep"),
            "{}",
            f.message
        );
        assert!(
            !f.trace.iter().any(|l| l.contains("Mutex")),
            "{:?}",
            f.trace
        );
        // No task polled while it was late: the finding says so.
        assert!(
            f.message.contains("no task held its workers"),
            "{}",
            f.message
        );
    }

    /// A task whose poll held the thread past the deadline is named, and
    /// the finding does not say that no task held it.
    #[test]
    fn the_task_that_held_the_thread_is_named() {
        let mut s = Scenario::new();
        let timer = s.timer(0);
        let t = s.spawn(TaskOpts::named("ticker"), 0);
        let hog = s.spawn(TaskOpts::named("hog"), 0);
        s.begin_poll(t, 1000);
        s.timer_due(t, timer, 10, 1300);
        s.sleep(t, timer, 1300);
        s.end_poll(t, 1400);
        s.waker(t, WakeOp::Clone, 1300);
        s.poll(hog, 2 * MS, 195 * MS);
        s.wake(t, None, 200 * MS + 1300);
        s.poll(t, 201 * MS, 202 * MS);
        s.tick(300 * MS);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Starvation).collect();
        let late = f
            .iter()
            .find(|f| f.message.contains("after its timer's deadline"))
            .unwrap_or_else(|| panic!("{:?}", m.findings().list()));
        assert!(
            late.message.contains("busy polling task hog#3"),
            "{}",
            late.message
        );
        assert!(!late.message.contains("no task held"), "{}", late.message);
    }

    /// A timer tokio made for the user's call (an interval's `Sleep`, made
    /// in tokio's code, so without a location of the user's) is named by
    /// that call, where the user's line is, not by the bare `Sleep`.
    #[test]
    fn a_timer_inside_an_interval_is_named_by_the_users_call() {
        use crate::model::late_wake::LateWake;
        use crate::model::span::Location;

        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("ticker"), 0);
        s.poll(t, 1000, 2000);
        let m = s.model();
        let p = m.processes().next().expect("the scenario's process");
        let w = LateWake {
            task: t,
            deadline: MS,
            woken: 200 * MS,
            path: vec![
                "tokio::time::sleep".into(),
                "tokio::time::Interval::tick @ src/load.rs:183:20".into(),
                "load".into(),
            ],
            location: Some(Location {
                file: "src/load.rs".into(),
                line: 183,
                col: Some(20),
            }),
            named: 1,
            hogs: Vec::new(),
        };
        let o = super::observe(p, &w, 50 * MS).expect("an observation");
        assert!(
            o.message.contains(
                "after its timer's deadline (tokio::time::Interval::tick @ src/load.rs:183:20;"
            ),
            "{}",
            o.message
        );
        assert_eq!(o.location.map(|l| l.line), Some(183));
    }

    /// Not in the tree, the timer is not told by the lock the poll
    /// released (nor is the finding's location the lock's).
    #[test]
    fn a_timer_not_in_the_tree_is_not_told_by_a_lock_released() {
        let f = late(false);
        assert!(
            f.message
                .contains("was woken 190.0ms after its timer's deadline (its timer;"),
            "{}",
            f.message
        );
        assert!(
            !f.trace.iter().any(|l| l.contains("Mutex")),
            "{:?}",
            f.trace
        );
        assert_eq!(f.location.as_ref().map(|l| l.line), Some(10));
    }
}
