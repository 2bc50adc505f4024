//! The wire format of awaitscope.
//!
//! One format serves both the live TCP stream from an instrumented process to a
//! collector and the recording files written with `AWAITSCOPE_RECORD`:
//!
//! ```text
//! stream  = MAGIC (8 bytes) version (u16, little endian) frame*
//! frame   = length (u32, little endian) payload (postcard-encoded `Frame`)
//! ```
//!
//! The payload is encoded with [postcard] (a compact, well-kept serde codec);
//! only the magic, the version and the frame length prefix are fixed-width
//! fields. Every frame carries the [`ProcessKey`] of its producer so that one
//! collector can merge many processes. Frames are at most [`MAX_FRAME_LEN`]
//! bytes, and strings and field lists inside them are capped (see [`limits`]).
//!
//! Decoding is total: arbitrary bytes give a [`DecodeError`], never a panic, a
//! hang or an allocation out of proportion to one capped frame (capped lists
//! are refused while they are decoded, so the largest allocation is a full
//! batch of [`limits::MAX_BATCH`] events).

#![warn(missing_docs)]

mod direct;
pub mod event;
pub mod names;
pub mod paths;
pub mod read;
pub mod write;

pub use event::*;
pub use read::{
    decode_frame, decode_frame_serde, recycle, validate, DecodeError, FrameReader, Preamble,
};
pub use write::{encode_frame, preamble, EncodeError, EncodesAsEvent, EventsFrame, FrameWriter};

/// First eight bytes of every stream and recording.
pub const MAGIC: [u8; 8] = *b"AWSCOPE\0";

/// Version of the format written by this crate.
///
/// Version 2 added [`Event::PollEnd`] (a task poll's end, with its live
/// wakers), [`Event::Poll`] (a whole poll in one event) and
/// [`WakeOp::LastDrop`]; version-2 producers no longer send
/// `WakeOp::Clone` or per-waker `WakeOp::Drop`.
///
/// Version 3 added [`Event::Stall`] (a poll past the stall threshold, seen
/// while it ran: its async and native stacks and the worker's scheduler
/// statistics).
///
/// Version 4 added [`Event::NativeStack`] (a stall's native stack as
/// addresses in the program's modules, symbolised by the collector rather
/// than by the program).
///
/// Version 5 added [`Event::Handover`] (a causal context sent to another
/// process as a W3C `traceparent`, for the collector to join the two
/// processes' causal traces).
///
/// Version 6 added [`Event::WaitStack`] (the native stack at which a task
/// was told "not ready" by a tokio resource: the line it awaits at).
///
/// Version 7 added [`Event::WakeStack`] (the native stack at which a task
/// woke itself in its own poll: the line that keeps it polling itself).
pub const VERSION: u16 = 7;

/// Oldest version a reader accepts: version-1 to version-6 streams decode
/// unchanged (their events are a subset of version 7's). Others are refused.
pub const MIN_VERSION: u16 = 1;

/// Largest frame payload accepted, in bytes. Producers batch well under it.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Caps on the contents of a frame. Producers truncate to them; readers
/// refuse frames that exceed them.
pub mod limits {
    /// Longest string (name, field value, message) in bytes.
    pub const MAX_STR_LEN: usize = 1024;
    /// Most fields recorded on one span or event.
    pub const MAX_FIELDS: usize = 32;
    /// Most spans in one poll's await tree ([`crate::Event::PollTree`]).
    pub const MAX_TREE: usize = 64;
    /// Most lines in a causal trace (`Log` and `Panic` events).
    pub const MAX_TRACE: usize = 64;
    /// Most native frames in one [`crate::Stall`] or
    /// [`crate::NativeStack`], and most modules in one `NativeStack`.
    pub const MAX_STACK: usize = 128;
    /// Longest build id, in bytes (GNU build ids are 20).
    pub const MAX_BUILD_ID: usize = 64;
    /// Most events in one batch frame.
    pub const MAX_BATCH: usize = 16 * 1024;

    /// Truncates `s` to at most [`MAX_STR_LEN`] bytes on a char boundary,
    /// marking the cut with an ellipsis.
    pub fn truncate(s: &mut String) {
        if s.len() <= MAX_STR_LEN {
            return;
        }
        let mut cut = MAX_STR_LEN - '…'.len_utf8();
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries_and_cap() {
        let mut s = "é".repeat(limits::MAX_STR_LEN);
        limits::truncate(&mut s);
        assert!(s.len() <= limits::MAX_STR_LEN);
        assert!(s.ends_with('…'));
        let mut short = String::from("short");
        limits::truncate(&mut short);
        assert_eq!(short, "short");
    }
}
