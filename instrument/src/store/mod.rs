//! awaitscope's own span store: the subscriber [`crate::init`] installs.
//!
//! `tracing_subscriber`'s registry keeps every span's data for any layer,
//! and pays for it on every enter and exit: a thread-local span stack
//! (searched for duplicates), and a reference-count increment and decrement
//! on the span's slab entry (two atomic read-modify-writes on a line other
//! threads touch). On a poll-heavy program that is a third of awaitscope's
//! cost. The capture layer already keeps, per thread, the stack of entered
//! spans and a cache from span id to node; this store adds only what a
//! subscriber must have besides: span ids, reference counts for span
//! handles (touched when a handle is cloned or dropped, not per enter), the
//! current span, and the log output (see [`log`]).
//!
//! Spans live in the store's [`slots`]: ids carry the slot's generation,
//! so a stale id (tokio's waker events name tasks that may have ended)
//! finds nothing instead of another span; a span's slot comes from the
//! creating thread's own free list and goes back there without a lock
//! from whichever thread closes it. Enter and exit do not touch the slots
//! when the thread's cache knows the span.
//!
//! Poll-local spans (see [`local_spans`]): a span of the program made
//! inside a poll, without fields, whose parent is the task or another such
//! span of the same task (most `#[instrument]` spans of a request
//! handler), does not take a slot at all: it lives in a table of its
//! thread's own, where its creation, references and close are plain
//! stores and a compare-exchange on lines that thread alone writes, and
//! takes a slot, as a compact span, only if it outlives its poll or
//! something asks for its node. Ids with the top bit set name them.
//!
//! Compact spans: a span of the program made inside a poll, without
//! fields, whose parent is the task or another compact span (a promoted
//! poll-local span, or one made where the thread's table was full), gets
//! no node. Its slot keeps what its node would be made of, its creation
//! goes to the exporter as a compact record, and a node is made only when
//! something asks the store for one (a child with a node, an event, a
//! causal trace, a later poll's enter). A node is made on the worker and read and given back by
//! the exporter's thread; for a span that lives within one poll, that trip
//! between the cores cost more than everything else awaitscope does for
//! it. Under the layer on the registry every span has a node.
//!
//! What is lost against the registry: other `tracing_subscriber` layers
//! cannot be added (no `LookupSpan`), and so `tracing-error`'s `SpanTrace`
//! captures nothing under it ([`crate::CausalTrace`] does). For either,
//! compose with [`crate::builder`].

mod local_spans;
pub(crate) mod log;
pub(crate) mod slots;

use std::any::TypeId;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tracing_core::span::{Attributes, Current, Id, Record};
use tracing_core::{Event, Interest, LevelFilter, Metadata, Subscriber};

use crate::capture::callsite::Class;
use crate::capture::local::with_local;
use crate::capture::Capture;
use crate::causal::SpanFinder;
use crate::span_node::SpanNode;
use local_spans::{is_local, Counted, Decoded, LocalTables, Promotion, Seen, Table};
use slots::Slots;

/// One span in the store.
struct Slot {
    meta: &'static Metadata<'static>,
    /// `None` only when the span was created on a thread being torn down.
    node: Option<Arc<SpanNode>>,
    /// Span handles (`Span` values and children) referring to it, when it
    /// has no node (else they are counted on the node: see
    /// [`Slot::refs`]).
    refs: AtomicUsize,
    /// The parent, on which this span holds a reference.
    parent: Option<Id>,
    /// A compact span (made inside a poll without a node, see
    /// [`Capture::new_compact`]): its id on the wire (0: not compact), its
    /// creation time and the task whose poll made it, what its node is
    /// made of if something asks for one.
    compact: u64,
    compact_ts: u64,
    compact_task: u64,
    /// A compact span's node: where it stands ([`NO_NODE`], [`MAKING`],
    /// [`MADE`], [`CLOSED`]) and, once [`MADE`], the node. The close and
    /// the making of the node each move `state` from [`NO_NODE`] with one
    /// compare-exchange: whichever comes first decides, so that no node
    /// is made for a span whose close went out, and a node made is marked
    /// closed by the close (see [`AwaitscopeSubscriber::node_of_compact`]
    /// and `try_close`). The close, the common case, costs one
    /// compare-exchange on a line its thread wrote.
    state: AtomicU8,
    late: std::sync::OnceLock<Arc<SpanNode>>,
    /// A promoted poll-local span (see [`local_spans`]): the id `tracing`
    /// has for it, whose table entry is freed with this slot; else 0.
    local: u64,
}

