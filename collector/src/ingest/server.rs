//! The live collector: a TCP server that accepts many producers at once.
//!
//! Each connection is decoded on its own task (see [`super::producer`])
//! with the sans-IO [`awaitscope_wire::decode_frame`], under the frame cap,
//! a handshake deadline and an idle timeout that only whole frames put off;
//! a peer sending garbage, an oversized frame, a wrong version, a wrong
//! token or nothing at all is refused, logged and counted, and others are
//! unaffected. Who holds a connection slot, and who gives one up to a new
//! peer, is [`super::admission`]'s; every buffer is held against one memory
//! budget ([`super::budget`], `--memory-budget`). Decoded frames go through
//! one bounded queue to the task that applies them to the [`Model`]: when
//! it is full, event batches are dropped (their callsites kept) and
//! counted, so a slow consumer never slows the producers. Readers
//! ([`ServerHandle`]) lock the model briefly.
//!
//! Processes that ended are evicted from the model after
//! [`ServerConfig::retention`]; the report keeps their summary and
//! findings, so a long-running serve holds what is live.
//!
//! Viewers (`awaitscope --connect ADDR`) connect to the same port; their
//! greeting tells them apart from producers (see [`super::viewer`] for the
//! protocol, the late-join rebuild and the per-viewer queues). The task that
//! applies frames to the model also appends them to each viewer's queue, so
//! viewers see frames in the order the model does.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use awaitscope_wire::{Frame, ProcessKey};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::admission::{Admission, Refused};
use super::budget::{MemoryBudget, Reservation, Share, DEFAULT_MEMORY_BUDGET};
use super::connection::connection;
use super::viewer::{self, Outgoing, Pushed, Viewers};
use crate::report::EvictedProcess;
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
    /// Connections at most still in their handshake; a new one beyond it
    /// closes the oldest.
    pub max_pending: usize,
    /// A connection without progress for this long gives its slot to a new
    /// one when every slot is taken.
    pub idle_grace: Duration,
    /// Bytes queued for one viewer before event batches for it are dropped
    /// (less when many viewers share the budget).
    pub viewer_queue_bytes: usize,
    /// Bytes the server's buffers and queues may hold in all (see
    /// [`super::budget`] for how they are shared).
    pub memory_budget: usize,
    /// An ended process is evicted from the model this long after its end
    /// (its summary and findings stay in the report).
    pub retention: Duration,
    /// Summaries of evicted processes kept for the report, at most.
    pub max_evicted: usize,
    /// Model configuration.
    pub model: Config,
    /// Where every frame applied is also sent, without waiting:
    /// `serve --otlp`'s forwarder. A frame that finds the channel full, or
    /// no room in the ingest share of the memory budget, is not sent, and
    /// counted ([`ServerStats::tap_dropped_frames`]).
    pub frame_tap: Option<std::sync::mpsc::SyncSender<TappedFrame>>,
}

