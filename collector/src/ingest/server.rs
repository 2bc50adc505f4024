//! The live collector: a TCP server that accepts many producers at once.
//!
//! Each connection is decoded on its own task with the sans-IO
//! [`decode_frame`], under the frame cap, a handshake deadline and an idle
//! timeout; a peer sending garbage, an oversized frame, a wrong version, a
//! wrong token or nothing at all is refused, logged and counted, and others
//! are unaffected. Decoded frames go through one bounded queue to the task
//! that applies them to the [`Model`]: when it is full, event batches are
//! dropped (their callsites kept) and counted, so a slow consumer never
//! slows the producers. Readers ([`ServerHandle`]) lock the model briefly.
//!
//! Viewers (`awaitscope --connect ADDR`) connect to the same port; their
//! greeting tells them apart from producers (see [`super::viewer`] for the
//! protocol, the late-join rebuild and the per-viewer queues). The task that
//! applies frames to the model also appends them to each viewer's queue, so
//! viewers see frames in the order the model does.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use awaitscope_wire::{decode_frame, Body, DecodeError, Event, Frame, Preamble, ProcessKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};
use tracing::{info, warn};

use super::viewer::{self, Outgoing, Pushed, ViewerQueue, Viewers};
use crate::{Config, Model, Report};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6670";

/// Configuration of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (loopback unless `allow_remote`).
    pub listen: SocketAddr,
    /// Allow a non-loopback address (requires `token`).
    pub allow_remote: bool,
    /// Token producers must present in their `Hello`.
    pub token: Option<String>,
    /// Write what each connection sends to a recording in this directory.
    pub record_dir: Option<PathBuf>,
    /// Time a new connection has to send the preamble and its `Hello`.
    pub handshake_timeout: Duration,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Frames queued between connections and the model.
    pub queue_capacity: usize,
    /// Period of the detectors' scan (wall clock).
    pub scan_interval: Duration,
    /// Most simultaneous connections (producers and viewers).
    pub max_connections: usize,
    /// Bytes queued for one viewer before event batches for it are dropped.
    pub viewer_queue_bytes: usize,
    /// Model configuration.
    pub model: Config,
    /// Where every frame applied is also sent, without waiting (a full
    /// channel drops the frame): `serve --otlp`'s forwarder.
    pub frame_tap: Option<std::sync::mpsc::SyncSender<Frame>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid address"),
            allow_remote: false,
            token: None,
            record_dir: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            queue_capacity: 4096,
            scan_interval: Duration::from_secs(1),
            max_connections: 1024,
            viewer_queue_bytes: 8 << 20,
            model: Config::default(),
            frame_tap: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback address without `--allow-remote`.
    #[error(
        "refusing to listen on non-loopback address {0} without --allow-remote (and a --token)"
    )]
    RemoteNotAllowed(SocketAddr),
    /// `--allow-remote` without a token.
    #[error(
        "--allow-remote requires a token (--token or AWAITSCOPE_TOKEN) that producers must present"
    )]
    TokenRequired,
    /// The record directory is unusable.
    #[error("record directory {path}: {source}")]
    RecordDir {
        /// The directory given as `--record-dir`.
        path: PathBuf,
        /// Why it could not be created.
        source: std::io::Error,
    },
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address given as `--listen`.
        addr: SocketAddr,
        /// Why binding it failed (in use, not local, no permission...).
        source: std::io::Error,
    },
}

