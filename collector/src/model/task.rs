//! Tasks: state, polls, times, histograms, wakes and await tree.

use std::collections::VecDeque;

use awaitscope_wire::{names, Field, Level, SpanId};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::await_tree::AwaitTree;
use super::span::Location;
use super::stall::PollStall;

use super::woken_by::WokenBy;
pub use super::woken_by::WOKEN_BY;

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
    record_n_us(h, (ns / 1000).max(1), 1);
}

/// Records `n` values `us` in `h`.
fn record_n_us(h: &mut Histogram<u32>, us: u64, n: u32) {
    // `saturating_record` does not grow an auto-resizing histogram: it
    // clamps to its current highest value (2 for a new one).
    if h.record_n(us, n).is_err() {
        h.saturating_record_n(us, n);
    }
}

/// `hdrhistogram`'s sub-buckets per bucket at one significant digit (the
/// smallest power of two that tells 2 x 10^1 values apart): 32, of which a
/// bucket past the first uses the upper half.
const SUB_BUCKET_MAGNITUDE: u32 = 5;

/// Where a histogram of [`Histograms`] (lowest value 1, one significant
/// digit) counts value `v`: the same index as `hdrhistogram`'s, so that
/// counts kept by index fold into one exactly (see [`TaskCounts`]).
#[inline(always)]
fn index_of(v: u64) -> usize {
    let half = 1u64 << (SUB_BUCKET_MAGNITUDE - 1);
    let mask = (1u64 << SUB_BUCKET_MAGNITUDE) - 1;
    // The bucket: where `v`'s highest bit is past the first bucket's 32.
    let bucket = u64::from(64 - SUB_BUCKET_MAGNITUDE - (v | mask).leading_zeros());
    let sub = v >> bucket;
    ((bucket + 1) * half + sub - half) as usize
}

/// The lowest value counted at `index` (the inverse of [`index_of`]).
fn value_at(index: usize) -> u64 {
    let half = 1usize << (SUB_BUCKET_MAGNITUDE - 1);
    let (bucket, sub) = match (index / half).checked_sub(1) {
        Some(b) if b > 0 || index >= 2 * half => (b, index % half + half),
        _ => (0, index),
    };
    (sub as u64) << bucket
}

/// A task's poll and scheduled time counts by `hdrhistogram`'s index,
/// without its bookkeeping: recording a value is an index and an add
/// (`record_n` checks and updates far more per call, and every poll
/// records two). The two counts of an index sit side by side in one
/// buffer, held in the task itself: with thousands of live tasks, moving
/// a task's samples into its counts touches one buffer out of the cache
/// rather than a box and two buffers behind it. The counts are 16 bits
/// wide, so that a cache line holds a whole bucket of both (the lines
/// sixteen samples land on, out of the cache, are what moving them
/// costs); each time one wraps, its index's carry counts the 65,536 it
/// lost. The `hdrhistogram`s a reader gets ([`Task::histograms`]) are
/// made from it: each index's count recorded at that index's lowest
/// value, so their counts, totals, percentiles, means, mins and maxes
/// (all told by index) are those of recording each value.
#[derive(Clone, Debug, Default)]
struct TaskCounts {
    /// `[poll, scheduled]` counts at each index, modulo 2^16.
    at: Vec<[u16; 2]>,
    /// `[poll, scheduled]` wraps of `at`'s counts at each index (empty
    /// until one wraps: most tasks never count 65,536 at one index).
    carry: Vec<[u32; 2]>,
}

/// A [`TaskCounts`] pair's poll time count.
const POLL: usize = 0;
/// A [`TaskCounts`] pair's scheduled time count.
const SCHED: usize = 1;

impl TaskCounts {
    /// Counts `us` in `kind` ([`POLL`] or [`SCHED`]).
    #[inline]
    fn record(&mut self, kind: usize, us: u64) {
        let i = index_of(us);
        match self.at.get_mut(i) {
            Some(n) => {
                n[kind] = n[kind].wrapping_add(1);
                if n[kind] == 0 {
                    self.wrapped(kind, i);
                }
            }
            None => self.record_past_end(kind, i),
        }
    }

    /// Records a value at `i`, past the counts so far (they grow to it).
    #[cold]
    #[inline(never)]
    fn record_past_end(&mut self, kind: usize, i: usize) {
        self.at.resize(i + 1, [0, 0]);
        self.at[i][kind] = 1;
    }

