//! The stall watchdog's tools: sampling a blocked worker's native stack
//! ([`signal`], Linux), placing its addresses in the program's modules
//! ([`modules`]) for the collector to symbolise, and reading the worker's
//! scheduler statistics ([`sched`]). The watchdog itself runs in the
//! exporter loop (`export::watchdog`).
//!
//! None of it costs anything until a poll runs past the stall threshold:
//! the signal handler is installed, and the module list read, on the first
//! crossing. The program never symbolises: that would load its debug info
//! into it.

pub(crate) mod modules;
pub(crate) mod sched;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod signal;

use std::time::Duration;

/// The default stall threshold: the collector's default long-poll
/// threshold.
pub const DEFAULT_LONG_POLL: Duration = Duration::from_millis(10);

/// How long the watchdog waits for a signalled worker to answer.
pub(crate) const SAMPLE_WAIT: Duration = Duration::from_millis(20);

/// What the watchdog does when a poll runs long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StallConfig {
    /// A poll running this long (ns) is sampled once.
    pub threshold_ns: u64,
    /// Whether native stacks are sampled (`AWAITSCOPE_STACKS`).
    pub stacks: bool,
}

impl Default for StallConfig {
    fn default() -> Self {
        Self {
            threshold_ns: DEFAULT_LONG_POLL.as_nanos() as u64,
            stacks: true,
        }
    }
}

/// A sampled native stack: return addresses, innermost first, from the
/// interrupted instruction (the signal handler's frames dropped).
pub(crate) struct Sample {
    /// The addresses.
    pub addrs: Vec<usize>,
    /// `addrs[0]` is the interrupted instruction itself, not a return
    /// address (looked up as is rather than as the call before it).
    pub exact_first: bool,
}

/// Why no sample was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoSample {
    /// No handler could be installed (another one owns the signal), or not
    /// on this platform.
    Unsupported,
    /// The thread did not answer in time (or is gone).
    Missed,
}

/// Samples the native stack of thread `tid` of this process.
pub(crate) fn sample(tid: u64, wait: Duration) -> Result<Sample, NoSample> {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        signal::sample(tid as i32, wait)
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        let _ = (tid, wait);
        Err(NoSample::Unsupported)
    }
}

/// The calling thread's kernel id (0 where there is none to signal).
pub(crate) fn current_tid() -> u64 {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        signal::current_tid()
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        0
    }
}
