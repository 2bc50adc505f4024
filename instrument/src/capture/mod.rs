//! The capture layer: a `tracing_subscriber::Layer` that records tasks,
//! polls, wakes, spans, events and tokio resources into per-thread rings.
//!
//! The per-poll path (enter and exit of task spans and of spans inside
//! polls) takes no lock shared between threads, allocates nothing and makes
//! no syscall. Entering a span finds its node in a per-thread cache keyed by
//! registry id (the registry is looked up only on a miss), or, inside a
//! poll, in the task's record of its previous poll; exits pop the thread's
//! own stack. A poll records one entry in the thread's ring when it ends
//! (its start and end, clock readings from the TSC where available), or an
//! enter and an exit when something else is recorded during it; the spans
//! entered inside it only extend the poll's await tree, which is recorded
//! when it changes (see [`local`]).

pub(crate) mod callsite;
pub(crate) mod fields;
pub(crate) mod local;
pub(crate) mod record;
pub(crate) mod small_fields;
pub(crate) mod wait_stack;

use std::any::TypeId;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use awaitscope_wire::{CloseKind, SpanClass};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Interest, Metadata, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::causal::{self, CausalTrace, Here, SpanFinder};
use crate::names;
use crate::span_node::{NodeParts, SpanNode};
use callsite::{Callsites, Class};
use fields::{FieldRecorder, WakerVisitor};
use local::with_local;
use record::{Raw, RawLog};
use small_fields::SmallFields;

/// What the layer keeps in each span's registry extensions.
pub(crate) struct SpanData {
    /// The span's node: its stable id, class and identity for causal traces.
    pub node: Arc<SpanNode>,
}

/// Where the current thread is, given the current span's node: that node
/// and the task its capture sees polled on this thread (for causal traces).
pub(crate) fn here(span: Option<Arc<SpanNode>>) -> Here {
    let task = span
        .as_ref()
        .and_then(|s| local::current_task_node(s.instance));
    Here { span, task }
}

/// The layer's [`SpanFinder`]: the current span's node, from the
/// extensions of `tracing_subscriber`'s registry under the layer.
static LAYER_FINDER: SpanFinder = SpanFinder(|d| {
    let node = d.current_span().id().and_then(|id| {
        let registry = d.downcast_ref::<tracing_subscriber::Registry>()?;
        let span = registry.span(id)?;
        let ext = span.extensions();
        ext.get::<SpanData>().map(|d| d.node.clone())
    });
    here(node)
});

/// The consumer half of one thread's ring, held by the exporter.
pub(crate) struct Ring {
    pub consumer: rtrb::Consumer<Raw>,
    /// Records the thread dropped because this ring was full.
    pub dropped: Arc<AtomicU64>,
    /// The thread's poll in progress (shared by the thread's rings).
    pub poll: Arc<local::PollSlot>,
    pub thread: u32,
    pub name: Option<String>,
    /// The first ring of a thread carries the exporter's end of the
    /// thread's returns (nodes, see [`local::NODE_RETURNS`]; log records,
    /// see [`local::LOG_RETURNS`]); the exporter keeps it by thread.
    pub returns: Option<local::Returns>,
}

