//! One connection to the server, from its first bytes to its end: why it
//! may be refused ([`Refusal`]), its read buffer held against the memory
//! budget ([`ReadBuf`]), and the first bytes that tell a viewer from a
//! producer ([`sniff`]).

use std::net::SocketAddr;

use awaitscope_wire::DecodeError;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::warn;

use super::admission::Slot;
use super::budget::{Reservation, Share};
use super::server::{ServerState, ServerStats};
use super::{producer, viewer, viewer_conn};
use std::sync::atomic::Ordering;

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

/// A new connection: told apart by its first bytes, then served as a
/// viewer or a producer, unless its slot is given to another connection
/// first.
pub(crate) async fn connection(
    state: &ServerState,
    tx: &tokio::sync::mpsc::Sender<super::server::Input>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let handshake_deadline = Instant::now() + state.cfg.handshake_timeout;
    let mut rb = ReadBuf::new(state.budget.empty(Share::Handshake));
    let sniffed = tokio::select! {
        r = sniff(&stream, &mut rb, handshake_deadline) => r,
        _ = slot.evicted() => Err(Refusal::Evicted("the oldest of the connections still in their handshake")),
    };
    if let Err(r) = sniffed {
        r.count(&state.stats);
        warn!(%peer, "refused connection: {r}");
        return;
    }
    if viewer::is_viewer_prefix(&rb.buf) {
        viewer_conn::viewer_connection(state, stream, peer, rb, handshake_deadline, &slot).await;
    } else {
        producer::producer_connection(state, tx, stream, peer, rb, handshake_deadline, &slot).await;
    }
}

/// Reads the first bytes of a connection until they tell a viewer (the
/// whole [`viewer::VIEWER_MAGIC`]) from anything else (a producer, or
/// garbage the producer path refuses).
async fn sniff(stream: &TcpStream, rb: &mut ReadBuf, deadline: Instant) -> Result<(), Refusal> {
    while rb.buf.is_empty()
        || (viewer::is_viewer_prefix(&rb.buf) && rb.buf.len() < viewer::VIEWER_MAGIC.len())
    {
        match timeout_at(deadline, rb.read_waiting(stream, MAX_HELLO_FRAME)).await {
            Err(_) => {
                return Err(Refusal::Timeout(
                    "no handshake (preamble and hello) in time",
                ))
            }
            Ok(Err(e)) => return Err(Refusal::Io(e)),
            Ok(Ok(0)) if rb.buf.is_empty() => {
                return Err(Refusal::Protocol("closed before sending anything".into()))
            }
            Ok(Ok(0)) => return Err(Refusal::Protocol("closed before its hello".into())),
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}
