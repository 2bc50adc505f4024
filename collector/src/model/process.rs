//! A producer process: callsites, threads, spans, tasks and resources, and
//! how events change them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};

use awaitscope_wire::{
    Callsite, CallsiteKind, CloseKind, DropCounts, Event, EventClass, Level, Log, ProcessInfo,
    ProcessKey, SpanClass, SpanId, SpanNew, TreeNode, WakeOp,
};

use super::await_tree::AwaitTree;
use super::hash::FastMap;
use super::resource::Resource;
use super::span::{self, Location, Span};
use super::task::{LogRecord, Task, TaskState, TaskSummary};
use crate::config::Config;
use crate::detect::{self, Findings, Observation, TaskRef};

/// Most callsites kept per process.
const MAX_CALLSITES: usize = 1 << 16;
/// Most threads tracked per process.
const MAX_THREADS: usize = 1 << 12;
/// Deepest span stack tracked per thread.
const MAX_STACK: usize = 256;

/// A span on a thread's stack of entered spans.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entered {
    pub(crate) span: SpanId,
    /// The task whose poll this span was entered in.
    pub(crate) task: Option<SpanId>,
    /// Node of the task's await tree.
    pub(crate) node: Option<u16>,
}

/// A thread of the producer.
#[derive(Clone, Debug, Default)]
pub struct ThreadState {
    /// Name, when sent.
    pub name: Option<String>,
    pub(crate) stack: Vec<Entered>,
}

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
    pub completed: VecDeque<Task>,
    /// Completed tasks no longer kept, summarised by spawn location and name.
    pub summary: FastMap<String, TaskSummary>,
    /// Live resources.
    pub resources: FastMap<SpanId, Resource>,
    /// Wall clock (Unix ns) when the latest live frame arrived, and the
    /// process clock then.
    pub(crate) last_wall: Option<(u64, u64)>,
    pub(crate) cur_thread: u32,
    pub(crate) last_seq: Option<u64>,
    pub(crate) last_scan: u64,
    pub(crate) deadlocks_active: HashSet<String>,
    pub(crate) dropped_reported: (u64, u64),
    /// The group of the task last folded into the summary.
    last_group: Option<LastGroup>,
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
            warn_count: 0,
            error_count: 0,
            notes: Vec::new(),
            callsites: FastMap::default(),
            threads: FastMap::default(),
            spans: FastMap::default(),
            tasks: FastMap::default(),
            completed: VecDeque::new(),
            summary: FastMap::default(),
            resources: FastMap::default(),
            last_wall: None,
            cur_thread: 0,
            last_seq: None,
            last_scan: 0,
            deadlocks_active: HashSet::new(),
            dropped_reported: (0, 0),
            last_group: None,
        }
    }

    /// Process name, from its `Hello`.
    pub fn name(&self) -> &str {
        self.info.as_ref().map_or("?", |i| i.name.as_str())
    }

    /// Adds a note (bounded).
    pub fn note(&mut self, s: String) {
        if self.notes.len() < 64 {
            self.notes.push(s);
        }
    }

    /// A `Hello` arrived.
    pub fn hello(&mut self, info: &ProcessInfo) {
        self.hellos += 1;
        if self.hellos > 1 || info.reconnect {
            // Whatever was entered on the old connection is gone: end polls.
            for th in self.threads.values_mut() {
                th.stack.clear();
            }
            let now = self.now;
            for t in self.tasks.values_mut() {
                if let Some(s) = t.poll_start.take() {
                    t.pending_poll = Some(super::task::PendingPoll { start: s, end: now });
                    t.last_poll_end = Some(now);
                    t.state = TaskState::Idle;
                }
            }
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

    fn bump(&mut self, ts: u64) {
        if ts > self.now {
            self.now = ts;
        }
    }

    /// Class of span callsite `id` (unknown callsites are user spans).
    pub fn span_class(&self, callsite: u32) -> SpanClass {
        match self.callsites.get(&callsite).map(|c| c.kind) {
            Some(CallsiteKind::Span(c)) => c,
            _ => SpanClass::User,
        }
    }

    /// Applies a batch of events.
    ///
    /// A batch holds one run of events per thread (each opened by a
    /// `Thread` event), in order within each thread but not across threads
    /// (the producer drains its per-thread buffers one after the other). The
    /// runs are merged by timestamp, keeping each thread's order, so that a
    /// task spawned on one thread exists before another thread polls it.
    pub fn apply_events(&mut self, events: &[Event], cfg: &Config, findings: &mut Findings) {
        let runs = events
            .iter()
            .filter(|e| matches!(e, Event::Thread { .. }))
            .count();
        let merge = (runs > 1).then(|| Merge::new(events)).flatten();
        let Some(merge) = merge else {
            // One run, or runs already in time order (the merge would take
            // them one after the other): apply in order.
            for chunk in events.chunks(WARM_AHEAD) {
                self.warm(chunk);
                for e in chunk {
                    self.events += 1;
                    self.apply(e, cfg, findings);
                }
            }
            return;
        };
        for (i, e) in merge {
            if let Some(i) = i {
                // Switching runs: the run's thread is current again.
                self.cur_thread = i;
            }
            self.events += 1;
            self.apply(e, cfg, findings);
        }
    }

    /// Brings the tasks that `events` will touch into the cache, all at
    /// once: with thousands of live tasks, each event's task is out of the
    /// cache, and looking the tasks up one after the other in a loop that
    /// does nothing else lets the processor wait for all of them together
    /// rather than for each in turn while applying.
    fn warm(&self, events: &[Event]) {
        if self.tasks.len() < WARM_MIN_TASKS {
            return;
        }
        for e in events {
            let id = match e {
                Event::Poll { task, .. }
                | Event::PollEnd { task, .. }
                | Event::Wake { task, .. }
                | Event::PollTree { task, .. } => task,
                Event::Enter { span, .. }
                | Event::Exit { span, .. }
                | Event::Close { span, .. } => span,
                _ => continue,
            };
            if let Some(t) = self.tasks.get(id) {
                prefetch(t);
                prefetch(t.woken_by.as_ptr());
            }
        }
    }

    fn thread(&mut self) -> &mut ThreadState {
        let mut id = self.cur_thread;
        if self.threads.len() >= MAX_THREADS && !self.threads.contains_key(&id) {
            // Fold excess threads into one; better than unbounded growth.
            id = u32::MAX;
        }
        self.threads.entry(id).or_default()
    }

    /// Applies one event.
    pub fn apply(&mut self, e: &Event, cfg: &Config, findings: &mut Findings) {
        match e {
            Event::Callsite(c) => {
                if self.callsites.len() < MAX_CALLSITES || self.callsites.contains_key(&c.id) {
                    self.callsites.insert(c.id, (**c).clone());
                }
            }
            Event::Thread { id, name } => {
                self.cur_thread = *id;
                if let Some(n) = name {
                    self.thread().name = Some(n.clone());
                }
            }
            Event::SpanNew(n) => {
                self.bump(n.ts);
                self.span_new(n);
            }
            Event::Record { span, fields } => {
                if let Some(t) = self.tasks.get_mut(span) {
                    span::merge_fields(&mut t.fields, fields);
                    let cs = self.callsites.get(&t.callsite);
                    derive_task_fields(t, cs);
                } else if let Some(s) = self.spans.get_mut(span) {
                    span::merge_fields(&mut s.fields, fields);
                }
            }
            Event::FollowsFrom { .. } => {}
            Event::PollTree { task, spans } => self.poll_tree(*task, spans, cfg),
            Event::Enter { span, ts } => {
                self.bump(*ts);
                self.enter(*span, *ts, cfg, findings);
            }
            Event::Exit { span, ts } => {
                self.bump(*ts);
                self.exit(*span, *ts);
            }
            Event::Poll {
                task,
                start,
                duration,
                wakers,
            } => {
                let end = start.saturating_add(*duration);
                if self.poll_whole(*task, *start, end, *wakers, cfg, findings) {
                    return;
                }
                self.apply(
                    &Event::Enter {
                        span: *task,
                        ts: *start,
                    },
                    cfg,
                    findings,
                );
                self.apply(
                    &Event::PollEnd {
                        task: *task,
                        ts: end,
                        wakers: *wakers,
                    },
                    cfg,
                    findings,
                );
            }
            Event::PollEnd { task, ts, wakers } => {
                self.bump(*ts);
                self.pop_stack(*task);
                if let Some(t) = self.tasks.get_mut(task) {
                    end_poll(t, *ts);
                    // The producer counts wakers exactly (version 2).
                    t.wakers_alive = u64::from(*wakers);
                }
            }
            Event::Close { span, kind, ts } => {
                self.bump(*ts);
                self.close(*span, *kind, *ts, cfg, findings);
            }
            Event::Wake { task, op, by, ts } => {
                self.bump(*ts);
                if let Some(t) = self.tasks.get_mut(task) {
                    wake(t, *op, *by, *ts);
                }
            }
            Event::Log(l) => {
                self.bump(l.ts);
                self.log(l, cfg, findings);
            }
            Event::Panic(p) => {
                let awaitscope_wire::Panic {
                    task,
                    span,
                    message,
                    file,
                    line,
                    ts,
                    trace,
                } = &**p;
                self.bump(*ts);
                if let Some(t) = task.and_then(|t| self.tasks.get_mut(&t)) {
                    t.panic = Some(message.clone());
                }
                let location = match (file, line) {
                    (Some(f), Some(l)) => Some(Location {
                        file: f.clone(),
                        line: *l,
                        col: None,
                    }),
                    _ => None,
                };
                let mut o = detect::panic::observe(self, *task, *span, message, location, *ts);
                if !trace.is_empty() {
                    // The producer's causal trace crosses spawns and queues
                    // and survives closed spans: prefer it.
                    o.trace = trace.clone();
                }
                findings.observe(o);
            }
        }
    }

    fn span_new(&mut self, n: &SpanNew) {
        let SpanNew {
            id,
            callsite,
            parent,
            ctx_task,
            ctx_span,
            ts,
            ref fields,
        } = *n;
        let cs = self.callsites.get(&callsite);
        // As `span_class`.
        let class = match cs.map(|c| c.kind) {
            Some(CallsiteKind::Span(c)) => c,
            _ => SpanClass::User,
        };
        if class == SpanClass::Task {
            match self.tasks.entry(id) {
                Entry::Occupied(mut e) => {
                    // Re-sent after a reconnect: idempotent.
                    let t = e.get_mut();
                    span::merge_fields(&mut t.fields, fields);
                    derive_task_fields(t, cs);
                }
                Entry::Vacant(e) => {
                    let mut t = Task::new(id, callsite, ts);
                    t.parent = ctx_task;
                    t.spawn_span = ctx_span;
                    span::merge_fields(&mut t.fields, fields);
                    derive_task_fields(&mut t, cs);
                    e.insert(t);
                }
            }
            return;
        }
        if self.spans.contains_key(&id) {
            if let Some(s) = self.spans.get_mut(&id) {
                span::merge_fields(&mut s.fields, fields);
            }
            return;
        }
        if class == SpanClass::Resource {
            let r = Resource {
                id,
                callsite,
                concrete_type: span::field_str(cs, fields, "concrete_type")
                    .unwrap_or("?")
                    .to_string(),
                kind: span::field_str(cs, fields, "kind")
                    .unwrap_or("")
                    .to_string(),
                location: span::loc_fields(cs, fields).or_else(|| span::callsite_location(cs)),
                internal: span::field_bool(cs, fields, "is_internal").unwrap_or(false),
                created: ts,
                holders: Vec::new(),
                state: Vec::new(),
            };
            self.resources.insert(id, r);
        }
        let mut f = Vec::new();
        span::merge_fields(&mut f, fields);
        let label = match class {
            SpanClass::Resource => span::field_str(cs, fields, "concrete_type").map(Into::into),
            SpanClass::AsyncOp => span::field_str(cs, fields, "source").map(Into::into),
            _ if cs.is_some_and(|c| c.name == "runtime.join" && c.target == "awaitscope::join") => {
                span::field_u64(cs, fields, "task.id").map(|id| format!("join task.id={id}").into())
            }
            _ => None,
        };
        self.spans.insert(
            id,
            Span {
                callsite,
                class,
                parent,
                ctx_task,
                created: ts,
                first_entered: None,
                fields: f,
                label,
            },
        );
    }

    fn enter(&mut self, id: SpanId, ts: u64, cfg: &Config, findings: &mut Findings) {
        if self.tasks.contains_key(&id) {
            self.poll_start(id, ts, cfg, findings);
            let th = self.thread();
            if th.stack.len() < MAX_STACK {
                th.stack.push(Entered {
                    span: id,
                    task: Some(id),
                    node: None,
                });
            }
            return;
        }
        let max_nodes = cfg.retention.max_await_nodes;
        let top = self.thread().stack.last().copied();
        let Some(s) = self.spans.get_mut(&id) else {
            return;
        };
        let first = *s.first_entered.get_or_insert(ts);
        let (class, callsite, label) = (s.class, s.callsite, s.label.clone());
        let owner = top.and_then(|e| e.task);
        let parent_node = top.and_then(|e| {
            if e.span == e.task.unwrap_or(SpanId(u64::MAX)) {
                None
            } else {
                e.node
            }
        });
        let node = match owner.and_then(|o| self.tasks.get_mut(&o)) {
            Some(t) if class != SpanClass::AsyncOpPoll => {
                t.tree_changed = true;
                if !t.tree_from_enters {
                    // Spans entered in this poll replace the previous tree.
                    t.tree_from_enters = true;
                    t.await_tree.clear();
                }
                t.await_tree
                    .enter(id, callsite, class, parent_node, first, label, max_nodes)
            }
            _ => parent_node,
        };
        let th = self.thread();
        if th.stack.len() < MAX_STACK {
            th.stack.push(Entered {
                span: id,
                task: owner,
                node,
            });
        }
    }

    fn poll_start(&mut self, id: SpanId, ts: u64, cfg: &Config, findings: &mut Findings) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let checks = start_poll(t, ts, &cfg.thresholds);
        self.poll_findings(id, checks, ts, cfg, findings);
    }

    /// The findings of a poll of `id` that started at `ts`: a long previous
    /// poll, a long wait for this one. Reads only what the poll does not
    /// change (the task's name, location, await tree), so it may run once
    /// the poll is applied.
    fn poll_findings(
        &mut self,
        id: SpanId,
        checks: PollChecks,
        ts: u64,
        cfg: &Config,
        findings: &mut Findings,
    ) {
        let th = &cfg.thresholds;
        if let Some((start, d)) = checks.long_poll {
            if let Some(o) = detect::long_poll::check(self, &self.tasks[&id], start, d, th) {
                findings.observe(o);
            }
        }
        if let Some(wait) = checks.starved {
            let t = &self.tasks[&id];
            if let Some(mut o) = detect::starvation::check_wait(self, t, wait, ts, th) {
                o.new_occurrence = !t.flag(o.kind.bit());
                findings.observe(o);
            }
            let bit = detect::FindingKind::Starvation.bit();
            if let Some(t) = self.tasks.get_mut(&id) {
                t.set_flag(bit, false);
            }
        }
    }

    /// A whole poll of `task` (`Event::Poll`): what its `Enter` and
    /// `PollEnd` would do, with one lookup of the task and none of the
    /// thread's span stack (entering and leaving the task span leaves it as
    /// it was). Returns false, doing nothing, when that shortcut does not
    /// hold (unknown task or thread, a full span stack): the caller then
    /// applies the `Enter` and the `PollEnd`.
    fn poll_whole(
        &mut self,
        task: SpanId,
        start: u64,
        end: u64,
        wakers: u32,
        cfg: &Config,
        findings: &mut Findings,
    ) -> bool {
        let stack_ok = self
            .threads
            .get(&self.cur_thread)
            .is_some_and(|th| th.stack.len() < MAX_STACK);
        if !stack_ok {
            return false;
        }
        let Some(t) = self.tasks.get_mut(&task) else {
            return false;
        };
        let checks = start_poll(t, start, &cfg.thresholds);
        end_poll(t, end);
        t.wakers_alive = u64::from(wakers);
        self.bump(start);
        self.bump(end);
        if checks.long_poll.is_some() || checks.starved.is_some() {
            self.poll_findings(task, checks, start, cfg, findings);
        }
        true
    }

    /// The producer's await tree of `task`'s current poll: spans in entry
    /// order with their depth below the task span. Async-op polls (new spans
    /// on every poll) and unknown spans are transparent: their children
    /// attach to their parent.
    fn poll_tree(&mut self, task: SpanId, nodes: &[TreeNode], cfg: &Config) {
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        let seen = t.poll_start.unwrap_or(self.now);
        let mut tree = AwaitTree::default();
        // (depth, node standing for it) of the current path.
        let mut path: Vec<(u16, Option<u16>)> = Vec::new();
        for n in nodes {
            while path.last().is_some_and(|(d, _)| *d >= n.depth) {
                path.pop();
            }
            let parent = path.last().and_then(|(_, i)| *i);
            let node = match self.spans.get_mut(&n.span) {
                Some(s) if s.class != SpanClass::AsyncOpPoll => {
                    let first = *s.first_entered.get_or_insert(seen);
                    tree.enter(
                        n.span,
                        s.callsite,
                        s.class,
                        parent,
                        first,
                        s.label.clone(),
                        cfg.retention.max_await_nodes,
                    )
                    .or(parent)
                }
                _ => parent,
            };
            path.push((n.depth, node));
        }
        if let Some(t) = self.tasks.get_mut(&task) {
            t.await_tree = tree;
            t.tree_changed = true;
        }
    }

    fn exit(&mut self, id: SpanId, ts: u64) {
        self.pop_stack(id);
        if let Some(t) = self.tasks.get_mut(&id) {
            end_poll(t, ts);
        }
    }

    /// Leaves span `id` on the current thread: pops it and anything entered
    /// after it.
    fn pop_stack(&mut self, id: SpanId) {
        let th = self.thread();
        if let Some(pos) = th.stack.iter().rposition(|e| e.span == id) {
            th.stack.truncate(pos);
        }
    }

    fn close(
        &mut self,
        id: SpanId,
        kind: CloseKind,
        ts: u64,
        cfg: &Config,
        findings: &mut Findings,
    ) {
        if let Some(t) = self.tasks.get(&id) {
            let bit = detect::FindingKind::SelfWake.bit();
            if !t.flag(bit) {
                if let Some(o) = detect::self_wake::check(self, t, ts, &cfg.thresholds) {
                    findings.observe(o);
                }
            }
            if kind == CloseKind::Panicked && t.panic.is_none() {
                let o =
                    detect::panic::observe(self, Some(id), None, "task ended panicked", None, ts);
                findings.observe(o);
            }
        }
        if let Some(mut t) = self.tasks.remove(&id) {
            // The last enter/exit pair was the drop of the future.
            t.pending_poll = None;
            t.poll_start = None;
            t.closed = Some(ts);
            if let Some(since) = t.scheduled_since.take() {
                t.scheduled_ns = t.scheduled_ns.saturating_add(ts.saturating_sub(since));
            }
            t.state = match kind {
                CloseKind::Cancelled => TaskState::Cancelled,
                CloseKind::Panicked => TaskState::Panicked,
                _ if t.panic.is_some() => TaskState::Panicked,
                _ => TaskState::Completed,
            };
            t.waiting_on.clear();
            t.await_tree = AwaitTree::default();
            t.flags = 0;
            // Its last samples stay kept in it, not recorded into
            // histograms allocated now: most completed tasks are folded
            // into the summary without anyone reading their histograms (a
            // report reads them with the kept samples).
            self.completed.push_back(t);
            self.prune(cfg);
            return;
        }
        self.spans.remove(&id);
        self.resources.remove(&id);
    }

    /// Folds completed tasks beyond the retention limits into the summary.
    pub fn prune(&mut self, cfg: &Config) {
        let r = &cfg.retention;
        let Self {
            completed,
            summary,
            last_group,
            now,
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
        completed.drain(..folded);
    }

    fn log(&mut self, l: &Log, cfg: &Config, findings: &mut Findings) {
        let Log {
            callsite,
            span,
            task,
            ts,
            ref fields,
            ref trace,
        } = *l;
        let Some(cs) = self.callsites.get(&callsite) else {
            return;
        };
        match cs.kind {
            CallsiteKind::Event(EventClass::PollOp) => {
                let ready = span::field_bool(Some(cs), fields, "is_ready").unwrap_or(true);
                let Some(res) = span.and_then(|s| self.resource_of(s)) else {
                    return;
                };
                if let Some(t) = task.and_then(|t| self.tasks.get_mut(&t)) {
                    if ready {
                        t.waiting_on.retain(|r| *r != res);
                    } else if !t.waiting_on.contains(&res) && t.waiting_on.len() < 16 {
                        t.waiting_on.push(res);
                    }
                }
            }
            CallsiteKind::Event(EventClass::StateUpdate) => {
                let Some(res) = span.and_then(|s| self.resource_of(s)) else {
                    return;
                };
                let cs = self.callsites.get(&callsite);
                let get_b = |n| span::field_bool(cs, fields, n);
                let op = span::field_str(cs, fields, "permits.op")
                    .or_else(|| span::field_str(cs, fields, "current_readers.op"));
                let Some(r) = self.resources.get_mut(&res) else {
                    return;
                };
                if let Some(cs) = cs {
                    for f in fields {
                        if let Some(n) = cs.fields.get(f.index as usize) {
                            r.set_state(n, &f.value);
                        }
                    }
                }
                match (get_b("locked").or(get_b("write_locked")), op, task) {
                    (Some(true), _, Some(t)) => {
                        r.holders.clear();
                        r.add_holder(t);
                    }
                    (Some(false), _, _) => r.holders.clear(),
                    (_, Some("sub"), Some(t)) => r.add_holder(t),
                    (_, Some("add"), Some(t)) => r.remove_holder(t),
                    _ => {}
                }
            }
            CallsiteKind::Event(EventClass::User) | CallsiteKind::Span(_) => {
                let level = cs.level;
                if level < Level::Warn {
                    return;
                }
                let message = span::field_str(Some(cs), fields, "message")
                    .map(str::to_string)
                    .unwrap_or_else(|| cs.name.clone());
                let location = span::callsite_location(Some(cs));
                if level == Level::Error {
                    self.error_count += 1;
                } else {
                    self.warn_count += 1;
                }
                let task = task.or_else(|| span.and_then(|s| self.task_of_span(s)));
                if let Some(t) = task.and_then(|t| self.tasks.get_mut(&t)) {
                    if level == Level::Error {
                        t.error_count += 1;
                    } else {
                        t.warn_count += 1;
                    }
                    if t.logs.len() >= cfg.retention.logs_per_task {
                        t.logs.pop_front();
                    }
                    if cfg.retention.logs_per_task > 0 {
                        t.logs.push_back(LogRecord {
                            level,
                            message: message.clone(),
                            location: location.clone(),
                            ts,
                        });
                    }
                }
                if level == Level::Error {
                    let mut o =
                        detect::error::observe(self, callsite, span, task, &message, location, ts);
                    if !trace.is_empty() {
                        // The producer's causal trace: see `Event::Log`.
                        o.trace = trace.to_vec();
                    }
                    findings.observe(o);
                }
            }
        }
    }

    /// The resource span `s` belongs to (itself, or an ancestor through
    /// async op and async-op poll spans).
    pub fn resource_of(&self, mut s: SpanId) -> Option<SpanId> {
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
        self.tasks
            .get(&id)
            .or_else(|| self.completed.iter().find(|t| t.id == id))
    }

    /// A reference to `t` for findings.
    pub fn task_ref(&self, t: &Task) -> TaskRef {
        TaskRef {
            id: t.id.0,
            tokio_id: t.tokio_id,
            name: t.name.clone(),
            spawned_at: t.location.clone(),
        }
    }

    /// Human-readable label of a span: resource type, async-op source, or
    /// span name.
    pub fn span_label(&self, id: SpanId, callsite: u32) -> String {
        let cs = self.callsites.get(&callsite);
        if let Some(r) = self.resources.get(&id) {
            return r.concrete_type.clone();
        }
        if let Some(s) = self.spans.get(&id) {
            if s.class == SpanClass::AsyncOp {
                if let Some(src) = span::field_str(cs, &s.fields, "source") {
                    return src.to_string();
                }
            }
        }
        cs.map_or_else(|| format!("span#{}", id.0), |c| c.name.clone())
    }

    /// Source location of a span: a resource's creation site, an async op's
    /// resource, or the span's callsite.
    pub fn span_location(&self, id: SpanId, callsite: u32) -> Option<Location> {
        if let Some(r) = self.resource_of(id).and_then(|r| self.resources.get(&r)) {
            if let Some(l) = &r.location {
                return Some(l.clone());
            }
        }
        span::callsite_location(self.callsites.get(&callsite))
    }

    /// Label of an await-tree node.
    pub fn node_label(&self, node: &super::await_tree::AwaitNode) -> String {
        match &node.label {
            Some(l) => l.to_string(),
            None => self.span_label(node.span, node.callsite),
        }
    }

    /// Labels of the await-tree path down to node `i` (`label @ location`).
    pub fn await_path(&self, tree: &AwaitTree, i: usize) -> Vec<String> {
        tree.path(i)
            .into_iter()
            .map(|n| {
                let node = &tree.nodes[n];
                let label = self.node_label(node);
                match self.span_location(node.span, node.callsite) {
                    Some(l) => format!("{label} @ {l}"),
                    None => label,
                }
            })
            .collect()
    }

    /// The node that best names what leaf `i` waits on: the leaf, or the
    /// nearest ancestor outside resources internal to another (a Mutex's
    /// `Mutex::lock` rather than its inner semaphore's `Acquire`).
    pub fn culprit(&self, tree: &AwaitTree, i: usize) -> usize {
        let internal = |n: usize| {
            self.resource_of(tree.nodes[n].span)
                .and_then(|r| self.resources.get(&r))
                .is_some_and(|r| r.internal)
        };
        let mut cur = i;
        while internal(cur) {
            match tree.nodes[cur].parent {
                Some(p) => cur = p as usize,
                None => return i,
            }
        }
        cur
    }

    /// Whether node `i` of `tree` is a timer (Sleep/Interval resource or an
    /// async op on one).
    pub fn node_is_timer(&self, tree: &AwaitTree, i: usize) -> bool {
        self.resource_of(tree.nodes[i].span)
            .and_then(|r| self.resources.get(&r))
            .is_some_and(Resource::is_timer)
    }

    /// The span chain from `s` up through its parents, outermost first,
    /// then the chain of spawning tasks from `task`.
    pub fn trace(&self, s: Option<SpanId>, task: Option<SpanId>) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = s;
        let mut n = 0;
        while let Some(id) = cur {
            n += 1;
            if n > 32 {
                break;
            }
            if let Some(sp) = self.spans.get(&id) {
                let label = self.span_label(id, sp.callsite);
                out.push(match self.span_location(id, sp.callsite) {
                    Some(l) => format!("span {label} @ {l}"),
                    None => format!("span {label}"),
                });
                cur = sp.parent;
            } else {
                break;
            }
        }
        out.reverse();
        let mut tasks = Vec::new();
        let mut cur = task;
        while let Some(id) = cur {
            if tasks.len() >= 16 {
                break;
            }
            match self.task(id) {
                Some(t) => {
                    tasks.push(task_label(t));
                    cur = t.parent;
                }
                None => break,
            }
        }
        tasks.reverse();
        tasks.extend(out);
        tasks
    }

    /// The tokio task id a `runtime.join` span (an `awaitscope::JoinHandle`
    /// being awaited) names, if `span` is one.
    pub fn join_target(&self, span: SpanId, callsite: u32) -> Option<u64> {
        let cs = self.callsites.get(&callsite)?;
        if cs.name != "runtime.join" || cs.target != "awaitscope::join" {
            return None;
        }
        span::field_u64(Some(cs), &self.spans.get(&span)?.fields, "task.id")
    }

    /// "Awaited by" edges: for each live task, the live tasks whose await
    /// tree shows them awaiting its `JoinHandle` (`awaitscope::spawn`).
    pub fn awaited_by(&self) -> HashMap<SpanId, Vec<SpanId>> {
        let by_tokio: HashMap<u64, SpanId> = self
            .tasks
            .values()
            .filter_map(|t| Some((t.tokio_id?, t.id)))
            .collect();
        let mut out: HashMap<SpanId, Vec<SpanId>> = HashMap::new();
        for t in self.tasks.values() {
            for n in &t.await_tree.nodes {
                let Some(target) = self.join_target(n.span, n.callsite) else {
                    continue;
                };
                if let Some(&awaited) = by_tokio.get(&target) {
                    let v = out.entry(awaited).or_default();
                    if !v.contains(&t.id) {
                        v.push(t.id);
                    }
                }
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }

    /// The ids of the live tasks, in order: scans observe findings task by
    /// task, and a finding keeps the first tasks and the worst message it
    /// is given, so the order must not be the map's (seeded per map, and
    /// so per run).
    fn task_ids(&self) -> Vec<SpanId> {
        let mut ids: Vec<SpanId> = self.tasks.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Runs the state detectors at `now` (the process clock).
    pub fn scan(&mut self, now: u64, cfg: &Config, findings: &mut Findings) {
        self.last_scan = now;
        let th = &cfg.thresholds;
        let ids = self.task_ids();
        for id in ids {
            // A poll long over is a real poll (a drop would be closed by now).
            let commit = self.tasks.get(&id).is_some_and(|t| {
                t.poll_start.is_none()
                    && t.pending_poll
                        .is_some_and(|p| now.saturating_sub(p.end) > th.lost_waker_grace_ns)
            });
            if commit {
                if let Some((p, d)) = self
                    .tasks
                    .get_mut(&id)
                    .and_then(|t| t.commit_pending_poll())
                {
                    if let Some(o) =
                        detect::long_poll::check(self, &self.tasks[&id], p.start, d, th)
                    {
                        findings.observe(o);
                    }
                }
            }
            type Check = fn(&Process, &Task, u64, &crate::Thresholds) -> Option<Observation>;
            use detect::FindingKind as K;
            let checks: [(K, Check); 5] = [
                (K::LostWaker, detect::lost_waker::check),
                (K::NeverYielded, detect::never_yielded::check),
                (K::Starvation, detect::starvation::check),
                (K::Stuck, detect::stuck::check),
                (K::SelfWake, detect::self_wake::check),
            ];
            for (kind, check) in checks {
                let obs = check(self, &self.tasks[&id], now, th);
                let t = self.tasks.get_mut(&id).expect("task exists");
                match obs {
                    Some(mut o) => {
                        o.new_occurrence = !t.flag(kind.bit());
                        t.set_flag(kind.bit(), true);
                        findings.observe(o);
                    }
                    // A starvation episode ends at the poll that ends it.
                    None if kind != K::Starvation => t.set_flag(kind.bit(), false),
                    None => {}
                }
            }
        }
        detect::deadlock::scan(self, now, th, findings);
        detect::dropped_events::scan(self, now, findings);
    }

    /// Commits the last poll of every open task (end of a recording).
    pub fn finish(&mut self, cfg: &Config, findings: &mut Findings) {
        let ids = self.task_ids();
        for id in ids {
            if self.tasks[&id].poll_start.is_some() {
                continue;
            }
            if let Some((p, d)) = self
                .tasks
                .get_mut(&id)
                .and_then(|t| t.commit_pending_poll())
            {
                if let Some(o) =
                    detect::long_poll::check(self, &self.tasks[&id], p.start, d, &cfg.thresholds)
                {
                    findings.observe(o);
                }
            }
        }
    }
}

/// Events whose tasks [`Process::warm`] fetches before applying them.
const WARM_AHEAD: usize = 16;

/// Live tasks from which fetching them ahead pays (fewer stay in cache).
const WARM_MIN_TASKS: usize = 1024;

/// Asks the processor to fetch the cache lines of `*p` (no effect on
/// other architectures).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let base = p.cast::<i8>();
        let mut off = 0;
        while off < std::mem::size_of::<T>().max(1) {
            // SAFETY: prefetching is a hint; it never faults, whatever the
            // address (here within or just past a live value).
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(off));
            }
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Timestamp of an event, if it has one.
fn event_ts(e: &Event) -> Option<u64> {
    match e {
        Event::Enter { ts, .. }
        | Event::Exit { ts, .. }
        | Event::PollEnd { ts, .. }
        | Event::Poll { start: ts, .. }
        | Event::Close { ts, .. }
        | Event::Wake { ts, .. } => Some(*ts),
        Event::SpanNew(n) => Some(n.ts),
        Event::Log(l) => Some(l.ts),
        Event::Panic(p) => Some(p.ts),
        _ => None,
    }
}

/// Merges the per-thread runs of a batch by timestamp, keeping the order
/// within each run (a k-way merge, not a sort). Events without a timestamp
/// sort with the previous timed event of their run (the next one at the
/// start of a run); callsites go first. Yields each event with, when it
/// starts a stretch of another run, that run's thread id.
#[cfg_attr(not(feature = "export"), allow(dead_code))] // export::timeline
pub(crate) fn merge_threads(events: &[Event]) -> Vec<(Option<u32>, &Event)> {
    match Merge::new(events) {
        Some(m) => m.collect(),
        // Already in order: each run's first event is its `Thread` (or the
        // events before any, which belong to no run of a thread).
        None => events
            .iter()
            .map(|e| match e {
                Event::Thread { id, .. } if *id != u32::MAX => (Some(*id), e),
                _ => (None, e),
            })
            .collect(),
    }
}

/// One run of a batch: the events of one thread.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Its thread (`u32::MAX`: the events before the first `Thread`).
    thread: u32,
    /// Next event (index into the batch).
    pos: usize,
    /// End (exclusive).
    end: usize,
}

/// The k-way merge of [`merge_threads`], as an iterator over the batch.
pub(crate) struct Merge<'a> {
    events: &'a [Event],
    /// Merge key of each event of the batch.
    keys: Vec<u64>,
    runs: Vec<Run>,
    /// The run of the last event yielded.
    last: Option<usize>,
    /// The run being taken from, and the (key, run) of the smallest head of
    /// the others: the current run goes on while its head comes first.
    cur: Option<(usize, Option<(u64, usize)>)>,
}

