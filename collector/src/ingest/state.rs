//! The state every part of the server shares (the accept loop, the
//! connection tasks, the task applying frames, the scan, the handles): its
//! configuration, counters, model, viewers, budget and slots, and what it
//! does to them outside a connection (forwarding applied frames to
//! viewers and the frame tap, evicting ended processes). Connections and
//! the server both depend on it; it depends on neither.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use awaitscope_wire::{Frame, ProcessKey};
use tokio::time::Instant;

use super::admission::Admission;
use super::budget::{MemoryBudget, Reservation, Share, DEFAULT_MEMORY_BUDGET};
use super::give_back::GiveBack;
use super::viewer::{self, Outgoing, Pushed, Viewers};
use crate::report::EvictedProcess;
use crate::{Config, Model};

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
    /// Findings the OTLP forwarder (`serve --otlp`) did not send, as it
    /// counts them (`OtlpTraces::unsent_findings`): past the most it
    /// sends, or of a process whose frames never reached it.
    pub otlp_unsent_findings: AtomicU64,
    /// Spans the OTLP forwarder left out past the most it keeps
    /// (`OtlpTraces::dropped_spans`).
    pub otlp_dropped_spans: AtomicU64,
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
    /// A frame, its memory held against the budget until applied (given
    /// back when the input is dropped), and where to give the frame back
    /// once applied: its connection, which decodes its next frames into
    /// the memory of this one.
    Frame(Frame, #[allow(dead_code)] Reservation, Option<GiveBack>),
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
    pub(crate) ended: Mutex<VecDeque<(ProcessKey, Instant)>>,
    /// What the report keeps of evicted processes, oldest first.
    pub(crate) evicted: Mutex<VecDeque<EvictedProcess>>,
}

impl ServerState {
    /// The state of a server configured by `cfg`, with an empty model.
    pub(crate) fn new(cfg: ServerConfig) -> ServerState {
        let budget = MemoryBudget::new(cfg.memory_budget);
        let admission = Arc::new(Admission::new(
            cfg.max_connections,
            cfg.max_pending,
            cfg.idle_grace,
        ));
        ServerState {
            model: Mutex::new(Model::new(cfg.model.clone())),
            budget,
            admission,
            ended: Mutex::default(),
            evicted: Mutex::default(),
            cfg,
            stats: ServerStats::default(),
            drops: Mutex::new(HashMap::new()),
            conn_ids: AtomicU64::new(0),
            viewers: Viewers::default(),
        }
    }
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
    pub(crate) fn forward(&self, batch: &[Input], encoded: &mut Option<Vec<Option<Outgoing>>>) {
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

pub(crate) fn encode_inputs(batch: &[Input]) -> Vec<Option<Outgoing>> {
    batch
        .iter()
        .map(|i| match i {
            Input::Frame(f, ..) => Outgoing::frame(f),
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

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl ServerState {
    /// Sends a copy of `f` to the frame tap, or counts it.
    pub(crate) fn tap(&self, tap: &std::sync::mpsc::SyncSender<TappedFrame>, f: &Frame) {
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
    pub(crate) fn evict_ended(&self, model: &mut Model) -> usize {
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
