//! Snapshots of one process of the model, for viewers that join late.
//!
//! A [`ProcessSnapshot`] holds what the model knows of a process and what
//! its views show: the `Hello` (without the token), callsites, threads with
//! their names and entered spans, live spans, live and retained tasks with
//! their counters, poll state, await tree, leaf, wakers, wakes, logs and
//! histograms, the summaries of the tasks no longer kept, resources with
//! their holders, state, where a lock was taken and a timer's deadline
//! (since version 5), the stalls of each task's latest stalled polls
//! (version 2; each poll's own since version 4; not the ring of recently closed spans), drop counts, notes, the frame, event and
//! sequence counters, and whether the producer is connected or ended.
//! [`crate::Model::restore_process`] installs one: the process then equals the
//! snapshotted one, history included, without replaying any event.
//!
//! What it does not hold is detector memory (which detector episodes are in
//! progress, when the process was last scanned): a model that restores a
//! snapshot runs its own detectors, and is told of the episodes separately
//! (the viewer protocol sends them as control messages).
//!
//! The snapshot has its own types rather than the model's, so that its
//! encoding (postcard, compact, versioned by [`SNAPSHOT_VERSION`]) does not
//! change when the model's layout does, and so that the JSON forms of model
//! types (which skip empty fields, which postcard cannot read back) stay
//! their own. Histograms are sent as their recorded buckets, which record
//! back into histograms equal to the originals.

use std::collections::VecDeque;
use std::sync::Arc;

use awaitscope_wire::{
    Callsite, DropCounts, Field, Level, NativeFrame, ProcessInfo, ProcessKey, Sched, SpanClass,
    SpanId, StackState, Value,
};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::await_tree::{AwaitNode, AwaitTree};
use super::process::{Entered, Process, ThreadState};
use super::resource::Resource;
use super::span::{Location, Span};
use super::stall::{PollStall, StallSpan};
use super::task::{Histograms, LogRecord, PendingPoll, Task, TaskState, TaskSummary};

/// Version of the snapshot encoding; a snapshot of another version is
/// refused when decoded.
pub const SNAPSHOT_VERSION: u16 = 5;

/// Why a snapshot could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Encoded by another version.
    #[error("snapshot format version {found} (this build reads version {SNAPSHOT_VERSION})")]
    Version {
        /// The version found.
        found: u16,
    },
    /// Not a valid snapshot (truncated, corrupt, or bytes after its end).
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

