//! The span store's slots: ids with a generation, slots allocated from the
//! creating thread's own free list, given back by other threads without a
//! lock.
//!
//! Written for the store rather than using `sharded_slab` (which the store
//! used before, as `tracing_subscriber`'s registry does): the same scheme
//! (a per-thread free list, a lock-free stack per owner for slots freed
//! elsewhere, a guard count and a generation in one word per slot), without
//! what the store does not need (sharding by thread id on every access, a
//! page search on insertion, a remove in two compare-and-swaps after a
//! lookup that took a third). Here a lookup is a compare-and-swap and a
//! decrement, an allocation a few plain loads and stores on the thread's
//! list, a removal one compare-and-swap: a request span's creation and
//! close cost measurably less on mini-redis (#17; the figures are in
//! BENCHMARKS.md, "Sixth sitting").
//!
//! - **Ids** are `generation << 32 | (index + 1)`: non-zero, and a slot's
//!   generation advances when its value is removed, so an id kept after its
//!   span closed (tokio's waker events name tasks that may have ended)
//!   finds nothing, never the slot's next value. (A generation is 32 bits:
//!   an id would name another value only after its slot was reused 2^32
//!   times while the id was kept.)
//! - **Memory**: slots live in chunks of doubling size, allocated as the
//!   number of slots in use grows and never freed while the store lives:
//!   the store keeps the high-water mark of its live values allocated. A
//!   lookup checks the index against the chunks allocated, so an id never
//!   issued (or another store's) is safe to look up.
//! - **Allocation**: each thread leases an [`Owner`]: its local free list,
//!   touched only by that thread with plain loads and stores, and a stack
//!   other threads push the slots they free onto (a compare-and-swap on
//!   the owner's line, no lock), which the owner takes whole when its list
//!   is empty. Only slots never used before come from a shared counter. A
//!   thread that exits gives its owner, slots included, to the next thread
//!   that needs one.
//! - **Lookups** take a guard (a count in the slot's word): the value is
//!   dropped, and the slot reused, only once the last guard is gone.
//!
//! In this crate's own tests under `--cfg loom` the atomics, cells, locks,
//! `Arc` and thread-locals are loom's (see [`sync`]) and the tests in
//! `loom` check the memory orderings against loom's model of them (see
//! that module's doc). (Only there: a program that depends on this crate
//! and tests itself under `--cfg loom` gets std's.)

use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;

use sync::{fence, thread_local, Arc, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Mutex};
use sync::{AtomicMut, Ordering, UnsafeCell};

/// What the slots synchronise with: std's types, or in this crate's tests
/// under `cfg(loom)` loom's models of them, so that loom checks the same
/// code. The normal build's wrappers are `#[inline(always)]` and do what
/// the std calls they wrap do (the crate's release code is the same as
/// with std's types used directly).
mod sync {
    pub(super) use std::sync::atomic::Ordering;

    #[cfg(all(test, loom))]
    pub(super) use loom::{
        cell::UnsafeCell,
        sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64},
        sync::{Arc, Mutex},
        thread_local,
    };
    #[cfg(not(all(test, loom)))]
    pub(super) use std::{
        sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64},
        sync::{Arc, Mutex},
        thread_local,
    };

    /// `std::cell::UnsafeCell` with loom's access API (`with`, `with_mut`),
    /// through which loom sees (and checks) every access.
    #[cfg(not(all(test, loom)))]
    #[repr(transparent)]
    pub(super) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(all(test, loom)))]
    impl<T> UnsafeCell<T> {
        /// A cell holding `value`.
        #[inline(always)]
        pub(super) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Calls `f` with a pointer for reading the contents.
        #[inline(always)]
        pub(super) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with a pointer for writing the contents.
        #[inline(always)]
        pub(super) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// An atomic's value through `&mut` (no other thread can reach it):
    /// std's `get_mut`, loom's `with_mut`.
    pub(super) trait AtomicMut<V> {
        /// The value.
        fn read_mut(&mut self) -> V;
    }

    impl<T> AtomicMut<*mut T> for AtomicPtr<T> {
        #[inline(always)]
        fn read_mut(&mut self) -> *mut T {
            #[cfg(not(all(test, loom)))]
            return *self.get_mut();
            #[cfg(all(test, loom))]
            return self.with_mut(|v| *v);
        }
    }

    impl AtomicMut<u64> for AtomicU64 {
        #[inline(always)]
        fn read_mut(&mut self) -> u64 {
            #[cfg(not(all(test, loom)))]
            return *self.get_mut();
            #[cfg(all(test, loom))]
            return self.with_mut(|v| *v);
        }
    }
}