    /// The count of `kind` at `i` wrapped to 0: 65,536 more in its carry.
    #[cold]
    #[inline(never)]
    fn wrapped(&mut self, kind: usize, i: usize) {
        let c = self.carry_at(i);
        c[kind] = c[kind].saturating_add(1);
    }

    /// The carries at `i` (the carries grow to it).
    fn carry_at(&mut self, i: usize) -> &mut [u32; 2] {
        if i >= self.carry.len() {
            self.carry.resize(i + 1, [0, 0]);
        }
        &mut self.carry[i]
    }

    /// The count of `kind` at `i`: as `hdrhistogram`'s, saturating at
    /// `u32::MAX`.
    fn count(&self, kind: usize, i: usize) -> u32 {
        let carry = self.carry.get(i).map_or(0, |c| u64::from(c[kind]));
        let n = (carry << 16) + u64::from(self.at[i][kind]);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Adds `n` to the count of `kind` at `i`.
    fn add(&mut self, kind: usize, i: usize, n: u32) {
        if i >= self.at.len() {
            self.at.resize(i + 1, [0, 0]);
        }
        let total = u64::from(self.at[i][kind]) + u64::from(n);
        self.at[i][kind] = total as u16;
        let wraps = (total >> 16) as u32;
        if wraps > 0 {
            let c = self.carry_at(i);
            c[kind] = c[kind].saturating_add(wraps);
        }
    }

    /// Adds the counts of `kind` to `h` (one of [`Histograms`]).
    fn fold_into(&self, kind: usize, h: &mut Histogram<u32>) {
        for i in 0..self.at.len() {
            let n = self.count(kind, i);
            if n > 0 {
                record_n_us(h, value_at(i), n);
            }
        }
    }

    /// The counts of histogram `h` (lowest value 1, one significant
    /// digit), as `kind`.
    fn add_histogram(&mut self, kind: usize, h: &Histogram<u32>) {
        for v in h.iter_recorded() {
            let i = index_of(v.value_iterated_to());
            self.add(kind, i, v.count_at_value());
        }
    }
}

/// Samples kept in a task before they go into its histograms.
const SAMPLES: usize = 16;

/// Marks a sample of the scheduled-time histogram (else: a poll time).
const SCHEDULED: u32 = 1 << 31;

/// Poll and scheduled times (in µs) not yet in a task's histograms.
///
/// Recording a value touches the task's counts, out of the cache
/// when many tasks are live. The samples wait in the task (which the poll
/// touches anyway) and go into the counts sixteen at a time (one cache
/// line of samples).
#[derive(Clone, Copy, Debug, Default)]
struct Samples {
    us: [u32; SAMPLES],
    len: u8,
}

impl Samples {
    /// Records the samples into `h` and forgets them.
    fn drain_into(&mut self, h: &mut TaskCounts) {
        for &v in &self.us[..usize::from(self.len)] {
            let kind = if v & SCHEDULED != 0 { SCHED } else { POLL };
            h.record(kind, u64::from(v & !SCHEDULED));
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
///
/// `repr(C)`, its fields in this order: what a poll or a wake reads and
/// writes comes first (up to `HOT_END`), so that the ingest, which
/// fetches the tasks of the next events before applying them
/// (`Process::warm`), fetches those cache lines only (about three fifths
/// of it), and the lines a whole poll and a wake touch are few: a wake's
/// fields first (two lines), then what a poll adds, then what only some
/// polls touch.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Task {
    // What a wake reads and writes (and a poll too).
    /// Span id (the task's id in the model).
    pub id: SpanId,
    /// Live wakers (clones minus drops and consuming wakes).
    pub wakers_alive: u64,
    /// Wakes (wake and wake_by_ref).
    pub wakes: u64,
    /// Wakes by the task itself.
    pub self_wakes: u64,
    /// When the task's span closed, ns since the process's start; `None`
    /// while the task lives.
    pub closed: Option<u64>,
    /// Start of the current poll (when Running).
    pub poll_start: Option<u64>,
    /// Scheduled since (when Scheduled).
    pub scheduled_since: Option<u64>,
    /// Who woke it: the tasks (none: outside any task) and how often, most
    /// frequent first, at most [`WOKEN_BY`].
    pub woken_by: WokenBy,
    /// Where the task is in its life: running, scheduled or idle while it
    /// lives, then how it ended ([`TaskState::is_closed`]).
    pub state: TaskState,
    /// Woken since the last poll started.
    pub woken_since_poll: bool,
    /// Woken while being polled.
    pub(crate) woken_during_poll: bool,
    /// The await tree was rebuilt from `Enter` events in the current poll.
    pub(crate) tree_from_enters: bool,
    /// `await_tree` changed since `leaf` was taken from it (set by whatever
    /// changes the tree: the end of a poll looks for its leaf only then).
    pub(crate) tree_changed: bool,
    // What a poll reads and writes besides.
    /// Polls whose end is known to be a poll, not the drop of the future
    /// (see [`PendingPoll`]).
    pub polls: u64,
    /// Busy time of committed polls.
    pub busy_ns: u64,
    /// Time spent scheduled (woken, waiting for a poll).
    pub scheduled_ns: u64,
    /// Longest committed poll.
    pub max_poll_ns: u64,
    /// End of the last poll.
    pub last_poll_end: Option<u64>,
    /// The last poll, not yet committed.
    pub pending_poll: Option<PendingPoll>,
    /// The last committed poll: a stall that arrives after the commit is
    /// of a poll already judged (see [`super::stall`]).
    pub last_committed: Option<PendingPoll>,
    /// Resources the task is waiting on (polled, not ready, in its last poll).
    pub waiting_on: Vec<SpanId>,
    /// Locks whose state update said this task took them in the running
    /// poll: at its end, each records where (its await path).
    pub(crate) acquired: Vec<SpanId>,
    /// The stalls of its latest stalled polls the producer sent, oldest
    /// poll first, at most [`STALLS_KEPT`]: each poll's own, its halves
    /// merged by the poll's start (see [`Task::stall`]). Empty for most
    /// tasks, which never stall.
    pub stalls: Vec<PollStall>,
    /// The producer thread of its latest poll.
    pub last_thread: Option<u32>,
    /// Samples not yet in `hist`.
    samples: Samples,
    // Touched by some polls only.
    /// Counts of the histograms (created on first use), without the
    /// latest samples: read them with [`Task::histograms`].
    hist: Option<TaskCounts>,
    /// The latest committed poll of 1 ms or more: the producer samples
    /// polls past its stall threshold and symbolises their stacks off its
    /// workers, so their stall may arrive after later (short) polls
    /// committed, and still needs its poll's duration.
    pub last_long: Option<PendingPoll>,
    /// The await-tree leaf span of the last poll, and since when it has been
    /// the leaf.
    pub leaf: Option<(SpanId, u64)>,
    // The rest: read when the task is made, named, reported or its tree
    // changes.
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
    /// Await tree of the current or last poll.
    pub await_tree: AwaitTree,
    /// Recent WARN/ERROR events.
    pub logs: VecDeque<LogRecord>,
    /// WARN events seen.
    pub warn_count: u64,
    /// ERROR events seen.
    pub error_count: u64,
    /// The message of the panic caught while the task was being polled;
    /// `None` if it did not panic (or the panic hook saw no task).
    pub panic: Option<String>,
    /// Where the task woke itself in its own poll: the native stack the
    /// producer took at one of its first wakes of itself
    /// ([`awaitscope_wire::Event::WakeStack`]), symbolised. `None` for most
    /// tasks, which never wake themselves.
    pub self_wake_stack: Option<Box<crate::symbolize::Symbolized>>,
}

/// Where the fields a poll and a wake use end in a [`Task`] (the offset
/// of the first of the others).
pub(crate) const HOT_END: usize = std::mem::offset_of!(Task, callsite);

/// The allocations of a task no longer kept, for the next task made: its
/// fields (with their strings), name, kind and spawn location, and its
/// list of wakers. A short-lived task would otherwise free them all at its
/// eviction from the completed tasks, and the next task allocate them
/// again; reused, its fields are written over the old ones
/// ([`super::span::set_fields`]) and its name, kind and location over
/// theirs (`derive_task_fields`).
#[derive(Debug, Default)]
pub(crate) struct TaskAllocs {
    pub(crate) fields: Vec<Field>,
    pub(crate) name: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) location: Option<Location>,
    /// Emptied when it is reused.
    pub(crate) woken_by: WokenBy,
}

impl TaskAllocs {
    /// Takes `t`'s reusable allocations out of it (a task about to be
    /// dropped).
    pub(crate) fn take(t: &mut Task) -> Self {
        Self {
            fields: std::mem::take(&mut t.fields),
            name: t.name.take(),
            kind: t.kind.take(),
            location: t.location.take(),
            woken_by: std::mem::take(&mut t.woken_by),
        }
    }
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
            woken_by: WokenBy::default(),
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
            self_wake_stack: None,
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

