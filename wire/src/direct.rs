//! Postcard's encoding of the most frequent events, written and read
//! directly.
//!
//! Why by hand: through serde, postcard makes a call per field and a
//! bounds-checked push per byte, which was more than half of what the
//! producer's exporter did per event (BENCHMARKS.md). These events
//! are a variant index and a few varints, so this writes exactly what
//! postcard writes for them: an enum variant as the varint of its index, a
//! newtype as its inner value, an integer as a varint (LEB128), an option
//! as 0, or 1 and the value. The format stays postcard's: the tests below
//! check the variant indices, `tests/roundtrip.rs` compares frames built
//! with this with postcard's for arbitrary events and for these events at
//! every varint length, and `tests/golden.rs` pins whole frames.
//!
//! Reading: a collector decodes every frame a program sends, and serde's
//! path per event was measurably slower than this one (BENCHMARKS.md).
//! [`decode_events_frame`] reads a batch's frequent
//! events as postcard reads them (same varints, same checks) and hands any
//! other event to postcard; on anything unusual it gives up, and the frame
//! is decoded by serde from the start, so errors are serde's.
//! `tests/fuzz.rs` and `tests/roundtrip.rs` check that both paths give the
//! same frames and the same errors.

use std::mem::MaybeUninit;

use crate::event::capped;
use crate::{
    limits, Body, CloseKind, Event, Field, Frame, PollTreeRef, ProcessKey, SpanId, SpanNewRef,
    TreeNode, Value, WakeOp,
};

/// Postcard's variant indices of [`Event`] (declaration order).
mod index {
    pub const THREAD: u64 = 1;
    pub const SPAN_NEW: u64 = 2;
    pub const ENTER: u64 = 5;
    pub const POLL_TREE: u64 = 6;
    pub const EXIT: u64 = 7;
    pub const CLOSE: u64 = 8;
    pub const WAKE: u64 = 9;
    pub const LOG: u64 = 10;
    pub const POLL: u64 = 12;
    pub const POLL_END: u64 = 13;
}

/// Postcard's variant index of [`Body::Events`].
const BODY_EVENTS: u32 = 1;

/// Most bytes one of these events takes: a variant index, four varints of
/// up to ten bytes and an option tag.
const MAX_LEN: usize = 1 + 4 * 10 + 1;

/// Appends `ev`'s postcard encoding to `out` if it is one of the frequent
/// events; false, writing nothing, otherwise.
#[inline(always)]
pub(crate) fn encode(ev: &Event, out: &mut Vec<u8>) -> bool {
    match *ev {
        Event::Poll {
            task,
            start,
            duration,
            wakers,
        } => {
            let mut w = Writer::new(out);
            w.varint(index::POLL);
            w.varint(task.0);
            w.varint_time(start);
            w.varint(duration);
            w.varint(u64::from(wakers));
        }
        Event::Wake { task, op, by, ts } => {
            let mut w = Writer::new(out);
            w.varint(index::WAKE);
            w.varint(task.0);
            w.varint(wake_op(op));
            w.span_id(by);
            w.varint_time(ts);
        }
        Event::PollEnd { task, ts, wakers } => {
            let mut w = Writer::new(out);
            w.varint(index::POLL_END);
            w.varint(task.0);
            w.varint_time(ts);
            w.varint(u64::from(wakers));
        }
        Event::Enter { span, ts } => {
            let mut w = Writer::new(out);
            w.varint(index::ENTER);
            w.varint(span.0);
            w.varint_time(ts);
        }
        Event::Exit { span, ts } => {
            let mut w = Writer::new(out);
            w.varint(index::EXIT);
            w.varint(span.0);
            w.varint_time(ts);
        }
        Event::Close { span, kind, ts } => {
            let mut w = Writer::new(out);
            w.varint(index::CLOSE);
            w.varint(span.0);
            w.varint(close_kind(kind));
            w.varint_time(ts);
        }
        Event::Log(ref l) => encode_log(l, out),
        _ => return false,
    }
    true
}

/// Appends the postcard encoding of `Event::Log` (tokio's resource events,
/// several poll ops and state updates per lock taken, are logs).
fn encode_log(l: &crate::Log, out: &mut Vec<u8>) {
    // Variant, callsite, two options, ts, the two counts: at most
    // 1 + 5 + 2 * 11 + 10 + 2 * 10 = 58; and each field's and line's bytes.
    let room = 58
        + l.fields.iter().map(field_room).sum::<usize>()
        + l.trace.iter().map(|t| 10 + t.len()).sum::<usize>();
    let mut w = Writer::with_room(out, room);
    w.varint(index::LOG);
    w.varint(u64::from(l.callsite));
    w.span_id(l.span);
    w.span_id(l.task);
    w.varint_time(l.ts);
    w.varint(l.fields.len() as u64);
    for f in &l.fields {
        field(&mut w, f);
    }
    w.varint(l.trace.len() as u64);
    for t in &l.trace {
        w.varint(t.len() as u64);
        w.bytes(t.as_bytes());
    }
}

