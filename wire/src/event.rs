//! The messages carried in frames.
//!
//! Timestamps are nanoseconds since the producer's start
//! ([`ProcessKey::start_unix_ns`] gives the wall clock of that origin).
//! Span ids ([`SpanId`]) are assigned by the producer, are unique for the
//! life of the process and are never reused (unlike `tracing` registry ids).
//! A task is identified by the id of its task span.

use serde::{Deserialize, Serialize};

use crate::limits;

/// Stable id of a span (and of the task whose span it is) within a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpanId(pub u64);

/// Identifies a producer process across its frames: pid plus start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    /// Operating-system process id.
    pub pid: u32,
    /// Start of the process's awaitscope clock, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
}

/// One frame: the unit of transport and of recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Which process produced this frame.
    pub process: ProcessKey,
    /// Sequence number of the frame within this producer's stream.
    pub seq: u64,
    /// What the frame carries.
    pub body: Body,
}

/// What a frame carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// First frame of every connection and recording. After a reconnect the
    /// producer sends `Hello` again, then the state needed to rebuild its
    /// model (callsites and live spans) as ordinary events.
    Hello(ProcessInfo),
    /// A batch of events, in the order they happened on each thread.
    Events(#[serde(deserialize_with = "capped::events")] Vec<Event>),
    /// Events lost so far (cumulative), by cause.
    Dropped(DropCounts),
    /// The producer is shutting down cleanly; nothing follows.
    Goodbye,
}

/// Who the producer is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Short process name (executable file name).
    pub name: String,
    /// Command line, truncated to the string cap.
    #[serde(deserialize_with = "capped::args")]
    pub cmdline: Vec<String>,
    /// Version of the awaitscope crate that produced the stream.
    pub producer_version: String,
    /// Whether tokio's own instrumentation (`--cfg tokio_unstable`) was on.
    pub tokio_unstable: bool,
    /// True when this `Hello` follows a reconnect.
    pub reconnect: bool,
    /// Access token, when the collector requires one.
    pub token: Option<String>,
}

/// Counts of events the producer could not deliver. Cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    /// Dropped because a thread's buffer was full.
    pub buffer_full: u64,
    /// Dropped because no collector was connected (live stream only).
    pub disconnected: u64,
    /// Dropped because writing the stream or recording failed.
    pub write_failed: u64,
}

impl DropCounts {
    /// All drops together, saturating at `u64::MAX`.
    ///
    /// The counts come off the wire, so they may be anything: a plain sum
    /// would panic (debug builds) or wrap (release builds) on large ones.
    pub fn total(&self) -> u64 {
        self.buffer_full
            .saturating_add(self.disconnected)
            .saturating_add(self.write_failed)
    }
}

/// Severity of a callsite, as in `tracing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// `tracing::Level::TRACE`, the most verbose.
    Trace,
    /// `tracing::Level::DEBUG`.
    Debug,
    /// `tracing::Level::INFO`.
    Info,
    /// `tracing::Level::WARN`: the lowest level of program events the producer
    /// captures.
    Warn,
    /// `tracing::Level::ERROR`: the program events the `error` detector reports.
    Error,
}

/// What a span callsite stands for, decided once when it is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SpanClass {
    /// A span of the program (`#[instrument]`, `info_span!`, ...).
    User,
    /// A task: tokio's `runtime.spawn` span or one made by `awaitscope::spawn`.
    Task,
    /// A tokio resource (`runtime.resource`: Mutex, Semaphore, Sleep...).
    Resource,
    /// An async operation on a resource (`runtime.resource.async_op`).
    AsyncOp,
    /// One poll of an async operation (`runtime.resource.async_op.poll`).
    AsyncOpPoll,
}

/// What an event callsite stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventClass {
    /// An event of the program (captured at WARN and ERROR).
    User,
    /// `runtime::resource::poll_op`: an async op was polled (ready or not).
    PollOp,
    /// `runtime::resource::state_update` (and the async-op variant).
    StateUpdate,
}

/// Whether a callsite is a span or an event, with its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallsiteKind {
    /// A span callsite.
    Span(SpanClass),
    /// An event callsite.
    Event(EventClass),
}

/// Static description of a span or event callsite, sent once per process
/// (and again after a reconnect) before anything refers to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Callsite {
    /// Producer-assigned id of the callsite.
    pub id: u32,
    /// Span or event name.
    pub name: String,
    /// Target (usually the module path).
    pub target: String,
    /// The callsite's `tracing` level. Events of the program are sent only
    /// at WARN and ERROR; spans at any level.
    pub level: Level,
    /// Source file, if known.
    pub file: Option<String>,
    /// Source line, if known.
    pub line: Option<u32>,
    /// Span or event, and its class.
    pub kind: CallsiteKind,
    /// Names of the callsite's fields; [`Field::index`] points into this.
    #[serde(deserialize_with = "capped::names")]
    pub fields: Vec<String>,
}

