//! What the benches share: measurements of the child process they run each
//! mode in (CPU time, peak RSS), what a recording holds, and the parsing
//! and medians of the children's `RESULT` lines.

pub mod floor;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;

use awaitscope_wire::{Body, Event, FrameReader};

/// CPU time (ns) of this process's threads named `name` (as the kernel
/// shows it, 15 characters at most), from `/proc/self/task/*/schedstat`.
pub fn threads_cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time (ns, user + system) of the whole process so far.
pub fn process_cpu_ns() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// Peak resident set size of this process (KiB), from `getrusage`.
pub fn peak_rss_kib() -> i64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return -1;
    }
    ru.ru_maxrss // KiB on Linux
}

/// What a recording holds.
#[derive(Debug, Default)]
pub struct RecordingStats {
    pub bytes: u64,
    pub frames: u64,
    pub events: u64,
    /// Polls sent as `Enter` .. `PollEnd` (something was recorded during
    /// them) rather than as one `Poll`.
    pub split: u64,
    pub span_new: u64,
    pub enter: u64,
    pub exit: u64,
    pub close: u64,
    pub wake: u64,
    /// Stacks of waits (`WaitStack`).
    pub wait_stacks: u64,
    /// Log events: tokio's resource events (poll ops, state updates) and
    /// the program's warnings and errors.
    pub logs: u64,
    /// Last (cumulative) drop counts.
    pub buffer_full: u64,
    pub disconnected: u64,
    pub write_failed: u64,
    pub goodbye: bool,
    pub error: Option<String>,
}

/// Reads the recording at `path` through and counts what it holds.
pub fn read_recording(path: &std::path::Path) -> RecordingStats {
    let mut st = RecordingStats {
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        ..Default::default()
    };
    let reader = match File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| FrameReader::new(BufReader::new(f)).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            st.error = Some(e);
            return st;
        }
    };
    for frame in reader {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                st.error = Some(e.to_string());
                break;
            }
        };
        st.frames += 1;
        match frame.body {
            Body::Events(evs) => {
                st.events += evs.len() as u64;
                for ev in &evs {
                    match ev {
                        Event::SpanNew(_) => st.span_new += 1,
                        Event::Enter { .. } => {
                            st.enter += 1;
                            st.split += 1;
                        }
                        Event::Exit { .. } | Event::PollEnd { .. } => st.exit += 1,
                        Event::Poll { .. } => {
                            st.enter += 1;
                            st.exit += 1;
                        }
                        Event::Close { .. } => st.close += 1,
                        Event::Wake { .. } => st.wake += 1,
                        Event::WaitStack(_) => st.wait_stacks += 1,
                        Event::Log(_) => st.logs += 1,
                        _ => {}
                    }
                }
            }
            Body::Dropped(d) => {
                // Cumulative: keep the largest seen.
                st.buffer_full = st.buffer_full.max(d.buffer_full);
                st.disconnected = st.disconnected.max(d.disconnected);
                st.write_failed = st.write_failed.max(d.write_failed);
            }
            Body::Goodbye => st.goodbye = true,
            Body::Hello(_) => {}
        }
    }
    st
}

/// The median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile of `v` (0 <= q <= 1, sorted in place), interpolated
/// between the two nearest values; NaN when empty.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (at - lo as f64)
}

/// How finely rounds run side by side can resolve the benches' ratio
/// "added cost / console-subscriber's added cost" (per round `(t_mode -
/// t_none) / (t_console - t_none)`): a ratio of two differences, which
/// the machine's own drift swamps when console adds little.
#[derive(Debug, Clone, Copy)]
pub struct Resolution {
    /// Rounds measured.
    pub rounds: usize,
    /// Console's added share of no subscriber's cost per op, wall or CPU
    /// time (the median over rounds of `t_console / t_none - 1`).
    pub console_added: f64,
    /// How much no subscriber's own cost per op moved between rounds: its
    /// interquartile range over its median.
    pub base_spread: f64,
}

impl Resolution {
    /// From the costs per op of no subscriber and of console, by round.
    pub fn of(base: &[f64], console: &[f64]) -> Self {
        let mut added: Vec<f64> = console.iter().zip(base).map(|(c, b)| c / b - 1.0).collect();
        let mut b = base.to_vec();
        let spread = (quantile(&mut b, 0.75) - quantile(&mut b, 0.25)) / median(&mut b);
        Resolution {
            rounds: base.len(),
            console_added: median(&mut added),
            base_spread: spread,
        }
    }

