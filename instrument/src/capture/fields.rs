//! Field recording: `tracing` values into capped wire fields.

use std::fmt::{self, Write as _};

use awaitscope_wire::{limits, Field, Value};
use tracing_core::field::{Field as TField, Visit};

use crate::names;

/// Collects the fields of a span or event, capped in count and length.
///
/// A recorder made [`FieldRecorder::reusing`] an earlier record's fields
/// writes over them: a text value goes into an old text's buffer, so a
/// span or event whose fields hold strings (tokio's resource spans name
/// their kind, type and location; a program's events their messages)
/// allocates nothing once its thread reuses what the exporter gave back.
#[derive(Default)]
pub(crate) struct FieldRecorder {
    /// `fields[..written]`: recorded; the rest, an earlier record's, kept
    /// for their buffers until [`FieldRecorder::finish`].
    fields: Vec<Field>,
    written: usize,
}

impl FieldRecorder {
    /// A recorder with room for the callsite's fields (one allocation).
    pub fn for_callsite(meta: &tracing_core::Metadata<'_>) -> Self {
        Self {
            fields: Vec::with_capacity(meta.fields().len().min(limits::MAX_FIELDS)),
            written: 0,
        }
    }

    /// A recorder that writes over `old` (see [`FieldRecorder`]).
    pub fn reusing(old: Vec<Field>) -> Self {
        Self {
            fields: old,
            written: 0,
        }
    }

    /// The fields recorded (what was left of the earlier ones dropped).
    pub fn finish(mut self) -> Vec<Field> {
        self.fields.truncate(self.written);
        self.fields
    }

    /// Merges fields recorded later (`span.record`), replacing earlier values.
    pub fn merge(fields: &mut Vec<Field>, later: &[Field]) {
        for f in later {
            if let Some(g) = fields.iter_mut().find(|g| g.index == f.index) {
                g.value = f.value.clone();
            } else if fields.len() < limits::MAX_FIELDS {
                fields.push(f.clone());
            }
        }
    }

    /// The wire index of `field`, `None` past the cap on indices.
    fn index_of(field: &TField) -> Option<u16> {
        let index = field.index();
        (index < limits::MAX_FIELDS).then_some(index as u16)
    }

    /// The field `index` if this record has it already (`span.record` of
    /// a field again: its value is replaced).
    fn recorded(&mut self, index: u16) -> Option<&mut Field> {
        self.fields[..self.written]
            .iter_mut()
            .find(|f| f.index == index)
    }

    /// Moves to `fields[written]` the first old field from there on that
    /// `pick` accepts, and returns it; `None` when there is none.
    fn old_slot(&mut self, pick: impl Fn(&Field) -> bool) -> Option<&mut Field> {
        let w = self.written;
        let j = (w..self.fields.len()).find(|&j| pick(&self.fields[j]))?;
        self.fields.swap(w, j);
        self.fields.get_mut(w)
    }

    /// Adds a field new to this record, within the cap on fields.
    #[inline(always)]
    fn place(&mut self, index: u16, value: Value) {
        if self.written == self.fields.len() && self.written < limits::MAX_FIELDS {
            self.fields.push(Field { index, value });
            self.written += 1;
        } else {
            self.place_over_old(index, value);
        }
    }

    /// [`FieldRecorder::place`] over an old field: one that is not text,
    /// so that old texts' buffers stay for text values, else whatever is
    /// left.
    #[inline(never)]
    fn place_over_old(&mut self, index: u16, value: Value) {
        if self.written >= limits::MAX_FIELDS {
            return;
        }
        let w = self.written;
        let _ = self.old_slot(|f| !matches!(f.value, Value::Str(_)));
        self.fields[w] = Field { index, value };
        self.written += 1;
    }

    #[inline]
    fn push(&mut self, field: &TField, value: Value) {
        let Some(index) = Self::index_of(field) else {
            return;
        };
        match self.recorded(index) {
            Some(f) => f.value = value,
            None => self.place(index, value),
        }
    }

