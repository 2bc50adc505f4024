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
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A value that counts its drops.
    struct Counted(u64, Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn insert(slots: &Slots<u64>, v: u64) -> u64 {
        slots.vacant().expect("not full").insert(v)
    }

    fn remove(slots: &Slots<u64>, id: u64) -> bool {
        slots.get(id).is_some_and(Guard::remove)
    }

    /// Slot of an id (its index), to tell reuse from growth.
    fn index(id: u64) -> u32 {
        (id as u32) - 1
    }

    #[test]
    fn chunks_cover_every_index_once() {
        let mut expect = (0usize, 0usize);
        for idx in (0..5000u32).chain([MAX_SLOTS - 1]) {
            let (k, off) = locate(idx);
            if idx < 5000 {
                assert_eq!((k, off), expect, "{idx}");
                expect = if off + 1 == chunk_len(k) {
                    (k + 1, 0)
                } else {
                    (k, off + 1)
                };
            }
            assert!(k < CHUNKS && off < chunk_len(k), "{idx}");
        }
    }

    /// An id removed finds nothing, and neither removes nor finds the value
    /// its slot holds next; ids never issued find nothing.
    #[test]
    fn a_stale_id_finds_nothing() {
        let slots = Slots::new();
        let a = insert(&slots, 1);
        assert_eq!(a & u64::from(u32::MAX), a, "the first generation is 0");
        assert!(remove(&slots, a));
        let b = insert(&slots, 2);
        assert_eq!(index(a), index(b), "the slot is reused");
        assert_ne!(a, b, "with another id");
        assert!(slots.get(a).is_none());
        assert!(!remove(&slots, a), "a stale id removes nothing");
        assert_eq!(*slots.get(b).expect("b is there"), 2);
        for never in [0, u64::MAX, 1 << 32, 77, u64::from(u32::MAX - 2) + 1] {
            assert!(slots.get(never).is_none(), "{never}");
        }
    }

    /// A value removed while another thread's guard holds it stays until
    /// that guard is dropped; the slot is not reused before.
    #[test]
    fn a_guard_keeps_a_removed_value() {
        let drops = Arc::new(AtomicUsize::new(0));
        let slots = Slots::new();
        let id = slots.vacant().unwrap().insert(Counted(7, drops.clone()));
        let held = slots.get(id).unwrap();
        assert!(slots.get(id).unwrap().remove());
        assert!(slots.get(id).is_none(), "removed: not found");
        assert_eq!(held.0, 7, "still readable");
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        let other = slots.vacant().unwrap().insert(Counted(8, drops.clone()));
        assert_ne!(index(other), index(id), "a guarded slot is not reused");
        drop(held);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "dropped with its last guard"
        );
        let again = slots.vacant().unwrap().insert(Counted(9, drops.clone()));
        assert_eq!(index(again), index(id), "then reused");
        drop(slots);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            3,
            "the store drops what it holds"
        );
    }

    /// Slots freed on another thread go back to the thread that took them
    /// (the next allocations there reuse them, none fresh), not to the
    /// freeing thread.
    #[test]
    fn slots_freed_elsewhere_go_back_to_their_thread() {
        let slots = Slots::new();
        let ids: Vec<u64> = (0..10).map(|i| insert(&slots, i)).collect();
        let fresh = slots.fresh.load(Ordering::Relaxed);
        std::thread::scope(|s| {
            s.spawn(|| {
                // A thread with slots of its own frees the first thread's,
                // then takes more: fresh ones, not those it freed.
                let mine = insert(&slots, 99);
                assert!(remove(&slots, mine));
                for &id in &ids {
                    assert!(remove(&slots, id));
                }
                for i in 0..10 {
                    let more = insert(&slots, i);
                    assert!(!ids.iter().any(|&id| index(id) == index(more)));
                }
            });
        });
        let fresh_after = slots.fresh.load(Ordering::Relaxed);
        assert_eq!(fresh_after, fresh + 10, "the other thread's own slots");
        let mut again: Vec<u32> = (0..10).map(|i| index(insert(&slots, i))).collect();
        again.sort_unstable();
        let mut before: Vec<u32> = ids.iter().map(|&id| index(id)).collect();
        before.sort_unstable();
        assert_eq!(again, before, "the freed slots came back here");
        assert_eq!(
            slots.fresh.load(Ordering::Relaxed),
            fresh_after,
            "none fresh"
        );
    }

    /// A thread that exits leaves its slots to the next thread.
    #[test]
    fn an_exited_threads_slots_are_reused() {
        let slots = Slots::new();
        // Joined: the thread's thread-locals (its lease) are gone after.
        std::thread::scope(|s| {
            s.spawn(|| {
                let ids: Vec<u64> = (0..5).map(|i| insert(&slots, i)).collect();
                for id in ids {
                    assert!(remove(&slots, id));
                }
            })
            .join()
            .unwrap();
        });
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..5 {
                    insert(&slots, i);
                }
            })
            .join()
            .unwrap();
        });
        assert_eq!(slots.fresh.load(Ordering::Relaxed), 5);
    }

    /// A full store gives no slot (and does not panic) until one is freed.
    #[test]
    fn a_full_store_gives_no_slot_until_one_is_freed() {
        let slots = Slots::with_capacity(3);
        let ids: Vec<u64> = (0..3).map(|i| insert(&slots, i)).collect();
        assert!(slots.vacant().is_none());
        assert!(slots.vacant().is_none(), "still full");
        std::thread::scope(|s| {
            s.spawn(|| assert!(slots.vacant().is_none(), "full for every thread"));
        });
        assert!(remove(&slots, ids[1]));
        let id = insert(&slots, 4);
        assert_eq!(index(id), index(ids[1]));
        assert!(slots.vacant().is_none());
        for id in [4u64, u64::from(MAX_SLOTS)] {
            assert!(slots.get(id).is_none(), "past the cap: {id}");
        }
    }

    /// A slot taken and not filled goes back.
    #[test]
    fn a_vacant_slot_dropped_goes_back() {
        let slots = Slots::<u64>::with_capacity(1);
        let v = slots.vacant().unwrap();
        let id = v.id();
        drop(v);
        assert!(slots.get(id).is_none(), "never filled: not found");
        assert_eq!(slots.vacant().unwrap().insert(1), id);
    }

    /// Ids looked up while their slots are removed and reused on another
    /// thread: a lookup finds its own value or nothing, never the value a
    /// later id put in the same slot.
    #[test]
    fn lookups_racing_reuse_find_their_own_value_or_nothing() {
        let slots = Slots::new();
        let last = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // One slot reused over and over: each value is its id.
                while !done.load(Ordering::Relaxed) {
                    let v = slots.vacant().unwrap();
                    let id = v.id();
                    assert_eq!(v.insert(id), id);
                    last.store(id, Ordering::Relaxed);
                    assert!(slots.get(id).is_some_and(Guard::remove));
                }
            });
            s.spawn(|| {
                /// Stops the other thread however this one ends.
                struct Done<'a>(&'a AtomicBool);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::Relaxed);
                    }
                }
                let _done = Done(&done);
                for _ in 0..200_000 {
                    let id = last.load(Ordering::Relaxed);
                    if let Some(g) = slots.get(id) {
                        assert_eq!(*g, id, "an id finds only its own value");
                    }
                }
            });
        });
        // One slot in use, one held by the looking thread's guard, one on
        // its way back from there: the rest reused.
        let fresh = slots.fresh.load(Ordering::Relaxed);
        assert!(fresh <= 3, "{fresh} slots");
    }

    /// Many threads taking, looking up and freeing each other's values:
    /// every value is dropped once, and every id looked up finds its own
    /// value or nothing.
    #[test]
    fn threads_sharing_values() {
        let drops = Arc::new(AtomicUsize::new(0));
        let slots = Slots::new();
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let rx = std::sync::Mutex::new(rx);
        let made = 4 * 2000;
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (slots, tx, rx, drops) = (&slots, tx.clone(), &rx, drops.clone());
                s.spawn(move || {
                    for i in 0..2000u64 {
                        let v = (t << 32) | i;
                        let id = slots.vacant().unwrap().insert(Counted(v, drops.clone()));
                        assert_eq!(slots.get(id).map(|g| g.0), Some(v));
                        tx.send((id, v)).unwrap();
                        let theirs = rx.lock().unwrap().try_recv();
                        if let Ok((id, v)) = theirs {
                            let g = slots.get(id).expect("not removed yet");
                            assert_eq!(g.0, v, "an id finds its own value");
                            assert!(g.remove());
                            assert!(slots.get(id).is_none());
                        }
                    }
                });
            }
        });
        drop(tx);
        for (id, v) in rx.into_inner().unwrap().try_iter() {
            let g = slots.get(id).unwrap();
            assert_eq!(g.0, v);
            assert!(g.remove());
        }
        assert_eq!(drops.load(Ordering::SeqCst), made);
        assert!(slots.fresh.load(Ordering::Relaxed) < made as u64);
    }
}