/// Writes one field: its index, its value's variant and the value.
#[inline(always)]
fn field(w: &mut Writer<'_>, f: &Field) {
    w.varint(u64::from(f.index));
    match &f.value {
        Value::I64(v) => {
            w.byte(0);
            // postcard's zigzag.
            w.varint(((v << 1) ^ (v >> 63)) as u64);
        }
        Value::U64(v) => {
            w.byte(1);
            w.varint(*v);
        }
        Value::F64(v) => {
            w.byte(2);
            w.bytes(&v.to_le_bytes());
        }
        Value::Bool(b) => {
            w.byte(3);
            w.byte(u8::from(*b));
        }
        Value::Str(s) => {
            w.byte(4);
            w.varint(s.len() as u64);
            w.bytes(s.as_bytes());
        }
    }
}

/// Appends the postcard encoding of `Event::SpanNew` with `ev`'s contents
/// (a span's creation, the producer's most frequent event after polls and
/// wakes on a server making a span per request). Inlined into the caller,
/// which builds `ev` just before: its parts are written from where the
/// caller has them, and a span known to have no fields writes no loop.
#[inline(always)]
pub(crate) fn encode_span_new(ev: &SpanNewRef<'_>, out: &mut Vec<u8>) {
    // Variant, id, callsite, three options, ts, the fields' count: at most
    // 1 + 10 + 5 + 3 * 11 + 10 + 10 = 69; and each field's bytes.
    let room = 69 + ev.fields.iter().map(field_room).sum::<usize>();
    let mut w = Writer::with_room(out, room);
    w.varint(index::SPAN_NEW);
    w.varint(ev.id.0);
    w.varint(u64::from(ev.callsite));
    for id in [ev.parent, ev.ctx_task, ev.ctx_span] {
        w.span_id(id);
    }
    w.varint_time(ev.ts);
    w.varint(ev.fields.len() as u64);
    for f in ev.fields {
        field(&mut w, f);
    }
}

/// Most bytes a field takes: index (3), variant (1), and the value (a
/// varint of 10, 8 bytes, or a string's length and bytes).
fn field_room(f: &Field) -> usize {
    4 + match &f.value {
        Value::Str(s) => 10 + s.len(),
        _ => 10,
    }
}

/// Appends the postcard encoding of `Event::PollTree` with `ev`'s contents
/// (inlined into the caller, as [`encode_span_new`]).
#[inline(always)]
pub(crate) fn encode_poll_tree(ev: &PollTreeRef<'_>, out: &mut Vec<u8>) {
    // Variant, task, count, then per span its id (10) and depth (3).
    let mut w = Writer::with_room(out, 1 + 10 + 10 + 13 * ev.spans.len());
    w.varint(index::POLL_TREE);
    w.varint(ev.task.0);
    w.varint(ev.spans.len() as u64);
    for &(span, depth) in ev.spans {
        w.varint(span);
        w.varint(u64::from(depth));
    }
}

fn wake_op(op: WakeOp) -> u64 {
    match op {
        WakeOp::Wake => 0,
        WakeOp::WakeByRef => 1,
        WakeOp::Clone => 2,
        WakeOp::Drop => 3,
        WakeOp::LastDrop => 4,
    }
}

fn close_kind(kind: CloseKind) -> u64 {
    match kind {
        CloseKind::Span => 0,
        CloseKind::Completed => 1,
        CloseKind::Cancelled => 2,
        CloseKind::Panicked => 3,
    }
}

/// Writes into room reserved up front, so each byte is a store, not a
/// capacity check; the vector's length is set once, when it is dropped.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// The vector's buffer, with at least [`MAX_LEN`] bytes of room after
    /// its length when this was made.
    base: *mut u8,
    /// Length so far (the vector's length plus what was written).
    len: usize,
    /// Where the room ends: `len` never passes it.
    end: usize,
}

