//! What the model tells its observer while it applies events.
//!
//! The model knows nothing of detectors: it applies events, and at the
//! moments where something worth judging happened it hands a [`Change`]
//! to an [`Observer`](super::Observer), together with the process as it
//! stands at that moment (read-only). The detectors (`crate::detect`) are
//! one such observer. The observer is a generic parameter of the model's
//! entry points, so that a change costs a direct call, not a dynamic
//! dispatch per event.
//!
//! Two sorts of change: the judged ones (a poll committed, a wait ended, a
//! task closing, a panic, an ERROR event, a stall), reported to every observer, and
//! the steps ([`ChangeKind::is_step`]: a span or task created, a poll
//! started or ended, an await tree received, a wake, a hand-off, a log, a
//! span closing), which say everything an event did and are reported only
//! to observers that ask for them ([`Observer::STEPS`](super::Observer::STEPS),
//! a constant: for the others the model does not even build them). The
//! timeline export is such an observer; the detectors are not.

use awaitscope_wire::{CloseKind, Level, Log, SpanId, TreeNode};

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
    /// A half of a stall of `task`'s poll that started at `start` was
    /// applied: the task's `stall` holds it, merged with the other half if
    /// that came first. The poll may be running still, ended, or already
    /// committed (then the stall's `poll_ns` says how long it was).
    Stalled {
        /// The task.
        task: SpanId,
        /// When the stalled poll started.
        start: u64,
        /// The half sent after the poll's end (else: at the crossing).
        ended: bool,
    },
    /// Step: a span that is not a task was created at `ts`; `p.spans`
    /// holds it (and `p.resources` too, for a resource).
    SpanCreated {
        /// The span.
        span: SpanId,
        /// When.
        ts: u64,
    },
    /// Step: span `span` (not a task) closes; `p.spans` still holds it,
    /// and removes it next.
    SpanClosing {
        /// The span.
        span: SpanId,
        /// When.
        ts: u64,
    },
    /// Step: task `task` was spawned at `ts`; `p.tasks` holds it, with its
    /// name, location, parent task and spawn span as its creation said.
    /// (A task span sent again, after a reconnect, is not a new spawn.)
    TaskSpawned {
        /// The task.
        task: SpanId,
        /// When.
        ts: u64,
    },
    /// Step: a poll of `task` started at `ts`, after the changes its start
    /// settled ([`Change::PollCommitted`], [`Change::WaitEnded`]). The task
    /// is running; its `last_poll_end` is still the previous poll's end.
    PollStarted {
        /// The task.
        task: SpanId,
        /// When.
        ts: u64,
    },
    /// Step: the running poll of `task` ended at `ts` (its span was exited,
    /// or the producer reconnected): the task holds it as its
    /// `pending_poll` until the next poll (or its close) says whether it
    /// was a real poll or the drop of the future.
    PollEnded {
        /// The task.
        task: SpanId,
        /// When.
        ts: u64,
    },
    /// Step: the producer sent the await tree of `task`'s poll (spans in
    /// entry order, with their depth below the task span); the task's
    /// `await_tree` is rebuilt from it.
    TreeSent {
        /// The task.
        task: SpanId,
        /// The tree as sent.
        spans: &'a [TreeNode],
    },
    /// Step: a waker of `task` was used to wake it at `ts` (not a clone or
    /// a drop), by task `by` if any.
    Woken {
        /// The task woken.
        task: SpanId,
        /// The task that woke it, if any.
        by: Option<SpanId>,
        /// When.
        ts: u64,
    },
    /// Step: span `span` follows from span `follows` (a hand-off, such as
    /// a message sent through a queue and received).
    FollowsFrom {
        /// The span that follows.
        span: SpanId,
        /// The span it follows from.
        follows: SpanId,
    },
    /// Step: a WARN or ERROR event of the program (an ERROR one is also
    /// reported as [`Change::Error`]).
    Logged {
        /// The event as sent.
        log: &'a Log,
        /// Its level.
        level: Level,
        /// Its `message` field (or the event's name).
        message: &'a str,
        /// Where it was emitted.
        location: Option<&'a Location>,
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
    /// [`Change::Stalled`].
    Stalled,
    /// [`Change::SpanCreated`].
    SpanCreated,
    /// [`Change::SpanClosing`].
    SpanClosing,
    /// [`Change::TaskSpawned`].
    TaskSpawned,
    /// [`Change::PollStarted`].
    PollStarted,
    /// [`Change::PollEnded`].
    PollEnded,
    /// [`Change::TreeSent`].
    TreeSent,
    /// [`Change::Woken`].
    Woken,
    /// [`Change::FollowsFrom`].
    FollowsFrom,
    /// [`Change::Logged`].
    Logged,
}

impl ChangeKind {
    /// Every kind, in index order.
    pub const ALL: [ChangeKind; 15] = [
        ChangeKind::PollCommitted,
        ChangeKind::WaitEnded,
        ChangeKind::TaskClosing,
        ChangeKind::Panic,
        ChangeKind::Error,
        ChangeKind::Stalled,
        ChangeKind::SpanCreated,
        ChangeKind::SpanClosing,
        ChangeKind::TaskSpawned,
        ChangeKind::PollStarted,
        ChangeKind::PollEnded,
        ChangeKind::TreeSent,
        ChangeKind::Woken,
        ChangeKind::FollowsFrom,
        ChangeKind::Logged,
    ];

    /// Whether changes of this kind are steps, reported only to observers
    /// that want them ([`Observer::STEPS`](super::Observer::STEPS)).
    pub fn is_step(self) -> bool {
        !matches!(
            self,
            ChangeKind::PollCommitted
                | ChangeKind::WaitEnded
                | ChangeKind::TaskClosing
                | ChangeKind::Panic
                | ChangeKind::Error
                | ChangeKind::Stalled
        )
    }
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
            Change::Stalled { .. } => ChangeKind::Stalled,
            Change::SpanCreated { .. } => ChangeKind::SpanCreated,
            Change::SpanClosing { .. } => ChangeKind::SpanClosing,
            Change::TaskSpawned { .. } => ChangeKind::TaskSpawned,
            Change::PollStarted { .. } => ChangeKind::PollStarted,
            Change::PollEnded { .. } => ChangeKind::PollEnded,
            Change::TreeSent { .. } => ChangeKind::TreeSent,
            Change::Woken { .. } => ChangeKind::Woken,
            Change::FollowsFrom { .. } => ChangeKind::FollowsFrom,
            Change::Logged { .. } => ChangeKind::Logged,
        }
    }
}
