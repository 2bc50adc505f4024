//! One record into its wire event, and the exporter's model of what is live
//! (spans, tasks' await trees, held locks) kept up to date on the way:
//! poll starts held back so that a poll with nothing in between goes out as
//! one event, closes that arrive before their span's creation, closes
//! recovered from the nodes after a full ring.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use awaitscope_wire as wire;
use wire::{Event, SpanClass, SpanId};

use super::*;
use crate::await_tree::AwaitModel;
use crate::capture::record::{in_box, Raw, RawLog};
use crate::capture::small_fields::SmallFields;
use crate::capture::Capture;
use crate::span_node::SpanNode;

impl Exporter {
    /// Updates the model for a record and converts it to a wire event (only
    /// when some destination is up). Events that own nothing are emitted here
    /// ([`Exporter::emit_plain`]); the others are returned.
    ///
    /// First the ordering step: a poll start held back (see `held`) goes
    /// out before any record but the poll's own tree nodes and end. Then
    /// one step per kind of record, each doing the model update it needs
    /// before the conversion.
    #[inline(always)]
    pub(super) fn convert(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        thread: u32,
        raw: Raw,
        want: bool,
    ) -> Option<Event> {
        if self.held.is_some()
            && !matches!(raw, Raw::TreeNode { .. } | Raw::Exit { task: true, .. })
        {
            self.release_held(shared);
        }
        let ns = |raw: u64| shared.nanos(raw);
        match raw {
            Raw::Span(node) => self.span_created(shared, model, thread, node, want),
            Raw::Enter {
                span,
                task: true,
                ts,
            } => self.poll_started(thread, span, ts, want),
            Raw::Enter { span, ts, .. } => {
                if want {
                    self.emit_plain(Event::Enter {
                        span: SpanId(span),
                        ts: ns(ts),
                    });
                }
            }
            Raw::TreeNode { task, span, depth } => {
                Self::tree_node(&mut self.threads, thread, task, span, depth)
            }
            Raw::Exit {
                span,
                task: false,
                ts,
                ..
            } => {
                if want {
                    self.emit_plain(Event::Exit {
                        span: SpanId(span),
                        ts: ns(ts),
                    });
                }
            }
            Raw::Poll {
                span,
                start,
                end,
                tree,
                wakers,
            } => self.whole_poll(
                shared,
                model,
                thread,
                span,
                (start, end),
                tree,
                wakers,
                want,
            ),
            Raw::Exit {
                span,
                task: true,
                tree,
                wakers,
                ts,
            } => self.poll_ended(shared, model, thread, span, ts, tree, wakers, want),
            Raw::Close {
                span,
                kind,
                ts,
                compact: false,
            } => self.span_closed(shared, model, span, kind, ts, want),
            Raw::Close {
                span,
                kind,
                ts,
                compact: true,
            } => self.compact_closed(shared, model, span, kind, ts, want),
            Raw::SpanCompact {
                id,
                parent,
                ts,
                callsite,
            } => self.compact_created(model, id, parent, ts, callsite, want),
            Raw::Log(mut l) => {
                if l.class == wire::EventClass::StateUpdate {
                    model.on_state_update(l.span, l.task, locked_field(&l));
                }
                if want {
                    let log = wire::Log {
                        callsite: l.callsite,
                        span: span_id(l.span),
                        task: span_id(l.task),
                        ts: ns(l.ts),
                        fields: std::mem::take(&mut l.fields),
                        trace: std::mem::take(&mut l.trace),
                    };
                    let spare = self.spare_log.take();
                    self.spare_log = self.emit_log(in_box(log, spare)).map(|mut log| {
                        // The fields and the trace go back with their record.
                        l.fields = std::mem::take(&mut log.fields);
                        l.trace = std::mem::take(&mut log.trace);
                        log
                    });
                    if !l.stack.is_empty() {
                        // The wait's stack follows its not-ready poll op.
                        let ts = ns(l.ts);
                        let stack = self.watchdog.place(SpanId(l.task), ts, &l.stack);
                        self.emit(&Event::WaitStack(Box::new(wire::WaitStack {
                            span: SpanId(l.span),
                            stack,
                            at: None,
                        })));
                    }
                }
                self.give_back_log(l, thread);
            }
            Raw::LogFields { head, bits } => {
                thread_reads(&mut self.threads, thread).fields =
                    Some(SmallFields::unpack(head, bits))
            }
            Raw::SmallLog {
                callsite,
                class,
                locked,
                span,
                task,
                ts,
            } => {
                // Its fields came just before it, in the same ring (pushed
                // together, or neither was).
                let Some(fields) = thread_reads(&mut self.threads, thread).fields.take() else {
                    shared.buffer_full.fetch_add(1, Ordering::Relaxed);
                    return None;
                };
                if class == wire::EventClass::StateUpdate {
                    model.on_state_update(span, task, locked);
                }
                if want {
                    // The spare event's fields are written over (their
                    // texts' memory reused).
                    let mut spare = self.spare_log.take();
                    let mut wire_fields = spare
                        .as_mut()
                        .map(|l| std::mem::take(&mut l.fields))
                        .unwrap_or_default();
                    fields.write_to(&mut wire_fields, &mut self.spare_texts);
                    let log = wire::Log {
                        callsite,
                        span: span_id(span),
                        task: span_id(task),
                        ts: ns(ts),
                        fields: wire_fields,
                        trace: Vec::new(),
                    };
                    self.spare_log = self.emit_log(in_box(log, spare));
                }
            }
            // The rest changes no model: converted only for the destinations.
            // Each arm takes its record whole (dropped there when not
            // converted): with a catch-all arm, every record paid a check
            // after the match of whether it still had something to drop.
            Raw::Wake { task, by, op, ts } => {
                if want {
                    self.emit_plain(Event::Wake {
                        task: SpanId(task),
                        op,
                        by: span_id(by),
                        ts: ns(ts),
                    });
                }
            }
            Raw::Record(r) => {
                if want {
                    // The node's fields were updated by the layer.
                    let (span, fields) = *r;
                    return Some(Event::Record {
                        span: SpanId(span),
                        fields,
                    });
                }
            }
            Raw::FollowsFrom { span, follows } => {
                if want {
                    return Some(Event::FollowsFrom {
                        span: SpanId(span),
                        follows: SpanId(follows),
                    });
                }
            }
            Raw::Panic(p) => {
                if want {
                    return Some(Event::Panic(Box::new(awaitscope_wire::Panic {
                        task: span_id(p.task),
                        span: span_id(p.span),
                        message: p.message,
                        file: p.file,
                        line: p.line,
                        ts: ns(p.ts),
                        trace: p.trace,
                    })));
                }
            }
            Raw::Handover(h) => {
                if want {
                    return Some(Event::Handover(Box::new(awaitscope_wire::Handover {
                        span: span_id(h.span),
                        task: span_id(h.task),
                        trace_id: h.trace_id,
                        span_id: h.span_id,
                        ts: ns(h.ts),
                        trace: h.trace,
                    })));
                }
            }
            Raw::WakeStack(w) => {
                if want {
                    let ts = ns(w.ts);
                    let stack = self.watchdog.place(SpanId(w.task), ts, &w.stack);
                    return Some(Event::WakeStack(Box::new(wire::WaitStack {
                        span: SpanId(w.span),
                        stack,
                        at: None,
                    })));
                }
            }
        }
        None
    }