/// A recorded field value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Signed integer.
    I64(i64),
    /// Unsigned integer.
    U64(u64),
    /// A float (`tracing` records `f32` values as `f64`).
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A string or a `Display`/`Debug` rendering (capped).
    Str(String),
}

/// One field of a span or event: index into [`Callsite::fields`] and value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// Index of the field name in the callsite's field list.
    pub index: u16,
    /// Its value.
    pub value: Value,
}

/// One span of a [`Event::PollTree`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeNode {
    /// The span.
    pub span: SpanId,
    /// Depth below the task span.
    pub depth: u16,
}

/// How a waker was used (tokio's `tokio::task::waker` events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WakeOp {
    /// `Waker::wake` (consumes the waker).
    Wake,
    /// `Waker::wake_by_ref`.
    WakeByRef,
    /// The waker was cloned. Sent by version-1 producers only: version 2
    /// counts live wakers in the producer and sends the count with each
    /// [`Event::PollEnd`].
    Clone,
    /// The waker was dropped. Sent by version-1 producers only (see
    /// [`WakeOp::LastDrop`]).
    Drop,
    /// The task's last live waker was dropped outside the task's own poll
    /// (without waking it): no waker of the task remains.
    LastDrop,
}

/// How a span ended. For task spans this is how the task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CloseKind {
    /// An ordinary (non-task) span closed.
    Span,
    /// The task's future completed. Its last enter/exit pair was the drop of
    /// the future, not a poll (tracing enters a span to drop its future).
    Completed,
    /// The task was dropped before its future completed (aborted, or the
    /// runtime shut down). Its last enter/exit pair was the drop.
    Cancelled,
    /// The task panicked while being polled.
    Panicked,
}

