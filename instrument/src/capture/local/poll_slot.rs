//! A thread's poll in progress, published for the exporter and the stall
//! watchdog (see [`PollSlot`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::*;

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
    pub(super) fn publish(&self, span: u64, start: u64) {
        self.depth.store(0, Ordering::Relaxed);
        self.start.store(start, Ordering::Relaxed);
        self.span.store(span, Ordering::Release);
    }

    /// Publishes that the thread's poll ended (no poll in progress).
    #[inline]
    pub(super) fn clear(&self) {
        self.span.store(0, Ordering::Release);
    }

    /// Whether it shows a poll of `span` (only the owning thread asks).
    #[inline]
    pub(super) fn shows(&self, span: u64) -> bool {
        self.span.load(Ordering::Relaxed) == span
    }

    /// A span was entered in the poll at in-poll depth `depth` (0 for the
    /// outermost). Only the owning thread calls it.
    #[inline(always)]
    pub(super) fn push_span(&self, depth: usize, span: u64) {
        if let Some(s) = self.spans.get(depth) {
            s.store(span, Ordering::Relaxed);
        }
        self.depth.store(depth + 1, Ordering::Release);
    }

    /// The poll's spans are now `depth` deep. Only the owning thread calls it.
    #[inline(always)]
    pub(super) fn set_depth(&self, depth: usize) {
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
