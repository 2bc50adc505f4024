//! Poll-local spans: a span of the program made inside a poll, without
//! fields, whose parent is the task or another such span of the same poll
//! (most `#[instrument]` spans of a request handler), lives in a table of
//! its thread's own until its poll ends.
//!
//! A span in the store's [`super::slots`] costs read-modify-writes at its
//! creation and close (its slot's guard, its count of handles, its state,
//! the removal) and more on its parent's slot, whose cache line moves with
//! the task between the workers. A poll-local span costs none: its
//! creation, clones and close are plain loads and stores in its thread's
//! table (its close: one compare-exchange on that thread's line, the
//! state's), and it holds no reference on a parent that is the task or a
//! span of the store (entered on this thread, so alive, while the poll
//! runs). What goes to the exporter is what a compact span sends (see
//! `Capture::new_compact`): the wire and the collector see no difference.
//!
//! When its poll ends with it still open, or something asks the store for
//! its node (an event in it, a child that needs a node, a causal trace, a
//! later enter no cache knows), the span is **promoted**: it gets a slot
//! in the store, as a compact span, and takes then the reference on its
//! parent it did without. Its id stays the one `tracing` has: an id of a
//! poll-local span names its thread's table (see [`Decoded`]), whose entry
//! then names the slot until the span closes.
//!
//! A span made in a poll often goes to another thread at once: a future
//! it instruments, spawned (`tokio::spawn(fut.instrument(span))`), may be
//! polled on another worker before the poll that made the span ends. Any
//! thread holding a handle can therefore promote the span, or count its
//! references: the count is in the entry's [`Entry::state`], changed by
//! compare-exchange on a line that only the span's own thread touches,
//! nearly always, and frozen while a thread promotes it.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing_core::Metadata;

/// Entries of a thread's table: spans open at once in one poll beyond
/// these go to the store's slots (a poll that makes more is rare; the
/// store serves them as before).
pub(super) const ENTRIES: usize = 64;

/// The top bit of an id: a poll-local span's (the store's ids never have
/// it: their generation is 31 bits, see `slots`).
const LOCAL: u64 = 1 << 63;
/// Where an id keeps its table's index.
const TABLE_SHIFT: u32 = 52;
/// Tables a store has at most: 11 bits, of which the last value names no
/// table (it is `u64::MAX`'s, the store's id of no span).
pub(super) const MAX_TABLES: usize = (1 << 11) - 1;
/// Where an id keeps its entry's generation (46 bits above the index).
const GEN_SHIFT: u32 = 6;
const GEN_MASK: u64 = (1 << 46) - 1;
const IDX_MASK: u64 = (ENTRIES as u64) - 1;

/// Whether `id` names a poll-local span (or no span: `u64::MAX`).
#[inline(always)]
pub(super) fn is_local(id: u64) -> bool {
    id & LOCAL != 0
}

/// A poll-local span's id, taken apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Decoded {
    pub table: usize,
    pub idx: usize,
    pub gen: u64,
}

impl Decoded {
    #[inline(always)]
    pub(super) fn of(id: u64) -> Self {
        Self {
            table: ((id & !LOCAL) >> TABLE_SHIFT) as usize,
            idx: (id & IDX_MASK) as usize,
            gen: (id >> GEN_SHIFT) & GEN_MASK,
        }
    }

    #[inline(always)]
    pub(super) fn id(self) -> u64 {
        LOCAL
            | (self.table as u64) << TABLE_SHIFT
            | (self.gen & GEN_MASK) << GEN_SHIFT
            | self.idx as u64
    }
}

/// What an entry's span is: written by the table's thread when it makes
/// the span, before its id is out, and not changed until the entry is free
/// again, so that any thread holding the id can read it.
#[derive(Clone, Copy)]
pub(super) struct Span {
    pub meta: &'static Metadata<'static>,
    /// Its span id on the wire.
    pub sid: u64,
    /// Its creation (raw clock).
    pub ts: u64,
    /// The task whose poll made it.
    pub task: u64,
    /// Its parent's id in the store (the task's or a span's, either kind).
    pub parent: u64,
    /// It holds a reference on its parent: a poll-local parent's, counted
    /// in the parent's [`Entry::state`]. A parent of the store's is not
    /// referenced until the span is promoted.
    pub holds_parent: bool,
}

