//! `awaitscope demo [--headless --duration 5s --report out.json]`: runs the
//! demo workload ([`awaitscope_tui::demo::run`]) in this process,
//! instrumented and streaming to an embedded collector, and opens the UI
//! on it (or, headless, writes the report after `--duration`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use awaitscope_collector::units::{parse_duration, Bare};
use awaitscope_collector::Report;
use awaitscope_tui::feed::LiveFeed;
use awaitscope_tui::ui::run::{log_to_file, quiet_panics, run as run_ui, UiOptions};
use tracing_subscriber::layer::SubscriberExt;

use super::EXIT_BAD_INPUT;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// No terminal UI: run for --duration and print (or write) the report.
    #[arg(long)]
    pub headless: bool,
    /// How long to run (`5s`, `1500ms`, `2m`, or bare seconds); default:
    /// until quit (headless: 5s).
    #[arg(long, value_parser = |s: &str| parse_duration(s, Bare::Secs).map(Duration::from_nanos))]
    pub duration: Option<Duration>,
    /// Write the JSON report here on exit.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Address of the embedded collector (default: any free loopback port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Plain ASCII glyphs.
    #[arg(long)]
    pub ascii: bool,
    /// Where the UI's own logs go.
    #[arg(long, default_value_os_t = super::tui::default_log())]
    pub log: PathBuf,
}

/// Starts the workload on its own runtime, instrumented by a subscriber
/// that only its threads use (the UI and the collector stay out of the
/// picture), and recorded to `AWAITSCOPE_RECORD` when it is set (`{pid}`
/// replaced by the process id). Returns the guard (dropping it flushes the stream) and the
/// workload thread.
fn start_workload(
    collector: SocketAddr,
    duration: Option<Duration>,
) -> (awaitscope::Guard, std::thread::JoinHandle<()>) {
    let mut builder = awaitscope::Builder::new()
        .stream_to(collector.to_string())
        .ring_capacity(16 * 1024);
    // Also recorded, as the examples are under `AWAITSCOPE_RECORD`: the
    // stream the embedded collector read, to look into afterwards.
    if let Some(path) = std::env::var("AWAITSCOPE_RECORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        builder = builder.record_to(path.replace("{pid}", &std::process::id().to_string()));
    }
    let (layer, guard) = builder.build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    let d = dispatch.clone();
    let thread = std::thread::Builder::new()
        .name("demo-workload".into())
        .spawn(move || {
            let d2 = d.clone();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("demo-worker")
                .on_thread_start(move || {
                    // Keeps the workload's subscriber for the thread's life.
                    std::mem::forget(tracing::dispatcher::set_default(&d2));
                })
                .enable_all()
                .build()
                .expect("demo runtime");
            // Installed once the runtime is built, as `init()` in a
            // `#[tokio::main]` program is: the blocking tasks tokio runs its
            // workers in are not the workload's (they would show as two
            // tasks in tokio's worker.rs running for the whole demo).
            let _g = tracing::dispatcher::set_default(&d);
            rt.block_on(awaitscope_tui::demo::run(duration));
            // Deadlocked and lost tasks never end: do not wait for them.
            rt.shutdown_background();
        })
        .expect("demo thread");
    drop(dispatch);
    (guard, thread)
}

/// Runs `demo`.
pub fn run(args: Args) -> u8 {
    if args.headless {
        return headless(args);
    }
    log_to_file(&args.log);
    quiet_panics();
    let mut feed = match LiveFeed::start(args.listen, "demo (in-process) → collector {addr}") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("awaitscope demo: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let (_guard, _thread) = start_workload(feed.addr(), args.duration);
    let r = run_ui(
        &mut feed,
        UiOptions {
            ascii: args.ascii,
            ..UiOptions::default()
        },
    );
    if let Some(p) = &args.report {
        write_report(&feed.handle().report(), p);
    }
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("awaitscope demo: terminal error: {e}");
            EXIT_BAD_INPUT
        }
    }
}

fn write_report(report: &Report, p: &PathBuf) -> bool {
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    match std::fs::write(p, json + "\n") {
        Ok(()) => true,
        Err(e) => {
            eprintln!("awaitscope demo: cannot write {}: {e}", p.display());
            false
        }
    }
}

fn headless(args: Args) -> u8 {
    super::init_logging("warn");
    let duration = args.duration.unwrap_or(Duration::from_secs(5));
    let feed = match LiveFeed::start(args.listen, "{addr}") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("awaitscope demo: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let (guard, thread) = start_workload(feed.addr(), Some(duration));
    let _ = thread.join();
    // One more scan with the program still connected, then the goodbye.
    std::thread::sleep(Duration::from_millis(700));
    drop(guard);
    std::thread::sleep(Duration::from_millis(300));
    let report = feed.handle().report();
    eprint!("{}", report.summary_text());
    if let Some(p) = &args.report {
        if !write_report(&report, p) {
            return EXIT_BAD_INPUT;
        }
        eprintln!("awaitscope demo: report in {}", p.display());
    }
    0
}