/// [`Slot::state`]: a compact span without a node (or not compact).
const NO_NODE: u8 = 0;
/// [`Slot::state`]: a thread is making the node.
const MAKING: u8 = 1;
/// [`Slot::state`]: the node is in [`Slot::late`].
const MADE: u8 = 2;
/// [`Slot::state`]: the span closed without a node; none is made.
const CLOSED: u8 = 3;

impl Slot {
    /// The count of the span's handles: on its node
    /// ([`SpanNode::store_refs`]), or here when it has none.
    #[inline]
    fn refs(&self) -> &AtomicUsize {
        match &self.node {
            Some(node) => &node.store_refs,
            None => &self.refs,
        }
    }

    /// The span's id on the wire (0: none, a span made on a thread being
    /// torn down).
    #[inline]
    fn sid(&self) -> u64 {
        match &self.node {
            Some(node) => node.id,
            None => self.compact,
        }
    }

    /// The task a compact span made inside this one belongs to, as the
    /// exporter infers it (see `Exporter::compact_created`): this span if
    /// it is a task, the task of this span if it is compact; 0 for any
    /// other span, whose creation the exporter may not have in its model
    /// when it reads the child's (a span closed by then is kept apart):
    /// its children get nodes.
    #[inline]
    fn task(&self) -> u64 {
        match &self.node {
            Some(n) if n.class == awaitscope_wire::SpanClass::Task => n.id,
            Some(_) => 0,
            None => self.compact_task,
        }
    }
}

/// Gives back one reference; true if it was the last.
#[inline]
fn release(refs: &AtomicUsize) -> bool {
    refs.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1)) == Ok(1)
}

/// awaitscope's own subscriber, the one [`crate::init`] installs: the
/// capture, a span store cheaper than `tracing_subscriber`'s registry, and
/// the `RUST_LOG` log output. Get one from
/// [`crate::Builder::try_build_subscriber`]
/// to install it yourself (`tracing::subscriber::set_global_default`, or
/// [`crate::scoped_dispatch`] for a scoped default). It takes no other layers:
/// for that, use [`crate::AwaitscopeLayer`] in a `tracing_subscriber` stack.
pub struct AwaitscopeSubscriber {
    capture: Arc<Capture>,
    spans: Slots<Slot>,
    /// Spans made and, nearly always, closed within one poll.
    local: LocalTables,
    log: log::LogOutput,
}

/// The store's [`SpanFinder`]: the current span's node, from the store.
static STORE_FINDER: SpanFinder = SpanFinder(|d| {
    let node = d
        .downcast_ref::<AwaitscopeSubscriber>()
        .and_then(AwaitscopeSubscriber::current_node);
    crate::capture::here(node)
});

/// The store's key of a span id.
#[inline]
fn key(id: &Id) -> u64 {
    id.into_u64()
}

/// The id returned when the store is full: no span has it (see
/// [`slots::MAX_SLOTS`]), so everything done with it is a no-op.
const NO_SPAN: u64 = u64::MAX;

/// What a span id names (see [`AwaitscopeSubscriber::named`]).
enum Named<'a> {
    /// A span in the slots, by its key there (a promoted poll-local span's
    /// included).
    Store(u64),
    /// A poll-local span (of this thread's table or another's).
    Local(&'a Table, Decoded),
    Nothing,
}

impl AwaitscopeSubscriber {
    pub(crate) fn new(capture: Arc<Capture>, log: log::LogOutput) -> Self {
        Self {
            capture,
            spans: Slots::new(),
            local: LocalTables::new(),
            log,
        }
    }

