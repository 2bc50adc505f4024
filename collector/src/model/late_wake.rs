//! A timer's wake that came late, as the model keeps it for the detectors
//! (see [`super::timer`], which finds them).

use awaitscope_wire::SpanId;

use super::span::Location;

/// Most late wakes kept per process until the detectors read them.
pub const MAX_LATE_WAKES: usize = 64;
/// Most tasks kept as having held the thread of a late wake.
pub const MAX_HOGS: usize = 4;

/// A timer's wake that came late.
#[derive(Clone, Debug)]
pub struct LateWake {
    /// The task woken.
    pub task: SpanId,
    /// The timer's deadline, ns since the process's start.
    pub deadline: u64,
    /// When the wake came.
    pub woken: u64,
    /// The task's await path down to the timer, innermost first.
    pub path: Vec<String>,
    /// The first location of that path (the user's line of the timer).
    pub location: Option<Location>,
    /// The entry of `path` the finding names the timer by: the innermost
    /// with a location (a `Sleep` tokio made inside `Interval::tick` or
    /// `timeout` has none; the user's call does), else the innermost.
    pub named: usize,
    /// The tasks whose polls held the thread between the deadline and the
    /// wake, with how long (ns) within that window, longest first.
    pub hogs: Vec<(SpanId, u64)>,
}

/// A task whose polls held a thread during a window (see
/// `Process::held_the_thread`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hog {
    /// The task.
    pub task: SpanId,
    /// How long its polls held the thread within the window, in ns.
    pub held_ns: u64,
    /// Its longest poll overlapping the window, as (start, end).
    pub poll: (u64, u64),
}