/// The slot holds a value (in a slot's word, beside the guards).
const PRESENT: u64 = 1 << 31;
/// The guards' count (the low bits of a slot's word).
const GUARDS: u64 = PRESENT - 1;
/// End of a free list.
const NIL: u32 = u32::MAX;
/// The first chunk holds `2^BASE_BITS` slots, each next one twice the one
/// before. (2 in the loom models, so that a few slots cross chunks.)
const BASE_BITS: u32 = if cfg!(all(test, loom)) { 1 } else { 6 };
/// Chunks enough for [`MAX_SLOTS`].
const CHUNKS: usize = (33 - BASE_BITS) as usize;
/// Most slots a store holds: index `u32::MAX - 1` would make id
/// `u64::MAX`'s low half, and `u32::MAX` is [`NIL`].
pub(crate) const MAX_SLOTS: u32 = u32::MAX - 1;

/// Chunk and offset of slot `idx`.
#[inline(always)]
fn locate(idx: u32) -> (usize, usize) {
    let i = u64::from(idx) + (1 << BASE_BITS);
    let k = 63 - i.leading_zeros() - BASE_BITS;
    (k as usize, (i - ((1u64 << BASE_BITS) << k)) as usize)
}

/// Slots in chunk `k`.
#[inline]
fn chunk_len(k: usize) -> usize {
    1 << (BASE_BITS as usize + k)
}

