//! Tasks: state, polls, times, histograms, wakes and await tree.

use std::collections::VecDeque;

use awaitscope_wire::{names, Field, Level, SpanId};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::await_tree::AwaitTree;
use super::span::Location;
use super::stall::PollStall;

/// Most wakers remembered per task in [`Task::woken_by`].
pub const WOKEN_BY: usize = 8;

/// State of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Being polled.
    Running,
    /// Woken (or just spawned) and waiting to be polled.
    Scheduled,
    /// Pending, waiting to be woken.
    Idle,
    /// Its future completed.
    Completed,
    /// Dropped before completing (aborted, or runtime shutdown).
    Cancelled,
    /// Panicked while being polled.
    Panicked,
}

impl TaskState {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Scheduled => "scheduled",
            TaskState::Idle => "idle",
            TaskState::Completed => "completed",
            TaskState::Cancelled => "cancelled",
            TaskState::Panicked => "panicked",
        }
    }

    /// Whether the task has ended.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Cancelled | TaskState::Panicked
        )
    }
}

/// A WARN or ERROR event of the program, attributed to a task.
#[derive(Clone, Debug, Serialize)]
pub struct LogRecord {
    /// WARN or ERROR: the only levels of program events the producer sends.
    pub level: Level,
    /// The `message` field (or the event name).
    pub message: String,
    /// Where it was emitted.
    pub location: Option<Location>,
    /// When the event was emitted, ns since the process's start.
    pub ts: u64,
}

/// Poll and scheduled time histograms, in microseconds (1 significant
/// digit, auto-resizing: a few hundred bytes per task).
#[derive(Clone, Debug)]
pub struct Histograms {
    /// Poll durations, µs.
    pub poll_us: Histogram<u32>,
    /// Times from wake to poll.
    pub scheduled_us: Histogram<u32>,
}

impl Histograms {
    pub(crate) fn new() -> Self {
        // Every task has its pair: copy a new one rather than size one.
        static EMPTY: std::sync::OnceLock<Histograms> = std::sync::OnceLock::new();
        EMPTY
            .get_or_init(|| {
                let h = || Histogram::<u32>::new(1).expect("valid sigfig");
                Self {
                    poll_us: h(),
                    scheduled_us: h(),
                }
            })
            .clone()
    }
}

/// Records `ns` in `h` (as microseconds, saturating on error).
pub fn record_us(h: &mut Histogram<u32>, ns: u64) {
    record_value_us(h, (ns / 1000).max(1));
}

fn record_value_us(h: &mut Histogram<u32>, us: u64) {
    // `saturating_record` does not grow an auto-resizing histogram: it
    // clamps to its current highest value (2 for a new one).
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

/// [`record_value_us`] of `n` equal values at once.
fn record_n_us(h: &mut Histogram<u32>, us: u64, n: u32) {
    if h.record_n(us, n).is_err() {
        h.saturating_record_n(us, n);
    }
}

/// Samples kept in a task before they go into its histograms.
const SAMPLES: usize = 16;

/// Marks a sample of the scheduled-time histogram (else: a poll time).
const SCHEDULED: u32 = 1 << 31;

/// Poll and scheduled times (in µs) not yet in a task's histograms.
///
/// Recording a value touches the task's boxed histograms and their counts,
/// out of the cache when many tasks are live: two records per poll were a
/// tenth of ingest. The samples wait in the task (which the poll touches
/// anyway) and go into the histograms sixteen at a time (one cache line of
/// samples), in order, so the histograms come out as if recorded one by
/// one.
#[derive(Clone, Copy, Debug, Default)]
struct Samples {
    us: [u32; SAMPLES],
    len: u8,
}

impl Samples {
    /// Records the samples into `h` and forgets them: each histogram's in
    /// order, a run of equal values as one record of that many (polls of a
    /// task often take the same number of µs; the histogram comes out the
    /// same, for less than one record per value).
    fn drain_into(&mut self, h: &mut Histograms) {
        let samples = &self.us[..usize::from(self.len)];
        let Histograms {
            poll_us,
            scheduled_us,
        } = h;
        for (kind, hist) in [(0, poll_us), (SCHEDULED, scheduled_us)] {
            let mut run: Option<(u32, u32)> = None;
            for &v in samples.iter().filter(|&&v| v & SCHEDULED == kind) {
                let v = v & !SCHEDULED;
                match &mut run {
                    Some((r, n)) if *r == v => *n += 1,
                    _ => {
                        if let Some((r, n)) = run {
                            record_n_us(hist, u64::from(r), n);
                        }
                        run = Some((v, 1));
                    }
                }
            }
            if let Some((r, n)) = run {
                record_n_us(hist, u64::from(r), n);
            }
        }
        self.len = 0;
    }
}

/// The last poll, kept until the next poll or the close decides whether it
/// was a poll or the drop of the future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingPoll {
    /// When the poll started, ns since the process's start.
    pub start: u64,
    /// When the task span was exited, ending the poll (or the drop).
    pub end: u64,
}

