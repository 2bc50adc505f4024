//! Builders of realistic synthetic wire streams, for tests and benchmarks
//! (the capture layer's output shape: callsites, task spawns, polls, wakes,
//! a tokio-like Mutex resource with async ops, user spans and events).
//!
//! [`StreamBuilder`] produces frames and bytes; [`Scenario`] applies what it
//! builds to a [`Model`] as it goes.

use std::collections::{HashMap, HashSet};

use awaitscope_wire::{
    names, Body, Callsite, CallsiteKind, CloseKind, DropCounts, Event, EventClass, Field, Frame,
    FrameOrigin, Level, NativeFrame, ProcessInfo, ProcessKey, SpanClass, SpanId, StackState, Stall,
    TreeNode, Value, WakeOp,
};

use crate::Model;

/// Options of a spawned task.
#[derive(Clone, Debug, Default)]
pub struct TaskOpts {
    /// `task.name` (empty when `None`).
    pub name: Option<String>,
    /// `kind` (default `task`).
    pub kind: Option<String>,
    /// Spawn location line (file is `src/main.rs`).
    pub line: u32,
}

impl TaskOpts {
    /// A named task.
    pub fn named(name: &str) -> Self {
        Self {
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// A `spawn_blocking` task.
    pub fn blocking() -> Self {
        Self::kind(names::KIND_BLOCKING)
    }

    /// A task of the given `kind`.
    pub fn kind(kind: &str) -> Self {
        Self {
            kind: Some(kind.into()),
            ..Self::default()
        }
    }
}

const CS_TASK: u32 = 1;
const CS_RESOURCE: u32 = 2;
const CS_ASYNC_OP: u32 = 3;
const CS_ASYNC_OP_POLL: u32 = 4;
const CS_POLL_OP: u32 = 5;
const CS_STATE_MUTEX: u32 = 6;
const CS_ERROR: u32 = 7;
const CS_WARN: u32 = 8;
const CS_JOIN: u32 = 9;
const CS_STATE_TIMER: u32 = 10;
const CS_USER_BASE: u32 = 100;

/// Builds a wire stream of one producer process.
#[derive(Debug)]
pub struct StreamBuilder {
    key: ProcessKey,
    seq: u64,
    events: Vec<Event>,
    frames: Vec<Frame>,
    next_span: u64,
    registered: Vec<u32>,
    user_callsites: HashMap<String, u32>,
    /// Async ops in progress per (task, resource).
    ops: HashMap<(SpanId, SpanId), SpanId>,
    thread: Option<u32>,
    tasks: HashSet<SpanId>,
    /// The poll in progress: task, spans entered so far, current depth.
    poll: Option<(SpanId, Vec<TreeNode>, u16)>,
    /// Last await tree sent per task.
    trees: HashMap<SpanId, Vec<TreeNode>>,
}

impl StreamBuilder {
    /// A stream of process `pid` started at Unix time `start_unix_ns`.
    pub fn new(pid: u32, start_unix_ns: u64) -> Self {
        Self {
            key: ProcessKey { pid, start_unix_ns },
            seq: 0,
            events: Vec::new(),
            frames: Vec::new(),
            next_span: 1,
            registered: Vec::new(),
            user_callsites: HashMap::new(),
            ops: HashMap::new(),
            thread: None,
            tasks: HashSet::new(),
            poll: None,
            trees: HashMap::new(),
        }
    }

    /// The process key.
    pub fn key(&self) -> ProcessKey {
        self.key
    }

    fn frame(&mut self, body: Body) -> Frame {
        let f = Frame {
            process: self.key,
            seq: self.seq,
            body,
        };
        self.seq += 1;
        f
    }

    /// Queues a `Hello` frame (flushing pending events first).
    pub fn hello(&mut self, name: &str, token: Option<&str>, reconnect: bool) -> &mut Self {
        self.flush();
        let f = self.frame(Body::Hello(ProcessInfo {
            name: name.into(),
            cmdline: vec![name.into(), "--flag".into()],
            producer_version: "0.1.0".into(),
            tokio_unstable: true,
            reconnect,
            token: token.map(str::to_string),
        }));
        self.frames.push(f);
        if reconnect {
            self.registered.clear();
            self.thread = None;
            self.trees.clear();
        }
        self
    }

    /// Queues a `Dropped` frame.
    pub fn dropped(&mut self, d: DropCounts) -> &mut Self {
        self.flush();
        let f = self.frame(Body::Dropped(d));
        self.frames.push(f);
        self
    }

    /// Queues a `Goodbye` frame.
    pub fn goodbye(&mut self) -> &mut Self {
        self.flush();
        let f = self.frame(Body::Goodbye);
        self.frames.push(f);
        self
    }

    /// Turns pending events into an `Events` frame.
    pub fn flush(&mut self) -> &mut Self {
        if !self.events.is_empty() {
            let ev = std::mem::take(&mut self.events);
            let f = self.frame(Body::Events(ev));
            self.frames.push(f);
        }
        self
    }

    /// Takes the frames built so far (flushing pending events).
    pub fn take_frames(&mut self) -> Vec<Frame> {
        self.flush();
        std::mem::take(&mut self.frames)
    }

    /// Takes the frames built so far, encoded (without preamble).
    pub fn take_bytes(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in self.take_frames() {
            awaitscope_wire::encode_frame(&f, &mut out).expect("frame encodes");
        }
        out
    }

    /// A whole recording: preamble and the frames built so far.
    pub fn recording(&mut self) -> Vec<u8> {
        let mut out = awaitscope_wire::preamble().to_vec();
        out.extend(self.take_bytes());
        out
    }

    /// Number of pending (unflushed) events.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Pushes a raw event.
    pub fn push(&mut self, e: Event) -> &mut Self {
        self.events.push(e);
        if self.events.len() >= 4096 {
            self.flush();
        }
        self
    }

    /// Sets the current thread.
    pub fn thread(&mut self, id: u32) -> &mut Self {
        if self.thread != Some(id) {
            self.thread = Some(id);
            self.push(Event::Thread {
                id,
                name: Some(format!("worker-{id}")),
            });
        }
        self
    }

    fn callsite(&mut self, id: u32) {
        if self.registered.contains(&id) {
            return;
        }
        self.registered.push(id);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (name, target, level, kind, fields, line): (
            &str,
            &str,
            Level,
            CallsiteKind,
            Vec<String>,
            u32,
        ) = match id {
            CS_TASK => (
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
                1,
            ),
            CS_RESOURCE => (
                names::RESOURCE_SPAN,
                "tokio::sync::mutex",
                Level::Trace,
                CallsiteKind::Span(SpanClass::Resource),
                s(&[
                    names::CONCRETE_TYPE,
                    names::KIND,
                    names::LOC_FILE,
                    names::LOC_LINE,
                    names::LOC_COL,
                    names::IS_INTERNAL,
                ]),
                2,
            ),
            CS_ASYNC_OP => (
                names::ASYNC_OP_SPAN,
                "tokio::sync::mutex",
                Level::Trace,
                CallsiteKind::Span(SpanClass::AsyncOp),
                s(&[names::SOURCE, names::INHERITS_CHILD_ATTRS]),
                3,
            ),
            CS_ASYNC_OP_POLL => (
                names::ASYNC_OP_POLL_SPAN,
                "tokio::sync::mutex",
                Level::Trace,
                CallsiteKind::Span(SpanClass::AsyncOpPoll),
                vec![],
                4,
            ),
            CS_POLL_OP => (
                "runtime.resource.poll_op",
                names::TOKIO_POLL_OP_TARGET,
                Level::Trace,
                CallsiteKind::Event(EventClass::PollOp),
                s(&[names::OP_NAME, names::IS_READY]),
                5,
            ),
            CS_STATE_MUTEX => (
                "runtime.resource.state_update",
                names::TOKIO_STATE_UPDATE_TARGETS[0],
                Level::Trace,
                CallsiteKind::Event(EventClass::StateUpdate),
                s(&[names::LOCKED]),
                6,
            ),
            CS_STATE_TIMER => (
                "runtime.resource.state_update",
                names::TOKIO_STATE_UPDATE_TARGETS[0],
                Level::Trace,
                CallsiteKind::Event(EventClass::StateUpdate),
                s(&[
                    crate::model::resource::DURATION,
                    crate::model::resource::DURATION_UNIT,
                ]),
                10,
            ),
            CS_ERROR => (
                "event src/main.rs:70",
                "app",
                Level::Error,
                CallsiteKind::Event(EventClass::User),
                s(&[names::MESSAGE]),
                70,
            ),
            CS_WARN => (
                "event src/main.rs:80",
                "app",
                Level::Warn,
                CallsiteKind::Event(EventClass::User),
                s(&[names::MESSAGE]),
                80,
            ),
            _ => unreachable!("user callsites are registered by user_span"),
        };
        let file = if id >= CS_ERROR {
            "src/main.rs"
        } else {
            "tokio/src/lib.rs"
        };
        self.push(Event::Callsite(Box::new(Callsite {
            id,
            name: name.into(),
            target: target.into(),
            level,
            file: Some(file.into()),
            line: Some(line),
            kind,
            fields,
        })));
    }

    fn new_id(&mut self) -> SpanId {
        let id = SpanId(self.next_span);
        self.next_span += 1;
        id
    }

    /// Spawns a task at `ts` from `parent` (the task being polled, if any).
    pub fn spawn(&mut self, opts: &TaskOpts, parent: Option<SpanId>, ts: u64) -> SpanId {
        self.callsite(CS_TASK);
        let id = self.new_id();
        let f = |i: u16, v: Value| Field { index: i, value: v };
        let fields = vec![
            f(
                0,
                Value::Str(opts.kind.clone().unwrap_or_else(|| names::KIND_TASK.into())),
            ),
            f(1, Value::Str(opts.name.clone().unwrap_or_default())),
            f(2, Value::U64(id.0)),
            f(3, Value::Str("src/main.rs".into())),
            f(
                4,
                Value::U64(if opts.line == 0 { 10 } else { opts.line as u64 }),
            ),
            f(5, Value::U64(5)),
        ];
        self.tasks.insert(id);
        self.push(Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
            id,
            callsite: CS_TASK,
            parent: None,
            ctx_task: parent,
            ctx_span: None,
            ts,
            fields,
        })));
        id
    }

    /// Creates a user span named `name` (one callsite per name).
    pub fn user_span(&mut self, name: &str, parent: Option<SpanId>, ts: u64) -> SpanId {
        self.user_span_with(name, &[], parent, ts)
    }

    /// Creates a user span named `name` with `fields` (one callsite per
    /// name, whose field names are those of the name's first span).
    pub fn user_span_with(
        &mut self,
        name: &str,
        fields: &[(&str, Value)],
        parent: Option<SpanId>,
        ts: u64,
    ) -> SpanId {
        let cs = match self.user_callsites.get(name) {
            Some(c) => *c,
            None => {
                let c = CS_USER_BASE + self.user_callsites.len() as u32;
                self.user_callsites.insert(name.into(), c);
                c
            }
        };
        if !self.registered.contains(&cs) {
            self.registered.push(cs);
            self.push(Event::Callsite(Box::new(Callsite {
                id: cs,
                name: name.into(),
                target: "app".into(),
                level: Level::Info,
                file: Some("src/main.rs".into()),
                line: Some(cs),
                kind: CallsiteKind::Span(SpanClass::User),
                fields: fields.iter().map(|(n, _)| (*n).to_owned()).collect(),
            })));
        }
        let id = self.new_id();
        self.push(Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
            id,
            callsite: cs,
            parent,
            ctx_task: None,
            ctx_span: parent,
            ts,
            fields: fields
                .iter()
                .enumerate()
                .map(|(i, (_, value))| Field {
                    index: i as u16,
                    value: value.clone(),
                })
                .collect(),
        })));
        id
    }

    /// Creates the `runtime.join` span an `awaitscope::JoinHandle` enters
    /// while awaited, naming the awaited task's tokio id (the builder gives
    /// each task its span id as tokio id).
    pub fn join_span(&mut self, awaited: SpanId, ts: u64) -> SpanId {
        if !self.registered.contains(&CS_JOIN) {
            self.registered.push(CS_JOIN);
            self.push(Event::Callsite(Box::new(Callsite {
                id: CS_JOIN,
                name: names::JOIN_SPAN.into(),
                target: names::JOIN_TARGET.into(),
                level: Level::Trace,
                file: Some("instrument/src/spawn.rs".into()),
                line: Some(59),
                kind: CallsiteKind::Span(SpanClass::User),
                fields: vec![names::TASK_ID.into()],
            })));
        }
        let id = self.new_id();
        self.push(Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
            id,
            callsite: CS_JOIN,
            parent: None,
            ctx_task: None,
            ctx_span: None,
            ts,
            fields: vec![Field {
                index: 0,
                value: Value::U64(awaited.0),
            }],
        })));
        id
    }

    /// Creates a resource span (`concrete_type`, `kind`) created at line `line`.
    pub fn resource(&mut self, concrete_type: &str, kind: &str, line: u32, ts: u64) -> SpanId {
        self.callsite(CS_RESOURCE);
        let id = self.new_id();
        let f = |i: u16, v: Value| Field { index: i, value: v };
        self.push(Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
            id,
            callsite: CS_RESOURCE,
            parent: None,
            ctx_task: None,
            ctx_span: None,
            ts,
            fields: vec![
                f(0, Value::Str(concrete_type.into())),
                f(1, Value::Str(kind.into())),
                f(2, Value::Str("src/main.rs".into())),
                f(3, Value::U64(line as u64)),
                f(4, Value::U64(9)),
                f(5, Value::Bool(false)),
            ],
        })));
        id
    }

    /// Enters a span. As the capture layer does, spans entered during a
    /// task's poll are not sent as `Enter`/`Exit` but as the task's
    /// `PollTree`, sent before the task's `Exit` when it changed.
    pub fn enter(&mut self, span: SpanId, ts: u64) -> &mut Self {
        if self.tasks.contains(&span) {
            self.poll = Some((span, Vec::new(), 0));
        } else if let Some((_, tree, depth)) = &mut self.poll {
            tree.push(TreeNode {
                span,
                depth: *depth,
            });
            *depth += 1;
            return self;
        }
        self.push(Event::Enter { span, ts })
    }

    /// Exits a span (see [`StreamBuilder::enter`]).
    pub fn exit(&mut self, span: SpanId, ts: u64) -> &mut Self {
        self.exit_with(span, ts, None)
    }

    fn exit_with(&mut self, span: SpanId, ts: u64, wakers: Option<u32>) -> &mut Self {
        match self.poll.take() {
            Some((task, tree, _)) if task == span => {
                let last = self.trees.get(&task).map_or(&[][..], |t| t.as_slice());
                if last != tree.as_slice() {
                    self.push(Event::PollTree {
                        task,
                        spans: tree.clone(),
                    });
                    self.trees.insert(task, tree);
                }
            }
            Some((task, tree, depth)) => {
                self.poll = Some((task, tree, depth.saturating_sub(1)));
                return self;
            }
            None => {}
        }
        match wakers {
            Some(wakers) => self.push(Event::PollEnd {
                task: span,
                ts,
                wakers,
            }),
            None => self.push(Event::Exit { span, ts }),
        }
    }

    /// Ends a poll of `task` as version-2 producers do: `PollEnd` with the
    /// task's live wakers (instead of the task span's `Exit`).
    pub fn poll_end(&mut self, task: SpanId, ts: u64, wakers: u32) -> &mut Self {
        self.exit_with(task, ts, Some(wakers))
    }

    /// Closes a span.
    pub fn close(&mut self, span: SpanId, kind: CloseKind, ts: u64) -> &mut Self {
        if self.tasks.remove(&span) {
            self.trees.remove(&span);
        }
        self.push(Event::Close { span, kind, ts })
    }

    /// A waker event for `task`.
    pub fn waker(&mut self, task: SpanId, op: WakeOp, by: Option<SpanId>, ts: u64) -> &mut Self {
        self.push(Event::Wake { task, op, by, ts })
    }

    /// A half of a stall (see [`stall`] to make one).
    pub fn stall(&mut self, st: Stall) -> &mut Self {
        self.push(Event::Stall(Box::new(st)))
    }

    /// A poll of `task` from `start` to `end` that the producer saw run
    /// past its stall threshold at `crossing`, as a producer sends it: the
    /// poll's enter, the crossing's half of its stall, the worker's native
    /// stack then (one frame, at `address` in the module at `path`, build
    /// id unknown), the exit, and the half after the poll's end.
    pub fn stalled_poll(
        &mut self,
        task: SpanId,
        [start, crossing, end]: [u64; 3],
        path: &str,
        address: u64,
    ) -> &mut Self {
        let crossed = Stall {
            stack: StackState::Sampled,
            ..stall(task, start, crossing, false)
        };
        self.enter(task, start).stall(crossed);
        self.push(Event::NativeStack(Box::new(awaitscope_wire::NativeStack {
            task,
            start,
            ts: crossing,
            modules: vec![awaitscope_wire::Module {
                path: path.into(),
                build_id: vec![],
            }],
            frames: vec![awaitscope_wire::RawFrame {
                module: Some(0),
                address,
            }],
        })));
        self.exit(task, end)
            .stall(stall(task, start, end + 1, true))
    }

    /// One poll of `task` from `start` to `end`.
    pub fn poll(&mut self, task: SpanId, start: u64, end: u64) -> &mut Self {
        self.enter(task, start).exit(task, end)
    }

    /// One whole poll of `task` from `start` to `end` as version-2 producers
    /// send it when nothing else was recorded on the thread during the poll:
    /// a single [`Event::Poll`] carrying the task's live `wakers` at its end.
    pub fn poll_whole(&mut self, task: SpanId, start: u64, end: u64, wakers: u32) -> &mut Self {
        debug_assert!(self.poll.is_none(), "poll_whole inside another poll");
        self.push(Event::Poll {
            task,
            start,
            duration: end.saturating_sub(start),
            wakers,
        })
    }

    /// The end of a task: the drop of its future (an enter/exit pair) and
    /// the close.
    pub fn finish_task(&mut self, task: SpanId, kind: CloseKind, ts: u64) -> &mut Self {
        self.enter(task, ts)
            .exit(task, ts + 1)
            .close(task, kind, ts + 2)
    }

    /// Within a poll of `task`: polls an acquire of `mutex` (a lock, or any
    /// lock-like resource). `ready`: acquired (state update `locked=true`).
    pub fn lock(&mut self, task: SpanId, mutex: SpanId, ready: bool, ts: u64) -> &mut Self {
        self.async_op(task, mutex, "Mutex::lock", "poll_acquire", ready, ts);
        if ready {
            self.callsite(CS_STATE_MUTEX);
            self.push(Event::Log(Box::new(awaitscope_wire::Log {
                callsite: CS_STATE_MUTEX,
                span: Some(mutex),
                task: Some(task),
                ts,
                fields: vec![Field {
                    index: 0,
                    value: Value::Bool(true),
                }],
                trace: Vec::new(),
            })));
        }
        self
    }

    /// Releases `mutex` (state update `locked=false`) within a poll of `task`.
    pub fn unlock(&mut self, task: SpanId, mutex: SpanId, ts: u64) -> &mut Self {
        self.callsite(CS_STATE_MUTEX);
        self.push(Event::Log(Box::new(awaitscope_wire::Log {
            callsite: CS_STATE_MUTEX,
            span: Some(mutex),
            task: Some(task),
            ts,
            fields: vec![Field {
                index: 0,
                value: Value::Bool(false),
            }],
            trace: Vec::new(),
        })))
    }

    /// Forgets the lock attempt of `task` on `res` (the future was dropped):
    /// the next one is a new async op.
    pub fn abandon(&mut self, task: SpanId, res: SpanId) -> &mut Self {
        if let Some(op) = self.ops.remove(&(task, res)) {
            self.close(op, CloseKind::Span, 0);
        }
        self
    }

    /// Sets `timer`'s deadline `ms` milliseconds after `ts` (tokio's state
    /// update of a `Sleep` made or reset, in a poll of `task`).
    pub fn timer_due(&mut self, task: SpanId, timer: SpanId, ms: u64, ts: u64) -> &mut Self {
        self.callsite(CS_STATE_TIMER);
        self.push(Event::Log(Box::new(awaitscope_wire::Log {
            callsite: CS_STATE_TIMER,
            span: Some(timer),
            task: Some(task),
            ts,
            fields: vec![
                Field {
                    index: 0,
                    value: Value::U64(ms),
                },
                Field {
                    index: 1,
                    value: Value::Str("ms".into()),
                },
            ],
            trace: Vec::new(),
        })))
    }

    /// Within a poll of `task`: polls a sleep on `timer` (not ready).
    pub fn sleep(&mut self, task: SpanId, timer: SpanId, ts: u64) -> &mut Self {
        self.async_op(task, timer, "Sleep::new_timeout", "poll_elapsed", false, ts);
        self
    }

    fn async_op(
        &mut self,
        task: SpanId,
        res: SpanId,
        source: &str,
        op_name: &str,
        ready: bool,
        ts: u64,
    ) {
        self.callsite(CS_ASYNC_OP);
        self.callsite(CS_ASYNC_OP_POLL);
        self.callsite(CS_POLL_OP);
        let op = match self.ops.get(&(task, res)) {
            Some(op) => *op,
            None => {
                let op = self.new_id();
                self.push(Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
                    id: op,
                    callsite: CS_ASYNC_OP,
                    parent: Some(res),
                    ctx_task: Some(task),
                    ctx_span: None,
                    ts,
                    fields: vec![
                        Field {
                            index: 0,
                            value: Value::Str(source.into()),
                        },
                        Field {
                            index: 1,
                            value: Value::Bool(false),
                        },
                    ],
                })));
                self.ops.insert((task, res), op);
                op
            }
        };
        let poll = self.new_id();
        self.push(Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
            id: poll,
            callsite: CS_ASYNC_OP_POLL,
            parent: Some(op),
            ctx_task: Some(task),
            ctx_span: None,
            ts,
            fields: vec![],
        })));
        self.enter(res, ts).enter(op, ts).enter(poll, ts);
        self.push(Event::Log(Box::new(awaitscope_wire::Log {
            callsite: CS_POLL_OP,
            span: Some(poll),
            task: Some(task),
            ts,
            fields: vec![
                Field {
                    index: 0,
                    value: Value::Str(op_name.into()),
                },
                Field {
                    index: 1,
                    value: Value::Bool(ready),
                },
            ],
            trace: Vec::new(),
        })));
        self.exit(poll, ts).exit(op, ts).exit(res, ts);
        self.close(poll, CloseKind::Span, ts);
        if ready {
            self.ops.remove(&(task, res));
            self.close(op, CloseKind::Span, ts);
        }
    }

    /// A user event at `level` (WARN or ERROR) in `task`, within `span`.
    pub fn event(
        &mut self,
        level: Level,
        task: Option<SpanId>,
        span: Option<SpanId>,
        msg: &str,
        ts: u64,
    ) -> &mut Self {
        let cs = if level == Level::Error {
            CS_ERROR
        } else {
            CS_WARN
        };
        self.callsite(cs);
        self.push(Event::Log(Box::new(awaitscope_wire::Log {
            callsite: cs,
            span,
            task,
            ts,
            fields: vec![Field {
                index: 0,
                value: Value::Str(msg.into()),
            }],
            trace: Vec::new(),
        })))
    }

    /// An ERROR event in `task`, within `span`, carrying the producer's
    /// causal trace `trace` (innermost first).
    pub fn error_traced(
        &mut self,
        task: Option<SpanId>,
        span: Option<SpanId>,
        msg: &str,
        trace: &[&str],
        ts: u64,
    ) -> &mut Self {
        self.callsite(CS_ERROR);
        self.push(Event::Log(Box::new(awaitscope_wire::Log {
            callsite: CS_ERROR,
            span,
            task,
            ts,
            fields: vec![Field {
                index: 0,
                value: Value::Str(msg.into()),
            }],
            trace: trace.iter().map(|l| l.to_string()).collect(),
        })))
    }

    /// A context sent to another process (`Context::traceparent`) from
    /// `span` in `task`, with its causal trace.
    pub fn handover(
        &mut self,
        span: SpanId,
        task: SpanId,
        ids: ([u8; 16], [u8; 8]),
        trace: &[&str],
        ts: u64,
    ) -> &mut Self {
        self.push(Event::Handover(Box::new(awaitscope_wire::Handover {
            span: Some(span),
            task: Some(task),
            trace_id: ids.0,
            span_id: ids.1,
            ts,
            trace: trace.iter().map(|l| l.to_string()).collect(),
        })))
    }

    /// A panic in `task` at `src/main.rs:42`.
    pub fn panic(&mut self, task: Option<SpanId>, msg: &str, ts: u64) -> &mut Self {
        self.push(Event::Panic(Box::new(awaitscope_wire::Panic {
            task,
            span: None,
            message: msg.into(),
            file: Some("src/main.rs".into()),
            line: Some(42),
            ts,
            trace: Vec::new(),
        })))
    }
}

