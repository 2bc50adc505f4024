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
//! Compact spans: a span of the program made inside a poll, without
//! fields, whose parent is the task or another compact span (most
//! `#[instrument]` spans of a request handler), gets no node. Its slot
//! keeps what its node would be made of, its creation goes to the exporter
//! as a compact record, and a node is made only when something asks the
//! store for one (a child with a node, an event, a causal trace, a later
//! poll's enter). A node is made on the worker and read and given back by
//! the exporter's thread; for a span that lives within one poll, that trip
//! between the cores cost more than everything else awaitscope does for
//! it. Under the layer on the registry every span has a node.
//!
//! What is lost against the registry: other `tracing_subscriber` layers
//! cannot be added (no `LookupSpan`), and so `tracing-error`'s `SpanTrace`
//! captures nothing under it ([`crate::CausalTrace`] does). For either,
//! compose with [`crate::builder`].

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

impl AwaitscopeSubscriber {
    pub(crate) fn new(capture: Arc<Capture>, log: log::LogOutput) -> Self {
        Self {
            capture,
            spans: Slots::new(),
            log,
        }
    }

    /// A store of at most `spans` open spans (tests of a full store).
    #[cfg(test)]
    fn with_capacity(capture: Arc<Capture>, log: log::LogOutput, spans: u32) -> Self {
        Self {
            capture,
            spans: Slots::with_capacity(spans),
            log,
        }
    }

    /// The node of the span with id `id`, if it is open.
    #[inline]
    pub(crate) fn node(&self, id: &Id) -> Option<Arc<SpanNode>> {
        let slot = self.spans.get(key(id))?;
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
        match self.spans.get(key(id)) {
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
        let parent = if attrs.is_root() {
            None
        } else if let Some(p) = attrs.parent() {
            Some(p.clone())
        } else {
            self.current_id()
        };
        // One lookup of the parent: its reference taken, its node kept.
        let (parent, parent_node, parent_sid, parent_task, parent_compact) =
            match parent.and_then(|p| Some((self.spans.get(key(&p))?, p))) {
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
            let Some(slot) = self.spans.get(key(&id)) else {
                break;
            };
            if !std::mem::take(&mut given) && !release(slot.refs()) {
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
            slot.remove();
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
        match self
            .current_id()
            .and_then(|id| Some((self.spans.get(key(&id))?.meta, id)))
        {
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