    /// A span was created: its `SpanNew` goes out, and it becomes live in
    /// the model, unless its close was read first (it closed on another
    /// thread, whose ring this drain read first): then it is closed at
    /// once and never live.
    #[inline(always)]
    pub(super) fn span_created(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        thread: u32,
        node: Arc<SpanNode>,
        want: bool,
    ) {
        if want {
            self.push_span_new(&node, Self::send_batch);
        }
        if !self.early_closes.is_empty() && self.closed_early(shared, node.id, want) {
            return;
        }
        if node.class == SpanClass::User
            && self.closed_young.len() < MAX_CLOSED_YOUNG
            && node.closed.load(Ordering::Acquire)
        {
            self.closed_young.push_back((node, thread));
            return;
        }
        let created = shared.nanos(node.ts);
        model.on_span(node, created, thread);
    }

    /// The spans of [`Exporter::closed_young`] whose closes this drain did
    /// not read go into the model, as spans still open.
    pub(super) fn age_closed_young(&mut self, shared: &Capture, model: &mut AwaitModel) {
        for (node, home) in self.closed_young.drain(..) {
            let created = shared.nanos(node.ts);
            model.on_span(node, created, home);
        }
    }

    /// Whether span `id`'s close was read before its creation; if so, the
    /// close goes out now. Out of line: rare, and it keeps the drain loop
    /// small.
    #[cold]
    #[inline(never)]
    pub(super) fn closed_early(&mut self, shared: &Capture, id: u64, want: bool) -> bool {
        let Some((kind, ts, _)) = self.early_closes.remove(&id) else {
            return false;
        };
        if want {
            self.emit_close(shared, id, kind, ts);
        }
        true
    }

