//! Per-thread capture state: the thread's ring buffer, the spans it has
//! entered, and the await tree of the poll in progress.
//!
//! Each thread that records owns the producer half of a bounded wait-free
//! single-producer ring ([`rtrb`]); the exporter thread owns the consumer
//! halves. Pushing is a couple of plain stores: no lock, no allocation, no
//! syscall. A full ring drops the record and counts it in a counter only
//! this thread writes.
//!
//! Inside a poll, entering a span records nothing: it extends the poll's
//! await tree (span and depth, in a fixed buffer) and its signature. When the
//! task span is exited, the tree is pushed only if its signature differs from
//! the task's previous poll. A task that keeps awaiting the same thing costs
//! one record per poll (its start and end, see [`PollSlot`]), however deep
//! its spans. Exits need no lookup: they pop this thread's stack.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use awaitscope_wire::{SpanClass, WakeOp};

use super::record::Raw;
use super::Capture;
use crate::span_node::SpanNode;

/// Deepest span stack tracked per thread; deeper spans are not recorded.
const STACK: usize = 64;
/// Most spans in one poll's await tree.
const TREE: usize = 32;
/// Signature of a poll that entered no span.
const EMPTY_SIG: u64 = 0x9e37_79b9_7f4a_7c15;

/// Entries of a thread's span cache at first (a power of two; 16 bytes each).
const CACHE: usize = 1024;
/// Most entries it grows to (256 KiB), when it misses often: a thread that
/// polls thousands of tasks in turn would otherwise look many of them up in
/// the registry at every poll (a lookup costs ~200 ns, a hit a few).
const MAX_CACHE: usize = 1 << 14;
/// Lookups between two checks of the miss rate.
const CACHE_CHECK: u32 = 1 << 14;

/// Cache slot of a registry id in a cache of `2^bits` entries.
#[inline]
fn slot(reg: u64, bits: u32) -> usize {
    // Fibonacci hashing: the top bits of the product index the table.
    (reg.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
}

/// A cached registry lookup: registry id to span id, class and node.
#[derive(Clone, Default)]
struct CacheEntry {
    reg: u64,
    node: Option<Arc<SpanNode>>,
}

/// Two polls of one task closer than this (in ns) with nothing recorded in
/// between on the thread are the poll that completed and the drop of its
/// future. The drop follows within microseconds unless the thread is
/// preempted; an aborted task is dropped when the abort is handled, which on
/// a worker that ran nothing else since that task's last poll is the one
/// case mistaken for completion (only within this window).
const ADJACENT_NS: u64 = 10_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Kind {
    /// A task span: entering it starts a poll, exiting ends it.
    Task,
    /// A span entered during a poll: part of the await tree.
    InPoll,
    /// A span entered outside any poll: recorded as enter/exit.
    #[default]
    Outside,
}

/// The outermost poll in progress on a thread, for the exporter.
///
/// A poll that records nothing while it runs is pushed as one record when
/// it ends (`Raw::Poll`); its start is pushed on its own only if something
/// else is recorded during it. So that a poll that runs long (a task
/// blocking its worker) is still seen while it runs, the thread publishes
/// its poll here; the exporter reads it after each drain and announces a
/// poll that has run for a while. Written only by its thread: `start`,
/// then `span` (release); cleared by `span = 0`. A reader that reads the
/// same span before and after `start` has a start of a poll of that span
/// (the exporter also knows which polls already ended). Aligned to its own
/// cache lines: threads' slots are allocated side by side, and sharing a
/// line would make the workers' writes at every poll contend.
///
/// It also shows the spans entered inside that poll (its async stack), for
/// the stall watchdog to read while the poll runs: `spans[..depth]`,
/// outermost first, each written (relaxed) before `depth` is (release).
/// A reader checks that the slot still shows the same poll after reading
/// them (see [`PollSlot::read_spans`]). The worker's thread id is set once,
/// when the thread registers, for the watchdog to signal it.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct PollSlot {
    span: AtomicU64,
    start: AtomicU64,
    /// Spans entered in the poll and not exited (may exceed `SLOT_SPANS`).
    depth: AtomicUsize,
    /// The first `SLOT_SPANS` of them, outermost first.
    spans: [AtomicU64; SLOT_SPANS],
    /// The owning thread's kernel thread id (0: unknown).
    tid: AtomicU64,
}

/// Spans of a poll's async stack published in its thread's [`PollSlot`].
pub(crate) const SLOT_SPANS: usize = TREE;

impl PollSlot {
    /// Publishes the poll of `span` started at raw time `start`. Only the
    /// owning thread calls it.
    #[inline]
    fn publish(&self, span: u64, start: u64) {
        self.depth.store(0, Ordering::Relaxed);
        self.start.store(start, Ordering::Relaxed);
        self.span.store(span, Ordering::Release);
    }

    /// Publishes that the thread's poll ended (no poll in progress).
    #[inline]
    fn clear(&self) {
        self.span.store(0, Ordering::Release);
    }

    /// Whether it shows a poll of `span` (only the owning thread asks).
    #[inline]
    fn shows(&self, span: u64) -> bool {
        self.span.load(Ordering::Relaxed) == span
    }

    /// A span was entered in the poll at in-poll depth `depth` (0 for the
    /// outermost). Only the owning thread calls it.
    #[inline(always)]
    fn push_span(&self, depth: usize, span: u64) {
        if let Some(s) = self.spans.get(depth) {
            s.store(span, Ordering::Relaxed);
        }
        self.depth.store(depth + 1, Ordering::Release);
    }

    /// The poll's spans are now `depth` deep. Only the owning thread calls it.
    #[inline(always)]
    fn set_depth(&self, depth: usize) {
        self.depth.store(depth, Ordering::Release);
    }

    /// Records the owning thread's kernel id.
    pub fn set_tid(&self, tid: u64) {
        self.tid.store(tid, Ordering::Relaxed);
    }

    /// The owning thread's kernel id, 0 if unknown.
    pub fn tid(&self) -> u64 {
        self.tid.load(Ordering::Relaxed)
    }

    /// The spans entered in the poll `(span, start)` (as [`PollSlot::read`]
    /// gave it), innermost first, into `out`; false (and `out` unspecified)
    /// when the slot no longer shows that poll. The owner may push and pop
    /// while this reads: the result is a stack it had at some moment during
    /// the read, or, rarely, a mix of two adjacent ones.
    pub fn read_spans(&self, poll: (u64, u64), out: &mut Vec<u64>) -> bool {
        out.clear();
        let depth = self.depth.load(Ordering::Acquire).min(SLOT_SPANS);
        out.extend(
            self.spans[..depth]
                .iter()
                .map(|s| s.load(Ordering::Relaxed)),
        );
        out.reverse();
        std::sync::atomic::fence(Ordering::Acquire);
        self.read() == Some(poll)
    }

    /// The poll in progress as (span, raw start), if any.
    pub fn read(&self) -> Option<(u64, u64)> {
        let span = self.span.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Acquire);
        let again = self.span.load(Ordering::Acquire);
        (span != 0 && span == again).then_some((span, start))
    }
}

/// A stack in a fixed array whose entries are written in place.
///
/// `Vec::push` of a struct builds it on the stack and copies it into the
/// buffer; the copy's wide loads of the narrow stores just made stall the
/// CPU's store forwarding, several times per poll (seen in profiles of the
/// enter and exit paths). Entries here are filled field by field where they
/// live. Capacity is fixed: what does not fit is not tracked (see
/// [`STACK`]).
struct Stack<T> {
    items: Box<[T]>,
    len: usize,
}

