//! A producer's connection: its preamble and `Hello` (with the token
//! checked), then frames decoded under the caps and handed to the model
//! through the ingest queue, until its `Goodbye`, its end, or its slot is
//! given to another connection.
//!
//! The idle timeout counts whole frames, not bytes: a peer that trickles a
//! byte at a time makes no progress, and is closed when its time is up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use awaitscope_wire::{decode_frame, Body, DecodeError, Event, Frame, Preamble, ProcessKey};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tracing::{info, warn};

use super::admission::{token_ok, Kind, Slot};
use super::budget::{frame_cost, Share};
use super::connection::{ReadBuf, Refusal, MAX_HELLO_FRAME};
use super::give_back::{give_back, GiveBack, GivenBack};
use super::record_dir;
use super::state::{lock, Input, ServerState};

/// Most bytes a producer's buffer holds: one frame at the cap, and a read.
const MAX_BUFFER: usize = awaitscope_wire::MAX_FRAME_LEN + 4 + 64 * 1024;

struct Conn {
    key: Option<ProcessKey>,
    clean: bool,
    name: String,
    /// Callsites of dropped batches, sent with the next batch that fits.
    pending_callsites: Vec<Event>,
    recorder: Option<BufWriter<tokio::fs::File>>,
    record_path: Option<PathBuf>,
    /// Where the model's task gives this connection's applied frames back,
    /// and where they come back: their memory holds the next frames'
    /// events.
    give_back: GiveBack,
    given_back: GivenBack,
}