    /// A poll's start, read from the ring: remembered as the thread's open
    /// poll, and held back (when not already announced from the thread's
    /// poll slot) so that a poll with nothing recorded in between goes out
    /// as one `Poll` event with its end.
    #[inline(always)]
    pub(super) fn poll_started(&mut self, thread: u32, span: u64, ts: u64, want: bool) {
        let tp = thread_reads(&mut self.threads, thread);
        tp.open = (span, ts);
        if tp.announced == (span, ts) {
            // Sent already, from the thread's poll slot.
            return;
        }
        if want {
            self.held = Some((span, ts));
        }
    }

    /// One node of the await tree of the poll about to end on `thread`:
    /// collected until the poll's end says whether it is a new tree.
    #[inline(always)]
    pub(super) fn tree_node(
        threads: &mut Vec<ThreadReads>,
        thread: u32,
        task: u64,
        span: u64,
        depth: u16,
    ) {
        let pending = &mut thread_reads(threads, thread).tree;
        if pending.0 != task {
            // Left over from a poll whose exit was dropped.
            pending.1.clear();
            pending.0 = task;
        }
        pending.1.push((span, depth));
    }

    /// A whole poll in one record (nothing else was recorded during it):
    /// its tree, then a `Poll` event, or a `PollEnd` if its start was
    /// announced from the thread's poll slot while it ran.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn whole_poll(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        thread: u32,
        span: u64,
        (start, end): (u64, u64),
        tree: bool,
        wakers: u32,
        want: bool,
    ) {
        self.poll_tree(model, thread, span, tree, want);
        let announced = thread_reads(&mut self.threads, thread).whole_poll_read(span, start);
        if !want {
            return;
        }
        // One `emit_plain` per variant: the encoder inlined into each is
        // specialized for it (one site for both costs a match per event).
        if announced {
            self.emit_plain(Event::PollEnd {
                task: SpanId(span),
                ts: shared.nanos(end),
                wakers,
            });
        } else {
            self.emit_plain(poll_event(shared, span, start, end, wakers));
        }
    }

    /// The end of a poll whose start was its own record: its tree, then a
    /// `Poll` event if the start is the one held back, else (the start went
    /// out already, or was dropped) a `PollEnd`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn poll_ended(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        thread: u32,
        span: u64,
        ts: u64,
        tree: bool,
        wakers: u32,
        want: bool,
    ) {
        self.poll_tree(model, thread, span, tree, want);
        thread_reads(&mut self.threads, thread).poll_end_read(span);
        if !want {
            return;
        }
        let ev = match self.held.take() {
            Some((task, start)) if task == span => poll_event(shared, span, start, ts, wakers),
            held => {
                self.held = held;
                self.release_held(shared);
                Event::PollEnd {
                    task: SpanId(span),
                    ts: shared.nanos(ts),
                    wakers,
                }
            }
        };
        self.emit_plain(ev);
    }

    /// A span closed: no longer live in the model, and its `Close` goes
    /// out. A close of a span not live is kept for its creation instead
    /// (see `early_closes`).
    #[inline(always)]
    pub(super) fn span_closed(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        span: u64,
        kind: wire::CloseKind,
        ts: u64,
        want: bool,
    ) {
        // Nearly always the front (see `closed_young`), taken without a
        // search.
        let young = match self.closed_young.front() {
            Some((n, _)) if n.id == span => self.closed_young.pop_front(),
            Some(_) => self
                .closed_young
                .iter()
                .position(|(n, _)| n.id == span)
                .and_then(|i| self.closed_young.remove(i)),
            None => None,
        };
        if let Some((node, home)) = young {
            if want {
                self.emit_close(shared, span, kind, ts);
            }
            self.give_back(node, home);
            return;
        }
        let Some((node, home)) = model.on_close(span) else {
            // Not live. Most often its creation is in a ring read
            // after this one (it was created on another thread): kept
            // until that record is read. Else it was closed from its
            // node after drops (this record came late), or its
            // creation was dropped: forgotten after two drains.
            if self.early_closes.len() < MAX_EARLY_CLOSES {
                self.early_closes.insert(span, (kind, ts, self.drains));
            }
            return;
        };
        if want {
            self.emit_close(shared, span, kind, ts);
        }
        self.give_back(node, home);
    }

    /// A compact span's creation (see `Capture::new_compact`): its
    /// `SpanNew`, with the task inferred from its parent as the worker
    /// did: the parent itself if a task, else the parent's task (a compact
    /// span in the model, or one this drain read).
    pub(super) fn compact_created(
        &mut self,
        model: &AwaitModel,
        id: u64,
        parent: u64,
        ts: u64,
        callsite: u32,
        want: bool,
    ) {
        // The parent is the task or a compact span (see `Slot::task` in
        // the store).
        let task = match model.spans.get(&parent).map(|l| &l.node) {
            Some(p) if p.class == SpanClass::Task => p.id,
            Some(p) => p.ctx_task,
            // A compact span this drain read (nearly always the last).
            None => self
                .open_compact
                .iter()
                .rev()
                .find(|c| c.id == parent)
                .map_or(0, |c| c.task),
        };
        if self.open_compact.len() < MAX_OPEN_COMPACT {
            self.open_compact.push(OpenCompact {
                id,
                parent,
                ts,
                task,
                callsite,
            });
        }
        if want {
            self.push_span_compact(id, parent, task, ts, callsite, Self::send_batch);
        }
    }

    /// A compact span's close: out of the open ones of this drain, or out
    /// of the model if an earlier drain put it there (`age_compact`).
    pub(super) fn compact_closed(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        span: u64,
        kind: wire::CloseKind,
        ts: u64,
        want: bool,
    ) {
        // Nearly always the last one read (spans close innermost first).
        if let Some(i) = self.open_compact.iter().rposition(|c| c.id == span) {
            self.open_compact.swap_remove(i);
        } else if model.spans.contains_key(&span) {
            // Made here by an earlier drain (`age_compact`): dropped here.
            drop(model.on_close(span));
        }
        if want {
            self.emit_close(shared, span, kind, ts);
        }
    }

    /// The compact spans whose creation this drain read and whose close
    /// it did not (nearly always: spans open after their poll) go into the
    /// model as spans still open, each with a node made here from its
    /// creation, for await-tree dumps, stall traces and the state a
    /// collector connecting late is sent.
    pub(super) fn age_compact(&mut self, shared: &Capture, model: &mut AwaitModel) {
        for c in self.open_compact.drain(..) {
            let Some(meta) = shared.callsites.meta(c.callsite) else {
                continue;
            };
            let parent = model.spans.get(&c.parent).map(|l| l.node.clone());
            let parent = (c.parent, parent);
            let node = SpanNode::of_compact(
                meta,
                c.callsite,
                c.id,
                c.ts,
                c.task,
                parent,
                shared.instance,
            );
            let created = shared.nanos(c.ts);
            model.on_span(Arc::new(node), created, u32::MAX);
        }
    }

    /// Gives a closed span's node back to the thread that made it, for its
    /// next span (see `capture::local::NODE_RETURNS`); dropped here when
    /// that thread is gone or has enough waiting.
    #[inline(always)]
    pub(super) fn give_back(&mut self, node: Arc<SpanNode>, home: u32) {
        if let Some(Some(returns)) = self.returns.get_mut(home as usize) {
            // A thread that is gone frees nothing more: the node is
            // dropped here.
            if !returns.nodes.is_abandoned() {
                let _ = returns.nodes.push(node);
            }
        }
    }

    /// Emits a `Log` event and gives its allocation back, for the next
    /// one (see `spare_log`).
    #[inline]
    fn emit_log(&mut self, log: Box<wire::Log>) -> Option<Box<wire::Log>> {
        let ev = Event::Log(log);
        self.emit(&ev);
        match ev {
            Event::Log(log) => Some(log),
            _ => None,
        }
    }

    /// Gives a log record back to the thread that made it, for its next
    /// one (see `capture::local::LOG_RETURNS`); dropped here when that
    /// thread is gone or has enough waiting.
    #[inline]
    fn give_back_log(&mut self, log: Box<RawLog>, home: u32) {
        if let Some(Some(returns)) = self.returns.get_mut(home as usize) {
            if !returns.logs.is_abandoned() {
                let _ = returns.logs.push(log);
            }
        }
    }

    /// Emits the `Close` of `span`, closed at raw time `ts` as `kind`.
    #[inline(always)]
    pub(super) fn emit_close(
        &mut self,
        shared: &Capture,
        span: u64,
        kind: wire::CloseKind,
        ts: u64,
    ) {
        self.emit_plain(Event::Close {
            span: SpanId(span),
            kind,
            ts: shared.nanos(ts),
        });
    }

    /// The end of a task's poll: its await tree, if it changed (the
    /// `TreeNode` records just read), goes to the model and, sent just
    /// before the poll's end, to the destinations.
    #[inline(always)]
    pub(super) fn poll_tree(
        &mut self,
        model: &mut AwaitModel,
        thread: u32,
        span: u64,
        tree: bool,
        want: bool,
    ) {
        if !tree {
            // The usual case: no tree, and no tree nodes left over (from a
            // poll whose end a full ring dropped) to clear.
            if let Some(p) = self.threads.get_mut(thread as usize).map(|t| &mut t.tree) {
                if p.0 != 0 || !p.1.is_empty() {
                    p.0 = 0;
                    p.1.clear();
                }
            }
            return;
        }
        self.new_poll_tree(model, thread, span, want);
    }

    /// [`Exporter::poll_tree`] when the tree changed.
    pub(super) fn new_poll_tree(
        &mut self,
        model: &mut AwaitModel,
        thread: u32,
        span: u64,
        want: bool,
    ) {
        let pending = &mut thread_reads(&mut self.threads, thread).tree;
        let mut nodes = std::mem::take(&mut pending.1);
        if pending.0 != span {
            // Its tree nodes were dropped with a full ring.
            nodes.clear();
        }
        pending.0 = 0;
        if want {
            // Encoded from the nodes in place (no event built).
            let tree = wire::PollTreeRef {
                task: SpanId(span),
                spans: &nodes,
            };
            self.push_event(&tree, Self::send_batch);
        }
        // The nodes go to the model as they are; the buffer given back is
        // the next poll's.
        model.on_tree(span, &mut nodes);
        nodes.clear();
        thread_reads(&mut self.threads, thread).tree.1 = nodes;
    }

    /// Closes whose `Close` records a full ring dropped, recovered from the
    /// span nodes (which record when and how they closed): without them a
    /// task whose close was lost stays live in every model for ever, and
    /// looks starved, stuck or without wakers.
    ///
    /// After records were dropped (`drops`, counted at the start of this
    /// drain), the live spans whose nodes say they closed become suspects;
    /// those still live at the next drain (their record, if it was pushed,
    /// has nearly always been read by then; one that comes later is not
    /// sent, see `Raw::Close` in `convert`) are closed here. The last drain
    /// closes them at once: nothing more will come.
    pub(super) fn recover_closes(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        drops: u64,
        want: bool,
    ) {
        let mut suspects = std::mem::take(&mut self.close_suspects);
        if self.stopping && drops > 0 {
            suspects = model.spans.keys().copied().collect();
            suspects.sort_unstable();
        }
        for id in suspects {
            let Some((ts, kind)) = model.spans.get(&id).and_then(|s| s.node.closed_as()) else {
                continue;
            };
            self.release_held(shared);
            if let Some((node, home)) = model.on_close(id) {
                self.give_back(node, home);
            }
            if want {
                self.emit_close(shared, id, kind, ts);
            }
        }
        if drops > self.swept_drops {
            self.swept_drops = drops;
            self.close_suspects = model
                .spans
                .iter()
                .filter(|(_, s)| s.node.closed.load(Ordering::Acquire))
                .map(|(id, _)| *id)
                .collect();
            self.close_suspects.sort_unstable();
        }
    }

    /// Sends the start of a poll that was held back (see `convert`).
    pub(super) fn release_held(&mut self, shared: &Capture) {
        if let Some((span, ts)) = self.held.take() {
            self.emit_plain(Event::Enter {
                span: SpanId(span),
                ts: shared.nanos(ts),
            });
        }
    }
}