/// [`Entry::state`]: the span's handles and poll-local children (the low
/// 32 bits; 0: closed), while it is poll-local.
const REFS: u64 = u32::MAX as u64;
/// [`Entry::state`]: a thread is promoting the span; the count is frozen.
const PROMOTING: u64 = 1 << 32;
/// [`Entry::state`]: promoted; [`Entry::store`] names its slot, which
/// counts its references from then on.
const PROMOTED: u64 = 1 << 33;
/// [`Entry::state`]: the low bits of the entry's generation, so that a
/// compare-exchange made with a stale id (the entry closed and taken
/// again since it read the state) fails.
const STATE_GEN_SHIFT: u32 = 34;

/// The generation bits of a state for ids of generation `gen`.
#[inline(always)]
fn state_gen(gen: u64) -> u64 {
    gen << STATE_GEN_SHIFT
}

/// Whether state `s` is of generation `gen`.
#[inline(always)]
fn of_gen(s: u64, gen: u64) -> bool {
    (s ^ state_gen(gen)) >> STATE_GEN_SHIFT == 0
}

/// One poll-local span.
pub(super) struct Entry {
    span: UnsafeCell<Option<Span>>,
    /// The generation of the ids that name this entry: advanced when the
    /// span closes, so that an id kept after that finds nothing.
    gen: AtomicU64,
    /// References while poll-local, whether it is being or was promoted,
    /// and the generation's low bits (see [`REFS`], [`PROMOTING`],
    /// [`PROMOTED`], [`STATE_GEN_SHIFT`]). Changed with compare-exchanges
    /// by whichever thread holds a reference: on a line its thread wrote,
    /// nearly always.
    state: AtomicU64,
    /// The span's key in the store's slots, once promoted.
    store: AtomicU64,
}

/// A change of a poll-local span's count of references.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Counted {
    /// Done: the references left.
    Local(u32),
    /// The span is in the store's slots (this key): count there.
    Store(u64),
    /// The id is stale, or the span closed.
    Gone,
}

/// How a promotion starts (see [`Table::begin_promote`]).
pub(super) enum Promotion {
    /// This thread promotes it; its references so far.
    Mine(u32),
    /// Promoted already (this key).
    Done(u64),
    Gone,
}

/// One thread's table (see the module's doc).
pub(super) struct Table {
    index: usize,
    entries: Box<[Entry]>,
    /// Entries free (bit `i`: entry `i`), and entries this thread made
    /// whose span it has not seen closed or promoted: the table's thread's
    /// only.
    free: Cell<u64>,
    open: Cell<u64>,
    /// Entries whose span closed on another thread (promoted or not), for
    /// the table's thread to take back.
    returned: AtomicU64,
}

// SAFETY: `free` and `open` are touched only by the thread that leases the
// table (see `LocalTables::mine`); an entry's `span` is written only by
// that thread while no id names the entry; the rest is atomics.
unsafe impl Sync for Table {}
unsafe impl Send for Table {}

/// A poll-local span as a lookup sees it.
pub(super) enum Seen {
    /// Promoted: its key in the store's slots.
    Store(u64),
    /// Poll-local (or being promoted).
    Local,
}

