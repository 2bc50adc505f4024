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