impl<'a> Writer<'a> {
    #[inline(always)]
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self::with_room(out, MAX_LEN)
    }

    /// A writer of at most `room` bytes.
    #[inline(always)]
    fn with_room(out: &'a mut Vec<u8>, room: usize) -> Self {
        out.reserve(room + SLACK);
        let len = out.len();
        Self {
            base: out.as_mut_ptr(),
            len,
            end: len + room,
            out,
        }
    }

    /// `b`'s bytes, within the room (as for [`Writer::byte`]).
    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) {
        assert!(b.len() <= self.end - self.len, "writer's room exceeded");
        // SAFETY: `len + b.len() <= end` (just checked), within the room
        // reserved in `with_room`; `b` cannot overlap the vector, which
        // this borrows mutably.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), self.base.add(self.len), b.len());
        }
        self.len += b.len();
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        // No event `encode` writes takes more than `MAX_LEN` bytes: a
        // variant index (1), at most four varints of a u64 (10 each) and
        // an option tag (1); the largest, `Poll`, takes at most 36. The
        // span creations and trees are given room for their longest
        // encoding (`with_room`).
        debug_assert!(self.len < self.end);
        // SAFETY: `len < end` (above; the tests check it on every event at
        // its longest), and the `MAX_LEN` bytes from the length at `new` up
        // to `end` are reserved capacity of `out`, which is not reallocated
        // while this borrows it.
        unsafe { self.base.add(self.len).write(b) };
        self.len += 1;
    }

    /// LEB128, as postcard's `varint_u64`. Values under 2^28 (ids, counts,
    /// durations) are written without a loop, by length; longer ones byte
    /// by byte. (Times are written by [`Writer::varint_time`]: the wide
    /// path's constants, inlined here, would be kept in registers across
    /// the loops that write ids.)
    #[inline(always)]
    fn varint(&mut self, v: u64) {
        if v < 1 << 7 {
            self.byte(v as u8);
        } else if v < 1 << 14 {
            self.byte(v as u8 | 0x80);
            self.byte((v >> 7) as u8);
        } else if v < 1 << 21 {
            self.byte(v as u8 | 0x80);
            self.byte((v >> 7) as u8 | 0x80);
            self.byte((v >> 14) as u8);
        } else if v < 1 << 28 {
            self.byte(v as u8 | 0x80);
            self.byte((v >> 7) as u8 | 0x80);
            self.byte((v >> 14) as u8 | 0x80);
            self.byte((v >> 21) as u8);
        } else {
            self.varint_long(v);
        }
    }

    /// LEB128 of `v`, byte by byte.
    #[inline(always)]
    fn varint_long(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    /// An optional span id as postcard writes an option: 0, or 1 and the
    /// id's varint.
    #[inline(always)]
    fn span_id(&mut self, id: Option<SpanId>) {
        match id {
            None => self.byte(0),
            Some(id) => {
                self.byte(1);
                self.varint(id.0);
            }
        }
    }

    /// [`Writer::varint`] of a time: nanoseconds since the program's
    /// start, past 2^28 (a quarter of a second) almost always, so taken to
    /// [`Writer::varint_wide`] (any length under 2^56) without testing the
    /// short lengths first.
    #[inline(always)]
    fn varint_time(&mut self, v: u64) {
        if v < 1 << 56 {
            self.varint_wide(v);
        } else {
            self.varint_long(v);
        }
    }

    /// LEB128 of `v` (`v < 2^56`) as one 8-byte store: its 7-bit
    /// groups spread to a byte each, the continuation bit set on all but
    /// the last of its `n` bytes. The bytes past the `n`th are written too
    /// (zeros, into the slack [`Writer::with_room`] reserves) and left out
    /// of the length.
    #[inline(always)]
    fn varint_wide(&mut self, v: u64) {
        debug_assert!(v < 1 << 56);
        // Two groups of 28 bits, a 32-bit lane each; then 14 in each 16-bit
        // lane; then 7 in each byte.
        let x = (v & 0x0fff_ffff) | ((v >> 28) << 32);
        let lo = x & 0x0000_3fff_0000_3fff;
        let x = lo | ((x ^ lo) << 2);
        let lo = x & 0x007f_007f_007f_007f;
        let x = lo | ((x ^ lo) << 1);
        // The index of the highest set bit gives the length (and which
        // bytes continue).
        let top = 63 - (v | 1).leading_zeros() as usize;
        let (n, more) = WIDE[top];
        debug_assert!(self.len + n <= self.end);
        // SAFETY: `len + n <= end` (the same room every byte is written
        // within, see `byte`), and `with_room` reserved `SLACK` bytes of
        // capacity past `end`, so the 8 bytes from `len` are capacity of
        // `out` (8 <= n + SLACK for `n >= 1`), not reallocated while this
        // borrows it.
        unsafe {
            self.base
                .add(self.len)
                .cast::<[u8; 8]>()
                .write_unaligned((x | more).to_le_bytes());
        }
        self.len += n;
    }
}