    /// A store of at most `spans` open spans (tests of a full store).
    #[cfg(test)]
    fn with_capacity(capture: Arc<Capture>, log: log::LogOutput, spans: u32) -> Self {
        Self {
            capture,
            spans: Slots::with_capacity(spans),
            local: LocalTables::new(),
            log,
        }
    }

    /// What the id `id` names: a span in the slots (its key there), a
    /// poll-local span, or nothing.
    #[inline]
    fn named(&self, id: u64) -> Named<'_> {
        if !is_local(id) {
            return Named::Store(id);
        }
        let d = Decoded::of(id);
        let Some(t) = self.local.table(d.table) else {
            return Named::Nothing;
        };
        match t.seen(d) {
            None => Named::Nothing,
            Some(Seen::Store(s)) => Named::Store(s),
            Some(Seen::Local) => Named::Local(t, d),
        }
    }

    /// The slot of the span `id`, promoting it first if it is poll-local.
    fn slot(&self, id: &Id) -> Option<slots::Guard<'_, Slot>> {
        match self.named(key(id)) {
            Named::Store(s) => self.spans.get(s),
            Named::Local(t, d) => self.spans.get(self.promote(t, d)?),
            Named::Nothing => None,
        }
    }

    /// The node of the span with id `id`, if it is open. A poll-local span
    /// is promoted to get one.
    #[inline]
    pub(crate) fn node(&self, id: &Id) -> Option<Arc<SpanNode>> {
        let slot = self.slot(id)?;
        match &slot.node {
            Some(n) => Some(n.clone()),
            None if slot.compact != 0 => self.node_of_compact(&slot),
            None => None,
        }
    }

    /// The node of a compact span, made now if it has none yet; `None`
    /// once it closed without one.
    #[cold]
    fn node_of_compact(&self, slot: &Slot) -> Option<Arc<SpanNode>> {
        match slot
            .state
            .compare_exchange(NO_NODE, MAKING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                let parent = slot.parent.as_ref().and_then(|p| self.node(p));
                let node = self.capture.compact_node(
                    slot.meta,
                    slot.compact,
                    slot.compact_ts,
                    slot.compact_task,
                    parent,
                );
                let _ = slot.late.set(node.clone());
                slot.state.store(MADE, Ordering::Release);
                Some(node)
            }
            Err(CLOSED) => None,
            Err(_) => Self::made(slot).cloned(),
        }
    }

    /// The node of a compact span that another thread is making or made:
    /// waits for it (the making is a few allocations and stores).
    fn made(slot: &Slot) -> Option<&Arc<SpanNode>> {
        while slot.state.load(Ordering::Acquire) == MAKING {
            std::hint::spin_loop();
        }
        slot.late.get()
    }

    /// A span made poll-local (see [`local_spans`]), if it can be: inside
    /// a poll, its parent the task or a poll-local span of the same task
    /// (its reference then taken if it is still poll-local), a free entry
    /// in this thread's table.
    #[inline]
    fn new_local(&self, attrs: &Attributes<'_>) -> Option<Id> {
        let t = self.local.mine()?;
        let mut made = None;
        let (id, sid, ts) = self.capture.new_local(attrs, |p| {
            let (idx, id) = t.take()?;
            let holds_parent = if p.is_task {
                Some(false)
            } else {
                self.local_parent(p.reg, p.task)
            };
            let Some(holds_parent) = holds_parent else {
                t.untake(idx);
                return None;
            };
            made = Some((idx, p.reg, p.task, holds_parent));
            Some(id)
        })?;
        let (idx, parent, task, holds_parent) = made?;
        t.fill(
            idx,
            local_spans::Span {
                meta: attrs.metadata(),
                sid,
                ts,
                task,
                parent,
                holds_parent,
            },
        );
        Some(Id::from_u64(id))
    }

    /// Whether a span made under `parent` (entered on this thread, not the
    /// task) in a poll of `task` can be poll-local: `Some(true)` if the
    /// parent is a poll-local span of that task (a reference on it is
    /// taken), `Some(false)` if it is a promoted one (none is taken while
    /// the child is poll-local: the parent is entered here, so open),
    /// `None` otherwise.
    #[inline]
    fn local_parent(&self, parent: u64, task: u64) -> Option<bool> {
        if !is_local(parent) {
            return None;
        }
        let d = Decoded::of(parent);
        let t = self.local.table(d.table)?;
        if t.span(d)?.task != task {
            return None;
        }
        match t.count(d, true) {
            Counted::Local(_) => Some(true),
            Counted::Store(_) => Some(false),
            Counted::Gone => None,
        }
    }

    /// Promotes the poll-local span `d` of table `t` (and its poll-local
    /// parents) to the slots, from any thread; returns its key there.
    /// `None` when it closed, or when the store is full (it stays
    /// poll-local).
    fn promote(&self, t: &Table, d: Decoded) -> Option<u64> {
        let refs = match t.begin_promote(d) {
            Promotion::Mine(refs) => refs,
            Promotion::Done(key) => return Some(key),
            Promotion::Gone => return None,
        };
        let Some(span) = t.span(d) else {
            t.abort_promote(d);
            return None;
        };
        let parent = Id::from_u64(span.parent);
        let parent = if span.holds_parent {
            // Its reference, counted in the parent's entry, moves with the
            // parent's count to the parent's slot.
            let pd = Decoded::of(span.parent);
            if t.is_local(pd) && self.promote(t, pd).is_none() {
                t.abort_promote(d);
                return None;
            }
            Some(parent)
        } else {
            self.add_ref(&parent).then_some(parent)
        };
        let Some(entry) = self.spans.vacant() else {
            if let (false, Some(p)) = (span.holds_parent, parent) {
                self.try_close(p);
            }
            t.abort_promote(d);
            return None;
        };
        let key = entry.id();
        entry.insert(Slot {
            meta: span.meta,
            node: None,
            refs: AtomicUsize::new(refs as usize),
            parent,
            compact: span.sid,
            compact_ts: span.ts,
            compact_task: span.task,
            state: AtomicU8::new(NO_NODE),
            late: std::sync::OnceLock::new(),
            local: d.id(),
        });
        t.end_promote(d, key);
        Some(key)
    }

    /// The poll-local span `d` of table `t` closed (its last reference
    /// given back here): its close goes out and its entry is free. Returns
    /// the poll-local parent it referred to, to give back next.
    #[inline]
    fn close_local(&self, t: &Table, d: Decoded, id: &Id) -> Option<Id> {
        let span = t.span(d);
        if let Some(span) = &span {
            self.capture.close_compact(id.into_u64(), span.sid, None);
        }
        let own = self.local.leased().is_some_and(|m| std::ptr::eq(m, t));
        t.release(d, own);
        span.filter(|s| s.holds_parent)
            .map(|s| Id::from_u64(s.parent))
    }

    /// A poll may have ended on this thread: the poll-local spans it made
    /// for a task no longer polled here are promoted (they outlive their
    /// poll), and those closed or promoted elsewhere are no longer looked
    /// at.
    #[cold]
    fn poll_may_have_ended(&self, t: &Table) {
        let task = self.capture.current_task();
        let mut open = t.open_mask();
        while open != 0 {
            let idx = open.trailing_zeros() as usize;
            open &= open - 1;
            let d = t.decoded(idx);
            match t.span(d) {
                Some(span) if t.is_local(d) => {
                    if span.task != task {
                        self.promote(t, d);
                        t.forget(idx);
                    }
                }
                _ => t.forget(idx),
            }
        }
    }

    /// The span `id` of the slots lost its last reference on this thread,
    /// while poll-local spans made under it here may be open: those took no
    /// reference on it (see [`Self::local_parent`]). They are promoted,
    /// taking one each, so that it stays open until they close, as a parent
    /// does. Returns whether it stays open.
    #[inline]
    fn kept_open_by_local_children(&self, id: &Id, slot: &Slot) -> bool {
        let Some(t) = self.local.leased() else {
            return false;
        };
        if t.open_mask() == 0 {
            return false;
        }
        self.promote_children(t, id.into_u64());
        slot.refs().load(Ordering::Acquire) > 0
    }

    #[cold]
    fn promote_children(&self, t: &Table, parent: u64) {
        let mut open = t.open_mask();
        while open != 0 {
            let idx = open.trailing_zeros() as usize;
            open &= open - 1;
            let d = t.decoded(idx);
            if t.span(d)
                .is_some_and(|s| s.parent == parent && !s.holds_parent)
                && t.is_local(d)
            {
                self.promote(t, d);
                t.forget(idx);
            }
        }
    }

    /// A promoted poll-local span's slot is gone: its table entry is free.
    fn free_promoted(&self, local: u64) {
        let d = Decoded::of(local);
        if let Some(t) = self.local.table(d.table) {
            let own = self.local.leased().is_some_and(|m| std::ptr::eq(m, t));
            t.release(d, own);
        }
    }

    /// Id of the span current on this thread.
    fn current_id(&self) -> Option<Id> {
        let reg = with_local(&self.capture, |l| l.current_reg())?;
        (reg != 0).then(|| Id::from_u64(reg))
    }

    /// The node of the span current on this thread.
    pub(crate) fn current_node(&self) -> Option<Arc<SpanNode>> {
        self.node(&self.current_id()?)
    }

    /// Whether the capture or the log output wants spans or events of
    /// `meta`. Spans the span filter rejects are not wanted (the log output
    /// prints the spans the capture keeps).
    fn wants(&self, meta: &'static Metadata<'static>) -> bool {
        self.capture.callsites.get(meta).class != Class::Ignored
            || (!meta.is_span() && self.log.enabled(meta))
    }

    /// Takes a reference on the span `id`; false if it is not open.
    fn add_ref(&self, id: &Id) -> bool {
        let key = match self.named(key(id)) {
            Named::Store(s) => s,
            Named::Local(t, d) => match t.count(d, true) {
                Counted::Local(_) => return true,
                Counted::Store(s) => s,
                Counted::Gone => return false,
            },
            Named::Nothing => return false,
        };
        match self.spans.get(key) {
            Some(slot) => {
                slot.refs().fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The spans around an event, outermost first, for the log output.
    fn event_spans(&self, event: &Event<'_>) -> Vec<Arc<SpanNode>> {
        let leaf = self.event_span(event);
        let mut chain: Vec<Arc<SpanNode>> =
            std::iter::successors(leaf, |n| n.parent.clone()).collect();
        chain.reverse();
        chain
    }

    /// The span an event happened in: explicit, contextual or none.
    fn event_span(&self, event: &Event<'_>) -> Option<Arc<SpanNode>> {
        if event.is_root() {
            None
        } else if let Some(parent) = event.parent() {
            self.node(parent)
        } else {
            self.current_node()
        }
    }
}

impl Subscriber for AwaitscopeSubscriber {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.capture.callsites.register(meta);
        // Events nobody wants, and spans the span filter rejects, are
        // skipped by `tracing` itself, at the callsite (this is the only
        // subscriber): they cost what they cost without a subscriber.
        if self.wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        // Reached only for callsites whose interest was `sometimes`: this
        // subscriber never answers that, but beside another dispatch
        // (`scoped_dispatch`) tracing-core combines the answers into it.
        // Answers as `register_callsite` does (`wants`): tokio's TRACE
        // waker and resource events included.
        self.capture.callsites.captures(meta) || (!meta.is_span() && self.log.enabled(meta))
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // tokio's task, waker and resource instrumentation is at TRACE.
        Some(LevelFilter::TRACE)
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let contextual = !attrs.is_root() && attrs.parent().is_none();
        if contextual && attrs.values().is_empty() {
            if let Some(id) = self.new_local(attrs) {
                return id;
            }
        }
        let parent = if attrs.is_root() {
            None
        } else if let Some(p) = attrs.parent() {
            Some(p.clone())
        } else {
            self.current_id()
        };
        // One lookup of the parent: its reference taken, its node kept.
        let (parent, parent_node, parent_sid, parent_task, parent_compact) =
            match parent.and_then(|p| Some((self.slot(&p)?, p))) {
                Some((slot, p)) => {
                    slot.refs().fetch_add(1, Ordering::Relaxed);
                    let compact = slot.compact != 0;
                    (Some(p), slot.node.clone(), slot.sid(), slot.task(), compact)
                }
                None => (None, None, 0, 0, false),
            };
        let Some(entry) = self.spans.vacant() else {
            // The store is full (billions of open spans): the span is not
            // stored, and the reference taken on its parent is given back.
            if let Some(p) = parent {
                self.try_close(p);
            }
            return Id::from_u64(NO_SPAN);
        };
        let id = Id::from_u64(entry.id());
        // A compact span hangs from the task or from a compact span
        // (`Slot::task`).
        if contextual && parent_task != 0 {
            if let Some((sid, ts)) = self
                .capture
                .new_compact(attrs, &id, parent_sid, parent_task)
            {
                entry.insert(Slot {
                    meta: attrs.metadata(),
                    node: None,
                    refs: AtomicUsize::new(1),
                    parent,
                    compact: sid,
                    compact_ts: ts,
                    compact_task: parent_task,
                    state: AtomicU8::new(NO_NODE),
                    late: std::sync::OnceLock::new(),
                    local: 0,
                });
                return id;
            }
        }
        // A compact parent gets its node now: this span's node points to
        // it.
        let parent_node = match (parent_node, &parent) {
            (None, Some(p)) if parent_compact => self.node(p),
            (n, _) => n,
        };
        // A contextual parent is the current span: no second lookup.
        let current = (!contextual).then_some(|| self.current_node());
        let node = self.capture.new_span(attrs, &id, || parent_node, current);
        entry.insert(Slot {
            meta: attrs.metadata(),
            node,
            refs: AtomicUsize::new(1),
            parent,
            compact: 0,
            compact_ts: 0,
            compact_task: 0,
            state: AtomicU8::new(NO_NODE),
            late: std::sync::OnceLock::new(),
            local: 0,
        });
        id
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(node) = self.node(span) {
            self.capture.record(&node, values);
        }
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        if let (Some(a), Some(b)) = (self.node(span), self.node(follows)) {
            self.capture.follows_from(&a, &b);
        }
    }

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if self.log.enabled(meta) {
            self.log.write(event, &self.event_spans(event));
        }
        self.capture
            .event(event, || self.event_span(event), |id| self.node(id));
    }

    #[inline]
    fn enter(&self, span: &Id) {
        self.capture.enter(span, || self.node(span));
    }

    #[inline]
    fn exit(&self, span: &Id) {
        self.capture.exit(span);
        // A poll that ends (a task span's exit) takes its poll-local spans
        // still open out of the table (see `local_spans`).
        if !is_local(key(span)) {
            if let Some(t) = self.local.leased() {
                if t.open_mask() != 0 {
                    self.poll_may_have_ended(t);
                }
            }
        }
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.add_ref(id);
        id.clone()
    }

    fn try_close(&self, id: Id) -> bool {
        // Closing a span gives back its reference on its parent, which may
        // close that one too: iterate rather than recurse. `given`: the
        // reference on `next` was given back already (through the closed
        // child's node), only its close is left.
        let mut next = Some(id);
        let mut given = false;
        let mut closed = 0;
        while let Some(id) = next.take() {
            let key = match self.named(key(&id)) {
                Named::Store(s) => s,
                Named::Local(t, d) => match t.count(d, false) {
                    Counted::Local(0) => {
                        // Closed while poll-local; the poll-local parent it
                        // referred to is given back next.
                        next = self.close_local(t, d, &id);
                        closed += 1;
                        continue;
                    }
                    Counted::Local(_) | Counted::Gone => break,
                    // Promoted: its references are counted in its slot.
                    Counted::Store(s) => s,
                },
                Named::Nothing => break,
            };
            let Some(slot) = self.spans.get(key) else {
                break;
            };
            if !std::mem::take(&mut given) && !release(slot.refs()) {
                break;
            }
            if self.kept_open_by_local_children(&id, &slot) {
                break;
            }
            if let Some(node) = &slot.node {
                self.capture.close(id.into_u64(), node);
            } else if slot.compact != 0 {
                // No node is made after this (see `Slot::state`).
                let node = match slot.state.compare_exchange(
                    NO_NODE,
                    CLOSED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => None,
                    Err(_) => Self::made(&slot),
                };
                self.capture
                    .close_compact(id.into_u64(), slot.compact, node.map(|n| &**n));
            }
            next = slot.parent.clone();
            // A parent with a node is the node's parent (see `new_span`):
            // its reference is given back there, and it is looked up only
            // when that was its last. A compact parent counts its
            // references on its slot.
            if let (Some(_), Some(parent)) = (
                &next,
                slot.node
                    .as_ref()
                    .and_then(|n| n.parent.as_ref())
                    .filter(|p| !p.compact),
            ) {
                if !release(&parent.store_refs) {
                    next = None;
                }
                given = true;
            }
            let local = slot.local;
            slot.remove();
            if local != 0 {
                self.free_promoted(local);
            }
            closed += 1;
        }
        // The loop stops at the first span not closed: `id` closed if any.
        closed > 0
    }

    /// The store itself, or its `SpanFinder` (how causal traces find the
    /// current span's node in this store).
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else if id == TypeId::of::<SpanFinder>() {
            Some(&STORE_FINDER as *const SpanFinder as *const ())
        } else {
            None
        }
    }

    fn current_span(&self) -> Current {
        let meta = |id: &Id| match self.named(key(id)) {
            Named::Store(s) => Some(self.spans.get(s)?.meta),
            Named::Local(t, d) => Some(t.span(d)?.meta),
            Named::Nothing => None,
        };
        match self.current_id().and_then(|id| Some((meta(&id)?, id))) {
            Some((meta, id)) => Current::new(id, meta),
            None => Current::none(),
        }
    }
}