/// Something that happened in the producer.
///
/// The large, rare variants are boxed so that an `Event` stays small (40
/// bytes): a batch holds up to [`limits::MAX_BATCH`] of them, and most are
/// polls and wakes. Boxing changes nothing on the wire (a box encodes as
/// what it holds, and a newtype variant of a struct as the struct variant
/// with the same fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Describes a callsite; sent before the first span or event of it
    /// (boxed).
    Callsite(Box<Callsite>),
    /// The events that follow (until the next `Thread`) happened on this
    /// thread. `name` is sent the first time a thread is seen.
    Thread {
        /// Producer-assigned thread index.
        id: u32,
        /// Thread name, on first sight.
        name: Option<String>,
    },
    /// A span was created (boxed: rare next to polls and wakes, and large).
    SpanNew(#[serde(deserialize_with = "capped::span_new")] Box<SpanNew>),
    /// More fields were recorded on a span.
    Record {
        /// The span.
        span: SpanId,
        /// The fields.
        #[serde(deserialize_with = "capped::fields")]
        fields: Vec<Field>,
    },
    /// `span.follows_from(follows)`.
    FollowsFrom {
        /// The span.
        span: SpanId,
        /// The span it follows from.
        follows: SpanId,
    },
    /// A span was entered. Entering a task span is the start of a poll.
    Enter {
        /// The span.
        span: SpanId,
        /// When the span was entered, ns since the producer started.
        ts: u64,
    },
    /// The spans entered during a task's latest poll, in the order they were
    /// entered: the task's await tree. Sent just before the event that ends
    /// the poll (`PollEnd` or `Poll`; `Exit` of the task span in version 1), and only when it differs from the
    /// task's previous poll: until the next `PollTree` for the task, its
    /// polls entered the same spans. Spans entered inside a poll are not
    /// sent as `Enter`/`Exit`.
    PollTree {
        /// The task.
        task: SpanId,
        /// The spans, with their depth below the task span (0: entered
        /// directly in the task's poll).
        #[serde(deserialize_with = "capped::tree")]
        spans: Vec<TreeNode>,
    },
    /// A span was exited. Version-2 producers send the end of a task's poll
    /// as [`Event::PollEnd`]; version 1 sent it as `Exit` of the task span.
    Exit {
        /// The span.
        span: SpanId,
        /// When the span was exited, ns since the producer started.
        ts: u64,
    },
    /// A span closed (for a task span: the task ended, see [`CloseKind`]).
    Close {
        /// The span.
        span: SpanId,
        /// How it ended.
        kind: CloseKind,
        /// When the span closed, ns since the producer started.
        ts: u64,
    },
    /// A task's waker was used.
    Wake {
        /// The task whose waker it is.
        task: SpanId,
        /// What was done with it.
        op: WakeOp,
        /// The task being polled on the waking thread, if any.
        by: Option<SpanId>,
        /// When the waker was used, ns since the producer started.
        ts: u64,
    },
    /// An event (`tracing::event!`) that passed the producer's filter: WARN and
    /// ERROR events of the program, and tokio's resource events (boxed).
    Log(#[serde(deserialize_with = "capped::log")] Box<Log>),
    /// A panic, caught by the panic hook (boxed).
    Panic(Box<Panic>),
    /// A whole poll of a task, start and end in one event (version 2): what
    /// producers send instead of `Enter` and `PollEnd` when nothing else
    /// was recorded on the thread between them.
    Poll {
        /// The task.
        task: SpanId,
        /// When the poll started.
        start: u64,
        /// How long it ran (it ended at `start + duration`), in ns.
        duration: u64,
        /// Wakers of the task alive when the poll ended (see
        /// [`Event::PollEnd`]).
        wakers: u32,
    },
    /// A poll of a task ended: the task span was exited (version 2).
    PollEnd {
        /// The task.
        task: SpanId,
        /// When the poll ended, ns since the producer started.
        ts: u64,
        /// Wakers of the task alive when the poll ended (clones not yet
        /// dropped or consumed by a wake). A pending task with none, not
        /// woken since, can never be polled again.
        wakers: u32,
    },
    /// A task's poll that ran past the producer's stall threshold, as the
    /// producer's watchdog saw it while it still ran (version 3, boxed):
    /// where the task was (spans entered, native stack of its worker) and
    /// how the worker thread spent the time. Sent once when the poll
    /// crosses the threshold (`ended: false`), and once more after the poll
    /// ended with the scheduler statistics up to its end (`ended: true`);
    /// either may arrive after the poll's end. `(task, start)` names the
    /// poll.
    Stall(Box<Stall>),
    /// A stall's native stack as the producer sampled it, for the collector
    /// to symbolise (version 4, boxed): addresses in the program's modules
    /// (its executable and shared libraries), each module named by path and
    /// build id. Sent right after the `ended: false` [`Event::Stall`] of the
    /// same poll `(task, start)`, whose `stack` is
    /// [`StackState::Sampled`] and whose `frames` are empty. (A producer
    /// asked to symbolise in process sends the frames in the `Stall` and no
    /// `NativeStack`.)
    NativeStack(Box<NativeStack>),
    /// A causal context left the process (version 5, boxed): the program
    /// took a W3C `traceparent` of one of its spans
    /// (`awaitscope::Context::traceparent`) to send along with a message.
    /// A collector that also sees the receiving process finds the message's
    /// consumer by these ids (its context span carries the same
    /// `traceparent`) and continues the consumer's causal traces here.
    Handover(Box<Handover>),
    /// Where a task went to wait (version 6, boxed): the native stack of
    /// the poll in which a tokio resource told the task "not ready" (the
    /// `Pending` of a `Mutex::lock`, a semaphore's acquire, a oneshot's
    /// receive), taken on the worker right there, for the collector to
    /// symbolise as a [`NativeStack`]. Its innermost frame of the
    /// program's own code is the line the task awaits at, which no span
    /// names. Sent right after that not-ready [`Event::Log`], for the same
    /// task and time; `span` is the Log's span (the async op's poll).
    /// Producers take these at a bounded rate and for timers not at all:
    /// a not-ready poll may have none.
    WaitStack(Box<WaitStack>),
    /// The native stack at which a task woke itself inside its own poll
    /// (version 7): where a task that keeps waking itself does it, which
    /// no span names (a future whose `poll` calls `wake_by_ref` and returns
    /// `Pending`). The same shape as a wait's: `span` is the span current
    /// there (the task's when none is), `stack.task` the task, `stack.ts`
    /// the wake's time, `at` its innermost frame of the program's own once
    /// symbolised. Producers take one at a task's eighth wake of itself
    /// (once per task; while the wait stacks' bounded rate refuses one, at
    /// twice the count, and so on): a task may have none.
    WakeStack(Box<WaitStack>),
}

impl Event {
    /// When the event happened (ns since the producer started), for the
    /// events that carry a time: a whole poll's is its start. Callsites,
    /// threads, field records, follows-from edges and await trees have none
    /// (they take the time of the events around them).
    pub fn ts(&self) -> Option<u64> {
        match self {
            Event::Enter { ts, .. }
            | Event::Exit { ts, .. }
            | Event::PollEnd { ts, .. }
            | Event::Poll { start: ts, .. }
            | Event::Close { ts, .. }
            | Event::Wake { ts, .. } => Some(*ts),
            Event::SpanNew(n) => Some(n.ts),
            Event::Stall(st) => Some(st.ts),
            Event::NativeStack(ns) => Some(ns.ts),
            Event::WaitStack(w) | Event::WakeStack(w) => Some(w.stack.ts),
            Event::Log(l) => Some(l.ts),
            Event::Panic(p) => Some(p.ts),
            Event::Handover(h) => Some(h.ts),
            Event::Callsite(_)
            | Event::Thread { .. }
            | Event::Record { .. }
            | Event::FollowsFrom { .. }
            | Event::PollTree { .. } => None,
        }
    }
}

/// A span was created: [`Event::SpanNew`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanNew {
    /// Its stable id.
    pub id: SpanId,
    /// Its callsite.
    pub callsite: u32,
    /// Explicit or contextual parent span.
    pub parent: Option<SpanId>,
    /// The task being polled on this thread when the span was created. For
    /// a task span this is the spawning task: the edge of the task tree.
    pub ctx_task: Option<SpanId>,
    /// The span that was current when this span was created. For a task
    /// span this is the spawn context (tokio task spans have no parent).
    pub ctx_span: Option<SpanId>,
    /// When the span was created, ns since the producer started.
    pub ts: u64,
    /// Recorded fields.
    #[serde(deserialize_with = "capped::fields")]
    pub fields: Vec<Field>,
}