/// Capacity reserved past a writer's room for [`Writer::varint_wide`]'s
/// 8-byte stores.
const SLACK: usize = 8;

/// For each index of a value's highest set bit (below 56; the rest are not
/// used, the table covers them so that no index needs a check): its LEB128
/// length, and the continuation bits of all its bytes but the last.
const WIDE: [(usize, u64); 64] = {
    let mut t = [(0, 0); 64];
    let mut top = 0;
    while top < 56 {
        let n = top / 7 + 1;
        let more = if n == 1 {
            0
        } else {
            0x8080_8080_8080_8080u64 >> (64 - 8 * (n - 1))
        };
        t[top] = (n, more);
        top += 1;
    }
    t
};

impl Drop for Writer<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the bytes up to `len` are initialised (by the vector, or
        // written by `byte`) and within its capacity (`len <= end`).
        unsafe { self.out.set_len(self.len) };
    }
}

/// A frame's payload if it is a batch of events that decodes cleanly; `None`
/// when it is not a batch, or anything in it is unusual (an error, a cap
/// exceeded, bytes left over): the caller then decodes it with serde.
/// With it, whether every event was read here, within the caps
/// [`crate::validate`] checks (then the frame need not be checked again).
pub(crate) fn decode_events_frame(payload: &[u8]) -> Option<(Frame, bool)> {
    let mut r = Reader {
        buf: payload,
        checked: true,
    };
    let pid = r.varint_u32()?;
    let start_unix_ns = r.varint_u64()?;
    let seq = r.varint_u64()?;
    if r.varint_u32()? != BODY_EVENTS {
        return None;
    }
    let count = r.varint_u64()?;
    if count > limits::MAX_BATCH as u64 {
        return None;
    }
    // Every event takes at least a byte: a batch of more events than its
    // payload has bytes left fails below, so it is refused before a vector
    // is sized for it.
    let count = count as usize;
    if count > r.buf.len() {
        return None;
    }
    let mut events = capped::take_spare();
    events.reserve(count);
    // Each event read straight into its slot of the vector's spare
    // capacity: pushed, it was built apart and copied in, the largest part
    // of reading a whole poll or a wake after its varints.
    let len = events.len();
    let mut read = 0;
    for slot in &mut events.spare_capacity_mut()[..count] {
        if r.event(slot).is_none() {
            break;
        }
        read += 1;
    }
    // SAFETY: `event` initialised each of the first `read` slots past the
    // length (it writes its slot whenever it returns `Some`, and the loop
    // stops at the first `None`), all within the capacity reserved above.
    unsafe { events.set_len(len + read) };
    if read < count || !r.buf.is_empty() {
        capped::put_spare(events);
        return None;
    }
    let frame = Frame {
        process: ProcessKey { pid, start_unix_ns },
        seq,
        body: Body::Events(events),
    };
    Some((frame, r.checked))
}

/// Reads postcard's encoding from the front of `buf`.
struct Reader<'a> {
    buf: &'a [u8],
    /// No event was left to postcard so far: every one read here was held
    /// to the caps as it was read.
    checked: bool,
}

