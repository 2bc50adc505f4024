//! The span, target and field names the capture matches or makes.
//!
//! Names that go on the wire (the spans, targets and fields of tasks,
//! resources and awaitscope's own spans, which the collector reads too) are
//! defined once, in [`awaitscope_wire::names`], and re-exported here. What
//! is defined here is the capture's own: tokio's internal targets and
//! fields that it matches but turns into wire events of its own (a waker
//! event becomes a `Wake`, the target of a state update becomes its event
//! class), and the `tracing-log` prefix the log output strips.
//!
//! `tracing`'s macros take field names as tokens, not constants: the spans
//! awaitscope makes (`spawn.rs`, `causal.rs`, `await_tree.rs`) spell their
//! fields out; the names here are the ones read back.

pub(crate) use awaitscope_wire::names::{
    ASYNC_OP_POLL_SPAN, ASYNC_OP_SPAN, AWAIT_POINT_SPAN, AWAIT_POINT_TARGET, CONCRETE_TYPE,
    CONTEXT_SPAN, CONTEXT_TARGET, IS_READY, JOIN_SPAN, JOIN_TARGET, KIND, KIND_BLOCK_ON, KIND_TASK,
    LABEL, LOCKED, LOC_FILE, LOC_LINE, MESSAGE, OP_NAME, RESOURCE_SPAN, SOURCE, SPAWN_SPAN,
    TASK_ID, TASK_NAME, TASK_TARGET, TOKIO_POLL_OP_TARGET, TOKIO_STATE_UPDATE_TARGETS,
};

// --------------------------------------------------------- tokio's targets

/// Prefix of the targets of tokio's own instrumentation: a span named like
/// a task or resource span is one only under a target with this prefix (or
/// [`TASK_TARGET`], for `awaitscope::spawn`'s).
pub(crate) const TOKIO_TARGET_PREFIX: &str = "tokio";
/// Target of the task spans of tokio's blocking pool, whose polls are a
/// worker's and not part of an await tree.
pub(crate) const TOKIO_BLOCKING_TARGET: &str = "tokio::task::blocking";
/// Target of tokio's waker events ([`WAKER_OP`], [`TASK_ID`]), which the
/// capture turns into wake records.
pub(crate) const TOKIO_WAKER_TARGET: &str = "tokio::task::waker";
// ------------------------------------------------- fields of tokio's events

/// [`OP_NAME`] of a timer's poll op (a `Sleep` polled): a wait whose line
/// its span tells, so no stack is taken for it (`capture::wait_stack`).
pub(crate) const TIMER_POLL_OP: &str = "poll_elapsed";

/// On a waker event: what was done to the waker, one of the `WAKER_*`
/// values below.
pub(crate) const WAKER_OP: &str = "op";
/// [`WAKER_OP`] of a waker woken by value (the waker is consumed).
pub(crate) const WAKER_WAKE: &str = "waker.wake";
/// [`WAKER_OP`] of a waker woken by reference (the waker lives on).
pub(crate) const WAKER_WAKE_BY_REF: &str = "waker.wake_by_ref";
/// [`WAKER_OP`] of a waker cloned (a future stored it to wake the task
/// later).
pub(crate) const WAKER_CLONE: &str = "waker.clone";
/// [`WAKER_OP`] of a waker dropped without waking its task.
pub(crate) const WAKER_DROP: &str = "waker.drop";

// ------------------------------------------------------- fields of log events

/// Prefix of the fields `tracing-log` adds to events from the `log` crate
/// (`log.target`, `log.file`...): the log output leaves them out, as
/// `tracing_subscriber::fmt` does.
pub(crate) const LOG_FIELD_PREFIX: &str = "log.";
