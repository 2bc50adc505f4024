//! A program that runs console-subscriber (`console_subscriber::init()`, or
//! its `ConsoleLayer`) as one more kind of source, beside awaitscope's own
//! streams and recordings: read over console's gRPC API, with no change to
//! the program.
//!
//! Console's updates are aggregates: every publish interval (1 s by
//! default) the tasks spawned and their statistics (poll count, busy time,
//! first and last poll, wakes, waker clones and drops, self-wakes), the
//! resources (Mutex, Semaphore, Sleep...) with their state attributes, the
//! async operations on them with the task awaiting each, and the resource
//! polls that happened. [`mapping`] turns each update into awaitscope wire
//! events (tasks spawned, polled, woken and closed; resources; the locks a
//! task waits on as its await tree), in frames of a process of its own,
//! so that the model, the detectors, recordings, replay and every report
//! read them as they read any stream. What the aggregates cannot say is
//! never made up (see [`mapping`]): the events are the coarse ones the
//! data allows, and the process is marked as read from console
//! ([`crate::model::process::CONSOLE_NOTE`]).
//!
//! [`client`] is the gRPC client (connect, follow the updates, reconnect
//! with backoff, clear messages for a server that is gone, speaks another
//! protocol or sends garbage); [`forward`] streams what it reads to an
//! awaitscope collector (`awaitscope serve --console`, the UI's
//! `--console`) as an instrumented program would.

pub mod client;
mod emit;
pub mod forward;
mod gone;
pub mod mapping;
mod polls;
mod resources;

pub use client::{run, ConsoleError, SourceEvent};
pub use mapping::Mapper;

/// console-subscriber's default address (`TOKIO_CONSOLE_BIND`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:6669";