/// A [`StreamBuilder`] whose output is applied to a [`Model`] as it goes:
/// the easy way to test detectors on synthetic event streams.
pub struct Scenario {
    /// The builder.
    pub b: StreamBuilder,
    model: Model,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    /// A scenario with the default configuration; the process (pid 1)
    /// starts at Unix time 0 and has said hello.
    pub fn new() -> Self {
        Self::with_model(Model::default())
    }

    /// A scenario applying to `model`.
    pub fn with_model(model: Model) -> Self {
        let mut s = Self {
            b: StreamBuilder::new(1, 0),
            model,
        };
        s.b.hello("app", None, false);
        s.b.thread(0);
        s.sync();
        s
    }

    fn sync(&mut self) {
        for f in self.b.take_frames() {
            self.model.apply(&f);
        }
    }

    /// The process key.
    pub fn key(&self) -> ProcessKey {
        self.b.key()
    }

    /// The model.
    pub fn model(&mut self) -> &Model {
        self.sync();
        &self.model
    }

    /// The model, mutably.
    pub fn model_mut(&mut self) -> &mut Model {
        self.sync();
        &mut self.model
    }

    /// Ends the input (commits last polls, scans) and returns the model.
    pub fn finish(mut self) -> Model {
        self.sync();
        self.model.finish();
        self.model
    }