/// One capture: the state that a layer (or awaitscope's own subscriber),
/// the threads it records on and its exporter share: callsites, span ids,
/// the rings threads register, the clock and the rings' growth budget. The
/// layer and the subscriber call its capture hooks (`new_span`, `enter`,
/// `exit`, `event`...).
pub(crate) struct Capture {
    pub instance: u64,
    /// Span ids not handed out yet: threads take them in blocks (see
    /// [`Local::next_span_id`]).
    span_ids: SpanIds,
    next_thread: AtomicU32,
    pub callsites: Callsites,
    /// Rings of threads that recorded; new ones are appended here and taken
    /// by the exporter.
    pub new_rings: Mutex<Vec<Ring>>,
    /// Records dropped because a ring was full (or the thread was exiting).
    pub buffer_full: AtomicU64,
    pub clock: quanta::Clock,
    /// When `clock` reads the CPU's time-stamp counter: nanoseconds per
    /// 2^40 ticks, as `clock` converts them. [`Capture::raw`] then reads the
    /// counter inline (quanta's `Clock::raw` is not inlined across crates
    /// and matches on its clock kind at every read), and
    /// [`Capture::delta_nanos`] converts with one multiply and a shift (the
    /// exporter converts two or three readings per event; quanta's
    /// `delta_as_nanos` matches on the clock kind and calls out each time).
    tsc_scale: Option<u64>,
    /// Raw clock reading at the process origin (ns 0 on the wire).
    pub origin_raw: u64,
    /// Largest ring a thread may grow to (slots).
    pub ring_capacity: usize,
    /// A poll at least this long (ns) sends its await tree whole, the
    /// spans that closed during it included: where a long poll spent its
    /// time is told from them when no stall of it was seen. A shorter
    /// poll's tree leaves them out (see `Local::send_tree`). Default
    /// [`WHOLE_TREE`]; `AWAITSCOPE_WHOLE_TREE`.
    pub whole_tree_ns: u64,
    /// Slots the rings of all threads may still grow by, together: growth
    /// takes from it and a thread's exit gives back. Bounds the rings'
    /// memory however many threads outrun the exporter at once.
    ring_budget: AtomicUsize,
    /// The exporter thread, once it runs: unparked by a thread whose ring
    /// is three quarters full (drain on demand) and by the guard's
    /// requests.
    exporter: OnceLock<std::thread::Thread>,
    /// Times a thread woke the exporter because its ring was three quarters
    /// full.
    pub on_demand_wakes: AtomicU64,
    /// The native stacks taken where tasks go to wait.
    pub wait_stacks: wait_stack::WaitStacks,
    /// The exporter sleeps a whole idle tick, no poll running at its last
    /// look: the next poll to start wakes it (see [`Capture::poll_started`]).
    /// On a line of its own: read at every poll's start, written only when
    /// the exporter goes to sleep idle and by that one wake.
    idle_watch: IdleWatch,
}

/// The next block of span ids ([`Capture::take_span_ids`]), alone on its
/// cache line: what shares a line with it (the capture's instance, read by
/// every hook, the clock's scale, read at every timestamp) would move
/// between the cores at each block taken.
#[repr(align(64))]
struct SpanIds(AtomicU64);

/// Span ids a thread takes at once. A span id taken from a counter shared
/// by all threads at each span's creation moved that counter's cache line
/// between the workers once per span (a server's per-request span: once
/// per request); taken in blocks, once per this many spans of a thread.
/// Ids stay unique within the capture, no longer in order of creation
/// across threads.
pub(crate) const SPAN_ID_BLOCK: u64 = 64;

/// [`Capture::idle_watch`]'s flag, alone on its cache line.
#[repr(align(64))]
#[derive(Default)]
struct IdleWatch(AtomicBool);

/// Slots of a thread's first ring; it grows (x4) when it overflows, up to
/// `Capture::ring_capacity`.
pub(crate) const INITIAL_RING: usize = 4096;

/// The rings of all threads together grow by at most this many times
/// `Capture::ring_capacity` slots beyond their first rings: with the default
/// capacity, 32 MiB.
pub(crate) const RING_BUDGET_FACTOR: usize = 2;

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

impl Capture {
    /// A capture keeping every span.
    #[cfg(test)]
    pub fn new(ring_capacity: usize) -> Arc<Self> {
        let whole = WHOLE_TREE.as_nanos() as u64;
        Self::with_span_filter(ring_capacity, crate::filter::SpanFilter::all(), whole)
    }

    /// A capture keeping the spans `spans` keeps (see
    /// [`crate::filter::SpanFilter`]), whose polls send their trees whole
    /// from `whole_tree_ns` on (see [`Capture::whole_tree_ns`]).
    pub fn with_span_filter(
        ring_capacity: usize,
        spans: crate::filter::SpanFilter,
        whole_tree_ns: u64,
    ) -> Arc<Self> {
        let clock = quanta::Clock::new();
        let origin_raw = clock.raw();
        let tsc_scale = reads_tsc(&clock).then(|| clock.delta_as_nanos(0, 1 << 40));
        Arc::new(Self {
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            span_ids: SpanIds(AtomicU64::new(1)),
            next_thread: AtomicU32::new(0),
            callsites: Callsites::new(spans),
            new_rings: Mutex::new(Vec::new()),
            buffer_full: AtomicU64::new(0),
            clock,
            tsc_scale,
            origin_raw,
            ring_capacity,
            whole_tree_ns,
            ring_budget: AtomicUsize::new(ring_capacity.saturating_mul(RING_BUDGET_FACTOR)),
            exporter: OnceLock::new(),
            on_demand_wakes: AtomicU64::new(0),
            wait_stacks: wait_stack::WaitStacks::default(),
            idle_watch: IdleWatch::default(),
        })
    }

    /// A block of [`SPAN_ID_BLOCK`] span ids for one thread: the first,
    /// and the one past the last.
    #[cold]
    pub(crate) fn take_span_ids(&self) -> (u64, u64) {
        let first = self.span_ids.0.fetch_add(SPAN_ID_BLOCK, Ordering::Relaxed);
        (first, first + SPAN_ID_BLOCK)
    }

