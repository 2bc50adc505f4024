//! A newly accepted connection: its first bytes tell a viewer (the whole
//! [`viewer::VIEWER_MAGIC`]) from anything else (a producer, or garbage the
//! producer path refuses), then it is served as one or the other, unless
//! its slot is given to another connection first.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::warn;

use super::admission::Slot;
use super::budget::Share;
use super::connection::{ReadBuf, Refusal, MAX_HELLO_FRAME};
use super::state::ServerState;
use super::{producer, viewer, viewer_conn};

/// A new connection: told apart by its first bytes, then served as a
/// viewer or a producer, unless its slot is given to another connection
/// first.
pub(crate) async fn connection(
    state: &ServerState,
    tx: &tokio::sync::mpsc::Sender<super::state::Input>,
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
