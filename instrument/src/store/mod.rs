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
//! What is lost against the registry: other `tracing_subscriber` layers
//! cannot be added (no `LookupSpan`), and so `tracing-error`'s `SpanTrace`
//! captures nothing under it ([`crate::CausalTrace`] does). For either,
//! compose with [`crate::builder`].

pub(crate) mod log;
pub(crate) mod slots;

use std::any::TypeId;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

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
        self.spans.get(key(id))?.node.clone()
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
        let (parent, parent_node) = match parent.and_then(|p| Some((self.spans.get(key(&p))?, p))) {
            Some((slot, p)) => {
                slot.refs().fetch_add(1, Ordering::Relaxed);
                (Some(p), slot.node.clone())
            }
            None => (None, None),
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
        // A contextual parent is the current span: no second lookup.
        let current = (!contextual).then_some(|| self.current_node());
        let node = self.capture.new_span(attrs, &id, || parent_node, current);
        entry.insert(Slot {
            meta: attrs.metadata(),
            node,
            refs: AtomicUsize::new(1),
            parent,
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
            }
            next = slot.parent.clone();
            // A parent with a node is the node's parent (see `new_span`):
            // its reference is given back there, and it is looked up only
            // when that was its last.
            if let (Some(_), Some(parent)) =
                (&next, slot.node.as_ref().and_then(|n| n.parent.as_ref()))
            {
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
