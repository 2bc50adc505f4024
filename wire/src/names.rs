//! The span names, targets and field names that producers emit and the
//! collector matches on, each written once.
//!
//! Most come from tokio's own instrumentation (`--cfg tokio_unstable`): its
//! task spans (`runtime.spawn`), resource spans (`runtime.resource`), async
//! operations on resources and their polls, and the state-update and
//! poll-op events of resources. The rest are awaitscope's own: the task and
//! join spans of `awaitscope::spawn`. A field is found by name through its
//! callsite (a [`Callsite`](crate::Callsite) lists the names of its fields;
//! a [`Field`](crate::Field) carries the index into that list).

// ---------------------------------------------------------------------------
// Span names.

/// A task's span: tokio's, for every spawned task, or awaitscope's (target
/// [`TASK_TARGET`]) for tasks spawned with `awaitscope::spawn`. Fields:
/// [`TASK_ID`], [`TASK_NAME`], [`KIND`], [`LOC_FILE`], [`LOC_LINE`],
/// [`LOC_COL`].
pub const SPAWN_SPAN: &str = "runtime.spawn";

/// A resource (Mutex, Semaphore, Sleep, channel...): tokio's. Fields:
/// [`CONCRETE_TYPE`], [`KIND`], [`IS_INTERNAL`] and the creation site
/// ([`LOC_FILE`], [`LOC_LINE`], [`LOC_COL`]).
pub const RESOURCE_SPAN: &str = "runtime.resource";

/// An async operation on a resource (`Mutex::lock`, `Semaphore::acquire`...),
/// child of the resource's span: tokio's. Field: [`SOURCE`].
pub const ASYNC_OP_SPAN: &str = "runtime.resource.async_op";

/// One poll of an async operation (a new span on every poll), child of the
/// async op's span: tokio's.
pub const ASYNC_OP_POLL_SPAN: &str = "runtime.resource.async_op.poll";

/// The await of an `awaitscope::JoinHandle` (target [`JOIN_TARGET`]): the
/// awaiting task waits on the task whose tokio id is its [`TASK_ID`] field.
pub const JOIN_SPAN: &str = "runtime.join";

// ---------------------------------------------------------------------------
// Targets.

/// Target of the task spans that `awaitscope::spawn` makes itself.
pub const TASK_TARGET: &str = "awaitscope::task";

/// Target of [`JOIN_SPAN`]: a span of that name and target is a
/// `JoinHandle` being awaited.
pub const JOIN_TARGET: &str = "awaitscope::join";

/// Target of the spans of `awaitscope::await_point` (named await points).
pub const AWAIT_POINT_TARGET: &str = "awaitscope::await_point";

/// Target of the span that carries a causal context across queues.
pub const CONTEXT_TARGET: &str = "awaitscope::context";

/// Target of tokio's poll-op events ([`crate::EventClass::PollOp`]): an
/// async op was polled, ready ([`IS_READY`]) or not.
pub const TOKIO_POLL_OP_TARGET: &str = "runtime::resource::poll_op";

/// Target of tokio's state-update events of a resource (a Mutex's
/// `locked`, a semaphore's `permits`, an RwLock's `current_readers`).
pub const TOKIO_RESOURCE_STATE_UPDATE_TARGET: &str = "runtime::resource::state_update";

/// Target of tokio's state-update events of an async op (a semaphore
/// acquire's `permits_requested` and `permits_obtained`): the op's state,
/// not its resource's.
pub const TOKIO_ASYNC_OP_STATE_UPDATE_TARGET: &str = "runtime::resource::async_op::state_update";

/// Targets of tokio's state-update events
/// ([`crate::EventClass::StateUpdate`]): of a resource, and of an async op.
pub const TOKIO_STATE_UPDATE_TARGETS: [&str; 2] = [
    TOKIO_RESOURCE_STATE_UPDATE_TARGET,
    TOKIO_ASYNC_OP_STATE_UPDATE_TARGET,
];