/// Counters of the server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections that completed a handshake.
    pub producers: AtomicU64,
    /// Refused: not an awaitscope stream (bad magic or malformed frame).
    pub refused_garbage: AtomicU64,
    /// Refused: unsupported format version.
    pub refused_version: AtomicU64,
    /// Refused: a frame over the size cap.
    pub refused_oversized: AtomicU64,
    /// Refused: missing or wrong token.
    pub refused_token: AtomicU64,
    /// Refused: no handshake in time, or idle too long.
    pub refused_timeout: AtomicU64,
    /// Refused: protocol violation (first frame not `Hello`, process changed).
    pub refused_protocol: AtomicU64,
    /// Refused: too many connections.
    pub refused_busy: AtomicU64,
    /// Connections that ended inside a frame (producer killed mid-write).
    pub truncated: AtomicU64,
    /// Connections that ended without `Goodbye`.
    pub lost: AtomicU64,
    /// Frames received.
    pub frames: AtomicU64,
    /// Events received.
    pub events: AtomicU64,
    /// Event frames dropped because the queue was full.
    pub dropped_frames: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped_events: AtomicU64,
    /// Recording write failures.
    pub record_errors: AtomicU64,
    /// Viewers that completed a handshake.
    pub viewers: AtomicU64,
    /// Viewers connected now.
    pub viewers_active: AtomicU64,
    /// Event frames dropped for slow viewers (each viewer counts).
    pub viewer_dropped_frames: AtomicU64,
    /// Events dropped for slow viewers (each viewer counts).
    pub viewer_dropped_events: AtomicU64,
}