    /// Spawns a top-level task.
    pub fn spawn(&mut self, opts: TaskOpts, ts: u64) -> SpanId {
        let id = self.b.spawn(&opts, None, ts);
        self.sync();
        id
    }

    /// Spawns a task from `parent`.
    pub fn spawn_child(&mut self, opts: TaskOpts, parent: SpanId, ts: u64) -> SpanId {
        let id = self.b.spawn(&opts, Some(parent), ts);
        self.sync();
        id
    }

    /// A user span.
    pub fn user_span(&mut self, name: &str, ts: u64) -> SpanId {
        let id = self.b.user_span(name, None, ts);
        self.sync();
        id
    }

    /// A user span with fields (see [`StreamBuilder::user_span_with`]).
    pub fn user_span_with(&mut self, name: &str, fields: &[(&str, Value)], ts: u64) -> SpanId {
        let id = self.b.user_span_with(name, fields, None, ts);
        self.sync();
        id
    }

    /// A Mutex resource (created at `src/main.rs:20`).
    pub fn mutex(&mut self, ts: u64) -> SpanId {
        let id = self.b.resource("Mutex", "Sync", 20, ts);
        self.sync();
        id
    }

    /// A Sleep resource (created at `src/main.rs:30`).
    pub fn timer(&mut self, ts: u64) -> SpanId {
        let id = self.b.resource("Sleep", "timer", 30, ts);
        self.sync();
        id
    }

