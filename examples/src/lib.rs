//! Workloads shared by the runnable examples (`cargo run --example NAME`)
//! and by `awaitscope demo`: real async patterns ([`shop`], [`jobs`],
//! [`callbacks`]), bugs on demand ([`bugs`]) and the demo mix of both
//! ([`demo`]).
//!
//! Everything here is plain tokio code instrumented only through `tracing`
//! spans and events and `awaitscope::spawn_named`; the caller installs
//! awaitscope (`awaitscope::init()` in the examples, an in-process
//! collector in `awaitscope demo`).

pub mod bugs;
pub mod callbacks;
pub mod demo;
pub mod jobs;
pub mod shop;