impl ServerStats {
    /// All refusals.
    pub fn refused(&self) -> u64 {
        [
            &self.refused_garbage,
            &self.refused_version,
            &self.refused_oversized,
            &self.refused_token,
            &self.refused_timeout,
            &self.refused_protocol,
            &self.refused_busy,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

enum Input {
    Frame(Frame),
    Disconnected { key: ProcessKey, clean: bool },
}

/// What the accept loop, the connection tasks, the applying task, the
/// scanning task and every [`ServerHandle`] share: the model (behind its
/// lock), the counters, the ingest queue's drops not yet moved into the
/// model, and the viewers that applied frames are forwarded to.
struct ServerState {
    cfg: ServerConfig,
    model: Mutex<Model>,
    stats: ServerStats,
    drops: Mutex<HashMap<ProcessKey, u64>>,
    conn_ids: AtomicU64,
    viewers: Viewers,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ServerState {
    /// Moves the ingest queue's drops into the model (under its lock), and
    /// tells the viewers.
    fn merge_drops(&self, model: &mut Model) {
        let drops = std::mem::take(&mut *lock(&self.drops));
        if drops.is_empty() {
            return;
        }
        let viewers = self.viewers.list();
        for (k, n) in drops {
            model.note_collector_drops(k, n);
            for v in viewers.iter() {
                v.note_drops(k, n);
            }
        }
    }

    /// Appends what the model just applied to every viewer's queue (under
    /// the model lock: a viewer registered meanwhile has it in its rebuild).
    fn forward(&self, batch: &[Input], encoded: &mut Option<Vec<Option<Outgoing>>>) {
        let viewers = self.viewers.list();
        if viewers.is_empty() {
            return;
        }
        let out = encoded.get_or_insert_with(|| encode_inputs(batch));
        for o in out.iter().flatten() {
            for v in viewers.iter() {
                if let Pushed::Dropped { events } = v.push(o) {
                    self.stats
                        .viewer_dropped_frames
                        .fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .viewer_dropped_events
                        .fetch_add(events, Ordering::Relaxed);
                }
            }
        }
    }
}

fn encode_inputs(batch: &[Input]) -> Vec<Option<Outgoing>> {
    batch
        .iter()
        .map(|i| match i {
            Input::Frame(f) => Outgoing::frame(f),
            Input::Disconnected { key, clean } => Some(Outgoing::control(
                &viewer::Control::Disconnected {
                    process: *key,
                    clean: *clean,
                },
                *key,
            )),
        })
        .collect()
}

/// Access to a running server's model and counters.
#[derive(Clone)]
pub struct ServerHandle {
    state: Arc<ServerState>,
}

impl ServerHandle {
    /// Runs `f` on the model (hold it briefly: ingest waits meanwhile).
    pub fn with_model<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        let mut m = lock(&self.state.model);
        self.state.merge_drops(&mut m);
        f(&m)
    }

    /// The current report.
    pub fn report(&self) -> Report {
        self.with_model(Report::from_model)
    }

    /// The server's counters (connections, frames, drops), updated live
    /// without the model lock.
    pub fn stats(&self) -> &ServerStats {
        &self.state.stats
    }
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    state: Arc<ServerState>,
}

impl Server {
    /// Checks the configuration and binds the listener.
    pub async fn bind(cfg: ServerConfig) -> Result<Server, ServeError> {
        if !cfg.listen.ip().is_loopback() && !cfg.allow_remote {
            return Err(ServeError::RemoteNotAllowed(cfg.listen));
        }
        if cfg.allow_remote && cfg.token.as_deref().is_none_or(str::is_empty) {
            return Err(ServeError::TokenRequired);
        }
        if let Some(dir) = &cfg.record_dir {
            std::fs::create_dir_all(dir).map_err(|source| ServeError::RecordDir {
                path: dir.clone(),
                source,
            })?;
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let model = Model::new(cfg.model.clone());
        Ok(Server {
            listener,
            state: Arc::new(ServerState {
                cfg,
                model: Mutex::new(model),
                stats: ServerStats::default(),
                drops: Mutex::new(HashMap::new()),
                conn_ids: AtomicU64::new(0),
                viewers: Viewers::default(),
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// A handle to the model and counters.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let state = self.state;
        let (tx, mut rx) = mpsc::channel::<Input>(state.cfg.queue_capacity.max(1));
        let mut tasks = JoinSet::new();
        let applier = state.clone();
        tasks.spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                // Encoded for viewers outside the model lock (when there
                // are any; checked again under the lock).
                let mut encoded = applier.viewers.any().then(|| encode_inputs(&batch));
                let wall = unix_now();
                let mut m = lock(&applier.model);
                for input in &batch {
                    match input {
                        Input::Frame(f) => {
                            m.apply_live(f, wall);
                            if let Some(tap) = &applier.cfg.frame_tap {
                                let _ = tap.try_send(f.clone());
                            }
                        }
                        Input::Disconnected { key, clean } => m.disconnected(*key, *clean),
                    }
                }
                applier.forward(&batch, &mut encoded);
                drop(m);
                batch.clear();
            }
        });
        let scanner = state.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(scanner.cfg.scan_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut logged = 0;
            loop {
                tick.tick().await;
                let now = unix_now();
                let mut m = lock(&scanner.model);
                scanner.merge_drops(&mut m);
                m.scan_wall(now);
                let list = m.findings().list();
                for f in list.iter().skip(logged) {
                    warn!(kind = %f.kind, pid = f.pid, "finding: {}", f.message);
                }
                logged = list.len();
            }
        });
        let limit = Arc::new(tokio::sync::Semaphore::new(
            state.cfg.max_connections.max(1),
        ));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    state.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        state.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                        warn!(%peer, "refused connection: too many connections ({})", state.cfg.max_connections);
                        continue;
                    };
                    let (state, tx) = (state.clone(), tx.clone());
                    conns.spawn(async move {
                        state.stats.active.fetch_add(1, Ordering::Relaxed);
                        connection(&state, &tx, stream, peer).await;
                        state.stats.active.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
            }
        }
        conns.shutdown().await;
        drop(tx);
        tasks.shutdown().await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Why a connection was refused or closed early.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("not an awaitscope stream: {0}")]
    Garbage(String),
    #[error("{0}")]
    Version(DecodeError),
    #[error("{0}")]
    Oversized(DecodeError),
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
}

impl Refusal {
    fn count(&self, s: &ServerStats) {
        let c = match self {
            Refusal::Garbage(_) => &s.refused_garbage,
            Refusal::Version(_) | Refusal::ViewerVersion(_) => &s.refused_version,
            Refusal::Oversized(_) | Refusal::ViewerOversized(_) => &s.refused_oversized,
            Refusal::Token | Refusal::ViewerToken => &s.refused_token,
            Refusal::Timeout(_) => &s.refused_timeout,
            Refusal::Protocol(_) => &s.refused_protocol,
            Refusal::Io(_) => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn token_ok(expected: &str, got: Option<&str>) -> bool {
    let Some(got) = got else { return false };
    let (a, b) = (expected.as_bytes(), got.as_bytes());
    // Length leaks; contents compared without early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Conn {
    key: Option<ProcessKey>,
    clean: bool,
    name: String,
    /// Callsites of dropped batches, sent with the next batch that fits.
    pending_callsites: Vec<Event>,
    recorder: Option<BufWriter<tokio::fs::File>>,
    record_path: Option<PathBuf>,
}

async fn connection(
    state: &ServerState,
    tx: &mpsc::Sender<Input>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let handshake_deadline = Instant::now() + state.cfg.handshake_timeout;
    let first = match sniff(&mut stream, handshake_deadline).await {
        Ok(first) => first,
        Err(r) => {
            r.count(&state.stats);
            warn!(%peer, "refused connection: {r}");
            return;
        }
    };
    if viewer::is_viewer_prefix(&first) {
        viewer_connection(state, stream, peer, first, handshake_deadline).await;
        return;
    }
    let mut conn = Conn {
        key: None,
        clean: false,
        name: String::new(),
        pending_callsites: Vec::new(),
        recorder: None,
        record_path: None,
    };
    let result = serve_conn(
        state,
        tx,
        stream,
        peer,
        &mut conn,
        first,
        handshake_deadline,
    )
    .await;
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

/// Reads the first bytes of a connection until they tell a viewer (the
/// whole [`viewer::VIEWER_MAGIC`]) from anything else (a producer, or
/// garbage the producer path refuses).
async fn sniff(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Refusal> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while buf.is_empty()
        || (viewer::is_viewer_prefix(&buf) && buf.len() < viewer::VIEWER_MAGIC.len())
    {
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => {
                return Err(Refusal::Timeout(
                    "no handshake (preamble and hello) in time",
                ))
            }
            Ok(Err(e)) => return Err(Refusal::Io(e)),
            Ok(Ok(0)) if buf.is_empty() => {
                return Err(Refusal::Protocol("closed before sending anything".into()))
            }
            Ok(Ok(0)) => return Err(Refusal::Protocol("closed before its hello".into())),
            Ok(Ok(_)) => {}
        }
    }
    Ok(buf)
}

#[allow(clippy::too_many_arguments)]
async fn serve_conn(
    state: &ServerState,
    tx: &mpsc::Sender<Input>,
    mut stream: TcpStream,
    peer: SocketAddr,
    conn: &mut Conn,
    mut buf: Vec<u8>,
    handshake_deadline: Instant,
) -> Result<(), Refusal> {
    let cfg = &state.cfg;
    let mut pos = 0usize;
    let mut offset = Preamble::LEN as u64;
    let mut have_preamble = false;
    let mut dirty = false;
    loop {
        // Decode what is buffered.
        if !have_preamble {
            match Preamble::parse(&buf) {
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
                match decode_frame(&buf[pos..], offset) {
                    Ok(Some((frame, used))) => {
                        let raw = &buf[pos..pos + used];
                        if let Some(w) = conn.recorder.as_mut() {
                            if let Err(e) = w.write_all(raw).await {
                                state.stats.record_errors.fetch_add(1, Ordering::Relaxed);
                                warn!(%peer, "recording {:?} failed, stopped: {e}", conn.record_path);
                                conn.recorder = None;
                            }
                            dirty = true;
                        }
                        pos += used;
                        offset += used as u64;
                        let first = conn.key.is_none();
                        handle_frame(state, tx, frame, peer, conn).await?;
                        if first {
                            if let (Some(dir), Some(w)) = (&cfg.record_dir, conn.key) {
                                open_recorder(
                                    state,
                                    dir,
                                    w,
                                    raw_hello(&buf, pos, used),
                                    conn,
                                    peer,
                                )
                                .await;
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
        // Compact and read more.
        if pos > 0 {
            buf.drain(..pos);
            pos = 0;
        }
        if dirty {
            if let Some(w) = conn.recorder.as_mut() {
                let _ = w.flush().await;
            }
            dirty = false;
        }
        buf.reserve(64 * 1024);
        let deadline = if conn.key.is_none() {
            handshake_deadline
        } else {
            Instant::now() + cfg.idle_timeout
        };
        let n = match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) if conn.key.is_none() => {
                return Err(Refusal::Timeout(
                    "no handshake (preamble and hello) in time",
                ))
            }
            Err(_) => return Err(Refusal::Timeout("idle timeout")),
            Ok(Err(e)) => return Err(Refusal::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            if conn.key.is_none() {
                return Err(if buf.is_empty() {
                    Refusal::Protocol("closed before sending anything".into())
                } else {
                    Refusal::Protocol("closed before its hello".into())
                });
            }
            if !buf.is_empty() {
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

fn raw_hello(buf: &[u8], pos: usize, used: usize) -> Vec<u8> {
    buf[pos - used..pos].to_vec()
}

/// A `Hello` frame as it is recorded: without the producer's token, which
/// must never reach a file. Frames that do not decode are kept as they are
/// (the connection was refused before, or will be).
fn without_token(hello: Vec<u8>) -> Vec<u8> {
    let Ok(Some((mut frame, _))) = awaitscope_wire::decode_frame(&hello, 0) else {
        return hello;
    };
    match &mut frame.body {
        Body::Hello(info) if info.token.is_some() => info.token = None,
        _ => return hello,
    }
    let mut out = Vec::with_capacity(hello.len());
    match awaitscope_wire::encode_frame(&frame, &mut out) {
        Ok(()) => out,
        Err(_) => hello,
    }
}

async fn open_recorder(
    state: &ServerState,
    dir: &std::path::Path,
    key: ProcessKey,
    hello: Vec<u8>,
    conn: &mut Conn,
    peer: SocketAddr,
) {
    let id = state.conn_ids.fetch_add(1, Ordering::Relaxed);
    let name: String = conn
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let base = format!("{name}-{}-{}-{id}", key.pid, key.start_unix_ns);
    let hello = without_token(hello);
    let mut path = dir.join(format!("{base}.rec"));
    let res = async {
        // Never over an earlier recording: a `serve` restarted numbers its
        // connections from 0 again, and a producer that reconnects keeps
        // its pid and start time.
        let mut n = 0;
        let f = loop {
            let mut o = tokio::fs::OpenOptions::new();
            o.write(true).create_new(true);
            // Recordings hold what programs did: readable by their owner.
            #[cfg(unix)]
            o.mode(0o600);
            match o.open(&path).await {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                    n += 1;
                    path = dir.join(format!("{base}-{n}.rec"));
                }
                Err(e) => return Err(e),
            }
        };
        let mut w = BufWriter::new(f);
        w.write_all(&awaitscope_wire::preamble()).await?;
        w.write_all(&hello).await?;
        w.flush().await?;
        Ok::<_, std::io::Error>(w)
    }
    .await;
    match res {
        Ok(w) => {
            info!(%peer, "recording to {}", path.display());
            conn.recorder = Some(w);
            conn.record_path = Some(path);
        }
        Err(e) => {
            state.stats.record_errors.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "cannot record to {}: {e}", path.display());
        }
    }
}

async fn handle_frame(
    state: &ServerState,
    tx: &mpsc::Sender<Input>,
    frame: Frame,
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
                    return Err(Refusal::Token);
                }
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
    match &mut frame.body {
        Body::Events(ev) => {
            let n = ev.len() as u64;
            stats.events.fetch_add(n, Ordering::Relaxed);
            if !conn.pending_callsites.is_empty() {
                let mut all = std::mem::take(&mut conn.pending_callsites);
                all.append(ev);
                *ev = all;
            }
            match tx.try_send(Input::Frame(frame)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(Input::Frame(f))) => {
                    stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
                    stats.dropped_events.fetch_add(n, Ordering::Relaxed);
                    *lock(&state.drops).entry(key).or_default() += n;
                    // Keep the callsites: later events refer to them.
                    if let Body::Events(ev) = f.body {
                        conn.pending_callsites
                            .extend(ev.into_iter().filter(|e| matches!(e, Event::Callsite(_))));
                    }
                }
                Err(_) => {}
            }
        }
        Body::Goodbye => {
            conn.clean = true;
            let _ = tx.send(Input::Frame(frame)).await;
        }
        // Cumulative: the next one carries it if this one does not fit.
        Body::Dropped(_) => {
            let _ = tx.try_send(Input::Frame(frame));
        }
        Body::Hello(_) => {
            let _ = tx.send(Input::Frame(frame)).await;
        }
    }
    Ok(())
}

/// A viewer's connection: greeting, token, rebuild, then the frames the
/// model applies, until the viewer leaves.
async fn viewer_connection(
    state: &ServerState,
    mut stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    deadline: Instant,
) {
    if let Err(r) = viewer_handshake(state, &mut stream, buf, deadline).await {
        r.count(&state.stats);
        warn!(%peer, "refused viewer: {r}");
        // Tell the viewer why (best effort, briefly).
        let msg = viewer::reply(Some(&r.to_string()));
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&msg)).await;
        return;
    }
    let q = Arc::new(ViewerQueue::new(state.cfg.viewer_queue_bytes));
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
    state.stats.viewers.fetch_add(1, Ordering::Relaxed);
    state.stats.viewers_active.fetch_add(1, Ordering::Relaxed);
    info!(%peer, processes, bytes = first.len(), "viewer connected");
    let result = viewer_loop(state, &mut stream, &q, first).await;
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

/// Reads and checks a viewer's greeting (`buf` holds its first bytes).
async fn viewer_handshake(
    state: &ServerState,
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Result<(), Refusal> {
    use viewer::GreetingError as G;
    let greeting = loop {
        match viewer::parse_greeting(&buf) {
            Ok(Some(g)) => break g,
            Ok(None) => {}
            Err(e @ G::Version { .. }) => return Err(Refusal::ViewerVersion(e.to_string())),
            Err(e @ G::TokenTooLong(_)) => return Err(Refusal::ViewerOversized(e.to_string())),
            Err(e @ (G::BadMagic | G::TokenNotUtf8)) => {
                return Err(Refusal::Garbage(format!("viewer greeting: {e}")))
            }
        }
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(Refusal::Timeout("no viewer greeting in time")),
            Ok(Err(e)) => return Err(Refusal::Io(e)),
            Ok(Ok(0)) => return Err(Refusal::Protocol("closed before its greeting".into())),
            Ok(Ok(_)) => {}
        }
    };
    if buf.len() > greeting.len {
        return Err(Refusal::Protocol(
            "viewer sent data after its greeting".into(),
        ));
    }
    if let Some(expected) = &state.cfg.token {
        if !token_ok(expected, greeting.token.as_deref()) {
            return Err(Refusal::ViewerToken);
        }
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
) -> Result<String, Refusal> {
    let stall = state.cfg.idle_timeout;
    let (mut rd, mut wr) = stream.split();
    let mut out = first;
    let mut items = Vec::new();
    let mut scratch = [0u8; 256];
    loop {
        if !out.is_empty() {
            match tokio::time::timeout(stall, wr.write_all(&out)).await {
                Err(_) => return Err(Refusal::Timeout("viewer not reading (write stalled)")),
                Ok(Err(e)) => return Ok(format!("write failed: {e}")),
                Ok(Ok(())) => out.clear(),
            }
        }
        q.take(&mut items);
        if items.is_empty() {
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
        // Coalesce small messages into one write.
        for b in items.drain(..) {
            out.extend_from_slice(&b);
        }
        if out.capacity() > 4 << 20 && out.len() < 64 * 1024 {
            out.shrink_to(64 * 1024);
        }
    }
}