/// Spins on a state being promoted by another thread (a slot taken and
/// filled: bounded work), yielding if that thread was preempted.
fn wait_for_promotion(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

impl Table {
    fn new(index: usize) -> Self {
        Self {
            index,
            entries: (0..ENTRIES)
                .map(|_| Entry {
                    span: UnsafeCell::new(None),
                    gen: AtomicU64::new(0),
                    state: AtomicU64::new(0),
                    store: AtomicU64::new(0),
                })
                .collect(),
            free: Cell::new(u64::MAX),
            open: Cell::new(0),
            returned: AtomicU64::new(0),
        }
    }

    /// The id of entry `idx` as it is now.
    #[inline]
    fn id_of(&self, idx: usize) -> u64 {
        Decoded {
            table: self.index,
            idx,
            gen: self.entries[idx].gen.load(Ordering::Relaxed),
        }
        .id()
    }

    /// The id entry `idx` has now, taken apart.
    #[inline]
    pub(super) fn decoded(&self, idx: usize) -> Decoded {
        Decoded::of(self.id_of(idx))
    }

    /// Takes a free entry for a new span; `None` when all are in use.
    /// Table's thread only.
    #[inline]
    pub(super) fn take(&self) -> Option<(usize, u64)> {
        let mut free = self.free.get();
        if free == 0 {
            free = self.returned.swap(0, Ordering::Acquire);
            if free == 0 {
                return None;
            }
            self.open.set(self.open.get() & !free);
        }
        let idx = free.trailing_zeros() as usize;
        self.free.set(free & !(1 << idx));
        Some((idx, self.id_of(idx)))
    }

    /// Gives back an entry taken and not filled. Table's thread only.
    #[inline]
    pub(super) fn untake(&self, idx: usize) {
        self.free.set(self.free.get() | 1 << idx);
    }

    /// Fills entry `idx` (taken, its id not yet out) with a span of one
    /// reference. Table's thread only.
    #[inline]
    pub(super) fn fill(&self, idx: usize, span: Span) {
        let e = &self.entries[idx];
        // SAFETY: the table's thread's, and no id names the entry yet.
        unsafe { *e.span.get() = Some(span) };
        let gen = e.gen.load(Ordering::Relaxed);
        e.state.store(state_gen(gen) | 1, Ordering::Relaxed);
        self.open.set(self.open.get() | 1 << idx);
    }

    /// The span of entry `d`, if the id is current. Any thread (see
    /// [`Span`]).
    #[inline]
    pub(super) fn span(&self, d: Decoded) -> Option<Span> {
        let e = &self.entries[d.idx];
        if e.gen.load(Ordering::Acquire) != d.gen {
            return None;
        }
        // SAFETY: written before the id was out, not changed while the
        // generation is `d`'s (checked before and after).
        let span = unsafe { *e.span.get() };
        (e.gen.load(Ordering::Acquire) == d.gen)
            .then_some(span)
            .flatten()
    }

    /// How `d` stands, from any thread: `None` if the id is stale.
    #[inline]
    pub(super) fn seen(&self, d: Decoded) -> Option<Seen> {
        let e = &self.entries[d.idx];
        if e.gen.load(Ordering::Acquire) != d.gen {
            return None;
        }
        let state = e.state.load(Ordering::Acquire);
        let store = e.store.load(Ordering::Acquire);
        if !of_gen(state, d.gen) {
            return None;
        }
        Some(if state & PROMOTED != 0 {
            Seen::Store(store)
        } else {
            Seen::Local
        })
    }

    /// One reference more (`up`) or fewer on the span `d`, by a thread
    /// that holds one (or, for `up`, a handle of it).
    #[inline]
    pub(super) fn count(&self, d: Decoded, up: bool) -> Counted {
        let e = &self.entries[d.idx];
        let mut spins = 0;
        loop {
            let s = e.state.load(Ordering::Acquire);
            if !of_gen(s, d.gen) {
                return Counted::Gone;
            }
            if s & PROMOTED != 0 {
                return Counted::Store(e.store.load(Ordering::Acquire));
            }
            if s & PROMOTING != 0 {
                wait_for_promotion(&mut spins);
                continue;
            }
            if s & REFS == 0 {
                return Counted::Gone;
            }
            let next = if up { s + 1 } else { s - 1 };
            if e.state
                .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Counted::Local((next & REFS) as u32);
            }
        }
    }

    /// Starts promoting the span `d`: this thread does it, or another did.
    pub(super) fn begin_promote(&self, d: Decoded) -> Promotion {
        let e = &self.entries[d.idx];
        let mut spins = 0;
        loop {
            let s = e.state.load(Ordering::Acquire);
            if !of_gen(s, d.gen) {
                return Promotion::Gone;
            }
            if s & PROMOTED != 0 {
                return Promotion::Done(e.store.load(Ordering::Acquire));
            }
            if s & PROMOTING != 0 {
                wait_for_promotion(&mut spins);
                continue;
            }
            if s & REFS == 0 {
                return Promotion::Gone;
            }
            if e.state
                .compare_exchange_weak(s, s | PROMOTING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Promotion::Mine((s & REFS) as u32);
            }
        }
    }

    /// The promotion of `d` is done: its slot's key is `store`.
    pub(super) fn end_promote(&self, d: Decoded, store: u64) {
        let e = &self.entries[d.idx];
        e.store.store(store, Ordering::Relaxed);
        e.state
            .store(state_gen(d.gen) | PROMOTED, Ordering::Release);
    }

    /// The promotion of `d` could not be done (the store is full): it
    /// stays poll-local, its count as it was.
    pub(super) fn abort_promote(&self, d: Decoded) {
        self.entries[d.idx]
            .state
            .fetch_and(!PROMOTING, Ordering::AcqRel);
    }

    /// The span `d` closed while poll-local, or its promoted slot is gone:
    /// the entry is free (its old ids name nothing). `own`: on the table's
    /// thread.
    pub(super) fn release(&self, d: Decoded, own: bool) {
        let e = &self.entries[d.idx];
        let gen = (d.gen + 1) & GEN_MASK;
        e.state.store(state_gen(gen), Ordering::Relaxed);
        e.gen.store(gen, Ordering::Release);
        if own {
            self.open.set(self.open.get() & !(1 << d.idx));
            self.free.set(self.free.get() | 1 << d.idx);
        } else {
            self.returned.fetch_or(1 << d.idx, Ordering::Release);
        }
    }

    /// Entries this thread made whose span it has not seen closed or
    /// promoted (bit `i`: entry `i`; table's thread).
    #[inline(always)]
    pub(super) fn open_mask(&self) -> u64 {
        self.open.get()
    }

    /// Entry `idx` is no longer to be looked at for promotion (table's
    /// thread).
    #[inline]
    pub(super) fn forget(&self, idx: usize) {
        self.open.set(self.open.get() & !(1 << idx));
    }

    /// Whether the span `d` is poll-local now (not promoted nor closed).
    #[inline]
    pub(super) fn is_local(&self, d: Decoded) -> bool {
        let e = &self.entries[d.idx];
        let s = e.state.load(Ordering::Acquire);
        of_gen(s, d.gen) && s & (PROMOTED | PROMOTING) == 0 && s & REFS != 0
    }
}