/// [`Event::SpanNew`] with its fields borrowed, for producers that keep a
/// span's fields elsewhere and would otherwise copy them (a vector and its
/// strings) for every span they send. It encodes byte for byte as the owned
/// event (see [`crate::EventsFrame::push`]); it is never decoded.
#[derive(Clone, Copy, Debug)]
pub struct SpanNewRef<'a> {
    /// As [`SpanNew::id`].
    pub id: SpanId,
    /// As [`SpanNew::callsite`].
    pub callsite: u32,
    /// As [`SpanNew::parent`].
    pub parent: Option<SpanId>,
    /// As [`SpanNew::ctx_task`].
    pub ctx_task: Option<SpanId>,
    /// As [`SpanNew::ctx_span`].
    pub ctx_span: Option<SpanId>,
    /// As [`SpanNew::ts`].
    pub ts: u64,
    /// As [`SpanNew::fields`].
    pub fields: &'a [Field],
}

/// Variant index of [`Event::SpanNew`] (checked against the derived
/// encoding by a test).
const SPAN_NEW_VARIANT: u32 = 2;

impl Serialize for SpanNewRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        /// The struct inside the variant, field for field as [`SpanNew`].
        struct Body<'b>(&'b SpanNewRef<'b>);
        impl Serialize for Body<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let r = self.0;
                let mut st = s.serialize_struct("SpanNew", 7)?;
                st.serialize_field("id", &r.id)?;
                st.serialize_field("callsite", &r.callsite)?;
                st.serialize_field("parent", &r.parent)?;
                st.serialize_field("ctx_task", &r.ctx_task)?;
                st.serialize_field("ctx_span", &r.ctx_span)?;
                st.serialize_field("ts", &r.ts)?;
                st.serialize_field("fields", r.fields)?;
                st.end()
            }
        }
        s.serialize_newtype_variant("Event", SPAN_NEW_VARIANT, "SpanNew", &Body(self))
    }
}

/// [`Event::PollTree`] with its spans borrowed as (span id, depth) pairs:
/// what a producer sends at the end of a poll whose await tree changed,
/// without building the owned event's vector. It encodes byte for byte as
/// the owned event; it is never decoded.
#[derive(Clone, Copy, Debug)]
pub struct PollTreeRef<'a> {
    /// As in [`Event::PollTree`].
    pub task: SpanId,
    /// As [`TreeNode`]s' span ids and depths, in order.
    pub spans: &'a [(u64, u16)],
}

/// Variant index of [`Event::PollTree`] (checked against the derived
/// encoding by a test).
const POLL_TREE_VARIANT: u32 = 6;

impl Serialize for PollTreeRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStructVariant};
        /// The spans, as a sequence of [`TreeNode`]s.
        struct Spans<'b>(&'b [(u64, u16)]);
        impl Serialize for Spans<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for &(span, depth) in self.0 {
                    seq.serialize_element(&TreeNode {
                        span: SpanId(span),
                        depth,
                    })?;
                }
                seq.end()
            }
        }
        let mut st = s.serialize_struct_variant("Event", POLL_TREE_VARIANT, "PollTree", 2)?;
        st.serialize_field("task", &self.task)?;
        st.serialize_field("spans", &Spans(self.spans))?;
        st.end()
    }
}

/// An event of the program or of tokio's resources: [`Event::Log`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// Its callsite.
    pub callsite: u32,
    /// The current span when it was emitted (the event's parent).
    pub span: Option<SpanId>,
    /// The task being polled, if any.
    pub task: Option<SpanId>,
    /// When the event was emitted, ns since the producer started.
    pub ts: u64,
    /// Recorded fields.
    #[serde(deserialize_with = "capped::fields")]
    pub fields: Vec<Field>,
    /// For ERROR events: the causal trace, one line per span or task
    /// boundary, innermost first (see `awaitscope::CausalTrace`); empty
    /// otherwise.
    #[serde(deserialize_with = "capped::trace")]
    pub trace: Vec<String>,
}

/// A panic caught by the panic hook: [`Event::Panic`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Panic {
    /// The task being polled when it happened.
    pub task: Option<SpanId>,
    /// The current span.
    pub span: Option<SpanId>,
    /// Panic message (capped).
    pub message: String,
    /// Source file where it was raised; `None` when the panic carried no
    /// location.
    pub file: Option<String>,
    /// Line of [`Panic::file`]; `None` when the file is.
    pub line: Option<u32>,
    /// When the panic hook ran, ns since the producer started.
    pub ts: u64,
    /// The causal trace at the panic, innermost first.
    #[serde(deserialize_with = "capped::trace")]
    pub trace: Vec<String>,
}

