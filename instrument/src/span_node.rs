//! The identity of a span, kept as long as anything refers to it.
//!
//! Every span the layer sees gets one [`SpanNode`] (one allocation at span
//! creation). A node points to its parent's node, and a task span's node
//! points to the node of the span that was current when the task was
//! spawned. Following these pointers from any span walks the causal chain
//! across task boundaries, and because they are reference counted (not
//! recycled registry ids) the chain survives its spans closing.
//!
//! A leaf of the crate: the capture writes nodes; causal traces, the span
//! store, the exporter and await trees read them.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use awaitscope_wire::{Field, SpanClass, Value};
use tracing_core::Metadata;

use crate::names;

/// A span's identity and what a causal trace shows of it.
///
/// Laid out (`repr(C)`) by who reads what. The first cache line (with the
/// `Arc`'s counts before it) holds what the exporter reads to send the
/// span's creation (id, callsite, class, closed, times and the ids it
/// links to) and what entering a span or waking a task reads (id, class,
/// closed): a node given back for reuse after the exporter read it is then
/// fetched back from the exporter's core once, not for every line it wrote
/// the previous span into, and nothing on it is written between the span's
/// creation and its close, so the threads that wake a task keep it in
/// their caches. The second line holds the rest of the exporter's reads
/// (`meta`) and a task's poll state, which entering and exiting it write.
/// (Aligning the node to a cache line was measured: the aligned
/// allocation made span creation markedly slower.)
#[repr(C)]
pub(crate) struct SpanNode {
    /// awaitscope's id of the span, the one sent on the wire: unlike a
    /// registry id, never reused for another span of the same capture.
    pub id: u64,
    /// Raw clock reading at creation (see `Capture::nanos`).
    pub ts: u64,
    /// The parent's id (0: none), kept here so that the exporter, sending
    /// the span's creation, does not read the parent's node: that would
    /// pull the line holding the parent's reference count to the
    /// exporter's core, and the worker's next reference change on it (the
    /// parent of a server's per-request spans is the connection's span,
    /// changed at each request) would wait for it to come back.
    pub parent_id: u64,
    /// Task polled on the creating thread (0: none).
    pub ctx_task: u64,
    /// Span current at creation (0: none).
    pub ctx_span: u64,
    pub callsite: u32,
    pub class: SpanClass,
    /// The span closed: its registry id may now name another span, so
    /// per-thread caches keyed by registry id must not trust this entry.
    pub closed: AtomicBool,
    /// A task span of tokio's blocking pool (`spawn_blocking`, and each
    /// worker thread of a multi-thread runtime): its one poll runs for as
    /// long as the closure, and the tasks the worker polls nest inside it.
    pub blocking: bool,
    pub meta: &'static Metadata<'static>,
    /// The poll (1 + the polls of its task that had ended) in which the
    /// span was first entered, 0 before: a span is remembered in its task's
    /// poll cache only when a later poll enters it (see [`PollCache::set`]).
    pub first_entered_in_poll: AtomicU64,
    /// Task spans: signature of the await tree last sent.
    pub last_tree_sig: AtomicU64,
    /// Task spans: state of its polls, kept here by the threads that poll
    /// it (one at a time), so that nobody keeps a map of tasks per poll.
    pub polls: PollState,
    /// Task spans: the spans its last poll entered, by position.
    pub poll_cache: PollCache,
    /// The span's parent: the one given at creation, else the span that
    /// was current.
    pub parent: Option<Arc<SpanNode>>,
    /// Layer instance that made the node.
    pub instance: u64,
    /// The node of [`SpanNode::ctx_task`] (a spawn's parent task, for
    /// causal traces).
    pub ctx_task_node: Option<Arc<SpanNode>>,
    /// For task spans: the span current at spawn. For context spans
    /// (`awaitscope::Context`): the span the context was taken in.
    pub link: Option<Arc<SpanNode>>,
    /// Recorded fields, updated by `span.record`.
    pub fields: Mutex<Vec<Field>>,
    /// The task whose poll cache remembers this span, once one does.
    pub cached_in: std::sync::OnceLock<std::sync::Weak<SpanNode>>,
    /// When it closed (raw clock) and how, set before `closed` (see
    /// [`SpanNode::close_at`]).
    pub closed_at: AtomicU64,
    /// Made after its span (see `store`'s compact spans): the span's
    /// handles are counted on its store slot, not on
    /// [`SpanNode::store_refs`]. Beside it: a child's close reads both.
    pub compact: bool,
    /// Under awaitscope's span store: the span's handles there (`Span`
    /// values, and children, which hold one on their parent), 1 at
    /// creation. Kept on the node, not in the store's slot, so that a child
    /// gives its parent's back through its node's `parent`, without
    /// looking the parent up. Unused under a registry.
    pub store_refs: AtomicUsize,
}

