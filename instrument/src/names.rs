//! The span, target and field names the capture matches or makes: tokio's
//! instrumentation (with `--cfg tokio_unstable`) and awaitscope's own spans.
//! Every such string lives here, so that a change of name (or a move of
//! these names to the wire crate) is a change to this file.
//!
//! `tracing`'s macros take field names as tokens, not constants: the spans
//! awaitscope makes (`spawn.rs`, `causal.rs`, `await_tree.rs`) spell their
//! fields out; the names here are the ones read back.

// ------------------------------------------------------------ span names

/// A task span: tokio's (target `tokio::task...`) or `awaitscope::spawn`'s
/// on stable tokio (target [`AWAITSCOPE_TASK_TARGET`]).
pub(crate) const TASK_SPAN: &str = "runtime.spawn";
/// A tokio resource (a Mutex, a timer...).
pub(crate) const RESOURCE_SPAN: &str = "runtime.resource";
/// An async operation on a tokio resource (`lock`, `acquire`...).
pub(crate) const ASYNC_OP_SPAN: &str = "runtime.resource.async_op";
/// One poll of an async operation.
pub(crate) const ASYNC_OP_POLL_SPAN: &str = "runtime.resource.async_op.poll";
/// The span entered while an `awaitscope::JoinHandle` is awaited.
pub(crate) const JOIN_SPAN: &str = "runtime.join";
/// The span of an [`crate::AwaitPoint`].
pub(crate) const AWAIT_POINT_SPAN: &str = "await";
/// The span of an [`crate::Context`] entered by its consumer.
pub(crate) const CONTEXT_SPAN: &str = "awaitscope.context";

// --------------------------------------------------------------- targets

/// Prefix of the targets of tokio's own instrumentation.
pub(crate) const TOKIO_TARGET_PREFIX: &str = "tokio";
/// Target of the task spans of tokio's blocking pool.
pub(crate) const TOKIO_BLOCKING_TARGET: &str = "tokio::task::blocking";
/// Target of tokio's waker events (`op`, `task.id`).
pub(crate) const TOKIO_WAKER_TARGET: &str = "tokio::task::waker";
/// Target of tokio's resource poll-op events.
pub(crate) const TOKIO_POLL_OP_TARGET: &str = "runtime::resource::poll_op";
/// Targets of tokio's resource state updates (a Mutex's `locked`...).
pub(crate) const TOKIO_STATE_UPDATE_TARGETS: [&str; 2] = [
    "runtime::resource::state_update",
    "runtime::resource::async_op::state_update",
];
/// Target of the task spans made by `awaitscope::spawn` on stable tokio.
pub(crate) const AWAITSCOPE_TASK_TARGET: &str = "awaitscope::task";
/// Target of the span entered while an `awaitscope::JoinHandle` is awaited.
pub(crate) const JOIN_TARGET: &str = "awaitscope::join";
/// Target of the spans made by [`crate::AwaitPoint::await_point`].
pub(crate) const AWAIT_POINT_TARGET: &str = "awaitscope::await_point";
/// Target of the spans that carry a [`crate::Context`] across a queue.
pub(crate) const CONTEXT_TARGET: &str = "awaitscope::context";

// ---------------------------------------------------------------- fields

/// tokio's id of a task (task spans, waker events, `runtime.join`).
pub(crate) const TASK_ID: &str = "task.id";
/// A task's name (empty when it has none).
pub(crate) const TASK_NAME: &str = "task.name";
/// A task span's kind: `task`, `blocking`, `block_on`, `local`...
pub(crate) const KIND: &str = "kind";
/// The kind of `Runtime::block_on`'s pseudo-task: the root of the program.
pub(crate) const KIND_BLOCK_ON: &str = "block_on";
/// The kind of a plain task (not shown in dumps).
pub(crate) const KIND_TASK: &str = "task";
/// Source file of a spawn or of a resource's creation.
pub(crate) const LOC_FILE: &str = "loc.file";
/// Source line of a spawn or of a resource's creation.
pub(crate) const LOC_LINE: &str = "loc.line";
/// A resource's type (`Mutex`, `Sleep`...).
pub(crate) const CONCRETE_TYPE: &str = "concrete_type";
/// An async op's operation (`Mutex::lock`...).
pub(crate) const SOURCE: &str = "source";
/// A state update's "the resource is locked now" flag.
pub(crate) const LOCKED: &str = "locked";
/// An [`crate::AwaitPoint`]'s label.
pub(crate) const LABEL: &str = "label";
/// A waker event's operation, one of the `WAKER_*` values.
pub(crate) const WAKER_OP: &str = "op";
/// The message of an event (`info!("...")`).
pub(crate) const MESSAGE: &str = "message";
/// Prefix of the fields `tracing-log` adds to events from the `log` crate.
pub(crate) const LOG_FIELD_PREFIX: &str = "log.";

// ----------------------------------------------------- waker operations

/// A waker woken by value (consumed).
pub(crate) const WAKER_WAKE: &str = "waker.wake";
/// A waker woken by reference.
pub(crate) const WAKER_WAKE_BY_REF: &str = "waker.wake_by_ref";
/// A waker cloned.
pub(crate) const WAKER_CLONE: &str = "waker.clone";
/// A waker dropped.
pub(crate) const WAKER_DROP: &str = "waker.drop";