/// A store's tables: one leased by each thread that makes poll-local
/// spans, given back when it exits.
pub(super) struct LocalTables {
    inner: Arc<Inner>,
}

struct Inner {
    /// Identifies the store in threads' leases.
    key: u64,
    /// Tables by index, for ids seen on other threads; null past the last.
    by_index: Box<[AtomicPtr<Table>]>,
    /// Every table made (boxed: `by_index` points into them).
    #[allow(clippy::vec_box)]
    all: Mutex<Vec<Box<Table>>>,
    /// Tables no thread leases (their threads exited).
    idle: Mutex<Vec<usize>>,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A thread's lease of a table, given back when the thread exits.
struct Lease {
    inner: Arc<Inner>,
    index: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = LAST.try_with(|c| {
            if c.get().0 == self.inner.key {
                c.set((0, std::ptr::null()));
            }
        });
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(self.index);
    }
}

thread_local! {
    static LEASES: RefCell<Vec<Lease>> = const { RefCell::new(Vec::new()) };
    /// The table used last (store key, table): no destructor, so a plain
    /// thread-local load. Key 0: none.
    static LAST: Cell<(u64, *const Table)> = const { Cell::new((0, std::ptr::null())) };
}

impl LocalTables {
    pub(super) fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
                by_index: (0..MAX_TABLES)
                    .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                    .collect(),
                all: Mutex::new(Vec::new()),
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// This thread's table; `None` when every table is leased (more than
    /// [`MAX_TABLES`] threads at once) or the thread is exiting.
    #[inline]
    pub(super) fn mine(&self) -> Option<&Table> {
        let (key, table) = LAST.try_with(Cell::get).ok()?;
        if key == self.inner.key {
            // SAFETY: tables live as long as `inner`, which `self` holds.
            return Some(unsafe { &*table });
        }
        self.lease()
    }

    #[cold]
    fn lease(&self) -> Option<&Table> {
        let found = self.lease_index()?;
        let index = match found {
            Some(index) => index,
            None => {
                let index = self.new_lease()?;
                LEASES
                    .try_with(|leases| {
                        leases.try_borrow_mut().ok().map(|mut l| {
                            l.push(Lease {
                                inner: self.inner.clone(),
                                index,
                            })
                        })
                    })
                    .ok()
                    .flatten()?;
                index
            }
        };
        let table = self.table(index)?;
        let _ = LAST.try_with(|c| c.set((self.inner.key, table as *const Table)));
        Some(table)
    }

    /// A table for a thread that has none: an idle one, or a new one.
    fn new_lease(&self) -> Option<usize> {
        if let Some(i) = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        {
            return Some(i);
        }
        let mut all = self.inner.all.lock().unwrap_or_else(|e| e.into_inner());
        let index = all.len();
        if index >= MAX_TABLES {
            return None;
        }
        let table = Box::new(Table::new(index));
        self.inner.by_index[index].store(&*table as *const Table as *mut Table, Ordering::Release);
        all.push(table);
        Some(index)
    }

