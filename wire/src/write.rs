//! Encoding frames.

use std::io::{self, Write};

use serde::Serialize;

use crate::{Event, Frame, PollTreeRef, SpanNewRef, MAGIC, MAX_FRAME_LEN, VERSION};

/// What [`EventsFrame::push`] encodes: an [`Event`], or a borrowed
/// form that encodes as one. (Sealed: nothing else may go into a frame.)
pub trait EncodesAsEvent: Serialize + sealed::Sealed {
    /// Appends this event's postcard encoding to `out` without going
    /// through serde, for the frequent events; false (and nothing written)
    /// for the others.
    #[doc(hidden)]
    fn encode_direct(&self, _out: &mut Vec<u8>) -> bool {
        false
    }
}

impl EncodesAsEvent for Event {
    #[inline(always)]
    fn encode_direct(&self, out: &mut Vec<u8>) -> bool {
        crate::direct::encode(self, out)
    }
}
impl EncodesAsEvent for SpanNewRef<'_> {
    #[inline(always)]
    fn encode_direct(&self, out: &mut Vec<u8>) -> bool {
        crate::direct::encode_span_new(self, out);
        true
    }
}
impl EncodesAsEvent for PollTreeRef<'_> {
    #[inline(always)]
    fn encode_direct(&self, out: &mut Vec<u8>) -> bool {
        crate::direct::encode_poll_tree(self, out);
        true
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Event {}
    impl Sealed for crate::SpanNewRef<'_> {}
    impl Sealed for crate::PollTreeRef<'_> {}
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would exceed [`MAX_FRAME_LEN`]; split the batch.
    #[error("frame of {0} bytes exceeds the cap of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge(usize),
    /// The codec failed.
    #[error("encoding failed: {0}")]
    Codec(#[from] postcard::Error),
    /// Writing failed.
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
}

/// A postcard output that appends to a `Vec<u8>`.
///
/// postcard's own `Vec` and `io` outputs copy each varint with
/// `extend_from_slice`, a `memcpy` call per field, which was most of the cost
/// of encoding small events; this pushes short pieces byte by byte, inlined.
struct AppendVec<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendVec<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The bytes that open every stream and recording: magic and version.
pub fn preamble() -> [u8; 10] {
    let mut p = [0u8; 10];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(&VERSION.to_le_bytes());
    p
}

/// Appends `frame` to `out` as one length-prefixed frame. On error `out` is
/// left as it was.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = postcard::serialize_with_flavor(frame, AppendVec(out)) {
        out.truncate(start);
        return Err(EncodeError::Codec(e));
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(EncodeError::FrameTooLarge(len));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Writes a stream: the preamble, then frames.
pub struct FrameWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    /// Writes the preamble to `inner` and returns the writer.
    pub fn new(mut inner: W) -> io::Result<Self> {
        inner.write_all(&preamble())?;
        Ok(Self {
            inner,
            buf: Vec::new(),
        })
    }

    /// Encodes and writes one frame.
    pub fn write_frame(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        self.buf.clear();
        encode_frame(frame, &mut self.buf)?;
        self.inner.write_all(&self.buf)?;
        Ok(())
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// One `Events` frame built event by event: each event is encoded as it is
/// pushed, so a producer never holds a `Vec<Event>` of its batch.
///
/// [`EventsFrame::finish`] writes exactly the bytes [`encode_frame`] writes
/// for `Frame { process, seq, body: Body::Events(events) }`: the frame's
/// postcard header (taken from encoding that frame with no events, minus the
/// empty list's length), the list length, then the events' postcard
/// encodings. Postcard encodes a list as its length followed by its items,
/// so nothing here depends on anything but postcard's own encoding, and a
/// test checks the bytes against `encode_frame`.
#[derive(Debug, Default)]
pub struct EventsFrame {
    events: Vec<u8>,
    count: usize,
    header: Vec<u8>,
}

/// Room kept for the frame header and list length within [`MAX_FRAME_LEN`].
const HEADER_ROOM: usize = 64;

impl EventsFrame {
    /// An empty frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events pushed since the last [`EventsFrame::finish`].
    pub fn len(&self) -> usize {
        self.count
    }

    /// No event pushed since the last [`EventsFrame::finish`].
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size of the events pushed so far.
    pub fn bytes(&self) -> usize {
        self.events.len()
    }

    /// Encodes `event` into the frame. [`EncodeError::FrameTooLarge`] means
    /// it does not fit: finish this frame and push it to the next (on an
    /// empty frame it means the event alone is over the cap). On error the
    /// frame is left as it was.
    #[inline(always)]
    pub fn push<E: crate::EncodesAsEvent + ?Sized>(
        &mut self,
        event: &E,
    ) -> Result<(), EncodeError> {
        if self.count >= crate::limits::MAX_BATCH {
            return Err(EncodeError::FrameTooLarge(self.events.len()));
        }
        let start = self.events.len();
        if !event.encode_direct(&mut self.events) {
            return self.push_serde(event, start);
        }
        self.admit(start)
    }

    /// [`EventsFrame::push`] of an event that serde encodes.
    fn push_serde<E: crate::EncodesAsEvent + ?Sized>(
        &mut self,
        event: &E,
        start: usize,
    ) -> Result<(), EncodeError> {
        if let Err(e) = postcard::serialize_with_flavor(event, AppendVec(&mut self.events)) {
            self.events.truncate(start);
            return Err(EncodeError::Codec(e));
        }
        self.admit(start)
    }

    /// Keeps the event just encoded at `start` if the frame still fits.
    #[inline]
    fn admit(&mut self, start: usize) -> Result<(), EncodeError> {
        if self.events.len() + HEADER_ROOM > MAX_FRAME_LEN {
            let len = self.events.len() - start;
            self.events.truncate(start);
            return Err(EncodeError::FrameTooLarge(len));
        }
        self.count += 1;
        Ok(())
    }

    /// Appends the frame (length prefix, header, events) to `out` and
    /// empties it for the next one. Appends nothing when it is empty.
    pub fn finish(
        &mut self,
        process: crate::ProcessKey,
        seq: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.write_to(process, seq, out)?;
        self.clear();
        Ok(())
    }

    /// Appends the frame (length prefix, header, events) to `out` with
    /// sequence number `seq`, keeping its events: a producer writing to
    /// several streams, each numbered on its own, writes the same events
    /// under each stream's number, then [`EventsFrame::clear`]s it.
    /// Appends nothing when it is empty.
    pub fn write_to(
        &mut self,
        process: crate::ProcessKey,
        seq: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if self.count == 0 {
            return Ok(());
        }
        self.header.clear();
        let empty = Frame {
            process,
            seq,
            body: crate::Body::Events(Vec::new()),
        };
        postcard::to_io(&empty, &mut self.header)?;
        // The empty list's length is the last byte (varint 0).
        self.header.pop();
        postcard::to_io(&(self.count as u64), &mut self.header)?;
        let len = self.header.len() + self.events.len();
        if len > MAX_FRAME_LEN {
            return Err(EncodeError::FrameTooLarge(len));
        }
        out.reserve(4 + len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.events);
        Ok(())
    }

    /// Empties the frame for the next one.
    pub fn clear(&mut self) {
        self.events.clear();
        self.count = 0;
    }
}
