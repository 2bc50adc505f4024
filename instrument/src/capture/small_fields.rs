//! The fields of a tokio resource event held inline, in one ring slot.
//!
//! tokio reports each step of its locks, semaphores, channels and timers
//! with an event of one to three small fields (`op_name = "poll_acquire",
//! is_ready = false`; `permits = 1, permits.op = "sub"`; `locked = true`;
//! a timer's `duration = 5000, duration.unit = "ms", duration.op =
//! "override"`):
//! a contended `Mutex::lock` sends a dozen. Recorded as a boxed
//! [`RawLog`](super::record::RawLog) with a vector of fields and a string
//! per text value, each cost the worker the record's memory coming back
//! from the exporter's core (and the strings' allocation and free), and
//! the exporter the same the other way. Inline, the fields ride in a ring
//! slot of their own just before the event's (see `Local::push_pair`).
//!
//! Text values are numbered instead of copied: tokio's are a handful of
//! literals, numbered the first time each is seen ([`text_id`]) and kept
//! for the process's life (at most [`MAX_TEXTS`] of at most
//! [`MAX_TEXT_LEN`] bytes: a few KiB). An event whose fields do not fit
//! (more than three, a float, a `Debug` value, a long or new text past
//! the table's end) takes the boxed path.

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};

use awaitscope_wire::{Field, Value};
use tracing_core::field::{Field as TField, Visit};
use tracing_core::Metadata;

/// Fields an event may have to be held inline.
const INLINE: usize = 3;

/// Field indices held inline are below this (five bits of a packed byte).
const MAX_INDEX: usize = 32;

/// Texts numbered at most, per process.
pub(crate) const MAX_TEXTS: usize = 256;
/// Longest text numbered (bytes).
pub(crate) const MAX_TEXT_LEN: usize = 32;

/// The numbered texts; an entry once set never changes.
static TEXTS: [OnceLock<&'static str>; MAX_TEXTS] = [const { OnceLock::new() }; MAX_TEXTS];
/// How many of [`TEXTS`] are set; held while one is added.
static TEXTS_SET: Mutex<usize> = Mutex::new(0);

/// Entries of a thread's [`RECENT_TEXTS`] (a power of two).
const RECENT: usize = 16;

thread_local! {
    /// This thread's last numberings, by the text's address and length:
    /// (address, length, number + 1). A literal's address does not change,
    /// so a hit costs a compare of a few bytes (the text is compared too:
    /// memory at an address may hold another text later).
    static RECENT_TEXTS: [Cell<(usize, usize, u16)>; RECENT] =
        const { [const { Cell::new((0, 0, 0)) }; RECENT] };
}

/// The number of text `s`, numbering it if it is new; `None` when it is
/// too long or the table is full.
pub(crate) fn text_id(s: &str) -> Option<u16> {
    if s.len() > MAX_TEXT_LEN {
        return None;
    }
    let key = (s.as_ptr() as usize, s.len());
    let slot = (key.0 >> 3) & (RECENT - 1);
    let hit = RECENT_TEXTS
        .try_with(|r| {
            let (addr, len, n) = r[slot].get();
            (addr == key.0 && len == key.1 && n != 0 && text(n - 1) == Some(s)).then(|| n - 1)
        })
        .ok()
        .flatten();
    if hit.is_some() {
        return hit;
    }
    let id = number(s)?;
    let _ = RECENT_TEXTS.try_with(|r| r[slot].set((key.0, key.1, id + 1)));
    Some(id)
}

/// [`text_id`]'s slow path: the table searched, the text added if new.
#[cold]
fn number(s: &str) -> Option<u16> {
    let mut set = TEXTS_SET.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = (0..*set).find(|&i| text(i as u16) == Some(s)) {
        return Some(i as u16);
    }
    if *set >= MAX_TEXTS {
        return None;
    }
    // Leaked on purpose: bounded by the table (see the module's doc).
    let kept: &'static str = Box::leak(s.to_owned().into_boxed_str());
    let _ = TEXTS[*set].set(kept);
    *set += 1;
    Some((*set - 1) as u16)
}

/// Text number `id`, if set.
pub(crate) fn text(id: u16) -> Option<&'static str> {
    TEXTS.get(id as usize)?.get().copied()
}