pub(crate) async fn producer_connection(
    state: &ServerState,
    tx: &mpsc::Sender<Input>,
    stream: TcpStream,
    peer: SocketAddr,
    rb: ReadBuf,
    handshake_deadline: Instant,
    slot: &Slot,
) {
    let (give_back, given_back) = give_back();
    let mut conn = Conn {
        key: None,
        clean: false,
        name: String::new(),
        pending_callsites: Vec::new(),
        recorder: None,
        record_path: None,
        give_back,
        given_back,
    };
    let result = tokio::select! {
        r = serve_conn(state, tx, &stream, peer, &mut conn, rb, handshake_deadline, slot) => r,
        _ = slot.evicted() => Err(Refusal::Evicted(if conn.key.is_none() {
            "the oldest of the connections still in their handshake"
        } else {
            "the connection idle longest"
        })),
    };
    if let Some(w) = conn.recorder.as_mut() {
        if let Err(e) = w.flush().await {
            state.stats.record_errors.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "recording {:?}: {e}", conn.record_path);
        }
    }
    match (&result, conn.key) {
        (Err(r), None) => {
            r.count(&state.stats);
            warn!(%peer, "refused connection: {r}");
        }
        (Err(r), Some(key)) => {
            r.count(&state.stats);
            state.stats.lost.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, pid = key.pid, "closed connection: {r}");
        }
        (Ok(()), Some(key)) if !conn.clean => {
            state.stats.lost.fetch_add(1, Ordering::Relaxed);
            info!(%peer, pid = key.pid, "producer disconnected without goodbye");
        }
        (Ok(()), Some(key)) => info!(%peer, pid = key.pid, "producer said goodbye"),
        (Ok(()), None) => {}
    }
    if let Some(key) = conn.key {
        let _ = tx
            .send(Input::Disconnected {
                key,
                clean: conn.clean,
            })
            .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_conn(
    state: &ServerState,
    tx: &mpsc::Sender<Input>,
    stream: &TcpStream,
    peer: SocketAddr,
    conn: &mut Conn,
    mut rb: ReadBuf,
    handshake_deadline: Instant,
    slot: &Slot,
) -> Result<(), Refusal> {
    let cfg = &state.cfg;
    let told = conn.given_back.told();
    let mut pos = 0usize;
    let mut offset = Preamble::LEN as u64;
    let mut have_preamble = false;
    let mut dirty = false;
    // Progress is a whole frame: the idle clock restarts only then.
    let mut idle_deadline = Instant::now() + cfg.idle_timeout;
    let mut progressed = false;
    loop {
        // Decode what is buffered.
        if !have_preamble {
            match Preamble::parse(&rb.buf) {
                Ok(Some(_)) => {
                    have_preamble = true;
                    pos = Preamble::LEN;
                }
                Ok(None) => {}
                Err(e @ DecodeError::UnsupportedVersion { .. }) => return Err(Refusal::Version(e)),
                Err(e) => return Err(Refusal::Garbage(e.to_string())),
            }
        }
        if have_preamble {
            loop {
                // The frames the model applied since: the one decoded next
                // reuses their memory.
                conn.given_back.take();
                let rest = &rb.buf[pos..];
                if conn.key.is_none() && rest.len() >= 4 {
                    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    if len > MAX_HELLO_FRAME {
                        return Err(Refusal::HelloTooLarge(len));
                    }
                }
                match decode_frame(rest, offset) {
                    Ok(Some((frame, used))) => {
                        let raw = &rb.buf[pos..pos + used];
                        if let Some(w) = conn.recorder.as_mut() {
                            if let Err(e) = w.write_all(raw).await {
                                state.stats.record_errors.fetch_add(1, Ordering::Relaxed);
                                warn!(%peer, "recording {:?} failed, stopped: {e}", conn.record_path);
                                conn.recorder = None;
                            }
                            dirty = true;
                        }
                        let hello = conn.key.is_none().then(|| raw.to_vec());
                        pos += used;
                        offset += used as u64;
                        progressed = true;
                        handle_frame(state, tx, frame, used, peer, conn).await?;
                        if let Some(hello) = hello {
                            // Past the handshake: a producer now.
                            slot.promote(Kind::Producer);
                            if !rb.move_to(state, Share::Ingest) {
                                return Err(Refusal::Memory("producers"));
                            }
                            if let (Some(dir), Some(key)) = (&cfg.record_dir, conn.key) {
                                if let Some(r) =
                                    record_dir::open(state, dir, key, &conn.name, hello, peer).await
                                {
                                    conn.recorder = Some(r.writer);
                                    conn.record_path = Some(r.path);
                                }
                            }
                        }
                        if conn.clean {
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Err(e @ DecodeError::FrameTooLarge { .. }) => {
                        return Err(Refusal::Oversized(e))
                    }
                    Err(e) => return Err(Refusal::Garbage(e.to_string())),
                }
            }
        }
        // Whole frames read: the idle clocks restart (once per read, not
        // per frame: the slots' lock is shared by every connection).
        if std::mem::take(&mut progressed) {
            idle_deadline = Instant::now() + cfg.idle_timeout;
            slot.progress();
        }
        // Compact and read more.
        rb.consume(pos);
        pos = 0;
        if dirty {
            if let Some(w) = conn.recorder.as_mut() {
                let _ = w.flush().await;
            }
            dirty = false;
        }
        let (deadline, limit) = if conn.key.is_none() {
            (handshake_deadline, Preamble::LEN + MAX_HELLO_FRAME + 4)
        } else {
            (idle_deadline, MAX_BUFFER)
        };
        // With no room in the budget (the model behind, or newcomers'
        // handshakes), wait for it: TCP holds the producer back meanwhile.
        // Frames given back while it waits are taken at once (the wait is
        // cancel-safe: it reads only once the socket is readable).
        let read = loop {
            tokio::select! {
                r = timeout_at(deadline, rb.read_waiting(stream, limit)) => break r,
                () = told.notified() => conn.given_back.take(),
            }
        };
        let n = match read {
            Err(_) if conn.key.is_none() => {
                return Err(Refusal::Timeout(
                    "no handshake (preamble and hello) in time",
                ))
            }
            Err(_) => return Err(Refusal::Timeout("idle timeout (no whole frame)")),
            Ok(Err(e)) => return Err(Refusal::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            if conn.key.is_none() {
                return Err(if rb.buf.is_empty() {
                    Refusal::Protocol("closed before sending anything".into())
                } else {
                    Refusal::Protocol("closed before its hello".into())
                });
            }
            if !rb.buf.is_empty() {
                state.stats.truncated.fetch_add(1, Ordering::Relaxed);
                if let Some(k) = conn.key {
                    let msg = format!("connection from {peer} ended inside a frame at offset {offset} (producer killed?)");
                    warn!("{msg}");
                    lock(&state.model).note(k, msg);
                }
            }
            return Ok(());
        }
    }
}

/// Loads the debug info of the modules the batch's native stacks are in
/// (most batches have none), before the model gets them: it symbolises them holding its lock, which
/// viewers' snapshots and every producer's frames wait for, and a large
/// program's debug info takes a tenth of a second and more to load (once
/// per program; see [`crate::symbolize::load_ahead`]). Loaded on a blocking
/// thread, this connection waiting meanwhile: its producer is held back by
/// TCP, as when the budget is full, and no other connection waits.
async fn load_symbols_ahead(events: &[Event], pid: u32) {
    let stacks: Vec<awaitscope_wire::NativeStack> = events
        .iter()
        .filter_map(|e| match e {
            Event::NativeStack(ns) if !crate::symbolize::all_loaded(ns) => Some((**ns).clone()),
            Event::WaitStack(w) | Event::WakeStack(w)
                if !crate::symbolize::all_loaded(&w.stack) =>
            {
                Some(w.stack.clone())
            }
            _ => None,
        })
        .collect();
    if stacks.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for ns in &stacks {
            crate::symbolize::load_ahead(ns, Some(pid));
        }
    })
    .await;
}

async fn handle_frame(
    state: &ServerState,
    tx: &mpsc::Sender<Input>,
    frame: Frame,
    wire_len: usize,
    peer: SocketAddr,
    conn: &mut Conn,
) -> Result<(), Refusal> {
    let stats = &state.stats;
    stats.frames.fetch_add(1, Ordering::Relaxed);
    match conn.key {
        None => {
            let Body::Hello(info) = &frame.body else {
                return Err(Refusal::Protocol("first frame is not a hello".into()));
            };
            if let Some(expected) = &state.cfg.token {
                if !token_ok(expected, info.token.as_deref()) {
                    state.admission.failed(peer.ip());
                    return Err(Refusal::Token);
                }
                state.admission.succeeded(peer.ip());
            }
            info!(%peer, pid = frame.process.pid, name = %info.name, reconnect = info.reconnect, "producer connected");
            stats.producers.fetch_add(1, Ordering::Relaxed);
            conn.key = Some(frame.process);
            conn.name = info.name.clone();
        }
        Some(k) if k != frame.process => {
            return Err(Refusal::Protocol(format!(
                "frame of process {} on the connection of process {}",
                frame.process.pid, k.pid
            )));
        }
        Some(_) => {}
    }
    let key = frame.process;
    let mut frame = frame;
    let cost = frame_cost(&frame, wire_len);
    match &mut frame.body {
        Body::Events(ev) => {
            let n = ev.len() as u64;
            stats.events.fetch_add(n, Ordering::Relaxed);
            load_symbols_ahead(ev, key.pid).await;
            if !conn.pending_callsites.is_empty() {
                let mut all = std::mem::take(&mut conn.pending_callsites);
                all.append(ev);
                *ev = all;
            }
            // Queued only with room in the budget and the queue; dropped
            // (and counted) otherwise, never waited for.
            let back = Some(conn.give_back.clone());
            let sent = match state.budget.reserve(Share::Ingest, cost) {
                Some(res) => tx
                    .try_send(Input::Frame(frame, res, back))
                    .map_err(|e| match e {
                        mpsc::error::TrySendError::Full(Input::Frame(f, ..)) => Some(f),
                        // Shutting down: not a drop.
                        _ => None,
                    }),
                None => Err(Some(frame)),
            };
            if let Err(Some(f)) = sent {
                tracing::debug!(
                    cost,
                    events = n,
                    ingest_held = state.budget.used(Share::Ingest),
                    "dropped a batch: no room in the ingest queue or budget"
                );
                stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
                stats.dropped_events.fetch_add(n, Ordering::Relaxed);
                *lock(&state.drops).entry(key).or_default() += n;
                // Keep the callsites: later events refer to them.
                if let Body::Events(ev) = f.body {
                    conn.pending_callsites
                        .extend(ev.into_iter().filter(|e| matches!(e, Event::Callsite(_))));
                }
            }
        }
        // Small and rare: not held to the budget.
        Body::Goodbye => {
            conn.clean = true;
            let _ = tx
                .send(Input::Frame(frame, state.budget.empty(Share::Ingest), None))
                .await;
        }
        // Cumulative: the next one carries it if this one does not fit.
        Body::Dropped(_) => {
            let _ = tx.try_send(Input::Frame(frame, state.budget.empty(Share::Ingest), None));
        }
        Body::Hello(_) => {
            let _ = tx
                .send(Input::Frame(frame, state.budget.empty(Share::Ingest), None))
                .await;
        }
    }
    Ok(())
}