    /// Called on the exporter thread when it starts: the thread that
    /// [`Capture::wake_exporter`] wakes.
    pub(crate) fn set_exporter(&self) {
        let _ = self.exporter.set(std::thread::current());
    }

    /// Wakes the exporter thread if it sleeps between drains (else its
    /// next sleep returns at once). An atomic swap, and a futex wake only
    /// when it was asleep.
    pub(crate) fn wake_exporter(&self) {
        if let Some(t) = self.exporter.get() {
            t.unpark();
        }
    }

    /// The exporter is about to sleep a whole idle tick with no poll
    /// running: the next poll to start wakes it, so that it watches that
    /// poll from its start (a poll is announced, and its stall baseline
    /// read, once it runs past 1 ms).
    pub(crate) fn sleep_idle(&self) {
        self.idle_watch.0.store(true, Ordering::Release);
    }

    /// The exporter woke: polls need not wake it.
    pub(crate) fn woke(&self) {
        self.idle_watch.0.store(false, Ordering::Relaxed);
    }

    /// A task's poll starts: wakes the exporter if it sleeps idle (see
    /// [`Capture::sleep_idle`]). One load of a line nobody writes while
    /// polls run; the wake happens once per quiet spell. (Not fenced
    /// against the exporter's look after its flag: in the rare race where
    /// each misses the other's store, the exporter wakes at its idle tick,
    /// as it did before.)
    #[inline(always)]
    pub(crate) fn poll_started(&self) {
        if self.idle_watch.0.load(Ordering::Relaxed)
            && self.idle_watch.0.swap(false, Ordering::AcqRel)
        {
            self.wake_exporter();
        }
    }

    /// Takes up to `want` slots of growth from the budget: all of it, or
    /// what is left if that is at least `least`; 0 when neither.
    pub(crate) fn take_ring_budget(&self, want: usize, least: usize) -> usize {
        let least = least.max(1);
        self.ring_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                let took = want.min(left);
                (took >= least).then(|| left - took)
            })
            .map_or(0, |left| want.min(left))
    }

    /// Gives back slots of growth (a thread's rings are gone).
    pub(crate) fn give_ring_budget(&self, slots: usize) {
        self.ring_budget.fetch_add(slots, Ordering::Relaxed);
    }

    /// Registers a thread's ring with the exporter; `thread` is `None` for
    /// a new thread (an index is assigned and returned), or the thread's
    /// index when its ring is replaced by a larger one.
    fn register_ring(
        &self,
        consumer: rtrb::Consumer<Raw>,
        dropped: Arc<AtomicU64>,
        poll: Arc<local::PollSlot>,
        thread: Option<u32>,
        returns: Option<local::Returns>,
    ) -> u32 {
        let thread = thread.unwrap_or_else(|| self.next_thread.fetch_add(1, Ordering::Relaxed));
        let name = std::thread::current().name().map(str::to_owned);
        self.new_rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Ring {
                consumer,
                dropped,
                poll,
                thread,
                name,
                returns,
            });
        thread
    }

    /// A raw clock reading (see [`Capture::nanos`]).
    #[inline(always)]
    pub fn raw(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.tsc_scale.is_some() {
            // SAFETY: `rdtsc` has no preconditions; `tsc_scale` is only set when
            // quanta itself reads it (see `reads_tsc`).
            return unsafe { core::arch::x86_64::_rdtsc() };
        }
        self.clock.raw()
    }

    /// Nanoseconds since the origin for a raw clock reading.
    #[inline]
    pub fn nanos(&self, raw: u64) -> u64 {
        self.delta_nanos(self.origin_raw, raw)
    }

    /// Nanoseconds from raw reading `start` to `end` (0 if `end` is not
    /// after `start`).
    #[inline]
    pub fn delta_nanos(&self, start: u64, end: u64) -> u64 {
        match self.tsc_scale {
            Some(scale) => {
                let ticks = end.saturating_sub(start);
                ((u128::from(ticks) * u128::from(scale)) >> 40) as u64
            }
            None => self.clock.delta_as_nanos(start, end),
        }
    }
}

/// Default of [`Capture::whole_tree_ns`]. Polls this long are rare
/// enough in a server that their whole trees cost little, and it is well
/// under the collector's long-poll threshold (10 ms by default, set on
/// the collector's side, independently of the stall threshold here), so
/// its long-poll traces see every span of the polls they describe.
pub(crate) const WHOLE_TREE: std::time::Duration = std::time::Duration::from_micros(100);

