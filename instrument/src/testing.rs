//! A test harness: record a test and fail it when the program under test
//! deadlocked, lost a waker, blocked a worker or panicked in a task.
//!
//! ```no_run
//! #[tokio::test]
//! async fn checkout_does_not_stall() {
//!     let _scope = awaitscope::testing::guard();
//!     // ... the test ...
//! } // on drop: fails the test with await trees and causal traces if a
//!   // deadlock, lost waker, poll over 100 ms or panic happened
//! ```
//!
//! The guard installs awaitscope as the *thread's* default subscriber, so it
//! sees the tasks of the current-thread runtime that `#[tokio::test]` uses by
//! default, and tests running in parallel (cargo test) do not see each
//! other. For a multi-thread runtime, use [`TestBuilder::runtime`], which
//! installs the guard on every worker. The report is printed only on
//! failure (captured by cargo test and nextest for passing tests anyway).
//!
//! Under `awaitscope record -- cargo test`, each guard also writes its
//! recording (next to `AWAITSCOPE_RECORD`, numbered per guard), so the
//! run's report covers every guarded test.
//!
//! Enabled by the `testing` feature (it brings in the collector's detectors).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use awaitscope_collector::trace;
use awaitscope_collector::{Config, Finding, FindingKind, Model};
use tracing_subscriber::layer::SubscriberExt;

use crate::{Builder, Guard, MemoryRecording};

/// The kinds a test fails on by default.
pub const DEFAULT_FAIL_ON: [FindingKind; 4] = [
    FindingKind::Deadlock,
    FindingKind::LostWaker,
    FindingKind::LongPoll,
    FindingKind::Panic,
];

/// Starts recording this thread for a test, with the default kinds and a
/// long-poll threshold of 100 ms.
pub fn guard() -> TestGuard {
    TestBuilder::default().start()
}

/// Configures a [`TestGuard`] (from `TestBuilder::default()`): the finding
/// kinds that fail the test, the long-poll threshold, the collector
/// configuration, and whether to record one thread or a whole runtime.
#[derive(Clone, Debug)]
pub struct TestBuilder {
    fail_on: Vec<FindingKind>,
    config: Config,
}

impl Default for TestBuilder {
    fn default() -> Self {
        let mut config = Config::default();
        config.thresholds.long_poll_ns = 100_000_000;
        // Everything is flushed before the analysis: no grace period is
        // needed for events of other threads arriving late.
        config.thresholds.lost_waker_grace_ns = 1_000_000;
        config.thresholds.deadlock_grace_ns = 1_000_000;
        Self {
            fail_on: DEFAULT_FAIL_ON.to_vec(),
            config,
        }
    }
}

impl TestBuilder {
    /// Fails the test on these kinds instead of the default ones.
    pub fn fail_on(mut self, kinds: &[FindingKind]) -> Self {
        self.fail_on = kinds.to_vec();
        self
    }

    /// Threshold of `long_poll` (default 100 ms).
    pub fn long_poll(mut self, threshold: Duration) -> Self {
        self.config.thresholds.long_poll_ns = threshold.as_nanos() as u64;
        self
    }

    /// The collector configuration used for the analysis.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Starts recording the current thread.
    pub fn start(self) -> TestGuard {
        let (recorder, dispatch) = self.recorder();
        let default = tracing::dispatcher::set_default(&dispatch);
        TestGuard {
            recorder: Some(recorder),
            _default: Some(default),
        }
    }

    /// A multi-thread runtime (2 workers) whose threads are all recorded,
    /// and the guard that checks them. Drop (or [`TestGuard::finish`]) the
    /// guard before the runtime: dropping the runtime cancels the tasks a
    /// deadlock or a lost waker left pending.
    pub fn runtime(self) -> (tokio::runtime::Runtime, TestGuard) {
        let (recorder, dispatch) = self.recorder();
        let d = dispatch.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                // Lasts as long as the worker thread.
                std::mem::forget(tracing::dispatcher::set_default(&d));
            })
            .build()
            .expect("a tokio runtime");
        let default = tracing::dispatcher::set_default(&dispatch);
        (
            rt,
            TestGuard {
                recorder: Some(recorder),
                _default: Some(default),
            },
        )
    }

    fn recorder(self) -> (Recorder, tracing::Dispatch) {
        let memory = MemoryRecording::new();
        // Polls are sampled where the test judges them long.
        let mut builder = Builder::new()
            .record_in_memory(&memory)
            .long_poll(Duration::from_nanos(self.config.thresholds.long_poll_ns));
        if let Some(path) = recording_path() {
            builder = builder.record_to(path);
        }
        let (layer, guard) = builder.build();
        let dispatch = crate::scoped_dispatch(tracing_subscriber::registry().with(layer));
        (
            Recorder {
                memory,
                guard,
                fail_on: self.fail_on,
                config: self.config,
                dispatch: Arc::new(dispatch.clone()),
            },
            dispatch,
        )
    }
}

/// Under `awaitscope record` (`AWAITSCOPE_RECORD` set), each guard also
/// writes a recording of its own beside the process's: tests run in
/// parallel threads of one process, so the path gets a per-guard number.
fn recording_path() -> Option<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let raw = std::env::var("AWAITSCOPE_RECORD").ok()?;
    if raw.trim().is_empty() {
        return None;
    }
    let path = std::path::PathBuf::from(raw.replace("{pid}", &std::process::id().to_string()));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-test{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-test{n}"),
    };
    Some(path.with_file_name(name))
}