/// What the exporter has read of one thread's polls. Poll starts are
/// (task span, raw start) pairs, span 0 for none.
#[derive(Default)]
pub(super) struct ThreadReads {
    /// The task and await tree nodes of the poll being read (they precede
    /// the record that ends it).
    pub(super) tree: (u64, Vec<(u64, u16)>),
    /// Started (its `Enter` read), not ended.
    pub(super) open: (u64, u64),
    /// The last poll that ended (task, raw start): the thread's poll slot
    /// may still show it, and an ended poll is not announced.
    pub(super) done: (u64, u64),
    /// Announced from the thread's `PollSlot` while it ran, not ended.
    pub(super) announced: (u64, u64),
    /// The fields of the small log read next (see `Raw::LogFields`).
    pub(super) fields: Option<SmallFields>,
}

/// A compact span whose creation the drain read (see
/// `Exporter::age_compact`).
pub(super) struct OpenCompact {
    pub id: u64,
    pub parent: u64,
    pub ts: u64,
    pub task: u64,
    pub callsite: u32,
}

/// Most compact spans one drain keeps open (see `Exporter::open_compact`);
/// past it a span open after its drain is missing from the model (its
/// events still go out).
pub(super) const MAX_OPEN_COMPACT: usize = 65_536;

impl ThreadReads {
    /// A whole poll (start `start`) of `span` was read: it is the last one
    /// that ended. Returns whether it had been announced (its announcement
    /// is then over).
    #[inline(always)]
    fn whole_poll_read(&mut self, span: u64, start: u64) -> bool {
        self.done = (span, start);
        let announced = self.announced == (span, start);
        if announced {
            self.announced = (0, 0);
        }
        announced
    }

