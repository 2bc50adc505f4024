//! How events change a process: the rules of applying each event (spans
//! created, entered and closed, polls started and ended, wakes, resource
//! updates, logs and panics), in one place; what they do to the task they
//! are about is in `task_apply`.
//!
//! Where something worth judging happens (a poll committed, a wait ended, a
//! task closing, a panic, an ERROR event), the [`Observer`] is told, with
//! the process as it stands at that point.

use std::collections::hash_map::Entry;

use awaitscope_wire::{
    names, CallsiteKind, CloseKind, Event, EventClass, Field, Level, Log, SpanClass, SpanId,
    SpanNew, TreeNode, Value, WakeOp,
};

use super::await_tree::AwaitTree;
use super::change::{Change, ChangeKind};
use super::labels;
use super::merge::{merge_order, NO_SWITCH};
use super::process::Observer;
use super::process::{
    Entered, Process, MAX_CALLSITES, MAX_STACK, MAX_WAIT_LINES, RECENT_POLLS, RECENT_POLL_NS,
};
use super::resource::{self, Resource, HELD_AT_FRAMES};
use super::span::{self, Location, Span};
use super::stall::{is_user_span, ClosedSpan, PollStall, StallSpan};
use super::task::{LogRecord, Task, TaskState};
use super::task_apply::{derive_task_fields, end_poll, start_poll, wake, PollStarted};
use super::warm::WARM_AHEAD;
use crate::config::Config;

impl Process {
    /// Applies a batch of events.
    ///
    /// A batch holds one run of events per thread (each opened by a
    /// `Thread` event), in order within each thread but not across threads
    /// (the producer drains its per-thread buffers one after the other). The
    /// runs are merged by timestamp, keeping each thread's order, so that a
    /// task spawned on one thread exists before another thread polls it.
    // Out of line: inlined into `Model::apply`, its loop was compiled
    // with more instructions per event.
    #[inline(never)]
    pub fn apply_events<O: Observer>(&mut self, events: &[Event], cfg: &Config, obs: &mut O) {
        // Every event of the batch is applied (and nothing reads the count
        // meanwhile): counted at once.
        self.events += events.len() as u64;
        let Some(order) = merge_order(events) else {
            // One run, or runs already in time order (the merge would take
            // them one after the other): apply in order.
            for chunk in events.chunks(WARM_AHEAD) {
                self.warm(chunk);
                for e in chunk {
                    self.apply_counted(e, cfg, obs);
                }
            }
            return;
        };
        for (j, switch) in order {
            if switch != NO_SWITCH {
                // Switching runs: the run's thread is current again.
                self.set_thread(switch);
            }
            self.apply_counted(&events[j as usize], cfg, obs);
        }
    }

    /// Counts `e` in [`Process::unknown_span_events`] if it is about a span
    /// the model does not know, and applies it. A whole poll or a wake of a known
    /// task, most events, is applied with one lookup of the task: a known
    /// task is not counted, so the lookup that finds it stands for the
    /// count's.
    #[inline(always)]
    fn apply_counted<O: Observer>(&mut self, e: &Event, cfg: &Config, obs: &mut O) {
        let applied = match *e {
            Event::Poll {
                task,
                start,
                duration,
                wakers,
            } => self.poll_whole(task, start, start.saturating_add(duration), wakers, obs),
            Event::Wake { task, op, by, ts } => self.wake_known(task, op, by, ts, cfg, obs),
            Event::Close { span, kind, ts } => {
                // Counted after: a close of a span not known changes
                // nothing the count reads.
                self.bump(ts);
                if !self.close(span, kind, ts, cfg, obs) {
                    self.count_unknown(e);
                }
                true
            }
            _ => false,
        };
        if !applied {
            self.count_unknown(e);
            self.apply(e, cfg, obs);
        }
    }

    /// Counts `e` in [`Process::unknown_span_events`] when it is about a
    /// span the model does not know (checked before it is applied: a close
    /// forgets its span).
    #[inline]
    fn count_unknown(&mut self, e: &Event) {
        if let Some(id) = about_span(e) {
            if !self.tasks.contains_key(&id) && !self.spans.contains_key(&id) {
                let before = self.unknown_span_events;
                self.note_unknown(id);
                if before == 0 && self.unknown_span_events > 0 {
                    first_unknown(self.key.pid, self.frames, id, e);
                }
            }
        }
    }