    /// Adds a text field: `write` fills an old text's buffer (one of the
    /// same field first: records of a callsite have the same fields, so it
    /// is the right size) with the capped text; `fresh` makes it anew when
    /// no old text is left.
    #[inline]
    fn push_text(
        &mut self,
        field: &TField,
        fresh: impl FnOnce() -> String,
        write: impl FnOnce(&mut String),
    ) {
        let Some(index) = Self::index_of(field) else {
            return;
        };
        if let Some(f) = self.recorded(index) {
            match &mut f.value {
                Value::Str(s) => write(s),
                other => *other = Value::Str(fresh()),
            }
            return;
        }
        if self.written < self.fields.len() && self.written < limits::MAX_FIELDS {
            if let Some(s) = self.old_text(index) {
                write(s);
                self.written += 1;
                return;
            }
        }
        self.place(index, Value::Str(fresh()));
    }

    /// An old text's buffer for field `index`, moved to
    /// `fields[written]` (see [`FieldRecorder::push_text`]).
    #[inline(never)]
    fn old_text(&mut self, index: u16) -> Option<&mut String> {
        let is_text = |f: &Field| matches!(f.value, Value::Str(_));
        if self.old_slot(|f| f.index == index && is_text(f)).is_none() {
            self.old_slot(is_text)?;
        }
        let f = self.fields.get_mut(self.written)?;
        f.index = index;
        match &mut f.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// `s` becomes `text`, capped (cut at [`limits::MAX_STR_LEN`] bytes, the
/// cut marked with '…'), in `s`'s buffer.
fn write_capped(s: &mut String, text: &str) {
    s.clear();
    if CappedString(s).write_str(text).is_err() {
        mark_cut(s);
    } else {
        limits::truncate(s);
    }
}

/// `s` becomes `value`'s `Debug` rendering, capped as [`write_capped`]
/// caps, in `s`'s buffer. Formatting stops at the cap.
fn write_debug_capped(s: &mut String, value: &dyn fmt::Debug) {
    s.clear();
    // An error means the cap was reached (or the value's `Debug` gave up:
    // cut short all the same).
    if write!(CappedString(s), "{value:?}").is_err() {
        mark_cut(s);
    } else {
        limits::truncate(s);
    }
}

/// `text` capped as [`write_capped`] caps, in a string of its own.
fn capped_str(text: &str) -> String {
    if text.len() <= limits::MAX_STR_LEN {
        return text.to_owned();
    }
    let mut s = String::with_capacity(limits::MAX_STR_LEN + 1);
    write_capped(&mut s, text);
    s
}

/// Marks a text [`CappedString`] stopped at the cap as cut. Not
/// `limits::truncate` alone: a multi-byte character across the cap stops
/// the text at or under it, where `truncate` sees nothing to cut.
fn mark_cut(s: &mut String) {
    let mut cut = s.len().min(limits::MAX_STR_LEN - '…'.len_utf8());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
}

/// A `fmt::Write` into a string that stops one byte past the cap (what
/// [`limits::truncate`] then marks as cut) instead of growing, with an
/// error once it is there.
struct CappedString<'a>(&'a mut String);

impl fmt::Write for CappedString<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let out = &mut *self.0;
        let room = limits::MAX_STR_LEN + 1 - out.len().min(limits::MAX_STR_LEN + 1);
        if s.len() <= room {
            out.push_str(s);
            Ok(())
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&s[..cut]);
            // Stop formatting: the rest would be cut anyway.
            Err(fmt::Error)
        }
    }
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
        self.push_text(field, || capped_str(value), |s| write_capped(s, value));
    }
    fn record_error(&mut self, field: &TField, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &TField, value: &dyn fmt::Debug) {
        let fresh = || {
            let mut s = String::new();
            write_debug_capped(&mut s, value);
            s
        };
        self.push_text(field, fresh, |s| write_debug_capped(s, value));
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_core::{callsite::Callsite, metadata::Kind, subscriber::Interest, Level, Metadata};

    struct TestCallsite;
    static CALLSITE: TestCallsite = TestCallsite;
    static META: Metadata<'static> = tracing_core::metadata! {
        name: "test",
        target: "awaitscope::tests",
        level: Level::INFO,
        fields: &["kind", "n", "file"],
        callsite: &CALLSITE,
        kind: Kind::SPAN,
    };
    impl Callsite for TestCallsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            &META
        }
    }

    fn field(name: &str) -> TField {
        META.fields().field(name).expect("a field of META")
    }

    /// The same values recorded into `rec`, as a span's would be.
    fn record(mut rec: FieldRecorder, long: &str) -> Vec<Field> {
        rec.record_str(&field("kind"), "timer");
        rec.record_u64(&field("n"), 7);
        rec.record_str(&field("file"), "src/main.rs");
        // Recorded again: replaces the first value, capped.
        rec.record_str(&field("kind"), long);
        rec.finish()
    }

    fn text(value: &Value) -> Option<&String> {
        match value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Recording over an earlier record's fields gives what a fresh
    /// recorder gives, with the texts written into the old texts' buffers;
    /// the old fields left over are gone.
    #[test]
    fn fields_recorded_over_old_ones_reuse_their_texts() {
        let long = "é".repeat(limits::MAX_STR_LEN);
        let fresh = record(FieldRecorder::for_callsite(&META), "sleep");
        let old = vec![
            Field {
                index: 2,
                value: Value::Bool(true),
            },
            Field {
                index: 0,
                value: Value::Str(String::with_capacity(64)),
            },
            Field {
                index: 5,
                value: Value::U64(3),
            },
            Field {
                index: 1,
                value: Value::Str(String::with_capacity(32)),
            },
            Field {
                index: 7,
                value: Value::I64(-1),
            },
        ];
        let buffers: Vec<*const u8> = old
            .iter()
            .filter_map(|f| text(&f.value))
            .map(|s| s.as_ptr())
            .collect();
        let over = record(FieldRecorder::reusing(old), "sleep");
        assert_eq!(over, fresh);
        assert_eq!(over.len(), 3, "{over:?}");
        // Both texts went into old buffers ("kind", recorded twice, into
        // the same one both times).
        for f in [&over[0], &over[2]] {
            let s = text(&f.value).expect("a text");
            assert!(buffers.contains(&s.as_ptr()), "{over:?}");
        }
        // Texts past the cap are cut the same way either way.
        let fresh = record(FieldRecorder::default(), &long);
        let over = record(FieldRecorder::reusing(fresh.clone()), &long);
        assert_eq!(over, fresh);
        let kind = text(&over[0].value).expect("a text");
        assert!(kind.len() <= limits::MAX_STR_LEN && kind.ends_with('…'));
    }

    /// A `Debug` value past the cap is marked as cut, also when a
    /// character of several bytes straddles the cap.
    #[test]
    fn a_debug_value_past_the_cap_is_marked_cut() {
        let exact = "x".repeat(limits::MAX_STR_LEN);
        let mut rec = FieldRecorder::default();
        rec.record_debug(&field("kind"), &format_args!("{exact}"));
        assert_eq!(
            rec.finish()[0].value,
            Value::Str(exact),
            "at the cap: whole"
        );
        for unit in ["x", "é", "€"] {
            let long = unit.repeat(limits::MAX_STR_LEN + 1);
            let mut rec = FieldRecorder::default();
            rec.record_debug(&field("kind"), &format_args!("{long}"));
            let fields = rec.finish();
            let s = text(&fields[0].value).expect("a text");
            assert!(s.len() <= limits::MAX_STR_LEN, "{unit}: {}", s.len());
            assert!(s.ends_with('…'), "{unit}: not marked cut");
        }
    }

    /// A text recorded over an old one is capped like a new one.
    #[test]
    fn a_text_over_an_old_buffer_is_capped() {
        let long = "x".repeat(3 * limits::MAX_STR_LEN);
        let old = vec![Field {
            index: 0,
            value: Value::Str("an old value".into()),
        }];
        let mut rec = FieldRecorder::reusing(old);
        rec.record_str(&field("file"), &long);
        let mut fresh = FieldRecorder::default();
        fresh.record_str(&field("file"), &long);
        let (over, fresh) = (rec.finish(), fresh.finish());
        assert_eq!(over, fresh);
        let s = text(&over[0].value).expect("a text");
        assert!(
            s.len() <= limits::MAX_STR_LEN && s.ends_with('…'),
            "{}",
            s.len()
        );
    }
}