    /// The end of a poll of `span` was read: the open poll, if it is that
    /// one, is the last that ended, and an announcement of it is over.
    #[inline(always)]
    fn poll_end_read(&mut self, span: u64) {
        if self.open.0 == span {
            self.done = std::mem::take(&mut self.open);
        }
        if self.announced.0 == span {
            self.announced = (0, 0);
        }
    }
}

/// The wire id of a span id, `None` for 0 (no span).
#[inline(always)]
pub(super) fn span_id(v: u64) -> Option<SpanId> {
    (v != 0).then_some(SpanId(v))
}

/// A whole poll of `task` from raw time `start` to `end`.
#[inline(always)]
pub(super) fn poll_event(shared: &Capture, task: u64, start: u64, end: u64, wakers: u32) -> Event {
    let start = shared.nanos(start);
    Event::Poll {
        task: SpanId(task),
        start,
        duration: shared.nanos(end).saturating_sub(start),
        wakers,
    }
}

/// The `locked` field of a resource's state update, if it has one.
pub(super) fn locked_field(l: &RawLog) -> Option<bool> {
    let f = l.meta.fields().field(names::LOCKED)?;
    l.fields
        .iter()
        .find(|v| v.index as usize == f.index())
        .and_then(|v| match v.value {
            wire::Value::Bool(b) => Some(b),
            _ => None,
        })
}

/// The state of `thread`, made on first sight.
#[inline]
pub(super) fn thread_reads(threads: &mut Vec<ThreadReads>, thread: u32) -> &mut ThreadReads {
    let i = thread as usize;
    if i >= threads.len() {
        threads.resize_with(i + 1, Default::default);
    }
    &mut threads[i]
}
