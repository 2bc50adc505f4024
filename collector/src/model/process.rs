//! A producer process: callsites, threads, spans, tasks and resources, with
//! the lookups the rest of the collector makes in them.
//!
//! How events change a process is in [`super::apply`]; how things in it are
//! named, in [`super::labels`].

use std::collections::VecDeque;

use awaitscope_wire::{
    Callsite, CallsiteKind, DropCounts, ProcessInfo, ProcessKey, SpanClass, SpanId,
};

use super::change::{Change, ChangeKind};
use super::completed::CompletedTasks;
use super::hash::FastMap;
use super::resource::Resource;
use super::span::{Location, Span};
use super::stall::ClosedSpans;
use super::task::{Task, TaskAllocs, TaskState, TaskSummary};
use crate::config::Config;

/// Most callsites kept per process.
pub(super) const MAX_CALLSITES: usize = 1 << 16;
/// Most await lines kept per process ([`Process::wait_lines`]): one per
/// async op a task waits on with a stack; more are not kept.
pub(super) const MAX_WAIT_LINES: usize = 1 << 14;
/// Most threads tracked per process.
const MAX_THREADS: usize = 1 << 12;
/// Most allocations of dropped tasks a process keeps for new ones
/// ([`Process::spare_tasks`]; with their heap, ~600 bytes each for a task
/// of tokio's spawn fields, up to ~2.5 MB). A program that spawns tasks in
/// bursts of a thousand from a few spawners ends as many at once: a
/// quarter of this cap left a third of them unused on the churn workload,
/// this cap nearly none (BENCHMARKS.md, "Sixth sitting: ingest").
const SPARE_TASKS: usize = 4096;
/// Deepest span stack tracked per thread.
pub(super) const MAX_STACK: usize = 256;

/// A span entered on a thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entered {
    pub(crate) span: SpanId,
    /// The task whose poll this span was entered in.
    pub(crate) task: Option<SpanId>,
    /// Node of the task's await tree.
    pub(crate) node: Option<u16>,
}

/// [`Process::source`] of a program instrumented with awaitscope.
pub const SOURCE_AWAITSCOPE: &str = "awaitscope";

/// [`Process::source`] of a program read over console-subscriber's gRPC API.
pub const SOURCE_CONSOLE: &str = "console";

/// How the `producer_version` of a process read over console-subscriber's
/// gRPC API begins (the console source writes it in the `Hello` it makes up).
pub const CONSOLE_PRODUCER: &str = "console-subscriber";

/// The note every process read from console-subscriber gets: what its data
/// cannot say, so that no view takes an absence for a fact.
pub const CONSOLE_NOTE: &str = "source: console-subscriber's gRPC API (aggregated per-task \
statistics each publish interval; polls between two updates are known by count and total \
time only, the last one exactly). Not known from it: await trees of spans (only the \
resources a task waits on), causal error traces, wake edges (who woke whom), the task \
tree, native stacks, ERROR events and panics";

/// The source a `Hello` names (see [`Process::source`]).
pub fn source_of(info: Option<&ProcessInfo>) -> &'static str {
    match info {
        Some(i) if i.producer_version.starts_with(CONSOLE_PRODUCER) => SOURCE_CONSOLE,
        _ => SOURCE_AWAITSCOPE,
    }
}

/// A thread of the producer.
#[derive(Clone, Debug, Default)]
pub struct ThreadState {
    /// Name, when sent.
    pub name: Option<String>,
    pub(crate) stack: Vec<Entered>,
    /// The latest polls of [`RECENT_POLL_NS`] or more on this thread, as
    /// (task, start, end), oldest first, at most [`RECENT_POLLS`]: who held
    /// the thread while a timer was due.
    pub recent_polls: std::collections::VecDeque<(SpanId, u64, u64)>,
    /// The latest timestamp of this thread's events applied (while the
    /// thread is current, [`Process`] keeps it aside: see
    /// [`Process::judged_now`]).
    pub clock: u64,
}

impl ThreadState {
    /// The task whose poll is in progress on this thread (its span is
    /// entered), if any.
    fn polling(&self) -> Option<SpanId> {
        self.stack
            .iter()
            .find(|e| e.task == Some(e.span))
            .map(|e| e.span)
    }
}

