//! The thread's span cache: registry id to span node, so that entering a
//! span and naming a woken task cost no lookup in the span store.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use awaitscope_wire::SpanClass;

use super::*;
use crate::span_node::SpanNode;

/// Entries of a thread's span cache at first (a power of two; 16 bytes each).
pub(super) const CACHE: usize = 1024;

/// Most entries it grows to (256 KiB), when it misses often: a thread that
/// polls thousands of tasks in turn would otherwise look many of them up in
/// the registry at every poll (a lookup in it costs far more than a hit
/// here).
pub(super) const MAX_CACHE: usize = 1 << 14;

/// Lookups between two checks of the miss rate.
pub(super) const CACHE_CHECK: u32 = 1 << 14;

/// Cache slot of a registry id in a cache of `2^bits` entries.
#[inline]
pub(super) fn slot(reg: u64, bits: u32) -> usize {
    // Fibonacci hashing: the top bits of the product index the table.
    (reg.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
}

/// A cached registry lookup: registry id to span id, class and node.
#[derive(Clone, Default)]
pub(super) struct CacheEntry {
    pub(super) reg: u64,
    pub(super) node: Option<Arc<SpanNode>>,
}

impl Local {
    /// Index of the cache entry holding the span with registry id `reg`,
    /// filled from `lookup` on a miss.
    #[inline]
    pub(super) fn cached(
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
    pub(super) fn check_cache(&mut self) {
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
    pub(super) fn node(
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

    /// The span with registry id `reg`, from this thread's cache: (span id,
    /// class, node if it is a task).
    #[inline(always)]
    pub(super) fn find(
        &mut self,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) -> Option<(u64, SpanClass, Option<Arc<SpanNode>>)> {
        let i = self.cached(reg, lookup)?;
        self.found(i)
    }

    /// What [`Local::enter`] needs of cache entry `i`.
    #[inline(always)]
    pub(super) fn found(&mut self, i: usize) -> Option<(u64, SpanClass, Option<Arc<SpanNode>>)> {
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

    /// Caches a span just created on this thread outside a poll, or a
    /// task's: its first enter then needs no registry lookup. (A span
    /// created inside a poll is the poll's recent span instead.)
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
        if self.recent.0 == reg {
            self.recent = (0, 0);
        }
        let e = &mut self.cache[slot(reg, self.cache_bits)];
        if e.reg == reg {
            e.node = None;
        }
    }

    /// Puts a task's node back in the cache after its poll.
    #[inline]
    pub(super) fn uncache_task(&mut self, reg: u64, node: Arc<SpanNode>) {
        let e = &mut self.cache[slot(reg, self.cache_bits)];
        if e.node.is_none() || e.reg == reg {
            *e = CacheEntry {
                reg,
                node: Some(node),
            };
        }
    }
}