    /// Counts, created on first use, with every sample recorded so far.
    fn counts_mut(&mut self) -> &mut TaskCounts {
        let h = self.hist.get_or_insert_with(TaskCounts::default);
        self.samples.drain_into(h);
        h
    }

    /// The poll and scheduled time histograms, if anything was recorded
    /// (made from the counts and the samples not in them yet).
    pub fn histograms(&self) -> Option<std::borrow::Cow<'_, Histograms>> {
        if self.hist.is_none() && self.samples.len == 0 {
            return None;
        }
        let mut counts = self.hist.clone().unwrap_or_default();
        let mut samples = self.samples;
        samples.drain_into(&mut counts);
        let mut h = Histograms::new();
        counts.fold_into(POLL, &mut h.poll_us);
        counts.fold_into(SCHED, &mut h.scheduled_us);
        Some(std::borrow::Cow::Owned(h))
    }

    /// Replaces the task's histograms (and any samples not yet in them)
    /// with `h`: a task restored from a snapshot.
    pub(crate) fn set_histograms(&mut self, h: Option<Histograms>) {
        self.hist = h.map(|h| {
            let mut counts = TaskCounts::default();
            counts.add_histogram(POLL, &h.poll_us);
            counts.add_histogram(SCHED, &h.scheduled_us);
            counts
        });
        self.samples = Samples::default();
    }