/// How far behind the process clock a thread's own clock may lag and still
/// hold back the time the model judges ongoing waits at
/// ([`Process::judged_now`]): a thread silent for longer is taken as idle.
/// The lag of a backlog drained thread by thread is bounded by how long the
/// producer's exporter was held up (a stalled collector holds a write for
/// up to 2 s); a thread that parks holds live judgements back by at most
/// this.
pub const MAX_THREAD_LAG_NS: u64 = 5_000_000_000;

/// [`MAX_THREAD_LAG_NS`] for a thread that is between polls: silent, it is
/// most likely idle, and holding live judgements back for seconds would
/// hide real stuck tasks and first polls that never yield until the
/// program ends. Producers now send every thread's records up to one cut
/// per drain, so a longer skew is not expected from them.
pub const MAX_IDLE_THREAD_LAG_NS: u64 = 250_000_000;

/// Polls shorter than this are not kept in [`ThreadState::recent_polls`]:
/// they cannot have made a timer late by much.
pub const RECENT_POLL_NS: u64 = 1_000_000;
/// Most polls kept per thread in [`ThreadState::recent_polls`].
pub const RECENT_POLLS: usize = 32;
/// One producer process and everything known about it.
#[derive(Debug)]
pub struct Process {
    /// Key (pid and start time).
    pub key: ProcessKey,
    /// Latest `Hello`.
    pub info: Option<ProcessInfo>,
    /// Connected now (live) or stream not yet ended (recording).
    pub connected: bool,
    /// A `Goodbye` was received.
    pub ended: bool,
    /// `Hello`s received (1 + reconnects).
    pub hellos: u32,
    /// Latest timestamp seen (the process clock, ns since its start).
    pub now: u64,
    /// Producer-side drops (cumulative, as last reported).
    pub dropped: DropCounts,
    /// Events dropped by the collector for this process.
    pub collector_dropped: u64,
    /// Frames applied.
    pub frames: u64,
    /// Events applied.
    pub events: u64,
    /// Frames whose sequence number was not the next expected.
    pub seq_gaps: u64,
    /// Events about a span this model has never seen created (no
    /// `SpanNew` before them, and not a span it has seen close): they are
    /// applied as nothing. Counted in `Process::apply_events`, before each
    /// event is applied (records, enters, exits, polls, poll ends, closes,
    /// wakes and await trees).
    pub unknown_span_events: u64,
    /// WARN events seen.
    pub warn_count: u64,
    /// ERROR events seen.
    pub error_count: u64,
    /// Notes about the stream (truncation, lost connection...).
    pub notes: Vec<String>,
    /// Callsites by id.
    pub callsites: FastMap<u32, Callsite>,
    /// Threads by id.
    pub threads: FastMap<u32, ThreadState>,
    /// Live non-task spans (including resources and async ops).
    pub spans: FastMap<SpanId, Span>,
    /// Live tasks.
    pub tasks: FastMap<SpanId, Task>,
    /// Completed tasks kept in detail, oldest first.
    pub completed: CompletedTasks,
    /// Completed tasks no longer kept, summarised by spawn location and name.
    pub summary: FastMap<String, TaskSummary>,
    /// Live resources.
    pub resources: FastMap<SpanId, Resource>,
    /// The latest closed spans, to name them in what arrives after their
    /// close (a poll's await tree, a stall).
    pub closed_spans: ClosedSpans,
    /// The latest late timer wakes (see [`super::timer`]), oldest first.
    pub late_wakes: VecDeque<super::late_wake::LateWake>,
    /// Contexts the process sent to others (`Context::traceparent`).
    pub handovers: super::handover::Handovers,
    /// The lines tasks await at, by the async op they wait on (from
    /// [`awaitscope_wire::Event::WaitStack`]): what the op's await frame
    /// points at. Forgotten with the async op.
    pub wait_lines: FastMap<SpanId, Location>,
    /// Wall clock (Unix ns) when the latest live frame arrived, and the
    /// process clock then.
    pub(crate) last_wall: Option<(u64, u64)>,
    /// The thread of the events being applied.
    pub(crate) cur_thread: u32,
    /// The clock of the current thread (written back to its
    /// [`ThreadState::clock`] when another thread becomes current, or kept
    /// in `left`).
    cur_clock: u64,
    /// The thread made current from the map last (known to be in
    /// `threads`): its clock is `cur_clock` while it is current.
    cur_known: Option<u32>,
    /// The thread current before this one, and its clock, not yet written
    /// back to its [`ThreadState::clock`] (which it is at least): a merged
    /// batch of two workers switches between them nearly every event, and
    /// switching back to it then takes no lookup.
    left: Option<(u32, u64)>,
    /// Whether the current thread is in `threads` with room on its stack
    /// (see [`Process::stack_room`]), when known: forgotten when the
    /// current thread's state is reached mutably ([`Process::thread`]) or
    /// another thread becomes current, but for the thread left last.
    cur_room: Option<bool>,
    /// The same for the thread in `left`, kept while it is not current
    /// (only the current thread's stack changes, or a reconnect's).
    left_room: Option<bool>,
    pub(crate) last_seq: Option<u64>,
    /// Between a `Hello` and the next `Thread` event: what arrives is the
    /// state the producer sends again at its handshake (its live spans,
    /// with their creation times), not what happens now. A producer names
    /// the thread before any event it drains from a thread's buffer, and
    /// never in its handshake.
    pub(crate) resync: bool,
    /// The group of the task last folded into the summary.
    last_group: Option<LastGroup>,
    /// Per callsite of tasks: where the fields a task is named by are
    /// among its fields (see [`Process::task_field_indices`]).
    task_fields_at: FastMap<u32, [Option<u16>; 6]>,
    /// The allocations of completed tasks dropped, for the next tasks
    /// spawned (see [`TaskAllocs`]), at most [`SPARE_TASKS`]: a program
    /// spawns and ends its tasks in bursts.
    pub(super) spare_tasks: Vec<TaskAllocs>,
}