/// One process of a model, as a value that can be encoded and installed in
/// another model (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessSnapshot {
    version: u16,
    key: ProcessKey,
    info: Option<ProcessInfo>,
    connected: bool,
    ended: bool,
    hellos: u32,
    now: u64,
    dropped: DropCounts,
    collector_dropped: u64,
    frames: u64,
    events: u64,
    seq_gaps: u64,
    unknown_span_events: u64,
    last_seq: Option<u64>,
    warn_count: u64,
    error_count: u64,
    notes: Vec<String>,
    callsites: Vec<Callsite>,
    cur_thread: u32,
    threads: Vec<ThreadSnap>,
    spans: Vec<SpanSnap>,
    tasks: Vec<TaskSnap>,
    /// Oldest first, as the model keeps them.
    completed: Vec<TaskSnap>,
    summary: Vec<(String, TaskSummary)>,
    resources: Vec<ResourceSnap>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ThreadSnap {
    id: u32,
    name: Option<String>,
    /// Entered spans: the span, the task polled, the await-tree node.
    stack: Vec<(SpanId, Option<SpanId>, Option<u16>)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LocationSnap {
    file: String,
    line: u32,
    col: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct SpanSnap {
    id: SpanId,
    callsite: u32,
    class: SpanClass,
    parent: Option<SpanId>,
    ctx_task: Option<SpanId>,
    created: u64,
    first_entered: Option<u64>,
    fields: Vec<Field>,
    label: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct NodeSnap {
    span: SpanId,
    callsite: u32,
    class: SpanClass,
    parent: Option<u16>,
    first_entered: u64,
    label: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LogSnap {
    level: Level,
    message: String,
    location: Option<LocationSnap>,
    ts: u64,
}

/// A histogram as its recorded buckets: (highest value of the bucket,
/// count), in increasing order.
type Buckets = Vec<(u64, u64)>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TaskSnap {
    id: SpanId,
    callsite: u32,
    tokio_id: Option<u64>,
    name: Option<String>,
    kind: Option<String>,
    location: Option<LocationSnap>,
    parent: Option<SpanId>,
    spawn_span: Option<SpanId>,
    fields: Vec<Field>,
    created: u64,
    closed: Option<u64>,
    state: TaskState,
    polls: u64,
    busy_ns: u64,
    scheduled_ns: u64,
    max_poll_ns: u64,
    /// Poll and scheduled times, when anything was recorded.
    histograms: Option<(Buckets, Buckets)>,
    wakes: u64,
    self_wakes: u64,
    woken_by: Vec<(Option<SpanId>, u64)>,
    wakers_alive: u64,
    woken_since_poll: bool,
    woken_during_poll: bool,
    tree_from_enters: bool,
    scheduled_since: Option<u64>,
    poll_start: Option<u64>,
    pending_poll: Option<(u64, u64)>,
    last_poll_end: Option<u64>,
    await_tree: Vec<NodeSnap>,
    leaf: Option<(SpanId, u64)>,
    tree_changed: bool,
    waiting_on: Vec<SpanId>,
    logs: Vec<LogSnap>,
    warn_count: u64,
    error_count: u64,
    panic: Option<String>,
    last_committed: Option<(u64, u64)>,
    /// Its stalls, each poll's own (version 4; one before).
    stalls: Vec<StallSnap>,
}

/// A task's [`PollStall`] (version 2): a viewer that joins during a
/// stalled poll, or before a late half of its stall, judges it as the
/// collector does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StallSnap {
    start: u64,
    ts: u64,
    crossed: bool,
    ended: bool,
    /// Label, location and whether the span is the program's own.
    spans: Vec<(String, Option<LocationSnap>, bool)>,
    stack: Option<StackState>,
    frames: Vec<NativeFrame>,
    sched: Option<Sched>,
    poll_ns: Option<u64>,
    sched_at_commit: Option<Sched>,
}

impl StallSnap {
    fn of(s: &PollStall) -> StallSnap {
        StallSnap {
            start: s.start,
            ts: s.ts,
            crossed: s.crossed,
            ended: s.ended,
            spans: s
                .spans
                .iter()
                .map(|x| {
                    (
                        x.label.clone(),
                        x.location.as_ref().map(LocationSnap::of),
                        x.user,
                    )
                })
                .collect(),
            stack: s.stack,
            frames: s.frames.clone(),
            sched: s.sched,
            poll_ns: s.poll_ns,
            sched_at_commit: s.sched_at_commit,
        }
    }

    fn to_stall(&self) -> PollStall {
        let mut s = PollStall::new(self.start);
        s.ts = self.ts;
        s.crossed = self.crossed;
        s.ended = self.ended;
        s.spans = self
            .spans
            .iter()
            .map(|(label, location, user)| StallSpan {
                label: label.clone(),
                location: location.as_ref().map(LocationSnap::to_location),
                user: *user,
            })
            .collect();
        s.stack = self.stack;
        s.frames = self.frames.clone();
        s.sched = self.sched;
        s.poll_ns = self.poll_ns;
        s.sched_at_commit = self.sched_at_commit;
        s
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ResourceSnap {
    id: SpanId,
    callsite: u32,
    concrete_type: String,
    kind: String,
    location: Option<LocationSnap>,
    internal: bool,
    created: u64,
    holders: Vec<(SpanId, u32)>,
    state: Vec<(String, Value)>,
    /// Where the latest holder took the lock: a deadlock never takes it
    /// again, so a viewer joining during one would never learn it.
    held_at: Vec<(SpanId, Vec<String>)>,
    /// A timer's deadline: a viewer joining before the timer fires judges
    /// its wake by it.
    deadline: Option<u64>,
    /// Of an internal resource, the one it is inside.
    #[serde(default)]
    outer: Option<SpanId>,
}

impl ProcessSnapshot {
    /// The snapshot of `p`.
    pub fn of(p: &Process) -> ProcessSnapshot {
        let mut callsites: Vec<Callsite> = p.callsites.values().cloned().collect();
        callsites.sort_by_key(|c| c.id);
        let mut threads: Vec<ThreadSnap> = p
            .threads
            .iter()
            .map(|(id, t)| ThreadSnap {
                id: *id,
                name: t.name.clone(),
                stack: t.stack.iter().map(|e| (e.span, e.task, e.node)).collect(),
            })
            .collect();
        threads.sort_by_key(|t| t.id);
        let mut spans: Vec<SpanSnap> = p.spans.iter().map(|(id, s)| SpanSnap::of(*id, s)).collect();
        spans.sort_by_key(|s| s.id);
        let mut tasks: Vec<TaskSnap> = p.tasks.values().map(TaskSnap::of).collect();
        tasks.sort_by_key(|t| t.id);
        let mut summary: Vec<(String, TaskSummary)> = p
            .summary
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        summary.sort_by(|a, b| a.0.cmp(&b.0));
        let mut resources: Vec<ResourceSnap> = p.resources.values().map(ResourceSnap::of).collect();
        resources.sort_by_key(|r| r.id);
        let info = p.info.clone().map(|mut i| {
            i.token = None;
            i
        });
        ProcessSnapshot {
            version: SNAPSHOT_VERSION,
            key: p.key,
            info,
            connected: p.connected,
            ended: p.ended,
            hellos: p.hellos,
            now: p.now,
            dropped: p.dropped,
            collector_dropped: p.collector_dropped,
            frames: p.frames,
            events: p.events,
            seq_gaps: p.seq_gaps,
            unknown_span_events: p.unknown_span_events,
            last_seq: p.last_seq,
            warn_count: p.warn_count,
            error_count: p.error_count,
            notes: p.notes.clone(),
            callsites,
            cur_thread: p.cur_thread,
            threads,
            spans,
            tasks,
            completed: p.completed.iter().map(TaskSnap::of).collect(),
            summary,
            resources,
        }
    }

    /// The process this is a snapshot of.
    pub fn key(&self) -> ProcessKey {
        self.key
    }

    /// Live tasks in the snapshot.
    pub fn live_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The process the snapshot stands for, detector memory empty.
    pub fn to_process(&self) -> Process {
        let mut p = Process::new(self.key);
        p.info = self.info.clone();
        p.connected = self.connected;
        p.ended = self.ended;
        p.hellos = self.hellos;
        p.now = self.now;
        p.dropped = self.dropped;
        p.collector_dropped = self.collector_dropped;
        p.frames = self.frames;
        p.events = self.events;
        p.seq_gaps = self.seq_gaps;
        p.unknown_span_events = self.unknown_span_events;
        p.last_seq = self.last_seq;
        p.warn_count = self.warn_count;
        p.error_count = self.error_count;
        p.notes = self.notes.clone();
        p.callsites = self.callsites.iter().map(|c| (c.id, c.clone())).collect();
        p.cur_thread = self.cur_thread;
        p.threads = self
            .threads
            .iter()
            .map(|t| {
                let th = ThreadState {
                    name: t.name.clone(),
                    stack: t
                        .stack
                        .iter()
                        .map(|&(span, task, node)| Entered { span, task, node })
                        .collect(),
                    // Past polls only explain a late timer due now.
                    recent_polls: Default::default(),
                    // Not sent: a thread counts in `judged_now` again
                    // from its next event.
                    clock: 0,
                };
                (t.id, th)
            })
            .collect();
        p.spans = self.spans.iter().map(|s| (s.id, s.to_span())).collect();
        p.tasks = self.tasks.iter().map(|t| (t.id, t.to_task())).collect();
        p.completed = self.completed.iter().map(TaskSnap::to_task).collect();
        p.summary = self.summary.iter().cloned().collect();
        p.resources = self
            .resources
            .iter()
            .map(|r| (r.id, r.to_resource()))
            .collect();
        p
    }

    /// Appends the encoding of the snapshot to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Writing to a Vec only fails on a type serde cannot encode, and
        // every type here can.
        let bytes = postcard::to_allocvec(self).expect("snapshots encode");
        out.extend_from_slice(&bytes);
    }

    /// Decodes a snapshot that is exactly `buf`.
    pub fn decode(buf: &[u8]) -> Result<ProcessSnapshot, SnapshotError> {
        // The version comes first: check it before reading the rest as
        // this version's layout.
        let (found, _) = postcard::take_from_bytes::<u16>(buf)
            .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if found != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found });
        }
        let (s, rest) = postcard::take_from_bytes::<ProcessSnapshot>(buf)
            .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SnapshotError::Malformed(format!(
                "{} bytes after its end",
                rest.len()
            )));
        }
        Ok(s)
    }

    /// Encodes the snapshot in at most `cap` bytes: whole when it fits,
    /// else with as many live tasks, then resources, then spans (lowest ids
    /// first), then completed tasks (newest first) as fit, and a note
    /// saying that parts were left out. Only a snapshot whose other parts
    /// (callsites, threads, summaries, notes) alone exceed the cap comes
    /// out over it.
    pub fn encode_capped(&self, cap: usize, out: &mut Vec<u8>) {
        let mut whole = Vec::new();
        self.encode(&mut whole);
        if whole.len() <= cap {
            out.extend_from_slice(&whole);
            return;
        }
        let mut s = self.clone();
        let completed = std::mem::take(&mut s.completed);
        let tasks = std::mem::take(&mut s.tasks);
        let spans = std::mem::take(&mut s.spans);
        let resources = std::mem::take(&mut s.resources);
        let note = format!(
            "this viewer's snapshot of the process exceeded {cap} bytes: parts were left out \
             (see the collector's own views for them)"
        );
        if s.notes.len() < 64 {
            s.notes.push(note);
        }
        let mut used = encoded_len(&s);
        let fit = |items: &[usize], used: &mut usize| -> usize {
            let mut n = 0;
            for size in items {
                // Each item also grows the list's length prefix by at most
                // a few bytes.
                if *used + size + 4 > cap {
                    break;
                }
                *used += size;
                n += 1;
            }
            *used += 4;
            n
        };
        let sizes = |v: &[TaskSnap]| v.iter().map(encoded_len).collect::<Vec<_>>();
        let n = fit(&sizes(&tasks), &mut used);
        s.tasks = tasks[..n].to_vec();
        let n = fit(
            &resources.iter().map(encoded_len).collect::<Vec<_>>(),
            &mut used,
        );
        s.resources = resources[..n].to_vec();
        let n = fit(
            &spans.iter().map(encoded_len).collect::<Vec<_>>(),
            &mut used,
        );
        s.spans = spans[..n].to_vec();
        // Completed tasks last, newest kept.
        let c = sizes(&completed);
        let n = fit(&c.iter().rev().copied().collect::<Vec<_>>(), &mut used);
        s.completed = completed[completed.len() - n..].to_vec();
        s.encode(out);
    }
}