    /// The table with index `index`, if it exists.
    #[inline]
    pub(super) fn table(&self, index: usize) -> Option<&Table> {
        let p = self.inner.by_index.get(index)?.load(Ordering::Acquire);
        // SAFETY: tables are boxed in `all` and live as long as `inner`.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// This thread's table if it has one already (no lease taken).
    #[inline(always)]
    pub(super) fn leased(&self) -> Option<&Table> {
        let (key, table) = LAST.try_with(Cell::get).ok()?;
        if key == self.inner.key {
            // SAFETY: as in `mine`.
            return Some(unsafe { &*table });
        }
        self.leased_slow()
    }

    /// [`Self::leased`] when the table used last on this thread is another
    /// store's (several stores on one thread: tests, scoped dispatchers).
    #[cold]
    fn leased_slow(&self) -> Option<&Table> {
        self.table(self.lease_index()??)
    }

    /// The index of this thread's table of this store, if it leases one
    /// (`None` outside: the thread is exiting).
    fn lease_index(&self) -> Option<Option<usize>> {
        LEASES
            .try_with(|leases| {
                let leases = leases.try_borrow().ok()?;
                leases
                    .iter()
                    .find(|l| Arc::ptr_eq(&l.inner, &self.inner))
                    .map(|l| l.index)
            })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_take_apart_into_what_made_them() {
        for (table, idx, gen) in [(0, 0, 0), (5, 63, 1), (MAX_TABLES - 1, 17, GEN_MASK)] {
            let d = Decoded { table, idx, gen };
            assert!(is_local(d.id()));
            assert_eq!(Decoded::of(d.id()), d);
        }
        // The store's ids (generation of 31 bits) are never local, and the
        // store's id of no span names no table.
        assert!(!is_local(
            u64::from(u32::MAX >> 1) << 32 | u64::from(u32::MAX - 1)
        ));
        assert_eq!(Decoded::of(u64::MAX).table, MAX_TABLES);
    }

    #[test]
    fn an_entry_taken_filled_and_closed_is_free_again_under_a_new_generation() {
        let t = Table::new(3);
        let (idx, id) = t.take().unwrap();
        let d = Decoded::of(id);
        assert_eq!((d.table, d.idx), (3, idx));
        t.fill(idx, span());
        assert!(t.is_local(d) && t.open_mask() == 1 << idx);
        assert_eq!(t.count(d, true), Counted::Local(2));
        assert_eq!(t.count(d, false), Counted::Local(1));
        assert_eq!(t.count(d, false), Counted::Local(0));
        t.release(d, true);
        assert!(!t.is_local(d) && t.span(d).is_none() && t.seen(d).is_none());
        assert_eq!(t.count(d, true), Counted::Gone, "the old id names nothing");
        let (again, id2) = t.take().unwrap();
        assert_eq!(again, idx);
        assert_ne!(id2, id);
        // The entry holds the next span: the old id still counts nothing
        // and promotes nothing.
        t.fill(again, span());
        assert_eq!(t.count(d, true), Counted::Gone);
        assert!(matches!(t.begin_promote(d), Promotion::Gone));
        assert_eq!(t.count(Decoded::of(id2), true), Counted::Local(2));
    }

    #[test]
    fn a_promoted_span_is_counted_in_the_store_and_its_entry_comes_back_when_it_closes() {
        let t = Table::new(0);
        let taken: Vec<_> = (0..ENTRIES).map(|_| t.take().unwrap()).collect();
        assert!(t.take().is_none());
        let (idx, id) = taken[9];
        t.fill(idx, span());
        let d = Decoded::of(id);
        assert!(matches!(t.begin_promote(d), Promotion::Mine(1)));
        t.end_promote(d, 42);
        assert!(matches!(t.seen(d), Some(Seen::Store(42))));
        assert_eq!(t.count(d, true), Counted::Store(42));
        assert!(matches!(t.begin_promote(d), Promotion::Done(42)));
        // Its slot closed on another thread.
        t.release(d, false);
        assert!(t.seen(d).is_none());
        assert_eq!(t.take().map(|(i, _)| i), Some(idx));
        assert_eq!(t.open_mask() & 1 << idx, 0);
    }

    #[test]
    fn a_promotion_that_fails_leaves_the_span_poll_local() {
        let t = Table::new(0);
        let (idx, id) = t.take().unwrap();
        t.fill(idx, span());
        let d = Decoded::of(id);
        assert_eq!(t.count(d, true), Counted::Local(2));
        assert!(matches!(t.begin_promote(d), Promotion::Mine(2)));
        t.abort_promote(d);
        assert!(t.is_local(d));
        assert_eq!(t.count(d, false), Counted::Local(1));
    }

    fn span() -> Span {
        static CS: tracing_core::callsite::DefaultCallsite =
            tracing_core::callsite::DefaultCallsite::new(&META);
        static META: Metadata<'static> = tracing_core::metadata!(
            name: "t",
            target: "t",
            level: tracing_core::Level::INFO,
            fields: &[],
            callsite: &CS,
            kind: tracing_core::metadata::Kind::SPAN,
        );
        Span {
            meta: &META,
            sid: 1,
            ts: 0,
            task: 1,
            parent: 1,
            holds_parent: false,
        }
    }
}