/// One slot.
struct Entry<T> {
    /// `generation << 32 | PRESENT | guards`.
    life: AtomicU64,
    /// The next slot of the free list this slot is on.
    next: UnsafeCell<u32>,
    /// The owner whose free lists the slot goes back to, set when the slot
    /// is first used and never changed.
    owner: UnsafeCell<*const Owner>,
    value: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Entry<T> {
    /// A chunk of `len` free slots (generation 0, no value, no guard, no
    /// owner); `None` if it cannot be allocated.
    #[cfg(not(all(test, loom)))]
    fn alloc_chunk(len: usize) -> Option<*mut Self> {
        let layout = std::alloc::Layout::array::<Self>(len).ok()?;
        // SAFETY: the layout is not zero-sized (an entry holds a word); all
        // zeros is a valid entry: generation 0, no value, no guard, a null
        // owner, an uninitialised value.
        let chunk = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Self;
        (!chunk.is_null()).then_some(chunk)
    }

    /// Frees a chunk from [`Entry::alloc_chunk`] (its values dropped).
    ///
    /// # Safety
    /// `chunk` came from `alloc_chunk(len)` and is not used after.
    #[cfg(not(all(test, loom)))]
    unsafe fn free_chunk(chunk: *mut Self, len: usize) {
        if let Ok(layout) = std::alloc::Layout::array::<Self>(len) {
            // SAFETY: allocated in `alloc_chunk` with this layout.
            unsafe { std::alloc::dealloc(chunk as *mut u8, layout) };
        }
    }

    /// Loom's atomics and cells are not valid as zeros: built one by one.
    #[cfg(all(test, loom))]
    fn alloc_chunk(len: usize) -> Option<*mut Self> {
        let chunk: Box<[Self]> = (0..len)
            .map(|_| Entry {
                life: AtomicU64::new(0),
                next: UnsafeCell::new(0),
                owner: UnsafeCell::new(std::ptr::null()),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        Some(Box::into_raw(chunk) as *mut Self)
    }

    /// # Safety
    /// As in the normal build.
    #[cfg(all(test, loom))]
    unsafe fn free_chunk(chunk: *mut Self, len: usize) {
        // SAFETY: made by `alloc_chunk` from a boxed slice of `len`.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(chunk, len)) });
    }
}

/// A cache line of its own.
#[repr(align(64))]
struct Line<T>(T);

/// Free slots of one thread (see the module's doc).
struct Owner {
    /// Head of the free list only the leasing thread touches.
    local: Line<UnsafeCell<u32>>,
    /// Head of the stack of slots other threads freed (pushed lock-free,
    /// taken whole by the leasing thread).
    remote: Line<AtomicU32>,
}

// SAFETY: `local` is touched only by the thread that leases the owner (or,
// for `Owners::spare`, under `Owners::spare_lock`); `remote` is atomic.
unsafe impl Sync for Owner {}
unsafe impl Send for Owner {}

impl Owner {
    fn new() -> Self {
        Self {
            local: Line(UnsafeCell::new(NIL)),
            remote: Line(AtomicU32::new(NIL)),
        }
    }
}

/// A store's owners (not generic: threads' leases hold them).
struct Owners {
    /// Identifies the store in threads' leases (addresses are reused).
    key: u64,
    /// Every owner made, boxed: slots point to them, so they never move
    /// (as a vector's elements would when it grows), and live as long as
    /// this.
    #[allow(clippy::vec_box)]
    all: Mutex<Vec<Box<Owner>>>,
    /// Owners no thread leases (their threads exited).
    idle: Mutex<Vec<*const Owner>>,
    /// The owner of threads that cannot lease one (a thread being torn
    /// down, its thread-locals gone), used under `spare_lock`.
    spare: Owner,
    spare_lock: Mutex<()>,
    /// The store is gone: threads drop their leases of it.
    closed: AtomicBool,
}

// SAFETY: the raw pointers in `idle` point into `all`'s boxes.
unsafe impl Send for Owners {}
unsafe impl Sync for Owners {}

/// Not modelled under loom: a counter whose values are only compared.
static NEXT_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A thread's lease of an owner, given back when the thread exits.
struct Lease {
    owners: Arc<Owners>,
    owner: *const Owner,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut idle = self.owners.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(self.owner);
    }
}

/// This thread's leases.
struct Leases(Vec<Lease>);

impl Drop for Leases {
    fn drop(&mut self) {
        // Nothing may reach an owner given back. (`LAST` has no destructor
        // and is always there. Under loom a thread's thread-locals are all
        // taken before any is dropped: `LAST` may be gone, and with it any
        // way to reach the owner.)
        let _ = LAST.try_with(|c| c.set((0, std::ptr::null())));
    }
}

#[cfg(not(all(test, loom)))]
thread_local! {
    static LEASES: RefCell<Leases> = const { RefCell::new(Leases(Vec::new())) };
    /// The lease used last (store key, owner): a plain thread-local load
    /// on the common path (no destructor, so no registration check). Key 0:
    /// none.
    static LAST: Cell<(u64, *const Owner)> = const { Cell::new((0, std::ptr::null())) };
}

// The same under loom, whose macro takes no `const` initialiser.
#[cfg(all(test, loom))]
thread_local! {
    static LEASES: RefCell<Leases> = RefCell::new(Leases(Vec::new()));
    static LAST: Cell<(u64, *const Owner)> = Cell::new((0, std::ptr::null()));
}

/// The store's slots (see the module's doc).
pub(crate) struct Slots<T> {
    chunks: [AtomicPtr<Entry<T>>; CHUNKS],
    /// Slots never used start here.
    fresh: AtomicU64,
    cap: u32,
    /// Taken to allocate a chunk.
    grow: Mutex<()>,
    owners: Arc<Owners>,
}

// SAFETY: values are reached through guards from any thread (`Sync`) and
// dropped on whichever thread frees them (`Send`); the rest is atomics or
// owned by one thread at a time (see `Owner`).
unsafe impl<T: Send + Sync> Sync for Slots<T> {}
unsafe impl<T: Send + Sync> Send for Slots<T> {}

/// A lookup's hold on a value: the value stays (and its slot is not
/// reused) until it is dropped.
pub(crate) struct Guard<'a, T> {
    slots: &'a Slots<T>,
    entry: &'a Entry<T>,
    idx: u32,
}

/// A slot taken for a value: its id is known before the value is put in.
pub(crate) struct Vacant<'a, T> {
    slots: &'a Slots<T>,
    entry: &'a Entry<T>,
    idx: u32,
    gen: u64,
}

