//! Console's updates as awaitscope wire events.
//!
//! One [`Mapper`] per program: it keeps what console sent before (each
//! task's statistics at the last update, the resources and async ops still
//! live) and turns each new [`Update`] into frames of one made-up process
//! (a `Hello` naming [`CONSOLE_PRODUCER`] first). Everything happens on one
//! made-up thread, in time order, but polls running at an update, each on
//! a thread of its own while it runs (`polls.rs`).
//!
//! What the events say, and what they do not:
//!
//! * **Polls.** Between two updates console says how many polls a task
//!   made and how long they took in total, and when its last one started
//!   and ended. The last poll is sent as it was. The others are sent each
//!   with the average time of the others, spread evenly between the
//!   previous update and the last poll: an average is never longer than the
//!   longest poll, so a long poll is never made up (one among many short
//!   ones may be missed). A poll still running at an update is sent as
//!   started, and ended at its end when a later update gives it, else at
//!   the update that saw it running (it ran at least that long). A
//!   `spawn_blocking` task's single poll runs from its spawn (console sees
//!   its span entered only to drop the closure, after it ran).
//! * **Wakes.** Each poll after the first is sent woken at its own start
//!   (a wait of zero: how long the task really waited for it is not known,
//!   and a made-up wait would be a made-up starvation), self-wakes in the
//!   proportion console counted. A task woken after its last poll ended is
//!   sent woken at that time: it is waiting for a poll since then, which
//!   console says exactly.
//! * **Wakers.** A task's live wakers are console's clones minus drops.
//!   When the drops outnumber the clones (console lost count, or dropped
//!   events) the count is not known, and sent as one: not lost.
//! * **Await trees** hold only the resources a task waits on (an async op
//!   on a Mutex, say: the resource, then the operation), from console's
//!   async ops it awaits (polled, not dropped); the task is sent waiting on
//!   those resources. Spans of the program are not in console's data. A
//!   lock's holder is the task whose acquire of it obtained its permits
//!   (`resources.rs`).
//! * **Not sent at all**: the task tree (console gives the spans a task
//!   was spawned in, not the task), causal error traces, ERROR events and
//!   panics, native stacks, who woke whom (only whether it was the task
//!   itself), timer deadlines.

use std::collections::HashMap;

use awaitscope_wire::{
    names, Body, Callsite, CallsiteKind, DropCounts, Event, EventClass, Field, Frame, Level,
    ProcessInfo, ProcessKey, SpanClass, SpanId, SpanNew, Value,
};
use console_api::instrument::Update;
use console_api::{field, tasks};

use super::emit::{
    field_name, id_of, loc_fields, truncated, unix_ns, unquote, value_str, Spans, Timed,
    CS_ASYNC_OP, CS_POLL_OP, CS_RESOURCE, CS_STATE, CS_TASK, THREAD,
};
use super::gone::Gone;
use super::polls::{task_stats, Clock, TaskRec, Threads};
use super::resources::Resources;
use crate::model::process::CONSOLE_PRODUCER;

pub use super::emit::{MAX_LIVE, MAX_POLLS_PER_UPDATE};

/// Most events in one frame (well under the wire's caps: strings are at
/// most 1 KiB, and a frame's payload at most 1 MiB).
const FRAME_EVENTS: usize = 512;

/// The version of console's protocol this mapping reads.
pub const CONSOLE_API: &str = "console-api 0.9";

/// Callsite id of the update marker (the others are [`super::emit`]'s).
const CS_UPDATE: u32 = 6;

/// Turns console's updates of one program into awaitscope frames.
#[derive(Debug)]
pub struct Mapper {
    url: String,
    key: Option<ProcessKey>,
    seq: u64,
    next_span: u64,
    tasks: HashMap<u64, TaskRec>,
    /// Tasks that closed: console sends them again (see [`Gone`]).
    gone: Gone,
    threads: Threads,
    res: Resources,
    /// Names of each metadata's fields (console's fields may name theirs
    /// by index).
    field_names: HashMap<u64, Vec<String>>,
    /// `now` of the previous update (unix ns).
    prev_now: u64,
    dropped: u64,
    dropped_sent: u64,
    /// Updates mapped, and tasks console named in them (new ones, live or
    /// closed): see [`Mapper::silent_updates`].
    updates: u64,
    tasks_named: u64,
}