/// A task's summary group key ([`super::task::group_key`]) and what it is
/// made of.
#[derive(Debug)]
struct LastGroup {
    name: Option<String>,
    location: Option<Location>,
    key: String,
}

impl Process {
    /// An empty process node.
    pub fn new(key: ProcessKey) -> Self {
        Self {
            key,
            info: None,
            connected: true,
            ended: false,
            hellos: 0,
            now: 0,
            dropped: DropCounts::default(),
            collector_dropped: 0,
            frames: 0,
            events: 0,
            seq_gaps: 0,
            unknown_span_events: 0,
            warn_count: 0,
            error_count: 0,
            notes: Vec::new(),
            callsites: FastMap::default(),
            threads: FastMap::default(),
            spans: FastMap::default(),
            tasks: FastMap::default(),
            completed: CompletedTasks::default(),
            late_wakes: VecDeque::new(),
            handovers: Default::default(),
            wait_lines: FastMap::default(),
            summary: FastMap::default(),
            resources: FastMap::default(),
            closed_spans: ClosedSpans::default(),
            last_wall: None,
            cur_thread: 0,
            cur_clock: 0,
            cur_known: None,
            left: None,
            cur_room: None,
            left_room: None,
            last_seq: None,
            resync: false,
            last_group: None,
            task_fields_at: FastMap::default(),
            spare_tasks: Vec::new(),
        }
    }

    /// The [`span::field_indices`](super::span::field_indices) of the
    /// fields a task is named by ([`TASK_FIELDS`](super::task_apply::TASK_FIELDS))
    /// in callsite `callsite`: found once per callsite (until it is sent
    /// again), not by comparing names for each task spawned.
    pub(super) fn task_field_indices(&mut self, callsite: u32) -> [Option<u16>; 6] {
        if let Some(idx) = self.task_fields_at.get(&callsite) {
            return *idx;
        }
        let idx = super::span::field_indices(
            self.callsites.get(&callsite),
            super::task_apply::TASK_FIELDS,
        );
        if self.task_fields_at.len() < MAX_CALLSITES {
            self.task_fields_at.insert(callsite, idx);
        }
        idx
    }

    /// Forgets what [`Process::task_field_indices`] found in callsite
    /// `callsite` (it is being replaced).
    pub(super) fn callsite_changed(&mut self, callsite: u32) {
        self.task_fields_at.remove(&callsite);
    }

    /// Process name, from its `Hello`.
    pub fn name(&self) -> &str {
        self.info.as_ref().map_or("?", |i| i.name.as_str())
    }

