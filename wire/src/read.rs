//! Decoding frames, from a byte buffer (sans I/O) or from a reader.

use std::io::{self, Read};

use crate::{limits, Body, Event, Field, Frame, Value, MAGIC, MAX_FRAME_LEN, MIN_VERSION, VERSION};

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Nothing at all was read.
    #[error("empty input: no awaitscope stream header")]
    Empty,
    /// The first bytes are not the awaitscope magic.
    #[error("not an awaitscope stream or recording (bad magic)")]
    BadMagic,
    /// A version this reader does not understand.
    #[error("unsupported format version {found} (this build reads versions 1 to {supported}); upgrade awaitscope")]
    UnsupportedVersion {
        /// Version found in the header.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// A frame's length prefix exceeds the cap.
    #[error("frame of {len} bytes at offset {offset} exceeds the cap of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Byte offset of the frame in the stream.
        offset: u64,
    },
    /// The input ends inside the header or a frame.
    #[error("truncated at offset {offset}: the input ends inside a frame")]
    Truncated {
        /// Byte offset of the incomplete frame.
        offset: u64,
    },
    /// The frame's payload is not a valid frame.
    #[error("malformed frame at offset {offset}: {reason}")]
    Malformed {
        /// Byte offset of the frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// A parsed stream header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// Format version.
    pub version: u16,
}

impl Preamble {
    /// Length of the header in bytes.
    pub const LEN: usize = 10;

    /// Parses the header from the start of `buf`. `Ok(None)` means more bytes
    /// are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<Preamble>, DecodeError> {
        let n = buf.len().min(MAGIC.len());
        if buf[..n] != MAGIC[..n] {
            return Err(DecodeError::BadMagic);
        }
        if buf.len() < Self::LEN {
            return Ok(None);
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        Ok(Some(Preamble { version }))
    }
}

/// Decodes one frame from the start of `buf` (which follows the preamble).
/// Returns the frame and the number of bytes it used, or `Ok(None)` when
/// `buf` does not hold a whole frame yet. `offset` is only used in errors.
pub fn decode_frame(buf: &[u8], offset: u64) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(len) = frame_len(buf, offset)? else {
        return Ok(None);
    };
    let frame = decode_payload(&buf[4..4 + len], offset)?;
    Ok(Some((frame, 4 + len)))
}

/// The payload length of the frame at the start of `buf`, once `buf` holds
/// all of it.
fn frame_len(buf: &[u8], offset: u64) -> Result<Option<usize>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLarge { len, offset });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some(len))
}

fn decode_payload(payload: &[u8], offset: u64) -> Result<Frame, DecodeError> {
    // Batches of events, nearly every frame, are read directly (see
    // `direct`); the rest, and any batch that is not clean, through serde.
    if let Some((frame, checked)) = crate::direct::decode_events_frame(payload) {
        if !checked {
            validate(&frame).map_err(|reason| DecodeError::Malformed { offset, reason })?;
        }
        return Ok(frame);
    }
    decode_payload_serde(payload, offset)
}

/// [`decode_frame`] through serde alone, without the direct reading of
/// batches: for tests that compare the two.
#[doc(hidden)]
pub fn decode_frame_serde(buf: &[u8], offset: u64) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(len) = frame_len(buf, offset)? else {
        return Ok(None);
    };
    let frame = decode_payload_serde(&buf[4..4 + len], offset)?;
    Ok(Some((frame, 4 + len)))
}

fn decode_payload_serde(payload: &[u8], offset: u64) -> Result<Frame, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed { offset, reason };
    crate::event::capped::clear();
    let (frame, rest): (Frame, _) = postcard::take_from_bytes(payload).map_err(|e| {
        // postcard drops the message of custom errors: recover the reason
        // when a list was refused for exceeding its cap.
        let refusal = crate::event::capped::take_refusal();
        match (e, refusal) {
            (postcard::Error::SerdeDeCustom, Some(reason)) => malformed(reason),
            (e, _) => malformed(e.to_string()),
        }
    })?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    validate(&frame).map_err(malformed)?;
    Ok(frame)
}