impl<T> Slots<T> {
    /// A store of at most [`MAX_SLOTS`] values.
    pub(crate) fn new() -> Self {
        Self::with_capacity(MAX_SLOTS)
    }

    /// A store of at most `cap` values (at most [`MAX_SLOTS`]).
    pub(crate) fn with_capacity(cap: u32) -> Self {
        Self {
            chunks: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            fresh: AtomicU64::new(0),
            cap: cap.min(MAX_SLOTS),
            grow: Mutex::new(()),
            owners: Arc::new(Owners {
                key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
                all: Mutex::new(Vec::new()),
                idle: Mutex::new(Vec::new()),
                spare: Owner::new(),
                spare_lock: Mutex::new(()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The slot at `idx`, if its chunk exists.
    #[inline(always)]
    fn entry(&self, idx: u32) -> Option<&Entry<T>> {
        if idx >= self.cap {
            return None;
        }
        let (k, off) = locate(idx);
        let chunk = self.chunks.get(k)?.load(Ordering::Acquire);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: chunk `k` holds `chunk_len(k)` initialised slots, `off`
        // is below that (see `locate`), and chunks live as long as `self`.
        Some(unsafe { &*chunk.add(off) })
    }

    /// The value with id `id`, if it is there. Found when its insertion
    /// happens before this lookup (the id came through anything that
    /// synchronises, as ids handed between threads by safe code do); an id
    /// read from a relaxed atomic may find nothing though the value is
    /// there (loom's models show it; never another value).
    #[inline]
    pub(crate) fn get(&self, id: u64) -> Option<Guard<'_, T>> {
        let idx = (id as u32).wrapping_sub(1);
        let gen = id >> 32;
        let entry = self.entry(idx)?;
        let mut s = entry.life.load(Ordering::Relaxed);
        loop {
            if s >> 32 != gen || s & PRESENT == 0 || s & GUARDS == GUARDS {
                return None;
            }
            match entry
                .life
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(Guard {
                        slots: self,
                        entry,
                        idx,
                    })
                }
                Err(now) => s = now,
            }
        }
    }

    /// Takes a free slot, from this thread's free list when it has one;
    /// `None` when the store is full.
    #[inline]
    pub(crate) fn vacant(&self) -> Option<Vacant<'_, T>> {
        let (key, owner) = LAST.with(Cell::get);
        if key == self.owners.key {
            // SAFETY: `LAST` names only owners this thread leases.
            return unsafe { self.take_from(&*owner) };
        }
        self.vacant_slow()
    }

    #[cold]
    fn vacant_slow(&self) -> Option<Vacant<'_, T>> {
        match self.lease() {
            // SAFETY: this thread leases it.
            Some(owner) => unsafe { self.take_from(&*owner) },
            None => {
                let _spare = self
                    .owners
                    .spare_lock
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                // SAFETY: the spare's local list is touched under its lock.
                unsafe { self.take_from(&self.owners.spare) }
            }
        }
    }

    /// This thread's owner for this store, leased now if it has none (and
    /// made the one `LAST` names); `None` while the thread is torn down.
    fn lease(&self) -> Option<*const Owner> {
        let owners = &self.owners;
        let owner = LEASES
            .try_with(|leases| {
                let mut leases = leases.try_borrow_mut().ok()?;
                if let Some(l) = leases.0.iter().find(|l| l.owners.key == owners.key) {
                    return Some(l.owner);
                }
                // Forget the leases of stores that are gone.
                leases
                    .0
                    .retain(|l| !l.owners.closed.load(Ordering::Relaxed));
                let idle = owners.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let owner = idle.unwrap_or_else(|| {
                    let made = Box::new(Owner::new());
                    let owner: *const Owner = &*made;
                    let mut all = owners.all.lock().unwrap_or_else(|e| e.into_inner());
                    all.push(made);
                    owner
                });
                leases.0.push(Lease {
                    owners: owners.clone(),
                    owner,
                });
                Some(owner)
            })
            .ok()
            .flatten()?;
        LAST.with(|c| c.set((owners.key, owner)));
        Some(owner)
    }