/// Loom models of the slots' synchronisation: every interleaving of two
/// or three threads (up to `LOOM_MAX_PREEMPTIONS` preemptions, 3 unless
/// set), with loom's model of what each load may read under the orderings
/// used, and every access to a cell checked to be ordered after the
/// accesses it conflicts with. Run with
/// `RUSTFLAGS="--cfg loom --cfg tokio_unstable" cargo test -p awaitscope
/// --release --lib store::slots::loom --target-dir target/loom --
/// --test-threads=1` (add `--nocapture` to see how many interleavings).
///
/// What they cover: the slots' own code as it runs, loom's atomics, cells,
/// mutexes, `Arc` and thread-locals standing in for std's: lookups, guards
/// and removals racing on one slot (either thread the one to free it),
/// frees onto the owner's list or its stack racing the owner's
/// allocations, stale ids racing reuse, a thread's exit giving its owner
/// back racing another thread's lease, the chunks' publication (loom sees
/// a chunk's slots made by the thread that grows the store, where the
/// normal build zeroes memory). Ids are passed between threads through a
/// relaxed atomic, so that only the slots' orderings order a value's
/// accesses; the value says when it is read after, or not ordered with,
/// its drop. Each `Acquire`, `Release` and `AcqRel` of the slots weakened
/// one at a time (and the fence removed) makes at least one model fail
/// (BENCHMARKS.md, "Sixth sitting: the span store").
///
/// What they do not: interleavings past the preemption bound, and loads
/// further back than loom's bounded history of each atomic; more threads
/// or slots than these; the spare owner (taken by a thread whose
/// thread-locals are gone: loom drops a thread's thread-locals all at
/// once, where std keeps `LAST`, which has no destructor); which owners
/// are idle right after a `join` (loom's returns before the thread's
/// thread-locals are dropped; std's after); generations wrapping (2^32
/// reuses of a slot); the store built on the slots (`store/mod.rs`).
#[cfg(all(test, loom))]
mod loom {
    use ::loom::sync::atomic::AtomicUsize;
    use ::loom::thread;

