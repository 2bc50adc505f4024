//! `awaitscope serve [--listen 127.0.0.1:6670] [--record-dir DIR]
//! [--allow-remote] [--token T] [--memory-budget SIZE] [--retention D]
//! [--otlp] [--console URL]...`: the headless collector. Runs until Ctrl-C
//! or SIGTERM, logging connections, refusals and findings on stderr. UIs
//! watch it with `awaitscope --connect ADDR` on the same port (the token,
//! when set, applies to them too). Each `--console URL` is a program that
//! runs console-subscriber, read over its gRPC API and streamed to this
//! collector as an instrumented program streams itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use awaitscope_collector::ingest::budget::{Share, DEFAULT_MEMORY_BUDGET};
use awaitscope_collector::ingest::server::{Server, ServerConfig, DEFAULT_LISTEN};
use awaitscope_collector::units::{parse_duration, parse_size, Bare};
use tracing::{info, warn};

use super::EXIT_BAD_INPUT;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on. Non-loopback needs --allow-remote and a token.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Write what each producer sends to a recording in this directory.
    #[arg(long)]
    pub record_dir: Option<PathBuf>,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Token producers and UIs must present (their AWAITSCOPE_TOKEN).
    #[arg(long, env = "AWAITSCOPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// On exit, write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Seconds a new connection has to send its hello.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Seconds without a whole frame after which a connection is closed.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// Memory the server's buffers and queues may hold in all (handshakes
    /// an eighth, producers and the ingest queue half, viewers the rest),
    /// e.g. 128MiB, 1GiB.
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MEMORY_BUDGET)]
    pub memory_budget: usize,
    /// How long an ended process stays in the model before it is evicted
    /// (its summary and findings stay in the report), e.g. 10m, 30s.
    #[arg(long, value_parser = |s: &str| parse_duration(s, Bare::Secs).map(Duration::from_nanos),
          default_value = "10m")]
    pub retention: Duration,
    /// Most simultaneous connections (producers and viewers). When all are
    /// taken, a new one takes the slot of one that has made no progress
    /// for 10 s.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Forward live to an OpenTelemetry backend over OTLP/HTTP
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`): tasks
    /// and spans once their trace is settled and they ended, findings once
    /// final (a `long_poll` its statistics may yet find `descheduled`
    /// waits for them), each once.
    #[arg(long)]
    pub otlp: bool,
    /// Also watch a program that runs console-subscriber, at this URL
    /// (`http://127.0.0.1:6669`), read over its gRPC API; repeatable.
    #[arg(long, value_name = "URL")]
    pub console: Vec<String>,
}

/// Runs `serve`.
pub fn run(args: Args) -> u8 {
    super::init_logging("info");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("awaitscope serve: cannot start the runtime: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let forward = match args.otlp {
        true => match super::otlp::Endpoint::from_env() {
            Ok(e) => {
                let (tx, rx) = std::sync::mpsc::sync_channel(super::otlp::LIVE_QUEUE);
                Some((e, tx, rx))
            }
            Err(e) => {
                eprintln!("awaitscope serve: {e}");
                return EXIT_BAD_INPUT;
            }
        },
        false => None,
    };
    let (forward, frame_tap) = match forward {
        Some((e, tx, rx)) => (Some((e, rx)), Some(tx)),
        None => (None, None),
    };
    for url in &args.console {
        if let Err(e) = awaitscope_collector::console::client::endpoint(url) {
            eprintln!("awaitscope serve: {e}");
            return EXIT_BAD_INPUT;
        }
    }
    let console_token = args.token.clone().filter(|t| !t.is_empty());
    let cfg = ServerConfig {
        frame_tap,
        listen: args.listen,
        allow_remote: args.allow_remote,
        token: args.token.filter(|t| !t.is_empty()),
        record_dir: args.record_dir,
        handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        memory_budget: args.memory_budget,
        retention: args.retention,
        max_connections: args.max_connections,
        ..ServerConfig::default()
    };
    rt.block_on(async move {
        let server = match Server::bind(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("awaitscope serve: {e}");
                return EXIT_BAD_INPUT;
            }
        };
        let handle = server.handle();
        info!(
            memory_budget = args.memory_budget,
            retention_s = args.retention.as_secs(),
            max_connections = args.max_connections,
            "limits"
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forwarder = forward.map(|(endpoint, frames)| {
            info!("forwarding to OTLP endpoint {}", endpoint.url);
            let (h, stop) = (handle.clone(), stop.clone());
            std::thread::spawn(move || super::otlp::forward_live(endpoint, frames, h, stop))
        });
        // Last on its line: scripts read the address after "listening on ".
        info!("listening on {}", server.local_addr());
        // Each console program streams to this server as a program would.
        let mut to = server.local_addr();
        if to.ip().is_unspecified() {
            to.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        for url in args.console {
            tokio::spawn(awaitscope_collector::console::forward::forward(
                url,
                to,
                console_token.clone(),
            ));
        }
        server
            .run_until(async {
                // SIGINT (Ctrl-C) or SIGTERM (a service manager, `kill`):
                // either ends with the final line and the report.
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{signal, SignalKind};
                    match signal(SignalKind::terminate()) {
                        Ok(mut term) => {
                            tokio::select! {
                                _ = tokio::signal::ctrl_c() => {}
                                _ = term.recv() => {}
                            }
                        }
                        Err(_) => {
                            let _ = tokio::signal::ctrl_c().await;
                        }
                    }
                }
                #[cfg(not(unix))]
                {
                    let _ = tokio::signal::ctrl_c().await;
                }
            })
            .await;
        if let Some(f) = forwarder {
            // Its last flush: what ended before the stop.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = f.join();
        }
        let st = handle.stats();
        info!(
            accepted = st.accepted.load(std::sync::atomic::Ordering::Relaxed),
            producers = st.producers.load(std::sync::atomic::Ordering::Relaxed),
            refused = st.refused(),
            dropped_events = st.dropped_events.load(std::sync::atomic::Ordering::Relaxed),
            "collector stopped"
        );
        let tapped_out = st
            .tap_dropped_frames
            .load(std::sync::atomic::Ordering::Relaxed);
        if tapped_out > 0 {
            warn!(
                frames = tapped_out,
                events = st
                    .tap_dropped_events
                    .load(std::sync::atomic::Ordering::Relaxed),
                "not forwarded over OTLP: the forwarder's queue was full (serve's own model has them)"
            );
        }
        let unsent = st
            .otlp_unsent_findings
            .load(std::sync::atomic::Ordering::Relaxed);
        let unsent_spans = st
            .otlp_dropped_spans
            .load(std::sync::atomic::Ordering::Relaxed);
        if unsent > 0 || unsent_spans > 0 {
            warn!(
                findings = unsent,
                spans = unsent_spans,
                "not forwarded over OTLP: past the forwarder's caps, or of a process whose frames did not reach it (serve's own model has them)"
            );
        }
        let b = handle.budget();
        for share in [Share::Handshake, Share::Ingest, Share::Viewers] {
            info!(
                share = share.as_str(),
                cap = b.cap(share),
                peak = b.peak(share),
                held = b.used(share),
                refused = b.refused(share),
                "memory budget"
            );
        }
        let report = handle.report();
        eprint!("{}", report.summary_text());
        if let Some(p) = &args.report {
            let json = serde_json::to_string_pretty(&report).unwrap_or_default();
            if let Err(e) = std::fs::write(p, json + "\n") {
                eprintln!("awaitscope serve: cannot write {}: {e}", p.display());
                return EXIT_BAD_INPUT;
            }
        }
        0
    })
}