/// A field's value, as read back from [`SmallFields`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum SmallValue {
    U64(u64),
    I64(i64),
    Bool(bool),
    /// A numbered text (see [`text_id`]).
    Text(u16),
}

impl SmallValue {
    /// Its kind and bits, as [`SmallFields`] keeps them.
    fn pack(self) -> (u8, u64) {
        match self {
            SmallValue::U64(v) => (0, v),
            SmallValue::I64(v) => (1, v as u64),
            SmallValue::Bool(v) => (2, u64::from(v)),
            SmallValue::Text(id) => (3, u64::from(id)),
        }
    }

    /// The value packed as `(kind, bits)`.
    fn unpack(kind: u8, bits: u64) -> Self {
        match kind {
            0 => SmallValue::U64(bits),
            1 => SmallValue::I64(bits as i64),
            2 => SmallValue::Bool(bits != 0),
            _ => SmallValue::Text(bits as u16),
        }
    }

    /// The wire value.
    fn wire(self) -> Value {
        match self {
            SmallValue::U64(v) => Value::U64(v),
            SmallValue::I64(v) => Value::I64(v),
            SmallValue::Bool(v) => Value::Bool(v),
            SmallValue::Text(id) => Value::Str(text(id).unwrap_or_default().to_owned()),
        }
    }
}

/// Up to [`INLINE`] fields of an event: field index, kind and bits of
/// each. In a ring slot they are packed ([`SmallFields::pack`]): a byte
/// for the count and one per field (index and kind), beside the record's
/// tag, then the bits.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SmallFields {
    len: u8,
    /// A field did not fit: the event takes the boxed path.
    over: bool,
    index: [u8; INLINE],
    kind: [u8; INLINE],
    bits: [u64; INLINE],
}

impl SmallFields {
    /// The fields of `record`ing a value set, or `None` when they do not
    /// fit inline.
    pub fn of(record: impl FnOnce(&mut dyn Visit)) -> Option<Self> {
        let mut f = Self::default();
        record(&mut f);
        (!f.over).then_some(f)
    }