/// A task's polls, as the threads polling it see them. Only the thread
/// polling the task writes `count`, `running` and `last_end` (plain loads
/// and stores, no locked instruction); `wakers` is changed by any thread
/// that clones, drops or consumes one of the task's wakers.
#[derive(Default)]
#[repr(C)]
pub(crate) struct PollState {
    /// How many polls of the task have ended.
    pub count: AtomicU64,
    /// Raw clock reading at the end of the last poll (0: none yet).
    pub last_end: AtomicU64,
    /// Live wakers: clones minus drops and consuming wakes. Signed, because
    /// a waker made before the layer saw the task can be dropped after.
    pub wakers: AtomicI64,
    /// Whether a thread is polling the task now.
    pub running: AtomicBool,
    /// The last enter/exit pair directly followed the task's previous poll
    /// (the drop of a completed future). Written at every poll's end: here,
    /// not on the node's first line, which the threads that wake the task
    /// read (its id, whether it closed) and which then stays in their
    /// caches between polls.
    pub last_pair_adjacent: AtomicBool,
    /// Wakes of the task by itself inside its own poll, counted up to the
    /// one at which its native stack is taken (see
    /// `capture::wait_stack::SELF_WAKE_STACK_AT`).
    pub self_wakes: AtomicU32,
}

impl PollState {
    /// Live wakers, as sent on the wire.
    #[inline]
    pub fn wakers(&self) -> u32 {
        self.wakers
            .load(Ordering::Relaxed)
            .clamp(0, u32::MAX as i64) as u32
    }
}

/// Spans entered in a task's last poll, by position (the k-th span entered).
/// A task that awaits the same thing poll after poll enters the same spans
/// in the same order: the next poll finds each one's id here instead of
/// looking it up in the registry, and without touching the span's node (with
/// thousands of tasks in turn, each node read is a cache miss).
///
/// An entry maps a registry id to a span id; it holds no reference to the
/// span. A registry id names another span once its span has closed, so a
/// span cached here records which task's cache holds it
/// ([`SpanNode::cached_in`]), and its close marks that cache stale: the
/// next lookup drops every entry. Only spans that are not tasks are cached.
///
/// A task is polled by one thread at a time; the `busy` flag makes that
/// explicit: the thread that sets it owns the entries until it clears it.
/// (A try-lock flag around an array: no crate needed.)
#[derive(Default)]
pub(crate) struct PollCache {
    busy: AtomicBool,
    /// A span named in `entries` closed.
    stale: AtomicBool,
    /// (registry id, span id); registry id 0 is an empty entry.
    entries: UnsafeCell<[(u64, u64); POLL_CACHE]>,
}

/// Spans remembered per task poll.
pub(crate) const POLL_CACHE: usize = 8;

// SAFETY: `entries` is only accessed by the thread that set `busy` (see
// `PollCache::acquire`), between that and `release`.
unsafe impl Sync for PollCache {}

impl PollCache {
    /// Takes the cache for this thread; false if another thread holds it.
    #[inline]
    pub fn acquire(&self) -> bool {
        !self.busy.swap(true, Ordering::Acquire)
    }

    /// Gives the cache back.
    #[inline]
    pub fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// The span id of the `k`-th span entered in the last poll, if its
    /// registry id was `reg`.
    ///
    /// # Safety
    /// The caller holds the cache (see [`PollCache::acquire`]).
    #[inline]
    pub unsafe fn get(&self, k: usize, reg: u64) -> Option<u64> {
        if self.stale.load(Ordering::Relaxed) {
            // SAFETY: per the contract.
            unsafe { self.clear() };
            return None;
        }
        // SAFETY: exclusive access, per the contract.
        let entries = unsafe { &*self.entries.get() };
        match entries.get(k) {
            Some(&(r, sid)) if r == reg && r != 0 => Some(sid),
            _ => None,
        }
    }