/// A task (a span of class `Task`).
#[derive(Clone, Debug)]
pub struct Task {
    /// Span id (the task's id in the model).
    pub id: SpanId,
    /// Callsite of the task span.
    pub callsite: u32,
    /// tokio's `task.id`, if recorded.
    pub tokio_id: Option<u64>,
    /// `task.name`, if non-empty.
    pub name: Option<String>,
    /// The `kind` field (`task`, `blocking`, `block_on`, `local`).
    pub kind: Option<String>,
    /// Where the task was spawned (the span's `loc.*` fields); `None` when
    /// the span carried none.
    pub location: Option<Location>,
    /// The task being polled on the thread that spawned this one; `None` for
    /// a task spawned outside any task (from `main`, a plain thread).
    pub parent: Option<SpanId>,
    /// Span current at spawn.
    pub spawn_span: Option<SpanId>,
    /// Task span fields.
    pub fields: Vec<Field>,
    /// When the task's span was created, ns since the process's start.
    pub created: u64,
    /// When the task's span closed, ns since the process's start; `None`
    /// while the task lives.
    pub closed: Option<u64>,
    /// Where the task is in its life: running, scheduled or idle while it
    /// lives, then how it ended ([`TaskState::is_closed`]).
    pub state: TaskState,
    /// Polls whose end is known to be a poll, not the drop of the future
    /// (see [`PendingPoll`]).
    pub polls: u64,
    /// Busy time of committed polls.
    pub busy_ns: u64,
    /// Time spent scheduled (woken, waiting for a poll).
    pub scheduled_ns: u64,
    /// Longest committed poll.
    pub max_poll_ns: u64,
    /// Histograms (created on first use), without the latest samples:
    /// read them with [`Task::histograms`].
    hist: Option<Box<Histograms>>,
    /// Samples not yet in `hist`.
    samples: Samples,
    /// Wakes (wake and wake_by_ref).
    pub wakes: u64,
    /// Wakes by the task itself.
    pub self_wakes: u64,
    /// Who woke it: the tasks (none: outside any task) and how often, most
    /// frequent first, at most [`WOKEN_BY`].
    pub woken_by: Vec<(Option<SpanId>, u64)>,
    /// Live wakers (clones minus drops and consuming wakes).
    pub wakers_alive: u64,
    /// Woken since the last poll started.
    pub woken_since_poll: bool,
    /// Woken while being polled.
    pub(crate) woken_during_poll: bool,
    /// The await tree was rebuilt from `Enter` events in the current poll.
    pub(crate) tree_from_enters: bool,
    /// Scheduled since (when Scheduled).
    pub scheduled_since: Option<u64>,
    /// Start of the current poll (when Running).
    pub poll_start: Option<u64>,
    /// The last poll, not yet committed.
    pub pending_poll: Option<PendingPoll>,
    /// End of the last poll.
    pub last_poll_end: Option<u64>,
    /// The last committed poll: a stall that arrives after the commit is
    /// of a poll already judged (see [`super::stall`]).
    pub last_committed: Option<PendingPoll>,
    /// The latest committed poll of 1 ms or more: the producer samples
    /// polls past its stall threshold and symbolises their stacks off its
    /// workers, so their stall may arrive after later (short) polls
    /// committed, and still needs its poll's duration.
    pub last_long: Option<PendingPoll>,
    /// Await tree of the current or last poll.
    pub await_tree: AwaitTree,
    /// The await-tree leaf span of the last poll, and since when it has been
    /// the leaf.
    pub leaf: Option<(SpanId, u64)>,
    /// `await_tree` changed since `leaf` was taken from it (set by whatever
    /// changes the tree: the end of a poll looks for its leaf only then).
    pub(crate) tree_changed: bool,
    /// Resources the task is waiting on (polled, not ready, in its last poll).
    pub waiting_on: Vec<SpanId>,
    /// Locks whose state update said this task took them in the running
    /// poll: at its end, each records where (its await path).
    pub(crate) acquired: Vec<SpanId>,
    /// The producer thread of its latest poll.
    pub last_thread: Option<u32>,
    /// Recent WARN/ERROR events.
    pub logs: VecDeque<LogRecord>,
    /// WARN events seen.
    pub warn_count: u64,
    /// ERROR events seen.
    pub error_count: u64,
    /// The message of the panic caught while the task was being polled;
    /// `None` if it did not panic (or the panic hook saw no task).
    pub panic: Option<String>,
    /// The stalls of its latest stalled polls the producer sent, oldest
    /// poll first, at most [`STALLS_KEPT`]: each poll's own, its halves
    /// merged by the poll's start (see [`Task::stall`]). Empty for most
    /// tasks, which never stall.
    pub stalls: Vec<PollStall>,
}