impl<'a> Merge<'a> {
    /// The merge of `events`, or `None` when it would yield them in their
    /// own order (every run's keys at most the keys of the runs after it).
    pub(crate) fn new(events: &'a [Event]) -> Option<Merge<'a>> {
        let mut runs: Vec<Run> = Vec::new();
        for (j, e) in events.iter().enumerate() {
            if let Event::Thread { id, .. } = e {
                if let Some(r) = runs.last_mut() {
                    r.end = j;
                }
                runs.push(Run {
                    thread: *id,
                    pos: j,
                    end: events.len(),
                });
            } else if runs.is_empty() {
                runs.push(Run {
                    thread: u32::MAX,
                    pos: 0,
                    end: events.len(),
                });
            }
        }
        // Keys: own ts; else previous timed; else next timed; callsites 0.
        // A run without timed events keeps key 0 for all.
        let mut keys = vec![0u64; events.len()];
        let mut bounds: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
        for r in &runs {
            let mut prev: Option<u64> = None;
            let (mut lo, mut hi) = (u64::MAX, 0);
            for j in r.pos..r.end {
                let e = &events[j];
                if matches!(e, Event::Callsite(_)) {
                    lo = 0;
                    continue;
                }
                let k = match event_ts(e) {
                    Some(ts) => {
                        if prev.is_none() {
                            // The untimed events so far take this key.
                            for i in r.pos..j {
                                if !matches!(events[i], Event::Callsite(_)) {
                                    keys[i] = ts;
                                }
                            }
                            if j > r.pos {
                                lo = lo.min(ts);
                                hi = hi.max(ts);
                            }
                        }
                        prev = Some(ts);
                        ts
                    }
                    None => match prev {
                        Some(p) => p,
                        None => continue,
                    },
                };
                keys[j] = k;
                lo = lo.min(k);
                hi = hi.max(k);
            }
            if prev.is_none() && r.end > r.pos {
                // No timed event: all keys stay 0.
                lo = 0;
            }
            bounds.push((lo, hi));
        }
        // In order when every run's largest key is at most the smallest of
        // every later run (ties go to the earlier run).
        let mut later_min = u64::MAX;
        let mut in_order = true;
        for &(lo, hi) in bounds.iter().rev() {
            if lo > hi {
                // Empty run.
                continue;
            }
            if hi > later_min {
                in_order = false;
                break;
            }
            later_min = later_min.min(lo);
        }
        if in_order {
            return None;
        }
        Some(Merge {
            events,
            keys,
            runs,
            last: None,
            cur: None,
        })
    }

    /// The smallest head (key, run) among runs other than `skip`; the
    /// earliest run on ties.
    fn min_head(&self, skip: Option<usize>) -> Option<(u64, usize)> {
        let mut best: Option<(u64, usize)> = None;
        for (i, r) in self.runs.iter().enumerate() {
            if Some(i) == skip || r.pos >= r.end {
                continue;
            }
            let k = self.keys[r.pos];
            if best.is_none_or(|(bk, _)| k < bk) {
                best = Some((k, i));
            }
        }
        best
    }
}

impl<'a> Iterator for Merge<'a> {
    type Item = (Option<u32>, &'a Event);

    fn next(&mut self) -> Option<Self::Item> {
        // Go on with the current run while its head would win the plain
        // k-way merge: a smaller key than the other heads, or an equal key
        // and an earlier run.
        let go_on = self.cur.and_then(|(i, other)| {
            let r = &self.runs[i];
            if r.pos >= r.end {
                return None;
            }
            let k = self.keys[r.pos];
            match other {
                None => Some(i),
                Some((ok, oi)) if k < ok || (k == ok && i < oi) => Some(i),
                Some(_) => None,
            }
        });
        let i = match go_on {
            Some(i) => i,
            None => {
                let (_, i) = self.min_head(None)?;
                self.cur = Some((i, self.min_head(Some(i))));
                i
            }
        };
        let run = &mut self.runs[i];
        let e = &self.events[run.pos];
        run.pos += 1;
        let switch = (self.last != Some(i) && run.thread != u32::MAX).then_some(run.thread);
        self.last = Some(i);
        Some((switch, e))
    }
}

/// The leaf span that identifies what a task waits on: the deepest leaf.
fn leaf_span(tree: &AwaitTree) -> Option<SpanId> {
    tree.deepest_leaf().map(|i| tree.nodes[i].span)
}

/// `task NAME#ID @ LOCATION`.
pub fn task_label(t: &Task) -> String {
    let mut s = format!("task {}#{}", t.name.as_deref().unwrap_or(""), t.id.0);
    if let Some(l) = &t.location {
        s.push_str(&format!(" @ {l}"));
    }
    s
}

fn derive_task_fields(t: &mut Task, cs: Option<&Callsite>) {
    let [name, kind, id, file, line, col] = span::fields_of(
        cs,
        &t.fields,
        [
            "task.name",
            "kind",
            "task.id",
            "loc.file",
            "loc.line",
            "loc.col",
        ],
    );
    t.name = span::as_str(name)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    t.kind = span::as_str(kind).map(str::to_string);
    t.tokio_id = span::as_u64(id);
    // As `span::loc_fields`, else the callsite's own location.
    let loc = match (span::as_str(file), span::as_u64(line)) {
        (Some(file), Some(line)) => Some(Location {
            file: file.to_string(),
            line: line as u32,
            col: span::as_u64(col).map(|c| c as u32),
        }),
        _ => None,
    };
    t.location = loc.or_else(|| span::callsite_location(cs));
}

/// Counts who woke `t`, keeping the most frequent wakers (bounded).
fn note_waker(t: &mut Task, by: Option<SpanId>) {
    if let Some(i) = t.woken_by.iter().position(|(w, _)| *w == by) {
        t.woken_by[i].1 += 1;
        // Keep the most frequent first (one step per wake suffices).
        if i > 0 && t.woken_by[i].1 > t.woken_by[i - 1].1 {
            t.woken_by.swap(i, i - 1);
        }
    } else if t.woken_by.len() < super::task::WOKEN_BY {
        t.woken_by.push((by, 1));
    } else if let Some(last) = t.woken_by.last_mut() {
        // Full: the rarest waker gives way to the newest.
        *last = (by, 1);
    }
}

fn wake(t: &mut Task, op: WakeOp, by: Option<SpanId>, ts: u64) {
    match op {
        WakeOp::Clone => {
            t.wakers_alive = t.wakers_alive.saturating_add(1);
            return;
        }
        WakeOp::Drop => {
            t.wakers_alive = t.wakers_alive.saturating_sub(1);
            return;
        }
        WakeOp::LastDrop => {
            t.wakers_alive = 0;
            return;
        }
        WakeOp::Wake => t.wakers_alive = t.wakers_alive.saturating_sub(1),
        WakeOp::WakeByRef => {}
    }
    t.wakes += 1;
    if by == Some(t.id) {
        t.self_wakes += 1;
    }
    note_waker(t, by);
    t.woken_since_poll = true;
    if t.poll_start.is_some() {
        t.woken_during_poll = true;
    } else if t.scheduled_since.is_none() && t.closed.is_none() {
        t.scheduled_since = Some(ts);
        t.state = TaskState::Scheduled;
    }
}

/// What the start of a poll leaves to check with the whole process at hand.
#[derive(Clone, Copy, Debug, Default)]
struct PollChecks {
    /// The previous poll (start, duration), committed by this one, when it
    /// was longer than the `long_poll` threshold.
    long_poll: Option<(u64, u64)>,
    /// The wait for this poll, when longer than the `starvation` threshold.
    starved: Option<u64>,
}

/// Starts a poll of `t` at `ts`: commits the previous poll (it was a real
/// poll) and ends the wait for this one.
fn start_poll(t: &mut Task, ts: u64, th: &crate::Thresholds) -> PollChecks {
    let mut checks = PollChecks::default();
    if let Some((p, d)) = t.commit_pending_poll() {
        // `long_poll::check` finds nothing at or under the threshold.
        if d > th.long_poll_ns {
            checks.long_poll = Some((p.start, d));
        }
    }
    if let Some(since) = t.scheduled_since.take() {
        let wait = ts.saturating_sub(since);
        t.scheduled_ns = t.scheduled_ns.saturating_add(wait);
        t.record_scheduled(wait);
        if wait > th.starvation_ns {
            checks.starved = Some(wait);
        } else {
            // A starvation episode ends at the poll that ends it.
            t.set_flag(detect::FindingKind::Starvation.bit(), false);
        }
    }
    t.state = TaskState::Running;
    t.poll_start = Some(ts);
    t.woken_since_poll = false;
    t.woken_during_poll = false;
    // The await tree stays until a `PollTree` (or spans entered in this
    // poll) replaces it: producers send it only when it changes.
    t.tree_from_enters = false;
    t.waiting_on.clear();
    checks
}

/// Ends the running poll of `t` at `ts` (the task span was exited).
fn end_poll(t: &mut Task, ts: u64) {
    let Some(start) = t.poll_start.take() else {
        return;
    };
    t.pending_poll = Some(super::task::PendingPoll { start, end: ts });
    t.last_poll_end = Some(ts);
    if t.woken_during_poll {
        t.state = TaskState::Scheduled;
        t.scheduled_since = Some(ts);
    } else {
        t.state = TaskState::Idle;
    }
    if !t.tree_changed {
        // Same tree as at the last poll's end: same leaf, same since.
        return;
    }
    t.tree_changed = false;
    let leaf = leaf_span(&t.await_tree);
    t.leaf = match (leaf, t.leaf) {
        (Some(l), Some((old, since))) if l == old => Some((old, since)),
        (Some(l), _) => Some((l, start)),
        (None, _) => None,
    };
}

#[cfg(test)]
mod leaf_tests {
    use crate::testing::{Scenario, TaskOpts};