    /// A whole poll.
    pub fn poll(&mut self, t: SpanId, start: u64, end: u64) {
        self.b.poll(t, start, end);
        self.sync();
    }

    /// Polls a task once, ending the poll as version-2 producers do (with
    /// the task's live wakers).
    pub fn poll_v2(&mut self, t: SpanId, start: u64, end: u64, wakers: u32) {
        self.b.enter(t, start).poll_end(t, end, wakers);
        self.sync();
    }

    /// Starts a poll.
    pub fn begin_poll(&mut self, t: SpanId, ts: u64) {
        self.b.enter(t, ts);
        self.sync();
    }

    /// Ends a poll.
    pub fn end_poll(&mut self, t: SpanId, ts: u64) {
        self.b.exit(t, ts);
        self.sync();
    }

    /// Enters a span.
    pub fn enter(&mut self, s: SpanId, ts: u64) {
        self.b.enter(s, ts);
        self.sync();
    }

    /// Exits a span.
    pub fn exit(&mut self, s: SpanId, ts: u64) {
        self.b.exit(s, ts);
        self.sync();
    }

    /// The events that follow happen on producer thread `id` (thread 0
    /// until then).
    pub fn thread(&mut self, id: u32) {
        self.b.thread(id);
        self.sync();
    }

    /// Polls a lock acquire (within a poll).
    pub fn lock(&mut self, t: SpanId, m: SpanId, ready: bool, ts: u64) {
        self.b.lock(t, m, ready, ts);
        self.sync();
    }