impl<T: Default> Stack<T> {
    fn new(capacity: usize) -> Self {
        Self {
            items: (0..capacity).map(|_| T::default()).collect(),
            len: 0,
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }

    #[inline]
    fn last(&self) -> Option<&T> {
        self.as_slice().last()
    }

    #[inline]
    fn last_mut(&mut self) -> Option<&mut T> {
        self.items[..self.len].last_mut()
    }

    /// Fills the next entry in place with `fill`; false when full.
    #[inline]
    fn push_with(&mut self, fill: impl FnOnce(&mut T)) -> bool {
        let Some(slot) = self.items.get_mut(self.len) else {
            return false;
        };
        fill(slot);
        self.len += 1;
        true
    }

    /// Removes entry `i`, moving the ones above it down; returns the removed
    /// entry (left in the array past the end, for the caller to take from).
    #[inline]
    fn remove(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.len {
            return None;
        }
        if i + 1 < self.len {
            self.items[i..self.len].rotate_left(1);
        }
        self.len -= 1;
        self.items.get_mut(self.len)
    }
}

/// An entered span. Kept small: most are spans entered inside a poll,
/// pushed and popped several times per poll; a task's frame has its
/// [`PollInProgress`] beside it.
#[derive(Clone, Copy, Default)]
struct StackFrame {
    /// `tracing` registry id, to match the exit.
    reg: u64,
    sid: u64,
    kind: Kind,
}

/// The poll in progress of a task frame (one per `Kind::Task` frame, in the
/// same order).
#[derive(Default)]
struct PollInProgress {
    /// The task's node (its last tree signature lives there).
    node: Option<Arc<SpanNode>>,
    /// This enter directly followed the task's previous exit on this thread,
    /// the pattern of tokio dropping a completed future.
    adjacent: bool,
    /// State of the enclosing poll, restored on exit.
    saved_sig: u64,
    saved_task: usize,
    tree_base: usize,
    /// Whether this thread holds the task's poll cache (taken at the first
    /// span entered in the poll); `None` until then.
    owns_cache: Option<bool>,
    /// Spans entered in this poll so far (position in the poll cache of the
    /// next one).
    entered: usize,
    /// A blocking-pool task (see [`SpanNode::blocking`]): the polls inside
    /// it are a worker's, not part of its await tree.
    blocking: bool,
}

/// One layer instance's state on one thread.
pub(crate) struct Local {
    instance: u64,
    capture: std::sync::Weak<Capture>,
    /// This thread's index (stable across ring replacements).
    thread: u32,
    max_ring: usize,
    /// Slots this thread's ring grew by, taken from the shared budget and
    /// given back when the state is dropped.
    grown: usize,
    producer: rtrb::Producer<Raw>,
    /// Records dropped on this thread (only this thread writes it).
    dropped: Arc<AtomicU64>,
    /// Records pushed or dropped so far.
    seq: u64,
    /// At this `seq`, look at how full the ring is (see
    /// [`Local::near_full`]): the ring cannot reach the wake mark sooner.
    check_fill_at: u64,
    /// The outermost poll's start, not pushed yet: (task span, raw ts);
    /// span 0 when none. Pushed before any other record (see [`PollSlot`]).
    pending_enter: (u64, u64),
    /// This thread's poll in progress, shared with the exporter.
    slot: Arc<PollSlot>,
    frames: Stack<StackFrame>,
    /// The polls of the task frames in `frames`, innermost last.
    polls: Stack<PollInProgress>,
    /// Spans entered beyond [`STACK`], not tracked.
    overflow: usize,
    /// 1 + index in `frames` of the innermost task being polled, or 0.
    task: usize,
    /// Await tree of the poll in progress (nested polls stack up here).
    tree: [(u64, u16); TREE],
    tree_len: usize,
    /// The tree did not fit: always send it.
    tree_cut: bool,
    sig: u64,
    last_exit_task: u64,
    last_exit_seq: u64,
    last_exit_ts: u64,
    /// The task that panicked on this thread, if any.
    pub panicked_task: u64,
    /// Registry id -> span node, so that entering a span and naming a woken
    /// task cost no registry lookup. An entry is trusted only while its span
    /// is open: a registry id is reused only after the span closed, and
    /// `closed` is set (release) before that.
    cache: Box<[CacheEntry]>,
    /// log2 of the cache's size.
    cache_bits: u32,
    /// Lookups and misses since the last check of the miss rate.
    lookups: u32,
    misses: u32,
    /// Nodes this thread made whose spans closed, given back by the
    /// exporter for the next span to reuse (see [`NODE_RETURNS`]).
    returns: rtrb::Consumer<Arc<SpanNode>>,
}

/// Closed spans' nodes the exporter gives back to the thread that made
/// them, at most this many waiting per thread (past that the exporter
/// frees them itself). A span's node is allocated by the thread that
/// creates the span and usually released last by the exporter, when it
/// reads the span's close: freed there, every node would go back to the
/// creating thread's allocator arena under its lock, against that thread's
/// own allocations (malloc's futex waits in the profiles of #17), and the
/// creating thread would allocate every node anew. Given back, a node's
/// memory is reused by the next span of its thread: a server creating a
/// span per request allocates no node in steady state.
pub(crate) const NODE_RETURNS: usize = 1024;

impl Local {
    /// Index of the cache entry holding the span with registry id `reg`,
    /// filled from `lookup` on a miss.
    #[inline]
    fn cached(
        &mut self,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) -> Option<usize> {
        self.lookups += 1;
        if self.lookups == CACHE_CHECK {
            self.check_cache();
        }
        let i = slot(reg, self.cache_bits);
        let e = &mut self.cache[i];
        let fresh = e.reg == reg
            && e.node
                .as_ref()
                .is_some_and(|n| !n.closed.load(Ordering::Acquire));
        if !fresh {
            self.misses += 1;
            *e = CacheEntry {
                reg,
                node: Some(lookup()?),
            };
        }
        Some(i)
    }

    /// Grows the cache (x4, up to [`MAX_CACHE`]) when over 1/32 of the
    /// lookups since the last check missed.
    #[cold]
    fn check_cache(&mut self) {
        let grow = self.misses > self.lookups / 32 && self.cache.len() < MAX_CACHE;
        self.lookups = 0;
        self.misses = 0;
        if !grow {
            return;
        }
        let bits = (self.cache_bits + 2).min(MAX_CACHE.trailing_zeros());
        let mut bigger = vec![CacheEntry::default(); 1 << bits].into_boxed_slice();
        for e in self.cache.iter_mut() {
            if let Some(node) = e.node.take() {
                if !node.closed.load(Ordering::Acquire) {
                    bigger[slot(e.reg, bits)] = CacheEntry {
                        reg: e.reg,
                        node: Some(node),
                    };
                }
            }
        }
        self.cache = bigger;
        self.cache_bits = bits;
    }

    /// Span id of the span with registry id `reg` (see [`Local::node`]).
    #[cfg(test)]
    pub fn span_id(
        &mut self,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) -> Option<u64> {
        self.node(reg, lookup).map(|n| n.id)
    }

