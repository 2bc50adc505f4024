//! The live collector: a TCP server that accepts many producers at once.
//!
//! Each connection is decoded on its own task (see `ingest::producer`)
//! with the sans-IO [`awaitscope_wire::decode_frame`], under the frame cap,
//! a handshake deadline and an idle timeout that only whole frames put off;
//! a peer sending garbage, an oversized frame, a wrong version, a wrong
//! token or nothing at all is refused, logged and counted, and others are
//! unaffected. Who holds a connection slot, and who gives one up to a new
//! peer, is `ingest::admission`'s; every buffer is held against one memory
//! budget ([`super::budget`], `--memory-budget`). Decoded frames go through
//! one bounded queue to the applier, which applies them to the [`Model`]
//! on a blocking thread (as the periodic scan runs, so that holding the
//! model's lock never parks a runtime worker): when the queue is full,
//! event batches are dropped (their callsites kept) and counted, so a slow
//! consumer never slows the producers. Readers ([`ServerHandle`]) lock the
//! model briefly.
//!
//! Processes that ended are evicted from the model after
//! [`ServerConfig::retention`]; the report keeps their summary and
//! findings, so a long-running serve holds what is live.
//!
//! Viewers (`awaitscope --connect ADDR`) connect to the same port; their
//! greeting tells them apart from producers (see [`super::viewer`] for the
//! protocol, the late-join rebuild and the per-viewer queues). The applier
//! of frames to the model also appends them to each viewer's queue, so
//! viewers see frames in the order the model does.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::accept::connection;
use super::admission::Refused;
use super::budget::MemoryBudget;
use super::state::{encode_inputs, lock, unix_now, Input, ServerState};
pub use super::state::{ServerConfig, ServerStats, TappedFrame, DEFAULT_LISTEN};
use crate::{Model, Report};

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
        Ok(Server {
            listener,
            state: Arc::new(ServerState::new(cfg)),
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
        // The applier and the scanner hold the model's lock (a std mutex,
        // which readers such as a report or a viewer's snapshot take too),
        // each for a batch or a scan: they run on blocking threads, so that
        // no runtime worker is parked on the lock with a task in its LIFO
        // slot that the other workers cannot steal (a connection's task,
        // woken by its socket, would stall until the lock was free).
        let applier = state.clone();
        // Not aborted at shutdown: it applies what is queued (bounded by the
        // queue and the ingest budget) before the report is made, rather than
        // ending with frames accepted and never counted.
        let applier = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(256);
            while rx.blocking_recv_many(&mut batch, 256) > 0 {
                // Encoded for viewers outside the model lock (when there
                // are any; checked again under the lock).
                let mut encoded = applier.viewers.any().then(|| encode_inputs(&batch));
                let wall = unix_now();
                let mut m = lock(&applier.model);
                for input in &batch {
                    match input {
                        Input::Frame(f, ..) => {
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
                for input in batch.drain(..) {
                    if let Input::Frame(f, held, Some(back)) = input {
                        back.give(f, held);
                    }
                }
            }
        });
        let scanner = state.clone();
        // Dropped (or sent on) to stop the scanner.
        let (stop_scanner, scanner_stop) = std::sync::mpsc::channel::<()>();
        let scanner = tokio::task::spawn_blocking(move || {
            // A scan, then the interval from its end (as an interval that
            // delays its missed ticks), until told to stop.
            while let Err(RecvTimeoutError::Timeout) =
                scanner_stop.recv_timeout(scanner.cfg.scan_interval)
            {
                let now = unix_now();
                let mut m = lock(&scanner.model);
                scanner.merge_drops(&mut m);
                m.scan_wall(now);
                // The findings new since the last scan, by identity: one
                // taken back (a `long_poll` found `descheduled`) moves the
                // others in the list.
                for f in m.take_added_findings() {
                    warn!(kind = %f.kind, pid = f.pid, "finding: {}", f.message);
                }
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
        // The channel closed: the applier ends once it has applied the
        // frames still queued (a producer's last batches and its goodbye).
        if let Err(e) = applier.await {
            warn!("the model's applier ended abnormally: {e}");
        }
        drop(stop_scanner);
        if let Err(e) = scanner.await {
            warn!("the model's scanner ended abnormally: {e}");
        }
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