/// A frame the server applied, for its [`ServerConfig::frame_tap`]; its
/// memory is held against the budget until the receiver drops it.
pub struct TappedFrame {
    /// The frame.
    pub frame: Frame,
    _held: Reservation,
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
            max_pending: 256,
            idle_grace: Duration::from_secs(10),
            viewer_queue_bytes: 8 << 20,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            retention: Duration::from_secs(600),
            max_evicted: 1000,
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
    /// Refused: too many connections, all making progress.
    pub refused_busy: AtomicU64,
    /// Refused: the memory budget's share for it was used up.
    pub refused_memory: AtomicU64,
    /// Refused at once: the peer's token was wrong too often lately.
    pub refused_backoff: AtomicU64,
    /// Closed while still in the handshake, to make room for a new
    /// connection.
    pub evicted_pending: AtomicU64,
    /// Closed after making no progress, to make room for a new connection.
    pub evicted_idle: AtomicU64,
    /// Ended processes evicted from the model after the retention.
    pub processes_evicted: AtomicU64,
    /// Frames not sent to the frame tap (its channel full, or no room in
    /// the budget).
    pub tap_dropped_frames: AtomicU64,
    /// Events in them.
    pub tap_dropped_events: AtomicU64,
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
            &self.refused_memory,
            &self.refused_backoff,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// What connections hand to the task that applies frames to the model.
pub(crate) enum Input {
    /// A frame, and its memory held against the budget until applied
    /// (given back when the input is dropped).
    Frame(Frame, #[allow(dead_code)] Reservation),
    /// A producer's connection ended.
    Disconnected { key: ProcessKey, clean: bool },
}

/// What the accept loop, the connection tasks, the applying task, the
/// scanning task and every [`ServerHandle`] share: the model (behind its
/// lock), the counters, the ingest queue's drops not yet moved into the
/// model, and the viewers that applied frames are forwarded to.
pub(crate) struct ServerState {
    pub(crate) cfg: ServerConfig,
    pub(crate) model: Mutex<Model>,
    pub(crate) stats: ServerStats,
    pub(crate) drops: Mutex<HashMap<ProcessKey, u64>>,
    pub(crate) conn_ids: AtomicU64,
    pub(crate) viewers: Viewers,
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) admission: Arc<Admission>,
    /// Processes whose connection ended, and when, oldest first.
    ended: Mutex<VecDeque<(ProcessKey, Instant)>>,
    /// What the report keeps of evicted processes, oldest first.
    evicted: Mutex<VecDeque<EvictedProcess>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ServerState {
    /// Moves the ingest queue's drops into the model (under its lock), and
    /// tells the viewers.
    pub(crate) fn merge_drops(&self, model: &mut Model) {
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
        // One viewer's part of the share: many viewers that do not read
        // stay within the budget together.
        let fair = self.budget.cap(Share::Viewers) / viewers.len();
        for o in out.iter().flatten() {
            for v in viewers.iter() {
                if let Pushed::Dropped { events } = v.push(o, fair) {
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
            Input::Frame(f, _) => Outgoing::frame(f),
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

    /// The current report, with what is kept of evicted processes.
    pub fn report(&self) -> Report {
        let mut r = self.with_model(Report::from_model);
        let evicted = lock(&self.state.evicted);
        r.add_evicted(evicted.iter());
        let lost = self
            .state
            .stats
            .processes_evicted
            .load(Ordering::Relaxed)
            .saturating_sub(evicted.len() as u64);
        if lost > 0 {
            r.warnings.push(format!(
                "{lost} earlier ended processes were evicted and their summaries not kept \
                 (at most {} are); their findings are listed",
                self.state.cfg.max_evicted
            ));
        }
        r
    }

    /// The memory budget and what its shares hold.
    pub fn budget(&self) -> &MemoryBudget {
        &self.state.budget
    }

    /// Connections holding a slot now, and those among them still in their
    /// handshake.
    pub fn connections(&self) -> (usize, usize) {
        self.state.admission.counts()
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
        let budget = MemoryBudget::new(cfg.memory_budget);
        let admission = Arc::new(Admission::new(
            cfg.max_connections,
            cfg.max_pending,
            cfg.idle_grace,
        ));
        Ok(Server {
            listener,
            state: Arc::new(ServerState {
                budget,
                admission,
                ended: Mutex::default(),
                evicted: Mutex::default(),
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
                        Input::Frame(f, _) => {
                            m.apply_live(f, wall);
                            if let Some(tap) = &applier.cfg.frame_tap {
                                applier.tap(tap, f);
                            }
                        }
                        Input::Disconnected { key, clean } => {
                            m.disconnected(*key, *clean);
                            lock(&applier.ended).push_back((*key, Instant::now()));
                        }
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
                let evicted = scanner.evict_ended(&mut m);
                drop(m);
                if evicted > 0 {
                    info!(
                        processes = evicted,
                        "evicted ended processes after the retention"
                    );
                    give_back_freed_memory();
                }
            }
        });
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
                    let slot = match state.admission.admit(peer.ip()) {
                        Ok((slot, evicted)) => {
                            if evicted.pending {
                                state.stats.evicted_pending.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(kind) = evicted.idle {
                                state.stats.evicted_idle.fetch_add(1, Ordering::Relaxed);
                                info!(%peer, ?kind, "closing the connection idle longest to admit a new one");
                            }
                            slot
                        }
                        Err(Refused::Busy) => {
                            state.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                            warn!(%peer, "refused connection: busy (every slot of {} making progress, or {} new connections in their handshake)", state.cfg.max_connections, state.cfg.max_pending);
                            continue;
                        }
                        Err(Refused::Backoff(wait)) => {
                            state.stats.refused_backoff.fetch_add(1, Ordering::Relaxed);
                            warn!(%peer, "refused connection: too many wrong tokens from {}; retry in {} s", peer.ip(), wait.as_secs() + 1);
                            continue;
                        }
                    };
                    let (state, tx) = (state.clone(), tx.clone());
                    conns.spawn(async move {
                        state.stats.active.fetch_add(1, Ordering::Relaxed);
                        connection(&state, &tx, stream, peer, slot).await;
                        state.stats.active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
        }
        conns.shutdown().await;
        drop(tx);
        tasks.shutdown().await;
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl ServerState {
    /// Sends a copy of `f` to the frame tap, or counts it.
    fn tap(&self, tap: &std::sync::mpsc::SyncSender<TappedFrame>, f: &Frame) {
        let sent = self
            .budget
            .reserve(Share::Ingest, super::budget::frame_cost(f, 0))
            .is_some_and(|held| {
                tap.try_send(TappedFrame {
                    frame: f.clone(),
                    _held: held,
                })
                .is_ok()
            });
        if !sent {
            let events = match &f.body {
                awaitscope_wire::Body::Events(e) => e.len() as u64,
                _ => 0,
            };
            self.stats
                .tap_dropped_frames
                .fetch_add(1, Ordering::Relaxed);
            self.stats
                .tap_dropped_events
                .fetch_add(events, Ordering::Relaxed);
        }
    }

    /// Evicts the processes that ended more than the retention ago (and
    /// did not come back), keeping their summaries; returns how many.
    fn evict_ended(&self, model: &mut Model) -> usize {
        let now = Instant::now();
        let mut ended = lock(&self.ended);
        let mut n = 0;
        while let Some((key, at)) = ended.front().copied() {
            if now.saturating_duration_since(at) < self.cfg.retention {
                break;
            }
            ended.pop_front();
            // A producer that reconnected is live again: kept.
            let reconnected = model.process(&key).is_none_or(|p| p.connected)
                || ended.iter().any(|(k, _)| *k == key);
            if reconnected {
                continue;
            }
            if let Some(p) = model.evict(&key) {
                // Under the model lock, as frames are: viewers forget it in
                // the order the model did.
                let out = Outgoing::control(&viewer::Control::Evicted { process: key }, key);
                for v in self.viewers.list().iter() {
                    v.push(&out, usize::MAX);
                }
                let mut evicted = lock(&self.evicted);
                if evicted.len() >= self.cfg.max_evicted.max(1) {
                    evicted.pop_front();
                }
                evicted.push_back(EvictedProcess::of(&p));
                self.stats.processes_evicted.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }
}

/// Gives memory the allocator keeps after a large free back to the system,
/// so that a serve's footprint follows what it holds (glibc keeps freed
/// memory in its arenas otherwise).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