    /// Drops every entry (a span they name closed).
    ///
    /// # Safety
    /// As for [`PollCache::get`].
    #[cold]
    unsafe fn clear(&self) {
        // Cleared before the entries are: a close after this marks the
        // cache again.
        self.stale.store(false, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        // SAFETY: exclusive access, per the contract.
        let entries = unsafe { &mut *self.entries.get() };
        *entries = [(0, 0); POLL_CACHE];
    }

    /// Remembers `node` (registry id `reg`) as the `k`-th span entered, if
    /// it can be: it is not a task, no other task's cache holds it, and it
    /// is open. `task` is the node that owns this cache.
    ///
    /// # Safety
    /// As for [`PollCache::get`].
    #[inline]
    pub unsafe fn set(&self, k: usize, reg: u64, node: &SpanNode, task: &Arc<SpanNode>) {
        if node.class == SpanClass::Task || k >= POLL_CACHE || reg == 0 {
            return;
        }
        // Only from a poll after the one that first entered it: a span made
        // for one request (a server's `#[instrument]`ed handler) is entered
        // in one poll, often twice (polled, then entered again to drop its
        // future), and the next poll enters another span in its place.
        // Remembering it would cost a fence and a weak reference on the
        // task for nothing. Plain loads and stores: two threads racing here
        // at worst both skip it.
        let poll = task.polls.count.load(Ordering::Relaxed) + 1;
        let first = node.first_entered_in_poll.load(Ordering::Relaxed);
        if first == 0 {
            node.first_entered_in_poll.store(poll, Ordering::Relaxed);
            return;
        }
        if first == poll {
            return;
        }
        let owner = node.cached_in.get_or_init(|| Arc::downgrade(task));
        if owner.as_ptr() != Arc::as_ptr(task) {
            return;
        }
        // Pairs with the fence in `SpanNode::close`: either its close sees
        // `cached_in`, or this sees `closed`.
        std::sync::atomic::fence(Ordering::SeqCst);
        if node.closed.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: exclusive access, per the contract.
        let entries = unsafe { &mut *self.entries.get() };
        entries[k] = (reg, node.id);
    }

    /// Marks the cache stale (a span it may name closed).
    #[inline]
    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }
}

/// What a span's node is made of at the span's creation; the rest of the
/// node is state the capture keeps on it while the span lives (see
/// [`SpanNode::new`] and [`SpanNode::reuse`]).
pub(crate) struct NodeParts {
    pub id: u64,
    pub ts: u64,
    pub parent_id: u64,
    pub ctx_task: u64,
    pub ctx_span: u64,
    pub callsite: u32,
    pub class: SpanClass,
    pub blocking: bool,
    pub meta: &'static Metadata<'static>,
    pub parent: Option<Arc<SpanNode>>,
    pub instance: u64,
    pub ctx_task_node: Option<Arc<SpanNode>>,
    pub link: Option<Arc<SpanNode>>,
    pub fields: Vec<Field>,
}

/// `closed_at` packs the close's raw timestamp with its kind in the low
/// two bits (a clock reading loses its two least significant ticks).
const KIND_BITS: u64 = 0b11;

impl SpanNode {
    /// A new span's node, its state fresh.
    pub fn new(p: NodeParts) -> Self {
        Self {
            id: p.id,
            ts: p.ts,
            parent_id: p.parent_id,
            ctx_task: p.ctx_task,
            ctx_span: p.ctx_span,
            callsite: p.callsite,
            class: p.class,
            closed: AtomicBool::new(false),
            blocking: p.blocking,
            compact: false,
            meta: p.meta,
            first_entered_in_poll: AtomicU64::new(0),
            last_tree_sig: AtomicU64::new(1),
            polls: PollState::default(),
            poll_cache: PollCache::default(),
            parent: p.parent,
            instance: p.instance,
            ctx_task_node: p.ctx_task_node,
            link: p.link,
            fields: Mutex::new(p.fields),
            cached_in: std::sync::OnceLock::new(),
            closed_at: AtomicU64::new(0),
            store_refs: AtomicUsize::new(1),
        }
    }