    /// The leaf a task waits on, and since when, follows its await tree
    /// across polls that keep it and polls that change it.
    #[test]
    fn the_leaf_and_its_start_follow_tree_changes() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("t"), 0);
        let a = s.user_span("a", 1);
        let b = s.user_span("b", 2);
        let leaf = |s: &mut Scenario| s.model().processes().next().unwrap().tasks[&t].leaf;
        let poll_in = |s: &mut Scenario, span, ts| {
            s.begin_poll(t, ts);
            s.enter(span, ts + 1);
            s.exit(span, ts + 2);
            s.end_poll(t, ts + 3);
        };
        // Poll 1 waits in `a`.
        poll_in(&mut s, a, 10);
        assert_eq!(leaf(&mut s), Some((a, 10)));
        // Poll 2 enters the same spans: the producer sends no tree, and the
        // wait goes on from poll 1.
        poll_in(&mut s, a, 20);
        assert_eq!(leaf(&mut s), Some((a, 10)));
        // Poll 3 waits in `b` instead, poll 4 too.
        poll_in(&mut s, b, 30);
        assert_eq!(leaf(&mut s), Some((b, 30)));
        poll_in(&mut s, b, 40);
        assert_eq!(leaf(&mut s), Some((b, 30)));
        // Poll 5 enters nothing: no leaf.
        s.poll_v2(t, 50, 51, 1);
        assert_eq!(leaf(&mut s), None);
        // Poll 6 goes back to `a`: a new wait, from this poll.
        poll_in(&mut s, a, 60);
        assert_eq!(leaf(&mut s), Some((a, 60)));
        poll_in(&mut s, a, 70);
        assert_eq!(leaf(&mut s), Some((a, 60)));
    }
}

