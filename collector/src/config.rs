//! Configuration of the model: retention and detector thresholds.

/// Nanoseconds in a millisecond.
pub const MS: u64 = 1_000_000;
/// Nanoseconds in a second.
pub const SEC: u64 = 1_000_000_000;

/// Everything the model can be tuned with.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long and how many completed tasks are kept in detail.
    pub retention: Retention,
    /// Detector thresholds.
    pub thresholds: Thresholds,
    /// Most distinct findings kept; further ones are counted as suppressed.
    pub max_findings: usize,
    /// Period, on each process's clock, of the state detectors' scan.
    pub scan_interval_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            thresholds: Thresholds::default(),
            max_findings: 10_000,
            scan_interval_ns: SEC,
        }
    }
}

/// Retention of completed tasks: beyond these they are folded into a
/// per-location summary.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Completed tasks older than this (process clock, ns) are summarised.
    pub completed_max_age_ns: u64,
    /// At most this many completed tasks per process are kept in detail.
    pub completed_max_count: usize,
    /// At most this many summary groups (spawn location and name) per
    /// process; further tasks are summarised under `(other)`.
    pub max_summary_groups: usize,
    /// At most this many WARN/ERROR events are kept per task (all are counted).
    pub logs_per_task: usize,
    /// At most this many nodes in one task's await tree.
    pub max_await_nodes: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            completed_max_age_ns: 60 * SEC,
            completed_max_count: 1000,
            max_summary_groups: 1024,
            logs_per_task: 16,
            max_await_nodes: 64,
        }
    }
}

/// Detector thresholds (durations in nanoseconds).
#[derive(Clone, Debug)]
pub struct Thresholds {
    /// `long_poll`: a poll longer than this.
    pub long_poll_ns: u64,
    /// `starvation`: woken but not polled for longer than this.
    pub starvation_ns: u64,
    /// `lost_waker`: pending without a live waker for longer than this
    /// (a grace period for events of other threads arriving late).
    pub lost_waker_grace_ns: u64,
    /// `never_yielded`: in its first poll for longer than this.
    pub never_yielded_ns: u64,
    /// `self_wake`: at least this many wakes...
    pub self_wake_min_wakes: u64,
    /// ...of which more than this fraction are self-wakes.
    pub self_wake_ratio: f64,
    /// `stuck`: pending on the same call on a tokio resource for longer
    /// than this.
    pub stuck_ns: u64,
    /// `deadlock`: every task of the cycle idle for longer than this.
    pub deadlock_grace_ns: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            long_poll_ns: 10 * MS,
            starvation_ns: 50 * MS,
            lost_waker_grace_ns: 100 * MS,
            never_yielded_ns: SEC,
            self_wake_min_wakes: 10,
            self_wake_ratio: 0.5,
            stuck_ns: 10 * SEC,
            deadlock_grace_ns: 100 * MS,
        }
    }
}