    /// The node of the span with registry id `reg`: the task being polled
    /// if it is that span, else from the cache (see [`Local::cached`]).
    #[inline]
    fn node(
        &mut self,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) -> Option<&Arc<SpanNode>> {
        // Wakers are mostly cloned by their own task during its poll: that
        // task's poll holds its node (an entered span cannot have closed).
        if self.task != 0 && self.frames.as_slice()[self.task - 1].reg == reg {
            return self.polls.last().and_then(|p| p.node.as_ref());
        }
        let i = self.cached(reg, lookup)?;
        self.cache[i].node.as_ref()
    }

    /// The span with registry id `reg` was entered.
    #[inline]
    pub fn enter_reg(
        &mut self,
        shared: &Capture,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) {
        if !self.enter_known_in_poll(reg) {
            self.enter_reg_slow(shared, reg, lookup);
        }
    }

    /// The common case, a few times per poll: inside a task's poll, the
    /// `k`-th span entered is the one the task's last poll entered `k`-th
    /// (its poll cache knows it). Kept small and inlined, apart from the
    /// other cases, so that this path costs a few dozen instructions.
    /// Returns false, having changed nothing, when it is not that case.
    #[inline(always)]
    fn enter_known_in_poll(&mut self, reg: u64) -> bool {
        let len = self.frames.len;
        if self.task == 0 || len >= STACK {
            return false;
        }
        let Some(t) = self.polls.last_mut() else {
            return false;
        };
        let Some(node) = &t.node else {
            return false;
        };
        if t.blocking {
            return false;
        }
        let owns = match t.owns_cache {
            Some(owns) => owns,
            None => {
                let owns = node.poll_cache.acquire();
                t.owns_cache = Some(owns);
                owns
            }
        };
        if !owns {
            return false;
        }
        // SAFETY: this thread acquired the cache (just above or earlier in
        // this poll) and releases it at the task's exit.
        let Some(sid) = (unsafe { node.poll_cache.get(t.entered, reg) }) else {
            return false;
        };
        t.entered += 1;
        let tree_base = t.tree_base;
        self.push_in_poll(reg, sid, tree_base);
        true
    }

    /// Pushes the frame of a span entered inside the poll in progress and
    /// adds it to the poll's await tree. `frames` has room.
    #[inline(always)]
    fn push_in_poll(&mut self, reg: u64, sid: u64, tree_base: usize) {
        let len = self.frames.len;
        let depth = (len - self.task) as u16;
        let repeat = self.tree_len > tree_base && self.tree[self.tree_len - 1] == (sid, depth);
        if repeat {
            // Entered again right after its exit (a future polled then
            // dropped, a loop): one node.
        } else if self.tree_len < TREE {
            self.sig = (self.sig.rotate_left(7) ^ sid).wrapping_mul(0x100_0000_01b3) ^ depth as u64;
            self.tree[self.tree_len] = (sid, depth);
            self.tree_len += 1;
        } else {
            self.tree_cut = true;
        }
        let f = &mut self.frames.items[len];
        f.reg = reg;
        f.sid = sid;
        f.kind = Kind::InPoll;
        self.frames.len = len + 1;
        self.slot.push_span(depth as usize, sid);
    }

    /// [`Local::enter_reg`] apart from [`Local::enter_known_in_poll`]: task
    /// spans (once per poll), spans outside polls, cache misses.
    #[inline]
    fn enter_reg_slow(
        &mut self,
        shared: &Capture,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) {
        let in_poll = self.task != 0
            && self.frames.len() < STACK
            && self.polls.last().is_some_and(|t| !t.blocking);
        let found = if in_poll {
            self.find_in_poll(reg, lookup)
        } else {
            // Outside polls, and in a worker's (or `spawn_blocking`
            // closure's) blocking task: no await tree to follow there.
            self.find(reg, lookup)
        };
        if let Some((sid, class, node)) = found {
            self.enter(shared, reg, sid, class, node);
        }
    }

    /// The span with registry id `reg` entered inside a poll that its
    /// task's poll cache does not know ([`Local::enter_known_in_poll`] asked
    /// it first, and took the cache if it could): found in this thread's
    /// cache, and remembered in the poll cache for the task's next poll.
    #[inline(always)]
    fn find_in_poll(
        &mut self,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) -> Option<(u64, SpanClass, Option<Arc<SpanNode>>)> {
        let t = self.polls.last_mut()?;
        let k = t.entered;
        t.entered += 1;
        let owns = t.owns_cache == Some(true);
        let i = self.cached(reg, lookup)?;
        if owns {
            if let (Some(n), Some(tn)) = (
                &self.cache[i].node,
                self.polls.last().and_then(|t| t.node.as_ref()),
            ) {
                // SAFETY: this thread took the cache in this poll and gives
                // it back at the task's exit.
                unsafe { tn.poll_cache.set(k, reg, n, tn) };
            }
        }
        self.found(i)
    }

    /// The span with registry id `reg`, from this thread's cache: (span id,
    /// class, node if it is a task).
    #[inline(always)]
    fn find(
        &mut self,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) -> Option<(u64, SpanClass, Option<Arc<SpanNode>>)> {
        let i = self.cached(reg, lookup)?;
        self.found(i)
    }

    /// What [`Local::enter`] needs of cache entry `i`.
    #[inline(always)]
    fn found(&mut self, i: usize) -> Option<(u64, SpanClass, Option<Arc<SpanNode>>)> {
        let node = self.cache[i].node.as_ref()?;
        let (sid, class) = (node.id, node.class);
        // A task's node moves from the cache into its frame for the poll and
        // back at the exit: no reference-count traffic per poll.
        let task_node = match class {
            SpanClass::Task => self.cache[i].node.take(),
            _ => None,
        };
        Some((sid, class, task_node))
    }

    /// Caches a span just created on this thread: its first enter (usually
    /// on this thread, right after) then needs no registry lookup.
    #[inline]
    pub fn remember(&mut self, reg: u64, node: &Arc<SpanNode>) {
        self.cache[slot(reg, self.cache_bits)] = CacheEntry {
            reg,
            node: Some(node.clone()),
        };
    }

    /// Drops this thread's cache entry of a span that closed (usually here:
    /// a task ends on the thread that polled it last, a span in the poll
    /// that entered it), so that the cache does not keep its node alive
    /// until the entry is reused or the thread exits.
    #[inline]
    pub fn forget(&mut self, reg: u64) {
        let e = &mut self.cache[slot(reg, self.cache_bits)];
        if e.reg == reg {
            e.node = None;
        }
    }

    /// Puts a task's node back in the cache after its poll.
    #[inline]
    fn uncache_task(&mut self, reg: u64, node: Arc<SpanNode>) {
        let e = &mut self.cache[slot(reg, self.cache_bits)];
        if e.node.is_none() || e.reg == reg {
            *e = CacheEntry {
                reg,
                node: Some(node),
            };
        }
    }