#[cfg(test)]
mod woken_by_tests {
    use crate::testing::{Scenario, TaskOpts};

    #[test]
    fn who_woke_a_task_is_counted_most_frequent_first() {
        let mut s = Scenario::new();
        let waiter = s.spawn(TaskOpts::named("waiter"), 0);
        let a = s.spawn(TaskOpts::named("a"), 1);
        let b = s.spawn(TaskOpts::named("b"), 2);
        s.begin_poll(waiter, 3);
        s.end_poll(waiter, 4);
        s.wake(waiter, Some(a), 5);
        for ts in 6..9 {
            s.wake(waiter, Some(b), ts);
        }
        s.wake(waiter, None, 10);
        let m = s.model();
        let p = m.processes().next().unwrap();
        let w = &p.tasks[&waiter];
        assert_eq!(w.woken_by, vec![(Some(b), 3), (Some(a), 1), (None, 1)]);
    }
}

#[cfg(test)]
mod merge_tests {
    use awaitscope_wire::{Callsite, CallsiteKind, Event, Level, SpanClass, SpanId};
    use proptest::prelude::*;

    use super::{event_ts, merge_threads};

    /// The merge as first written (a vector of keyed events per run, the
    /// smallest head taken each step): what the fast paths must reproduce.
    fn reference(events: &[Event]) -> Vec<(Option<u32>, &Event)> {
        struct Run<'a> {
            thread: u32,
            items: Vec<(u64, &'a Event)>,
            pos: usize,
        }
        let mut runs: Vec<Run> = Vec::new();
        for e in events {
            if let Event::Thread { id, .. } = e {
                runs.push(Run {
                    thread: *id,
                    items: Vec::new(),
                    pos: 0,
                });
            } else if runs.is_empty() {
                runs.push(Run {
                    thread: u32::MAX,
                    items: Vec::new(),
                    pos: 0,
                });
            }
            runs.last_mut().unwrap().items.push((0, e));
        }
        for run in &mut runs {
            let mut prev: Option<u64> = None;
            let mut pending: Vec<usize> = Vec::new();
            for j in 0..run.items.len() {
                let e = run.items[j].1;
                if matches!(e, Event::Callsite(_)) {
                    run.items[j].0 = 0;
                    continue;
                }
                match event_ts(e) {
                    Some(ts) => {
                        for k in pending.drain(..) {
                            run.items[k].0 = ts;
                        }
                        run.items[j].0 = ts;
                        prev = Some(ts);
                    }
                    None => match prev {
                        Some(p) => run.items[j].0 = p,
                        None => pending.push(j),
                    },
                }
            }
        }
        let mut out = Vec::with_capacity(events.len());
        let mut last: Option<usize> = None;
        loop {
            let mut best: Option<(u64, usize)> = None;
            for (i, run) in runs.iter().enumerate() {
                if let Some(&(k, _)) = run.items.get(run.pos) {
                    if best.is_none_or(|(bk, _)| k < bk) {
                        best = Some((k, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let run = &mut runs[i];
            let e = run.items[run.pos].1;
            run.pos += 1;
            let switch = (last != Some(i) && run.thread != u32::MAX).then_some(run.thread);
            last = Some(i);
            out.push((switch, e));
        }
        out
    }

    fn event(kind: u8, arg: u8, ts: u64) -> Event {
        let span = SpanId(u64::from(arg));
        match kind % 8 {
            0 => Event::Thread {
                id: if arg == 255 {
                    u32::MAX
                } else {
                    u32::from(arg % 4)
                },
                name: None,
            },
            1 => Event::Callsite(Box::new(Callsite {
                id: u32::from(arg),
                name: "c".into(),
                target: "t".into(),
                level: Level::Info,
                file: None,
                line: None,
                kind: CallsiteKind::Span(SpanClass::User),
                fields: vec![],
            })),
            2 => Event::FollowsFrom {
                span,
                follows: span,
            },
            3 => Event::Enter { span, ts },
            4 => Event::Exit { span, ts },
            5 => Event::Poll {
                task: span,
                start: ts,
                duration: 3,
                wakers: 0,
            },
            6 => Event::PollEnd {
                task: span,
                ts,
                wakers: 1,
            },
            _ => Event::Record {
                span,
                fields: vec![],
            },
        }
    }

    /// Batches of up to 4 runs; timestamps increasing across the batch
    /// (runs in order), increasing within each run (overlapping runs), or
    /// anything (few distinct values: ties).
    fn batch() -> impl Strategy<Value = Vec<Event>> {
        (
            0u8..3,
            prop::collection::vec((any::<u8>(), any::<u8>(), 0u64..12), 0..48),
        )
            .prop_map(|(mode, raw)| {
                let mut clock = 0;
                let mut run_clock = 0;
                raw.into_iter()
                    .map(|(kind, arg, r)| {
                        if kind % 8 == 0 {
                            run_clock = r;
                        }
                        let ts = match mode {
                            0 => {
                                clock += r;
                                clock
                            }
                            1 => {
                                run_clock += r;
                                run_clock
                            }
                            _ => r,
                        };
                        event(kind, arg, ts)
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn merge_is_the_reference_merge(events in batch()) {
            let fast = merge_threads(&events);
            let slow = reference(&events);
            prop_assert_eq!(fast.len(), slow.len());
            for (k, (a, b)) in fast.iter().zip(&slow).enumerate() {
                prop_assert_eq!(a.0, b.0, "switch at {}", k);
                prop_assert!(std::ptr::eq(a.1, b.1), "event at {}", k);
            }
        }
    }

    #[test]
    fn runs_in_time_order_are_not_merged() {
        let events: Vec<Event> = [(0, 0, 0), (3, 1, 5), (0, 1, 0), (3, 2, 5), (4, 2, 9)]
            .into_iter()
            .map(|(k, a, ts)| event(k, a, ts))
            .collect();
        assert!(super::Merge::new(&events).is_none());
        let overlapping: Vec<Event> = [(0, 0, 0), (3, 1, 6), (0, 1, 0), (3, 2, 5)]
            .into_iter()
            .map(|(k, a, ts)| event(k, a, ts))
            .collect();
        assert!(super::Merge::new(&overlapping).is_some());
    }
}