    /// Takes a slot from `owner`'s free lists, else a slot never used.
    ///
    /// # Safety
    /// The caller has `owner`'s local list to itself (it leases it, or
    /// holds the spare's lock).
    #[inline]
    unsafe fn take_from(&self, owner: &Owner) -> Option<Vacant<'_, T>> {
        // SAFETY: per the contract.
        let local = unsafe { &mut *owner.local.0.with_mut(|p| p) };
        let mut idx = *local;
        if idx == NIL {
            idx = owner.remote.0.swap(NIL, Ordering::Acquire);
            if idx == NIL {
                return self.take_fresh(owner);
            }
        }
        let entry = self.entry(idx)?;
        // SAFETY: a slot on a free list has no value and no guard: this
        // owner's holder has it to itself.
        *local = unsafe { entry.next.with(|p| *p) };
        let gen = entry.life.load(Ordering::Relaxed) >> 32;
        Some(Vacant {
            slots: self,
            entry,
            idx,
            gen,
        })
    }

    /// A slot never used before, now `owner`'s; `None` when the store is
    /// full (or a chunk cannot be allocated).
    #[cold]
    fn take_fresh(&self, owner: &Owner) -> Option<Vacant<'_, T>> {
        let idx = self.fresh.fetch_add(1, Ordering::Relaxed);
        if idx >= u64::from(self.cap) {
            // Full: stays past the cap (a u64 does not wrap), so that every
            // later call fails here too until a slot is freed.
            return None;
        }
        let idx = idx as u32;
        let entry = match self.entry(idx) {
            Some(entry) => entry,
            None => self.grow(idx)?,
        };
        // SAFETY: nobody else has seen this slot yet.
        unsafe { entry.owner.with_mut(|p| *p = owner as *const Owner) };
        Some(Vacant {
            slots: self,
            entry,
            idx,
            gen: 0,
        })
    }

    /// Allocates the chunk of slot `idx` (if no other thread did) and
    /// returns the slot; `None` if the allocation failed.
    #[cold]
    fn grow(&self, idx: u32) -> Option<&Entry<T>> {
        let (k, off) = locate(idx);
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let mut chunk = self.chunks[k].load(Ordering::Acquire);
        if chunk.is_null() {
            chunk = Entry::alloc_chunk(chunk_len(k))?;
            self.chunks[k].store(chunk, Ordering::Release);
        }
        // SAFETY: as in `entry`.
        Some(unsafe { &*chunk.add(off) })
    }

    /// Takes the value out of a slot whose last guard is gone and whose
    /// value was removed, and gives the slot back to its owner.
    ///
    /// # Safety
    /// The slot holds a value, is not present and has no guard: the caller
    /// has it to itself.
    #[inline]
    unsafe fn free(&self, entry: &Entry<T>, idx: u32) {
        // SAFETY: per the contract, the value is there and nobody else
        // reads it.
        let value = unsafe { entry.value.with_mut(|v| (*v).assume_init_read()) };
        // SAFETY: per the contract.
        unsafe { self.give_back(entry, idx) };
        drop(value);
    }

    /// Puts a slot with no value on its owner's free lists: its local list
    /// when this thread leases the owner, else (lock-free) its stack.
    ///
    /// # Safety
    /// As for [`Slots::free`], the value taken out.
    #[inline]
    unsafe fn give_back(&self, entry: &Entry<T>, idx: u32) {
        // SAFETY: set before the slot's first value, never changed.
        let owner_ptr = unsafe { entry.owner.with(|p| *p) };
        // SAFETY: owners live as long as the store.
        let owner = unsafe { &*owner_ptr };
        let (key, mine) = LAST.with(Cell::get);
        if key == self.owners.key && mine == owner_ptr {
            // SAFETY: this thread leases the owner.
            unsafe {
                let local = owner.local.0.with_mut(|p| &mut *p);
                entry.next.with_mut(|p| *p = *local);
                *local = idx;
            }
            return;
        }
        let mut head = owner.remote.0.load(Ordering::Relaxed);
        loop {
            // SAFETY: the slot is ours until pushed.
            unsafe { entry.next.with_mut(|p| *p = head) };
            // Push-only, taken whole by the owner: no ABA problem.
            match owner.remote.0.compare_exchange_weak(
                head,
                idx,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        self.owners.closed.store(true, Ordering::Relaxed);
        for (k, chunk) in self.chunks.iter_mut().enumerate() {
            let chunk = chunk.read_mut();
            if chunk.is_null() {
                continue;
            }
            for off in 0..chunk_len(k) {
                // SAFETY: as in `entry`; no guard outlives the store.
                let entry = unsafe { &mut *chunk.add(off) };
                if entry.life.read_mut() & PRESENT != 0 {
                    // SAFETY: a present slot holds a value.
                    unsafe { entry.value.with_mut(|v| (*v).assume_init_drop()) };
                }
            }
            // SAFETY: allocated in `grow` with this length, no longer used.
            unsafe { Entry::free_chunk(chunk, chunk_len(k)) };
        }
    }
}

impl<T> std::ops::Deref for Guard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: a guard is taken only on a present slot, whose value
        // stays until the last guard is dropped.
        unsafe { self.entry.value.with(|v| (*v).assume_init_ref()) }
    }
}