/// A causal context sent to another process: [`Event::Handover`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    /// The span whose context was taken (`None`: taken outside any span).
    pub span: Option<SpanId>,
    /// The task being polled when the context was taken, if any.
    pub task: Option<SpanId>,
    /// The W3C trace id sent (never all zero).
    pub trace_id: [u8; 16],
    /// The W3C parent id sent: the id `span` has in that trace (never all
    /// zero).
    pub span_id: [u8; 8],
    /// When the context was taken, ns since the producer started.
    pub ts: u64,
    /// The causal trace of `span`, one line per span or task boundary,
    /// innermost first (as in [`Log::trace`]): what a consumer's traces
    /// continue with.
    #[serde(deserialize_with = "capped::trace")]
    pub trace: Vec<String>,
}

/// A poll past the stall threshold, seen while it ran: [`Event::Stall`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    /// The task whose poll it is.
    pub task: SpanId,
    /// When the poll started (the `ts` of its `Enter`, or the `start` of
    /// its `Poll`), ns since the producer started: with `task`, the poll.
    pub start: u64,
    /// When this was observed, ns since the producer started: the moment
    /// the stack was sampled (`ended: false`) or the statistics were read
    /// after the poll's end (`ended: true`).
    pub ts: u64,
    /// `false`: sent at the crossing, with the stacks. `true`: sent after
    /// the poll ended, with [`Stall::sched`] up to the end and no stacks.
    pub ended: bool,
    /// The spans entered in the poll when the stack was sampled, innermost
    /// first (the async stack at that moment; the task span not included).
    #[serde(deserialize_with = "capped::stall_spans")]
    pub spans: Vec<SpanId>,
    /// What became of the native stack sample.
    pub stack: StackState,
    /// The worker thread's native stack when it was sampled, innermost
    /// first, symbolised by the producer (inlined functions are frames of
    /// their own). Empty unless `stack` is [`StackState::Sampled`].
    #[serde(deserialize_with = "capped::native_frames")]
    pub frames: Vec<NativeFrame>,
    /// How the worker thread spent the poll's time, as far as the producer
    /// could read it (Linux only).
    pub sched: Option<Sched>,
}

/// A sampled native stack, not symbolised: [`Event::NativeStack`].
///
/// The producer only reads its worker's return addresses and the list of
/// its loaded modules; turning them into functions and lines (loading the
/// debug info, tens of megabytes for a large binary) is the collector's
/// work, so that it costs the program nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeStack {
    /// The task whose poll was sampled.
    pub task: SpanId,
    /// When the poll started: with `task`, the poll (as [`Stall::start`]).
    pub start: u64,
    /// When the stack was sampled, ns since the producer started.
    pub ts: u64,
    /// The modules the frames are in, as [`RawFrame::module`] indexes them.
    #[serde(deserialize_with = "capped::modules")]
    pub modules: Vec<Module>,
    /// The frames, innermost first, at most [`limits::MAX_STACK`].
    #[serde(deserialize_with = "capped::raw_frames")]
    pub frames: Vec<RawFrame>,
}

/// A task's wait, with the native stack it was taken at:
/// [`Event::WaitStack`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitStack {
    /// The span the not-ready poll was reported in (an async op's poll,
    /// whose async op the collector keeps the wait's line on).
    pub span: SpanId,
    /// The stack: `task` the waiting task, `start` and `ts` both the time
    /// of the not-ready poll.
    pub stack: NativeStack,
    /// The frame the task awaits at (the innermost of the program's own
    /// code), when already symbolised: `awaitscope record` does so while
    /// the program's binary is there, and then empties `stack`'s modules
    /// and frames, so that the recording reads anywhere.
    pub at: Option<NativeFrame>,
}

/// A module of the program (its executable or a shared library), as the
/// collector finds its symbols.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Absolute path of the file the module was loaded from (the
    /// executable's as `/proc/self/exe` named it).
    pub path: String,
    /// The file's GNU build id (`NT_GNU_BUILD_ID`), for telling whether the
    /// file at `path` is still the one that ran; empty when it has none.
    #[serde(deserialize_with = "capped::build_id")]
    pub build_id: Vec<u8>,
}

/// One sampled frame: an address, within a module when one holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawFrame {
    /// Index of the module in [`NativeStack::modules`]; `None` for an
    /// address in no module (the vDSO, generated code).
    pub module: Option<u32>,
    /// The address to look up: in the module's own address space (as in its
    /// file, load bias removed) when `module` is set, else as it was in the
    /// process. Already the address of the call for a return address (one
    /// less than the address returned to), the instruction itself for the
    /// interrupted frame.
    pub address: u64,
}

/// Whether a [`Stall`] carries a native stack, and why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StackState {
    /// The worker was interrupted and its stack read: see `frames`, or
    /// the [`Event::NativeStack`] that follows (version 4).
    Sampled,
    /// Sampling is turned off (`AWAITSCOPE_STACKS=off`).
    Off,
    /// Not available on this platform or build: only the async stack.
    Unsupported,
    /// Sampling was tried and gave nothing: the worker did not answer the
    /// signal in time, or its poll ended first.
    Missed,
}