    /// About how far the median ratio moves when the baseline moves by
    /// its interquartile range in the rounds: one round's ratio moves by
    /// `base_spread / console_added`, and a median of `rounds` rounds by
    /// about that over the square root of their number. A rule of thumb,
    /// not an interval.
    pub fn step(&self) -> f64 {
        self.base_spread / self.console_added.abs().max(1e-9) / (self.rounds.max(1) as f64).sqrt()
    }

    /// Whether these rounds can tell a mode at half of console's added
    /// cost from one at the whole of it (a step under a quarter).
    pub fn tells_half_from_whole(&self) -> bool {
        self.console_added > 0.0 && self.step() < 0.25
    }

    /// One line for the benches' output.
    pub fn describe(&self) -> String {
        let verdict = if self.tells_half_from_whole() {
            "enough to tell half of console's added cost from the whole".to_owned()
        } else {
            "too coarse to tell half of console's added cost from the whole: these ratios \
             are noise here; count instructions instead (benches/callgrind/per_command.sh)"
                .to_owned()
        };
        format!(
            "resolution: console added {:.1}% to no subscriber's cost per op (median of {} \
             rounds); no subscriber's own cost per op moved {:.1}% between rounds \
             (interquartile range over median); the median ratio moves by about {:.2} for such \
             a move: {verdict}",
            self.console_added * 100.0,
            self.rounds,
            self.base_spread * 100.0,
            self.step(),
        )
    }
}

/// The `key=value` fields of a child's `RESULT` line.
pub fn parse(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Field `k` of a parsed `RESULT` line as a number (NaN when absent).
pub fn get(m: &BTreeMap<String, String>, k: &str) -> f64 {
    m.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

impl RecordingStats {
    /// These counts as ` key=value` fields for a `RESULT` line.
    pub fn result_fields(&self) -> String {
        format!(
            " rec_bytes={} frames={} events={} span_new={} enter={} exit={} close={} wake={} \
             buffer_full={} disconnected={} write_failed={} goodbye={} error={} split={}",
            self.bytes,
            self.frames,
            self.events,
            self.span_new,
            self.enter,
            self.exit,
            self.close,
            self.wake,
            self.buffer_full,
            self.disconnected,
            self.write_failed,
            self.goodbye,
            self.error.as_deref().unwrap_or("none").replace(' ', "_"),
            self.split,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_neighbours() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert_eq!(quantile(&mut v, 1.0), 4.0);
        assert_eq!(quantile(&mut v, 0.5), 2.5);
        assert_eq!(quantile(&mut v, 0.25), 1.75);
        assert!(quantile(&mut [], 0.5).is_nan());
    }

    /// Times per op of a quiet machine where console adds a third (the
    /// first host of #17) resolve the ratio; a drifting one where console
    /// adds 3 % (a round-to-round swing of tens of percent, as measured
    /// on the fourth host) does not.
    #[test]
    fn resolution_tells_a_quiet_host_from_a_drifting_one() {
        let quiet_none = [6.0, 6.1, 5.95, 6.05, 6.0, 6.1, 5.9];
        let quiet_console: Vec<f64> = quiet_none.iter().map(|t| t * 1.35).collect();
        let quiet = Resolution::of(&quiet_none, &quiet_console);
        assert!((quiet.console_added - 0.35).abs() < 1e-9);
        assert!(quiet.tells_half_from_whole(), "{quiet:?}");

        let ops_none = [104.0, 83.0, 93.0, 131.0, 135.0, 94.0, 113.0];
        let ops_console = [102.0, 103.0, 97.0, 86.0, 87.0, 99.0, 89.0];
        let drift_none: Vec<f64> = ops_none.iter().map(|o| 1e3 / o).collect();
        let drift_console: Vec<f64> = ops_console.iter().map(|o| 1e3 / o).collect();
        let drift = Resolution::of(&drift_none, &drift_console);
        assert!(!drift.tells_half_from_whole(), "{drift:?}");
        assert!(drift.describe().contains("too coarse"));
    }
}