struct Recorder {
    memory: MemoryRecording,
    guard: Guard,
    fail_on: Vec<FindingKind>,
    config: Config,
    dispatch: Arc<tracing::Dispatch>,
}

/// Records a test; on drop, fails it (panics) with a readable report when
/// findings of the chosen kinds occurred. See [`guard`].
#[must_use = "the test is checked when the guard drops"]
pub struct TestGuard {
    recorder: Option<Recorder>,
    _default: Option<tracing::dispatcher::DefaultGuard>,
}

/// What a test run produced: the findings that fail it and the report.
#[derive(Debug)]
pub struct Outcome {
    /// Findings of the kinds the test fails on.
    pub failures: Vec<Finding>,
    /// Every finding of the run, whatever its kind (the failures
    /// included).
    pub findings: Vec<Finding>,
    /// The readable report of the failures (empty when there are none).
    pub report: String,
}

impl TestGuard {
    /// Stops recording and analyses the test, without panicking.
    pub fn finish(mut self) -> Outcome {
        self.analyse()
    }

    fn analyse(&mut self) -> Outcome {
        self._default.take();
        let Some(r) = self.recorder.take() else {
            return Outcome {
                failures: Vec::new(),
                findings: Vec::new(),
                report: String::new(),
            };
        };
        drop(r.guard);
        drop(r.dispatch);
        let mut model = Model::new(r.config);
        let bytes = r.memory.bytes();
        if let Err(e) =
            awaitscope_collector::ingest::recording::load_reader(&mut model, "test", &bytes[..])
        {
            model.warn(format!("reading the test's recording: {e}"));
        }
        model.finish();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        model.scan_wall(now);
        let findings: Vec<Finding> = model.findings().list().to_vec();
        let failures: Vec<Finding> = findings
            .iter()
            .filter(|f| r.fail_on.contains(&f.kind))
            .cloned()
            .collect();
        let report = if failures.is_empty() {
            String::new()
        } else {
            render(&failures)
        };
        Outcome {
            failures,
            findings,
            report,
        }
    }
}

/// The failure message: per finding, what happened, where (its location)
/// and its trace, innermost first, as every report shows it (so a test
/// that blocks in `load_config` says `load_config` and its line).
fn render(failures: &[Finding]) -> String {
    let mut out = format!("awaitscope: {} finding(s) in this test\n", failures.len());
    for f in failures {
        let _ = writeln!(out, "\n{} ({}x): {}", f.kind.as_str(), f.count, f.message);
        if let Some(loc) = &f.location {
            let _ = writeln!(out, "  at {loc}");
        }
        for t in &f.tasks {
            let _ = write!(out, "  task {}", t.id);
            if let Some(n) = &t.name {
                let _ = write!(out, " {n:?}");
            }
            if let Some(l) = &t.spawned_at {
                let _ = write!(out, " spawned at {l}");
            }
            out.push('\n');
        }
        trace::write_block(&mut out, &f.trace, 2);
    }
    out
}

impl Drop for TestGuard {
    fn drop(&mut self) {
        if self.recorder.is_none() {
            return;
        }
        if std::thread::panicking() {
            // The test failed already; do not abort it with a second panic.
            self.recorder.take();
            return;
        }
        let outcome = self.analyse();
        if !outcome.failures.is_empty() {
            panic!("{}", outcome.report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use awaitscope_collector::detect::FindingTask;
    use awaitscope_collector::model::span::Location;

    #[test]
    fn the_message_names_the_location_and_the_trace_in_order() {
        let loc = |file: &str, line| Location {
            file: file.into(),
            line,
            col: None,
        };
        let f = Finding {
            kind: FindingKind::LongPoll,
            severity: FindingKind::LongPoll.severity(),
            pid: 1,
            process_start_unix_ns: 0,
            tasks: vec![FindingTask {
                id: 1,
                tokio_id: None,
                name: Some("loader".into()),
                spawned_at: Some(loc("tests/stall.rs", 19)),
            }],
            location: Some(loc("tests/stall.rs", 12)),
            message: "task #1 polled for 250.4ms".into(),
            trace: vec![
                "load_config @ tests/stall.rs:12".into(),
                "… 9 runtime frames".into(),
                "task #1 \"loader\" spawned @ tests/stall.rs:19".into(),
            ],
            count: 1,
            worst_ns: Some(250_400_000),
            first_seen: 0,
            last_seen: 0,
        };
        assert_eq!(
            render(&[f]),
            "awaitscope: 1 finding(s) in this test\n\
             \n\
             long_poll (1x): task #1 polled for 250.4ms\n\
             \x20 at tests/stall.rs:12\n\
             \x20 task 1 \"loader\" spawned at tests/stall.rs:19\n\
             \x20 trace (innermost first):\n\
             \x20   load_config @ tests/stall.rs:12\n\
             \x20   … 9 runtime frames\n\
             \x20   task #1 \"loader\" spawned @ tests/stall.rs:19\n"
        );
    }
}
