//! Per-thread capture state: the thread's ring buffer and the task it polls.
//!
//! Each thread that records owns the producer half of a bounded wait-free
//! single-producer ring ([`rtrb`]); the exporter thread owns the consumer
//! halves. Pushing is a couple of plain stores: no lock, no allocation, no
//! syscall. A full ring drops the record and counts it.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::record::Raw;
use super::Shared;

/// Most tasks nested in polls on one thread (block_in_place, nested block_on).
const TASK_STACK: usize = 8;

/// A task being polled on this thread.
#[derive(Clone, Copy, Default)]
struct Polling {
    task: u64,
    /// This enter came straight after the same task's exit on this thread,
    /// with nothing recorded in between: the pattern of tokio dropping a
    /// completed future (tracing enters the span to drop it).
    adjacent: bool,
}

/// One layer instance's state on one thread.
pub(crate) struct Local {
    instance: u64,
    producer: rtrb::Producer<Raw>,
    /// Records pushed (or dropped) on this thread so far.
    seq: u64,
    tasks: [Polling; TASK_STACK],
    depth: usize,
    last_exit_task: u64,
    last_exit_seq: u64,
    last_exit_ts: u64,
    /// The task that panicked on this thread, if any.
    pub panicked_task: u64,
}

/// Two polls of one task closer than this (in ns) with nothing in between
/// are the poll that completed and the drop of its future.
const ADJACENT_NS: u64 = 50_000;

impl Local {
    /// The task being polled on this thread, or 0.
    #[inline]
    pub fn current_task(&self) -> u64 {
        if self.depth == 0 {
            0
        } else {
            self.tasks[self.depth - 1].task
        }
    }

    /// Pushes a record, counting it as dropped when the ring is full.
    #[inline]
    pub fn push(&mut self, shared: &Shared, raw: Raw) {
        self.seq += 1;
        if self.producer.push(raw).is_err() {
            shared.buffer_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A task span was entered: a poll (or the drop of its future) starts.
    #[inline]
    pub fn enter_task(&mut self, shared: &Shared, task: u64, ts: u64) {
        let adjacent = self.last_exit_task == task
            && self.last_exit_seq == self.seq
            && shared.clock.delta_as_nanos(self.last_exit_ts, ts) < ADJACENT_NS;
        if self.depth < TASK_STACK {
            self.tasks[self.depth] = Polling { task, adjacent };
        }
        self.depth += 1;
    }

    /// A task span was exited. Returns whether that enter/exit pair followed
    /// the task's previous poll directly (see [`Polling::adjacent`]). Call
    /// after pushing the exit record.
    #[inline]
    pub fn exit_task(&mut self, task: u64, ts: u64) -> bool {
        let mut adjacent = false;
        if self.depth > 0 {
            self.depth -= 1;
            if self.depth < TASK_STACK && self.tasks[self.depth].task == task {
                adjacent = self.tasks[self.depth].adjacent;
            }
        }
        self.last_exit_task = task;
        self.last_exit_seq = self.seq;
        self.last_exit_ts = ts;
        adjacent
    }
}

thread_local! {
    static LOCAL: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's state for `shared`'s layer instance, creating
/// it (and registering its ring with the exporter) on first use. Returns
/// `None` during thread teardown or on re-entry; the record is then counted
/// as dropped.
#[inline]
pub(crate) fn with_local<R>(shared: &Arc<Shared>, f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    let r = LOCAL.try_with(|cell| {
        let Ok(mut locals) = cell.try_borrow_mut() else {
            return None;
        };
        // Fast path: one layer instance per process.
        if let Some(first) = locals.first_mut() {
            if first.instance == shared.instance {
                return Some(f(first));
            }
        }
        let i = match locals.iter().position(|l| l.instance == shared.instance) {
            Some(i) => i,
            None => {
                // Forget the rings of layer instances that are gone.
                locals.retain(|l| !l.producer.is_abandoned());
                locals.push(new_local(shared));
                locals.len() - 1
            }
        };
        Some(f(&mut locals[i]))
    });
    match r {
        Ok(Some(r)) => Some(r),
        _ => {
            shared.buffer_full.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn new_local(shared: &Arc<Shared>) -> Local {
    let (producer, consumer) = rtrb::RingBuffer::new(shared.ring_capacity);
    shared.register_ring(consumer);
    Local {
        instance: shared.instance,
        producer,
        seq: 0,
        tasks: [Polling::default(); TASK_STACK],
        depth: 0,
        last_exit_task: 0,
        last_exit_seq: 0,
        last_exit_ts: 0,
        panicked_task: 0,
    }
}