// ---------------------------------------------------------------------------
// Fields of task spans.

/// tokio's task id (a task span's, or the awaited task's on a
/// [`JOIN_SPAN`]).
pub const TASK_ID: &str = "task.id";

/// The name given to a task (`tokio::task::Builder::name`,
/// `awaitscope::spawn_named`); empty means none.
pub const TASK_NAME: &str = "task.name";

/// What a task is (`task`, `blocking`, `block_on`, `local`); on a resource,
/// what the resource is (`Sync`, `Timer`...).
pub const KIND: &str = "kind";

/// The [`KIND`] of a task spawned with `tokio::spawn` (or
/// `awaitscope::spawn`): an ordinary task, woken through its wakers.
pub const KIND_TASK: &str = "task";

/// The [`KIND`] of a `spawn_blocking` task: its single poll is the whole
/// blocking closure, and nothing wakes it.
pub const KIND_BLOCKING: &str = "blocking";

/// The [`KIND`] of a `block_on` task: the thread that blocks on it wakes it,
/// not a task waker.
pub const KIND_BLOCK_ON: &str = "block_on";

/// File of the spawn location (of a task) or creation site (of a resource).
pub const LOC_FILE: &str = "loc.file";

/// Line of [`LOC_FILE`].
pub const LOC_LINE: &str = "loc.line";

/// Column of [`LOC_FILE`].
pub const LOC_COL: &str = "loc.col";

// ---------------------------------------------------------------------------
// Fields of resources, async ops and their events.

/// A resource's type (`Mutex`, `Semaphore`, `Sleep`...): its label.
pub const CONCRETE_TYPE: &str = "concrete_type";

/// The [`CONCRETE_TYPE`] of a `tokio::sync::Mutex`: a lock, whose holder
/// can take part in a deadlock.
pub const TYPE_MUTEX: &str = "Mutex";

/// The [`CONCRETE_TYPE`] of a `tokio::sync::RwLock` (a lock).
pub const TYPE_RWLOCK: &str = "RwLock";

/// The [`CONCRETE_TYPE`] of a `tokio::sync::Semaphore`, and of the
/// semaphore inside a Mutex or RwLock (a lock: its permit holders hold it).
pub const TYPE_SEMAPHORE: &str = "Semaphore";

/// The [`CONCRETE_TYPE`] of `tokio::time::sleep`'s future (a timer: it wakes
/// its task by itself).
pub const TYPE_SLEEP: &str = "Sleep";

/// The [`CONCRETE_TYPE`] of a `tokio::time::Interval` (a timer).
pub const TYPE_INTERVAL: &str = "Interval";

/// The [`KIND`] of tokio's timer resources ([`TYPE_SLEEP`],
/// [`TYPE_INTERVAL`]).
pub const KIND_TIMER: &str = "timer";

/// An async op's operation (`Mutex::lock`, `Semaphore::acquire`...): its
/// label.
pub const SOURCE: &str = "source";

/// Whether a resource is internal to another (a Mutex's semaphore): the
/// outer resource stands for it.
pub const IS_INTERNAL: &str = "is_internal";

/// On a poll-op event: whether the polled operation was ready (else the
/// task now waits on the resource).
pub const IS_READY: &str = "is_ready";

/// On a poll-op event: the polled operation (`poll_acquire`...). Sent by
/// tokio; the collector names operations by their async op's [`SOURCE`]
/// instead.
pub const OP_NAME: &str = "op_name";

/// On an async op's span: a flag tokio sets for tokio-console's
/// attribute propagation; awaitscope does not read it.
pub const INHERITS_CHILD_ATTRS: &str = "inherits_child_attrs";

/// On a state update of a Mutex: whether it is now held.
pub const LOCKED: &str = "locked";

/// On a state update of an RwLock: whether it is now write-held.
pub const WRITE_LOCKED: &str = "write_locked";