    /// Releases a lock.
    pub fn unlock(&mut self, t: SpanId, m: SpanId, ts: u64) {
        self.b.unlock(t, m, ts);
        self.sync();
    }

    /// Drops a lock attempt.
    pub fn lock_abandon(&mut self, t: SpanId, m: SpanId) {
        self.b.abandon(t, m);
        self.sync();
    }

    /// Takes lock `m` in task `t`'s poll and drops the guard at `ts`, as
    /// tokio records it: the lock call's future is gone, and the guard's
    /// drop enters the Mutex's own span for its state change.
    pub fn lock_and_release(&mut self, t: SpanId, m: SpanId, ts: u64) {
        self.lock(t, m, true, ts);
        self.lock_abandon(t, m);
        self.enter(m, ts + 50);
        self.unlock(t, m, ts + 50);
        self.exit(m, ts + 60);
    }

    /// Sets a timer's deadline `ms` after `ts` (within a poll of `t`).
    pub fn timer_due(&mut self, t: SpanId, timer: SpanId, ms: u64, ts: u64) {
        self.b.timer_due(t, timer, ms, ts);
        self.sync();
    }

    /// Polls a sleep (within a poll).
    pub fn sleep(&mut self, t: SpanId, timer: SpanId, ts: u64) {
        self.b.sleep(t, timer, ts);
        self.sync();
    }

