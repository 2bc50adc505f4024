//! Detectors and their deduplicated findings.
//!
//! A detector is a value behind the [`Detector`] trait: it observes the
//! model's [`Change`]s as events are applied (`long_poll` and
//! `descheduled` on committed polls and on stalls that arrive after them, `starvation` on the poll that ends a wait, `self_wake` and
//! `panic` on a task's close, `error`, `panic`), looks at each live task on
//! a scan of its process (`lost_waker`, `never_yielded`, `starvation` of
//! tasks still waiting, `stuck`, `self_wake`), or at the whole process
//! after them (`deadlock`, `dropped_events`). The [`Engine`] holds the
//! detectors and everything they remember (the episodes in progress on
//! each task, the last scan of each process) and gathers their
//! observations into [`Findings`]; the model knows nothing of them.

use std::fmt;

use serde::{Deserialize, Serialize};

use awaitscope_wire::ProcessKey;

use crate::config::Thresholds;
use crate::model::{Change, ChangeKind, Process, Task};

pub mod deadlock;
pub mod dropped_events;
pub mod engine;
pub mod error;
pub mod findings;
pub mod late_timer;
pub mod long_poll;
pub mod lost_waker;
pub mod native_frames;
pub mod never_yielded;
pub mod panic;
pub mod poll_trace;
pub mod self_wake;
pub mod starvation;
pub mod stuck;

pub use engine::{Cx, Engine, Episodes};
pub use findings::{
    Finding, FindingTask, Findings, Observation, Occurrence, Tally, MAX_TASKS_PER_FINDING,
};

/// What a finding is about. Serialised as the snake_case strings of
/// [`FindingKind::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A poll longer than the threshold (blocking the worker thread).
    LongPoll,
    /// A poll longer than the threshold that spent most of it waiting for
    /// a CPU (the machine was busy, not the code).
    Descheduled,
    /// Woken but not polled for longer than the threshold.
    Starvation,
    /// Pending, no live waker, not woken: it will never be polled again.
    LostWaker,
    /// Still in its first poll after longer than the threshold.
    NeverYielded,
    /// Woke itself in most of its wakes (busy looping through the scheduler).
    SelfWake,
    /// A cycle of tasks each waiting on a lock held by the next.
    Deadlock,
    /// Pending on the same call on a tokio resource (a lock, a semaphore,
    /// a oneshot) for longer than the threshold.
    Stuck,
    /// An ERROR event of the program.
    Error,
    /// A panic.
    Panic,
    /// Events were dropped by a producer or by the collector.
    DroppedEvents,
}

impl FindingKind {
    /// Every kind.
    pub const ALL: [FindingKind; 11] = [
        FindingKind::LongPoll,
        FindingKind::Descheduled,
        FindingKind::Starvation,
        FindingKind::LostWaker,
        FindingKind::NeverYielded,
        FindingKind::SelfWake,
        FindingKind::Deadlock,
        FindingKind::Stuck,
        FindingKind::Error,
        FindingKind::Panic,
        FindingKind::DroppedEvents,
    ];

    /// The kind's name in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::LongPoll => "long_poll",
            FindingKind::Descheduled => "descheduled",
            FindingKind::Starvation => "starvation",
            FindingKind::LostWaker => "lost_waker",
            FindingKind::NeverYielded => "never_yielded",
            FindingKind::SelfWake => "self_wake",
            FindingKind::Deadlock => "deadlock",
            FindingKind::Stuck => "stuck",
            FindingKind::Error => "error",
            FindingKind::Panic => "panic",
            FindingKind::DroppedEvents => "dropped_events",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<FindingKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Default severity of the kind.
    pub fn severity(self) -> Severity {
        match self {
            FindingKind::Deadlock
            | FindingKind::LostWaker
            | FindingKind::Error
            | FindingKind::Panic => Severity::Error,
            FindingKind::SelfWake | FindingKind::Descheduled | FindingKind::DroppedEvents => {
                Severity::Info
            }
            _ => Severity::Warning,
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Likely a performance or liveness problem.
    Warning,
    /// A bug: the program is wrong or stalled.
    Error,
}

/// Which hooks of a [`Detector`] the [`Engine`] calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hooks {
    /// The kinds of [`Change`] passed to [`Detector::on_change`].
    pub changes: &'static [ChangeKind],
    /// Whether [`Detector::on_task`] is called for each live task on a scan.
    pub tasks: bool,
    /// Whether [`Detector::on_scan`] is called once per scan of a process.
    pub scan: bool,
}

/// A detector: judges what the model reports and what it holds, and makes
/// observations through its [`Cx`]. It sees each process read-only; what
/// it remembers between calls it keeps in itself (keyed by process) or in
/// the episodes of the [`Cx`].
pub trait Detector: fmt::Debug + Send {
    /// The kind of findings it makes.
    fn kind(&self) -> FindingKind;