/// On a state update of a Semaphore: its permits left, or (with
/// [`PERMITS_OP`]) how many it gained or lost.
pub const PERMITS: &str = "permits";

/// On a Semaphore's `Acquire` async op (tokio's span field, as console
/// reports it): the permits it asked for.
pub const PERMITS_REQUESTED: &str = "permits_requested";

/// On a Semaphore's `Acquire` async op: the permits it has obtained so far.
pub const PERMITS_OBTAINED: &str = "permits_obtained";

/// On a state update of a Semaphore: how its permits changed ([`OP_ADD`]:
/// released, [`OP_SUB`]: acquired).
pub const PERMITS_OP: &str = "permits.op";

/// Suffix of the state-update fields that say how to apply another field
/// rather than carry a state: `X.op` (`add`, `sub` or `override`) tells
/// whether the value of `X` in the same event adds to, subtracts from or
/// replaces the resource's `X` ([`PERMITS_OP`], [`CURRENT_READERS_OP`],
/// `write_locked.op`...).
pub const OP_SUFFIX: &str = ".op";

/// On a state update of an RwLock: its readers, or (with
/// [`CURRENT_READERS_OP`]) how many came or went.
pub const CURRENT_READERS: &str = "current_readers";

/// On a state update of an RwLock: how its readers changed ([`OP_ADD`]: a
/// reader took it, [`OP_SUB`]: one let it go; the other way round from
/// [`PERMITS_OP`]).
pub const CURRENT_READERS_OP: &str = "current_readers.op";

/// An `X.op` value: `X` grew by the event's value (permits given back, a
/// reader come).
pub const OP_ADD: &str = "add";

/// An `X.op` value: `X` shrank by the event's value (permits taken, a
/// reader gone).
pub const OP_SUB: &str = "sub";

/// An `X.op` value: `X` is now the event's value.
pub const OP_OVERRIDE: &str = "override";

// ---------------------------------------------------------------------------
// Fields of events.

/// The message of a `tracing` event.
pub const MESSAGE: &str = "message";

// ---------------------------------------------------------------------------
// Fields a program sets on its own spans for awaitscope.

/// On any span of the program
/// (`#[instrument(fields(awaitscope.stuck_after = "30s"))]`): a task that
/// waits inside the span for longer than this is `stuck`, whatever it
/// waits on (a socket, a channel, a call on a tokio resource). A duration
/// (`"500ms"`, `"30s"`, `"2m"`; a bare number is seconds), or `"never"`
/// for no `stuck` inside it. The innermost span that sets it wins over the
/// spans around it and over the collector's threshold.
pub const STUCK_AFTER: &str = "awaitscope.stuck_after";

// ---------------------------------------------------------------------------
// awaitscope's own spans: emitted by the `awaitscope` crate and read back by
// its capture (the collector sees them as user spans).

/// Name of the span of an await point (target [`AWAIT_POINT_TARGET`]),
/// entered around one await so that the task's await tree shows it with
/// its [`LABEL`].
pub const AWAIT_POINT_SPAN: &str = "await";

/// On an [`AWAIT_POINT_SPAN`]: the text the await is shown as.
pub const LABEL: &str = "label";

/// Name of the span (target [`CONTEXT_TARGET`]) a consumer enters to take
/// up a causal context handed over through a queue; it follows from the
/// producer's span.
pub const CONTEXT_SPAN: &str = "awaitscope.context";

/// On a [`CONTEXT_SPAN`] taken up from another process: the W3C
/// `traceparent` it continues (the parent's trace and span ids there).
pub const TRACEPARENT: &str = "traceparent";

/// How a causal trace line names a hand-over from another process, followed
/// by the `traceparent` and ` --`. A collector that sees the sending process
/// too (its [`crate::Event::Handover`] with the same ids) replaces the line
/// with one naming that process and task, and continues the trace there.
pub const REMOTE_HANDOFF_PREFIX: &str = "-- handed over through a queue from traceparent ";