    /// The node of a compact span (made without one, see `store`): a span
    /// of the program without fields, its parent (id, and node when known)
    /// its context span. Made by the worker that needs it, or by the
    /// exporter for its model.
    pub fn of_compact(
        meta: &'static Metadata<'static>,
        callsite: u32,
        id: u64,
        ts: u64,
        task: u64,
        (parent_id, parent): (u64, Option<Arc<SpanNode>>),
        instance: u64,
    ) -> Self {
        let mut node = Self::new(NodeParts {
            id,
            meta,
            callsite,
            class: SpanClass::User,
            blocking: false,
            parent_id,
            parent,
            instance,
            ctx_task: task,
            ctx_task_node: None,
            ctx_span: parent_id,
            link: None,
            ts,
            fields: Vec::new(),
        });
        node.compact = true;
        node
    }

    /// Makes this node, of a span that closed and that nothing else refers
    /// to, the node of a new span: as [`SpanNode::new`] would make it, but
    /// written in place, field by field (building a node and moving it in
    /// copied all of it), and without the task-only state (its poll state
    /// and poll cache, two of its cache lines) when neither span is a
    /// task: nothing reads or writes that state on a span that is not a
    /// task, so it stays as [`SpanNode::new`] made it.
    #[inline]
    pub fn reuse(&mut self, p: NodeParts) {
        let task = self.class == SpanClass::Task || p.class == SpanClass::Task;
        self.id = p.id;
        self.ts = p.ts;
        self.parent_id = p.parent_id;
        self.ctx_task = p.ctx_task;
        self.ctx_span = p.ctx_span;
        self.callsite = p.callsite;
        self.class = p.class;
        *self.closed.get_mut() = false;
        self.blocking = p.blocking;
        self.compact = false;
        self.meta = p.meta;
        *self.first_entered_in_poll.get_mut() = 0;
        self.parent = p.parent;
        self.instance = p.instance;
        self.ctx_task_node = p.ctx_task_node;
        self.link = p.link;
        if self.fields.is_poisoned() {
            self.fields.clear_poison();
        }
        *self.fields.get_mut().unwrap_or_else(|e| e.into_inner()) = p.fields;
        if self.cached_in.get().is_some() {
            self.cached_in = std::sync::OnceLock::new();
        }
        *self.closed_at.get_mut() = 0;
        *self.store_refs.get_mut() = 1;
        if task {
            *self.last_tree_sig.get_mut() = 1;
            self.polls = PollState::default();
            self.poll_cache = PollCache::default();
        }
    }

    /// Takes the fields of a node about to be reused, for the next span's
    /// to be recorded over (see `FieldRecorder::reusing`).
    pub fn take_fields(&mut self) -> Vec<Field> {
        std::mem::take(self.fields.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// The span closed at raw time `ts`, as `kind`: recorded on the node,
    /// then [`SpanNode::close`].
    pub fn close_at(&self, ts: u64, kind: awaitscope_wire::CloseKind) {
        use awaitscope_wire::CloseKind;
        let k = match kind {
            CloseKind::Span => 0,
            CloseKind::Completed => 1,
            CloseKind::Cancelled => 2,
            CloseKind::Panicked => 3,
        };
        self.closed_at
            .store((ts & !KIND_BITS) | k, Ordering::Relaxed);
        self.close();
    }

    /// When and how the span closed, once [`SpanNode::close_at`] ran.
    pub fn closed_as(&self) -> Option<(u64, awaitscope_wire::CloseKind)> {
        use awaitscope_wire::CloseKind;
        if !self.closed.load(Ordering::Acquire) {
            return None;
        }
        let v = self.closed_at.load(Ordering::Relaxed);
        if v == 0 {
            // Closed by `close` alone (tests).
            return None;
        }
        let kind = match v & KIND_BITS {
            0 => CloseKind::Span,
            1 => CloseKind::Completed,
            2 => CloseKind::Cancelled,
            _ => CloseKind::Panicked,
        };
        Some((v & !KIND_BITS, kind))
    }

    /// The span closed: per-thread caches stop trusting its registry id,
    /// and the task cache that names it drops its entries.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Pairs with the fence in `PollCache::set`.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(task) = self.cached_in.get().and_then(std::sync::Weak::upgrade) {
            task.poll_cache.mark_stale();
        }
    }

