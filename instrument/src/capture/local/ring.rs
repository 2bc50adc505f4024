//! What the thread hands the exporter: records pushed into its ring (grown
//! within the shared budget, the exporter woken when it fills), and the
//! nodes of closed spans it takes back for its next spans.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;
use crate::capture::record::{Raw, RawLog};
use crate::span_node::{NodeParts, SpanNode};
use awaitscope_wire::Field;

/// Closed spans' nodes the exporter gives back to the thread that made
/// them, at most this many waiting per thread (past that the exporter
/// frees them itself). A span's node is allocated by the thread that
/// creates the span and usually released last by the exporter, when it
/// reads the span's close: freed there, every node would go back to the
/// creating thread's allocator arena under its lock, against that thread's
/// own allocations (malloc's futex waits in the profiles of #17), and the
/// creating thread would allocate every node anew. Given back, a node's
/// memory is reused by the next span of its thread: a server creating a
/// span per request allocates no node in steady state. Room for a drain's
/// worth of a busy thread's spans: tokio's timers (two spans each) came
/// back faster than 1024 fit, and the rest were freed on the exporter.
pub(crate) const NODE_RETURNS: usize = 4096;

/// Log records (tokio's resource events above all: poll ops and state
/// updates, several per lock taken) the exporter gives back to the thread
/// that made them, at most this many waiting per thread. For the same
/// reason as [`NODE_RETURNS`]: a record and its fields freed on the
/// exporter's thread cost the making thread the allocator's slow path at
/// its next record.
pub(crate) const LOG_RETURNS: usize = 1024;

/// The exporter's ends of a thread's returns.
pub(crate) struct Returns {
    /// Nodes of closed spans (see [`NODE_RETURNS`]).
    pub nodes: rtrb::Producer<Arc<SpanNode>>,
    /// Log records sent (see [`LOG_RETURNS`]).
    pub logs: rtrb::Producer<Box<RawLog>>,
}

/// Records in a ring of `capacity` slots at which its thread wakes the
/// exporter: three quarters.
pub(super) fn wake_mark(capacity: usize) -> usize {
    (capacity - capacity / 4).max(1)
}

impl Local {
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
    pub(super) fn flush_enter(&mut self) {
        let (span, ts) = std::mem::take(&mut self.pending_enter);
        self.push_now(Raw::Enter {
            span,
            task: true,
            ts,
        });
    }

    #[inline]
    pub(super) fn push_now(&mut self, raw: Raw) {
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
    pub(super) fn near_full(&mut self) {
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

    /// Pushes two records that go together (a small log's fields and the
    /// log: see `capture::small_fields`): both, or neither (then counted
    /// as one record dropped), so that the exporter never pairs one with
    /// another's.
    #[inline]
    pub fn push_pair(&mut self, first: Raw, second: Raw) {
        if self.pending_enter.0 != 0 {
            self.flush_enter();
        }
        if self.producer.slots() < 2 && !(self.grow() && self.producer.slots() >= 2) {
            self.count_dropped();
            return;
        }
        self.push_now(first);
        self.push_now(second);
    }

    #[cold]
    pub(super) fn overflow_push(&mut self, raw: Raw) {
        if self.grow() && self.producer.push(raw).is_ok() {
            return;
        }
        self.count_dropped();
    }

    /// One record dropped: the ring is full and cannot grow.
    #[cold]
    fn count_dropped(&mut self) {
        // Single writer: a plain load and store, no locked instruction.
        let n = self.dropped.load(Ordering::Relaxed);
        self.dropped.store(n + 1, Ordering::Relaxed);
    }

    /// Replaces the full ring by one four times larger, within the shared
    /// budget and the configured maximum; false when it cannot grow.
    #[cold]
    fn grow(&mut self) -> bool {
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
        }
        grow > 0
    }

    pub(super) fn shared_register(&mut self, consumer: rtrb::Consumer<Raw>) {
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

    /// A log record this thread made and the exporter gave back, for the
    /// next one to reuse (see [`LOG_RETURNS`]).
    #[inline]
    pub fn old_log(&mut self) -> Option<Box<RawLog>> {
        self.log_returns.pop().ok()
    }

    /// A node this thread made and the exporter gave back (see
    /// [`NODE_RETURNS`]) that nobody else refers to, for the thread's next
    /// span, with its fields taken out for that span's to be recorded over
    /// (see `FieldRecorder::reusing`); then [`Local::new_node_over`].
    #[inline]
    pub fn reusable_node(&mut self) -> Option<(Arc<SpanNode>, Vec<Field>)> {
        let mut old = self.returns.pop().ok()?;
        let fields = Arc::get_mut(&mut old)?.take_fields();
        Some((old, fields))
    }

    /// The node of a new span made of `parts`: over `old` (from
    /// [`Local::reusable_node`]) when given, else over the next node the
    /// exporter gave back that nobody else refers to, else a new
    /// allocation.
    #[inline]
    pub fn new_node_over(&mut self, old: Option<Arc<SpanNode>>, parts: NodeParts) -> Arc<SpanNode> {
        if let Some(mut old) = old.or_else(|| self.returns.pop().ok()) {
            if let Some(slot) = Arc::get_mut(&mut old) {
                // Drops the old span's fields and references here, on the
                // thread that made them.
                slot.reuse(parts);
                return old;
            }
        }
        Arc::new(SpanNode::new(parts))
    }
}
