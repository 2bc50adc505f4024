//! The awaitscope terminal UI: data feeds, model snapshots and the views.
//!
//! * [`demo`]: the workloads of `awaitscope demo` (and of the runnable
//!   examples), with the bugs it plants on purpose.
//! * [`feed`]: the embedded collector, a running `serve` over TCP
//!   (`--connect ADDR`), following `serve --record-dir` (`--connect DIR`),
//!   and replaying recordings.
//! * [`snapshot`]: what the views draw, copied out of the model.
//! * [`ui`]: state, input, rendering, theme and the terminal loop.

#![warn(missing_docs)]

pub mod console_feed;
pub mod demo;
pub mod feed;
pub mod snapshot;
pub mod ui;