/// Whether `clock` reads the time-stamp counter: quanta uses it when it is
/// invariant and calibrates it, else falls back to the OS clock, and does
/// not say which. A TSC reading taken around the clock's own lands between
/// the two; an OS clock reading (nanoseconds) does not.
fn reads_tsc(clock: &quanta::Clock) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (0..3).any(|_| {
            // SAFETY: `rdtsc` has no preconditions.
            let before = unsafe { core::arch::x86_64::_rdtsc() };
            let raw = clock.raw();
            let after = unsafe { core::arch::x86_64::_rdtsc() };
            before <= raw && raw <= after
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = clock;
        false
    }
}

/// The awaitscope `Layer`. Get one from [`crate::builder`]; it works in any
/// `tracing_subscriber` stack whose subscriber implements `LookupSpan` (such
/// as `tracing_subscriber::registry()`), beside other layers and filters.
pub struct AwaitscopeLayer {
    /// `None` when awaitscope is turned off (`AWAITSCOPE=off`).
    pub(crate) capture: Option<Arc<Capture>>,
}

impl std::fmt::Debug for AwaitscopeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitscopeLayer")
            .field("instance", &self.capture.as_ref().map(|s| s.instance))
            .finish()
    }
}

impl AwaitscopeLayer {
    /// The node of a span, from the registry.
    fn lookup_node<S>(ctx: &Context<'_, S>, id: &Id) -> Option<Arc<SpanNode>>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let span = ctx.span(id)?;
        let ext = span.extensions();
        ext.get::<SpanData>().map(|d| d.node.clone())
    }
}

impl<S> Layer<S> for AwaitscopeLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    /// The layer itself, or its `SpanFinder` (how causal traces find the
    /// current span's node in the registry's extensions).
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else if id == TypeId::of::<SpanFinder>() {
            Some(&LAYER_FINDER as *const SpanFinder as *const ())
        } else {
            None
        }
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if let Some(shared) = &self.capture {
            shared.callsites.register(metadata);
        }
        // Never narrow what other layers see.
        Interest::always()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(shared) = &self.capture else { return };
        let Some(span) = ctx.span(id) else { return };
        let node_of = |s: tracing_subscriber::registry::SpanRef<'_, S>| {
            s.extensions().get::<SpanData>().map(|d| d.node.clone())
        };
        // The nearest ancestor with a node: spans the span filter rejects
        // have none (the registry still keeps them for other layers).
        let parent = || span.scope().skip(1).find_map(node_of);
        let current = || {
            ctx.lookup_current()
                .and_then(|c| c.scope().find_map(node_of))
        };
        let Some(node) = shared.new_span(attrs, id, parent, Some(current)) else {
            return;
        };
        span.extensions_mut().insert(SpanData { node });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let (Some(shared), Some(span)) = (&self.capture, ctx.span(id)) else {
            return;
        };
        let ext = span.extensions();
        if let Some(data) = ext.get::<SpanData>() {
            shared.record(&data.node, values);
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        let Some(shared) = &self.capture else { return };
        if let (Some(span), Some(follows)) = (
            Self::lookup_node(&ctx, id),
            Self::lookup_node(&ctx, follows),
        ) {
            shared.follows_from(&span, &follows);
        }
    }

    #[inline]
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(shared) = &self.capture else { return };
        shared.enter(id, || Self::lookup_node(&ctx, id));
    }

    #[inline]
    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        let Some(shared) = &self.capture else { return };
        shared.exit(id);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let (Some(shared), Some(span)) = (&self.capture, ctx.span(&id)) else {
            return;
        };
        let ext = span.extensions();
        if let Some(data) = ext.get::<SpanData>() {
            shared.close(id.into_u64(), &data.node);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(shared) = &self.capture else { return };
        shared.event(
            event,
            || {
                // The nearest span with a node: the event's own, or (when
                // the capture left that one out: a span the filter rejects,
                // tokio's async op poll) the nearest around it that has one.
                ctx.event_span(event)?
                    .scope()
                    .find_map(|s| s.extensions().get::<SpanData>().map(|d| d.node.clone()))
            },
            |id| Self::lookup_node(&ctx, id),
        );
    }
}