impl std::fmt::Debug for AwaitscopeSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitscopeSubscriber")
            .field("instance", &self.capture.instance)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full store: a new span gets the id no span has (and gives back
    /// the reference it took on its parent), everything done with it is a
    /// no-op, and a slot freed is used again.
    #[test]
    fn a_full_store_gives_spans_no_slot() {
        let sub =
            AwaitscopeSubscriber::with_capacity(Capture::new(1024), log::LogOutput::from_env(), 2);
        let dispatch = tracing::Dispatch::new(sub);
        tracing::dispatcher::with_default(&dispatch, || {
            let store = || {
                dispatch
                    .downcast_ref::<AwaitscopeSubscriber>()
                    .expect("the store")
            };
            let parent = tracing::info_span!("parent");
            let child = tracing::info_span!(parent: &parent, "child");
            let (p, c) = (parent.id().unwrap(), child.id().unwrap());
            assert!(store().node(&p).is_some() && store().node(&c).is_some());
            let over = tracing::info_span!(parent: &parent, "over");
            assert_eq!(over.id().map(|i| i.into_u64()), Some(NO_SPAN));
            let clone = over.clone();
            over.in_scope(|| tracing::info!(n = 1, "inside"));
            over.record("n", 2);
            drop((over, clone));
            // The parent's reference taken for `over` was given back: the
            // parent closes with its handle and its child's.
            drop((child, parent));
            assert!(store().node(&c).is_none() && store().node(&p).is_none());
            let next = tracing::info_span!("next");
            let n = next.id().unwrap();
            assert_ne!(n.into_u64(), NO_SPAN);
            assert!(store().node(&n).is_some());
            assert!(store().node(&p).is_none(), "the old id finds nothing");
        });
    }
}
