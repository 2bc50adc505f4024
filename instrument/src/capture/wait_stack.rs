//! Where a task goes to wait: the native stack of the poll in which a tokio
//! resource says "not ready" (a `Mutex::lock`, a semaphore's acquire, a
//! oneshot's receive), taken on the worker right there. The same stacks,
//! at the same rate, say where a task wakes itself (see
//! [`SELF_WAKE_STACK_AT`]).
//!
//! No span names the line of an `.await`: tokio's async ops carry no
//! caller location (`Mutex::lock` is an `async fn`, which cannot be
//! `#[track_caller]`), and `#[instrument]` names the function. The stack
//! does: its innermost frame of the program's own code is the awaiting
//! line, once the collector symbolises it (the program only reads return
//! addresses; see `crate::stacks::modules`).
//!
//! An unwind of the worker's stack costs microseconds, so stacks are taken
//! only for waits on resources other than timers (a sleep's line is its
//! span's), and at a bounded rate: bursts of [`BURST`], then one every
//! [`GAP_NS`] (generic cell rate algorithm, one compare-exchange). A
//! wait past the rate goes out without a stack: its await frame then
//! points at the resource's creation, as it does without stacks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use awaitscope_wire::{limits, Field, Value};

use crate::names;

/// A task's wake of itself inside its own poll at which the thread's
/// stack is taken, once per task: where a task that keeps waking itself
/// does it, which no span names (a hand-written future that calls
/// `wake_by_ref` and returns `Pending`). Not the first: a task that wakes
/// itself once or twice (a `join` of futures ready together) is no busy
/// loop, and its stack would be an unwind spent. When the rate refuses
/// it, it is tried again at twice the count, and so on.
pub(crate) const SELF_WAKE_STACK_AT: u32 = 8;

/// Sustained rate: one stack per this many ns (200 a second).
pub(crate) const GAP_NS: u64 = 5_000_000;
/// Stacks that may be taken at once after a quiet time (the waits of a
/// deadlock come together).
pub(crate) const BURST: u64 = 64;

/// Whether stacks are taken at waits, and the rate gate.
#[derive(Default)]
pub(crate) struct WaitStacks {
    /// Off with `AWAITSCOPE_STACKS=off` (see `Builder::native_stacks`).
    on: AtomicBool,
    /// The theoretical time (ns since the capture's origin) of the next
    /// stack at the sustained rate; a stack may be taken while it is at
    /// most `BURST` gaps ahead of now.
    next_ns: AtomicU64,
}

impl WaitStacks {
    /// Turns the stacks on or off.
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Whether stacks are taken at waits.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The return addresses of the calling thread, innermost first, for a
    /// wait ([`is_wait`]) at `now_ns`, if stacks are on and the rate
    /// admits one; else none.
    pub fn take(&self, now_ns: u64) -> Vec<usize> {
        if !self.admit_now(now_ns) {
            return Vec::new();
        }
        unwind()
    }

    /// Whether a stack may be taken at `now_ns`: stacks are on and the
    /// rate admits one (taking its place). [`unwind`] takes it.
    #[inline]
    pub fn admit_now(&self, now_ns: u64) -> bool {
        self.on() && self.admit(now_ns)
    }

    /// Whether the rate admits a stack at `now_ns` (taking its place).
    fn admit(&self, now_ns: u64) -> bool {
        let mut next = self.next_ns.load(Ordering::Relaxed);
        loop {
            if next > now_ns.saturating_add(BURST * GAP_NS) {
                return false;
            }
            let after = next.max(now_ns) + GAP_NS;
            match self.next_ns.compare_exchange_weak(
                next,
                after,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(n) => next = n,
            }
        }
    }
}

/// The return addresses of the calling thread, innermost first (at most
/// the wire's cap), once the rate admitted a stack.
pub(crate) fn unwind() -> Vec<usize> {
    let mut addrs = Vec::with_capacity(64);
    backtrace::trace(|frame| {
        addrs.push(frame.ip() as usize);
        addrs.len() < limits::MAX_STACK
    });
    addrs
}

/// Whether a poll op event is a task told "not ready" by a resource that
/// is not a timer: its `is_ready` and `op_name` fields (`is_ready =
/// false`, `op_name` not a timer's).
pub(crate) fn is_wait(is_ready: Option<bool>, op_name: Option<&str>) -> bool {
    is_ready == Some(false) && op_name != Some(names::TIMER_POLL_OP)
}

/// [`is_wait`] of a poll op event recorded as wire fields.
pub(crate) fn is_wait_in(meta: &'static tracing_core::Metadata<'static>, fields: &[Field]) -> bool {
    let index = |name| meta.fields().field(name).map(|f| f.index() as u16);
    let value = |name| {
        let i = index(name)?;
        fields.iter().find(|f| f.index == i).map(|f| &f.value)
    };
    let is_ready = match value(names::IS_READY) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let op_name = match value(names::OP_NAME) {
        Some(Value::Str(op)) => Some(op.as_str()),
        _ => None,
    };
    is_wait(is_ready, op_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let w = WaitStacks::default();
        let t0 = 1_000_000_000;
        let admitted = (0..BURST + 10).filter(|_| w.admit(t0)).count() as u64;
        // The burst, and the one the gap since the origin allows.
        assert_eq!(admitted, BURST + 1);
        assert!(!w.admit(t0 + GAP_NS / 2));
        assert!(w.admit(t0 + 2 * GAP_NS));
    }
}