impl Reader<'_> {
    #[inline(always)]
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    /// LEB128 of at most `max` bytes whose last byte is at most `last`, as
    /// postcard's `try_take_varint_u64` / `_u32` (which accept non-minimal
    /// encodings too).
    ///
    /// A one-byte varint (a variant index, a count, a small value) is read
    /// first, alone: each call site is inlined, and its values are nearly
    /// always the same length, so the branch is predicted. With 8 bytes or
    /// more left, a longer varint of up to 8 bytes (ids, and times of the
    /// first 2^56 ns) is read from one little-endian word: it ends at the
    /// first byte without the high bit, and its 7-bit groups are gathered
    /// pairwise by shifts, with no branch per byte.
    #[inline(always)]
    fn varint(&mut self, max: u32, last: u8) -> Option<u64> {
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Some(u64::from(b));
            }
        }
        self.varint_word(max, last)
    }

    /// [`Reader::varint`] without the one-byte test first: the word read
    /// takes any length up to 8 bytes (one included), then byte by byte.
    #[inline(always)]
    fn varint_word(&mut self, max: u32, last: u8) -> Option<u64> {
        if let Some(word) = self.buf.first_chunk::<8>() {
            let w = u64::from_le_bytes(*word);
            let ends = !w & 0x8080_8080_8080_8080;
            if ends != 0 {
                // 1..=8 bytes; the bits up to the end's high bit.
                let len = ends.trailing_zeros() / 8 + 1;
                if len > max || (len == max && (w >> (8 * (len - 1))) as u8 > last) {
                    return None;
                }
                let x = w & (ends ^ (ends - 1)) & 0x7f7f_7f7f_7f7f_7f7f;
                // 7 bits per byte -> 14 per 16 -> 28 per 32 -> 56. A step
                // whose lanes past the first are all zero leaves the value
                // as it is: skipped (up to 2 bytes the value is whole in
                // its first 16-bit lane, up to 4 in its first 32-bit one).
                // An id is one length nearly always, a time too: each
                // inlined read's tests are predicted.
                let mut v = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
                if len > 2 {
                    v = (v & 0x0000_3fff_0000_3fff) | ((v & 0x3fff_0000_3fff_0000) >> 2);
                    if len > 4 {
                        v = (v & 0x0000_0000_0fff_ffff) | ((v & 0x0fff_ffff_0000_0000) >> 4);
                    }
                }
                self.buf = &self.buf[len as usize..];
                return Some(v);
            }
        }
        let mut out = 0u64;
        for i in 0..max {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (i < max - 1 || b <= last).then_some(out);
            }
        }
        None
    }

    #[inline(always)]
    fn varint_u64(&mut self) -> Option<u64> {
        self.varint(10, 1)
    }

    /// A time (ns since the program's start): [`Reader::varint_u64`] read
    /// as a word from the start, since a time is past 2^7 ns from the first
    /// microsecond on, and the one-byte test would nearly always fail.
    #[inline(always)]
    fn time(&mut self) -> Option<u64> {
        self.varint_word(10, 1)
    }

    #[inline(always)]
    fn varint_u32(&mut self) -> Option<u32> {
        self.varint(5, 0x0f).map(|v| v as u32)
    }

    #[inline(always)]
    fn span(&mut self) -> Option<SpanId> {
        self.varint_u64().map(SpanId)
    }

    /// The id an event is about (a task's, a span's), read as a
    /// [`Reader::time`] is: ids count up from 1 as spans are made, so past
    /// a program's first 127 spans an event's own id takes two bytes or
    /// more, and the one-byte test would nearly always fail. (The other
    /// ids an event names, a waker's task or a span's parent, are often
    /// those of the runtime or of long-lived tasks, small: read with it.)
    #[inline(always)]
    fn subject(&mut self) -> Option<SpanId> {
        self.varint_word(10, 1).map(SpanId)
    }

    /// An `Option<SpanId>`: a tag byte, 0 or 1, then the id.
    #[inline(always)]
    fn option_span(&mut self) -> Option<Option<SpanId>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(self.span()?)),
            _ => None,
        }
    }

    /// A field's [`Value`], as postcard reads it (a string must be UTF-8).
    #[inline(always)]
    fn value(&mut self) -> Option<Value> {
        let tag = self.varint_u32()?;
        self.value_of(tag)
    }

    /// [`Reader::value`] read over `v`: a string read over a string
    /// reuses its allocation.
    #[inline(always)]
    fn value_into(&mut self, v: &mut Value) -> Option<()> {
        let tag = self.varint_u32()?;
        match v {
            Value::Str(s) if tag == 4 => self.string_into(s),
            _ => {
                *v = self.value_of(tag)?;
                Some(())
            }
        }
    }

    /// The value after its variant index `tag`.
    #[inline(always)]
    fn value_of(&mut self, tag: u32) -> Option<Value> {
        Some(match tag {
            0 => {
                // postcard's zigzag.
                let v = self.varint_u64()?;
                Value::I64((v >> 1) as i64 ^ -((v & 1) as i64))
            }
            1 => Value::U64(self.varint_u64()?),
            2 => {
                let (bytes, rest) = self.buf.split_first_chunk::<8>()?;
                self.buf = rest;
                Value::F64(f64::from_le_bytes(*bytes))
            }
            3 => match self.byte()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return None,
            },
            4 => Value::Str(self.string()?),
            _ => return None,
        })
    }

    /// A string, as postcard reads it (UTF-8), within the cap of
    /// [`limits::MAX_STR_LEN`].
    #[inline(always)]
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.varint_u64()?).ok()?;
        if len > self.buf.len() {
            return None;
        }
        if len > limits::MAX_STR_LEN {
            // Refused by the caps' check, which says why.
            return None;
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(std::str::from_utf8(bytes).ok()?.to_owned())
    }

    /// [`Reader::string`] read into `s` (replacing what it held).
    #[inline(always)]
    fn string_into(&mut self, s: &mut String) -> Option<()> {
        let len = usize::try_from(self.varint_u64()?).ok()?;
        if len > self.buf.len() || len > limits::MAX_STR_LEN {
            return None;
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        s.clear();
        s.push_str(std::str::from_utf8(bytes).ok()?);
        Some(())
    }

    /// Reads one event of a batch into `slot`: the event written there, or
    /// `None` and the slot left as it was.
    #[inline(always)]
    fn event<'s>(&mut self, slot: &'s mut MaybeUninit<Event>) -> Option<&'s mut Event> {
        let at = self.buf;
        Some(match u64::from(self.varint_u32()?) {
            index::POLL => {
                let (task, start) = (self.subject()?, self.time()?);
                let (duration, wakers) = (self.varint_u64()?, self.varint_u32()?);
                slot.write(Event::Poll {
                    task,
                    start,
                    duration,
                    wakers,
                })
            }
            index::WAKE => {
                let task = self.subject()?;
                let op = match self.varint_u32()? {
                    0 => WakeOp::Wake,
                    1 => WakeOp::WakeByRef,
                    2 => WakeOp::Clone,
                    3 => WakeOp::Drop,
                    4 => WakeOp::LastDrop,
                    _ => return None,
                };
                let by = match self.byte()? {
                    0 => None,
                    1 => Some(self.span()?),
                    _ => return None,
                };
                let ts = self.time()?;
                slot.write(Event::Wake { task, op, by, ts })
            }
            index::POLL_END => {
                let (task, ts, wakers) = (self.subject()?, self.time()?, self.varint_u32()?);
                slot.write(Event::PollEnd { task, ts, wakers })
            }
            index::ENTER => {
                let (span, ts) = (self.subject()?, self.time()?);
                slot.write(Event::Enter { span, ts })
            }
            index::EXIT => {
                let (span, ts) = (self.subject()?, self.time()?);
                slot.write(Event::Exit { span, ts })
            }
            index::CLOSE => {
                let span = self.subject()?;
                let kind = match self.varint_u32()? {
                    0 => CloseKind::Span,
                    1 => CloseKind::Completed,
                    2 => CloseKind::Cancelled,
                    3 => CloseKind::Panicked,
                    _ => return None,
                };
                let ts = self.time()?;
                slot.write(Event::Close { span, kind, ts })
            }
            index::THREAD => {
                // One opens each thread's run of every batch: read here, the
                // batch need not be checked again after it is decoded.
                let id = self.varint_u32()?;
                let name = match self.byte()? {
                    0 => None,
                    1 => Some(self.string()?),
                    _ => return None,
                };
                slot.write(Event::Thread { id, name })
            }
            index::SPAN_NEW => {
                // Into a box given back by `recycle`, over the fields it
                // held (a string read over a string keeps its allocation:
                // the spans of a callsite have the same fields).
                let mut b = capped::spare_span_new();
                b.id = self.subject()?;
                b.callsite = self.varint_u32()?;
                b.parent = self.option_span()?;
                b.ctx_task = self.option_span()?;
                b.ctx_span = self.option_span()?;
                b.ts = self.time()?;
                let count = self.varint_u64()?;
                if count > limits::MAX_FIELDS as u64 {
                    // Refused by serde's path, which says why.
                    return None;
                }
                let count = count as usize;
                b.fields.truncate(count);
                b.fields.reserve(count - b.fields.len());
                for k in 0..count {
                    let index = self.varint(3, 0x03)? as u16;
                    match b.fields.get_mut(k) {
                        Some(f) => {
                            f.index = index;
                            self.value_into(&mut f.value)?;
                        }
                        None => {
                            let value = self.value()?;
                            b.fields.push(Field { index, value });
                        }
                    }
                }
                slot.write(Event::SpanNew(b))
            }
            index::POLL_TREE => {
                let task = self.span()?;
                let count = self.varint_u64()?;
                if count > limits::MAX_TREE as u64 {
                    // Refused by serde's path, which says why.
                    return None;
                }
                let mut spans = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let span = self.span()?;
                    let depth = self.varint(3, 0x03)? as u16;
                    spans.push(TreeNode { span, depth });
                }
                slot.write(Event::PollTree { task, spans })
            }
            // Any other event: postcard, from its variant index on.
            _ => {
                let (ev, rest) = postcard::take_from_bytes::<Event>(at).ok()?;
                self.buf = rest;
                self.checked = false;
                slot.write(ev)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpanId;
    use proptest::prelude::Strategy;

    fn postcard(ev: &Event) -> Vec<u8> {
        postcard::to_allocvec(ev).unwrap()
    }

    /// Every event written here fits the room reserved for it (the writer
    /// relies on it): each at its longest, every varint at 10 bytes.
    #[test]
    fn the_longest_events_fit_the_room() {
        let id = SpanId(u64::MAX);
        let cases = [
            Event::Enter {
                span: id,
                ts: u64::MAX,
            },
            Event::Exit {
                span: id,
                ts: u64::MAX,
            },
            Event::Close {
                span: id,
                kind: CloseKind::Panicked,
                ts: u64::MAX,
            },
            Event::Wake {
                task: id,
                op: WakeOp::LastDrop,
                by: Some(id),
                ts: u64::MAX,
            },
            Event::Poll {
                task: id,
                start: u64::MAX,
                duration: u64::MAX,
                wakers: u32::MAX,
            },
            Event::PollEnd {
                task: id,
                ts: u64::MAX,
                wakers: u32::MAX,
            },
        ];
        for ev in cases {
            let mut out = vec![7u8; 3];
            assert!(encode(&ev, &mut out), "{ev:?}");
            assert!(out.len() - 3 <= MAX_LEN, "{ev:?}: {} bytes", out.len() - 3);
            assert_eq!(out[3..], postcard(&ev)[..], "{ev:?}");
            assert_eq!(out[..3], [7, 7, 7]);
        }
    }

    /// The reader takes a varint exactly when postcard does, to the same
    /// value, leaving the same bytes: at every length, with every last
    /// byte (too large ones are refused at the longest length), in
    /// non-minimal forms, at the end of the input and followed by more
    /// (read a word at a time, see [`Reader::varint`]); a time
    /// ([`Reader::time`]) and an event's id ([`Reader::subject`]) as a
    /// `u64`.
    #[test]
    fn varints_read_as_postcard_reads_them() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for len in 1..=11 {
            for last in 0..=255u8 {
                for fill in [0x80u8, 0xff, 0x81] {
                    let mut b = vec![fill; len - 1];
                    b.push(last);
                    for tail in [&[][..], &[0; 12], &[0x80, 0x80, 0x01, 0x7f], &[0xff; 12]] {
                        let mut b = b.clone();
                        b.extend_from_slice(tail);
                        cases.push(b);
                    }
                }
            }
        }
        for b in &cases {
            let mut r = Reader {
                buf: b,
                checked: true,
            };
            let ours = r.varint_u64().map(|v| (v, r.buf.len()));
            let theirs = postcard::take_from_bytes::<u64>(b)
                .ok()
                .map(|(v, rest)| (v, rest.len()));
            assert_eq!(ours, theirs, "u64 {b:02x?}");
            // A time: the same, read without the one-byte test.
            let mut r = Reader {
                buf: b,
                checked: true,
            };
            let ours = r.time().map(|v| (v, r.buf.len()));
            assert_eq!(ours, theirs, "time {b:02x?}");
            let mut r = Reader {
                buf: b,
                checked: true,
            };
            let ours = r.subject().map(|v| (v.0, r.buf.len()));
            assert_eq!(ours, theirs, "id {b:02x?}");
            let mut r = Reader {
                buf: b,
                checked: true,
            };
            let ours = r.varint_u32().map(|v| (v, r.buf.len()));
            let theirs = postcard::take_from_bytes::<u32>(b)
                .ok()
                .map(|(v, rest)| (v, rest.len()));
            assert_eq!(ours, theirs, "u32 {b:02x?}");
        }
        // Every value at every length, as the writer writes it.
        for bits in 0..64 {
            for v in [1u64 << bits, (1u64 << bits) - 1, (1u64 << bits) | 0x55] {
                let mut b = Vec::new();
                Writer::new(&mut b).varint(v);
                let n = b.len();
                b.extend_from_slice(&[0xaa; 9]);
                let mut r = Reader {
                    buf: &b,
                    checked: true,
                };
                assert_eq!(r.varint_u64(), Some(v));
                assert_eq!(r.buf.len(), b.len() - n);
            }
        }
    }

    /// The LEB128 writer this module had before [`Writer::varint_wide`]:
    /// byte by byte, the reference the writer is checked against.
    fn reference_varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Writes `values` one after another with [`Writer::varint`] (and
    /// again with [`Writer::varint_time`]) after a few bytes already in the
    /// vector, in room for exactly their longest encodings, and checks the
    /// bytes against [`reference_varint`]'s and postcard's.
    fn check_varints(values: &[u64]) {
        let mut theirs = vec![0xa5u8; 3];
        for &v in values {
            reference_varint(v, &mut theirs);
        }
        let mut pc = vec![0xa5u8; 3];
        for &v in values {
            pc.extend_from_slice(&postcard::to_allocvec(&v).unwrap());
        }
        assert_eq!(pc, theirs, "{values:x?}");
        for time in [false, true] {
            let mut ours = vec![0xa5u8; 3];
            {
                let mut w = Writer::with_room(&mut ours, 10 * values.len());
                for &v in values {
                    if time {
                        w.varint_time(v);
                    } else {
                        w.varint(v);
                    }
                }
            }
            assert_eq!(ours, theirs, "{values:x?}");
        }
    }

    /// Every 7-bit boundary (each length's first and last values and their
    /// neighbours), every power of two and its neighbours, alone and
    /// followed by other values.
    #[test]
    fn varints_at_every_boundary_are_the_reference_ones() {
        let mut values = vec![0, 1, u64::MAX, u64::MAX - 1];
        for k in 1..=9u32 {
            let b = 1u64 << (7 * k);
            values.extend([b - 2, b - 1, b, b + 1, b | 0x55, (b - 1) & !0x7f]);
        }
        for bit in 0..64 {
            let b = 1u64 << bit;
            values.extend([b, b - 1, b | (b >> 1), b.wrapping_add(1), !(b - 1)]);
        }
        for &v in &values {
            check_varints(&[v]);
            for &u in &values {
                check_varints(&[v, u]);
            }
        }
        check_varints(&values);
    }

    /// Values over the whole `u64` range: of every bit length, uniform, and
    /// in runs (each written right after the one before).
    #[test]
    fn random_varints_are_the_reference_ones() {
        // xorshift64*: deterministic, no dependency.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..20_000 {
            let mut run = [0u64; 6];
            for v in &mut run {
                let r = next();
                *v = match r % 3 {
                    0 => r,
                    _ => next() >> ((r >> 2) % 64),
                };
            }
            check_varints(&run);
        }
    }

    proptest::proptest! {
        #[test]
        fn proptest_varints_are_the_reference_ones(
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u64>(),
                    (proptest::prelude::any::<u64>(), 0u32..64).prop_map(|(v, s)| v >> s),
                ],
                1..12,
            )
        ) {
            check_varints(&values);
        }
    }

    #[test]
    fn variant_indices_are_postcards() {
        let id = SpanId(0);
        let cases = [
            (Event::Enter { span: id, ts: 0 }, index::ENTER),
            (Event::Exit { span: id, ts: 0 }, index::EXIT),
            (
                Event::Close {
                    span: id,
                    kind: CloseKind::Span,
                    ts: 0,
                },
                index::CLOSE,
            ),
            (
                Event::Wake {
                    task: id,
                    op: WakeOp::Wake,
                    by: None,
                    ts: 0,
                },
                index::WAKE,
            ),
            (
                Event::Poll {
                    task: id,
                    start: 0,
                    duration: 0,
                    wakers: 0,
                },
                index::POLL,
            ),
            (
                Event::Log(Box::new(crate::Log {
                    callsite: 0,
                    span: None,
                    task: None,
                    ts: 0,
                    fields: vec![],
                    trace: vec![],
                })),
                index::LOG,
            ),
            (
                Event::PollEnd {
                    task: id,
                    ts: 0,
                    wakers: 0,
                },
                index::POLL_END,
            ),
        ];
        for (ev, i) in cases {
            assert_eq!(u64::from(postcard(&ev)[0]), i, "{ev:?}");
        }
    }

    #[test]
    fn threads_are_read_here_and_their_names_held_to_the_cap() {
        for name in [None, Some("worker-1".to_string()), Some(String::new())] {
            let ev = Event::Thread {
                id: 7,
                name: name.clone(),
            };
            let b = postcard(&ev);
            assert_eq!(u64::from(b[0]), index::THREAD);
            let mut r = Reader {
                buf: &b,
                checked: true,
            };
            let mut slot = MaybeUninit::uninit();
            let read = r.event(&mut slot).expect("read here");
            // Taken out of the slot, which would not drop it.
            let read = std::mem::replace(read, Event::Thread { id: 0, name: None });
            assert!(r.checked, "not left to serde");
            assert!(r.buf.is_empty());
            assert_eq!(read, ev);
        }
        // Over the cap: left to serde, which says why.
        let ev = Event::Thread {
            id: 7,
            name: Some("x".repeat(limits::MAX_STR_LEN + 1)),
        };
        let b = postcard(&ev);
        let mut r = Reader {
            buf: &b,
            checked: true,
        };
        assert!(r.event(&mut MaybeUninit::uninit()).is_none());
    }

    #[test]
    fn other_events_are_left_to_serde() {
        let ev = Event::Thread { id: 1, name: None };
        let mut out = Vec::new();
        assert!(!encode(&ev, &mut out));
        assert!(out.is_empty());
    }
}
