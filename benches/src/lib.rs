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

/// The median of per-round ratios with its notch, as a box plot draws it
/// (McGill, Tukey and Larsen, 1978): `median +- 1.58 * IQR / sqrt(rounds)`.
/// Two medians whose notches do not overlap differ at roughly 95 %
/// confidence; a notch wider than the difference being asked about means
/// the rounds cannot tell.
#[derive(Debug, Clone, Copy)]
pub struct Notch {
    /// The least, the quartiles and the most of the ratios, in order.
    pub quartiles: [f64; 5],
    /// Half the notch's width.
    pub half_width: f64,
}

impl Notch {
    /// Of the per-round ratios `v`.
    pub fn of(v: &[f64]) -> Self {
        let mut v = v.to_vec();
        let quartiles = [0.0, 0.25, 0.5, 0.75, 1.0].map(|q| quantile(&mut v, q));
        let iqr = quartiles[3] - quartiles[1];
        Notch {
            quartiles,
            half_width: 1.58 * iqr / (v.len().max(1) as f64).sqrt(),
        }
    }

    /// The median.
    pub fn median(&self) -> f64 {
        self.quartiles[2]
    }
}

/// How finely rounds run side by side resolved the benches' ratio
/// "added cost / console-subscriber's added cost" (per round `(t_mode -
/// t_none) / (t_console - t_none)`): a ratio of two differences, which
/// the machine's own drift swamps when console adds little. Judged by the
/// widest [`Notch`] of the modes' ratios, with console's added share and
/// the baseline's drift between rounds to say why.
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
    /// The widest notch half-width of the modes' ratios.
    pub widest: f64,
}

impl Resolution {
    /// From the costs per op of no subscriber and of console, by round,
    /// and the notches of the modes' ratios.
    pub fn of(base: &[f64], console: &[f64], notches: &[Notch]) -> Self {
        let mut added: Vec<f64> = console.iter().zip(base).map(|(c, b)| c / b - 1.0).collect();
        let mut b = base.to_vec();
        let spread = (quantile(&mut b, 0.75) - quantile(&mut b, 0.25)) / median(&mut b);
        Resolution {
            rounds: base.len(),
            console_added: median(&mut added),
            base_spread: spread,
            widest: notches.iter().map(|n| n.half_width).fold(0.0, f64::max),
        }
    }

    /// Whether the run can tell a mode at half of console's added cost
    /// from one at the whole of it: every notch narrower than +-0.25, over
    /// at least [`Resolution::FEWEST_ROUNDS`] rounds (fewer have no spread
    /// worth the name).
    pub fn tells_half_from_whole(&self) -> bool {
        self.rounds >= Self::FEWEST_ROUNDS && self.console_added > 0.0 && self.widest < 0.25
    }

    /// The fewest rounds whose spread is judged.
    pub const FEWEST_ROUNDS: usize = 5;

    /// One line for the benches' output.
    pub fn describe(&self) -> String {
        let verdict = if self.rounds < Self::FEWEST_ROUNDS {
            "too few rounds to judge (AWAITSCOPE_BENCH_ROUNDS=7 and more)"
        } else if self.tells_half_from_whole() {
            "enough to tell half of console's added cost from the whole"
        } else {
            "too coarse to tell half of console's added cost from the whole: these ratios \
             are noise here; count instructions instead (benches/callgrind/per_command.sh)"
        };
        format!(
            "resolution: console added {:.1}% to no subscriber's cost per op (median of {} \
             rounds), whose own cost per op moved {:.1}% between rounds (interquartile range \
             over median); the widest notch of the ratios below is +-{:.2} (1.58 IQR / \
             sqrt(rounds)): {verdict}",
            self.console_added * 100.0,
            self.rounds,
            self.base_spread * 100.0,
            self.widest,
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

    #[test]
    fn a_notch_is_the_median_with_its_box_plot_interval() {
        let n = Notch::of(&[0.5, 0.4, 0.6, 0.5]);
        assert_eq!(n.median(), 0.5);
        assert_eq!(n.quartiles[0], 0.4);
        assert_eq!(n.quartiles[4], 0.6);
        // IQR 0.525 - 0.475 = 0.05, over sqrt(4).
        assert!((n.half_width - 1.58 * 0.05 / 2.0).abs() < 1e-12, "{n:?}");
    }

    /// Ratios that agree from round to round resolve half from the whole;
    /// ratios that swing as on the fourth host (one mode's rounds at
    /// 0.10-7.76, as measured there) do not, however small the baseline's
    /// own drift looks.
    #[test]
    fn resolution_follows_the_widest_notch() {
        let none = [6.0, 6.1, 5.95, 6.05, 6.0, 6.1, 5.9];
        let console: Vec<f64> = none.iter().map(|t| t * 1.35).collect();
        let steady = Notch::of(&[0.52, 0.55, 0.50, 0.49, 0.53, 0.51, 0.54]);
        let quiet = Resolution::of(&none, &console, &[steady]);
        assert!((quiet.console_added - 0.35).abs() < 1e-9);
        assert!(quiet.tells_half_from_whole(), "{quiet:?}");

        let swinging = Notch::of(&[0.101, 0.495, 0.7, 0.895, 1.2, 1.377, 7.764]);
        let noisy = Resolution::of(&none, &console, &[steady, swinging]);
        assert!(!noisy.tells_half_from_whole(), "{noisy:?}");
        assert!(noisy.describe().contains("too coarse"));

        // Console adding nothing resolves nothing, nor do too few rounds.
        let flat = Resolution::of(&none, &none, &[steady]);
        assert!(!flat.tells_half_from_whole());
        let one = Resolution::of(&none[..1], &console[..1], &[Notch::of(&[0.5])]);
        assert!(!one.tells_half_from_whole());
        assert!(one.describe().contains("too few rounds"));
    }
}
