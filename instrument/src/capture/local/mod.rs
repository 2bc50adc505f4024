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
//!
//! Here, the thread's state ([`Local`]), its stacks, wakers, and how a
//! thread finds its state. [`poll`] enters and exits spans and ends polls,
//! [`cache`] maps registry ids to span nodes, [`ring`] pushes records and
//! takes closed spans' nodes back, [`poll_slot`] publishes the poll in
//! progress to the exporter.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use awaitscope_wire::WakeOp;

mod cache;
mod poll;
mod poll_slot;
mod ring;
#[cfg(test)]
mod tests;

use super::record::{Raw, RawWakeStack};
use super::wait_stack::SELF_WAKE_STACK_AT;
use super::Capture;
use crate::span_node::SpanNode;
use cache::{CacheEntry, CACHE};
pub(crate) use poll_slot::PollSlot;
use ring::wake_mark;
pub(crate) use ring::{Returns, LOG_RETURNS, NODE_RETURNS};

/// Deepest span stack tracked per thread; deeper spans are not recorded.
const STACK: usize = 64;
/// Most spans in one poll's await tree.
const TREE: usize = 32;
/// Signature of a poll that entered no span.
const EMPTY_SIG: u64 = 0x9e37_79b9_7f4a_7c15;
/// Marks a node of the poll's await tree whose span closed during the
/// poll (a bit of its depth, which [`STACK`] keeps far below it).
const CLOSED: u16 = 1 << 15;

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
    /// Raw clock reading at the poll's start.
    start: u64,
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
    /// Span ids this thread took and has not used yet: the next, and the
    /// one past the last (see [`Local::next_span_id`]).
    span_ids: (u64, u64),
    /// At this `seq`, look at how full the ring is (see
    /// [`Local::near_full`]): the ring cannot reach the wake mark sooner.
    check_fill_at: u64,
    /// The outermost poll's start, not pushed yet: (task span, raw ts);
    /// span 0 when none. Pushed before any other record (see [`PollSlot`]).
    pending_enter: (u64, u64),
    /// This thread's poll in progress, shared with the exporter.
    slot: Arc<PollSlot>,
    /// The poll (task, raw start) of the last wait seen here (see
    /// [`Local::first_wait_of_poll`]).
    last_wait: (u64, u64),
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
    /// Nodes of `tree` marked [`CLOSED`] since it was last emptied.
    tree_closed: usize,
    sig: u64,
    /// The span inside the poll in progress that was created or exited
    /// last on this thread (registry id, span id; 0: none): the next enter
    /// is usually that span's (`#[instrument]`'s future is entered when
    /// polled right after its creation, and again when dropped right after
    /// its last exit), a span no poll cache knows when it is new each time
    /// (a server's per-request span). Reset at each poll's start and end
    /// and when the span closes here, so that its registry id, reused only
    /// after the close, cannot name another span.
    recent: (u64, u64),
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
    /// Log records this thread made, given back by the exporter once sent
    /// (see [`LOG_RETURNS`]).
    log_returns: rtrb::Consumer<Box<crate::capture::record::RawLog>>,
}

