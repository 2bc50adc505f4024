//! What the console source's events are made of, shared by the mapping of
//! tasks ([`super::mapping`], [`super::polls`]) and of resources
//! ([`super::resources`]): the callsite ids and the thread of the made-up
//! process, events with the time they are ordered by, the conversion of
//! console's fields, locations and times, and the span ids and times the
//! mapping hands out ([`Spans`]).

use awaitscope_wire::{limits, Event, Field, SpanId, Value};
use console_api::{field, Location};

/// Most polls sent for one task from one update: a task with more (a busy
/// loop, or a long-lived task at the first update) gets this many, each
/// with the average time of its polls.
pub const MAX_POLLS_PER_UPDATE: u64 = 256;

/// Most tasks, resources and async ops kept at once; beyond it new ones
/// are ignored and counted as dropped events.
pub const MAX_LIVE: usize = 1 << 20;

// Callsite ids of the made-up process.
pub(super) const CS_TASK: u32 = 1;
pub(super) const CS_RESOURCE: u32 = 2;
pub(super) const CS_ASYNC_OP: u32 = 3;
pub(super) const CS_POLL_OP: u32 = 4;
pub(super) const CS_STATE: u32 = 5;

/// The thread everything but running polls is sent on.
pub(super) const THREAD: u32 = 0;

/// An event, the thread it is sent on and the time it is ordered by (unix
/// ns; events of the same time keep the order they were made in).
pub(super) struct Timed {
    pub(super) thread: u32,
    pub(super) at: u64,
    pub(super) event: Event,
}

impl Timed {
    /// `event` on `thread` at `at`.
    pub(super) fn on(thread: u32, at: u64, event: Event) -> Self {
        Self { thread, at, event }
    }
}

/// The span ids and process-relative times the mapping hands out, and the
/// await trees it has sent: what the resources' mapping asks of it.
pub(super) trait Spans {
    /// A new span id of the made-up process.
    fn new_span(&mut self) -> SpanId;
    /// Process-relative time of `unix_ns` (0 before the process's start).
    fn rel(&self, unix_ns: u64) -> u64;
    /// The await tree last sent for console's task `id`.
    fn sent_tree(&self, id: u64) -> Option<&[SpanId]>;
}

/// `loc.file`, `loc.line`, `loc.col` of `loc`, at field indexes from `first`.
pub(super) fn loc_fields(loc: Option<&Location>, first: u16) -> Vec<Field> {
    let Some(loc) = loc else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(f) = &loc.file {
        out.push(Field {
            index: first,
            value: Value::Str(truncated(awaitscope_wire::paths::display(f).into_owned())),
        });
        if let Some(l) = loc.line {
            out.push(Field {
                index: first + 1,
                value: Value::U64(u64::from(l)),
            });
        }
        if let Some(c) = loc.column {
            out.push(Field {
                index: first + 2,
                value: Value::U64(u64::from(c)),
            });
        }
    }
    out
}

/// The name of console field `f` (given, or by index into its metadata's
/// field names).
pub(super) fn field_name<'a>(
    f: &'a console_api::Field,
    names: Option<&'a Vec<String>>,
) -> Option<&'a str> {
    match f.name.as_ref()? {
        field::Name::StrName(s) => Some(s),
        field::Name::NameIdx(i) => names?.get(usize::try_from(*i).ok()?).map(String::as_str),
    }
}

/// A console field value as a string (the value of a string, else its
/// rendering).
pub(super) fn value_str(v: &field::Value) -> String {
    match v {
        field::Value::DebugVal(s) | field::Value::StrVal(s) => s.clone(),
        field::Value::U64Val(x) => x.to_string(),
        field::Value::I64Val(x) => x.to_string(),
        field::Value::BoolVal(b) => b.to_string(),
    }
}

/// A poll of resource (or async op) `span` by task `task` at `ts`
/// (process-relative): the op's name and whether it was ready.
pub(super) fn poll_op(span: SpanId, task: SpanId, ts: u64, name: String, ready: bool) -> Event {
    Event::Log(Box::new(awaitscope_wire::Log {
        callsite: CS_POLL_OP,
        span: Some(span),
        task: Some(task),
        ts,
        fields: vec![
            Field {
                index: 0,
                value: Value::Str(truncated(name)),
            },
            Field {
                index: 1,
                value: Value::Bool(ready),
            },
        ],
        trace: Vec::new(),
    }))
}

/// `"name"` (a `Debug` rendering of a string) without its quotes.
pub(super) fn unquote(s: String) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].to_string()
    } else {
        s
    }
}

/// `s` within the wire's string cap.
pub(super) fn truncated(mut s: String) -> String {
    limits::truncate(&mut s);
    s
}

/// The id in an optional console id (0 when absent).
pub(super) fn id_of(id: &Option<console_api::Id>) -> u64 {
    id.as_ref().map_or(0, |i| i.id)
}

/// A protobuf timestamp as ns since the Unix epoch (0 before it).
pub(super) fn unix_ns(t: &prost_types::Timestamp) -> u64 {
    let s = u64::try_from(t.seconds).unwrap_or(0);
    let n = u64::try_from(t.nanos).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(n)
}

/// A protobuf duration in ns (0 when negative).
pub(super) fn duration_ns(d: &prost_types::Duration) -> u64 {
    let s = u64::try_from(d.seconds).unwrap_or(0);
    let n = u64::try_from(d.nanos).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(n)
}
