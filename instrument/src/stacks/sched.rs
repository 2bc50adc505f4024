//! A thread's scheduler statistics (Linux `/proc/self/task/<tid>/schedstat`
//! and `stat`): how long it ran, in the kernel, and waited for a CPU.

use std::io::Read;

use awaitscope_wire::Sched;

/// One reading of a thread's cumulative statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    /// When it was read, ns since the producer started.
    pub at: u64,
    /// Time on a CPU so far, ns.
    pub on_cpu_ns: u64,
    /// Time runnable but waiting for a CPU so far, ns.
    pub waiting_ns: u64,
    /// Time in the kernel so far, ns (clock-tick granularity).
    pub kernel_ns: u64,
}

impl Reading {
    /// The statistics between `self` (earlier) and `later`.
    pub fn until(&self, later: &Reading) -> Sched {
        let on_cpu_ns = later.on_cpu_ns.saturating_sub(self.on_cpu_ns);
        Sched {
            window_ns: later.at.saturating_sub(self.at),
            on_cpu_ns,
            kernel_ns: later
                .kernel_ns
                .saturating_sub(self.kernel_ns)
                .min(on_cpu_ns),
            waiting_ns: later.waiting_ns.saturating_sub(self.waiting_ns),
        }
    }
}

/// Reads threads' statistics with one reused buffer.
#[derive(Default)]
pub(crate) struct SchedReader {
    buf: Vec<u8>,
    path: String,
    tick_ns: u64,
}

impl SchedReader {
    /// The statistics of thread `tid` of this process now (`at`), or `None`
    /// where they cannot be read (not Linux, the thread is gone, or the
    /// kernel keeps no schedstats).
    pub fn read(&mut self, tid: u64, at: u64) -> Option<Reading> {
        if !cfg!(target_os = "linux") || tid == 0 {
            return None;
        }
        if self.tick_ns == 0 {
            self.tick_ns = tick_ns();
        }
        let (on_cpu_ns, waiting_ns) = {
            let text = self.file(tid, "schedstat")?;
            let mut it = text.split_ascii_whitespace();
            let on: u64 = it.next()?.parse().ok()?;
            let wait: u64 = it.next()?.parse().ok()?;
            (on, wait)
        };
        let tick = self.tick_ns;
        let kernel_ns = {
            let text = self.file(tid, "stat")?;
            // After the command name (which may hold spaces and parens):
            // field 3 (state) onwards; stime is field 15.
            let rest = &text[text.rfind(')')? + 1..];
            let stime: u64 = rest.split_ascii_whitespace().nth(12)?.parse().ok()?;
            stime * tick
        };
        Some(Reading {
            at,
            on_cpu_ns,
            waiting_ns,
            kernel_ns,
        })
    }

    /// The text of `/proc/self/task/<tid>/<name>` in the reused buffer.
    fn file(&mut self, tid: u64, name: &str) -> Option<&str> {
        use std::fmt::Write;
        self.path.clear();
        let _ = write!(self.path, "/proc/self/task/{tid}/{name}");
        self.buf.clear();
        std::fs::File::open(&self.path)
            .ok()?
            .read_to_end(&mut self.buf)
            .ok()?;
        std::str::from_utf8(&self.buf).ok()
    }
}

/// Length of a clock tick (the unit of `stat`'s times), in ns.
fn tick_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz > 0 {
            return 1_000_000_000 / hz as u64;
        }
    }
    10_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_thread_and_spans_a_window() {
        let mut r = SchedReader::default();
        let tid = super::super::current_tid();
        if tid == 0 {
            return;
        }
        let Some(a) = r.read(tid, 0) else {
            return; // not Linux, or no schedstats in this kernel
        };
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let b = r.read(tid, 30_000_000).expect("read again");
        let s = a.until(&b);
        assert_eq!(s.window_ns, 30_000_000);
        assert!(s.on_cpu_ns > 0, "{s:?}");
        assert!(s.kernel_ns <= s.on_cpu_ns);
        assert_eq!(r.read(u64::MAX / 2, 0), None, "no such thread");
    }
}