/// One native stack frame (a function; an inlined call is a frame of its
/// own), symbolised by the producer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeFrame {
    /// Demangled function name without the hash suffix
    /// (`app::auth::hash_password`); `"??"` when unknown.
    pub function: String,
    /// Source file, as the producer shows it: relative to the workspace,
    /// `crate-version/src/..` for a dependency, `std/src/..` for the
    /// standard library; never absolute unless nothing better is known.
    pub file: Option<String>,
    /// Line in `file`.
    pub line: Option<u32>,
    /// Whose code it is.
    pub origin: FrameOrigin,
}

/// Whose code a [`NativeFrame`] is, for folding what users cannot act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameOrigin {
    /// The program's own code (its workspace).
    User,
    /// A dependency that is not runtime (a crate from a registry or git).
    Dependency,
    /// The standard library, tokio, awaitscope, tracing, futures, the C
    /// library and the thread start: folded when shown.
    Runtime,
}

/// A worker thread's scheduler statistics over part of a poll (Linux:
/// `/proc/self/task/<tid>/schedstat` and `stat`), for telling a poll that
/// blocked from one that waited for a CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sched {
    /// Wall time the statistics cover, in ns (from when the producer first
    /// read them, during the poll, to when it last did).
    pub window_ns: u64,
    /// Of it, time the thread ran on a CPU (user and kernel).
    pub on_cpu_ns: u64,
    /// Of `on_cpu_ns`, time in the kernel (clock-tick granularity).
    pub kernel_ns: u64,
    /// Time the thread was runnable but waiting for a CPU (descheduled).
    pub waiting_ns: u64,
}

impl Sched {
    /// Time neither running nor waiting for a CPU: sleeping or blocked
    /// (a lock, a blocking syscall, `thread::sleep`).
    pub fn off_cpu_ns(&self) -> u64 {
        self.window_ns
            .saturating_sub(self.on_cpu_ns)
            .saturating_sub(self.waiting_ns)
    }
}

/// Deserialization of the lists that [`limits`] caps, refusing a list as soon
/// as it is known to exceed its cap.
///
/// Checking the caps only after decoding (as [`crate::validate`] does) lets a
/// 1 MiB frame of tiny list elements inflate to tens of megabytes before it
/// is refused; this bounds every list while it is decoded. The encoding is
/// unchanged: these read exactly what `Vec`'s own `Deserialize` reads.
pub(crate) mod capped {
    use std::cell::{Cell, RefCell};
    use std::fmt;

    use serde::de::{
        Deserialize, DeserializeSeed, Deserializer, Error, Expected, SeqAccess, Visitor,
    };

    use super::{
        limits, Event, Field, Log, Module, NativeFrame, RawFrame, SpanId, SpanNew, TreeNode,
    };

    thread_local! {
        /// Why the last list on this thread was refused. Codecs may drop the
        /// message of a custom error (postcard does), so the frame decoder
        /// picks it up from here.
        static REFUSED: RefCell<Option<String>> = const { RefCell::new(None) };
        /// An empty event vector given back by [`crate::recycle`]: the next
        /// batch decoded on this thread fills it rather than allocating.
        static SPARE: Cell<Vec<Event>> = const { Cell::new(Vec::new()) };
        /// Boxes of `SpanNew` events given back by [`crate::recycle`], with
        /// the fields they held (the boxes, and the strings of their
        /// fields, are what is reused: see [`spare_span_new`]).
        #[allow(clippy::vec_box)]
        static SPAN_NEWS: RefCell<Vec<Box<SpanNew>>> = const { RefCell::new(Vec::new()) };
        /// Emptied boxes of `Log` events given back by [`crate::recycle`].
        #[allow(clippy::vec_box)]
        static LOGS: RefCell<Vec<Box<Log>>> = const { RefCell::new(Vec::new()) };
    }

    /// A `SpanNew` decoded into a box given back by [`crate::recycle`] (its
    /// field vector reused too), else into a new one. The encoding is the
    /// derived one: the struct's fields in order.
    pub(super) fn span_new<'de, D: Deserializer<'de>>(d: D) -> Result<Box<SpanNew>, D::Error> {
        if d.is_human_readable() {
            return Box::<SpanNew>::deserialize(d);
        }
        let mut b = spare_span_new();
        b.fields.clear();
        d.deserialize_struct("SpanNew", SPAN_NEW_FIELDS, InSpanNew(&mut b))?;
        Ok(b)
    }