    /// A half of a stall (see [`stall`] to make one).
    pub fn stall(&mut self, st: Stall) {
        self.b.stall(st);
        self.sync();
    }

    /// Wakes `t` (by `by`).
    pub fn wake(&mut self, t: SpanId, by: Option<SpanId>, ts: u64) {
        self.b.waker(t, WakeOp::WakeByRef, by, ts);
        self.sync();
    }

    /// Another waker operation on `t`.
    pub fn waker(&mut self, t: SpanId, op: WakeOp, ts: u64) {
        self.b.waker(t, op, None, ts);
        self.sync();
    }

    /// Completes `t` (drop of the future at `ts`, close).
    pub fn complete(&mut self, t: SpanId, ts: u64) {
        self.b.finish_task(t, CloseKind::Completed, ts);
        self.sync();
    }

    /// Completes `t` with a drop of the future from `start` to `end`.
    pub fn complete_with_drop(&mut self, t: SpanId, start: u64, end: u64) {
        self.b
            .enter(t, start)
            .exit(t, end)
            .close(t, CloseKind::Completed, end + 1);
        self.sync();
    }

    /// Closes `t` with `kind` (no drop pair).
    pub fn close(&mut self, t: SpanId, kind: CloseKind, ts: u64) {
        self.b.close(t, kind, ts);
        self.sync();
    }