    /// The hooks it wants called.
    fn hooks(&self) -> Hooks;

    /// The duration at or under which this detector ignores a timed change
    /// of `kind` ([`Change::timed`]: a committed poll, an ended wait) of a
    /// task without an episode in progress; `None` (the default): it wants
    /// every change of `kind`. The engine does not call [`Detector::on_change`]
    /// for changes that every detector of their kind ignores: most polls are
    /// short and most waits brief, and this keeps them from costing a call
    /// per detector.
    fn quiet_up_to(&self, _kind: ChangeKind, _thresholds: &Thresholds) -> Option<u64> {
        None
    }

    /// `change` happened in `p` (one of [`Hooks::changes`]).
    fn on_change(&mut self, _p: &Process, _change: &Change<'_>, _cx: &mut Cx<'_>) {}

    /// A scan of `p` at `now` looks at its live task `t` (tasks in id
    /// order, after `t`'s settled poll is committed).
    fn on_task(&mut self, _p: &Process, _t: &Task, _now: u64, _cx: &mut Cx<'_>) {}

    /// A scan of `p` at `now`, after its tasks.
    fn on_scan(&mut self, _p: &Process, _now: u64, _cx: &mut Cx<'_>) {}

    /// What it remembers of process `key` as a whole, for another model to
    /// continue from (see [`Recollection`]); `None` (the default): nothing.
    fn recall(&self, _key: &ProcessKey) -> Option<Recollection> {
        None
    }

    /// Continues from another model's recollection of process `key`. Each
    /// detector takes the recollections of its own kind and ignores the rest.
    fn resume(&mut self, _key: ProcessKey, _r: &Recollection) {}
}

/// What a detector remembers of one process as a whole, handed to another
/// model that continues from this one (a viewer joining a running `serve`),
/// so that an episode in progress there is continued, not counted again.
/// The episodes of single tasks travel separately (see
/// [`Engine::episodes`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recollection {
    /// `deadlock`: the deduplication keys of the cycles found at the last
    /// scan.
    Deadlocks(Vec<String>),
    /// `dropped_events`: the producer's and the collector's drop counts
    /// already reported.
    ReportedDrops(u64, u64),
}

/// The standard detectors, in the order the engine calls them: the order
/// in which one scan, or one change, makes findings (and so the order of
/// findings in reports).
pub fn standard() -> Vec<Box<dyn Detector>> {
    vec![
        Box::new(long_poll::LongPoll),
        Box::new(lost_waker::LostWaker),
        Box::new(never_yielded::NeverYielded),
        Box::new(starvation::Starvation::default()),
        Box::new(late_timer::LateTimer::default()),
        Box::new(stuck::Stuck::default()),
        Box::new(self_wake::SelfWake),
        Box::new(deadlock::Deadlock::default()),
        Box::new(error::ErrorEvents),
        Box::new(panic::Panics),
        Box::new(dropped_events::DroppedEvents::default()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_strings_round_trip() {
        let names: Vec<_> = FindingKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "long_poll",
                "descheduled",
                "starvation",
                "lost_waker",
                "never_yielded",
                "self_wake",
                "deadlock",
                "stuck",
                "error",
                "panic",
                "dropped_events"
            ]
        );
        for k in FindingKind::ALL {
            assert_eq!(FindingKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