/// Most stalls a task keeps (see [`Task::stalls`]): the producer sends a
/// poll's halves as it reads them, and may send an older poll's late half
/// after a newer poll's crossing; each still judges its own poll.
pub const STALLS_KEPT: usize = 4;

impl Task {
    /// A new task spawned at `ts`.
    pub fn new(id: SpanId, callsite: u32, ts: u64) -> Self {
        Self {
            id,
            callsite,
            tokio_id: None,
            name: None,
            kind: None,
            location: None,
            parent: None,
            spawn_span: None,
            fields: Vec::new(),
            created: ts,
            closed: None,
            state: TaskState::Scheduled,
            polls: 0,
            busy_ns: 0,
            scheduled_ns: 0,
            max_poll_ns: 0,
            hist: None,
            samples: Samples::default(),
            wakes: 0,
            self_wakes: 0,
            woken_by: Vec::new(),
            wakers_alive: 0,
            woken_since_poll: true,
            woken_during_poll: false,
            tree_from_enters: false,
            scheduled_since: Some(ts),
            poll_start: None,
            pending_poll: None,
            last_poll_end: None,
            last_committed: None,
            last_long: None,
            await_tree: AwaitTree::default(),
            leaf: None,
            tree_changed: false,
            waiting_on: Vec::new(),
            acquired: Vec::new(),
            last_thread: None,
            logs: VecDeque::new(),
            warn_count: 0,
            error_count: 0,
            panic: None,
            stalls: Vec::new(),
        }
    }

    /// The stall of its poll that started at `start`, if the producer sent
    /// either half of it (and it is among the [`STALLS_KEPT`] latest).
    pub fn stall(&self, start: u64) -> Option<&PollStall> {
        self.stalls.iter().find(|s| s.start == start)
    }

    /// [`Task::stall`], to change.
    pub fn stall_mut(&mut self, start: u64) -> Option<&mut PollStall> {
        self.stalls.iter_mut().find(|s| s.start == start)
    }

    /// The stall of its poll that started at `start`, made empty if none
    /// is kept. Stalls are kept in the order of their polls' starts; beyond
    /// [`STALLS_KEPT`], the oldest whose poll is settled (committed, both
    /// halves in) is forgotten, else the oldest: a poll older than all
    /// those kept, none of them settled, gets none.
    pub fn stall_or_new(&mut self, start: u64) -> Option<&mut PollStall> {
        if let Some(i) = self.stalls.iter().position(|s| s.start == start) {
            return self.stalls.get_mut(i);
        }
        if self.stalls.len() >= STALLS_KEPT {
            let victim = match self.stalls.iter().position(PollStall::settled) {
                Some(i) => i,
                None if self.stalls.first().is_some_and(|s| s.start > start) => return None,
                None => 0,
            };
            self.stalls.remove(victim);
        }
        let i = self.stalls.partition_point(|s| s.start < start);
        self.stalls.insert(i, PollStall::new(start));
        self.stalls.get_mut(i)
    }