    /// Applies one event.
    pub fn apply<O: Observer>(&mut self, e: &Event, cfg: &Config, obs: &mut O) {
        match e {
            Event::Callsite(c) => {
                if self.callsites.len() < MAX_CALLSITES || self.callsites.contains_key(&c.id) {
                    self.callsite_changed(c.id);
                    self.callsites.insert(c.id, (**c).clone());
                }
            }
            Event::Thread { id, name } => {
                self.set_thread(*id);
                self.resync = false;
                if let Some(n) = name {
                    self.thread().name = Some(n.clone());
                }
            }
            Event::SpanNew(n) => {
                self.bump(n.ts);
                self.span_new(n, obs);
            }
            Event::Record { span, fields } => {
                if let Some(callsite) = self.tasks.get(span).map(|t| t.callsite) {
                    let idx = self.task_field_indices(callsite);
                    let cs = self.callsites.get(&callsite);
                    if let Some(t) = self.tasks.get_mut(span) {
                        span::merge_fields(&mut t.fields, fields);
                        derive_task_fields(t, cs, idx);
                    }
                } else if let Some(s) = self.spans.get_mut(span) {
                    span::merge_fields(&mut s.fields, fields);
                }
            }
            Event::FollowsFrom { span, follows } => {
                if O::STEPS {
                    obs.change(
                        self,
                        &Change::FollowsFrom {
                            span: *span,
                            follows: *follows,
                        },
                    );
                }
            }
            Event::PollTree { task, spans } => {
                // A tree sent while no poll of the task runs is the tree of
                // a poll sent whole next (`Poll`): the poll before it was a
                // real poll, judged now, while the tree is still its own
                // (the next poll of a completed task, the drop of its
                // future, usually has an empty one).
                let committed = self.tasks.get_mut(task).and_then(|t| {
                    if t.poll_start.is_some() {
                        return None;
                    }
                    t.commit_pending_poll()
                });
                if let Some((p, duration)) = committed {
                    obs.change(
                        self,
                        &Change::PollCommitted {
                            task: *task,
                            start: p.start,
                            duration,
                        },
                    );
                }
                if self.poll_tree(*task, spans, cfg) && O::STEPS {
                    obs.change(self, &Change::TreeSent { task: *task, spans });
                }
            }
            Event::Enter { span, ts } => {
                self.bump(*ts);
                self.enter(*span, *ts, cfg, obs);
            }
            Event::Exit { span, ts } => {
                self.bump(*ts);
                self.exit(*span, *ts, None, obs);
            }
            Event::Poll {
                task,
                start,
                duration,
                wakers,
            } => {
                let end = start.saturating_add(*duration);
                if self.poll_whole(*task, *start, end, *wakers, obs) {
                    return;
                }
                self.apply(
                    &Event::Enter {
                        span: *task,
                        ts: *start,
                    },
                    cfg,
                    obs,
                );
                self.apply(
                    &Event::PollEnd {
                        task: *task,
                        ts: end,
                        wakers: *wakers,
                    },
                    cfg,
                    obs,
                );
            }
            Event::PollEnd { task, ts, wakers } => {
                self.bump(*ts);
                self.exit(*task, *ts, Some(*wakers), obs);
            }
            Event::Close { span, kind, ts } => {
                self.bump(*ts);
                self.close(*span, *kind, *ts, cfg, obs);
            }
            Event::Wake { task, op, by, ts } => {
                self.wake_known(*task, *op, *by, *ts, cfg, obs);
            }
            Event::Log(l) => {
                self.bump(l.ts);
                self.log(l, cfg, obs);
            }
            Event::Stall(st) => {
                self.bump(st.ts);
                self.stall(st, obs);
            }
            Event::NativeStack(ns) => {
                self.bump(ns.ts);
                self.native_stack(ns, obs);
            }
            Event::WaitStack(w) => {
                self.bump(w.stack.ts);
                self.wait_stack(w);
            }
            Event::WakeStack(w) => {
                self.bump(w.stack.ts);
                self.wake_stack(w);
            }
            Event::Handover(h) => {
                self.bump(h.ts);
                let name = h
                    .task
                    .and_then(|t| self.tasks.get(&t))
                    .and_then(|t| t.name.clone());
                self.handovers.insert(h, name);
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
                obs.change(
                    self,
                    &Change::Panic {
                        task: *task,
                        span: *span,
                        message,
                        location: location.as_ref(),
                        ts: *ts,
                        trace,
                    },
                );
            }
        }
    }