impl Mapper {
    /// A mapper for the program at `url` (named in its `Hello`).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            key: None,
            seq: 0,
            next_span: 1,
            tasks: HashMap::new(),
            gone: Gone::default(),
            threads: Threads::default(),
            res: Resources::default(),
            field_names: HashMap::new(),
            prev_now: 0,
            dropped: 0,
            dropped_sent: 0,
            updates: 0,
            tasks_named: 0,
        }
    }

    /// How many updates came with no task named in any of them: console
    /// has seen no task of the program yet (`None` once one was named).
    /// console-subscriber says nothing when no task span reaches it (see
    /// [`super::client::ConsoleError::NoTasks`]).
    pub fn silent_updates(&self) -> Option<u64> {
        (self.tasks_named == 0).then_some(self.updates)
    }

    /// The process the frames are about, once the first update came.
    pub fn key(&self) -> Option<ProcessKey> {
        self.key
    }

    /// Live tasks known.
    pub fn live_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Whether `u`, the first update of a new connection, is of the same
    /// program as the updates before: console sends every live task again
    /// to a new subscriber, with the ids and creation times it had, and the
    /// closed ones it retains (an hour by default). A program restarted on
    /// the same address numbers its tasks from 1 again, created at other
    /// times. With no task known, live or closed, nothing tells: the same.
    pub fn same_program(&self, u: &Update) -> bool {
        if self.tasks.is_empty() && self.gone.is_empty() {
            return self.key.is_some();
        }
        let Some(tu) = u.task_update.as_ref() else {
            return false;
        };
        tu.new_tasks.iter().any(|n| {
            let id = id_of(&n.id);
            let Some(created) = tu
                .stats_update
                .get(&id)
                .and_then(|s| s.created_at.as_ref())
                .map(unix_ns)
            else {
                return false;
            };
            self.tasks.get(&id).is_some_and(|t| t.created == created)
                || self.gone.closed(id, created)
        })
    }

    pub(super) fn new_span(&mut self) -> SpanId {
        let id = SpanId(self.next_span);
        self.next_span += 1;
        id
    }

    /// Process-relative time of `unix_ns` (0 before the process's start).
    pub(super) fn rel(&self, unix_ns: u64) -> u64 {
        unix_ns.saturating_sub(self.key.map_or(0, |k| k.start_unix_ns))
    }

    /// The frames for update `u`: the `Hello` first (at the first update),
    /// the events, and the drop counts when console dropped events.
    pub fn update(&mut self, u: &Update) -> Vec<Frame> {
        let now = u.now.as_ref().map_or(0, unix_ns);
        let mut frames = Vec::new();
        let mut pre: Vec<Event> = Vec::new();
        if self.key.is_none() {
            // The clock starts at the earliest time the first update tells:
            // every task and resource alive then was created after it.
            let start = earliest(u).min(now).max(1);
            let key = ProcessKey {
                pid: 0,
                start_unix_ns: start,
            };
            self.key = Some(key);
            self.prev_now = start;
            frames.push(self.frame(Body::Hello(ProcessInfo {
                name: truncated(format!("console {}", host_of(&self.url))),
                cmdline: vec![truncated(self.url.clone())],
                producer_version: format!("{CONSOLE_PRODUCER} ({CONSOLE_API})"),
                tokio_unstable: true,
                reconnect: false,
                token: None,
            })));
            pre.extend(callsites());
        }
        for m in u.new_metadata.iter().flat_map(|m| &m.metadata) {
            if let (Some(id), Some(meta)) = (&m.id, &m.metadata) {
                if self.field_names.len() < MAX_LIVE {
                    self.field_names.insert(id.id, meta.field_names.clone());
                }
            }
        }
        let mut timed: Vec<Timed> = Vec::new();
        self.updates += 1;
        if let Some(tu) = &u.task_update {
            self.tasks_named += tu.new_tasks.len() as u64;
            self.dropped = self.dropped.saturating_add(tu.dropped_events);
            for t in &tu.new_tasks {
                if let Some(e) =
                    self.new_task(t, tu.stats_update.get(&id_of(&t.id)), now, &mut timed)
                {
                    pre.push(e);
                }
            }
        }
        if let Some(ru) = &u.resource_update {
            self.dropped = self.dropped.saturating_add(ru.dropped_events);
        }
        if let Some(au) = &u.async_op_update {
            self.dropped = self.dropped.saturating_add(au.dropped_events);
        }
        // Resources and async ops: created (before anything refers to
        // them), their state, the resource polls, what each task waits on.
        let mut res = std::mem::take(&mut self.res);
        res.new_spans(self, u, &mut pre);
        let task_spans: HashMap<u64, SpanId> =
            self.tasks.iter().map(|(id, t)| (*id, t.span)).collect();
        let mut effects = res.update(self, u, &task_spans, now);
        self.res = res;
        if let Some(tu) = &u.task_update {
            let mut ids: Vec<&u64> = tu.stats_update.keys().collect();
            ids.sort_unstable();
            let clock = Clock {
                start: self.key.map_or(0, |k| k.start_unix_ns),
                now,
                prev_now: self.prev_now,
            };
            for id in ids {
                let s = &tu.stats_update[id];
                let ops = effects.ops_of(*id);
                let tree = effects.tree_of(*id);
                let Some(rec) = self.tasks.get_mut(id) else {
                    continue;
                };
                if let Some(close) =
                    task_stats(rec, &mut self.threads, s, clock, tree, ops, &mut timed)
                {
                    let created = rec.created;
                    self.tasks.remove(id);
                    self.gone.remember(*id, created, ());
                    timed.push(close);
                }
            }
        }
        timed.extend(effects.leftover(now));
        timed.extend(effects.rest);
        timed.sort_by_key(|t| t.at);
        // The update itself: the process's clock reaches its time, so that
        // what is still going on is judged up to there.
        let at = self.rel(now);
        timed.push(Timed::on(
            THREAD,
            now,
            Event::Log(Box::new(awaitscope_wire::Log {
                callsite: CS_UPDATE,
                span: None,
                task: None,
                ts: at,
                fields: Vec::new(),
                trace: Vec::new(),
            })),
        ));
        self.prev_now = self.prev_now.max(now);
        // Spans created first (as a producer that reconnects sends them:
        // before the thread's events), then the thread's events.
        // A frame per run of one thread (each opened by its `Thread`), so
        // that the model applies them in this order: they are in time order
        // already (the model's merge of a batch's threads is for producers
        // that drain their threads one after the other). The spans created
        // go first.
        let mut runs: Vec<Vec<Event>> = Vec::new();
        let mut cur = pre;
        let mut thread = None;
        for t in timed {
            if thread != Some(t.thread) || cur.len() >= FRAME_EVENTS {
                if thread.is_some() {
                    runs.push(std::mem::take(&mut cur));
                }
                thread = Some(t.thread);
                cur.push(Event::Thread {
                    id: t.thread,
                    name: Some(if t.thread == THREAD {
                        "console".into()
                    } else {
                        format!("console poll {}", t.thread)
                    }),
                });
            }
            cur.push(t.event);
        }
        runs.push(cur);
        for run in runs {
            for chunk in run.chunks(FRAME_EVENTS) {
                frames.push(self.frame(Body::Events(chunk.to_vec())));
            }
        }
        if self.dropped != self.dropped_sent {
            self.dropped_sent = self.dropped;
            frames.push(self.frame(Body::Dropped(DropCounts {
                buffer_full: self.dropped,
                ..DropCounts::default()
            })));
        }
        frames
    }

    /// The last frame, when the recording or stream ends cleanly.
    pub fn goodbye(&mut self) -> Option<Frame> {
        self.key?;
        Some(self.frame(Body::Goodbye))
    }

    fn frame(&mut self, body: Body) -> Frame {
        let seq = self.seq;
        self.seq += 1;
        Frame {
            process: self.key.unwrap_or(ProcessKey {
                pid: 0,
                start_unix_ns: 1,
            }),
            seq,
            body,
        }
    }

    /// A task spawned: its span, with tokio's fields.
    fn new_task(
        &mut self,
        t: &tasks::Task,
        stats: Option<&tasks::Stats>,
        now: u64,
        begun: &mut Vec<Timed>,
    ) -> Option<Event> {
        let id = id_of(&t.id);
        let created = stats
            .and_then(|s| s.created_at.as_ref())
            .map_or(now, unix_ns);
        if self.tasks.contains_key(&id) || self.gone.closed(id, created) {
            return None;
        }
        if self.tasks.len() >= MAX_LIVE {
            self.dropped = self.dropped.saturating_add(1);
            return None;
        }
        let meta = t.metadata.as_ref().map_or(0, |m| m.id);
        let names = self.field_names.get(&meta);
        let mut kind = None;
        let mut name = String::new();
        let mut tokio_id = None;
        for f in &t.fields {
            let (Some(n), Some(v)) = (field_name(f, names), &f.value) else {
                continue;
            };
            match n {
                names::KIND => kind = Some(value_str(v)),
                names::TASK_NAME => name = unquote(value_str(v)),
                names::TASK_ID => {
                    if let field::Value::U64Val(x) = v {
                        tokio_id = Some(*x);
                    }
                }
                _ => {}
            }
        }
        let kind = kind.unwrap_or_else(|| {
            if t.kind == tasks::task::Kind::Blocking as i32 {
                names::KIND_BLOCKING.into()
            } else {
                names::KIND_TASK.into()
            }
        });
        let blocking = kind == names::KIND_BLOCKING;
        let span = self.new_span();
        let mut fields = vec![
            Field {
                index: 0,
                value: Value::Str(truncated(kind)),
            },
            Field {
                index: 1,
                value: Value::Str(truncated(name)),
            },
            Field {
                index: 2,
                value: Value::U64(tokio_id.unwrap_or(id)),
            },
        ];
        fields.extend(loc_fields(t.location.as_ref(), 3));
        let rec = if blocking {
            let start = self.key.map_or(0, |k| k.start_unix_ns);
            TaskRec::new_blocking(span, created, &mut self.threads, start, begun)
        } else {
            TaskRec::new(span, created)
        };
        self.tasks.insert(id, rec);
        Some(Event::SpanNew(Box::new(SpanNew {
            id: span,
            callsite: CS_TASK,
            parent: None,
            ctx_task: None,
            ctx_span: None,
            ts: self.rel(created),
            fields,
        })))
    }

    /// The await tree last sent for console task `id`.
    pub(super) fn sent_tree(&self, id: u64) -> Option<&[SpanId]> {
        self.tasks.get(&id).map(|t| t.tree.as_slice())
    }
}