    /// A `tokio::task::waker` event for the task with registry id `reg`.
    ///
    /// Clones and drops only count the task's live wakers on its node; the
    /// count goes out with the end of each poll. A record is pushed for a
    /// wake, and for the drop of the last waker outside the task's own poll
    /// (a task left with no waker and not woken can never run again).
    #[inline]
    pub fn waker(
        &mut self,
        shared: &Capture,
        reg: u64,
        op: WakeOp,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) {
        let by = self.current_task();
        let Some(node) = self.node(reg, lookup) else {
            return;
        };
        let task = node.id;
        let wakers = &node.polls.wakers;
        let op = match op {
            WakeOp::Clone => {
                wakers.fetch_add(1, Ordering::Relaxed);
                return;
            }
            WakeOp::Drop => {
                let before = wakers.fetch_sub(1, Ordering::Relaxed);
                if before != 1 || by == task {
                    return;
                }
                WakeOp::LastDrop
            }
            WakeOp::Wake => {
                wakers.fetch_sub(1, Ordering::Relaxed);
                WakeOp::Wake
            }
            op @ (WakeOp::WakeByRef | WakeOp::LastDrop) => op,
        };
        let ts = shared.raw();
        let raw = Raw::Wake { task, by, op, ts };
        if self.pending_enter.0 != 0 && self.pending_enter.0 != task {
            // Another task's wake during this poll (a channel send, a
            // lock released): it changes only the woken task, so nothing
            // needs it after this poll's start, and the poll can still go
            // out as one record. A task's wake of itself keeps its order.
            self.push_now(raw);
        } else {
            self.push(raw);
        }
    }

    /// The node of the task being polled on this thread.
    #[inline]
    pub fn current_task_node(&self) -> Option<Arc<SpanNode>> {
        match self.task {
            0 => None,
            _ => self.polls.last().and_then(|p| p.node.clone()),
        }
    }

    /// Registry (or span store) id of the innermost span entered on this
    /// thread, or 0. Past [`STACK`] nested spans, the innermost tracked.
    #[inline]
    pub fn current_reg(&self) -> u64 {
        self.frames.last().map_or(0, |f| f.reg)
    }

    /// The task being polled on this thread, or 0.
    #[inline]
    pub fn current_task(&self) -> u64 {
        match self.task {
            0 => 0,
            i => self.frames.as_slice()[i - 1].sid,
        }
    }

    /// Pushes a record. A full ring is replaced by one four times larger
    /// (up to the configured maximum); past that the record is dropped and
    /// counted.
    #[inline]
    pub fn push(&mut self, raw: Raw) {
        if self.pending_enter.0 != 0 {
            self.flush_enter();
        }
        self.push_now(raw);
    }

    /// Pushes a record about a span that is not a task (its creation or
    /// close) without splitting the poll in progress: the poll still goes
    /// out as one record at its end, after this one. A request's span,
    /// created and closed inside its connection task's poll, then costs two
    /// records instead of four (the poll's start and end pushed apart).
    /// The order stays right for whoever reads the ring: a whole poll's
    /// record is stamped with its end, later than this, and the spans it
    /// entered reach its await tree (pushed with its end) after their
    /// creation.
    #[inline]
    pub fn push_beside_poll(&mut self, raw: Raw) {
        self.push_now(raw);
    }

    /// Pushes the start of the poll in progress: something is recorded
    /// during it.
    #[inline(never)]
    fn flush_enter(&mut self) {
        let (span, ts) = std::mem::take(&mut self.pending_enter);
        self.push_now(Raw::Enter {
            span,
            task: true,
            ts,
        });
    }

    #[inline]
    fn push_now(&mut self, raw: Raw) {
        self.seq += 1;
        if let Err(rtrb::PushError::Full(raw)) = self.producer.push(raw) {
            self.overflow_push(raw);
        }
        if self.seq >= self.check_fill_at {
            self.near_full();
        }
    }

    /// Drain on demand: a ring three quarters full wakes the exporter
    /// rather than wait for its next tick. The hot path pays one compare
    /// of a counter of its own per record: the ring's fill (an atomic of
    /// the consumer's) is read only when enough records were pushed since
    /// the last look for the ring to possibly have reached the mark.
    #[cold]
    #[inline(never)]
    fn near_full(&mut self) {
        let capacity = self.producer.buffer().capacity();
        let used = capacity - self.producer.slots();
        let mark = wake_mark(capacity);
        if used >= mark {
            if let Some(shared) = self.capture.upgrade() {
                shared.on_demand_wakes.fetch_add(1, Ordering::Relaxed);
                shared.wake_exporter();
            }
            // Still full at the next look: wake it again, at most every
            // eighth of the ring.
            self.check_fill_at = self.seq + (capacity as u64 / 8).max(1);
        } else {
            self.check_fill_at = self.seq + (mark - used) as u64;
        }
    }

    #[cold]
    fn overflow_push(&mut self, raw: Raw) {
        let capacity = self.producer.buffer().capacity();
        let grow = match self.capture.upgrade() {
            // At least double, or not at all: the budget shared by all
            // threads may hold less than the x4 step.
            Some(shared) if capacity < self.max_ring => {
                shared.take_ring_budget((capacity * 4).min(self.max_ring) - capacity, capacity)
            }
            _ => 0,
        };
        if grow > 0 {
            // The exporter drains the old ring before this one: it was
            // registered first, and nothing is pushed to it any more.
            let (producer, consumer) = rtrb::RingBuffer::new(capacity + grow);
            self.grown += grow;
            self.shared_register(consumer);
            self.producer = producer;
            self.check_fill_at = self.seq + wake_mark(capacity + grow) as u64;
            if self.producer.push(raw).is_ok() {
                return;
            }
        }
        // Single writer: a plain load and store, no locked instruction.
        let n = self.dropped.load(Ordering::Relaxed);
        self.dropped.store(n + 1, Ordering::Relaxed);
    }

    fn shared_register(&mut self, consumer: rtrb::Consumer<Raw>) {
        if let Some(shared) = self.capture.upgrade() {
            shared.register_ring(
                consumer,
                self.dropped.clone(),
                self.slot.clone(),
                Some(self.thread),
                None,
            );
        }
    }

    /// A node holding `node`: the allocation of a node this thread made
    /// and the exporter gave back (see [`NODE_RETURNS`]) when there is one
    /// nobody else refers to, else a new one.
    #[inline]
    pub fn new_node(&mut self, node: SpanNode) -> Arc<SpanNode> {
        if let Ok(mut old) = self.returns.pop() {
            if let Some(slot) = Arc::get_mut(&mut old) {
                // Drops the old span's fields and references here, on the
                // thread that made them.
                *slot = node;
                return old;
            }
        }
        Arc::new(node)
    }

    /// A span was entered. `ts` reads the clock; it is only called when the
    /// enter is recorded.
    #[inline]
    fn enter(
        &mut self,
        shared: &Capture,
        reg: u64,
        sid: u64,
        class: SpanClass,
        node: Option<Arc<SpanNode>>,
    ) {
        if self.frames.len() >= STACK {
            self.overflow += 1;
            return;
        }
        if class == SpanClass::Task {
            let ts = shared.raw();
            let blocking = node.as_ref().is_some_and(|n| n.blocking);
            if let Some(n) = &node {
                n.polls.running.store(true, Ordering::Relaxed);
            }
            let adjacent = self.last_exit_task == sid
                && self.last_exit_seq == self.seq
                && shared.delta_nanos(self.last_exit_ts, ts) < ADJACENT_NS;
            self.frames.push_with(|f| {
                f.reg = reg;
                f.sid = sid;
                f.kind = Kind::Task;
            });
            let (saved_sig, saved_task, tree_base) = (self.sig, self.task, self.tree_len);
            self.polls.push_with(|p| {
                p.node = node;
                p.adjacent = adjacent;
                p.saved_sig = saved_sig;
                p.saved_task = saved_task;
                p.tree_base = tree_base;
                p.owns_cache = None;
                p.entered = 0;
                p.blocking = blocking;
            });
            self.task = self.frames.len();
            self.sig = EMPTY_SIG;
            if blocking {
                // Its poll runs the whole closure (a worker thread's: as long
                // as the runtime): recorded as it starts, and the polls
                // inside it are each one record, as below.
                self.push(Raw::Enter {
                    span: sid,
                    task: true,
                    ts,
                });
            } else {
                // Its start goes out with its end, unless something is
                // recorded in between (see `PollSlot`). A poll inside
                // another one (a worker's inside its blocking task,
                // `block_in_place`, a runtime inside a task) first sends the
                // enclosing poll's start, if that is still held.
                if self.pending_enter.0 != 0 {
                    self.flush_enter();
                }
                self.pending_enter = (sid, ts);
                self.slot.publish(sid, ts);
            }
        } else if self.task != 0 {
            let tree_base = self.polls.last().map_or(0, |p| p.tree_base);
            self.push_in_poll(reg, sid, tree_base);
        } else {
            self.frames.push_with(|f| {
                f.reg = reg;
                f.sid = sid;
                f.kind = Kind::Outside;
            });
            let ts = shared.raw();
            self.push(Raw::Enter {
                span: sid,
                task: false,
                ts,
            });
        }
    }

