//! The slots' tests on std's threads and atomics (each property they
//! check fails when it is broken on purpose).

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