/// Gives back a frame that is no longer needed: the vector of its events
/// (emptied) is reused by the next batch decoded on this thread (by
/// [`decode_frame`] or a [`FrameReader`]), which then allocates nothing for
/// its events. Only worth calling where frames are decoded and applied on
/// one thread, frame after frame; otherwise it merely drops the frame.
pub fn recycle(frame: Frame) {
    if let Body::Events(events) = frame.body {
        crate::event::capped::put_spare(events);
    }
}

/// Checks the caps of [`limits`] on a decoded frame.
pub fn validate(frame: &Frame) -> Result<(), String> {
    fn s(v: &str) -> Result<(), String> {
        if v.len() > limits::MAX_STR_LEN {
            return Err(format!("string of {} bytes exceeds the cap", v.len()));
        }
        Ok(())
    }
    fn fields(f: &[Field]) -> Result<(), String> {
        if f.len() > limits::MAX_FIELDS {
            return Err(format!("{} fields exceed the cap", f.len()));
        }
        for field in f {
            if let Value::Str(v) = &field.value {
                s(v)?;
            }
        }
        Ok(())
    }
    fn lines(t: &[String]) -> Result<(), String> {
        if t.len() > limits::MAX_TRACE {
            return Err(format!("{} trace lines exceed the cap", t.len()));
        }
        t.iter().try_for_each(|l| s(l))
    }
    fn native_stack(ns: &crate::NativeStack) -> Result<(), String> {
        if ns.frames.len() > limits::MAX_STACK || ns.modules.len() > limits::MAX_STACK {
            return Err("native stack exceeds the cap".into());
        }
        for m in &ns.modules {
            s(&m.path)?;
            if m.build_id.len() > limits::MAX_BUILD_ID {
                return Err("build id exceeds the cap".into());
            }
        }
        let n = ns.modules.len() as u32;
        if ns.frames.iter().any(|f| f.module.is_some_and(|m| m >= n)) {
            return Err("native frame names a module that is not listed".into());
        }
        Ok(())
    }
    match &frame.body {
        Body::Hello(info) => {
            s(&info.name)?;
            s(&info.producer_version)?;
            if info.cmdline.len() > limits::MAX_FIELDS {
                return Err("command line too long".into());
            }
            info.cmdline.iter().try_for_each(|a| s(a))?;
            info.token.as_deref().map_or(Ok(()), s)
        }
        Body::Events(events) => {
            if events.len() > limits::MAX_BATCH {
                return Err(format!("{} events exceed the batch cap", events.len()));
            }
            for e in events {
                match e {
                    Event::Callsite(c) => {
                        s(&c.name)?;
                        s(&c.target)?;
                        c.file.as_deref().map_or(Ok(()), s)?;
                        if c.fields.len() > limits::MAX_FIELDS {
                            return Err("callsite has too many fields".into());
                        }
                        c.fields.iter().try_for_each(|f| s(f))?;
                    }
                    Event::Thread { name, .. } => name.as_deref().map_or(Ok(()), s)?,
                    Event::SpanNew(n) => fields(&n.fields)?,
                    Event::Record { fields: f, .. } => fields(f)?,
                    Event::Log(l) => {
                        fields(&l.fields)?;
                        lines(&l.trace)?;
                    }
                    Event::Panic(p) => {
                        s(&p.message)?;
                        p.file.as_deref().map_or(Ok(()), s)?;
                        lines(&p.trace)?;
                    }
                    Event::Handover(h) => {
                        if h.trace_id == [0; 16] || h.span_id == [0; 8] {
                            return Err("handover with an all-zero W3C id".into());
                        }
                        lines(&h.trace)?;
                    }
                    Event::Stall(st) => {
                        if st.spans.len() > limits::MAX_TREE {
                            return Err(format!("{} stall spans exceed the cap", st.spans.len()));
                        }
                        if st.frames.len() > limits::MAX_STACK {
                            return Err(format!(
                                "{} native frames exceed the cap",
                                st.frames.len()
                            ));
                        }
                        for f in &st.frames {
                            s(&f.function)?;
                            f.file.as_deref().map_or(Ok(()), s)?;
                        }
                    }
                    Event::NativeStack(ns) => native_stack(ns)?,
                    Event::WaitStack(w) | Event::WakeStack(w) => {
                        native_stack(&w.stack)?;
                        if let Some(f) = &w.at {
                            s(&f.function)?;
                            f.file.as_deref().map_or(Ok(()), s)?;
                        }
                    }
                    Event::PollTree { spans, .. } => {
                        if spans.len() > limits::MAX_TREE {
                            return Err(format!("{} await tree nodes exceed the cap", spans.len()));
                        }
                    }
                    Event::FollowsFrom { .. }
                    | Event::Enter { .. }
                    | Event::Exit { .. }
                    | Event::PollEnd { .. }
                    | Event::Poll { .. }
                    | Event::Close { .. }
                    | Event::Wake { .. } => {}
                }
            }
            Ok(())
        }
        Body::Dropped(_) | Body::Goodbye => Ok(()),
    }
}

