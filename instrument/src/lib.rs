//! # awaitscope
//!
//! Async-aware tracing for tokio. Add one line to your program:
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() {
//!     let _guard = awaitscope::init(); // flushes on drop
//!     // ...
//! }
//! ```
//!
//! and awaitscope follows every task (who spawned it, and from which span),
//! every poll, wake, span and tokio resource, and streams them to a collector
//! (`awaitscope` TUI or `awaitscope serve`) and/or a recording file.
//!
//! ## Configuration (environment)
//! | variable | meaning |
//! | --- | --- |
//! | `AWAITSCOPE_ADDR` | collector to stream to (default `127.0.0.1:6670`; `off`: none) |
//! | `AWAITSCOPE_RECORD` | path of a recording file to write (`{pid}` is replaced by the process id) |
//! | `AWAITSCOPE_TOKEN` | token to present to a collector that requires one |
//! | `AWAITSCOPE_LONG_POLL` | stall threshold: a poll running this long is sampled once (default `10ms`) |
//! | `AWAITSCOPE_WHOLE_TREE` | a poll this long sends its await tree with the spans that closed during it (default `100us`; for measuring under valgrind, where every poll is slow) |
//! | `AWAITSCOPE_STACKS=off` | take no native stacks: of long polls (their async stacks still go out), nor of tasks going to wait (their await frames then point at the resource's creation) |
//! | `AWAITSCOPE_SPANS` | which spans to capture, in `RUST_LOG` syntax (`my_app=debug,hyper=off,info`; default: every span). tokio's task spans are always captured; a span the filter rejects is disabled at its callsite (see [`Builder::spans`]) |
//! | `AWAITSCOPE=off` | install nothing |
//! | `RUST_LOG` | filter of the log output printed to stderr (default `warn`) |
//!
//! ## Saying when a wait is a hang
//! The collector's `stuck` finding judges on its own only waits on tokio
//! resources (a lock, a semaphore, a oneshot's reply): a task waiting on a
//! socket or a channel may just be idle. A span can say when a wait inside
//! it is a hang, with the field `awaitscope.stuck_after` (a duration such as
//! `"30s"`, or `"never"`); the innermost span that sets it wins:
//!
//! ```ignore
//! #[tracing::instrument(skip_all, fields(awaitscope.stuck_after = "30s"))]
//! async fn fetch_quote(client: &Client) -> Result<Quote, Error> { /* ... */ }
//! ```
//!
//! ## tokio_unstable
//! Build with `RUSTFLAGS="--cfg tokio_unstable"` (e.g. in `.cargo/config.toml`)
//! so tokio instruments its tasks, wakers and resources. Without it, use
//! [`spawn()`] / [`spawn_named`] for the tasks you want tracked; see
//! [`spawn`](mod@spawn) for what is lost.
//!
//! ## Composition
//! [`init`] installs [`AwaitscopeSubscriber`], awaitscope's own subscriber
//! (a span store cheaper per poll than `tracing_subscriber`'s registry), which
//! takes no other layers. [`builder`] gives the [`AwaitscopeLayer`] and its
//! [`Guard`] for a `tracing_subscriber` stack of your own (a fmt layer with
//! `EnvFilter`, `tracing-error`, OpenTelemetry...): everything is captured
//! the same way, at the registry's extra cost per poll.

#![warn(missing_docs)]

mod at_exit;
mod await_tree;
mod capture;
mod causal;
mod config;
mod export;
mod filter;
mod handover;
mod names;
mod panic;
mod scoped;
mod span_node;
pub mod spawn;
mod stacks;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod traceparent;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use awaitscope_wire as wire;

pub use await_tree::{AwaitNode, AwaitPoint, Dump, TaskDump};
pub use capture::AwaitscopeLayer;
pub use causal::{CausalTrace, Context, TaskRef, TraceItem, Traced, WithCausalTrace};
pub use config::DEFAULT_ADDR;
pub use scoped::scoped_dispatch;
pub use spawn::{spawn, spawn_named, JoinHandle};
pub use store::AwaitscopeSubscriber;

/// Most slots in a thread's ring buffer (32 bytes each, so 16 MiB): records
/// a thread can hold before the exporter drains them. Rings start at 4,096
/// slots and grow on overflow up to this; all threads' rings together grow
/// by at most twice this (32 MiB). Sized so that a recording of the
/// benchmark workload (2 workers saturating 2 cores, which leave the
/// exporter behind at times) is complete; BENCHMARKS.md ("Recordings are
/// complete") has the measurements that chose it.
const DEFAULT_RING_CAPACITY: usize = 512 * 1024;

/// Installs awaitscope as the global subscriber: the capture, awaitscope's
/// own span store, and a log output printing to stderr the events that
/// `RUST_LOG` lets through (default `warn`), laid out as
/// `tracing_subscriber::fmt` does. Configured by the environment (see the
/// crate docs). Keep the returned guard alive: dropping it flushes the
/// stream and the recording.
///
/// The span store costs much less per poll than `tracing_subscriber`'s
/// registry, but takes no other layers; to add your own (a fmt layer with
/// span filters in `RUST_LOG`, `tracing-error`, OpenTelemetry...), build a
/// stack with [`builder`] instead.
///
/// When a global subscriber is already set, prints why to stderr and returns
/// an inert guard; use [`try_init`] to handle that case.
pub fn init() -> Guard {
    try_init().unwrap_or_else(|e| {
        eprintln!("awaitscope: not installed: {e}");
        Guard::inert()
    })
}

/// Like [`init`], returning an error when a global subscriber is already set
/// or the recording file cannot be created.
pub fn try_init() -> Result<Guard, InitError> {
    builder().try_init()
}

/// Starts a [`Builder`] configured from the environment.
pub fn builder() -> Builder {
    Builder::from_env()
}

/// Why awaitscope could not be installed: [`try_init`] and the builder's
/// `try_*` methods return it where [`init`] prints it and goes on.
#[derive(Debug)]
pub enum InitError {
    /// A global `tracing` subscriber was already set.
    AlreadySet(String),
    /// The recording file could not be created.
    Record(PathBuf, std::io::Error),
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::AlreadySet(e) => write!(f, "a global subscriber is already set ({e})"),
            InitError::Record(p, e) => write!(f, "cannot create recording {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for InitError {}

/// Builds an [`AwaitscopeLayer`] and its [`Guard`].
#[derive(Clone, Debug)]
pub struct Builder {
    enabled: bool,
    addr: Option<String>,
    record: Option<PathBuf>,
    memory: Option<MemoryRecording>,
    token: Option<String>,
    ring_capacity: usize,
    stall: stacks::StallConfig,
    spans: filter::SpanFilter,
    whole_tree: Duration,
}

impl Builder {
    /// A builder configured by the environment: `AWAITSCOPE`,
    /// `AWAITSCOPE_ADDR`, `AWAITSCOPE_RECORD` and `AWAITSCOPE_TOKEN` (see the
    /// crate docs), with the default ring capacity.
    pub fn from_env() -> Self {
        let env = config::EnvConfig::from_env();
        Self {
            enabled: env.enabled,
            addr: env.addr,
            record: env.record,
            memory: None,
            token: env.token,
            ring_capacity: DEFAULT_RING_CAPACITY,
            stall: stacks::StallConfig {
                threshold_ns: env
                    .long_poll
                    .unwrap_or(stacks::DEFAULT_LONG_POLL)
                    .as_nanos() as u64,
                stacks: env.stacks,
            },
            spans: filter::SpanFilter::from_env(),
            whole_tree: env.whole_tree.unwrap_or(capture::WHOLE_TREE),
        }
    }

    /// A builder with no destination at all, ignoring the environment.
    pub fn new() -> Self {
        Self {
            enabled: true,
            addr: None,
            record: None,
            memory: None,
            token: None,
            ring_capacity: DEFAULT_RING_CAPACITY,
            stall: stacks::StallConfig::default(),
            spans: filter::SpanFilter::all(),
            whole_tree: capture::WHOLE_TREE,
        }
    }

    /// Streams to the collector at `addr` (`host:port`), connecting in the
    /// background and reconnecting with backoff when it goes away.
    pub fn stream_to(mut self, addr: impl Into<String>) -> Self {
        self.addr = Some(addr.into());
        self
    }

    /// Does not stream to any collector.
    pub fn no_stream(mut self) -> Self {
        self.addr = None;
        self
    }

    /// Writes a recording to `path` (created, or truncated if it exists):
    /// the same frames a collector would receive, to open later with the
    /// `awaitscope` CLI or TUI.
    pub fn record_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.record = Some(path.into());
        self
    }

    /// Also writes the stream into `memory` (for tests and in-process tools).
    pub fn record_in_memory(mut self, memory: &MemoryRecording) -> Self {
        self.memory = Some(memory.clone());
        self
    }

    /// The token presented to a collector started with one (the
    /// collector refuses producers without it).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Most slots per thread buffer (32 bytes each; rings start at 4,096
    /// and grow to this). The rings of all threads together grow by at most
    /// twice this. Records beyond are dropped and counted.
    pub fn ring_capacity(mut self, slots: usize) -> Self {
        self.ring_capacity = slots.max(16);
        self
    }

    /// The stall threshold (default 10 ms, `AWAITSCOPE_LONG_POLL`): a poll
    /// running this long is sampled once while it runs (the spans it is in,
    /// its worker's native stack and scheduler statistics) and sent as a
    /// `Stall` event. Use the collector's long-poll threshold.
    pub fn long_poll(mut self, threshold: Duration) -> Self {
        self.stall.threshold_ns = threshold.as_nanos().min(u64::MAX as u128) as u64;
        self
    }

    /// The length from which a poll sends its await tree with the spans
    /// that closed during it (default 100 µs, `AWAITSCOPE_WHOLE_TREE`);
    /// a shorter poll leaves them out (they are not where the task waits,
    /// and their creation and close say they ran in it). For measuring
    /// under instrumenting tools, where every poll is slow: keep it under
    /// the collector's long-poll threshold otherwise, or its long-poll
    /// traces lose the spans that returned during the poll.
    #[doc(hidden)]
    pub fn whole_tree(mut self, from: Duration) -> Self {
        self.whole_tree = from;
        self
    }

    /// Whether native stacks are taken (default on;
    /// `AWAITSCOPE_STACKS=off`): long polls' (sampled on Linux, x86_64 and
    /// aarch64, only; off, a stall still carries its async stack and
    /// scheduler statistics), and a worker's own where a tokio resource
    /// tells a task "not ready" (the line the task awaits at; off, its
    /// await frame points at the resource's creation).
    pub fn native_stacks(mut self, on: bool) -> Self {
        self.stall.stacks = on;
        self
    }

    /// Which spans are captured, in `RUST_LOG` syntax (`target=level`
    /// directives and a default level, as `AWAITSCOPE_SPANS`; default:
    /// every span): `"my_app=debug,hyper=off,info"`. tokio's task spans are
    /// always captured. Under [`init`]'s subscriber a span the filter
    /// rejects is disabled at its callsite, so it costs what it costs
    /// without any subscriber; as a layer ([`Builder::build`]) it is only
    /// not captured (other layers still see it). Directives of `EnvFilter`
    /// that are not `target=level` (span and field filters) are skipped
    /// with a warning on stderr.
    pub fn spans(mut self, spec: &str) -> Self {
        let (filter, skipped) = filter::SpanFilter::parse(spec);
        if !skipped.is_empty() {
            eprintln!(
                "awaitscope: span filter: skipped directive(s) {} (only `target=level` \
                 directives and a default level are supported)",
                skipped.join(", ")
            );
        }
        self.spans = filter;
        self
    }

    /// Builds the layer and guard. A recording that cannot be created is
    /// reported on stderr and skipped; see [`Builder::try_build`].
    pub fn build(self) -> (AwaitscopeLayer, Guard) {
        let mut this = self;
        match this.clone().try_build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("awaitscope: {e}");
                this.record = None;
                this.try_build()
                    .unwrap_or_else(|_| (AwaitscopeLayer { capture: None }, Guard::inert()))
            }
        }
    }

    /// Builds the layer and guard, failing if the recording cannot be created.
    pub fn try_build(self) -> Result<(AwaitscopeLayer, Guard), InitError> {
        if !self.enabled {
            return Ok((AwaitscopeLayer { capture: None }, Guard::inert()));
        }
        let mut destinations = Vec::new();
        if let Some(path) = &self.record {
            let destination = export::destination::Destination::file(path.clone())
                .map_err(|e| InitError::Record(path.clone(), e))?;
            destinations.push(destination);
        }
        if let Some(addr) = self.addr {
            destinations.push(export::destination::Destination::tcp(addr));
        }
        if let Some(m) = &self.memory {
            destinations.push(export::destination::Destination::memory(m.0.clone()));
        }
        let capture = capture::Capture::with_span_filter(
            self.ring_capacity,
            self.spans,
            self.whole_tree.as_nanos().min(u128::from(u64::MAX)) as u64,
        );
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let process = wire::ProcessKey {
            pid: std::process::id(),
            start_unix_ns,
        };
        let info = process_info(self.token);
        capture.wait_stacks.set_on(self.stall.stacks);
        panic::register(&capture);
        let exporter = export::start(capture.clone(), destinations, info, process, self.stall);
        at_exit::register(exporter.source());
        Ok((
            AwaitscopeLayer {
                capture: Some(capture),
            },
            Guard {
                exporter: Some(exporter),
            },
        ))
    }

    /// Installs the configured awaitscope as the global subscriber, as
    /// [`init`] does (span store and `RUST_LOG` log output included).
    pub fn try_init(self) -> Result<Guard, InitError> {
        let Some((subscriber, guard)) = self.try_build_subscriber()? else {
            return Ok(Guard::inert());
        };
        tracing::subscriber::set_global_default(subscriber)
            .map_err(|e| InitError::AlreadySet(e.to_string()))?;
        // A callsite first hit on another thread while the subscriber was
        // being installed can keep the interest it got from the previous
        // one (a race in tracing-core's interest cache): tokio's
        // `runtime.spawn` callsite, hit by a runtime already running, would
        // then stay disabled. Recompute every callsite's interest now that
        // the subscriber is in place.
        tracing::callsite::rebuild_interest_cache();
        guard.make_current();
        Ok(guard)
    }

    /// Builds awaitscope's own subscriber (see [`AwaitscopeSubscriber`]) and
    /// its guard, without installing it; `None` when awaitscope is turned
    /// off (`AWAITSCOPE=off`).
    pub fn try_build_subscriber(self) -> Result<Option<(AwaitscopeSubscriber, Guard)>, InitError> {
        let (layer, guard) = self.try_build()?;
        Ok(layer.capture.map(|capture| {
            let log = store::log::LogOutput::from_env();
            (AwaitscopeSubscriber::new(capture, log), guard)
        }))
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

fn process_info(token: Option<String>) -> wire::ProcessInfo {
    let capped = |mut s: String| {
        wire::limits::truncate(&mut s);
        s
    };
    let cmdline: Vec<String> = std::env::args()
        .take(wire::limits::MAX_FIELDS)
        .map(capped)
        .collect();
    let name = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| cmdline.first().cloned())
        .unwrap_or_default();
    wire::ProcessInfo {
        name: capped(name),
        cmdline,
        producer_version: env!("CARGO_PKG_VERSION").to_owned(),
        tokio_unstable: cfg!(tokio_unstable),
        reconnect: false,
        token: token.map(capped),
    }
}

/// Keeps awaitscope's exporter running. Dropping it drains what was
/// recorded, sends `Goodbye`, and flushes the stream and the recording; the
/// program's normal exit does the same if it was never dropped (on Linux).
/// Either waits at most 150 ms for a collector that does not read:
/// what it did not take is counted as dropped.
#[must_use = "dropping the guard stops awaitscope"]
pub struct Guard {
    exporter: Option<export::ExporterHandle>,
}

/// The exporter of the subscriber installed by [`init`], for [`dump`].
static CURRENT: Mutex<Option<export::Source>> = Mutex::new(None);

/// Every live task of the program with what it awaits, like a goroutine
/// dump. Works with the subscriber installed by [`init`]; with
/// [`builder`], use [`Guard::dump`]. Empty when awaitscope is not installed.
///
/// ```no_run
/// eprintln!("{}", awaitscope::dump());
/// ```
pub fn dump() -> Dump {
    let source = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    source.map(|s| s.dump()).unwrap_or_default()
}

/// The live task with tokio id `id` and its await tree (see [`dump`]).
pub fn await_tree(id: tokio::task::Id) -> Option<TaskDump> {
    let id: u64 = id.to_string().parse().ok()?;
    dump().by_tokio_id(id).cloned()
}

impl Guard {
    fn inert() -> Self {
        Self { exporter: None }
    }

    /// Every live task with its await tree (see [`dump`]).
    pub fn dump(&self) -> Dump {
        self.exporter
            .as_ref()
            .map(|e| e.source().dump())
            .unwrap_or_default()
    }

    fn make_current(&self) {
        if let Some(e) = &self.exporter {
            *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.source().clone());
        }
    }

    /// Whether awaitscope is active behind this guard.
    pub fn is_active(&self) -> bool {
        self.exporter.is_some()
    }

    /// Drains everything recorded so far to the destinations and flushes them.
    /// Returns after at most a few seconds.
    pub fn flush(&self) {
        if let Some(e) = &self.exporter {
            e.source().flush(Duration::from_secs(5));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut e) = self.exporter.take() {
            {
                let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
                if current.as_ref().is_some_and(|c| c.same(e.source())) {
                    *current = None;
                }
            }
            at_exit::forget(e.source());
            e.shutdown();
        }
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("active", &self.is_active())
            .finish()
    }
}

/// A recording kept in memory: the same bytes a recording file would hold.
#[derive(Clone, Debug, Default)]
pub struct MemoryRecording(Arc<Mutex<Vec<u8>>>);

impl MemoryRecording {
    /// An empty recording, to give to [`Builder::record_in_memory`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Decodes the frames written so far.
    pub fn frames(&self) -> Result<Vec<wire::Frame>, wire::DecodeError> {
        let bytes = self.bytes();
        wire::FrameReader::new(&bytes[..])?.collect()
    }
}