impl<T> Guard<'_, T> {
    /// Removes the value (its id finds nothing from now on) and drops this
    /// guard; the value is dropped when no other guard holds it. False if
    /// another thread removed it first.
    #[inline]
    pub(crate) fn remove(self) -> bool {
        let entry = self.entry;
        let mut s = entry.life.load(Ordering::Relaxed);
        loop {
            if s & PRESENT == 0 {
                // Removed by another thread: only this guard to drop.
                return false;
            }
            // While guarded the slot is not reused: present, it still has
            // the generation this guard was taken at.
            let next = ((s >> 32) + 1) & u64::from(u32::MAX);
            let new = (next << 32) | ((s & GUARDS) - 1);
            match entry
                .life
                .compare_exchange_weak(s, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        let (slots, idx) = (self.slots, self.idx);
        std::mem::forget(self);
        if s & GUARDS == 1 {
            // SAFETY: removed, and this was the last guard.
            unsafe { slots.free(entry, idx) };
        }
        true
    }
}

impl<T> Drop for Guard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        let prev = self.entry.life.fetch_sub(1, Ordering::Release);
        if prev & (PRESENT | GUARDS) == 1 {
            // The value was removed while guarded, and this was the last
            // guard: this thread frees it.
            self.free_removed();
        }
    }
}

impl<T> Guard<'_, T> {
    #[cold]
    #[inline(never)]
    fn free_removed(&self) {
        fence(Ordering::Acquire);
        // SAFETY: removed, and this was the last guard (see `drop`).
        unsafe { self.slots.free(self.entry, self.idx) };
    }
}

impl<T> Vacant<'_, T> {
    /// The id the value will have.
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        (self.gen << 32) | (u64::from(self.idx) + 1)
    }

    /// Puts the value in; its id finds it from now on.
    #[inline]
    pub(crate) fn insert(self, value: T) -> u64 {
        let id = self.id();
        // SAFETY: a vacant slot is this thread's alone until published.
        unsafe { self.entry.value.with_mut(|v| (*v).write(value)) };
        self.entry
            .life
            .store((self.gen << 32) | PRESENT, Ordering::Release);
        std::mem::forget(self);
        id
    }
}

impl<T> Drop for Vacant<'_, T> {
    /// Not filled: the slot goes back.
    fn drop(&mut self) {
        // SAFETY: a vacant slot holds no value and is this thread's alone.
        unsafe { self.slots.give_back(self.entry, self.idx) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom;