/// Reads frames from a stream or recording.
///
/// A recording cut short (a process killed mid-write) reads up to its last
/// complete frame; the next call then reports [`DecodeError::Truncated`].
pub struct FrameReader<R: Read> {
    inner: R,
    offset: u64,
    buf: Vec<u8>,
    done: bool,
    version: u16,
}

impl<R: Read> FrameReader<R> {
    /// Reads and checks the preamble.
    pub fn new(mut inner: R) -> Result<Self, DecodeError> {
        let mut head = [0u8; Preamble::LEN];
        let n = read_full(&mut inner, &mut head)?;
        if n == 0 {
            return Err(DecodeError::Empty);
        }
        match Preamble::parse(&head[..n])? {
            Some(p) => Ok(Self {
                inner,
                offset: Preamble::LEN as u64,
                buf: Vec::new(),
                done: false,
                version: p.version,
            }),
            None => Err(DecodeError::Truncated { offset: 0 }),
        }
    }

    /// Format version of the stream (from its preamble).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame, `Ok(None)` at a clean end of input, or an error. After
    /// an error the reader is finished.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.done {
            return Ok(None);
        }
        let r = self.read_one();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    fn read_one(&mut self) -> Result<Option<Frame>, DecodeError> {
        let offset = self.offset;
        let mut len_bytes = [0u8; 4];
        match read_full(&mut self.inner, &mut len_bytes)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(DecodeError::Truncated { offset }),
        }
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::FrameTooLarge { len, offset });
        }
        // The buffer only grows: zeroed once, not for every frame (each
        // frame's bytes are read over what the last one left).
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let buf = &mut self.buf[..len];
        if read_full(&mut self.inner, buf)? < len {
            return Err(DecodeError::Truncated { offset });
        }
        let frame = decode_payload(buf, offset)?;
        self.offset += 4 + len as u64;
        Ok(Some(frame))
    }
}

impl<R: Read> Iterator for FrameReader<R> {
    type Item = Result<Frame, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_frame, Body, Event, Field, ProcessKey, SpanId, Value};

    fn record(fields: usize) -> Vec<u8> {
        let frame = Frame {
            process: ProcessKey {
                pid: 1,
                start_unix_ns: 2,
            },
            seq: 3,
            body: Body::Events(vec![Event::Record {
                span: SpanId(4),
                fields: vec![
                    Field {
                        index: 0,
                        value: Value::Bool(false),
                    };
                    fields
                ],
            }]),
        };
        let mut out = Vec::new();
        encode_frame(&frame, &mut out).unwrap();
        out
    }

    #[test]
    fn cap_refusals_give_their_reason_once() {
        let over = record(limits::MAX_FIELDS + 1);
        match decode_frame(&over, 0) {
            Err(DecodeError::Malformed { reason, .. }) => {
                assert_eq!(reason, "33 fields exceed the cap of 32")
            }
            other => panic!("{other:?}"),
        }
        // A later, unrelated error does not reuse that reason, even if a
        // refusal was left behind (by another codec, say).
        crate::event::capped::clear();
        let mut garbage = 5u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[1, 2, 3, 9, 0]); // Body variant 9
        for _ in 0..2 {
            match decode_frame(&garbage, 0) {
                Err(DecodeError::Malformed { reason, .. }) => {
                    assert!(!reason.contains("cap"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
            let _ = decode_frame(&over, 0);
        }
        assert!(decode_frame(&record(limits::MAX_FIELDS), 0).is_ok());
    }
}
