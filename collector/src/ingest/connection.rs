//! What every connection to the server has, producer or viewer: why it may
//! be refused ([`Refusal`]) and its read buffer held against the memory
//! budget ([`ReadBuf`]).

use std::sync::atomic::Ordering;

use awaitscope_wire::DecodeError;
use tokio::net::TcpStream;

use super::budget::{Reservation, Share};
use super::state::{ServerState, ServerStats};

/// Largest `Hello` frame accepted before the handshake (its strings are
/// capped by the wire: a name, at most 32 arguments of 1 KiB, a version
/// and a token). A peer that announces a larger first frame is refused
/// before it is read, so that peers that never finish a handshake cannot
/// hold frames at the general frame cap.
pub(crate) const MAX_HELLO_FRAME: usize = 64 * 1024;

/// Bytes read at a time once past the handshake.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Bytes read at a time before it: a hello is a few hundred bytes, and
/// what a peer that has not said who it is holds must stay small.
pub(crate) const HANDSHAKE_CHUNK: usize = 4 * 1024;

/// Why a connection was refused or closed early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("not an awaitscope stream: {0}")]
    Garbage(String),
    #[error("{0}")]
    Version(DecodeError),
    #[error("{0}")]
    Oversized(DecodeError),
    #[error("first frame of {0} bytes is over the cap of {MAX_HELLO_FRAME} bytes for a hello")]
    HelloTooLarge(usize),
    #[error(
        "missing or wrong token (set AWAITSCOPE_TOKEN in the producer to the collector's --token)"
    )]
    Token,
    #[error("{0}")]
    Timeout(&'static str),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("read failed: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    ViewerVersion(String),
    #[error("{0}")]
    ViewerOversized(String),
    #[error("missing or wrong token (give the UI the serve's token: --token or AWAITSCOPE_TOKEN)")]
    ViewerToken,
    #[error("the server's memory budget for {0} is used up; try again later")]
    Memory(&'static str),
    #[error("closed to make room for a new connection ({0})")]
    Evicted(&'static str),
}

impl Refusal {
    pub(crate) fn count(&self, s: &ServerStats) {
        let c = match self {
            Refusal::Garbage(_) => &s.refused_garbage,
            Refusal::Version(_) | Refusal::ViewerVersion(_) => &s.refused_version,
            Refusal::Oversized(_) | Refusal::ViewerOversized(_) | Refusal::HelloTooLarge(_) => {
                &s.refused_oversized
            }
            Refusal::Token | Refusal::ViewerToken => &s.refused_token,
            Refusal::Timeout(_) => &s.refused_timeout,
            Refusal::Protocol(_) => &s.refused_protocol,
            Refusal::Memory(_) => &s.refused_memory,
            // Counted where the eviction was decided.
            Refusal::Io(_) | Refusal::Evicted(_) => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection's read buffer, its capacity held against a share of the
/// memory budget, and given back whole when a read finds nothing and
/// nothing is buffered (a quiet connection holds no buffer).
pub(crate) struct ReadBuf {
    pub(crate) buf: Vec<u8>,
    res: Reservation,
}

/// Why [`ReadBuf::read`] read nothing.
pub(crate) enum ReadError {
    /// The budget has no room for the buffer to grow.
    NoRoom,
    /// The socket failed.
    Io(std::io::Error),
}

impl ReadBuf {
    pub(crate) fn new(res: Reservation) -> ReadBuf {
        ReadBuf {
            buf: Vec::new(),
            res,
        }
    }

    /// Moves the buffer's reservation to `share` (a connection past its
    /// handshake); `false` when it does not fit there.
    pub(crate) fn move_to(&mut self, state: &ServerState, share: Share) -> bool {
        let Some(res) = state.budget.reserve(share, self.res.bytes()) else {
            return false;
        };
        self.res = res;
        true
    }

    /// Waits for the socket to be readable (holding no new memory), then
    /// reads what it has, keeping at most `limit` bytes in the buffer.
    /// `Ok(0)`: the peer closed.
    pub(crate) async fn read(
        &mut self,
        stream: &TcpStream,
        limit: usize,
    ) -> Result<usize, ReadError> {
        let chunk = if self.res.share() == Share::Handshake {
            HANDSHAKE_CHUNK
        } else {
            READ_CHUNK
        };
        loop {
            stream.readable().await.map_err(ReadError::Io)?;
            let len = self.buf.len();
            let chunk = chunk.min(limit.saturating_sub(len)).max(1);
            if self.buf.capacity() < len + chunk {
                let grown = (len + chunk).max(self.buf.capacity().saturating_mul(2).min(limit));
                if !self.res.resize(grown.max(self.res.bytes())) {
                    return Err(ReadError::NoRoom);
                }
                self.buf.reserve_exact(grown - len);
                self.sync();
            }
            match stream.try_read_buf(&mut self.buf) {
                Ok(n) => return Ok(n),
                // Nothing after all (readiness is remembered from the last
                // read): a connection waiting with nothing buffered holds
                // no memory while it waits.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                        self.sync();
                    }
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// [`ReadBuf::read`], waiting for room in the budget when there is
    /// none (connections closed for newcomers, frames applied, give it
    /// back soon); the caller's deadline bounds the wait.
    pub(crate) async fn read_waiting(
        &mut self,
        stream: &TcpStream,
        limit: usize,
    ) -> std::io::Result<usize> {
        loop {
            match self.read(stream, limit).await {
                Err(ReadError::NoRoom) => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await
                }
                Err(ReadError::Io(e)) => return Err(e),
                Ok(n) => return Ok(n),
            }
        }
    }

    /// Drops the first `used` bytes; an emptied buffer gives its memory
    /// back, a large one mostly empty shrinks.
    pub(crate) fn consume(&mut self, used: usize) {
        if used == 0 {
            return;
        }
        self.buf.drain(..used);
        // Kept for the next read up to a chunk; given back whole when the
        // next read finds nothing.
        if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK {
            self.buf.shrink_to(READ_CHUNK);
        }
        self.sync();
    }

    /// The reservation follows the buffer's capacity. Shrinking always
    /// fits; if the allocator gave more than was asked and that does not
    /// fit, what was asked stays reserved.
    fn sync(&mut self) {
        let _ = self.res.resize(self.buf.capacity());
    }
}