    /// A span was exited. Returns false when this thread never saw it
    /// entered.
    #[inline]
    pub fn exit(&mut self, shared: &Capture, reg: u64) -> bool {
        // The common case: the innermost frame, a span inside a poll.
        let len = self.frames.len;
        if len > 0 {
            let f = &self.frames.items[len - 1];
            if f.reg == reg && f.kind == Kind::InPoll {
                self.frames.len = len - 1;
                self.slot.set_depth(len - 1 - self.task);
                return true;
            }
        }
        self.exit_slow(shared, reg)
    }

    /// [`Local::exit`] of a task span (a poll's end), a span outside polls,
    /// or a span exited out of order. In three steps: find and remove the
    /// span's frame ([`Local::exit_untracked`] if there is none), repair the
    /// stack if the frame was not the innermost
    /// ([`Local::repair_after_out_of_order_exit`]), and record the exit by
    /// what the frame was: nothing for a span inside a poll (its await tree
    /// node was recorded at its enter), an `Exit` for a span outside polls,
    /// the end of a poll for a task ([`Local::end_poll`]).
    #[inline]
    fn exit_slow(&mut self, shared: &Capture, reg: u64) -> bool {
        let Some(pos) = self.frames.as_slice().iter().rposition(|f| f.reg == reg) else {
            return self.exit_untracked();
        };
        // Nearly always the innermost frame (`remove` then moves nothing).
        let Some(&mut frame) = self.frames.remove(pos) else {
            return false;
        };
        let in_order = pos == self.frames.len();
        if !in_order {
            self.repair_after_out_of_order_exit(pos);
        }
        match frame.kind {
            Kind::InPoll => {
                if self.task != 0 {
                    self.slot.set_depth(self.frames.len() - self.task);
                }
            }
            Kind::Outside => {
                let ts = shared.raw();
                self.push(Raw::Exit {
                    span: frame.sid,
                    task: false,
                    tree: false,
                    wakers: 0,
                    ts,
                });
            }
            Kind::Task => self.end_poll(shared, frame, pos, in_order),
        }
        true
    }

    /// The exit of a span no frame holds: one entered past [`STACK`] (true:
    /// one fewer of those), or one this thread never saw entered (false).
    #[inline]
    fn exit_untracked(&mut self) -> bool {
        if self.overflow > 0 {
            self.overflow -= 1;
            return true;
        }
        false
    }

    /// Stack repair after the frame at `pos` was removed from under others
    /// (rare: a span exited out of order), which moved the frames above it
    /// down one. Guarantees afterwards: `task` is again 1 + the index of the
    /// innermost task frame (or 0), and every poll's `saved_task` still
    /// names its enclosing task's frame.
    #[cold]
    fn repair_after_out_of_order_exit(&mut self, pos: usize) {
        self.task = self
            .frames
            .as_slice()
            .iter()
            .rposition(|f| f.kind == Kind::Task)
            .map_or(0, |i| i + 1);
        for i in 0..self.polls.len() {
            let p = &mut self.polls.items[i];
            if p.saved_task > pos + 1 {
                p.saved_task -= 1;
            }
        }
    }

    /// The end of a poll: the task frame `frame`, which was at `pos` in the
    /// stack (the innermost frame if `in_order`), was exited. In order:
    /// take the poll's state out of `polls`; send its await tree if it
    /// changed ([`Local::send_tree`]), then the poll itself
    /// ([`Local::send_poll`]), so the exporter reads the tree before the
    /// poll's end; count the poll on the task's node
    /// ([`Local::count_poll`]); give the task's node back to the cache; and
    /// restore the state of the enclosing poll ([`Local::leave_poll`]).
    #[inline(always)]
    fn end_poll(&mut self, shared: &Capture, frame: StackFrame, pos: usize, in_order: bool) {
        // Its poll: the innermost one unless exits came out of order.
        let at = if in_order {
            self.polls.len().saturating_sub(1)
        } else {
            self.frames.as_slice()[..pos]
                .iter()
                .filter(|f| f.kind == Kind::Task)
                .count()
        };
        let innermost = at + 1 == self.polls.len();
        // Taken from in place (the entry stays in the array).
        let Some(p) = self.polls.remove(at) else {
            return;
        };
        let node = p.node.take();
        let poll = PollInProgress { node: None, ..*p };
        let ts = shared.raw();
        let tree = self.send_tree(frame.sid, &poll, node.as_deref());
        self.send_poll(frame.sid, node.as_deref(), tree, ts);
        if let Some(n) = node {
            Self::count_poll(&n, &poll, ts);
            self.uncache_task(frame.reg, n);
        }
        self.leave_poll(frame.sid, &poll, at, pos, innermost, ts);
    }

    /// Await-tree output of the poll `poll` of task `task` ending: pushes its
    /// `TreeNode`s if the tree differs from the one last sent for the task
    /// (by signature; a tree cut at [`TREE`] nodes is always sent), and
    /// remembers the new signature on the node. Returns whether it sent
    /// the tree, which the poll's record says.
    #[inline(always)]
    fn send_tree(&mut self, task: u64, poll: &PollInProgress, node: Option<&SpanNode>) -> bool {
        let changed = self.tree_cut
            || node.is_none_or(|n| n.last_tree_sig.load(Ordering::Relaxed) != self.sig);
        if changed {
            // The tree goes with the poll's end: it does not need the
            // poll's start before it, which stays held.
            let whole = self.pending_enter.0 == task;
            for i in poll.tree_base..self.tree_len {
                let (span, depth) = self.tree[i];
                let raw = Raw::TreeNode { task, span, depth };
                if whole {
                    self.push_now(raw);
                } else {
                    self.push(raw);
                }
            }
            if let Some(n) = node {
                // A cut tree is sent every time.
                let sig = if self.tree_cut { 0 } else { self.sig };
                n.last_tree_sig.store(sig, Ordering::Relaxed);
            }
        }
        changed
    }