/// The capture hooks, called by the [`AwaitscopeLayer`] over a registry and
/// by awaitscope's own span store (`AwaitscopeSubscriber`). Each takes what it
/// needs of the span store as a lookup (called only when needed).
impl Capture {
    /// A span was created with id `id`: makes its node and records it.
    /// `current` finds the node of the span current on this thread; `None`
    /// when the caller knows that span is the parent (a contextual parent),
    /// whose node `parent` gives: no second lookup, and no reference taken
    /// on it only to read its id. Returns `None` when the callsite is not a
    /// span or the thread is exiting.
    pub(crate) fn new_span(
        self: &Arc<Self>,
        attrs: &Attributes<'_>,
        id: &Id,
        parent: impl FnOnce() -> Option<Arc<SpanNode>>,
        current: Option<impl FnOnce() -> Option<Arc<SpanNode>>>,
    ) -> Option<Arc<SpanNode>> {
        let shared = self;
        let info = shared.callsites.get(attrs.metadata());
        let Class::Span(class) = info.class else {
            return None;
        };
        let parent = parent();
        let current = current.map(|current| current());
        let current = match &current {
            Some(current) => current.as_ref(),
            None => parent.as_ref(),
        };
        let ctx_span = current.map_or(0, |c| c.id);
        // A span with fields records them over those of the node it will
        // reuse (see `FieldRecorder::reusing`). Outside the thread's state:
        // a field's `Debug` may itself use `tracing`.
        let reusable = if attrs.metadata().fields().is_empty() {
            None
        } else {
            with_local(shared, |l| l.reusable_node()).flatten()
        };
        let (old, mut rec) = match reusable {
            Some((node, fields)) => (Some(node), FieldRecorder::reusing(fields)),
            None => (None, FieldRecorder::for_callsite(attrs.metadata())),
        };
        attrs.record(&mut rec);
        let link = match class {
            SpanClass::Task => current.cloned(),
            _ if attrs.metadata().target() == names::CONTEXT_TARGET => causal::take_pending_link(),
            _ => None,
        };
        let ts = shared.raw();
        with_local(shared, |l| {
            let sid = l.next_span_id(shared);
            let node = l.new_node_over(
                old,
                NodeParts {
                    id: sid,
                    meta: attrs.metadata(),
                    callsite: info.id,
                    class,
                    blocking: class == SpanClass::Task
                        && attrs.metadata().target() == names::TOKIO_BLOCKING_TARGET,
                    parent_id: parent.as_ref().map_or(0, |p| p.id),
                    parent,
                    instance: shared.instance,
                    ctx_task: l.current_task(),
                    ctx_task_node: l.current_task_node(),
                    ctx_span,
                    link,
                    ts,
                    fields: rec.finish(),
                },
            );
            if class == SpanClass::User {
                // A task's creation (a spawn) stays inside its spawner's
                // poll: the collector reads who spawned it there.
                l.push_beside_poll(Raw::Span(node.clone()));
            } else {
                l.push(Raw::Span(node.clone()));
            }
            if class != SpanClass::Task && l.in_poll() {
                // Entered next in this poll, found as the poll's recent
                // span; a later poll finds it in the store once. Kept out
                // of the thread's cache, where a server's per-request spans
                // would each take a slot (and a reference) until their
                // close, and push out the tasks the thread polls.
                l.set_recent(id.into_u64(), sid);
            } else {
                l.remember(id.into_u64(), &node);
            }
            if let (SpanClass::User, Some(link)) = (class, &node.link) {
                // A queue hand-off: the collector sees it as follows-from.
                let follows = link.id;
                l.push(Raw::FollowsFrom { span: sid, follows });
            }
            node
        })
    }

    /// A compact span: a span of the program without fields, made inside
    /// a poll of task `task` (the task the exporter infers from its parent
    /// `parent_sid`, the task itself or a compact span: it must be the
    /// task polled here), gets no node. Its
    /// creation goes out from its id, parent and callsite
    /// ([`Raw::SpanCompact`]); a node is made only if something asks for
    /// one ([`Capture::compact_node`]). Most `#[instrument]` spans of a
    /// request handler live and die within one poll: their node, made on
    /// the worker and read and given back by the exporter's thread, cost
    /// more in cache lines moving between cores than in instructions.
    /// Returns its span id and creation time, or `None` when it must have
    /// a node.
    pub(crate) fn new_compact(
        self: &Arc<Self>,
        attrs: &Attributes<'_>,
        id: &Id,
        parent_sid: u64,
        task: u64,
    ) -> Option<(u64, u64)> {
        // The cheap tests first: task spans and resources have fields, and
        // a span that gets a node looks its callsite up again there.
        let meta = attrs.metadata();
        if !attrs.values().is_empty() || meta.target() == names::CONTEXT_TARGET {
            return None;
        }
        let info = self.callsites.get(meta);
        if info.class != Class::Span(SpanClass::User) {
            return None;
        }
        let shared = self;
        with_local(shared, |l| {
            if !l.in_poll() || l.current_task() != task {
                return None;
            }
            let sid = l.next_span_id(shared);
            let ts = shared.raw();
            l.push_beside_poll(Raw::SpanCompact {
                id: sid,
                parent: parent_sid,
                ts,
                callsite: info.id,
            });
            l.set_recent(id.into_u64(), sid);
            Some((sid, ts))
        })
        .flatten()
    }

