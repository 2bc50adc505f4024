//! The awaitscope collector: turns the streams of instrumented programs (live
//! over TCP, or from recordings) into one [`Model`] and finds what is wrong.
//!
//! * [`model`]: processes, task tree, spans, resources and await trees, with
//!   bounded retention of completed tasks; it applies events and reports
//!   what changed, knowing nothing of detectors.
//! * [`symbolize`]: the native stacks programs sample, from addresses to
//!   functions and lines, read from the program's files here rather than
//!   in the program.
//! * [`detect`]: detectors (`long_poll`, `descheduled`, `starvation`,
//!   `lost_waker`, `never_yielded`, `self_wake`, `deadlock`, `stuck`, `error`, `panic`,
//!   `dropped_events`) observing the model and producing deduplicated
//!   [`Finding`]s.
//! * [`collect`]: the [`Model`], where the two meet: processes watched by
//!   the detectors.
//! * [`ingest`]: reading recordings, and the TCP server (`awaitscope serve`,
//!   feature `server`, on by default).
//! * [`stitch`]: causal traces joined across processes (a consumer's
//!   trace continued in the process that sent it the context).
//! * `console`: programs that run console-subscriber, read over its gRPC
//!   API as one more source (feature `console`, on by default).
//! * [`report`]: the JSON report (`awaitscope report`), schema in
//!   `docs/report-json.md`.
//! * [`export`]: the CI formats (Perfetto and Chrome traces, JUnit,
//!   Markdown, flame graphs, GitHub annotations), streaming where they need
//!   every poll (feature `export`, on by default).
//! * [`units`]: durations printed (finding messages, CI reports) and
//!   parsed (command-line options).
//! * `testing`: a builder of realistic synthetic wire streams for tests
//!   (feature `test-support`).
//!
//! Without default features the crate is the model, the detectors, the
//! reports and the recording reader only: what `awaitscope::testing` needs.

#![warn(missing_docs)]

pub mod collect;
pub mod config;
#[cfg(feature = "console")]
pub mod console;
pub mod detect;
#[cfg(feature = "export")]
pub mod export;
pub mod ingest;
pub mod model;
pub mod report;
pub mod stitch;
pub mod symbolize;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod trace;
pub mod units;

pub use collect::{Model, ModelStats};
pub use config::{Config, Retention, Thresholds};
pub use detect::{Finding, FindingKind, Severity};
pub use report::Report;
