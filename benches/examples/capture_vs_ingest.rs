//! Is the collector ever the bottleneck? For two workloads, the rate at
//! which the capture layer produces wire events (2 runtime workers flat
//! out, recording to a file) against the rate at which the collector
//! ingests that same recording as `awaitscope report` reads one (decoded
//! on a thread of its own, a few frames ahead of the one applying them to
//! the model, detectors run, as a live collector splits the work between
//! its connections and its model; the JSON report's time is shown apart),
//! the capture in a child process per round, the ingest in this one:
//!
//! The last two columns are the live collector's: an `awaitscope serve`
//! in this process (its defaults, but a memory budget the whole recording
//! fits in, so that the time is the ingest's and nothing is dropped), sent
//! the recording over loopback as fast as the socket takes it, timed from
//! the connection to its last event applied. Its connection decodes the
//! frames and one thread applies them, on a runtime of 2 workers.
//!
//! ```sh
//! cargo run --release -p awaitscope-benches --example capture_vs_ingest
//! #   AWAITSCOPE_BENCH_ROUNDS=5   rounds per workload (medians are printed)
//! #   AWAITSCOPE_CVI_INGEST=path  only ingest that recording: twice as a
//! #                               recording (`cold`, `warm`), then live
//! #                               (`live`), printing each rate (to profile or
//! #                               compare the ingest alone, e.g. under callgrind)
//! ```
//!
//! A process's first ingest of a recording is slower than the next: its
//! model's memory is touched for the first time (on this project's VMs
//! much of it is the kernel zeroing fresh pages: see BENCHMARKS.md). A
//! collector that has been running reuses memory it
//! freed: the last two columns ingest each round's recording a second
//! time, into a new model, as does the second ingest of
//! `AWAITSCOPE_CVI_INGEST` (`warm`; the first is `cold`).
//!
//! - `polls`: 10,000 tasks, each 3 nested `#[instrument]` fns around 100
//!   `yield_now` (the workload of `--bench workload`, without its join and
//!   children): almost every event is a whole poll or a wake.
//! - `churn`: 200,000 short tasks spawned by 4 spawner tasks, each task one
//!   `yield_now` and done: spans, closes and polls in equal measure, the
//!   collector's most expensive mix per event.

use std::time::{Duration, Instant};

use awaitscope_collector::{ingest::recording, Model, Report};

#[tracing::instrument(skip_all, fields(i = i))]
async fn outer(i: u64) -> u64 {
    middle(i).await.wrapping_add(1)
}

#[tracing::instrument(skip_all, fields(i = i))]
async fn middle(i: u64) -> u64 {
    inner(i).await.wrapping_mul(3)
}

#[tracing::instrument(skip_all, fields(i = i))]
async fn inner(i: u64) -> u64 {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    i
}

async fn polls() {
    let handles: Vec<_> = (0..10_000u64).map(|i| tokio::spawn(outer(i))).collect();
    for h in handles {
        std::hint::black_box(h.await.unwrap());
    }
}

async fn churn() {
    let spawners: Vec<_> = (0..4u64)
        .map(|s| {
            tokio::spawn(async move {
                let mut handles = Vec::with_capacity(1000);
                for i in 0..50_000u64 {
                    handles.push(tokio::spawn(async move {
                        tokio::task::yield_now().await;
                        i ^ s
                    }));
                    if handles.len() == 1000 {
                        for h in handles.drain(..) {
                            std::hint::black_box(h.await.unwrap());
                        }
                    }
                }
                for h in handles {
                    std::hint::black_box(h.await.unwrap());
                }
            })
        })
        .collect();
    for s in spawners {
        s.await.unwrap();
    }
}

/// Child process: runs `workload` recorded to `path` under awaitscope's
/// global subscriber as `init()` installs it (tokio's workers must see it)
/// and prints the wall time from runtime start to the recording's final
/// flush.
fn child(workload: &str, path: &std::path::Path) {
    let guard = awaitscope::Builder::new()
        .no_stream()
        .record_to(path.to_path_buf())
        .try_init()
        .expect("recording");
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match workload {
        "polls" => rt.block_on(polls()),
        _ => rt.block_on(churn()),
    }
    drop(rt);
    drop(guard);
    println!("{}", t0.elapsed().as_nanos());
}

/// Runs `workload` in a child process recording to `path`.
fn capture(workload: &str, path: &std::path::Path) -> Duration {
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD, workload)
        .env(CHILD_PATH, path)
        .output()
        .expect("child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: u64 = text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "child failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Duration::from_nanos(ns)
}

const CHILD: &str = "AWAITSCOPE_CVI_CHILD";
const CHILD_PATH: &str = "AWAITSCOPE_CVI_PATH";

/// Events in a recording (read again, outside the timed ingest).
fn count_events(path: &std::path::Path) -> u64 {
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("recording"));
    let reader = awaitscope_wire::FrameReader::new(file).expect("recording header");
    reader
        .filter_map(Result::ok)
        .map(|f| match f.body {
            awaitscope_wire::Body::Events(evs) => evs.len() as u64,
            _ => 0,
        })
        .sum()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The live server's memory budget in [`timed_live_ingest`]: room for the