    fn span_new<O: Observer>(&mut self, n: &SpanNew, obs: &mut O) {
        let SpanNew {
            id,
            callsite,
            parent,
            ctx_task,
            ctx_span,
            ts,
            ref fields,
        } = *n;
        // As `span_class`.
        let class = match self.callsites.get(&callsite).map(|c| c.kind) {
            Some(CallsiteKind::Span(c)) => c,
            _ => SpanClass::User,
        };
        if class == SpanClass::Task {
            let idx = self.task_field_indices(callsite);
            let cs = self.callsites.get(&callsite);
            match self.tasks.entry(id) {
                Entry::Occupied(mut e) => {
                    // Re-sent after a reconnect: idempotent.
                    let t = e.get_mut();
                    span::merge_fields(&mut t.fields, fields);
                    derive_task_fields(t, cs, idx);
                }
                Entry::Vacant(e) => {
                    let mut t = Task::new(id, callsite, ts);
                    if self.resync {
                        // Sent again at a handshake (a collector that
                        // started late, or a new one after a reconnect):
                        // the task was spawned at `ts`, but whether it is
                        // waiting for a poll now, and since when, is not
                        // known. Not a wait from its spawn.
                        t.scheduled_since = None;
                        t.state = TaskState::Idle;
                    }
                    t.parent = ctx_task;
                    t.spawn_span = ctx_span;
                    match self.spare_tasks.pop() {
                        // The allocations of a task dropped: its fields
                        // written over, its name, kind and location written
                        // over by `derive_task_fields` (which sets them all).
                        Some(a) => {
                            t.fields = a.fields;
                            span::set_fields(&mut t.fields, fields);
                            t.name = a.name;
                            t.kind = a.kind;
                            t.location = a.location;
                            t.woken_by = a.woken_by;
                            t.woken_by.clear();
                        }
                        None => span::merge_fields(&mut t.fields, fields),
                    }
                    derive_task_fields(&mut t, cs, idx);
                    e.insert(t);
                    if O::STEPS {
                        obs.change(self, &Change::TaskSpawned { task: id, ts });
                    }
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
        let cs = self.callsites.get(&callsite);
        if class == SpanClass::Resource {
            let internal = span::field_bool(cs, fields, names::IS_INTERNAL).unwrap_or(false);
            let outer = ctx_span.filter(|s| internal && self.resources.contains_key(s));
            let r = Resource {
                id,
                callsite,
                concrete_type: span::field_str(cs, fields, names::CONCRETE_TYPE)
                    .unwrap_or("?")
                    .to_string(),
                kind: span::field_str(cs, fields, names::KIND)
                    .unwrap_or("")
                    .to_string(),
                location: span::loc_fields(cs, fields).or_else(|| span::callsite_location(cs)),
                internal,
                outer,
                created: ts,
                holders: Vec::new(),
                state: Vec::new(),
                held_at: Vec::new(),
                deadline: None,
            };
            self.resources.insert(id, r);
        }
        let mut f = Vec::new();
        span::merge_fields(&mut f, fields);
        let label = labels::span_own_label(class, cs, fields).map(|l| (*l).into());
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
        if O::STEPS {
            obs.change(self, &Change::SpanCreated { span: id, ts });
        }
    }

    fn enter<O: Observer>(&mut self, id: SpanId, ts: u64, cfg: &Config, obs: &mut O) {
        if self.tasks.contains_key(&id) {
            self.poll_start(id, ts, obs);
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

    /// Starts a poll of task `id` at `ts` (its span was entered).
    fn poll_start<O: Observer>(&mut self, id: SpanId, ts: u64, obs: &mut O) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let started = start_poll(t, ts);
        self.report_poll_start(id, started, ts, obs);
        if O::STEPS {
            obs.change(self, &Change::PollStarted { task: id, ts });
        }
    }

    /// Tells `obs` what the start of a poll of `id` at `ts` settled: the
    /// previous poll was a poll, the wait for this one is over. The task is
    /// as the poll left it; what it tells of it (its name, location, await
    /// tree) is what the poll does not change.
    #[inline(always)]
    fn report_poll_start<O: Observer>(
        &mut self,
        id: SpanId,
        started: PollStarted,
        ts: u64,
        obs: &mut O,
    ) {
        // Each asked about first: most polls and waits are brief, and a
        // change made only to be ignored was written out in full.
        if let Some((start, duration)) = started.committed {
            if !obs.ignores(ChangeKind::PollCommitted, id, duration) {
                obs.change(
                    self,
                    &Change::PollCommitted {
                        task: id,
                        start,
                        duration,
                    },
                );
            }
        }
        if let Some(waited) = started.waited {
            if !obs.ignores(ChangeKind::WaitEnded, id, waited) {
                obs.change(
                    self,
                    &Change::WaitEnded {
                        task: id,
                        ts,
                        waited,
                    },
                );
            }
        }
    }

    /// A whole poll of `task` (`Event::Poll`): what its `Enter` and
    /// `PollEnd` would do, with one lookup of the task and none of the
    /// thread's span stack (entering and leaving the task span leaves it as
    /// it was). Returns false, doing nothing, when that shortcut does not
    /// hold (unknown task or thread, a full span stack), or when the
    /// observer wants the steps (the poll's start and end, each at its own
    /// time): the caller then applies the `Enter` and the `PollEnd`.
    ///
    /// Always inlined (into both loops of `apply_events`): nearly every
    /// other event is one, and the call's own cost (its registers saved and
    /// restored, the poll passed) was paid by each.
    #[inline(always)]
    fn poll_whole<O: Observer>(
        &mut self,
        task: SpanId,
        start: u64,
        end: u64,
        wakers: u32,
        obs: &mut O,
    ) -> bool {
        if O::STEPS {
            return false;
        }
        if !self.stack_room() {
            return false;
        }
        let Some(t) = self.tasks.get_mut(&task) else {
            return false;
        };
        let started = start_poll(t, start);
        end_poll(t, end);
        t.wakers_alive = u64::from(wakers);
        t.last_thread = Some(self.cur_thread);
        if is_notable(t, start, end) {
            self.poll_ended(task, start, end);
        }
        // `end` is `start` plus the duration (saturating), never before it:
        // bumping to `end` alone moves the clocks as `start` then `end` would.
        debug_assert!(end >= start);
        self.bump(end);
        if started.committed.is_some() || started.waited.is_some() {
            self.report_poll_start(task, started, start, obs);
        }
        true
    }

    /// A waker of `task` was used (`Event::Wake`) at `ts`: the clock moves
    /// to `ts`, and the wake is applied if the task is known (returns
    /// whether it is).
    #[inline(always)]
    fn wake_known<O: Observer>(
        &mut self,
        task: SpanId,
        op: WakeOp,
        by: Option<SpanId>,
        ts: u64,
        cfg: &Config,
        obs: &mut O,
    ) -> bool {
        self.bump(ts);
        let Some(t) = self.tasks.get_mut(&task) else {
            return false;
        };
        wake(t, op, by, ts);
        if by.is_none() && matches!(op, WakeOp::Wake | WakeOp::WakeByRef) {
            // The timer wheel wakes from outside any poll.
            self.timer_woken(task, ts, cfg.thresholds.starvation_ns);
        }
        if O::STEPS && matches!(op, WakeOp::Wake | WakeOp::WakeByRef) {
            obs.change(self, &Change::Woken { task, by, ts });
        }
        true
    }

    /// A notable poll of `task` (see [`is_notable`]) on the current thread
    /// ended: keeps it among the thread's recent polls when long, and
    /// records where the task took the locks it took in it (its await
    /// path, now that the poll's tree is known: the producer sends it just
    /// before the poll's end).
    fn poll_ended(&mut self, task: SpanId, start: u64, end: u64) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        let acquired = std::mem::take(&mut t.acquired);
        if end.saturating_sub(start) >= RECENT_POLL_NS {
            let th = self.thread();
            if th.recent_polls.len() >= RECENT_POLLS {
                th.recent_polls.pop_front();
            }
            th.recent_polls.push_back((task, start, end));
        }
        for res in acquired {
            let Some(t) = self.tasks.get(&task) else {
                return;
            };
            let tree = &t.await_tree;
            // The deepest node on the lock: its async op, under the lock.
            let node = (0..tree.nodes.len())
                .filter(|&i| self.resource_of(tree.nodes[i].span) == Some(res))
                .max_by_key(|&i| tree.depth(i));
            let Some(mut i) = node else { continue };
            // Its async op may have closed already (the lock was taken):
            // still the node under it that names the operation.
            if let Some(op) = tree
                .children(Some(i as u16))
                .find(|&c| tree.nodes[c].class == SpanClass::AsyncOp)
            {
                i = op;
            }
            let mut frames = self.await_frames(tree, i);
            let made_at = self
                .resources
                .get(&res)
                .and_then(|r| r.location.clone())
                .map(labels::shown);
            if !frames.is_empty()
                && (tree.nodes[i].class == SpanClass::Resource
                    || (frames[0].location.is_some() && frames[0].location == made_at))
            {
                // The lock alone (its op closed before the tree was sent),
                // or its op at the lock's creation (no line of its own:
                // taken at once, no stack of a wait): the finding names the
                // lock and where it was made already; the functions say
                // where it was taken.
                frames.remove(0);
            }
            let mut path: Vec<String> = frames.iter().map(ToString::to_string).collect();
            path.truncate(HELD_AT_FRAMES);
            if let Some(r) = self.resources.get_mut(&res) {
                r.set_taken(task, path);
            }
        }
    }

    /// The producer's await tree of `task`'s current poll: spans in entry
    /// order with their depth below the task span. Async-op polls (new spans
    /// on every poll) and unknown spans are transparent: their children
    /// attach to their parent. Returns whether the task is known.
    #[inline(always)]
    fn poll_tree(&mut self, task: SpanId, nodes: &[TreeNode], cfg: &Config) -> bool {
        let Some(t) = self.tasks.get(&task) else {
            return false;
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
                Some(_) => parent,
                // Closed during the poll (an instrumented fn that returned
                // before the poll's end): named from what its close left.
                None => match self.closed_spans.get(n.span) {
                    Some(c) if c.class != SpanClass::AsyncOpPoll => tree
                        .enter(
                            n.span,
                            c.callsite,
                            c.class,
                            parent,
                            c.first_entered.unwrap_or(seen),
                            c.label.clone(),
                            cfg.retention.max_await_nodes,
                        )
                        .or(parent),
                    _ => parent,
                },
            };
            path.push((n.depth, node));
        }
        if let Some(t) = self.tasks.get_mut(&task) {
            t.await_tree = tree;
            t.tree_changed = true;
        }
        true
    }

    /// Leaves span `id` at `ts`; a task's exit ends its poll: a `PollEnd`
    /// (with the task's live `wakers`, counted exactly by version-2
    /// producers) or a version-1 producer's `Exit` (`wakers` `None`).
    fn exit<O: Observer>(&mut self, id: SpanId, ts: u64, wakers: Option<u32>, obs: &mut O) {
        self.pop_stack(id);
        if let Some(t) = self.tasks.get_mut(&id) {
            let ended = end_poll(t, ts);
            if let Some(w) = wakers {
                t.wakers_alive = u64::from(w);
            }
            let start = t.pending_poll.map_or(ts, |p| p.start);
            t.last_thread = Some(self.cur_thread);
            if is_notable(t, start, ts) {
                self.poll_ended(id, start, ts);
            }
            if ended && O::STEPS {
                obs.change(self, &Change::PollEnded { task: id, ts });
            }
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

    /// Closes span `id` at `ts`: a task ends (`kind`: how), another span
    /// is forgotten. Returns whether the span was known (a live task or
    /// span); if not, nothing [`Process::count_unknown`] reads changed.
    fn close<O: Observer>(
        &mut self,
        id: SpanId,
        kind: CloseKind,
        ts: u64,
        cfg: &Config,
        obs: &mut O,
    ) -> bool {
        if let Some(task) = self.tasks.get(&id) {
            obs.change(self, &Change::TaskClosing { task, kind, ts });
            self.end_task(id, kind, ts, cfg);
            return true;
        }
        if O::STEPS && self.spans.contains_key(&id) {
            obs.change(self, &Change::SpanClosing { span: id, ts });
        }
        let removed = self.spans.remove(&id);
        let known = removed.is_some();
        if let Some(s) = removed {
            if s.class != SpanClass::AsyncOpPoll {
                self.closed_spans.push(ClosedSpan {
                    id,
                    callsite: s.callsite,
                    class: s.class,
                    label: s.label,
                    first_entered: s.first_entered,
                    created: s.created,
                    closed: ts,
                });
            }
        }
        self.resources.remove(&id);
        if !self.wait_lines.is_empty() {
            self.wait_lines.remove(&id);
        }
        known
    }

    /// Task `id` ended at `ts`: it moves to the completed tasks.
    fn end_task(&mut self, id: SpanId, kind: CloseKind, ts: u64, cfg: &Config) {
        let Some(mut t) = self.tasks.remove(&id) else {
            return;
        };
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
        // Its stall stays with it: the producer symbolises native stacks
        // off its workers, so a stall (or its second half) may arrive after
        // the task ended, and is then merged into what is here (bounded by
        // the completed tasks kept).
        // Its last samples stay kept in it, not recorded into histograms
        // allocated now: most completed tasks are folded into the summary
        // without anyone reading their histograms (a report reads them
        // with the kept samples).
        self.completed.push_back(t);
        self.prune(cfg);
    }

    /// Applies one half of a stall to its task (see [`super::stall`]):
    /// merged into the task's stall of the same poll, or replacing the
    /// stall of an earlier poll. Its spans are named now, while they live.
    fn stall<O: Observer>(&mut self, st: &awaitscope_wire::Stall, obs: &mut O) {
        if self.task(st.task).is_none() {
            return;
        }
        let spans = if st.ended {
            Vec::new()
        } else {
            st.spans
                .iter()
                .filter_map(|&s| self.stall_span(s))
                .collect()
        };
        let Some(stall) = self.stall_of(st.task, st.start) else {
            return;
        };
        stall.merge(st, spans);
        obs.change(
            self,
            &Change::Stalled {
                task: st.task,
                start: st.start,
                ended: st.ended,
            },
        );
    }

    /// The native stack of a stall's crossing, symbolised here from the
    /// program's files (see [`crate::symbolize`]).
    fn native_stack<O: Observer>(&mut self, ns: &awaitscope_wire::NativeStack, obs: &mut O) {
        let pid = self.key.pid;
        let Some(stall) = self.stall_of(ns.task, ns.start) else {
            return;
        };
        let s = crate::symbolize::symbolize(ns, Some(pid));
        stall.frames = s.frames;
        stall.unresolved = s.unresolved;
        obs.change(
            self,
            &Change::Stalled {
                task: ns.task,
                start: ns.start,
                ended: false,
            },
        );
    }

    /// Where a task went to wait: the innermost frame of the program's own
    /// code in the stack of its not-ready poll, kept for the async op it
    /// waits on (see [`Process::wait_lines`]). Symbolised here from the
    /// program's files, as a stall's stack is.
    fn wait_stack(&mut self, w: &awaitscope_wire::WaitStack) {
        // The not-ready poll was reported in an async op's poll span; the
        // async ops around it (a semaphore's acquire inside a Mutex's lock)
        // wait at the same line: whichever the await frames show.
        let mut ops = [SpanId(0); 4];
        let mut n = 0;
        let mut at = Some(w.span);
        // Bounded: a hostile stream may make parents a cycle.
        for _ in 0..8 {
            let Some(s) = at.and_then(|id| Some((id, self.spans.get(&id)?))) else {
                break;
            };
            match s.1.class {
                SpanClass::AsyncOp if n < ops.len() => {
                    ops[n] = s.0;
                    n += 1;
                }
                SpanClass::AsyncOp | SpanClass::AsyncOpPoll | SpanClass::Resource => {}
                _ => break,
            }
            at = s.1.parent;
        }
        let ops = &ops[..n];
        if ops.is_empty()
            || (self.wait_lines.len() + ops.len() > MAX_WAIT_LINES
                && !ops.iter().all(|op| self.wait_lines.contains_key(op)))
        {
            return;
        }
        let at = match &w.at {
            Some(f) => Some(f.clone()),
            None => crate::symbolize::awaited_at(&w.stack, Some(self.key.pid)),
        };
        let line = at.and_then(|f| {
            Some(Location {
                file: f.file?,
                line: f.line?,
                col: None,
            })
        });
        if let Some(line) = line {
            for op in ops {
                self.wait_lines.insert(*op, line.clone());
            }
        }
    }

    /// Where a task woke itself in its own poll, symbolised here from the
    /// program's files (the first such stack kept: the producer sends at
    /// most one per task), for its `self_wake` finding.
    fn wake_stack(&mut self, w: &awaitscope_wire::WaitStack) {
        let pid = self.key.pid;
        let t = match self.tasks.get_mut(&w.stack.task) {
            Some(t) => t,
            None => match self.completed.last_mut(w.stack.task) {
                Some(t) => t,
                None => return,
            },
        };
        if t.self_wake_stack.is_some() {
            return;
        }
        let s = crate::symbolize::symbolize(&w.stack, Some(pid));
        if !s.frames.is_empty() {
            t.self_wake_stack = Some(Box::new(s));
        }
    }

    /// The stall of task `task`'s poll started at `start` (a live task, or
    /// one that ended before its stall arrived), made if it is the first
    /// of its halves to arrive. `None` for a task not known.
    fn stall_of(&mut self, task: SpanId, start: u64) -> Option<&mut PollStall> {
        let t = match self.tasks.get_mut(&task) {
            Some(t) => t,
            None => self.completed.last_mut(task)?,
        };
        if t.stall(start).is_none() {
            // Of a poll committed already: judged without it.
            let poll_ns = [t.last_committed, t.last_long]
                .into_iter()
                .flatten()
                .find(|p| p.start == start)
                .map(|p| p.end.saturating_sub(p.start));
            t.stall_or_new(start)?.poll_ns = poll_ns;
        }
        t.stall_mut(start)
    }

    /// Span `id` of a stall's async stack, named (live or recently closed;
    /// `None` for a span not known, or an async op's poll, which its async
    /// op stands for).
    fn stall_span(&self, id: SpanId) -> Option<StallSpan> {
        let (callsite, class, label) = match self.spans.get(&id) {
            Some(s) if s.class == SpanClass::AsyncOpPoll => return None,
            Some(s) => (s.callsite, s.class, s.label.clone()),
            None => {
                let c = self.closed_spans.get(id)?;
                (c.callsite, c.class, c.label.clone())
            }
        };
        let label = match label {
            Some(l) => l.to_string(),
            None => self.span_label(id, callsite),
        };
        let location = self.span_location(id, callsite);
        let user = is_user_span(class, self.callsites.get(&callsite), location.as_ref());
        Some(StallSpan {
            label,
            location,
            user,
        })
    }

    fn log<O: Observer>(&mut self, l: &Log, cfg: &Config, obs: &mut O) {
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
                let ready = span::field_bool(Some(cs), fields, names::IS_READY).unwrap_or(true);
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
                if cs.is_some_and(|c| c.target == names::TOKIO_ASYNC_OP_STATE_UPDATE_TARGET) {
                    // The op's state, not its resource's: only permits it
                    // was handed say something about the resource.
                    self.permits_handed_over(res, span, task, callsite, fields);
                    return;
                }
                let get_b = |n| span::field_bool(cs, fields, n);
                let get_n = |n| {
                    span::field_u64(cs, fields, n)
                        .map_or(1, |v| u32::try_from(v).unwrap_or(u32::MAX))
                };
                let permits = span::field_str(cs, fields, names::PERMITS_OP);
                let readers = span::field_str(cs, fields, names::CURRENT_READERS_OP);
                let Some(r) = self.resources.get_mut(&res) else {
                    return;
                };
                if r.is_timer() {
                    // tokio sends the time left until the deadline, in ms.
                    if let Some(ms) = span::field_u64(cs, fields, resource::DURATION) {
                        let unit = span::field_str(cs, fields, resource::DURATION_UNIT);
                        if unit.is_none_or(|u| u == "ms") {
                            r.deadline = Some(ts.saturating_add(ms.saturating_mul(1_000_000)));
                        }
                    }
                }
                if let Some(cs) = cs {
                    for f in fields {
                        let Some(n) = cs.fields.get(f.index as usize) else {
                            continue;
                        };
                        if n.ends_with(names::OP_SUFFIX) {
                            continue;
                        }
                        let op = cs
                            .fields
                            .iter()
                            .position(|o| o.strip_suffix(names::OP_SUFFIX) == Some(n.as_str()))
                            .and_then(|i| fields.iter().find(|f| f.index as usize == i))
                            .and_then(|f| match &f.value {
                                Value::Str(s) => Some(s.as_str()),
                                _ => None,
                            });
                        r.apply_state(n, &f.value, op);
                    }
                }
                let Some(t) = task else {
                    if get_b(names::LOCKED).or(get_b(names::WRITE_LOCKED)) == Some(false) {
                        r.holders.clear();
                    }
                    return;
                };
                // Where the lock is taken is learnt at the end of the poll
                // that took it (`poll_ended`), on the lock the program made
                // (a Semaphore's, not its inner semaphore's).
                let lock = r.outer.unwrap_or(res);
                let mut took = false;
                match get_b(names::LOCKED).or(get_b(names::WRITE_LOCKED)) {
                    Some(true) => {
                        r.holders.clear();
                        r.add_holder(t, 1);
                        // One holder at a time: the others' takings
                        // are over.
                        r.held_at.clear();
                        took = true;
                    }
                    Some(false) => {
                        r.holders.clear();
                        r.held_at.clear();
                    }
                    None => {}
                }
                // A semaphore's permits are taken (`sub`) and given back
                // (`add`); an RwLock's readers come (`add`) and go (`sub`).
                let mut let_go = false;
                match (permits, readers) {
                    (Some(names::OP_SUB), _) => {
                        // An acquire that found none free sends `sub` of 0.
                        let n = get_n(names::PERMITS);
                        r.add_holder(t, n);
                        took = n > 0;
                    }
                    (Some(names::OP_ADD), _) => {
                        r.remove_holder(t, get_n(names::PERMITS));
                        let_go = !r.held_by(t);
                    }
                    (_, Some(names::OP_ADD)) => {
                        r.add_holder(t, get_n(names::CURRENT_READERS));
                        took = true;
                    }
                    (_, Some(names::OP_SUB)) => {
                        r.remove_holder(t, get_n(names::CURRENT_READERS));
                        let_go = !r.held_by(t);
                    }
                    _ => {}
                }
                if took {
                    self.took_lock(t, lock);
                }
                if let_go {
                    self.let_go(t, lock);
                }
            }
            CallsiteKind::Event(EventClass::User) | CallsiteKind::Span(_) => {
                let level = cs.level;
                if level < Level::Warn {
                    return;
                }
                let message = span::field_str(Some(cs), fields, names::MESSAGE)
                    .map(str::to_string)
                    .unwrap_or_else(|| cs.name.clone());
                let location = span::callsite_location(Some(cs));
                if level == Level::Error {
                    self.error_count += 1;
                } else {
                    self.warn_count += 1;
                }
                if O::STEPS {
                    obs.change(
                        self,
                        &Change::Logged {
                            log: l,
                            level,
                            message: &message,
                            location: location.as_ref(),
                        },
                    );
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
                    obs.change(
                        self,
                        &Change::Error {
                            callsite,
                            span,
                            task,
                            message: &message,
                            location: location.as_ref(),
                            ts,
                            trace,
                        },
                    );
                }
            }
        }
    }
}

impl Process {
    /// Permits a semaphore's waiting acquire (the async op `op`) was handed
    /// by a release (tokio's `permits_obtained`, `permits.op = "add"`,
    /// sent in the releasing task `releaser`): they move from the releaser
    /// to the task whose acquire it is (the task that made the op). Such
    /// permits never reach the resource's count, and the resource hears
    /// nothing of them.
    fn permits_handed_over(
        &mut self,
        res: SpanId,
        op: Option<SpanId>,
        releaser: Option<SpanId>,
        callsite: u32,
        fields: &[Field],
    ) {
        let cs = self.callsites.get(&callsite);
        if span::field_str(cs, fields, names::PERMITS_OP) != Some(names::OP_ADD) {
            return;
        }
        let Some(n) = span::field_u64(cs, fields, names::PERMITS_OBTAINED)
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
            .filter(|n| *n > 0)
        else {
            return;
        };
        // Sent in the op's span when a release hands permits over; in its
        // resource's when the acquire found them free (tokio enters the
        // resource around both updates there), which the resource's own
        // `sub` counted.
        let owner = op
            .and_then(|s| self.spans.get(&s))
            .filter(|s| matches!(s.class, SpanClass::AsyncOp | SpanClass::AsyncOpPoll))
            .and_then(|s| s.ctx_task);
        let Some(r) = self.resources.get_mut(&res) else {
            return;
        };
        let lock = r.outer.unwrap_or(res);
        match (owner, releaser) {
            (Some(w), Some(from)) if w != from => {
                r.remove_holder(from, n);
                r.add_holder(w, n);
                let let_go = !r.held_by(from);
                self.took_lock(w, lock);
                if let_go {
                    self.let_go(from, lock);
                }
            }
            (Some(w), None) => {
                r.add_holder(w, n);
                self.took_lock(w, lock);
            }
            _ => {}
        }
    }

    /// Task `t` holds no more of `lock`: where it took it is forgotten.
    fn let_go(&mut self, t: SpanId, lock: SpanId) {
        if let Some(r) = self.resources.get_mut(&lock) {
            r.held_at.retain(|(h, _)| *h != t);
        }
    }

    /// Task `t` took `lock` (or was handed its permits): where, its await
    /// path at the end of its poll that took it, is kept on the lock then
    /// (see `poll_ended`).
    fn took_lock(&mut self, t: SpanId, lock: SpanId) {
        if let Some(task) = self.tasks.get_mut(&t) {
            if !task.acquired.contains(&lock) && task.acquired.len() < 8 {
                task.acquired.push(lock);
            }
        }
    }
}

/// Whether the poll of `t` from `start` to `end` needs
/// [`Process::poll_ended`]: it was long enough to hold its thread, or took
/// locks. Most polls are neither, and cost no second lookup.
#[inline]
/// The span an event is about, for the events that are applied only to a
/// span the model knows.
fn about_span(e: &Event) -> Option<SpanId> {
    match e {
        Event::Poll { task, .. } => Some(*task),
        Event::Record { span, .. }
        | Event::Enter { span, .. }
        | Event::Exit { span, .. }
        | Event::Close { span, .. } => Some(*span),
        Event::PollEnd { task, .. } | Event::Wake { task, .. } | Event::PollTree { task, .. } => {
            Some(*task)
        }
        _ => None,
    }
}

/// Logs (at debug, once per process) the first event counted in
/// [`Process::unknown_span_events`]: its kind and span say whether a
/// creation was lost or the merge of a batch put an event before it.
#[cold]
fn first_unknown(pid: u32, frames: u64, id: SpanId, e: &Event) {
    let kind = match e {
        Event::Poll { .. } => "Poll",
        Event::Record { .. } => "Record",
        Event::Enter { .. } => "Enter",
        Event::Exit { .. } => "Exit",
        Event::Close { .. } => "Close",
        Event::PollEnd { .. } => "PollEnd",
        Event::Wake { .. } => "Wake",
        Event::PollTree { .. } => "PollTree",
        _ => "other",
    };
    tracing::debug!(
        pid,
        frames,
        span = id.0,
        event = kind,
        ts = e.ts(),
        "first event about a span never seen created (unknown_span_events)"
    );
}

fn is_notable(t: &Task, start: u64, end: u64) -> bool {
    end.saturating_sub(start) >= RECENT_POLL_NS || !t.acquired.is_empty()
}
