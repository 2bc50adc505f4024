//! A viewer's connection on the server: greeting and token, the first
//! picture of the model (the rebuild), then the frames the model applies,
//! until the viewer leaves, stalls, or its slot is given to another
//! connection.
//!
//! What a viewer holds is held against the viewers' share of the memory
//! budget: its rebuild while it is written, its queue, and the frames
//! being written. A viewer that reads slowly is skipped ahead (its batches
//! dropped and counted, see [`ViewerQueue`]); it never holds more than its
//! part of the share.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::{info, warn};

use super::admission::{token_ok, Kind, Slot};
use super::budget::Share;
use super::connection::{ReadBuf, Refusal};
use super::state::{lock, ServerState};
use super::viewer::{self, ViewerQueue};

/// Bytes of a viewer's write buffer.
const WRITE_BUFFER: usize = 64 * 1024;

pub(crate) async fn viewer_connection(
    state: &ServerState,
    mut stream: TcpStream,
    peer: SocketAddr,
    rb: ReadBuf,
    deadline: Instant,
    slot: &Slot,
) {
    let handshake = tokio::select! {
        r = viewer_handshake(state, &stream, rb, deadline, peer) => r,
        _ = slot.evicted() => Err(Refusal::Evicted("the oldest of the connections still in their handshake")),
    };
    if let Err(r) = handshake {
        r.count(&state.stats);
        warn!(%peer, "refused viewer: {r}");
        // Tell the viewer why (best effort, briefly).
        let msg = viewer::reply(Some(&r.to_string()));
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&msg)).await;
        return;
    }
    slot.promote(Kind::Viewer);
    let q = Arc::new(ViewerQueue::new(
        state.cfg.viewer_queue_bytes,
        state.budget.empty(Share::Viewers),
    ));
    let rebuild = {
        let mut m = lock(&state.model);
        state.merge_drops(&mut m);
        let r = viewer::Rebuild::of(&m);
        state.viewers.add(q.clone());
        r
    };
    // Encoded outside the model lock: what is applied meanwhile waits in
    // the viewer's queue, written after this.
    let processes = rebuild.processes();
    let mut first = viewer::reply(None);
    rebuild.encode(&mut first);
    let held = state
        .budget
        .reserve(Share::Viewers, first.len() + WRITE_BUFFER);
    let Some(held) = held else {
        state.viewers.remove(&q);
        let r = Refusal::Memory("viewers");
        r.count(&state.stats);
        warn!(%peer, bytes = first.len(), "refused viewer: {r}");
        let msg = viewer::reply(Some(&r.to_string()));
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&msg)).await;
        return;
    };
    state.stats.viewers.fetch_add(1, Ordering::Relaxed);
    state.stats.viewers_active.fetch_add(1, Ordering::Relaxed);
    info!(%peer, processes, bytes = first.len(), "viewer connected");
    let result = tokio::select! {
        r = viewer_loop(state, &mut stream, &q, first, held, slot) => r,
        _ = slot.evicted() => Err(Refusal::Evicted("the connection idle longest")),
    };
    state.viewers.remove(&q);
    state.stats.viewers_active.fetch_sub(1, Ordering::Relaxed);
    let (dropped_frames, dropped_events) = q.dropped();
    match result {
        Ok(why) => info!(%peer, dropped_frames, dropped_events, "viewer disconnected: {why}"),
        Err(r) => {
            r.count(&state.stats);
            warn!(%peer, dropped_frames, dropped_events, "closed viewer connection: {r}");
        }
    }
}

/// Reads and checks a viewer's greeting (`rb` holds its first bytes).
async fn viewer_handshake(
    state: &ServerState,
    stream: &TcpStream,
    mut rb: ReadBuf,
    deadline: Instant,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    use viewer::GreetingError as G;
    let greeting = loop {
        match viewer::parse_greeting(&rb.buf) {
            Ok(Some(g)) => break g,
            Ok(None) => {}
            Err(e @ G::Version { .. }) => return Err(Refusal::ViewerVersion(e.to_string())),
            Err(e @ G::TokenTooLong(_)) => return Err(Refusal::ViewerOversized(e.to_string())),
            Err(e @ (G::BadMagic | G::TokenNotUtf8)) => {
                return Err(Refusal::Garbage(format!("viewer greeting: {e}")))
            }
        }
        let limit = viewer::GREETING_MAX;
        match timeout_at(deadline, rb.read_waiting(stream, limit)).await {
            Err(_) => return Err(Refusal::Timeout("no viewer greeting in time")),
            Ok(Err(e)) => return Err(Refusal::Io(e)),
            Ok(Ok(0)) => return Err(Refusal::Protocol("closed before its greeting".into())),
            Ok(Ok(_)) => {}
        }
    };
    if rb.buf.len() > greeting.len {
        return Err(Refusal::Protocol(
            "viewer sent data after its greeting".into(),
        ));
    }
    if let Some(expected) = &state.cfg.token {
        if !token_ok(expected, greeting.token.as_deref()) {
            state.admission.failed(peer.ip());
            return Err(Refusal::ViewerToken);
        }
        state.admission.succeeded(peer.ip());
    }
    Ok(())
}

/// Writes the rebuild, then whatever is queued, until the viewer leaves
/// (`Ok`: why) or misbehaves. A write that makes no progress for the idle
/// timeout ends the connection.
async fn viewer_loop(
    state: &ServerState,
    stream: &mut TcpStream,
    q: &ViewerQueue,
    first: Vec<u8>,
    mut held: super::budget::Reservation,
    slot: &Slot,
) -> Result<String, Refusal> {
    let stall = state.cfg.idle_timeout;
    let (mut rd, wr) = stream.split();
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    let mut items = Vec::new();
    let mut scratch = [0u8; 256];
    match tokio::time::timeout(stall, wr.write_all(&first)).await {
        Err(_) => return Err(Refusal::Timeout("viewer not reading (write stalled)")),
        Ok(Err(e)) => return Ok(format!("write failed: {e}")),
        Ok(Ok(())) => {}
    }
    drop(first);
    held.resize(WRITE_BUFFER);
    loop {
        q.take(&mut items);
        if items.is_empty() {
            match tokio::time::timeout(stall, wr.flush()).await {
                Err(_) => return Err(Refusal::Timeout("viewer not reading (write stalled)")),
                Ok(Err(e)) => return Ok(format!("write failed: {e}")),
                Ok(Ok(())) => {}
            }
            // Up to date: not idle, whatever the time since the last frame.
            slot.progress();
            tokio::select! {
                _ = q.wait() => {}
                r = rd.read(&mut scratch) => match r {
                    Ok(0) => return Ok("closed".into()),
                    Ok(_) => return Err(Refusal::Protocol(
                        "viewer sent data after its greeting".into(),
                    )),
                    Err(e) => return Ok(format!("read failed: {e}")),
                },
            }
            continue;
        }
        for b in items.drain(..) {
            match tokio::time::timeout(stall, wr.write_all(&b)).await {
                Err(_) => return Err(Refusal::Timeout("viewer not reading (write stalled)")),
                Ok(Err(e)) => return Ok(format!("write failed: {e}")),
                Ok(Ok(())) => {}
            }
            q.written(b.len());
        }
        // Once per batch written: the slots' lock is shared.
        slot.progress();
    }
}