    /// The string or display value of a field, by name.
    pub fn field(&self, name: &str) -> Option<Value> {
        let index = self.meta.fields().field(name)?.index();
        let fields = self.fields.lock().unwrap_or_else(|e| e.into_inner());
        fields
            .iter()
            .find(|f| f.index as usize == index)
            .map(|f| f.value.clone())
    }

    /// A field as text: a string as it is, another value rendered.
    pub fn str_field(&self, name: &str) -> Option<String> {
        match self.field(name)? {
            Value::Str(s) => Some(s),
            v => Some(render_value(&v)),
        }
    }

    /// A field as a number: an integer that fits, or a string that parses.
    pub fn u64_field(&self, name: &str) -> Option<u64> {
        match self.field(name)? {
            Value::U64(u) => Some(u),
            Value::I64(i) => u64::try_from(i).ok(),
            Value::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A task span's name, if it has one (tokio records an empty name for
    /// an unnamed task). The one rule for causal traces and await trees.
    pub fn task_name(&self) -> Option<String> {
        self.str_field(names::TASK_NAME).filter(|n| !n.is_empty())
    }

    /// Where the span's task was spawned (a task span) or its resource was
    /// created (a resource span): tokio's `loc.file` and `loc.line`.
    pub fn location(&self) -> Option<(String, u32)> {
        let file = self.str_field(names::LOC_FILE)?;
        let line = self.u64_field(names::LOC_LINE)?;
        Some((file, line as u32))
    }

    /// Field names and values, in declaration order.
    pub fn named_fields(&self) -> Vec<(&'static str, Value)> {
        let names: Vec<&'static str> = self.meta.fields().iter().map(|f| f.name()).collect();
        let mut fields = self
            .fields
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        fields.sort_by_key(|f| f.index);
        fields
            .into_iter()
            .filter_map(|f| names.get(f.index as usize).map(|n| (*n, f.value)))
            .collect()
    }
}

/// A field value as shown in traces and await trees (strings unquoted).
pub(crate) fn render_value(v: &Value) -> String {
    match v {
        Value::I64(i) => i.to_string(),
        Value::U64(u) => u.to_string(),
        Value::F64(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => s.clone(),
    }
}

#[cfg(test)]
mod layout_tests {
    use std::mem::offset_of;

    use super::SpanNode;

    /// What the exporter reads of a span's creation, and entering a span
    /// or waking a task, shares the line of the `Arc`'s two counts (16
    /// bytes before the node); the exporter's last read (`meta`) and a
    /// task's poll state (all that a poll writes) fill the next line, and
    /// the poll cache's flag ends it.
    #[test]
    fn fields_are_grouped_by_who_reads_them() {
        const LINE: usize = 64;
        const ARC_COUNTS: usize = 16;
        let first = [
            offset_of!(SpanNode, id) + 8,
            offset_of!(SpanNode, ts) + 8,
            offset_of!(SpanNode, parent_id) + 8,
            offset_of!(SpanNode, ctx_task) + 8,
            offset_of!(SpanNode, ctx_span) + 8,
            offset_of!(SpanNode, callsite) + 4,
            offset_of!(SpanNode, class) + 1,
            offset_of!(SpanNode, closed) + 1,
        ];
        for end in first {
            assert!(ARC_COUNTS + end <= LINE, "{first:?}");
        }
        assert!(ARC_COUNTS + offset_of!(SpanNode, meta) >= LINE);
        assert!(ARC_COUNTS + offset_of!(SpanNode, first_entered_in_poll) >= LINE);
        assert!(ARC_COUNTS + offset_of!(SpanNode, last_tree_sig) >= LINE);
        assert!(ARC_COUNTS + offset_of!(SpanNode, polls) >= LINE);
        assert!(
            ARC_COUNTS + offset_of!(SpanNode, poll_cache) + 2 <= 2 * LINE,
            "{}",
            offset_of!(SpanNode, poll_cache)
        );
    }
}

#[cfg(test)]
mod reuse_tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use awaitscope_wire::{CloseKind, Field, SpanClass, Value};

    use super::{NodeParts, SpanNode};

    fn parts(id: u64, class: SpanClass, parent: Option<Arc<SpanNode>>) -> NodeParts {
        let meta = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            tracing::info_span!("reused").metadata().unwrap()
        });
        NodeParts {
            id,
            ts: id * 10,
            parent_id: parent.as_ref().map_or(0, |p| p.id),
            ctx_task: id + 1,
            ctx_span: id + 2,
            callsite: 7,
            class,
            blocking: false,
            meta,
            parent,
            instance: 3,
            ctx_task_node: None,
            link: None,
            fields: vec![Field {
                index: 0,
                value: Value::U64(id),
            }],
        }
    }

