//! Warming the cache before applying events: with thousands of live tasks,
//! the task each event touches is out of the cache.

use awaitscope_wire::Event;

use super::process::Process;
use super::task::HOT_END;

/// Events whose tasks [`Process::warm`] fetches before applying them.
pub(super) const WARM_AHEAD: usize = 16;

/// Live tasks from which fetching them ahead pays (fewer stay in cache).
const WARM_MIN_TASKS: usize = 1024;

impl Process {
    /// Brings the tasks that `events` will touch into the cache, all at
    /// once: with thousands of live tasks, each event's task is out of the
    /// cache, and looking the tasks up one after the other in a loop that
    /// does nothing else lets the processor wait for all of them together
    /// rather than for each in turn while applying.
    ///
    /// Does nothing under [`WARM_MIN_TASKS`] live tasks.
    #[inline]
    pub(super) fn warm(&self, events: &[Event]) {
        if self.tasks.len() < WARM_MIN_TASKS {
            return;
        }
        for e in events {
            let id = match e {
                Event::Poll { task, .. }
                | Event::PollEnd { task, .. }
                | Event::Wake { task, .. }
                | Event::PollTree { task, .. } => task,
                Event::Stall(st) => &st.task,
                Event::NativeStack(ns) => &ns.task,
                Event::WaitStack(w) | Event::WakeStack(w) => &w.stack.task,
                Event::Enter { span, .. }
                | Event::Exit { span, .. }
                | Event::Close { span, .. } => span,
                _ => continue,
            };
            if let Some(t) = self.tasks.get(id) {
                // The fields a poll and a wake use (its most frequent
                // waker among them), not the whole task.
                prefetch(t, HOT_END);
            }
        }
    }
}

/// Asks the processor to fetch the cache lines of the `len` bytes at `p`
/// (at least the first; no effect on other architectures): every line
/// they touch, wherever in a line `p` falls.
#[inline(always)]
fn prefetch<T>(p: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = p as usize & !63;
        let end = p as usize + len.max(1);
        let mut line = start;
        while line < end {
            // SAFETY: prefetching is a hint; it never faults, whatever the
            // address (here lines holding a live value).
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
            }
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}