impl Spans for Mapper {
    fn new_span(&mut self) -> SpanId {
        Mapper::new_span(self)
    }

    fn rel(&self, unix_ns: u64) -> u64 {
        Mapper::rel(self, unix_ns)
    }

    fn sent_tree(&self, id: u64) -> Option<&[SpanId]> {
        Mapper::sent_tree(self, id)
    }
}

/// The callsites of the made-up process: tokio's task, resource and async
/// op spans, its resource events, and the update marker.
fn callsites() -> Vec<Event> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cs = |id, name: &str, target: &str, level, kind, fields| {
        Event::Callsite(Box::new(Callsite {
            id,
            name: name.into(),
            target: target.into(),
            level,
            file: None,
            line: None,
            kind,
            fields,
        }))
    };
    vec![
        cs(
            CS_TASK,
            names::SPAWN_SPAN,
            "tokio::task",
            Level::Trace,
            CallsiteKind::Span(SpanClass::Task),
            s(&[
                names::KIND,
                names::TASK_NAME,
                names::TASK_ID,
                names::LOC_FILE,
                names::LOC_LINE,
                names::LOC_COL,
            ]),
        ),
        cs(
            CS_RESOURCE,
            names::RESOURCE_SPAN,
            "tokio::sync",
            Level::Trace,
            CallsiteKind::Span(SpanClass::Resource),
            s(&[
                names::CONCRETE_TYPE,
                names::KIND,
                names::IS_INTERNAL,
                names::LOC_FILE,
                names::LOC_LINE,
                names::LOC_COL,
            ]),
        ),
        cs(
            CS_ASYNC_OP,
            names::ASYNC_OP_SPAN,
            "tokio::sync",
            Level::Trace,
            CallsiteKind::Span(SpanClass::AsyncOp),
            s(&[names::SOURCE]),
        ),
        cs(
            CS_POLL_OP,
            "runtime.resource.poll_op",
            names::TOKIO_POLL_OP_TARGET,
            Level::Trace,
            CallsiteKind::Event(EventClass::PollOp),
            s(&[names::OP_NAME, names::IS_READY]),
        ),
        cs(
            CS_STATE,
            "runtime.resource.state_update",
            names::TOKIO_STATE_UPDATE_TARGETS[0],
            Level::Trace,
            CallsiteKind::Event(EventClass::StateUpdate),
            s(&[names::LOCKED, names::WRITE_LOCKED]),
        ),
        cs(
            CS_UPDATE,
            "console update",
            "awaitscope::console",
            Level::Trace,
            CallsiteKind::Event(EventClass::User),
            Vec::new(),
        ),
    ]
}

/// The earliest creation time an update tells (unix ns), `u64::MAX` if none.
fn earliest(u: &Update) -> u64 {
    let tasks = u
        .task_update
        .iter()
        .flat_map(|t| t.stats_update.values())
        .filter_map(|s| s.created_at.as_ref());
    let res = u
        .resource_update
        .iter()
        .flat_map(|r| r.stats_update.values())
        .filter_map(|s| s.created_at.as_ref());
    let ops = u
        .async_op_update
        .iter()
        .flat_map(|a| a.stats_update.values())
        .filter_map(|s| s.created_at.as_ref());
    tasks
        .chain(res)
        .chain(ops)
        .map(unix_ns)
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(u64::MAX)
}

/// `host:port` of a URL (the URL itself when it has no scheme).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}