    /// The fields held, in their order: (field index, value).
    fn iter(&self) -> impl Iterator<Item = (u8, SmallValue)> + '_ {
        (0..self.len as usize).map(|i| {
            (
                self.index[i],
                SmallValue::unpack(self.kind[i], self.bits[i]),
            )
        })
    }

    /// The fields packed for a ring slot: count and (index, kind) bytes,
    /// and the bits.
    pub fn pack(&self) -> ([u8; 1 + INLINE], [u64; INLINE]) {
        let mut head = [0; 1 + INLINE];
        head[0] = self.len;
        for i in 0..INLINE {
            head[1 + i] = self.index[i] | (self.kind[i] << 5);
        }
        (head, self.bits)
    }

    /// The fields [`SmallFields::pack`] packed.
    pub fn unpack(head: [u8; 1 + INLINE], bits: [u64; INLINE]) -> Self {
        let mut f = Self {
            len: head[0].min(INLINE as u8),
            bits,
            ..Self::default()
        };
        for i in 0..INLINE {
            f.index[i] = head[1 + i] & 0x1f;
            f.kind[i] = head[1 + i] >> 5;
        }
        f
    }

    fn push(&mut self, field: &TField, value: SmallValue) {
        let index = field.index();
        if index >= MAX_INDEX {
            self.over = true;
            return;
        }
        let index = index as u8;
        let len = self.len as usize;
        // A field recorded again replaces its value, as `FieldRecorder`.
        let at = match self.index[..len].iter().position(|&i| i == index) {
            Some(at) => at,
            None if len < INLINE => {
                self.len += 1;
                len
            }
            None => {
                self.over = true;
                return;
            }
        };
        self.index[at] = index;
        (self.kind[at], self.bits[at]) = value.pack();
    }

    /// The value of the field named `name` of callsite `meta`.
    pub fn get(&self, meta: &Metadata<'_>, name: &str) -> Option<SmallValue> {
        let index = meta.fields().field(name)?.index();
        self.iter().find(|f| f.0 as usize == index).map(|f| f.1)
    }

    /// The value of field `name` as a bool, if it is one.
    pub fn bool(&self, meta: &Metadata<'_>, name: &str) -> Option<bool> {
        match self.get(meta, name)? {
            SmallValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value of field `name` as a text, if it is one.
    pub fn text(&self, meta: &Metadata<'_>, name: &str) -> Option<&'static str> {
        match self.get(meta, name)? {
            SmallValue::Text(id) => text(id),
            _ => None,
        }
    }

    /// Writes the fields as wire fields into `out`, reusing the text
    /// buffers `out` held and those waiting in `spare`. The texts `out`
    /// no longer needs wait in `spare`, up to its capacity (one without
    /// capacity keeps none): events of different layouts written in turn
    /// into one `out` (the exporter's spare log) keep their buffers.
    pub fn write_to(&self, out: &mut Vec<Field>, spare: &mut Vec<String>) {
        fn keep(s: String, spare: &mut Vec<String>) {
            if spare.len() < spare.capacity() {
                spare.push(s);
            }
        }
        let n = self.len as usize;
        if out.len() > n {
            for f in out.drain(n..) {
                if let Value::Str(s) = f.value {
                    keep(s, spare);
                }
            }
        }
        for (i, (index, value)) in self.iter().enumerate() {
            let index = u16::from(index);
            let value = match value {
                SmallValue::Text(id) => {
                    let t = text(id).unwrap_or_default();
                    if let Some(Field {
                        index: at,
                        value: Value::Str(s),
                    }) = out.get_mut(i)
                    {
                        *at = index;
                        s.clear();
                        s.push_str(t);
                        continue;
                    }
                    let mut s = spare.pop().unwrap_or_default();
                    s.clear();
                    s.push_str(t);
                    Value::Str(s)
                }
                v => v.wire(),
            };
            match out.get_mut(i) {
                Some(f) => {
                    let old = std::mem::replace(f, Field { index, value });
                    if let Value::Str(s) = old.value {
                        keep(s, spare);
                    }
                }
                None => out.push(Field { index, value }),
            }
        }
    }
}

impl Visit for SmallFields {
    fn record_u64(&mut self, field: &TField, value: u64) {
        self.push(field, SmallValue::U64(value));
    }
    fn record_i64(&mut self, field: &TField, value: i64) {
        self.push(field, SmallValue::I64(value));
    }
    fn record_bool(&mut self, field: &TField, value: bool) {
        self.push(field, SmallValue::Bool(value));
    }
    fn record_str(&mut self, field: &TField, value: &str) {
        match text_id(value) {
            Some(id) => self.push(field, SmallValue::Text(id)),
            None => self.over = true,
        }
    }
    fn record_debug(&mut self, _: &TField, _: &dyn std::fmt::Debug) {
        // Floats, 128-bit integers, errors and `Debug` values.
        self.over = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_keeps_its_number_and_reads_back() {
        let a = text_id("poll_acquire").expect("numbered");
        // The same text at another address: the same number.
        let other = String::from("poll_acquire");
        assert_eq!(text_id(&other), Some(a));
        assert_eq!(text(a), Some("poll_acquire"));
        // Another text at the address a text had: its own number.
        let mut s = String::from("sub");
        let sub = text_id(&s).expect("numbered");
        s.clear();
        s.push_str("add");
        let add = text_id(&s).expect("numbered");
        assert_ne!(sub, add);
        assert_eq!((text(sub), text(add)), (Some("sub"), Some("add")));
        assert_eq!(text_id(&"x".repeat(MAX_TEXT_LEN + 1)), None);
    }

    #[test]
    fn fields_write_back_as_wire_fields() {
        let mut out = vec![Field {
            index: 9,
            value: Value::Str(String::with_capacity(64)),
        }];
        let mut f = SmallFields::default();
        (f.len, f.index) = (3, [1, 0, 2]);
        (f.kind[0], f.bits[0]) = SmallValue::Text(text_id("poll").unwrap()).pack();
        (f.kind[1], f.bits[1]) = SmallValue::Bool(false).pack();
        (f.kind[2], f.bits[2]) = SmallValue::I64(-5).pack();
        f.write_to(&mut out, &mut Vec::new());
        assert_eq!(
            out,
            [
                Field {
                    index: 1,
                    value: Value::Str("poll".into())
                },
                Field {
                    index: 0,
                    value: Value::Bool(false)
                },
                Field {
                    index: 2,
                    value: Value::I64(-5)
                }
            ]
        );
        // The text's buffer was reused.
        assert!(matches!(&out[0].value, Value::Str(s) if s.capacity() >= 64));
        // Through a ring slot's packing, the same fields.
        let (head, bits) = f.pack();
        let mut again = Vec::new();
        SmallFields::unpack(head, bits).write_to(&mut again, &mut Vec::new());
        assert_eq!(again, out);
        SmallFields::default().write_to(&mut out, &mut Vec::new());
        assert!(out.is_empty());
    }

    /// Events of different layouts written in turn into one `out` (a
    /// poll op's name and readiness, then a state update's number, then
    /// a timer's unit and op) keep their texts' buffers between them, in
    /// `out` or waiting in `spare`.
    #[test]
    fn layouts_in_turn_keep_their_text_buffers() {
        let fields = |values: &[SmallValue]| {
            let mut f = SmallFields {
                len: values.len() as u8,
                ..SmallFields::default()
            };
            for (i, v) in values.iter().enumerate() {
                f.index[i] = i as u8;
                (f.kind[i], f.bits[i]) = v.pack();
            }
            f
        };
        let t = |s| SmallValue::Text(text_id(s).unwrap());
        let poll_op = fields(&[t("poll_acquire"), SmallValue::Bool(true)]);
        let update = fields(&[SmallValue::U64(3)]);
        let timer = fields(&[SmallValue::U64(5), t("ms"), t("override")]);
        let mut out = Vec::new();
        let mut spare = Vec::with_capacity(4);
        let buffers = |out: &Vec<Field>, spare: &Vec<String>| {
            let mut v: Vec<*const u8> = out
                .iter()
                .filter_map(|f| match &f.value {
                    Value::Str(s) => Some(s.as_ptr()),
                    _ => None,
                })
                .chain(spare.iter().map(|s| s.as_ptr()))
                .collect();
            v.sort();
            v
        };
        // Warm: two texts' buffers made.
        for f in [&poll_op, &update, &timer] {
            f.write_to(&mut out, &mut spare);
        }
        let warm = buffers(&out, &spare);
        assert_eq!(warm.len(), 2, "{out:?} {spare:?}");
        for _ in 0..3 {
            for f in [&poll_op, &update, &timer] {
                f.write_to(&mut out, &mut spare);
                assert_eq!(buffers(&out, &spare), warm, "{out:?}");
            }
        }
        assert_eq!(
            out,
            [
                Field {
                    index: 0,
                    value: Value::U64(5)
                },
                Field {
                    index: 1,
                    value: Value::Str("ms".into())
                },
                Field {
                    index: 2,
                    value: Value::Str("override".into())
                },
            ]
        );
    }
}
