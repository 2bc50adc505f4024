//! Console's updates as awaitscope wire events.
//!
//! One [`Mapper`] per program: it keeps what console sent before (each
//! task's statistics at the last update, the resources and async ops still
//! live) and turns each new [`Update`] into frames of one made-up process
//! (a `Hello` naming [`CONSOLE_PRODUCER`] first). Everything happens on one
//! made-up thread, in time order.
//!
//! What the events say, and what they do not:
//!
//! * **Polls.** Between two updates console says how many polls a task
//!   made and how long they took in total, and when its last one started
//!   and ended. The last poll is sent as it was. The others are sent each
//!   with the average time of the others, spread evenly between the
//!   previous update and the last poll: an average is never longer than the
//!   longest poll, so a long poll is never made up (one among many short
//!   ones may be missed). A poll still running at an update is sent when it
//!   has ended.
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
//!   async ops; spans of the program are not in console's data.
//! * **Not sent at all**: the task tree (console gives the spans a task
//!   was spawned in, not the task), causal error traces, ERROR events and
//!   panics, native stacks, who woke whom (only whether it was the task
//!   itself), timer deadlines.

use std::collections::HashMap;

use awaitscope_wire::{
    limits, names, Body, Callsite, CallsiteKind, CloseKind, DropCounts, Event, EventClass, Field,
    Frame, Level, ProcessInfo, ProcessKey, SpanClass, SpanId, SpanNew, Value, WakeOp,
};
use console_api::instrument::Update;
use console_api::{field, tasks, Location};

use super::resources::Resources;
use crate::model::process::CONSOLE_PRODUCER;

/// Most polls sent for one task from one update: a task with more (a busy
/// loop, or a long-lived task at the first update) gets this many, each
/// with the average time of its polls.
pub const MAX_POLLS_PER_UPDATE: u64 = 256;

/// Most tasks, resources and async ops kept at once; beyond it new ones
/// are ignored and counted as dropped events.
pub const MAX_LIVE: usize = 1 << 20;

/// Most events in one frame (well under the wire's caps: strings are at
/// most 1 KiB, and a frame's payload at most 1 MiB).
const FRAME_EVENTS: usize = 512;

/// The version of console's protocol this mapping reads.
pub const CONSOLE_API: &str = "console-api 0.9";

// Callsite ids of the made-up process.
pub(super) const CS_TASK: u32 = 1;
pub(super) const CS_RESOURCE: u32 = 2;
pub(super) const CS_ASYNC_OP: u32 = 3;
pub(super) const CS_POLL_OP: u32 = 4;
pub(super) const CS_STATE: u32 = 5;
const CS_UPDATE: u32 = 6;

/// The one thread everything is sent on.
const THREAD: u32 = 0;

/// What is kept of a task between updates.
#[derive(Debug)]
struct TaskRec {
    span: SpanId,
    /// Polls completed, total busy time (ns), wakes and self-wakes, as of
    /// the last update.
    polls: u64,
    busy_ns: u64,
    wakes: u64,
    self_wakes: u64,
    /// End of the last completed poll sent (unix ns).
    last_end: u64,
    /// Whether any poll was sent (the first poll follows the spawn, not a
    /// wake).
    polled: bool,
    /// The last wake sent (unix ns).
    woken_at: u64,
    /// The await tree last sent.
    tree: Vec<SpanId>,
}

/// An event with the time it is ordered by (unix ns) and its rank among
/// events of the same time (push order).
pub(super) struct Timed {
    pub(super) at: u64,
    pub(super) event: Event,
}