    /// Whether the task is a `spawn_blocking` task: its single poll is the
    /// whole blocking closure.
    pub fn is_blocking(&self) -> bool {
        self.kind.as_deref() == Some(names::KIND_BLOCKING)
    }

    /// Whether the task is exempt from waker-based detectors (spawn_blocking
    /// and block_on tasks are not woken through tokio's task wakers).
    pub fn is_blocking_or_block_on(&self) -> bool {
        matches!(
            self.kind.as_deref(),
            Some(names::KIND_BLOCKING) | Some(names::KIND_BLOCK_ON)
        )
    }

    /// Histograms, created on first use, with every sample recorded so far.
    pub fn hist_mut(&mut self) -> &mut Histograms {
        let h = self.hist.get_or_insert_with(|| Box::new(Histograms::new()));
        self.samples.drain_into(h);
        h
    }

    /// The poll and scheduled time histograms, if anything was recorded:
    /// borrowed when every sample is in them already,
    /// else a copy with the latest samples added.
    pub fn histograms(&self) -> Option<std::borrow::Cow<'_, Histograms>> {
        use std::borrow::Cow;
        if self.samples.len == 0 {
            return self.hist.as_deref().map(Cow::Borrowed);
        }
        let mut h = self
            .hist
            .as_deref()
            .cloned()
            .unwrap_or_else(Histograms::new);
        let mut samples = self.samples;
        samples.drain_into(&mut h);
        Some(Cow::Owned(h))
    }

    /// Replaces the task's histograms (and any samples not yet in them)
    /// with `h`: a task restored from a snapshot.
    pub(crate) fn set_histograms(&mut self, h: Option<Histograms>) {
        self.hist = h.map(Box::new);
        self.samples = Samples::default();
    }

    /// Records the samples kept in the task into its histograms.
    pub fn flush_samples(&mut self) {
        if self.samples.len > 0 {
            self.hist_mut();
        }
    }

    /// Records a poll time.
    pub fn record_poll(&mut self, ns: u64) {
        self.sample(ns, 0);
    }

    /// Records a scheduled time (from a wake to the poll).
    pub fn record_scheduled(&mut self, ns: u64) {
        self.sample(ns, SCHEDULED);
    }

    #[inline]
    fn sample(&mut self, ns: u64, kind: u32) {
        let us = (ns / 1000).max(1);
        if us >= u64::from(SCHEDULED) {
            // Too large to mark (35 minutes): recorded now, after the
            // samples before it.
            let h = self.hist_mut();
            let h = if kind == SCHEDULED {
                &mut h.scheduled_us
            } else {
                &mut h.poll_us
            };
            record_value_us(h, us);
            return;
        }
        let s = &mut self.samples;
        s.us[usize::from(s.len)] = us as u32 | kind;
        s.len += 1;
        if usize::from(s.len) == SAMPLES {
            self.hist_mut();
        }
    }

    /// Commits the pending poll: it was a real poll. Returns its duration.
    pub fn commit_pending_poll(&mut self) -> Option<(PendingPoll, u64)> {
        let p = self.pending_poll.take()?;
        let d = p.end.saturating_sub(p.start);
        self.polls += 1;
        self.busy_ns = self.busy_ns.saturating_add(d);
        self.max_poll_ns = self.max_poll_ns.max(d);
        self.record_poll(d);
        self.last_committed = Some(p);
        if d >= LONG_ENOUGH_NS {
            self.last_long = Some(p);
        }
        if let Some(s) = self.stall_mut(p.start) {
            s.poll_ns = Some(d);
            s.sched_at_commit = s.sched;
        }
        Some((p, d))
    }

    /// Polls including the uncommitted last one (for an open task).
    pub fn polls_view(&self) -> u64 {
        self.polls + u64::from(self.pending_poll.is_some() && self.closed.is_none())
    }

    /// Busy time including the uncommitted last poll (for an open task) and
    /// the running poll up to `now`.
    pub fn busy_view(&self, now: u64) -> u64 {
        let mut b = self.busy_ns;
        if self.closed.is_none() {
            if let Some(p) = self.pending_poll {
                b = b.saturating_add(p.end.saturating_sub(p.start));
            }
            if let Some(s) = self.poll_start {
                b = b.saturating_add(now.saturating_sub(s));
            }
        }
        b
    }

    /// Scheduled time including the current wait.
    pub fn scheduled_view(&self, now: u64) -> u64 {
        let mut s = self.scheduled_ns;
        if self.closed.is_none() {
            if let Some(since) = self.scheduled_since {
                s = s.saturating_add(now.saturating_sub(since));
            }
        }
        s
    }

    /// Idle time: lifetime minus busy and scheduled time.
    pub fn idle_view(&self, now: u64) -> u64 {
        let end = self.closed.unwrap_or(now);
        end.saturating_sub(self.created)
            .saturating_sub(self.busy_view(now))
            .saturating_sub(self.scheduled_view(now))
    }
}

