//! The server's one memory budget, in bytes, split into three shares so
//! that no kind of peer can take memory from the others:
//!
//! * [`Share::Handshake`]: what connections that have not said who they are
//!   hold (their first bytes, their `Hello`);
//! * [`Share::Ingest`]: producers' read buffers and the frames queued
//!   between the connections and the model;
//! * [`Share::Viewers`]: what is queued for, or being written to, viewers,
//!   and their first picture of the model.
//!
//! Every such buffer holds a [`Reservation`] of its bytes; a reservation
//! that does not fit is refused, and the caller decides what that means (a
//! handshaking peer is refused, a producer waits or its batch is dropped and
//! counted, a viewer is skipped ahead). Decoded frames are reserved at an
//! estimate of their decoded size ([`frame_cost`]).
//!
//! Written here rather than taken from a crate: what is needed is a few
//! atomic counters with an RAII guard, and the policy around them is the
//! server's own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use awaitscope_wire::{Body, Event, Frame};

/// Default budget: room for a team's producers and viewers on a laptop.
pub const DEFAULT_MEMORY_BUDGET: usize = 128 << 20;

/// The three parts of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// Connections before their handshake: an eighth.
    Handshake,
    /// Producers' buffers and the ingest queue: half.
    Ingest,
    /// Viewers' queues, writes and rebuilds: three eighths.
    Viewers,
}

impl Share {
    const ALL: [Share; 3] = [Share::Handshake, Share::Ingest, Share::Viewers];

    fn index(self) -> usize {
        match self {
            Share::Handshake => 0,
            Share::Ingest => 1,
            Share::Viewers => 2,
        }
    }

    /// The share's part of `total`, in eighths.
    fn of(self, total: usize) -> usize {
        let eighth = total / 8;
        match self {
            Share::Handshake => eighth,
            Share::Ingest => total - 4 * eighth,
            Share::Viewers => 3 * eighth,
        }
    }

    /// Its name in logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Share::Handshake => "handshake",
            Share::Ingest => "ingest",
            Share::Viewers => "viewers",
        }
    }
}

#[derive(Debug, Default)]
struct Pool {
    cap: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicUsize,
}

/// The budget shared by every connection of a server.
#[derive(Debug)]
pub struct MemoryBudget {
    total: usize,
    pools: [Pool; 3],
}

impl MemoryBudget {
    /// A budget of `total` bytes, split into its shares.
    pub fn new(total: usize) -> Arc<MemoryBudget> {
        let total = total.max(1 << 20);
        let pools = Share::ALL.map(|s| Pool {
            cap: s.of(total),
            ..Pool::default()
        });
        Arc::new(MemoryBudget { total, pools })
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// What `share` may hold at most.
    pub fn cap(&self, share: Share) -> usize {
        self.pools[share.index()].cap
    }

    /// What `share` holds now.
    pub fn used(&self, share: Share) -> usize {
        self.pools[share.index()].used.load(Ordering::Relaxed)
    }

    /// The most `share` has held.
    pub fn peak(&self, share: Share) -> usize {
        self.pools[share.index()].peak.load(Ordering::Relaxed)
    }

    /// Reservations refused in `share` for want of room.
    pub fn refused(&self, share: Share) -> usize {
        self.pools[share.index()].refused.load(Ordering::Relaxed)
    }

    fn take(&self, share: Share, bytes: usize) -> bool {
        let pool = &self.pools[share.index()];
        let mut used = pool.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes).filter(|n| *n <= pool.cap) else {
                pool.refused.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            match pool
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    pool.peak.fetch_max(next, Ordering::Relaxed);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    fn give(&self, share: Share, bytes: usize) {
        self.pools[share.index()]
            .used
            .fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Reserves `bytes` of `share`, or `None` when they do not fit.
    pub fn reserve(self: &Arc<Self>, share: Share, bytes: usize) -> Option<Reservation> {
        self.take(share, bytes).then(|| Reservation {
            budget: self.clone(),
            share,
            bytes,
        })
    }

    /// An empty reservation of `share`, to grow later.
    pub fn empty(self: &Arc<Self>, share: Share) -> Reservation {
        Reservation {
            budget: self.clone(),
            share,
            bytes: 0,
        }
    }
}

/// Bytes held against the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    share: Share,
    bytes: usize,
}

impl Reservation {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The share they are held in.
    pub fn share(&self) -> Share {
        self.share
    }

    /// Holds `bytes` in all, growing or shrinking; `false` (and unchanged)
    /// when growing does not fit.
    pub fn resize(&mut self, bytes: usize) -> bool {
        if bytes > self.bytes {
            if !self.budget.take(self.share, bytes - self.bytes) {
                return false;
            }
        } else {
            self.budget.give(self.share, self.bytes - bytes);
        }
        self.bytes = bytes;
        true
    }

    /// Holds `bytes` in all even past the share's cap: for the few small
    /// things that are never dropped (control messages), so that the
    /// share still counts them.
    pub fn force(&mut self, bytes: usize) {
        if bytes > self.bytes {
            let pool = &self.budget.pools[self.share.index()];
            let now =
                pool.used.fetch_add(bytes - self.bytes, Ordering::AcqRel) + bytes - self.bytes;
            pool.peak.fetch_max(now, Ordering::Relaxed);
            self.bytes = bytes;
        } else {
            self.resize(bytes);
        }
    }

    /// Moves the bytes of `other` (of the same share) into this one.
    pub fn absorb(&mut self, mut other: Reservation) {
        debug_assert_eq!(self.share, other.share);
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give(self.share, self.bytes);
        }
    }
}

/// What a decoded frame of `wire_len` bytes costs in memory, estimated:
/// its events as laid out in memory plus its bytes (strings, stacks).
pub fn frame_cost(frame: &Frame, wire_len: usize) -> usize {
    let events = match &frame.body {
        Body::Events(ev) => ev.len(),
        _ => 0,
    };
    std::mem::size_of::<Frame>() + events * std::mem::size_of::<Event>() + wire_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_total_and_refuse_past_their_part() {
        let b = MemoryBudget::new(8 << 20);
        let sum: usize = Share::ALL.iter().map(|s| b.cap(*s)).sum();
        assert_eq!(sum, b.total());
        assert_eq!(b.cap(Share::Handshake), 1 << 20);
        let r = b.reserve(Share::Handshake, 1 << 20).expect("fits");
        assert!(b.reserve(Share::Handshake, 1).is_none());
        // Another share is not affected.
        assert!(b.reserve(Share::Ingest, 1 << 20).is_some());
        assert_eq!(b.refused(Share::Handshake), 1);
        drop(r);
        assert_eq!(b.used(Share::Handshake), 0);
        assert_eq!(b.peak(Share::Handshake), 1 << 20);
    }

    #[test]
    fn a_reservation_resizes_within_its_share_and_gives_back_on_drop() {
        let b = MemoryBudget::new(8 << 20);
        let mut r = b.empty(Share::Viewers);
        assert!(r.resize(1000));
        assert!(!r.resize(b.cap(Share::Viewers) + 1));
        assert_eq!(r.bytes(), 1000);
        assert!(r.resize(10));
        assert_eq!(b.used(Share::Viewers), 10);
        let other = b.reserve(Share::Viewers, 5).unwrap();
        r.absorb(other);
        assert_eq!(b.used(Share::Viewers), 15);
        drop(r);
        assert_eq!(b.used(Share::Viewers), 0);
    }
}