/// largest recording here, decoded, in its ingest queue.
const LIVE_BUDGET: usize = 1 << 30;

/// The time a collector serving on loopback takes to ingest the recording
/// at `path`, sent to it over TCP as a program streams (its `Hello`, its
/// frames, its `Goodbye`): from the connection to the `Goodbye` applied,
/// which comes last. Panics if the server dropped any of it (the time
/// would not be the ingest's).
fn timed_live_ingest(path: &std::path::Path) -> Duration {
    use awaitscope_collector::ingest::server::{Server, ServerConfig};
    use tokio::io::AsyncWriteExt;
    let bytes = std::fs::read(path).expect("recording");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            memory_budget: LIVE_BUDGET,
            ..ServerConfig::default()
        };
        let server = Server::bind(cfg).await.expect("server binds");
        let addr = server.local_addr();
        let h = server.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        let t0 = Instant::now();
        let mut conn = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        conn.write_all(&bytes).await.expect("sends");
        conn.shutdown().await.expect("ends its stream");
        while !h.with_model(|m| m.processes().any(|p| p.ended)) {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let took = t0.elapsed();
        let dropped = h
            .stats()
            .dropped_events
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(dropped, 0, "the live collector dropped events");
        let _ = stop.send(());
        run.await.expect("server ends");
        took
    })
}

/// The time to ingest the recording at `path` into a new model (dropped
/// after).
fn timed_ingest(path: &std::path::Path) -> Duration {
    let t0 = Instant::now();
    let mut model = Model::default();
    recording::load_files(&mut model, &[path]).expect("recording reads");
    t0.elapsed()
}

fn main() {
    if let (Ok(w), Ok(p)) = (std::env::var(CHILD), std::env::var(CHILD_PATH)) {
        return child(&w, std::path::Path::new(&p));
    }
    if let Ok(path) = std::env::var("AWAITSCOPE_CVI_INGEST") {
        let path = std::path::Path::new(&path);
        let events = count_events(path);
        for pass in ["cold", "warm", "live"] {
            let ingest = match pass {
                "live" => timed_live_ingest(path),
                _ => timed_ingest(path),
            };
            println!(
                "{pass}: {events} events ingested in {:.0} ms: {:.2} M events/s",
                ingest.as_secs_f64() * 1e3,
                events as f64 / ingest.as_secs_f64() / 1e6
            );
        }
        return;
    }
    let rounds: usize = std::env::var("AWAITSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "| workload | events | dropped by the producer | capture (M events/s, 2 workers) | \
         ingest (M events/s, decoding beside applying) | ingest / capture | ingest + JSON report (ms) | \
         ingest again, warm (M events/s) | warm / capture | live, `serve` on loopback (M events/s) | \
         live / capture |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for workload in ["polls", "churn"] {
        let (mut cap, mut ing, mut rep, mut ratio) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut warm, mut warm_ratio) = (Vec::new(), Vec::new());
        let (mut live, mut live_ratio) = (Vec::new(), Vec::new());
        let (mut events, mut dropped) = (0, 0);
        for round in 0..rounds {
            let path = dir.path().join(format!("{workload}-{round}.aws"));
            let wall = capture(workload, &path);
            let t0 = Instant::now();
            let mut model = Model::default();
            let input = recording::load_files(&mut model, &[&path]).expect("recording reads");
            let ingest = t0.elapsed();
            let report = Report::from_model(&model);
            std::hint::black_box(serde_json::to_vec(&report).expect("json"));
            let reported = t0.elapsed();
            let _ = input;
            drop(model);
            // The same recording again, into a new model, with the memory
            // the first one freed (see the module's doc).
            let ingest_warm = timed_ingest(&path);
            let ingest_live = timed_live_ingest(&path);
            events = count_events(&path);
            dropped = report.dropped.total;
            let c = events as f64 / wall.as_secs_f64() / 1e6;
            let i = events as f64 / ingest.as_secs_f64() / 1e6;
            cap.push(c);
            ing.push(i);
            rep.push(reported.as_secs_f64() * 1e3);
            ratio.push(i / c);
            let w = events as f64 / ingest_warm.as_secs_f64() / 1e6;
            warm.push(w);
            warm_ratio.push(w / c);
            let l = events as f64 / ingest_live.as_secs_f64() / 1e6;
            live.push(l);
            live_ratio.push(l / c);
            let _ = std::fs::remove_file(&path);
        }
        println!(
            "| {workload} | {events} | {dropped} | {:.2} | {:.2} | {:.2}x | {:.0} | {:.2} | {:.2}x | {:.2} | {:.2}x |",
            median(&mut cap),
            median(&mut ing),
            median(&mut ratio),
            median(&mut rep),
            median(&mut warm),
            median(&mut warm_ratio),
            median(&mut live),
            median(&mut live_ratio)
        );
    }
}