    /// Leaves on `node` everything a span's life changes: closed, cached in
    /// a task's poll cache, first entered, and (as a task) polled, woken,
    /// its tree sent and its poll cache filled.
    fn live_a_life(node: &Arc<SpanNode>, task: &Arc<SpanNode>) {
        node.first_entered_in_poll.store(4, Ordering::Relaxed);
        node.last_tree_sig.store(99, Ordering::Relaxed);
        node.polls.last_pair_adjacent.store(true, Ordering::Relaxed);
        node.polls.count.store(5, Ordering::Relaxed);
        node.polls.last_end.store(6, Ordering::Relaxed);
        node.polls.wakers.store(2, Ordering::Relaxed);
        node.polls.running.store(true, Ordering::Relaxed);
        // The poll cache taken, and remembering a span entered again in a
        // later poll.
        assert!(node.poll_cache.acquire());
        let span = SpanNode::new(parts(300, SpanClass::User, None));
        span.first_entered_in_poll.store(1, Ordering::Relaxed);
        // SAFETY: acquired above.
        unsafe {
            node.poll_cache.set(0, 11, &span, node);
            assert_eq!(node.poll_cache.get(0, 11), Some(300));
        }
        let _ = node.cached_in.set(Arc::downgrade(task));
        node.close_at(1 << 8, CloseKind::Completed);
        node.store_refs.store(0, Ordering::Relaxed);
    }

    /// Whatever a node was, reused it is what a new node of the same parts
    /// is, wherever a reader of its class looks: a task's poll state and
    /// poll cache are fresh when either the old or the new span is a task.
    #[test]
    fn a_reused_node_is_a_new_node() {
        let task = Arc::new(SpanNode::new(parts(100, SpanClass::Task, None)));
        let parent = Arc::new(SpanNode::new(parts(200, SpanClass::User, None)));
        for (was, now) in [
            (SpanClass::Task, SpanClass::Task),
            (SpanClass::Task, SpanClass::User),
            (SpanClass::User, SpanClass::Task),
            (SpanClass::User, SpanClass::User),
        ] {
            let mut node = Arc::new(SpanNode::new(parts(1, was, Some(parent.clone()))));
            live_a_life(&node, &task);
            Arc::get_mut(&mut node)
                .expect("nobody else holds it")
                .reuse(parts(2, now, None));
            let n = &node;
            assert_eq!(
                (n.id, n.ts, n.parent_id, n.ctx_task, n.ctx_span, n.class),
                (2, 20, 0, 3, 4, now)
            );
            assert!(n.parent.is_none() && n.cached_in.get().is_none());
            assert_eq!(Arc::strong_count(&parent), 1, "the old parent let go");
            assert!(n.closed_as().is_none() && !n.closed.load(Ordering::Relaxed));
            assert_eq!(n.first_entered_in_poll.load(Ordering::Relaxed), 0);
            assert_eq!(n.store_refs.load(Ordering::Relaxed), 1, "one handle");
            assert_eq!(n.fields.lock().unwrap().len(), 1);
            assert_eq!(n.fields.lock().unwrap()[0].value, Value::U64(2));
            if now == SpanClass::Task {
                assert_eq!(n.last_tree_sig.load(Ordering::Relaxed), 1);
                assert!(!n.polls.last_pair_adjacent.load(Ordering::Relaxed));
                assert_eq!(n.polls.count.load(Ordering::Relaxed), 0);
                assert_eq!(n.polls.last_end.load(Ordering::Relaxed), 0);
                assert_eq!(n.polls.wakers(), 0);
                assert!(!n.polls.running.load(Ordering::Relaxed));
                assert!(n.poll_cache.acquire(), "the poll cache is free");
                // SAFETY: acquired just above.
                assert_eq!(unsafe { n.poll_cache.get(0, 11) }, None);
                n.poll_cache.release();
            }
        }
    }
}
