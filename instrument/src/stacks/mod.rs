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

/// How long a signalled worker has to answer (the exporter goes on
/// draining meanwhile).
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
    /// Another sample is in flight (one at a time per process): ask again
    /// later.
    Busy,
}

/// A native stack sample in flight (see [`start_sample`]).
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub(crate) use signal::InFlight;

/// A native stack sample in flight: none where there is no sampling.
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub(crate) enum InFlight {}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
impl InFlight {
    /// Never called: no value exists.
    pub fn collect(&mut self) -> Option<Result<Sample, NoSample>> {
        match *self {}
    }

    /// Never called: no value exists.
    pub fn cancel(&mut self) -> bool {
        match *self {}
    }
}

/// Asks thread `tid` of this process for its native stack, without
/// waiting: the answer is collected from the returned request within
/// `wait` ([`InFlight::collect`]) while the caller goes on draining.
pub(crate) fn start_sample(tid: u64, wait: Duration) -> Result<InFlight, NoSample> {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        signal::start(tid as i32, wait)
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