    use super::*;

    /// A value that knows its id and says when it is read after its drop:
    /// the drop writes `alive`, a read reads it, so a drop not ordered after
    /// a read (or before it) is a race loom reports, and a read ordered after
    /// the drop fails its assertion.
    struct Probe {
        id: u64,
        alive: UnsafeCell<bool>,
        drops: Arc<AtomicUsize>,
    }

    // SAFETY: `alive` is written only by the drop (`&mut self`).
    unsafe impl Sync for Probe {}
    unsafe impl Send for Probe {}

    impl Probe {
        /// Fails unless this is id `id`'s value and not dropped.
        fn check(&self, id: u64) {
            assert_eq!(self.id, id, "an id finds only its own value");
            // SAFETY: loom checks the access.
            assert!(self.alive.with(|a| unsafe { *a }), "read after its drop");
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            // SAFETY: loom checks the access.
            self.alive.with_mut(|a| unsafe { *a = false });
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Puts a probe in, its id its own; `None` when full.
    fn put(slots: &Slots<Probe>, drops: &Arc<AtomicUsize>) -> Option<u64> {
        let vacant = slots.vacant()?;
        let id = vacant.id();
        Some(vacant.insert(Probe {
            id,
            alive: UnsafeCell::new(true),
            drops: drops.clone(),
        }))
    }

    /// Slot index of an id.
    fn index(id: u64) -> u32 {
        (id as u32) - 1
    }

    /// Every slot taken so far is on exactly one owner's free lists or
    /// holds one of `live`, and nothing else is on the lists. (Called once
    /// the threads are joined: the lists are walked without their owners'
    /// holders.)
    fn account(slots: &Slots<Probe>, live: &[u64]) {
        let mut seen: Vec<u32> = live.iter().map(|&id| index(id)).collect();
        let all = slots.owners.all.lock().unwrap();
        let owners = all.iter().map(|o| &**o).chain([&slots.owners.spare]);
        for owner in owners {
            // SAFETY: the threads that held the owner are joined.
            let local = owner.local.0.with(|p| unsafe { *p });
            for head in [local, owner.remote.0.load(Ordering::Acquire)] {
                let mut idx = head;
                while idx != NIL {
                    seen.push(idx);
                    let entry = slots.entry(idx).expect("a slot taken");
                    assert_eq!(entry.life.load(Ordering::Relaxed) & PRESENT, 0);
                    // SAFETY: as above.
                    idx = entry.next.with(|p| unsafe { *p });
                }
            }
        }
        seen.sort_unstable();
        let taken = slots
            .fresh
            .load(Ordering::Relaxed)
            .min(u64::from(slots.cap));
        let expect: Vec<u32> = (0..taken as u32).collect();
        assert_eq!(seen, expect, "each slot once, live or free; live {live:?}");
    }

    /// Runs `f` in every interleaving, with at most `LOOM_MAX_PREEMPTIONS`
    /// preemptions (3 unless set).
    /// Says how many interleavings it ran (with `--nocapture`).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = ::loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        builder.check(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            f();
        });
        let bound = builder.preemption_bound.unwrap_or(0);
        let runs = runs.load(Ordering::Relaxed);
        println!("{runs} interleavings, at most {bound} preemptions");
    }

    /// A lookup racing the removal of the same id (the id passed with no
    /// ordering): it finds the value, intact, or nothing; the value is
    /// dropped once, after the last guard is gone, whichever thread that is.
    #[test]
    fn lookup_racing_remove() {
        model(|| {
            let slots = Arc::new(Slots::<Probe>::with_capacity(2));
            let drops = Arc::new(AtomicUsize::new(0));
            let shared = Arc::new(AtomicU64::new(0));
            let looker = {
                let (slots, drops, shared) = (slots.clone(), drops.clone(), shared.clone());
                thread::spawn(move || {
                    let id = shared.load(Ordering::Relaxed);
                    if id != 0 {
                        if let Some(g) = slots.get(id) {
                            g.check(id);
                            assert_eq!(drops.load(Ordering::Relaxed), 0);
                        }
                    }
                })
            };
            let id = put(&slots, &drops).unwrap();
            shared.store(id, Ordering::Relaxed);
            let g = slots.get(id).expect("nobody else removes it");
            g.check(id);
            assert!(g.remove());
            assert!(slots.get(id).is_none(), "removed: not found");
            looker.join().unwrap();
            assert_eq!(drops.load(Ordering::Relaxed), 1, "dropped once");
            drop(slots);
            assert_eq!(drops.load(Ordering::Relaxed), 1, "and not again");
        });
    }

    /// Two threads removing the same id while they read it: one removal
    /// succeeds, the value is dropped once, after both guards are gone.
    #[test]
    fn removes_racing() {
        model(|| {
            let slots = Arc::new(Slots::<Probe>::with_capacity(2));
            let drops = Arc::new(AtomicUsize::new(0));
            let shared = Arc::new(AtomicU64::new(0));
            let other = {
                let (slots, shared) = (slots.clone(), shared.clone());
                thread::spawn(move || {
                    let id = shared.load(Ordering::Relaxed);
                    id != 0
                        && slots.get(id).is_some_and(|g| {
                            g.check(id);
                            g.remove()
                        })
                })
            };
            let id = put(&slots, &drops).unwrap();
            shared.store(id, Ordering::Relaxed);
            let mine = slots.get(id).is_some_and(|g| {
                g.check(id);
                g.remove()
            });
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "one removal: {mine} {theirs}");
            assert_eq!(drops.load(Ordering::Relaxed), 1, "dropped once");
        });
    }

    /// Slots freed on another thread (pushed onto this thread's stack)
    /// while this thread allocates (taking the stack whole when its own
    /// list is empty): no slot is lost (the store fills to its capacity),
    /// none is handed out twice, and a reused slot's id has a new
    /// generation.
    #[test]
    fn remote_frees_racing_allocation() {
        model(|| {
            let slots = Arc::new(Slots::<Probe>::with_capacity(4));
            let drops = Arc::new(AtomicUsize::new(0));
            let first = [put(&slots, &drops).unwrap(), put(&slots, &drops).unwrap()];
            let freer = {
                let slots = slots.clone();
                thread::spawn(move || {
                    for id in first {
                        let g = slots.get(id).expect("only this thread removes it");
                        g.check(id);
                        assert!(g.remove());
                    }
                })
            };
            // Two fresh slots are left: these never fail.
            let mut live = vec![
                put(&slots, &drops).expect("a slot, freed or fresh"),
                put(&slots, &drops).expect("a slot, freed or fresh"),
            ];
            freer.join().unwrap();
            account(&slots, &live);
            while let Some(id) = put(&slots, &drops) {
                live.push(id);
            }
            assert_eq!(live.len(), 4, "every slot came back: {live:?}");
            let mut slots_used: Vec<u32> = live.iter().map(|&id| index(id)).collect();
            slots_used.sort_unstable();
            slots_used.dedup();
            assert_eq!(slots_used.len(), 4, "no slot twice: {live:?}");
            for &id in &live {
                let reused = first.iter().any(|&f| index(f) == index(id));
                assert_eq!(
                    id >> 32,
                    u64::from(reused),
                    "a reused slot's next generation: {live:?}"
                );
                slots.get(id).expect("there").check(id);
            }
            assert_eq!(drops.load(Ordering::Relaxed), 2);
        });
    }

    /// Three threads: one removes the owner's value while another holds
    /// a guard on it (so either may be the one to free it, onto the
    /// owner's list or its stack), while the owner allocates again: the
    /// value is read intact and dropped once, no slot is lost or handed out
    /// twice, and a reused slot's id is new.
    #[test]
    fn last_guard_frees_while_owner_allocates() {
        model(|| {
            let slots = Arc::new(Slots::<Probe>::with_capacity(2));
            let drops = Arc::new(AtomicUsize::new(0));
            let shared = Arc::new(AtomicU64::new(0));
            let looker = {
                let (slots, shared) = (slots.clone(), shared.clone());
                thread::spawn(move || {
                    let id = shared.load(Ordering::Relaxed);
                    if let Some(g) = slots.get(id) {
                        g.check(id);
                    }
                })
            };
            let remover = {
                let (slots, shared) = (slots.clone(), shared.clone());
                thread::spawn(move || {
                    let id = shared.load(Ordering::Relaxed);
                    slots.get(id).is_some_and(|g| {
                        g.check(id);
                        g.remove()
                    })
                })
            };
            let first = put(&slots, &drops).unwrap();
            shared.store(first, Ordering::Relaxed);
            let next = put(&slots, &drops).expect("a slot, freed or fresh");
            looker.join().unwrap();
            let removed = remover.join().unwrap();
            if !removed {
                assert!(slots.get(first).unwrap().remove());
            }
            assert_eq!(drops.load(Ordering::Relaxed), 1, "dropped once");
            account(&slots, &[next]);
            let reused = index(next) == index(first);
            assert_eq!(
                next >> 32,
                u64::from(reused),
                "a reused slot's next generation"
            );
            slots.get(next).expect("there").check(next);
            assert!(slots.get(first).is_none());
        });
    }

    /// An id looked up while its slot is removed and reused by its owner
    /// (the new id passed with no ordering): the old id finds its own
    /// value or nothing, never the new one; the new id finds the new value.
    #[test]
    fn stale_lookup_racing_reuse() {
        model(|| {
            let slots = Arc::new(Slots::<Probe>::with_capacity(2));
            let drops = Arc::new(AtomicUsize::new(0));
            let old = put(&slots, &drops).unwrap();
            let shared = Arc::new(AtomicU64::new(0));
            let looker = {
                let (slots, shared) = (slots.clone(), shared.clone());
                thread::spawn(move || {
                    if let Some(g) = slots.get(old) {
                        g.check(old);
                    }
                    // The new id may find nothing: nothing orders its
                    // insertion before this lookup.
                    let new = shared.load(Ordering::Relaxed);
                    if let Some(g) = slots.get(new) {
                        g.check(new);
                        assert!(slots.get(old).is_none(), "removed before");
                    }
                })
            };
            assert!(slots.get(old).unwrap().remove());
            let new = put(&slots, &drops).unwrap();
            shared.store(new, Ordering::Relaxed);
            looker.join().unwrap();
            assert_ne!(new, old);
            assert!(slots.get(old).is_none());
            slots.get(new).expect("there").check(new);
            assert_eq!(drops.load(Ordering::Relaxed), 1);
        });
    }

    /// A thread exiting (its owner, with a slot on its list, given back)
    /// while another thread frees that thread's slot and leases an owner
    /// (the exited thread's or a new one): no slot is lost or handed out
    /// twice. (Checked on the owners' lists: loom's `join` returns before
    /// the joined thread's thread-locals are dropped, so which owners are
    /// idle after it is not known.)
    #[test]
    fn exit_racing_lease() {
        model(|| {
            let slots = Arc::new(Slots::<Probe>::with_capacity(3));
            let drops = Arc::new(AtomicUsize::new(0));
            let shared = Arc::new(AtomicU64::new(0));
            let exiting = {
                let (slots, drops, shared) = (slots.clone(), drops.clone(), shared.clone());
                thread::spawn(move || {
                    let x = put(&slots, &drops).unwrap();
                    assert!(slots.get(x).unwrap().remove());
                    shared.store(put(&slots, &drops).unwrap(), Ordering::Relaxed);
                })
            };
            let other = {
                let (slots, drops, shared) = (slots.clone(), drops.clone(), shared.clone());
                thread::spawn(move || {
                    let z = put(&slots, &drops).unwrap();
                    let y = shared.load(Ordering::Relaxed);
                    // May find nothing: nothing orders `y`'s insertion
                    // before this lookup.
                    let removed = slots.get(y).is_some_and(Guard::remove);
                    (z, removed)
                })
            };
            exiting.join().unwrap();
            let (z, removed) = other.join().unwrap();
            let y = shared.load(Ordering::Relaxed);
            let live = if removed { vec![z] } else { vec![y, z] };
            account(&slots, &live);
            for id in live {
                slots.get(id).expect("there").check(id);
            }
            assert_eq!(drops.load(Ordering::Relaxed), 1 + usize::from(removed));
        });
    }
}