fn encoded_len<T: Serialize>(v: &T) -> usize {
    postcard::to_allocvec(v).map_or(usize::MAX / 2, |b| b.len())
}

impl LocationSnap {
    fn of(l: &Location) -> LocationSnap {
        LocationSnap {
            file: l.file.clone(),
            line: l.line,
            col: l.col,
        }
    }

    fn to_location(&self) -> Location {
        Location {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
        }
    }
}

fn label_of(l: &Option<Arc<str>>) -> Option<String> {
    l.as_deref().map(str::to_string)
}

fn label(l: &Option<String>) -> Option<Arc<str>> {
    l.as_deref().map(Arc::from)
}

impl SpanSnap {
    fn of(id: SpanId, s: &Span) -> SpanSnap {
        SpanSnap {
            id,
            callsite: s.callsite,
            class: s.class,
            parent: s.parent,
            ctx_task: s.ctx_task,
            created: s.created,
            first_entered: s.first_entered,
            fields: s.fields.clone(),
            label: label_of(&s.label),
        }
    }

    fn to_span(&self) -> Span {
        Span {
            callsite: self.callsite,
            class: self.class,
            parent: self.parent,
            ctx_task: self.ctx_task,
            created: self.created,
            first_entered: self.first_entered,
            fields: self.fields.clone(),
            label: label(&self.label),
        }
    }
}