    /// A box for a `SpanNew`: one given back by [`crate::recycle`], still
    /// holding the fields of the span it held (the caller reads the new
    /// ones over them, or clears them), else a new one.
    pub(crate) fn spare_span_new() -> Box<SpanNew> {
        SPAN_NEWS.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| {
            Box::new(SpanNew {
                id: SpanId(0),
                callsite: 0,
                parent: None,
                ctx_task: None,
                ctx_span: None,
                ts: 0,
                fields: Vec::new(),
            })
        })
    }

    /// A `Log` decoded as [`span_new`] decodes a `SpanNew`.
    pub(super) fn log<'de, D: Deserializer<'de>>(d: D) -> Result<Box<Log>, D::Error> {
        if d.is_human_readable() {
            return Box::<Log>::deserialize(d);
        }
        let mut b = LOGS.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| {
            Box::new(Log {
                callsite: 0,
                span: None,
                task: None,
                ts: 0,
                fields: Vec::new(),
                trace: Vec::new(),
            })
        });
        d.deserialize_struct("Log", LOG_FIELDS, InLog(&mut b))?;
        Ok(b)
    }

    const SPAN_NEW_FIELDS: &[&str] = &[
        "id", "callsite", "parent", "ctx_task", "ctx_span", "ts", "fields",
    ];
    const LOG_FIELDS: &[&str] = &["callsite", "span", "task", "ts", "fields", "trace"];

    /// The next field of a struct read as a sequence.
    fn field<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
        seq: &mut A,
        i: usize,
        what: &dyn Expected,
    ) -> Result<T, A::Error> {
        seq.next_element()?
            .ok_or_else(|| Error::invalid_length(i, what))
    }

    /// The next field of a struct, a capped list, read into `into`
    /// (reusing its allocation).
    fn list_field<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
        seq: &mut A,
        i: usize,
        what: &dyn Expected,
        into: &mut Vec<T>,
        cap: usize,
        name: &'static str,
    ) -> Result<(), A::Error> {
        seq.next_element_seed(IntoVec {
            into,
            cap,
            what: name,
        })?
        .ok_or_else(|| Error::invalid_length(i, what))
    }

    struct IntoVec<'a, T> {
        into: &'a mut Vec<T>,
        cap: usize,
        what: &'static str,
    }

    impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for IntoVec<'_, T> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            let init = std::mem::take(self.into);
            *self.into = d.deserialize_seq(CappedVec {
                cap: self.cap,
                what: self.what,
                init,
            })?;
            Ok(())
        }
    }

    struct InSpanNew<'a>(&'a mut SpanNew);

    impl<'de> Visitor<'de> for InSpanNew<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("struct SpanNew")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let exp = &"struct SpanNew with 7 elements";
            let n = self.0;
            n.id = field(&mut seq, 0, exp)?;
            n.callsite = field(&mut seq, 1, exp)?;
            n.parent = field(&mut seq, 2, exp)?;
            n.ctx_task = field(&mut seq, 3, exp)?;
            n.ctx_span = field(&mut seq, 4, exp)?;
            n.ts = field(&mut seq, 5, exp)?;
            list_field(
                &mut seq,
                6,
                exp,
                &mut n.fields,
                limits::MAX_FIELDS,
                "fields",
            )
        }
    }

    struct InLog<'a>(&'a mut Log);

    impl<'de> Visitor<'de> for InLog<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("struct Log")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let exp = &"struct Log with 6 elements";
            let l = self.0;
            l.callsite = field(&mut seq, 0, exp)?;
            l.span = field(&mut seq, 1, exp)?;
            l.task = field(&mut seq, 2, exp)?;
            l.ts = field(&mut seq, 3, exp)?;
            list_field(
                &mut seq,
                4,
                exp,
                &mut l.fields,
                limits::MAX_FIELDS,
                "fields",
            )?;
            list_field(
                &mut seq,
                5,
                exp,
                &mut l.trace,
                limits::MAX_TRACE,
                "trace lines",
            )
        }
    }

    /// The spare vector given back by [`put_spare`] (empty), or a new one.
    pub(crate) fn take_spare() -> Vec<Event> {
        SPARE.with(Cell::take)
    }

    /// Keeps `events` (emptied) for the next batch decoded on this thread,
    /// unless a larger spare is kept already, and the boxes of its `SpanNew`
    /// (with their fields) and `Log` events (emptied) for the next ones
    /// decoded, up to a batch of each.
    pub(crate) fn put_spare(mut events: Vec<Event>) {
        SPAN_NEWS.with(|spans| {
            LOGS.with(|logs| {
                let (mut spans, mut logs) = (spans.borrow_mut(), logs.borrow_mut());
                // Events that own nothing are left as they are; the others
                // are taken out (their boxes kept, or dropped), leaving one
                // that owns nothing: then the vector is emptied without
                // dropping each event (moving every event out to match it,
                // or the drop glue called per event, cost more than the rest
                // of giving the batch back).
                for e in events.iter_mut() {
                    if owns_nothing(e) {
                        continue;
                    }
                    let plain = Event::Enter {
                        span: SpanId(0),
                        ts: 0,
                    };
                    match std::mem::replace(e, plain) {
                        // Its fields kept: the next span read into it
                        // reuses their strings (at most a batch of them,
                        // which this batch held anyway).
                        Event::SpanNew(b) if spans.len() < limits::MAX_BATCH => {
                            spans.push(b);
                        }
                        Event::Log(mut b) if logs.len() < limits::MAX_BATCH => {
                            b.fields.clear();
                            b.trace.clear();
                            logs.push(b);
                        }
                        _ => {}
                    }
                }
            })
        });
        debug_assert!(events.iter().all(owns_nothing));
        // SAFETY: shortening a vector is always sound; the events left all
        // own nothing (above), so not dropping them leaks nothing.
        unsafe { events.set_len(0) };
        SPARE.with(|s| {
            let old = s.take();
            s.set(if old.capacity() >= events.capacity() {
                old
            } else {
                events
            });
        });
    }

    /// Whether `e` is a variant that owns no memory (dropping it is a
    /// no-op). A variant not named here is dropped as usual.
    #[inline(always)]
    fn owns_nothing(e: &Event) -> bool {
        matches!(
            e,
            Event::Poll { .. }
                | Event::PollEnd { .. }
                | Event::Wake { .. }
                | Event::Enter { .. }
                | Event::Exit { .. }
                | Event::Close { .. }
                | Event::FollowsFrom { .. }
        )
    }

    /// Forgets any earlier refusal; call before decoding.
    pub(crate) fn clear() {
        REFUSED.with(|r| r.borrow_mut().take());
    }

    /// The reason the last list was refused, if one was since [`clear`].
    pub(crate) fn take_refusal() -> Option<String> {
        REFUSED.with(|r| r.borrow_mut().take())
    }

    pub(super) fn fields<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Field>, D::Error> {
        seq(d, limits::MAX_FIELDS, "fields")
    }

    pub(super) fn names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        seq(d, limits::MAX_FIELDS, "field names")
    }

    pub(super) fn args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        seq(d, limits::MAX_FIELDS, "command-line arguments")
    }

    pub(super) fn tree<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TreeNode>, D::Error> {
        seq(d, limits::MAX_TREE, "await tree nodes")
    }

    pub(super) fn trace<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        seq(d, limits::MAX_TRACE, "trace lines")
    }

    pub(super) fn stall_spans<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SpanId>, D::Error> {
        seq(d, limits::MAX_TREE, "stall spans")
    }

    pub(super) fn native_frames<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<NativeFrame>, D::Error> {
        seq(d, limits::MAX_STACK, "native frames")
    }

    pub(super) fn modules<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Module>, D::Error> {
        seq(d, limits::MAX_STACK, "modules")
    }

    pub(super) fn raw_frames<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawFrame>, D::Error> {
        seq(d, limits::MAX_STACK, "raw frames")
    }

    pub(super) fn build_id<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        seq(d, limits::MAX_BUILD_ID, "build id bytes")
    }

    pub(super) fn events<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
        // Into the spare vector, if one was given back (empty: see `put_spare`).
        let spare = SPARE.with(Cell::take);
        d.deserialize_seq(CappedVec {
            cap: limits::MAX_BATCH,
            what: "events in a batch",
            init: spare,
        })
    }

    fn seq<'de, D, T>(d: D, cap: usize, what: &'static str) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        d.deserialize_seq(CappedVec {
            cap,
            what,
            init: Vec::new(),
        })
    }

    struct CappedVec<T> {
        cap: usize,
        what: &'static str,
        /// The (empty) vector to fill.
        init: Vec<T>,
    }

    impl<T> CappedVec<T> {
        fn refuse<E: Error>(&self, len: Option<usize>) -> E {
            let msg = match len {
                Some(len) => format!("{len} {} exceed the cap of {}", self.what, self.cap),
                None => format!("more than {} {}", self.cap, self.what),
            };
            REFUSED.with(|r| *r.borrow_mut() = Some(msg.clone()));
            E::custom(msg)
        }
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for CappedVec<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a sequence of at most {} {}", self.cap, self.what)
        }

        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
            let hint = seq.size_hint();
            if let Some(len) = hint.filter(|&len| len > self.cap) {
                return Err(self.refuse(Some(len)));
            }
            let mut out = std::mem::take(&mut self.init);
            out.clear();
            out.reserve(hint.unwrap_or(0));
            while let Some(item) = seq.next_element()? {
                if out.len() == self.cap {
                    return Err(self.refuse(None));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_stay_small() {
        // Every frame decodes into a vector of these: 120 bytes before the
        // large variants were boxed.
        assert!(
            std::mem::size_of::<Event>() <= 40,
            "{}",
            std::mem::size_of::<Event>()
        );
    }

    #[test]
    fn drop_total_sums_and_saturates() {
        let d = DropCounts {
            buffer_full: 1,
            disconnected: 2,
            write_failed: 3,
        };
        assert_eq!(d.total(), 6);
        assert_eq!(DropCounts::default().total(), 0);
        let d = DropCounts {
            buffer_full: u64::MAX,
            disconnected: 1,
            write_failed: u64::MAX,
        };
        assert_eq!(d.total(), u64::MAX);
    }
}