    /// The poll's own record: one `Poll` (start and end) if nothing else
    /// was recorded on this thread since it started (its start is still
    /// held in `pending_enter`), else an `Exit` after the `Enter` already
    /// pushed. Either carries whether a new tree precedes it and the
    /// task's live wakers.
    #[inline(always)]
    fn send_poll(&mut self, task: u64, node: Option<&SpanNode>, tree: bool, ts: u64) {
        let wakers = node.map_or(0, |n| n.polls.wakers());
        if self.pending_enter.0 == task {
            // Nothing was recorded during the poll: one record.
            let (_, start) = std::mem::take(&mut self.pending_enter);
            self.push_now(Raw::Poll {
                span: task,
                start,
                end: ts,
                tree,
                wakers,
            });
        } else {
            self.push(Raw::Exit {
                span: task,
                task: true,
                tree,
                wakers,
                ts,
            });
        }
    }

    /// Poll accounting on the task's node, which dumps and the close read:
    /// one more poll, ended at `ts`, not running; whether this poll
    /// directly followed the previous one (see [`ADJACENT_NS`]); and the
    /// task's poll cache given back if this poll took it. Only the thread
    /// polling the task writes these, so plain loads and stores suffice.
    #[inline(always)]
    fn count_poll(node: &SpanNode, poll: &PollInProgress, ts: u64) {
        let polls = &node.polls;
        polls
            .count
            .store(polls.count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        polls.last_end.store(ts, Ordering::Relaxed);
        polls.running.store(false, Ordering::Relaxed);
        node.last_pair_adjacent
            .store(poll.adjacent, Ordering::Relaxed);
        if poll.owns_cache == Some(true) {
            node.poll_cache.release();
        }
    }

    /// Leaves the poll `poll` (at `at` in `polls`, its frame was at `pos`)
    /// of task `task`, ended at `ts`. Guarantees afterwards: the tree, its
    /// signature and `task` are the enclosing poll's again (or, if an
    /// enclosing poll ended before one inside it, the polls inside now
    /// belong to its enclosing task); the poll slot no longer shows this
    /// poll; with no task polled the tree is empty; and the next enter
    /// can tell whether it directly follows this exit.
    #[inline(always)]
    fn leave_poll(
        &mut self,
        task: u64,
        poll: &PollInProgress,
        at: usize,
        pos: usize,
        innermost: bool,
        ts: u64,
    ) {
        if innermost {
            self.tree_len = poll.tree_base;
            self.tree_cut = false;
            self.sig = poll.saved_sig;
            self.task = poll.saved_task;
        } else {
            self.relink_inner_polls(poll, at, pos);
        }
        if self.slot.shows(task) {
            self.slot.clear();
        }
        if self.task == 0 {
            self.tree_len = 0;
            self.tree_cut = false;
        }
        self.last_exit_task = task;
        self.last_exit_seq = self.seq;
        self.last_exit_ts = ts;
    }

    /// An enclosing poll (`poll`, at `at`, its frame at `pos`) ended
    /// before one inside it: that one goes on, and the polls that were
    /// inside the ended one are now inside its enclosing task. (Its await
    /// tree nodes stay in the buffer until the poll inside ends.)
    #[cold]
    fn relink_inner_polls(&mut self, poll: &PollInProgress, at: usize, pos: usize) {
        for i in at..self.polls.len() {
            let p = &mut self.polls.items[i];
            if p.saved_task == pos + 1 {
                p.saved_task = poll.saved_task;
            }
        }
    }
}

/// This thread's states, one per layer instance. Boxed: [`FAST`] points
/// into one, and it must not move when the vector grows.
#[allow(clippy::vec_box)]
struct Locals(Vec<Box<Local>>);

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(shared) = self.capture.upgrade() {
            shared.give_ring_budget(std::mem::take(&mut self.grown));
        }
    }
}

impl Drop for Locals {
    fn drop(&mut self) {
        // Nothing may reach a state being dropped.
        let _ = FAST.try_with(|f| f.set(std::ptr::null_mut()));
    }
}

thread_local! {
    static LOCAL: RefCell<Locals> = const { RefCell::new(Locals(Vec::new())) };
    /// The state in [`LOCAL`] used last; null before the first use and
    /// after teardown, [`busy`] while a state is in use. A `Cell` of a
    /// pointer needs no destructor, so reading it is a plain thread-local
    /// load, without the lazy-registration check of `LOCAL`: the fast path
    /// of every callback (entered twice per span per poll).
    static FAST: Cell<*mut Local> = const { Cell::new(std::ptr::null_mut()) };
}

/// The value of [`FAST`] while a state is in use (no `Local` lives there).
#[inline(always)]
fn busy() -> *mut Local {
    std::ptr::NonNull::dangling().as_ptr()
}

/// Puts [`FAST`] back when `f` returns or unwinds.
struct Release(*mut Local);

impl Drop for Release {
    #[inline(always)]
    fn drop(&mut self) {
        FAST.with(|c| c.set(self.0));
    }
}

/// Runs `f` with this thread's state for `shared`'s layer instance, creating
/// it (and registering its ring with the exporter) on first use. Returns
/// `None` during thread teardown or on re-entry; the record is then counted
/// as dropped.
#[inline]
pub(crate) fn with_local<R>(shared: &Arc<Capture>, f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    let p = FAST.with(Cell::get);
    if !p.is_null() && p != busy() {
        // SAFETY: a non-null `FAST` other than `busy()` points at a boxed
        // `Local` owned by `LOCAL`: it stays alive until `LOCAL`'s
        // destructor, which nulls `FAST` first, and nothing else refers to
        // it, because whoever uses it sets `FAST` to `busy()` meanwhile (the
        // slow path and `current_task_node` back off then).
        let l = unsafe { &mut *p };
        if l.instance == shared.instance {
            FAST.with(|c| c.set(busy()));
            let _release = Release(p);
            return Some(f(l));
        }
    }
    with_local_slow(shared, f)
}

