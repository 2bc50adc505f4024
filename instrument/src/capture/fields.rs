//! Field recording: `tracing` values into capped wire fields.

use std::fmt::{self, Write as _};

use awaitscope_wire::{limits, Field, Value};
use tracing_core::field::{Field as TField, Visit};

use crate::names;

/// Collects the fields of a span or event, capped in count and length.
#[derive(Default)]
pub(crate) struct FieldRecorder {
    pub fields: Vec<Field>,
}

impl FieldRecorder {
    /// A recorder with room for the callsite's fields (one allocation).
    pub fn for_callsite(meta: &tracing_core::Metadata<'_>) -> Self {
        Self {
            fields: Vec::with_capacity(meta.fields().len().min(limits::MAX_FIELDS)),
        }
    }

    /// Merges fields recorded later (`span.record`), replacing earlier values.
    pub fn merge(&mut self, later: &[Field]) {
        for f in later {
            if let Some(g) = self.fields.iter_mut().find(|g| g.index == f.index) {
                g.value = f.value.clone();
            } else if self.fields.len() < limits::MAX_FIELDS {
                self.fields.push(f.clone());
            }
        }
    }

    fn push(&mut self, field: &TField, value: Value) {
        let index = field.index();
        if self.fields.len() >= limits::MAX_FIELDS || index >= limits::MAX_FIELDS {
            return;
        }
        let index = index as u16;
        // A field recorded again (span.record) replaces its earlier value.
        if let Some(f) = self.fields.iter_mut().find(|f| f.index == index) {
            f.value = value;
        } else {
            self.fields.push(Field { index, value });
        }
    }
}

/// A `fmt::Write` that stops at the string cap instead of growing.
struct CappedString(String);

impl fmt::Write for CappedString {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = limits::MAX_STR_LEN + 1 - self.0.len().min(limits::MAX_STR_LEN + 1);
        if s.len() <= room {
            self.0.push_str(s);
            Ok(())
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&s[..cut]);
            // Stop formatting: the rest would be cut anyway.
            Err(fmt::Error)
        }
    }
}

fn capped_str(s: &str) -> String {
    if s.len() <= limits::MAX_STR_LEN {
        return s.to_owned();
    }
    let mut cut = limits::MAX_STR_LEN - '…'.len_utf8();
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(limits::MAX_STR_LEN);
    out.push_str(&s[..cut]);
    out.push('…');
    out
}

impl Visit for FieldRecorder {
    fn record_f64(&mut self, field: &TField, value: f64) {
        self.push(field, Value::F64(value));
    }
    fn record_i64(&mut self, field: &TField, value: i64) {
        self.push(field, Value::I64(value));
    }
    fn record_u64(&mut self, field: &TField, value: u64) {
        self.push(field, Value::U64(value));
    }
    fn record_bool(&mut self, field: &TField, value: bool) {
        self.push(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &TField, value: &str) {
        self.push(field, Value::Str(capped_str(value)));
    }
    fn record_error(&mut self, field: &TField, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &TField, value: &dyn fmt::Debug) {
        let mut s = CappedString(String::new());
        // An error only means the cap was reached; `truncate` marks the cut.
        let _ = write!(s, "{value:?}");
        let mut s = s.0;
        limits::truncate(&mut s);
        self.push(field, Value::Str(s));
    }
}

/// Picks the two fields of tokio's waker events: `op` and `task.id`.
#[derive(Default)]
pub(crate) struct WakerVisitor {
    /// Read `op` (false when the callsite's op is already known).
    pub parse_op: bool,
    pub op: Option<awaitscope_wire::WakeOp>,
    pub task_id: Option<u64>,
}

impl WakerVisitor {
    fn op(&mut self, s: &str) {
        use awaitscope_wire::WakeOp;
        self.op = match s {
            names::WAKER_WAKE => Some(WakeOp::Wake),
            names::WAKER_WAKE_BY_REF => Some(WakeOp::WakeByRef),
            names::WAKER_CLONE => Some(WakeOp::Clone),
            names::WAKER_DROP => Some(WakeOp::Drop),
            _ => None,
        };
    }
}

impl Visit for WakerVisitor {
    fn record_u64(&mut self, field: &TField, value: u64) {
        if field.name() == names::TASK_ID {
            self.task_id = Some(value);
        }
    }
    fn record_str(&mut self, field: &TField, value: &str) {
        if self.parse_op && field.name() == names::WAKER_OP {
            self.op(value);
        }
    }
    fn record_debug(&mut self, field: &TField, value: &dyn fmt::Debug) {
        if self.parse_op && field.name() == names::WAKER_OP {
            // `op` is a `&'static str` recorded with `record_str`; a Debug
            // rendering is quoted.
            let s = format!("{value:?}");
            self.op(s.trim_matches('"'));
        }
    }
}