    /// An ERROR event.
    pub fn error(&mut self, t: SpanId, span: Option<SpanId>, msg: &str, ts: u64) {
        self.b.event(Level::Error, Some(t), span, msg, ts);
        self.sync();
    }

    /// A WARN event.
    pub fn warn(&mut self, t: SpanId, span: Option<SpanId>, msg: &str, ts: u64) {
        self.b.event(Level::Warn, Some(t), span, msg, ts);
        self.sync();
    }

    /// A panic in `t`.
    pub fn panic(&mut self, t: SpanId, msg: &str, ts: u64) {
        self.b.panic(Some(t), msg, ts);
        self.sync();
    }

    /// Producer drop counts.
    pub fn dropped(&mut self, d: DropCounts) {
        self.b.dropped(d);
        self.sync();
    }

    /// The program says goodbye (it ended).
    pub fn goodbye(&mut self) {
        self.b.goodbye();
        self.sync();
    }

    /// Advances the clock to `ts` and scans.
    pub fn tick(&mut self, ts: u64) {
        self.sync();
        self.model.scan_wall(self.b.key().start_unix_ns + ts);
    }
}

/// A half of a stall of `task`'s poll started at `start`, observed at `ts`:
/// the crossing's (`ended: false`, stack [`StackState::Missed`] until set)
/// or the one after the poll's end; no spans, frames or statistics until
/// set.
pub fn stall(task: SpanId, start: u64, ts: u64, ended: bool) -> Stall {
    Stall {
        task,
        start,
        ts,
        ended,
        spans: Vec::new(),
        stack: StackState::Missed,
        frames: Vec::new(),
        sched: None,
    }
}

/// This executable's path, and where its code is loaded (a
/// position-independent executable's first mapping): an address of one of
/// its functions less that is the address in the file, what a producer
/// sends in a [`awaitscope_wire::NativeStack`].
#[cfg(target_os = "linux")]
pub fn this_executable() -> (String, u64) {
    let exe = std::env::current_exe()
        .expect("the test's executable")
        .to_string_lossy()
        .into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let base = maps
        .lines()
        .find(|l| l.ends_with(&exe) && l.split_whitespace().nth(2) == Some("00000000"))
        .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
        .expect("the executable's first mapping");
    (exe, base)
}

/// A native frame of `function` at `file:line`.
pub fn native_frame(function: &str, file: &str, line: u32, origin: FrameOrigin) -> NativeFrame {
    NativeFrame {
        function: function.into(),
        file: Some(file.into()),
        line: Some(line),
        origin,
    }
}
