//! Loom models of the slots' synchronisation: every interleaving of two
//! or three threads (up to `LOOM_MAX_PREEMPTIONS` preemptions, 3 unless
//! set), with loom's model of what each load may read under the orderings
//! used, and every access to a cell checked to be ordered after the
//! accesses it conflicts with. Run with
//! `RUSTFLAGS="--cfg loom --cfg tokio_unstable" cargo test -p awaitscope
//! --release --lib store::slots::loom --target-dir target/loom --
//! --test-threads=1` (add `--nocapture` to see how many interleavings).
//!
//! What they cover: the slots' own code as it runs, loom's atomics, cells,
//! mutexes, `Arc` and thread-locals standing in for std's: lookups, guards
//! and removals racing on one slot (either thread the one to free it),
//! frees onto the owner's list or its stack racing the owner's
//! allocations, stale ids racing reuse, a thread's exit giving its owner
//! back racing another thread's lease, the chunks' publication (loom sees
//! a chunk's slots made by the thread that grows the store, where the
//! normal build zeroes memory). Ids are passed between threads through a
//! relaxed atomic, so that only the slots' orderings order a value's
//! accesses; the value says when it is read after, or not ordered with,
//! its drop. Each `Acquire`, `Release` and `AcqRel` of the slots weakened
//! one at a time (and the fence removed) makes at least one model fail
//! (BENCHMARKS.md, "Sixth sitting: the span store").
//!
//! What they do not: interleavings past the preemption bound, and loads
//! further back than loom's bounded history of each atomic; more threads
//! or slots than these; the spare owner (taken by a thread whose
//! thread-locals are gone: loom drops a thread's thread-locals all at
//! once, where std keeps `LAST`, which has no destructor); which owners
//! are idle right after a `join` (loom's returns before the thread's
//! thread-locals are dropped; std's after); generations wrapping (2^32
//! reuses of a slot); the store built on the slots (`store/mod.rs`).

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
