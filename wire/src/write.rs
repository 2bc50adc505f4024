//! Encoding frames.

use std::io::{self, Write};

use crate::{Frame, MAGIC, MAX_FRAME_LEN, VERSION};

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
    if let Err(e) = postcard::to_io(frame, &mut *out) {
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
