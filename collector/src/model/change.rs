//! What the model tells its observer while it applies events.
//!
//! The model knows nothing of detectors: it applies events, and at the
//! moments where something worth judging happened it hands a [`Change`] to
//! an [`Observer`], together with the process as it stands at that moment
//! (read-only). The detectors (`crate::detect`) are one such observer.
//! [`Observer`] is a generic parameter of the model's entry points, so that
//! a change costs a direct call, not a dynamic dispatch per event.

use awaitscope_wire::{CloseKind, SpanId};

use super::process::Process;
use super::span::Location;
use super::task::Task;

/// Something that happened to a process, reported as it is applied.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// A poll of `task` turned out to be a real poll (not the drop of its
    /// future): the next poll started, the task stayed idle long after it,
    /// or the input ended. The task is as the poll left it (its await tree
    /// is the poll's).
    PollCommitted {
        /// The task.
        task: SpanId,
        /// When the poll started.
        start: u64,
        /// How long it ran, in ns.
        duration: u64,
    },
    /// A poll of `task` started at `ts` and ended a wait of `waited` ns
    /// since the task was woken (or spawned).
    WaitEnded {
        /// The task.
        task: SpanId,
        /// When the poll started.
        ts: u64,
        /// The wait, in ns.
        waited: u64,
    },
    /// `task` ends at `ts`; the process still holds it among its live tasks
    /// (with its counts and its `panic`), and removes it next.
    TaskClosing {
        /// The task, as it closes.
        task: &'a Task,
        /// How it ended.
        kind: CloseKind,
        /// When the task's span closed, ns since the process's start.
        ts: u64,
    },
    /// A panic was caught by the producer's panic hook.
    Panic {
        /// The task that was being polled, if any.
        task: Option<SpanId>,
        /// The span that was current, if any.
        span: Option<SpanId>,
        /// The panic's message.
        message: &'a str,
        /// Where it panicked, when known.
        location: Option<&'a Location>,
        /// When the panic hook ran, ns since the process's start.
        ts: u64,
        /// The producer's causal trace (empty if it sent none).
        trace: &'a [String],
    },
    /// An ERROR event of the program.
    Error {
        /// Its callsite.
        callsite: u32,
        /// The span it was emitted in, if any.
        span: Option<SpanId>,
        /// The task it is attributed to, if any.
        task: Option<SpanId>,
        /// Its `message` field (or the event's name).
        message: &'a str,
        /// Where it was emitted.
        location: Option<&'a Location>,
        /// When the event was emitted, ns since the process's start.
        ts: u64,
        /// The producer's causal trace (empty if it sent none).
        trace: &'a [String],
    },
}

/// The kinds of [`Change`], as indices (for tables of who wants which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// [`Change::PollCommitted`].
    PollCommitted,
    /// [`Change::WaitEnded`].
    WaitEnded,
    /// [`Change::TaskClosing`].
    TaskClosing,
    /// [`Change::Panic`].
    Panic,
    /// [`Change::Error`].
    Error,
}

impl ChangeKind {
    /// Every kind, in index order.
    pub const ALL: [ChangeKind; 5] = [
        ChangeKind::PollCommitted,
        ChangeKind::WaitEnded,
        ChangeKind::TaskClosing,
        ChangeKind::Panic,
        ChangeKind::Error,
    ];
}

impl Change<'_> {
    /// The task and the duration (of the poll, of the wait) of a change
    /// that has one.
    #[inline]
    pub fn timed(&self) -> Option<(SpanId, u64)> {
        match *self {
            Change::PollCommitted { task, duration, .. } => Some((task, duration)),
            Change::WaitEnded { task, waited, .. } => Some((task, waited)),
            _ => None,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> ChangeKind {
        match self {
            Change::PollCommitted { .. } => ChangeKind::PollCommitted,
            Change::WaitEnded { .. } => ChangeKind::WaitEnded,
            Change::TaskClosing { .. } => ChangeKind::TaskClosing,
            Change::Panic { .. } => ChangeKind::Panic,
            Change::Error { .. } => ChangeKind::Error,
        }
    }
}

/// Receives the model's [`Change`]s, each with the process it happened in.
pub trait Observer {
    /// `change` happened in `p`; `p` is as the change left it.
    fn change(&mut self, p: &Process, change: &Change<'_>);
}

/// No observer: the model alone.
impl Observer for () {
    #[inline]
    fn change(&mut self, _: &Process, _: &Change<'_>) {}
}