/// Turns console's updates of one program into awaitscope frames.
#[derive(Debug)]
pub struct Mapper {
    url: String,
    key: Option<ProcessKey>,
    seq: u64,
    next_span: u64,
    tasks: HashMap<u64, TaskRec>,
    res: Resources,
    /// Names of each metadata's fields (console's fields may name theirs
    /// by index).
    field_names: HashMap<u64, Vec<String>>,
    /// `now` of the previous update (unix ns).
    prev_now: u64,
    dropped: u64,
    dropped_sent: u64,
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
            res: Resources::default(),
            field_names: HashMap::new(),
            prev_now: 0,
            dropped: 0,
            dropped_sent: 0,
        }
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
    /// to a new subscriber, with the ids it had. A program that restarted
    /// on the same address has none of the tasks known here.
    pub fn same_program(&self, u: &Update) -> bool {
        if self.tasks.is_empty() {
            return self.key.is_some();
        }
        u.task_update.as_ref().is_some_and(|t| {
            t.new_tasks.iter().any(|n| {
                n.id.as_ref()
                    .is_some_and(|id| self.tasks.contains_key(&id.id))
            })
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
        if let Some(tu) = &u.task_update {
            self.dropped = self.dropped.saturating_add(tu.dropped_events);
            for t in &tu.new_tasks {
                if let Some(e) = self.new_task(t, tu.stats_update.get(&id_of(&t.id)), now) {
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
            for id in ids {
                let s = &tu.stats_update[id];
                let ops = effects.ops_of(*id);
                let tree = effects.tree_of(*id);
                self.task_stats(*id, s, now, tree, ops, &mut timed);
            }
        }
        timed.extend(effects.leftover(now));
        timed.extend(effects.rest);
        timed.sort_by_key(|t| t.at);
        // The update itself: the process's clock reaches its time, so that
        // what is still going on is judged up to there.
        let at = self.rel(now);
        timed.push(Timed {
            at: now,
            event: Event::Log(Box::new(awaitscope_wire::Log {
                callsite: CS_UPDATE,
                span: None,
                task: None,
                ts: at,
                fields: Vec::new(),
                trace: Vec::new(),
            })),
        });
        self.prev_now = self.prev_now.max(now);
        // Spans created first (as a producer that reconnects sends them:
        // before the thread's events), then the thread's events.
        let mut events = pre;
        events.push(Event::Thread {
            id: THREAD,
            name: Some("console".into()),
        });
        events.extend(timed.into_iter().map(|t| t.event));
        for chunk in events.chunks(FRAME_EVENTS) {
            frames.push(self.frame(Body::Events(chunk.to_vec())));
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
    ) -> Option<Event> {
        let id = id_of(&t.id);
        if self.tasks.contains_key(&id) {
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
        let created = stats
            .and_then(|s| s.created_at.as_ref())
            .map_or(now, unix_ns);
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
        self.tasks.insert(
            id,
            TaskRec {
                span,
                polls: 0,
                busy_ns: 0,
                wakes: 0,
                self_wakes: 0,
                last_end: created,
                polled: false,
                woken_at: 0,
                tree: Vec::new(),
            },
        );
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

    /// A task's statistics: the polls and wakes since the last update, its
    /// await tree (`tree`, when it changed), the resource polls in them
    /// (`ops`, sent inside its last poll) and its end.
    fn task_stats(
        &mut self,
        id: u64,
        s: &tasks::Stats,
        now: u64,
        tree: Option<Vec<awaitscope_wire::TreeNode>>,
        ops: Vec<Event>,
        out: &mut Vec<Timed>,
    ) {
        let start_ns = self.key.map_or(0, |k| k.start_unix_ns);
        let prev_now = self.prev_now;
        let Some(rec) = self.tasks.get_mut(&id) else {
            return;
        };
        let ps = s.poll_stats.clone().unwrap_or_default();
        let started = ps.last_poll_started.as_ref().map(unix_ns);
        let ended = ps.last_poll_ended.as_ref().map(unix_ns);
        // A poll running now: started after the last one ended.
        let running = match (started, ended) {
            (Some(s), Some(e)) => s > e,
            (Some(_), None) => true,
            _ => false,
        };
        let done = ps.polls.saturating_sub(u64::from(running));
        let busy = ps.busy_time.as_ref().map_or(0, duration_ns);
        let new_polls = done.saturating_sub(rec.polls);
        let new_busy = busy.saturating_sub(rec.busy_ns);
        // Polls: (start, duration), oldest first, unix ns.
        let mut polls: Vec<(u64, u64)> = Vec::new();
        let mut exact = None;
        if new_polls > 0 && !running {
            if let (Some(st), Some(en)) = (started, ended) {
                if en > rec.last_end || !rec.polled {
                    exact = Some((st, en.saturating_sub(st)));
                }
            }
        }
        let others = new_polls - u64::from(exact.is_some());
        if others > 0 {
            let rest = new_busy.saturating_sub(exact.map_or(0, |e| e.1));
            let avg = rest / others;
            let from = rec.last_end.max(prev_now.min(now)).max(start_ns);
            let to = exact
                .map(|e| e.0)
                .or(started.filter(|_| running))
                .unwrap_or(now)
                .max(from);
            let n = others.min(MAX_POLLS_PER_UPDATE);
            let slot = (to - from) / n;
            let dur = avg.min(slot);
            for i in 0..n {
                polls.push((from + i * slot, dur));
            }
        }
        polls.extend(exact);
        // Wakes: one right before each poll but a first one, self-wakes in
        // console's proportion; then a wake after the last poll.
        let new_wakes = s.wakes.saturating_sub(rec.wakes);
        let new_self = s.self_wakes.saturating_sub(rec.self_wakes).min(new_wakes);
        let last_wake = s.last_wake.as_ref().map(unix_ns);
        let end_of_polls = polls.last().map(|&(st, d)| st + d).unwrap_or(rec.last_end);
        let woken_after = !running
            && new_wakes > 0
            && last_wake.is_some_and(|w| w > end_of_polls && w > rec.woken_at);
        let mut budget = new_wakes - u64::from(woken_after);
        let per_poll = polls.len() as u64 - u64::from(!rec.polled && !polls.is_empty());
        let sent_wakes = budget.min(per_poll);
        let mut self_left = if new_wakes == 0 {
            0
        } else {
            sent_wakes * new_self / new_wakes
        };
        let clones = s.waker_clones;
        let drops = s.waker_drops;
        let wakers = if drops > clones {
            1
        } else {
            u32::try_from(clones - drops).unwrap_or(u32::MAX)
        };
        let last = polls.len().saturating_sub(1);
        for (i, &(st, d)) in polls.iter().enumerate() {
            if rec.polled && budget > 0 {
                budget -= 1;
                let by = (self_left > 0).then(|| {
                    self_left -= 1;
                    rec.span
                });
                out.push(Timed {
                    at: st,
                    event: Event::Wake {
                        task: rec.span,
                        op: WakeOp::WakeByRef,
                        by,
                        ts: st.saturating_sub(start_ns),
                    },
                });
            }
            rec.polled = true;
            if i == last {
                if let Some(tree) = &tree {
                    out.push(Timed {
                        at: st,
                        event: Event::PollTree {
                            task: rec.span,
                            spans: tree.clone(),
                        },
                    });
                }
                for e in &ops {
                    let mut e = e.clone();
                    if let Event::Log(l) = &mut e {
                        // Within the poll: console does not say when.
                        l.ts = st.saturating_sub(start_ns);
                    }
                    out.push(Timed { at: st, event: e });
                }
            }
            out.push(Timed {
                at: st,
                event: Event::Poll {
                    task: rec.span,
                    start: st.saturating_sub(start_ns),
                    duration: d,
                    // Earlier polls were followed by another: their wakers
                    // are not known, and were not lost.
                    wakers: if i == last { wakers } else { wakers.max(1) },
                },
            });
        }
        if polls.is_empty() && !ops.is_empty() {
            // Resource polls of a poll still running, or of polls console
            // has not counted yet: their own time is not known.
            for e in ops {
                out.push(Timed { at: now, event: e });
            }
        }
        if let Some(tree) = tree.filter(|_| !polls.is_empty()) {
            // Sent with the last poll; one that came without a poll (never,
            // console counts the poll that polled the resource) waits for
            // the next.
            rec.tree = tree.iter().map(|n| n.span).collect();
        }
        if let (true, Some(w)) = (woken_after, last_wake) {
            rec.woken_at = w;
            out.push(Timed {
                at: w,
                event: Event::Wake {
                    task: rec.span,
                    op: WakeOp::WakeByRef,
                    by: None,
                    ts: w.saturating_sub(start_ns),
                },
            });
        }
        rec.polls = done;
        rec.busy_ns = busy;
        rec.wakes = s.wakes;
        rec.self_wakes = s.self_wakes;
        if let Some(&(st, d)) = polls.last() {
            rec.last_end = st + d;
        }
        if let Some(dropped) = s.dropped_at.as_ref().map(unix_ns) {
            let span = rec.span;
            self.tasks.remove(&id);
            out.push(Timed {
                at: dropped.max(end_of_polls),
                event: Event::Close {
                    span,
                    // Console does not tell a task that completed from one
                    // that was aborted.
                    kind: CloseKind::Completed,
                    ts: dropped.max(end_of_polls).saturating_sub(start_ns),
                },
            });
        }
    }

    /// The await tree last sent for console task `id`.
    pub(super) fn sent_tree(&self, id: u64) -> Option<&[SpanId]> {
        self.tasks.get(&id).map(|t| t.tree.as_slice())
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

/// `loc.file`, `loc.line`, `loc.col` of `loc`, at field indexes from `first`.
pub(super) fn loc_fields(loc: Option<&Location>, first: u16) -> Vec<Field> {
    let Some(loc) = loc else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(f) = &loc.file {
        out.push(Field {
            index: first,
            value: Value::Str(truncated(awaitscope_wire::paths::display(f).into_owned())),
        });
        if let Some(l) = loc.line {
            out.push(Field {
                index: first + 1,
                value: Value::U64(u64::from(l)),
            });
        }
        if let Some(c) = loc.column {
            out.push(Field {
                index: first + 2,
                value: Value::U64(u64::from(c)),
            });
        }
    }
    out
}

/// The name of console field `f` (given, or by index into its metadata's
/// field names).
pub(super) fn field_name<'a>(
    f: &'a console_api::Field,
    names: Option<&'a Vec<String>>,
) -> Option<&'a str> {
    match f.name.as_ref()? {
        field::Name::StrName(s) => Some(s),
        field::Name::NameIdx(i) => names?.get(usize::try_from(*i).ok()?).map(String::as_str),
    }
}

/// A console field value as a string (the value of a string, else its
/// rendering).
pub(super) fn value_str(v: &field::Value) -> String {
    match v {
        field::Value::DebugVal(s) | field::Value::StrVal(s) => s.clone(),
        field::Value::U64Val(x) => x.to_string(),
        field::Value::I64Val(x) => x.to_string(),
        field::Value::BoolVal(b) => b.to_string(),
    }
}

/// `"name"` (a `Debug` rendering of a string) without its quotes.
fn unquote(s: String) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].to_string()
    } else {
        s
    }
}

/// `s` within the wire's string cap.
pub(super) fn truncated(mut s: String) -> String {
    limits::truncate(&mut s);
    s
}

/// The id in an optional console id (0 when absent).
pub(super) fn id_of(id: &Option<console_api::Id>) -> u64 {
    id.as_ref().map_or(0, |i| i.id)
}

/// A protobuf timestamp as ns since the Unix epoch (0 before it).
pub(super) fn unix_ns(t: &prost_types::Timestamp) -> u64 {
    let s = u64::try_from(t.seconds).unwrap_or(0);
    let n = u64::try_from(t.nanos).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(n)
}

/// A protobuf duration in ns (0 when negative).
pub(super) fn duration_ns(d: &prost_types::Duration) -> u64 {
    let s = u64::try_from(d.seconds).unwrap_or(0);
    let n = u64::try_from(d.nanos).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(n)
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