    /// Where the process's events come from: [`SOURCE_CONSOLE`] for a
    /// program read over console-subscriber's gRPC API (its `Hello` names
    /// [`CONSOLE_PRODUCER`] as producer), else [`SOURCE_AWAITSCOPE`].
    pub fn source(&self) -> &'static str {
        source_of(self.info.as_ref())
    }

    /// Whether the process was read over console-subscriber's gRPC API.
    pub fn is_console(&self) -> bool {
        self.source() == SOURCE_CONSOLE
    }

    /// Adds a note (bounded).
    pub fn note(&mut self, s: String) {
        if self.notes.len() < 64 {
            self.notes.push(s);
        }
    }

    /// A `Hello` arrived.
    pub fn hello(&mut self, info: &ProcessInfo) {
        self.hello_observed(info, &mut ());
    }

    /// A `Hello` arrived; the polls a reconnect ends are reported to `obs`
    /// ([`Change::PollEnded`], a step).
    pub fn hello_observed<O: Observer>(&mut self, info: &ProcessInfo, obs: &mut O) {
        self.hellos += 1;
        if self.hellos > 1 || info.reconnect {
            // Whatever was entered on the old connection is gone: end polls.
            for th in self.threads.values_mut() {
                th.stack.clear();
            }
            self.cur_room = None;
            self.left_room = None;
            let now = self.now;
            let mut ended = Vec::new();
            for t in self.tasks.values_mut() {
                if let Some(s) = t.poll_start.take() {
                    t.pending_poll = Some(super::task::PendingPoll { start: s, end: now });
                    t.last_poll_end = Some(now);
                    t.state = TaskState::Idle;
                    if O::STEPS {
                        ended.push(t.id);
                    }
                }
            }
            // A wake before the connection was lost was followed by polls
            // this model did not see: how long the task has waited since
            // is not known, and a wait measured from it would be invented.
            for t in self.tasks.values_mut() {
                if t.scheduled_since.take().is_some() && t.state == TaskState::Scheduled {
                    t.state = TaskState::Idle;
                }
            }
            ended.sort_unstable();
            for task in ended {
                obs.change(self, &Change::PollEnded { task, ts: now });
            }
        }
        self.resync = true;
        if self.hellos == 1 && source_of(Some(info)) == SOURCE_CONSOLE {
            self.note(CONSOLE_NOTE.into());
        }
        let mut info = info.clone();
        info.token = None;
        self.info = Some(info);
        self.connected = true;
        self.ended = false;
    }

    /// Records the sequence number of a frame.
    pub fn seq(&mut self, seq: u64) {
        if let Some(l) = self.last_seq {
            if seq != l.wrapping_add(1) && seq != 0 {
                self.seq_gaps += 1;
            }
        }
        self.last_seq = Some(seq);
        self.frames += 1;
    }

    /// Counts an event about span `id` when the model does not know the
    /// span: neither live, nor a task or span it has seen close (an event
    /// after a close, a late wake of a finished task, is not unknown).
    pub(super) fn note_unknown(&mut self, id: SpanId) {
        let known = self.tasks.contains_key(&id)
            || self.spans.contains_key(&id)
            || self.closed_spans.get(id).is_some()
            || self.completed.contains(id);
        if !known {
            self.unknown_span_events = self.unknown_span_events.saturating_add(1);
        }
    }

    /// Advances the process clock, and the current thread's, to `ts`.
    #[inline]
    pub(super) fn bump(&mut self, ts: u64) {
        if ts > self.now {
            self.now = ts;
        }
        if ts > self.cur_clock {
            self.cur_clock = ts;
        }
    }

    /// Makes thread `id` the current one (its events follow).
    #[inline]
    pub(super) fn set_thread(&mut self, id: u32) {
        if id == self.cur_thread {
            return;
        }
        // Back to the thread left last, from one made current from the map
        // (a merged batch of two workers, nearly every switch): inlined.
        if let Some((t, c)) = self.left {
            if t == id && self.cur_known == Some(self.cur_thread) {
                self.left = Some((self.cur_thread, self.cur_clock));
                self.cur_thread = id;
                self.cur_clock = c;
                self.cur_known = Some(id);
                std::mem::swap(&mut self.cur_room, &mut self.left_room);
                return;
            }
        }
        self.switch_thread(id);
    }

    /// [`Process::set_thread`] to a thread other than the one left last.
    #[inline(never)]
    fn switch_thread(&mut self, id: u32) {
        let (old, clock) = (self.cur_thread, self.cur_clock);
        let left = self.left.take();
        let (old_room, left_room) = (self.cur_room.take(), self.left_room.take());
        if self.cur_known != Some(old) {
            // The old thread may not be in the map (then `thread` adds it,
            // or folds it into the excess threads' entry): everything is
            // written back, and `id`'s clock read from the map.
            if let Some((t, c)) = left {
                self.write_back(t, c);
            }
            let th = self.thread();
            th.clock = th.clock.max(clock);
            self.enter_thread(id);
            return;
        }
        match left {
            // Back to the thread left last: its clock is the one kept.
            Some((t, c)) if t == id => {
                self.cur_thread = id;
                self.cur_clock = c;
                self.cur_known = Some(id);
                self.cur_room = left_room;
            }
            other => {
                if let Some((t, c)) = other {
                    self.write_back(t, c);
                }
                self.enter_thread(id);
            }
        }
        // The old thread's clock kept rather than written back (its entry
        // is in the map: the clock there is at most this).
        self.left = Some((old, clock));
        self.left_room = old_room;
    }

    /// Whether the current thread is in `threads` with room on its stack
    /// for another span: remembered (see `cur_room`), a whole poll asks at
    /// every poll.
    #[inline]
    pub(super) fn stack_room(&mut self) -> bool {
        if let Some(room) = self.cur_room {
            return room;
        }
        let room = self
            .threads
            .get(&self.cur_thread)
            .is_some_and(|th| th.stack.len() < MAX_STACK);
        self.cur_room = Some(room);
        room
    }

    /// Makes `id` current with the clock of its entry in the map.
    fn enter_thread(&mut self, id: u32) {
        let clock = self.threads.get(&id).map(|t| t.clock);
        self.cur_room = None;
        self.cur_thread = id;
        self.cur_clock = clock.unwrap_or(0);
        self.cur_known = clock.map(|_| id);
    }

    /// Writes clock `c` kept for thread `t` (in the map) back to its entry.
    fn write_back(&mut self, t: u32, c: u64) {
        if let Some(th) = self.threads.get_mut(&t) {
            th.clock = th.clock.max(c);
        }
    }

    /// The clock of thread `id` (with the one kept for the thread left
    /// last), for a thread that is not the current one.
    fn thread_clock(&self, id: u32, th: &ThreadState) -> u64 {
        match self.left {
            Some((t, c)) if t == id => c.max(th.clock),
            _ => th.clock,
        }
    }

    /// The time up to which the model judges what is still going on (a
    /// task woken and not polled yet, a first poll not ended yet): the
    /// process clock, held back to the clock of any thread that lags it by
    /// at most [`MAX_THREAD_LAG_NS`]. A producer drains its threads one
    /// after the other, so one thread's events can run seconds ahead of
    /// another's still to come (the poll that ends a wait, or the end of a
    /// poll): a clock advanced by one thread's events must not make a wait
    /// or a poll whose end another thread has not told yet. A thread whose
    /// poll the producer reported stalled (a `Stall` of that poll) does not
    /// hold it back: its silence is that poll. Waits that ended are judged
    /// by their own events' timestamps, not by this.
    pub fn judged_now(&self) -> u64 {
        let mut judged = self.now;
        let mut hold = |clock: u64, th: Option<&ThreadState>| {
            // The single "poll" of a `spawn_blocking` task (the whole
            // closure: tokio runs a worker that way after `block_in_place`)
            // or of a `block_on` lasts as long as the thread is in it, and
            // the producer samples no stall of it: it says nothing of
            // events still to come.
            let polling = th.and_then(ThreadState::polling).filter(|t| {
                !self
                    .tasks
                    .get(t)
                    .is_some_and(super::task::Task::is_blocking_or_block_on)
            });
            let stalled = polling.is_some_and(|task| {
                self.tasks
                    .get(&task)
                    .is_some_and(|t| t.poll_start.is_some_and(|start| t.stall(start).is_some()))
            });
            // A thread between polls holds the time back only briefly: it
            // may be idle (a parked worker sends nothing), and a drain sends
            // every thread's records up to one cut.
            let lag = if polling.is_some() {
                MAX_THREAD_LAG_NS
            } else {
                MAX_IDLE_THREAD_LAG_NS
            };
            if clock > 0 && !stalled && self.now.saturating_sub(clock) <= lag {
                judged = judged.min(clock);
            }
        };
        for (id, th) in &self.threads {
            if *id != self.cur_thread {
                hold(self.thread_clock(*id, th), Some(th));
            }
        }
        let cur = self.threads.get(&self.cur_thread);
        hold(self.cur_clock.max(cur.map_or(0, |t| t.clock)), cur);
        judged
    }

    /// Class of span callsite `id` (unknown callsites are user spans).
    pub fn span_class(&self, callsite: u32) -> SpanClass {
        match self.callsites.get(&callsite).map(|c| c.kind) {
            Some(CallsiteKind::Span(c)) => c,
            _ => SpanClass::User,
        }
    }

    /// The current thread's state (excess threads share one).
    pub(super) fn thread(&mut self) -> &mut ThreadState {
        // Its stack may change, or it be added to the map.
        self.cur_room = None;
        let mut id = self.cur_thread;
        if self.threads.len() >= MAX_THREADS && !self.threads.contains_key(&id) {
            // Fold excess threads into one; better than unbounded growth.
            id = u32::MAX;
        }
        self.threads.entry(id).or_default()
    }

    /// Folds completed tasks beyond the retention limits into the summary.
    pub fn prune(&mut self, cfg: &Config) {
        let r = &cfg.retention;
        let Self {
            completed,
            summary,
            last_group,
            now,
            spare_tasks,
            ..
        } = self;
        // Folded where they lie, then dropped there: a task is large, and
        // taking each out of the queue copied it once more.
        let mut folded = 0;
        for t in completed.iter() {
            let old = t
                .closed
                .is_some_and(|c| now.saturating_sub(c) > r.completed_max_age_ns);
            if completed.len() - folded <= r.completed_max_count && !old {
                break;
            }
            folded += 1;
            // Tasks of one group tend to follow each other: reuse the key of
            // the last one rather than format it again.
            let cached = last_group
                .as_ref()
                .filter(|g| g.name == t.name && g.location == t.location);
            if let Some(s) = cached.and_then(|g| summary.get_mut(g.key.as_str())) {
                s.add(t);
                continue;
            }
            let mut key = super::task::group_key(t);
            *last_group = Some(LastGroup {
                name: t.name.clone(),
                location: t.location.clone(),
                key: key.clone(),
            });
            if !summary.contains_key(&key) && summary.len() >= r.max_summary_groups {
                key = "(other)".into();
            }
            let s = summary.entry(key.clone()).or_default();
            if s.group.is_empty() {
                s.group = key;
            }
            s.add(t);
        }
        completed.drop_front_reusing(folded, spare_tasks, SPARE_TASKS);
    }

    /// The resource span `s` belongs to (itself, or an ancestor through
    /// async op and async-op poll spans).
    pub fn resource_of(&self, mut s: SpanId) -> Option<SpanId> {
        if self.resources.is_empty() {
            // Nothing to find (most programs' spans, between their locks
            // and timers): no walk up the parents.
            return None;
        }
        for _ in 0..8 {
            if self.resources.contains_key(&s) {
                return Some(s);
            }
            s = self.spans.get(&s)?.parent?;
        }
        None
    }

    /// The task a span was created in.
    pub fn task_of_span(&self, s: SpanId) -> Option<SpanId> {
        if self.tasks.contains_key(&s) {
            return Some(s);
        }
        self.spans.get(&s)?.ctx_task
    }

    /// Looks up a task, live or retained.
    pub fn task(&self, id: SpanId) -> Option<&Task> {
        self.tasks.get(&id).or_else(|| self.completed.first(id))
    }

    /// The ids of the live tasks, in order: scans observe findings task by
    /// task, and a finding keeps the first tasks and the worst message it
    /// is given, so the order must not be the map's (seeded per map, and
    /// so per run).
    pub fn task_ids(&self) -> Vec<SpanId> {
        let mut ids: Vec<SpanId> = self.tasks.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Commits the pending poll of task `id` if it ended more than
    /// `grace_ns` before `now`: a poll long over is a real poll (had it
    /// been the drop of the future, the task would be closed by now).
    pub fn commit_settled_poll<O: Observer>(
        &mut self,
        id: SpanId,
        now: u64,
        grace_ns: u64,
        obs: &mut O,
    ) {
        let settled = self.tasks.get(&id).is_some_and(|t| {
            t.poll_start.is_none()
                && t.pending_poll
                    .is_some_and(|p| now.saturating_sub(p.end) > grace_ns)
        });
        if settled {
            self.commit_pending_poll(id, obs);
        }
    }

    /// Commits the last poll of every open task (end of a recording).
    pub fn finish<O: Observer>(&mut self, obs: &mut O) {
        for id in self.task_ids() {
            if self.tasks[&id].poll_start.is_none() {
                self.commit_pending_poll(id, obs);
            }
        }
    }

    /// Commits the pending poll of task `id`, if any, and reports it.
    pub fn commit_pending_poll<O: Observer>(&mut self, id: SpanId, obs: &mut O) {
        let Some((p, duration)) = self
            .tasks
            .get_mut(&id)
            .and_then(|t| t.commit_pending_poll())
        else {
            return;
        };
        obs.change(
            self,
            &Change::PollCommitted {
                task: id,
                start: p.start,
                duration,
            },
        );
    }
}