fn buckets(h: &Histogram<u32>) -> Buckets {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value().into()))
        .collect()
}

fn histogram(b: &Buckets, empty: &Histogram<u32>) -> Histogram<u32> {
    let mut h = empty.clone();
    for &(value, count) in b {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        // As the task records: an auto-resizing histogram grows for any
        // value it can hold; saturate otherwise.
        if h.record_n(value, count).is_err() {
            h.saturating_record_n(value, count);
        }
    }
    h
}

impl TaskSnap {
    fn of(t: &Task) -> TaskSnap {
        TaskSnap {
            id: t.id,
            callsite: t.callsite,
            tokio_id: t.tokio_id,
            name: t.name.clone(),
            kind: t.kind.clone(),
            location: t.location.as_ref().map(LocationSnap::of),
            parent: t.parent,
            spawn_span: t.spawn_span,
            fields: t.fields.clone(),
            created: t.created,
            closed: t.closed,
            state: t.state,
            polls: t.polls,
            busy_ns: t.busy_ns,
            scheduled_ns: t.scheduled_ns,
            max_poll_ns: t.max_poll_ns,
            histograms: t
                .histograms()
                .map(|h| (buckets(&h.poll_us), buckets(&h.scheduled_us))),
            wakes: t.wakes,
            self_wakes: t.self_wakes,
            woken_by: t.woken_by.to_vec(),
            wakers_alive: t.wakers_alive,
            woken_since_poll: t.woken_since_poll,
            woken_during_poll: t.woken_during_poll,
            tree_from_enters: t.tree_from_enters,
            scheduled_since: t.scheduled_since,
            poll_start: t.poll_start,
            pending_poll: t.pending_poll.map(|p| (p.start, p.end)),
            last_poll_end: t.last_poll_end,
            await_tree: t
                .await_tree
                .nodes
                .iter()
                .map(|n| NodeSnap {
                    span: n.span,
                    callsite: n.callsite,
                    class: n.class,
                    parent: n.parent,
                    first_entered: n.first_entered,
                    label: label_of(&n.label),
                })
                .collect(),
            leaf: t.leaf,
            tree_changed: t.tree_changed,
            waiting_on: t.waiting_on.clone(),
            logs: t
                .logs
                .iter()
                .map(|l| LogSnap {
                    level: l.level,
                    message: l.message.clone(),
                    location: l.location.as_ref().map(LocationSnap::of),
                    ts: l.ts,
                })
                .collect(),
            warn_count: t.warn_count,
            error_count: t.error_count,
            panic: t.panic.clone(),
            last_committed: t.last_committed.map(|p| (p.start, p.end)),
            stalls: t.stalls.iter().map(StallSnap::of).collect(),
        }
    }