    /// Records the samples kept in the task into its histograms.
    pub fn flush_samples(&mut self) {
        if self.samples.len > 0 {
            self.counts_mut();
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

    /// Records a poll time and a scheduled time at once: the start of a
    /// poll commits the poll before it and ends the wait for it, and every
    /// poll of a busy task records both (one check of room for the two;
    /// the counts are the same as recording each in turn). Always inlined
    /// into the poll's start: a call's own cost was as much as its work.
    #[inline(always)]
    pub(crate) fn record_poll_and_scheduled(&mut self, poll_ns: u64, scheduled_ns: u64) {
        let (poll, scheduled) = ((poll_ns / 1000).max(1), (scheduled_ns / 1000).max(1));
        let s = &mut self.samples;
        let len = usize::from(s.len);
        if poll >= u64::from(SCHEDULED) || scheduled >= u64::from(SCHEDULED) || len + 2 > SAMPLES {
            self.sample(poll_ns, 0);
            self.sample(scheduled_ns, SCHEDULED);
            return;
        }
        s.us[len] = poll as u32;
        s.us[len + 1] = scheduled as u32 | SCHEDULED;
        s.len += 2;
        if len + 2 == SAMPLES {
            self.counts_mut();
        }
    }

    #[inline]
    fn sample(&mut self, ns: u64, kind: u32) {
        let us = (ns / 1000).max(1);
        if us >= u64::from(SCHEDULED) {
            // Too large to mark (35 minutes): recorded now.
            let kind = if kind == SCHEDULED { SCHED } else { POLL };
            self.counts_mut().record(kind, us);
            return;
        }
        let s = &mut self.samples;
        s.us[usize::from(s.len)] = us as u32 | kind;
        s.len += 1;
        if usize::from(s.len) == SAMPLES {
            self.counts_mut();
        }
    }

    /// Commits the pending poll: it was a real poll. Returns its duration.
    pub fn commit_pending_poll(&mut self) -> Option<(PendingPoll, u64)> {
        let committed = self.commit_pending_poll_unrecorded();
        if let Some((_, d)) = committed {
            self.record_poll(d);
        }
        committed
    }

    /// [`Task::commit_pending_poll`], its duration left for the caller to
    /// record (see [`Task::record_poll_and_scheduled`]).
    #[inline]
    pub(crate) fn commit_pending_poll_unrecorded(&mut self) -> Option<(PendingPoll, u64)> {
        let p = self.pending_poll.take()?;
        let d = p.end.saturating_sub(p.start);
        self.polls += 1;
        self.busy_ns = self.busy_ns.saturating_add(d);
        self.max_poll_ns = self.max_poll_ns.max(d);
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
    let name = t.name.as_deref().map_or(0, |n| n.len() + 1);
    let file = t.location.as_ref().map_or(0, |l| l.file.len());
    let mut s = String::with_capacity(name + file + 24);
    group_key_into(t, &mut s);
    s
}

/// Writes `t`'s [`group_key`] into `s` (emptied first), for a caller that
/// reuses one buffer.
pub fn group_key_into(t: &Task, s: &mut String) {
    // Written in one go, without the formatting machinery: a starved
    // runtime makes one for nearly every wait.
    s.clear();
    if let Some(n) = &t.name {
        s.push_str(n);
        s.push('@');
    }
    match &t.location {
        Some(l) => l.push_to(s),
        None => s.push('?'),
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

    /// A group key is `name@file:line[:col]`, or the location alone, or
    /// `?` for a task spawned nowhere known: a location written as its
    /// `Display` writes it.
    #[test]
    fn group_keys_name_the_location_as_it_displays() {
        let mut t = Task::new(SpanId(7), 1, 0);
        assert_eq!(group_key(&t), "?");
        t.name = Some("worker".into());
        assert_eq!(group_key(&t), "worker@?");
        for col in [None, Some(5)] {
            let l = Location {
                file: "src/a/b.rs".into(),
                line: 42,
                col,
            };
            t.location = Some(l.clone());
            t.name = Some("worker".into());
            assert_eq!(group_key(&t), format!("worker@{l}"));
            assert_eq!(crate::model::task_label(&t), format!("task worker#7 @ {l}"));
            t.name = None;
            assert_eq!(group_key(&t), l.to_string());
        }
        assert_eq!(group_key(&t), "src/a/b.rs:42:5");
    }

    #[test]
    fn kept_samples_make_the_same_histograms_as_recording_each() {
        let mut t = Task::new(SpanId(1), 0, 0);
        let mut reference = Histograms::new();
        assert!(t.histograms().is_none());
        // Not a multiple of the batch, with values too large to keep (35+
        // minutes in µs) among them.
        for i in 0..21u64 {
            // Runs of equal values too.
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
        t.flush_samples();
        let h = t.histograms().expect("recorded");
        assert_eq!(h.poll_us, reference.poll_us);
        assert_eq!(h.scheduled_us, reference.scheduled_us);
        assert_eq!(h.poll_us.len(), 21);
    }

    /// A poll time and a scheduled time recorded together make the
    /// histograms (and the samples kept, and when they go into the
    /// counts) that recording each in turn makes, whatever the samples
    /// already kept: single records in between shift where the pairs fall,
    /// and values too large to keep are among them.
    #[test]
    fn pairs_recorded_together_are_recorded_as_each_in_turn() {
        for single_every in [0u64, 3, 5, 16] {
            let mut together = Task::new(SpanId(1), 0, 0);
            let mut apart = Task::new(SpanId(2), 0, 0);
            for i in 0..70u64 {
                let poll = if i % 7 == 6 { 1 << 52 } else { i * 7_919 + 3 };
                let wait = if i % 11 == 10 {
                    1 << 53
                } else {
                    i * 104_729 + 500
                };
                if single_every > 0 && i % single_every == 0 {
                    together.record_poll(wait);
                    apart.record_poll(wait);
                }
                together.record_poll_and_scheduled(poll, wait);
                apart.record_poll(poll);
                apart.record_scheduled(wait);
                assert_eq!(together.samples.len, apart.samples.len, "after {i}");
                assert_eq!(together.samples.us, apart.samples.us, "after {i}");
                let (a, b) = (together.histograms(), apart.histograms());
                let (a, b) = (a.expect("recorded"), b.expect("recorded"));
                assert_eq!(a.poll_us, b.poll_us, "after {i}");
                assert_eq!(a.scheduled_us, b.scheduled_us, "after {i}");
            }
        }
    }

    /// The counts kept by index make the histogram that recording each
    /// value makes (same counts at every index, total, min, max and
    /// percentiles), for values across the whole range: every value up
    /// to 2^12, then at every power of two and around it.
    #[test]
    fn counts_by_index_fold_into_the_histogram_recording_makes() {
        let mut values: Vec<u64> = (1..=4096).collect();
        for bits in 12..63 {
            let p = 1u64 << bits;
            values.extend([p - 1, p, p + 1, p + p / 3, p + p / 2 + 7]);
        }
        let mut counts = TaskCounts::default();
        let mut reference = Histograms::new().poll_us;
        for (k, &v) in values.iter().enumerate() {
            // Some values several times.
            for _ in 0..=(k % 3) {
                counts.record(POLL, v);
                record_n_us(&mut reference, v, 1);
            }
            let i = index_of(v);
            assert!(value_at(i) <= v && index_of(value_at(i)) == i, "{v}: {i}");
            assert!(reference.equivalent(value_at(i), v), "{v}");
        }
        let mut folded = Histograms::new().poll_us;
        counts.fold_into(POLL, &mut folded);
        let mut none = Histograms::new().scheduled_us;
        counts.fold_into(SCHED, &mut none);
        assert_eq!(none.len(), 0, "nothing counted as scheduled");
        assert_eq!(folded, reference);
        assert_eq!(folded.max(), reference.max());
        assert_eq!(folded.min_nz(), reference.min_nz());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(folded.value_at_quantile(q), reference.value_at_quantile(q));
        }
    }

    /// A task restored from a snapshot (`set_histograms`) reads back the
    /// histograms it was given, and records on top of them.
    #[test]
    fn restored_histograms_read_back_and_grow() {
        let mut given = Histograms::new();
        for v in [1u64, 3, 40, 900, 123_456, 9_000_000] {
            record_n_us(&mut given.poll_us, v, 2);
            record_n_us(&mut given.scheduled_us, v * 3, 1);
        }
        let mut t = Task::new(SpanId(1), 0, 0);
        t.set_histograms(Some(given.clone()));
        let h = t.histograms().expect("restored");
        assert_eq!(h.poll_us, given.poll_us);
        assert_eq!(h.scheduled_us, given.scheduled_us);
        t.record_poll(7_000);
        record_us(&mut given.poll_us, 7_000);
        assert_eq!(t.histograms().expect("restored").poll_us, given.poll_us);
    }

    /// A count past what 16 bits hold is kept whole: recorded one by one
    /// across several wraps, added from a restored histogram, and both
    /// together, beside a count of the other kind at the same index.
    #[test]
    fn counts_past_sixteen_bits_are_kept_whole() {
        let n: u32 = 3 * 65_536 + 17;
        let mut counts = TaskCounts::default();
        for _ in 0..n {
            counts.record(POLL, 40);
        }
        counts.record(SCHED, 40);
        let mut poll = Histograms::new().poll_us;
        counts.fold_into(POLL, &mut poll);
        assert_eq!(poll.count_at(40), n);
        assert_eq!(poll.len(), u64::from(n));
        let mut sched = Histograms::new().scheduled_us;
        counts.fold_into(SCHED, &mut sched);
        assert_eq!(sched.count_at(40), 1);

        let mut given = Histograms::new();
        record_n_us(&mut given.poll_us, 40, 70_000);
        record_n_us(&mut given.poll_us, 900, 65_535);
        let mut t = Task::new(SpanId(1), 0, 0);
        t.set_histograms(Some(given));
        t.record_poll(40_000);
        t.record_poll(900_000);
        let h = t.histograms().expect("restored").poll_us.clone();
        assert_eq!(h.count_at(40), 70_001);
        assert_eq!(h.count_at(900), 65_536);
    }

    /// As `hdrhistogram`'s own, a count saturates at `u32::MAX` rather
    /// than wrapping.
    #[test]
    fn a_count_saturates_at_u32_max() {
        let mut counts = TaskCounts::default();
        counts.add(POLL, index_of(5), u32::MAX);
        counts.add(POLL, index_of(5), u32::MAX);
        counts.record(POLL, 5);
        let mut poll = Histograms::new().poll_us;
        counts.fold_into(POLL, &mut poll);
        assert_eq!(poll.count_at(5), u32::MAX);
    }
}

#[cfg(test)]
mod layout_tests {
    use super::{Task, HOT_END};

    /// The fields a poll and a wake use stay at the front of a task and
    /// well short of its end: what `Process::warm` fetches ahead.
    #[test]
    fn a_polls_fields_come_first() {
        let size = std::mem::size_of::<Task>();
        assert!(HOT_END * 4 <= size * 3, "{HOT_END} of {size}");
    }
}
