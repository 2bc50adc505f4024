//! Postcard's encoding of the most frequent events, written directly.
//!
//! Why by hand: through serde, postcard spends ~250 instructions on a
//! `Poll` event (a call per field, a bounds-checked push per byte), more
//! than half of what the producer's exporter does per event. These events
//! are a variant index and a few varints, so this writes exactly what
//! postcard writes for them: an enum variant as the varint of its index, a
//! newtype as its inner value, an integer as a varint (LEB128), an option
//! as 0, or 1 and the value. The format stays postcard's: the tests below
//! check the variant indices, `tests/roundtrip.rs` compares frames built
//! with this with postcard's for arbitrary events and for these events at
//! every varint length, and `tests/golden.rs` pins whole frames.

use crate::{CloseKind, Event, WakeOp};

/// Postcard's variant indices of [`Event`] (declaration order).
mod index {
    pub const ENTER: u64 = 5;
    pub const EXIT: u64 = 7;
    pub const CLOSE: u64 = 8;
    pub const WAKE: u64 = 9;
    pub const POLL: u64 = 12;
    pub const POLL_END: u64 = 13;
}

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
            w.varint(start);
            w.varint(duration);
            w.varint(u64::from(wakers));
        }
        Event::Wake { task, op, by, ts } => {
            let mut w = Writer::new(out);
            w.varint(index::WAKE);
            w.varint(task.0);
            w.varint(wake_op(op));
            match by {
                None => w.byte(0),
                Some(by) => {
                    w.byte(1);
                    w.varint(by.0);
                }
            }
            w.varint(ts);
        }
        Event::PollEnd { task, ts, wakers } => {
            let mut w = Writer::new(out);
            w.varint(index::POLL_END);
            w.varint(task.0);
            w.varint(ts);
            w.varint(u64::from(wakers));
        }
        Event::Enter { span, ts } => {
            let mut w = Writer::new(out);
            w.varint(index::ENTER);
            w.varint(span.0);
            w.varint(ts);
        }
        Event::Exit { span, ts } => {
            let mut w = Writer::new(out);
            w.varint(index::EXIT);
            w.varint(span.0);
            w.varint(ts);
        }
        Event::Close { span, kind, ts } => {
            let mut w = Writer::new(out);
            w.varint(index::CLOSE);
            w.varint(span.0);
            w.varint(close_kind(kind));
            w.varint(ts);
        }
        _ => return false,
    }
    true
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
/// capacity check.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    #[inline(always)]
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.reserve(MAX_LEN);
        Self { out }
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        // Within the reserved room: `push` does not reallocate.
        self.out.push(b);
    }

    /// LEB128, as postcard's `varint_u64`.
    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        let len = self.out.len();
        let spare = self.out.spare_capacity_mut();
        let mut i = 0;
        while v >= 0x80 {
            spare[i].write((v as u8) | 0x80);
            v >>= 7;
            i += 1;
        }
        spare[i].write(v as u8);
        // SAFETY: the `i + 1` bytes after `len` were just written, and
        // they are within the capacity (`spare` is bounds-checked).
        unsafe { self.out.set_len(len + i + 1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpanId;

    fn postcard(ev: &Event) -> Vec<u8> {
        postcard::to_allocvec(ev).unwrap()
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
    fn other_events_are_left_to_serde() {
        let ev = Event::Thread { id: 1, name: None };
        let mut out = Vec::new();
        assert!(!encode(&ev, &mut out));
        assert!(out.is_empty());
    }
}