    fn to_task(&self) -> Task {
        let mut t = Task::new(self.id, self.callsite, self.created);
        t.tokio_id = self.tokio_id;
        t.name = self.name.clone();
        t.kind = self.kind.clone();
        t.location = self.location.as_ref().map(LocationSnap::to_location);
        t.parent = self.parent;
        t.spawn_span = self.spawn_span;
        t.fields = self.fields.clone();
        t.closed = self.closed;
        t.state = self.state;
        t.polls = self.polls;
        t.busy_ns = self.busy_ns;
        t.scheduled_ns = self.scheduled_ns;
        t.max_poll_ns = self.max_poll_ns;
        t.set_histograms(self.histograms.as_ref().map(|(poll, scheduled)| {
            let empty = Histograms::new();
            Histograms {
                poll_us: histogram(poll, &empty.poll_us),
                scheduled_us: histogram(scheduled, &empty.scheduled_us),
            }
        }));
        t.wakes = self.wakes;
        t.self_wakes = self.self_wakes;
        t.woken_by = self.woken_by.clone().into();
        t.wakers_alive = self.wakers_alive;
        t.woken_since_poll = self.woken_since_poll;
        t.woken_during_poll = self.woken_during_poll;
        t.tree_from_enters = self.tree_from_enters;
        t.scheduled_since = self.scheduled_since;
        t.poll_start = self.poll_start;
        t.pending_poll = self
            .pending_poll
            .map(|(start, end)| PendingPoll { start, end });
        t.last_poll_end = self.last_poll_end;
        t.await_tree = AwaitTree {
            nodes: self
                .await_tree
                .iter()
                .map(|n| AwaitNode {
                    span: n.span,
                    callsite: n.callsite,
                    class: n.class,
                    parent: n.parent,
                    first_entered: n.first_entered,
                    label: label(&n.label),
                })
                .collect(),
        };
        t.leaf = self.leaf;
        t.tree_changed = self.tree_changed;
        t.waiting_on = self.waiting_on.clone();
        t.logs = self
            .logs
            .iter()
            .map(|l| LogRecord {
                level: l.level,
                message: l.message.clone(),
                location: l.location.as_ref().map(LocationSnap::to_location),
                ts: l.ts,
            })
            .collect::<VecDeque<_>>();
        t.warn_count = self.warn_count;
        t.error_count = self.error_count;
        t.panic = self.panic.clone();
        t.last_committed = self
            .last_committed
            .map(|(start, end)| PendingPoll { start, end });
        t.stalls = self.stalls.iter().map(StallSnap::to_stall).collect();
        t
    }
}

impl ResourceSnap {
    fn of(r: &Resource) -> ResourceSnap {
        ResourceSnap {
            id: r.id,
            callsite: r.callsite,
            concrete_type: r.concrete_type.clone(),
            kind: r.kind.clone(),
            location: r.location.as_ref().map(LocationSnap::of),
            internal: r.internal,
            created: r.created,
            holders: r.holders.clone(),
            state: r.state.clone(),
            held_at: r.held_at.clone(),
            deadline: r.deadline,
            outer: r.outer,
        }
    }

    fn to_resource(&self) -> Resource {
        Resource {
            id: self.id,
            callsite: self.callsite,
            concrete_type: self.concrete_type.clone(),
            kind: self.kind.clone(),
            location: self.location.as_ref().map(LocationSnap::to_location),
            internal: self.internal,
            outer: self.outer,
            created: self.created,
            holders: self.holders.clone(),
            state: self.state.clone(),
            held_at: self.held_at.clone(),
            deadline: self.deadline,
        }
    }
}