    /// The node of a compact span (see [`Capture::new_compact`]), made on
    /// the worker when something first asks for one (a child with a node,
    /// an event, a causal trace, a later poll's enter). The exporter's
    /// model of live spans makes its own (see `Exporter::age_compact`).
    pub(crate) fn compact_node(
        self: &Arc<Self>,
        meta: &'static Metadata<'static>,
        sid: u64,
        ts: u64,
        task: u64,
        parent: Option<Arc<SpanNode>>,
    ) -> Arc<SpanNode> {
        let callsite = self.callsites.get(meta).id;
        let parent = (parent.as_ref().map_or(0, |p| p.id), parent);
        Arc::new(SpanNode::of_compact(
            meta,
            callsite,
            sid,
            ts,
            task,
            parent,
            self.instance,
        ))
    }

    /// A compact span closed; `node` is its node if one was made.
    pub(crate) fn close_compact(self: &Arc<Self>, reg: u64, sid: u64, node: Option<&SpanNode>) {
        let ts = self.raw();
        if let Some(node) = node {
            node.close_at(ts, CloseKind::Span);
        }
        let pushed = with_local(self, |l| {
            l.forget(reg);
            if l.in_poll() {
                l.closed_in_poll(sid);
            }
            l.push_beside_poll(Raw::Close {
                span: sid,
                kind: CloseKind::Span,
                ts,
                compact: true,
            });
        });
        if pushed.is_none() && node.is_none() {
            // No state on this thread (it is exiting) and no node to say
            // it: the close is lost, and counted.
            self.buffer_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `span.record(...)`: merged into the node's fields and recorded.
    pub(crate) fn record(self: &Arc<Self>, node: &SpanNode, values: &Record<'_>) {
        let mut rec = FieldRecorder::default();
        values.record(&mut rec);
        let later = rec.finish();
        FieldRecorder::merge(
            &mut node.fields.lock().unwrap_or_else(|e| e.into_inner()),
            &later,
        );
        let sid = node.id;
        with_local(self, |l| l.push(Raw::Record(Box::new((sid, later)))));
    }

    /// `span.follows_from(other)`.
    pub(crate) fn follows_from(self: &Arc<Self>, span: &SpanNode, follows: &SpanNode) {
        let (span, follows) = (span.id, follows.id);
        with_local(self, |l| l.push(Raw::FollowsFrom { span, follows }));
    }

    /// The span with id `id` was entered; `lookup` finds its node when no
    /// cache of this thread knows it.
    #[inline]
    pub(crate) fn enter(self: &Arc<Self>, id: &Id, lookup: impl FnOnce() -> Option<Arc<SpanNode>>) {
        let shared = self;
        with_local(shared, |l| l.enter_reg(shared, id.into_u64(), lookup));
    }

    /// The span with id `id` was exited.
    #[inline]
    pub(crate) fn exit(self: &Arc<Self>, id: &Id) {
        let shared = self;
        with_local(shared, |l| l.exit(shared, id.into_u64()));
    }

    /// A span closed (its last handle dropped).
    pub(crate) fn close(self: &Arc<Self>, reg: u64, node: &SpanNode) {
        let shared = self;
        let ts = shared.raw();
        let kind_of = |panicked: bool| {
            if node.class != SpanClass::Task {
                CloseKind::Span
            } else if panicked {
                CloseKind::Panicked
            } else if node.polls.last_pair_adjacent.load(Ordering::Relaxed) {
                CloseKind::Completed
            } else {
                CloseKind::Cancelled
            }
        };
        let pushed = with_local(shared, |l| {
            let panicked = l.panicked_task == node.id;
            if panicked {
                l.panicked_task = 0;
            }
            let kind = kind_of(panicked);
            // On the node first: if the record below is dropped (a full
            // ring), the exporter still learns of the close from the node.
            node.close_at(ts, kind);
            l.forget(reg);
            if node.class != SpanClass::Task && l.in_poll() {
                l.closed_in_poll(node.id);
            }
            let raw = Raw::Close {
                span: node.id,
                kind,
                ts,
                compact: false,
            };
            if node.class == SpanClass::User {
                l.push_beside_poll(raw);
            } else {
                l.push(raw);
            }
        });
        if pushed.is_none() {
            // No state on this thread (it is exiting): the node says it.
            node.close_at(ts, kind_of(false));
        }
    }

    /// An event. `event_span` finds the node of the span it happened in;
    /// `lookup` the node of a span by id (for waker events, the woken task).
    #[inline]
    pub(crate) fn event(
        self: &Arc<Self>,
        event: &Event<'_>,
        event_span: impl FnOnce() -> Option<Arc<SpanNode>>,
        lookup: impl FnOnce(&Id) -> Option<Arc<SpanNode>>,
    ) {
        // tokio's waker events, two per `yield_now`, take a path of their
        // own: small, without the stack frame of the other events' path.
        match self.callsites.waker_slot(event.metadata()) {
            Some(slot) => self.waker_event(event, Some(slot), lookup),
            None => self.other_event(event, event_span, lookup),
        }
    }

    /// A waker event of the callsite in `slot` (`None`: a waker callsite
    /// past the slots).
    #[inline]
    fn waker_event(
        self: &Arc<Self>,
        event: &Event<'_>,
        slot: Option<usize>,
        lookup: impl FnOnce(&Id) -> Option<Arc<SpanNode>>,
    ) {
        let shared = self;
        let known = slot.and_then(|s| shared.callsites.waker_op(s));
        let mut v = WakerVisitor {
            parse_op: known.is_none(),
            ..WakerVisitor::default()
        };
        event.record(&mut v);
        let op = match (known, v.op, slot) {
            (Some(op), _, _) => op,
            (None, Some(op), Some(s)) => {
                shared.callsites.learn_waker_op(s, op);
                op
            }
            (None, Some(op), None) => op,
            (None, None, _) => return,
        };
        let Some(task_id) = v.task_id else { return };
        with_local(shared, |l| {
            l.waker(shared, task_id, op, || lookup(&Id::from_u64(task_id)));
        });
    }

    /// Any event but a waker event of a known slot.
    #[inline(never)]
    fn other_event(
        self: &Arc<Self>,
        event: &Event<'_>,
        event_span: impl FnOnce() -> Option<Arc<SpanNode>>,
        lookup: impl FnOnce(&Id) -> Option<Arc<SpanNode>>,
    ) {
        let shared = self;
        let info = shared.callsites.get(event.metadata());
        match info.class {
            Class::Waker => self.waker_event(event, None, lookup),
            Class::Event(class) if class != awaitscope_wire::EventClass::User => {
                if let Some(fields) = SmallFields::of(|v| event.record(v)) {
                    self.small_log(event, info.id, class, fields, event_span);
                } else {
                    self.log(event, info.id, class, event_span);
                }
            }
            Class::Event(class) => self.log(event, info.id, class, event_span),
            Class::Span(_) | Class::Ignored => {}
        }
    }

    /// A tokio resource event whose fields fit inline (see
    /// [`small_fields`]): two ring slots, nothing allocated. A poll op that
    /// makes its task wait takes the boxed path when a stack is taken for
    /// it (see [`wait_stack`]), which rides on the boxed record.
    #[inline]
    fn small_log(
        self: &Arc<Self>,
        event: &Event<'_>,
        callsite: u32,
        class: awaitscope_wire::EventClass,
        fields: SmallFields,
        event_span: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) {
        let shared = self;
        let meta = event.metadata();
        let wait = class == awaitscope_wire::EventClass::PollOp
            && shared.wait_stacks.on()
            && wait_stack::is_wait(
                fields.bool(meta, names::IS_READY),
                fields.text(meta, names::OP_NAME),
            );
        let locked = match class {
            awaitscope_wire::EventClass::StateUpdate => fields.bool(meta, names::LOCKED),
            _ => None,
        };
        // An event without an explicit parent (tokio's are all of them)
        // is in the span entered last on this thread: its id is read from
        // the thread's own stack, no node looked up or its count touched.
        let explicit = (!event.is_contextual()).then(|| event_span().map_or(0, |n| n.id));
        let ts = shared.raw();
        with_local(shared, |l| {
            let span = explicit.unwrap_or_else(|| l.current_sid());
            let stack = shared.wait_stack(l, wait, ts);
            let task = l.current_task();
            if stack.is_empty() {
                let (head, bits) = fields.pack();
                l.push_pair(
                    Raw::LogFields { head, bits },
                    Raw::SmallLog {
                        callsite,
                        class,
                        locked,
                        span,
                        task,
                        ts,
                    },
                );
                return;
            }
            // The stack rides on a boxed record (one given back, reused).
            let mut raw = l.old_log();
            let mut wire_fields = raw
                .as_mut()
                .map(|r| std::mem::take(&mut r.fields))
                .unwrap_or_default();
            // No texts kept aside here: a record's buffers go back with it.
            fields.write_to(&mut wire_fields, &mut Vec::new());
            let new = RawLog {
                meta,
                class,
                callsite,
                span,
                task,
                ts,
                fields: wire_fields,
                trace: Vec::new(),
                stack,
            };
            l.push(Raw::Log(record::in_box(new, raw)));
        });
    }

    /// The stack of a poll op that made its task wait (`wait`, at raw time
    /// `ts`): the worker's return addresses, for the first wait of the poll
    /// in progress and as the rate admits (see [`wait_stack`]); empty
    /// otherwise.
    #[inline]
    fn wait_stack(&self, l: &mut local::Local, wait: bool, ts: u64) -> Vec<usize> {
        if wait && l.first_wait_of_poll() {
            self.wait_stacks.take(self.delta_nanos(self.origin_raw, ts))
        } else {
            Vec::new()
        }
    }

    /// An event sent with its fields boxed: the program's warnings and
    /// errors (an error with its causal trace), and tokio's resource events
    /// whose fields do not fit inline.
    fn log(
        self: &Arc<Self>,
        event: &Event<'_>,
        callsite: u32,
        class: awaitscope_wire::EventClass,
        event_span: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) {
        let shared = self;
        let node = event_span();
        let span = node.as_ref().map_or(0, |n| n.id);
        // ERROR events carry their causal trace: walked here, while
        // every span of it is known, and sent with the event.
        let trace = if class == awaitscope_wire::EventClass::User
            && *event.metadata().level() == tracing_core::Level::ERROR
        {
            let task = with_local(shared, |l| l.current_task_node()).flatten();
            CausalTrace::of(node, task).wire_lines()
        } else {
            Vec::new()
        };
        // A record the exporter gave back, its fields' memory
        // reused (see `local::LOG_RETURNS`).
        let mut raw = with_local(shared, |l| l.old_log()).flatten();
        let mut rec = match raw.as_mut() {
            Some(r) => FieldRecorder::reusing(std::mem::take(&mut r.fields)),
            None => FieldRecorder::for_callsite(event.metadata()),
        };
        event.record(&mut rec);
        let fields = rec.finish();
        let ts = shared.raw();
        // A task told "not ready": where it waits (see `wait_stack`).
        let wait = class == awaitscope_wire::EventClass::PollOp
            && shared.wait_stacks.on()
            && wait_stack::is_wait_in(event.metadata(), &fields);
        with_local(shared, |l| {
            let stack = shared.wait_stack(l, wait, ts);
            let new = RawLog {
                meta: event.metadata(),
                class,
                callsite,
                span,
                task: l.current_task(),
                ts,
                fields,
                trace,
                stack,
            };
            // Its old trace and stack are dropped here, where they were
            // made.
            l.push(Raw::Log(record::in_box(new, raw)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exporter's conversion of raw readings agrees with quanta's to
    /// within a nanosecond per 2^40 ticks (its scale is read from quanta
    /// once), and a reading before the origin is 0 as with quanta.
    #[test]
    fn nanos_agree_with_the_clock() {
        let shared = Capture::new(1024);
        let origin = shared.origin_raw;
        for ticks in [0u64, 1, 999, 3_000_000_000, 1 << 40, (1 << 50) + 12_345] {
            let raw = origin.saturating_add(ticks);
            let ours = shared.nanos(raw);
            let quanta = shared.clock.delta_as_nanos(origin, raw);
            let slack = 2 + (ticks >> 40);
            assert!(
                ours.abs_diff(quanta) <= slack,
                "{ticks} ticks: {ours} ns vs quanta's {quanta} ns"
            );
        }
        assert_eq!(shared.nanos(origin.saturating_sub(5)), 0);
        assert_eq!(shared.delta_nanos(10, 5), 0);
    }

    /// Whatever source the clock reads, readings taken across a sleep
    /// convert to about the time slept.
    #[test]
    fn clock_readings_convert_to_elapsed_time() {
        let shared = Capture::new(16);
        let (t0, r0) = (std::time::Instant::now(), shared.raw());
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (r1, t1) = (shared.raw(), std::time::Instant::now());
        let measured = shared.nanos(r1).saturating_sub(shared.nanos(r0));
        let real = (t1 - t0).as_nanos() as u64;
        assert!(measured >= 20_000_000, "{measured} ns for {real} ns slept");
        assert!(measured <= real + 5_000_000, "{measured} ns for {real} ns");
    }
}