/// Summary of completed tasks that are no longer kept in detail, per spawn
/// location and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Spawn location and name this group stands for.
    pub group: String,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Committed polls of the group's tasks together (the drop of a
    /// future at its end is not a poll).
    pub polls: u64,
    /// Time the group's tasks spent being polled, ns.
    pub busy_ns: u64,
    /// Time the group's tasks spent woken and waiting for a poll, ns.
    pub scheduled_ns: u64,
    /// The rest of the group's tasks' lives, ns.
    pub idle_ns: u64,
    /// The longest single poll among the group's tasks, ns.
    pub max_poll_ns: u64,
}

impl TaskSummary {
    /// Folds `t` into the summary.
    pub fn add(&mut self, t: &Task) {
        match t.state {
            TaskState::Cancelled => self.cancelled += 1,
            TaskState::Panicked => self.panicked += 1,
            _ => self.completed += 1,
        }
        let now = t.closed.unwrap_or(t.created);
        self.polls = self.polls.saturating_add(t.polls);
        self.busy_ns = self.busy_ns.saturating_add(t.busy_ns);
        self.scheduled_ns = self.scheduled_ns.saturating_add(t.scheduled_ns);
        self.idle_ns = self.idle_ns.saturating_add(t.idle_view(now));
        self.max_poll_ns = self.max_poll_ns.max(t.max_poll_ns);
    }
}

/// The group key of a task for summaries: `name@file:line`.
pub fn group_key(t: &Task) -> String {
    let loc = t
        .location
        .as_ref()
        .map(|l| l.to_string())
        .unwrap_or_else(|| "?".into());
    match &t.name {
        Some(n) => format!("{n}@{loc}"),
        None => loc,
    }
}

/// Level of a record as a string.
pub fn level_str(l: Level) -> &'static str {
    match l {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Polls at least this long are remembered as [`Task::last_long`] (no
/// producer samples a poll shorter than a millisecond).
const LONG_ENOUGH_NS: u64 = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_samples_make_the_same_histograms_as_recording_each() {
        let mut t = Task::new(SpanId(1), 0, 0);
        let mut reference = Histograms::new();
        assert!(t.histograms().is_none());
        // Not a multiple of the batch, with values too large to keep (35+
        // minutes in µs) among them.
        for i in 0..21u64 {
            // Runs of equal values too (recorded as one, see `drain_into`).
            let poll = if i % 5 < 3 { 2_000 } else { i * 7_919 + 3 };
            let wait = match i {
                9 => 1 << 52,
                10..=13 => 5_000_000,
                _ => i * 104_729,
            };
            t.record_poll(poll);
            t.record_scheduled(wait);
            record_us(&mut reference.poll_us, poll);
            record_us(&mut reference.scheduled_us, wait);
            let h = t.histograms().expect("recorded");
            assert_eq!(h.poll_us, reference.poll_us, "after {i}");
            assert_eq!(h.scheduled_us, reference.scheduled_us, "after {i}");
        }
        assert!(matches!(t.histograms(), Some(std::borrow::Cow::Owned(_))));
        t.flush_samples();
        let h = t.histograms().expect("recorded");
        assert!(matches!(h, std::borrow::Cow::Borrowed(_)));
        assert_eq!(h.poll_us, reference.poll_us);
        assert_eq!(h.scheduled_us, reference.scheduled_us);
        assert_eq!(h.poll_us.len(), 21);
    }
}