/// Receives the model's [`Change`]s, each with the process it happened in.
pub trait Observer {
    /// Whether this observer wants the steps ([`ChangeKind::is_step`](super::ChangeKind::is_step)). A
    /// constant, so that for an observer without them (the detectors) the
    /// model neither builds nor reports them: they cost it nothing.
    const STEPS: bool = false;

    /// `change` happened in `p`; `p` is as the change left it.
    fn change(&mut self, p: &Process, change: &Change<'_>);

    /// Whether a timed change of `kind` about `task` lasting `d` ns (see
    /// [`Change::timed`]) would change nothing here: the model then need
    /// not make it, nor call [`Observer::change`]. The default: none is
    /// ignored.
    #[inline]
    fn ignores(&self, _kind: ChangeKind, _task: SpanId, _d: u64) -> bool {
        false
    }
}

/// No observer: the model alone.
impl Observer for () {
    #[inline]
    fn change(&mut self, _: &Process, _: &Change<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock of each thread (the current one's included) and which
    /// threads have an entry, as switching threads leaves them: the same
    /// as writing the clock back at every switch, which the kept clock of
    /// the thread left last stands for. Threads switch in every order
    /// (back and forth between two, among several, to threads with no
    /// entry yet, which `thread` then adds), clocks moving meanwhile.
    #[test]
    fn a_kept_clock_is_the_clock_written_back() {
        let mut p = Process::new(ProcessKey {
            pid: 1,
            start_unix_ns: 0,
        });
        // Reference: clocks written back at each switch.
        let mut clocks: std::collections::BTreeMap<u32, u64> = Default::default();
        let (mut cur, mut cur_clock) = (0u32, 0u64);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 8 {
                // Mostly between two threads, as a merged batch of two
                // workers; sometimes a third or a new one.
                0..=3 => {
                    let id = (x >> 8) as u32 % if step % 100 < 90 { 2 } else { 6 };
                    p.set_thread(id);
                    if id != cur {
                        let c = clocks.entry(cur).or_default();
                        *c = (*c).max(cur_clock);
                        cur = id;
                        cur_clock = clocks.get(&id).copied().unwrap_or(0);
                    }
                }
                // An event of the current thread.
                4..=6 => {
                    let ts = step * 10 + (x >> 16) % 2_000;
                    p.bump(ts);
                    cur_clock = cur_clock.max(ts);
                }
                // Something that needs the thread's entry (a span entered).
                _ => {
                    p.thread();
                    clocks.entry(cur).or_default();
                }
            }
            assert_eq!(p.cur_thread, cur, "step {step}");
            assert_eq!(p.cur_clock, cur_clock, "step {step}");
            let ids: Vec<u32> = clocks.keys().copied().collect();
            let mut have: Vec<u32> = p.threads.keys().copied().collect();
            have.sort_unstable();
            assert_eq!(have, ids, "step {step}");
            for (&id, &c) in &clocks {
                if id != cur {
                    assert_eq!(
                        p.thread_clock(id, &p.threads[&id]),
                        c,
                        "thread {id}, step {step}"
                    );
                }
            }
        }
    }
}