#[cold]
fn with_local_slow<R>(shared: &Arc<Capture>, f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    let r = LOCAL.try_with(|cell| {
        if FAST.with(Cell::get) == busy() {
            // Re-entered from inside `f`.
            return None;
        }
        let Ok(mut locals) = cell.try_borrow_mut() else {
            return None;
        };
        let i = match locals.0.iter().position(|l| l.instance == shared.instance) {
            Some(i) => i,
            None => {
                // Forget the rings of layer instances that are gone.
                locals.0.retain(|l| !l.producer.is_abandoned());
                locals.0.push(Box::new(new_local(shared)));
                locals.0.len() - 1
            }
        };
        let p: *mut Local = &mut *locals.0[i];
        // From here the state is reached through `p` only (see
        // `with_local`); the next call takes the fast path.
        drop(locals);
        FAST.with(|c| c.set(busy()));
        let _release = Release(p);
        // SAFETY: as in `with_local`.
        Some(f(unsafe { &mut *p }))
    });
    match r {
        Ok(Some(r)) => Some(r),
        _ => {
            shared.buffer_full.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The node of the task layer instance `instance` sees polled on this
/// thread (for causal traces captured outside the layer).
pub(crate) fn current_task_node(instance: u64) -> Option<Arc<SpanNode>> {
    LOCAL
        .try_with(|cell| {
            if FAST.with(Cell::get) == busy() {
                return None;
            }
            let locals = cell.try_borrow().ok()?;
            locals
                .0
                .iter()
                .find(|l| l.instance == instance)
                .and_then(|l| l.current_task_node())
        })
        .ok()
        .flatten()
}

/// Records in a ring of `capacity` slots at which its thread wakes the
/// exporter: three quarters.
fn wake_mark(capacity: usize) -> usize {
    (capacity - capacity / 4).max(1)
}

fn new_local(shared: &Arc<Capture>) -> Local {
    let (producer, consumer) = rtrb::RingBuffer::new(super::INITIAL_RING.min(shared.ring_capacity));
    let dropped = Arc::new(AtomicU64::new(0));
    let slot = Arc::new(PollSlot::default());
    slot.set_tid(crate::stacks::current_tid());
    let (give_back, returns) = rtrb::RingBuffer::new(NODE_RETURNS);
    let thread = shared.register_ring(
        consumer,
        dropped.clone(),
        slot.clone(),
        None,
        Some(give_back),
    );
    Local {
        instance: shared.instance,
        capture: Arc::downgrade(shared),
        thread,
        max_ring: shared.ring_capacity,
        grown: 0,
        producer,
        dropped,
        seq: 0,
        check_fill_at: wake_mark(super::INITIAL_RING.min(shared.ring_capacity)) as u64,
        pending_enter: (0, 0),
        slot,
        frames: Stack::new(STACK),
        polls: Stack::new(STACK),
        overflow: 0,
        task: 0,
        tree: [(0, 0); TREE],
        tree_len: 0,
        tree_cut: false,
        sig: EMPTY_SIG,
        last_exit_task: 0,
        last_exit_seq: 0,
        last_exit_ts: 0,
        panicked_task: 0,
        cache: vec![CacheEntry::default(); CACHE].into_boxed_slice(),
        cache_bits: CACHE.trailing_zeros(),
        lookups: 0,
        misses: 0,
        returns,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use awaitscope_wire::SpanClass;

    use super::*;

    fn node(id: u64) -> Arc<SpanNode> {
        node_of(id, SpanClass::User)
    }

    fn node_of(id: u64, class: SpanClass) -> Arc<SpanNode> {
        let meta = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            tracing::info_span!("cached").metadata().unwrap()
        });
        Arc::new(SpanNode {
            id,
            meta,
            callsite: 0,
            class,
            blocking: false,
            parent: None,
            parent_id: 0,
            instance: 0,
            ctx_task: 0,
            ctx_task_node: None,
            ctx_span: 0,
            link: None,
            ts: 0,
            fields: Mutex::new(Vec::new()),
            last_tree_sig: AtomicU64::new(1),
            last_pair_adjacent: AtomicBool::new(false),
            entered_in_poll: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            poll_cache: Default::default(),
            cached_in: Default::default(),
            closed_at: Default::default(),
            polls: Default::default(),
        })
    }

    /// Drains the records pushed so far as (kind, span, task flag).
    fn drained(consumer: &mut rtrb::Consumer<Raw>) -> Vec<(&'static str, u64, bool)> {
        let mut out = Vec::new();
        while let Ok(raw) = consumer.pop() {
            out.push(match raw {
                Raw::Enter { span, task, .. } => ("enter", span, task),
                Raw::Exit { span, task, .. } => ("exit", span, task),
                Raw::Poll { span, .. } => ("poll", span, true),
                Raw::TreeNode { span, .. } => ("tree", span, false),
                _ => ("other", 0, false),
            });
        }
        out
    }

    /// A thread whose ring reaches three quarters full wakes the exporter,
    /// again every eighth of the ring while it stays that full, and not
    /// below the mark once drained.
    #[test]
    fn a_ring_three_quarters_full_wakes_the_exporter() {
        let shared = Capture::new(64);
        let mut l = new_local(&shared);
        let mut consumer = shared
            .new_rings
            .lock()
            .unwrap()
            .pop()
            .expect("the thread's ring")
            .consumer;
        assert_eq!(l.producer.buffer().capacity(), 64);
        let wakes = || shared.on_demand_wakes.load(Ordering::Relaxed);
        let push = |l: &mut Local, n: usize| {
            for _ in 0..n {
                l.push_now(Raw::Wake {
                    task: 1,
                    by: 0,
                    op: WakeOp::WakeByRef,
                    ts: 0,
                });
            }
        };
        push(&mut l, 47);
        assert_eq!(wakes(), 0, "below the mark");
        push(&mut l, 1);
        assert_eq!(wakes(), 1, "at 48 of 64");
        push(&mut l, 7);
        assert_eq!(wakes(), 1, "not at every record");
        push(&mut l, 1);
        assert_eq!(wakes(), 2, "an eighth of the ring later, still full");
        while consumer.pop().is_ok() {}
        push(&mut l, 47);
        assert_eq!(wakes(), 2, "drained: below the mark again");
        push(&mut l, 1);
        assert_eq!(wakes(), 3);
    }

    /// Rings grow on overflow while the budget shared by all threads lasts
    /// (at least doubling, or not at all); past it records are dropped and
    /// counted, and a thread's exit gives its growth back.
    #[test]
    fn rings_grow_within_a_budget_shared_by_all_threads() {
        use crate::capture::INITIAL_RING;
        let max = 4 * INITIAL_RING;
        let shared = Capture::new(max);
        // Fills a thread's rings (nothing drains them) with `n` records.
        let fill = |l: &mut Local, n: usize| {
            for _ in 0..n {
                l.push_now(Raw::Wake {
                    task: 1,
                    by: 0,
                    op: WakeOp::WakeByRef,
                    ts: 0,
                });
            }
        };
        let mut a = new_local(&shared);
        // The first ring keeps its records (the exporter would drain it).
        fill(&mut a, INITIAL_RING + max + 10);
        assert_eq!(a.producer.buffer().capacity(), max);
        assert_eq!(a.grown, max - INITIAL_RING);
        assert_eq!(
            a.dropped.load(Ordering::Relaxed),
            10,
            "past its largest ring"
        );
        let mut b = new_local(&shared);
        fill(&mut b, INITIAL_RING + 1);
        assert_eq!(
            b.producer.buffer().capacity(),
            max,
            "the budget still had x4"
        );
        // Left: 2 * max - 2 * (max - INITIAL_RING) = 2 * INITIAL_RING, which is
        // at least double a first ring but less than the x4 step.
        let mut c = new_local(&shared);
        fill(&mut c, INITIAL_RING + 1);
        assert_eq!(c.producer.buffer().capacity(), 3 * INITIAL_RING);
        let mut d = new_local(&shared);
        fill(&mut d, INITIAL_RING + 5);
        assert_eq!(
            d.producer.buffer().capacity(),
            INITIAL_RING,
            "no budget left"
        );
        assert_eq!(d.dropped.load(Ordering::Relaxed), 5);
        drop(a);
        let mut e = new_local(&shared);
        fill(&mut e, INITIAL_RING + 1);
        assert_eq!(e.producer.buffer().capacity(), max, "a's growth came back");
    }

    /// A task polled inside another's poll whose span is exited after the
    /// outer one (out of order): each poll still ends with its own task,
    /// and the thread's state is empty afterwards.
    #[test]
    fn nested_polls_exited_out_of_order() {
        let shared = Capture::new(1024);
        let mut l = new_local(&shared);
        let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
        let (a, x, b) = (
            node_of(1, SpanClass::Task),
            node(2),
            node_of(3, SpanClass::Task),
        );
        l.enter_reg(&shared, 10, || Some(a.clone()));
        l.enter_reg(&shared, 20, || Some(x.clone()));
        l.enter_reg(&shared, 30, || Some(b.clone()));
        assert_eq!(l.current_task(), 3);
        // The outer task's span is exited first.
        assert!(l.exit(&shared, 10));
        assert_eq!(l.current_task(), 3, "the inner poll goes on");
        assert!(l.exit(&shared, 30));
        assert!(l.exit(&shared, 20));
        assert_eq!((l.frames.len(), l.polls.len(), l.task), (0, 0, 0));
        let records = drained(&mut consumer);
        let polls: Vec<_> = records.iter().filter(|r| r.2).map(|r| (r.0, r.1)).collect();
        assert_eq!(
            polls,
            [("enter", 1), ("enter", 3), ("exit", 1), ("exit", 3)],
            "{records:?}"
        );
        assert_eq!(a.polls.count.load(Ordering::Relaxed), 1);
        assert_eq!(b.polls.count.load(Ordering::Relaxed), 1);
        assert!(!a.polls.running.load(Ordering::Relaxed));
        // Nested polls reuse the stacks: again, in order this time.
        l.enter_reg(&shared, 10, || Some(a.clone()));
        l.enter_reg(&shared, 30, || Some(b.clone()));
        assert!(l.exit(&shared, 30));
        assert!(l.exit(&shared, 10));
        assert_eq!((l.frames.len(), l.polls.len(), l.task), (0, 0, 0));
        assert_eq!(a.polls.count.load(Ordering::Relaxed), 2);
    }

    /// A worker thread of a multi-thread runtime runs inside a blocking
    /// task's poll (tokio starts each worker with `spawn_blocking`): that
    /// poll is recorded as it starts, and the tasks polled inside it are
    /// each one record, with their own await trees and poll caches.
    #[test]
    fn a_workers_polls_are_one_record_each_inside_its_blocking_task() {
        let shared = Capture::new(1024);
        let mut l = new_local(&shared);
        let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
        let mut worker = node_of(1, SpanClass::Task);
        Arc::get_mut(&mut worker).unwrap().blocking = true;
        let (a, x) = (node_of(2, SpanClass::Task), node(3));
        l.enter_reg(&shared, 10, || Some(worker.clone()));
        assert_eq!(l.current_task(), 1);
        assert_eq!(l.slot.read(), None, "its start is in the ring already");
        for _ in 0..2 {
            l.enter_reg(&shared, 20, || Some(a.clone()));
            assert_eq!(l.current_task(), 2);
            assert_eq!(l.slot.read().map(|(s, _)| s), Some(2), "published");
            l.enter_reg(&shared, 30, || Some(x.clone()));
            assert!(l.exit(&shared, 30));
            assert!(l.exit(&shared, 20));
            assert_eq!(l.slot.read(), None, "cleared");
            assert_eq!(l.current_task(), 1);
        }
        let worker_poll = l.polls.last().expect("the worker's poll goes on");
        assert_eq!(
            worker_poll.entered, 0,
            "the worker's poll cache is not used"
        );
        assert!(l.exit(&shared, 10));
        assert_eq!(
            drained(&mut consumer),
            [
                ("enter", 1, true),
                ("tree", 3, false),
                ("poll", 2, true),
                ("poll", 2, true),
                ("exit", 1, true)
            ],
            "the second poll's tree is unchanged"
        );
        assert_eq!(a.polls.count.load(Ordering::Relaxed), 2);
        // The task's own cache knows its span from its first poll on.
        assert!(a.poll_cache.acquire());
        // SAFETY: acquired just above.
        assert_eq!(unsafe { a.poll_cache.get(0, 30) }, Some(3));
        a.poll_cache.release();
    }

    /// A poll during which nothing is recorded is one record; another
    /// task's wake during it keeps it one record
    /// and goes first; the task's wake of itself splits it, in order.
    #[test]
    fn a_poll_is_one_record_unless_it_records_something_of_its_own() {
        let shared = Capture::new(1024);
        let mut l = new_local(&shared);
        let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
        let (a, b) = (node_of(1, SpanClass::Task), node_of(2, SpanClass::Task));
        let poll = |l: &mut Local, wake: Option<(u64, &Arc<SpanNode>)>| {
            l.enter_reg(&shared, 10, || Some(a.clone()));
            assert_eq!(l.slot.read().map(|(s, _)| s), Some(1), "published");
            if let Some((reg, n)) = wake {
                l.waker(&shared, reg, WakeOp::WakeByRef, || Some(n.clone()));
            }
            assert!(l.exit(&shared, 10));
            assert_eq!(l.slot.read(), None, "cleared");
        };
        poll(&mut l, None);
        assert_eq!(drained(&mut consumer), [("poll", 1, true)]);
        poll(&mut l, Some((20, &b)));
        assert_eq!(
            drained(&mut consumer),
            [("other", 0, false), ("poll", 1, true)],
            "b's wake, then a's whole poll"
        );
        poll(&mut l, Some((10, &a)));
        assert_eq!(
            drained(&mut consumer),
            [("enter", 1, true), ("other", 0, false), ("exit", 1, true)],
            "a's own wake inside its poll"
        );
    }

    /// A span remembered in a task's poll cache closes and its registry id
    /// goes to a new span: the next poll that enters that id enters the new
    /// span, not the closed one.
    #[test]
    fn poll_cache_forgets_a_closed_span() {
        let shared = Capture::new(1024);
        let mut l = new_local(&shared);
        let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
        let task = node_of(1, SpanClass::Task);
        let (x, y) = (node(2), node(3));
        let poll = |l: &mut Local, span: &Arc<SpanNode>| {
            l.enter_reg(&shared, 10, || Some(task.clone()));
            l.enter_reg(&shared, 20, || Some(span.clone()));
            assert!(l.exit(&shared, 20));
            assert!(l.exit(&shared, 10));
        };
        poll(&mut l, &x);
        poll(&mut l, &x);
        assert!(
            x.cached_in.get().is_some(),
            "the span is in the task's cache"
        );
        let trees = |c: &mut rtrb::Consumer<Raw>| -> Vec<u64> {
            drained(c)
                .into_iter()
                .filter(|r| r.0 == "tree")
                .map(|r| r.1)
                .collect()
        };
        assert_eq!(trees(&mut consumer), [2], "one tree, sent once");
        x.close();
        poll(&mut l, &y);
        assert_eq!(trees(&mut consumer), [3], "the new span's tree");
        poll(&mut l, &y);
        assert_eq!(trees(&mut consumer), Vec::<u64>::new(), "unchanged");
    }

    #[test]
    fn cache_grows_for_many_spans_in_turn() {
        let shared = Capture::new(16);
        let mut l = new_local(&shared);
        let nodes: Vec<_> = (1..=5000u64).map(node).collect();
        let mut missed = 0;
        for round in 0..8 {
            missed = 0;
            for n in &nodes {
                let id = l.span_id(n.id * 7919, || {
                    missed += 1;
                    Some(n.clone())
                });
                assert_eq!(id, Some(n.id), "round {round}");
            }
        }
        assert!(l.cache.len() > CACHE, "grew to {}", l.cache.len());
        assert!(missed < 5000 / 4, "misses in the last round: {missed}");
    }

    #[test]
    fn cache_never_trusts_a_closed_span() {
        let shared = Capture::new(16);
        let mut l = new_local(&shared);
        let first = node(1);
        assert_eq!(l.span_id(42, || Some(first.clone())), Some(1));
        assert_eq!(
            l.span_id(42, || panic!("an open span is served from the cache")),
            Some(1)
        );
        // The span closes and the registry hands its id to another span.
        first.closed.store(true, Ordering::Release);
        assert_eq!(l.span_id(42, || Some(node(2))), Some(2));
        assert_eq!(l.span_id(42, || None), Some(2));
    }
}