impl Local {
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
        // A wake of itself in its own poll (a `LastDrop` never is: see
        // above), counted on the task: at the counts its stack is due at
        // (see `SELF_WAKE_STACK_AT`), until one was taken, it is taken if
        // the stacks' rate admits one now.
        if by == task
            && self_wake_stack_due(&node.polls.self_wakes)
            && shared
                .wait_stacks
                .admit_now(shared.delta_nanos(shared.origin_raw, ts))
        {
            node.polls
                .self_wakes
                .fetch_or(SELF_WAKE_STACK_TAKEN, Ordering::Relaxed);
            self.wake_with_stack(task, op, ts);
            return;
        }
        self.push_wake(task, by, op, ts);
    }

    /// Pushes a wake record: now, when it is another task's wake during
    /// this poll (a channel send, a lock released), which changes only the
    /// woken task, so nothing needs it after this poll's start and the
    /// poll can still go out as one record; else in order (a task's wake
    /// of itself keeps its place in its poll).
    #[inline(always)]
    fn push_wake(&mut self, task: u64, by: u64, op: WakeOp, ts: u64) {
        let raw = Raw::Wake { task, by, op, ts };
        if self.pending_enter.0 != 0 && self.pending_enter.0 != task {
            self.push_now(raw);
        } else {
            self.push(raw);
        }
    }

    /// Task `task`'s wake of itself in its own poll (at raw time `ts`) at
    /// which its stack is taken (the rate admitted it): the wake, then
    /// where (the thread's stack).
    #[cold]
    #[inline(never)]
    fn wake_with_stack(&mut self, task: u64, op: WakeOp, ts: u64) {
        self.push_wake(task, task, op, ts);
        let stack = super::wait_stack::unwind();
        if stack.is_empty() {
            return;
        }
        let span = match self.current_sid() {
            0 => task,
            s => s,
        };
        self.push(Raw::WakeStack(Box::new(RawWakeStack {
            span,
            task,
            ts,
            stack,
        })));
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

    /// Span id (on the wire) of the innermost span entered on this thread,
    /// or 0: the span of an event made here without an explicit parent
    /// (the store's current span is the same frame's).
    #[inline]
    pub fn current_sid(&self) -> u64 {
        self.frames.last().map_or(0, |f| f.sid)
    }

    /// Whether a task's poll is in progress on this thread (not a
    /// worker's blocking task: between polls a worker is inside its own).
    #[inline]
    pub fn in_poll(&self) -> bool {
        self.task != 0 && self.polls.last().is_some_and(|p| !p.blocking)
    }

    /// The id of a span created on this thread, from the block of ids it
    /// took last (a new block when that one is used up: see
    /// [`super::SPAN_ID_BLOCK`]).
    #[inline]
    pub fn next_span_id(&mut self, shared: &Capture) -> u64 {
        if self.span_ids.0 == self.span_ids.1 {
            self.span_ids = shared.take_span_ids();
        }
        let id = self.span_ids.0;
        self.span_ids.0 += 1;
        id
    }

    /// A span (not a task) was just created inside the poll in progress:
    /// its first enter, usually next, finds it without a lookup (see
    /// [`Local::recent`]).
    #[inline]
    pub fn set_recent(&mut self, reg: u64, sid: u64) {
        self.recent = (reg, sid);
    }

    /// Whether a wait reported now is the first of the task poll in
    /// progress (false outside one): tokio reports a not-ready lock twice
    /// in one poll (the semaphore's acquire and the Mutex's lock around
    /// it), and one stack of a poll is enough (see `capture::wait_stack`).
    pub fn first_wait_of_poll(&mut self) -> bool {
        let poll = (
            self.current_task(),
            self.polls.last().map_or(0, |p| p.start),
        );
        poll.0 != 0 && std::mem::replace(&mut self.last_wait, poll) != poll
    }

    /// The task being polled on this thread, or 0.
    #[inline]
    pub fn current_task(&self) -> u64 {
        match self.task {
            0 => 0,
            i => self.frames.as_slice()[i - 1].sid,
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

fn new_local(shared: &Arc<Capture>) -> Local {
    let (producer, consumer) = rtrb::RingBuffer::new(super::INITIAL_RING.min(shared.ring_capacity));
    let dropped = Arc::new(AtomicU64::new(0));
    let slot = Arc::new(PollSlot::default());
    slot.set_tid(crate::stacks::current_tid());
    let (nodes, returns) = rtrb::RingBuffer::new(NODE_RETURNS);
    let (logs, log_returns) = rtrb::RingBuffer::new(LOG_RETURNS);
    let thread = shared.register_ring(
        consumer,
        dropped.clone(),
        slot.clone(),
        None,
        Some(Returns { nodes, logs }),
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
        span_ids: (0, 0),
        check_fill_at: wake_mark(super::INITIAL_RING.min(shared.ring_capacity)) as u64,
        pending_enter: (0, 0),
        last_wait: (0, 0),
        slot,
        frames: Stack::new(STACK),
        polls: Stack::new(STACK),
        overflow: 0,
        task: 0,
        tree: [(0, 0); TREE],
        tree_len: 0,
        tree_cut: false,
        tree_closed: 0,
        sig: EMPTY_SIG,
        recent: (0, 0),
        last_exit_task: 0,
        last_exit_seq: 0,
        last_exit_ts: 0,
        panicked_task: 0,
        cache: vec![CacheEntry::default(); CACHE].into_boxed_slice(),
        cache_bits: CACHE.trailing_zeros(),
        lookups: 0,
        misses: 0,
        returns,
        log_returns,
    }
}

/// The high bit of a task's `self_wakes`: its stack was taken.
const SELF_WAKE_STACK_TAKEN: u32 = 1 << 31;

/// Counts a task's wake of itself in its own poll on its node's
/// `self_wakes` (the count saturates well below the high bit, which says
/// a stack was taken); whether its stack is due at this one: the
/// [`SELF_WAKE_STACK_AT`]-th, and, while none was taken (the stacks' rate
/// refused it), each count twice the last. Only the thread polling the
/// task writes the count (the task wakes itself in its poll): a load and
/// a store, no read-modify-write.
#[inline]
fn self_wake_stack_due(n: &std::sync::atomic::AtomicU32) -> bool {
    let seen = n.load(Ordering::Relaxed);
    if seen & SELF_WAKE_STACK_TAKEN != 0 || seen >= 1 << 20 {
        return false;
    }
    let now = seen + 1;
    n.store(now, Ordering::Relaxed);
    now.is_multiple_of(SELF_WAKE_STACK_AT) && (now / SELF_WAKE_STACK_AT).is_power_of_two()
}
