//! One tokio workload under several subscribers, each measured in a child
//! process (a global subscriber can be set only once per process).
//!
//! `cargo bench -p awaitscope-benches --bench workload`
//!
//! The parent re-executes this binary with `AWAITSCOPE_BENCH_CHILD=<mode>`;
//! the child runs the workload once and prints one `RESULT` line (wall time,
//! flush time, peak RSS, and for the recording mode what the recording
//! holds). The parent runs rounds of all modes, rotating the order each
//! round, and reports medians and paired ratios against `none`.
//!
//! Environment:
//! - `AWAITSCOPE_BENCH_ROUNDS` (default 7): rounds of all modes.
//! - `AWAITSCOPE_BENCH_TASKS` (default 10000): top-level tasks.
//! - `AWAITSCOPE_BENCH_MODES`: comma-separated subset of the modes.
//! - `AWAITSCOPE_BENCH_STACKS=off`: no native stacks of long polls.
//! - `AWAITSCOPE_BENCH_RING`: awaitscope ring capacity (slots per thread)
//!   for the awaitscope modes (default: awaitscope's default, 16384).
//! - `AWAITSCOPE_BENCH_KEEP`: path; the recording mode copies its recording
//!   there (last run wins) for inspection.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::Instant;

use awaitscope_benches::{
    get, median, parse, peak_rss_kib, process_cpu_ns, read_recording, threads_cpu_ns,
};
use tracing_subscriber::layer::SubscriberExt;

const CHILD_ENV: &str = "AWAITSCOPE_BENCH_CHILD";

/// Modes, in their base order. `none` is the baseline of the ratios.
const MODES: &[(&str, &str)] = &[
    ("none", "(a) no subscriber"),
    ("registry", "(b) tracing registry alone"),
    (
        "aw-stream",
        "(c) awaitscope (init()), streaming to a closed port",
    ),
    ("aw-record", "(d) awaitscope (init()), recording to a file"),
    ("console", "(e) console-subscriber (loopback)"),
    (
        "layer-stream",
        "(f) registry + AwaitscopeLayer (builder()), streaming to a closed port",
    ),
    (
        "layer-record",
        "(g) registry + AwaitscopeLayer (builder()), recording to a file",
    ),
];

// ---------------------------------------------------------------- workload

/// Innermost instrumented fn: 100 yields.
#[tracing::instrument(skip_all, fields(i = i))]
async fn inner(i: u64) -> u64 {
    let mut acc = 0u64;
    for k in 0..100u64 {
        tokio::task::yield_now().await;
        acc = acc.wrapping_add(k ^ i);
    }
    acc
}

#[tracing::instrument(skip_all, fields(i = i))]
async fn middle(i: u64) -> u64 {
    inner(i).await.wrapping_add(1)
}

#[tracing::instrument(skip_all, fields(i = i))]
async fn outer(i: u64) -> u64 {
    middle(i).await.wrapping_add(1)
}

async fn leaf(i: u64) -> u64 {
    tokio::task::yield_now().await;
    i.wrapping_mul(3)
}

async fn child(i: u64) -> u64 {
    tokio::task::yield_now().await;
    i ^ 0x5a
}

/// One top-level task: 3 nested instrumented fns (100 yields in the
/// innermost), a `join!` of two futures, and every 10th task spawns a child
/// task and awaits it.
async fn task(i: u64) -> u64 {
    let mut acc = outer(i).await;
    let (a, b) = tokio::join!(leaf(i), leaf(i + 1));
    acc = acc.wrapping_add(a).wrapping_add(b);
    if i.is_multiple_of(10) {
        acc = acc.wrapping_add(tokio::spawn(child(i)).await.unwrap());
    }
    acc
}

fn workload(tasks: u64) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sum = rt.block_on(async move {
        let handles: Vec<_> = (0..tasks).map(|i| tokio::spawn(task(i))).collect();
        let mut sum = 0u64;
        for h in handles {
            sum = sum.wrapping_add(h.await.unwrap());
        }
        sum
    });
    drop(rt);
    sum
}

// ---------------------------------------------------------------- child

fn free_port() -> u16 {
    // Bind, read the port, close: nobody listens there afterwards.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `AWAITSCOPE_BENCH_RING`: ring capacity (slots per thread) for the
/// awaitscope modes; default: awaitscope's own default. Also
/// `AWAITSCOPE_BENCH_STACKS=off`: no native stacks of long polls (to
/// compare with them on: the workload's spawning poll crosses the stall
/// threshold in most runs).
fn ring(b: awaitscope::Builder) -> awaitscope::Builder {
    let b = match std::env::var("AWAITSCOPE_BENCH_STACKS").as_deref() {
        Ok("off") => b.native_stacks(false),
        _ => b,
    };
    match std::env::var("AWAITSCOPE_BENCH_RING")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(n) => b.ring_capacity(n),
        None => b,
    }
}

/// Installs awaitscope as the global subscriber: as `init()` does
/// (awaitscope's own subscriber) for the `aw-` modes, as a layer on
/// `tracing_subscriber`'s registry for the `layer-` modes.
fn install(mode: &str, builder: awaitscope::Builder) -> awaitscope::Guard {
    if mode.starts_with("layer-") {
        let (layer, g) = builder.try_build().unwrap();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .unwrap();
        g
    } else {
        builder.try_init().unwrap()
    }
}

fn child_main(mode: &str) {
    let tasks: u64 = std::env::var("AWAITSCOPE_BENCH_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let mut guard: Option<awaitscope::Guard> = None;
    let mut recording: Option<tempfile::TempPath> = None;
    match mode {
        "none" => {}
        "registry" => {
            tracing::subscriber::set_global_default(tracing_subscriber::registry()).unwrap();
        }
        "aw-stream" | "layer-stream" => {
            let addr = format!("127.0.0.1:{}", free_port());
            guard = Some(install(
                mode,
                ring(awaitscope::Builder::new().stream_to(addr)),
            ));
        }
        "aw-record" | "layer-record" => {
            let path = tempfile::Builder::new()
                .prefix("awaitscope-bench-")
                .suffix(".awrec")
                .tempfile()
                .unwrap()
                .into_temp_path();
            let b = ring(awaitscope::Builder::new().no_stream()).record_to(path.to_path_buf());
            guard = Some(install(mode, b));
            recording = Some(path);
        }
        "console" => {
            let layer = console_subscriber::ConsoleLayer::builder()
                .server_addr(([127, 0, 0, 1], free_port()))
                .spawn();
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .unwrap();
        }
        other => panic!("unknown mode {other}"),
    }

    // Measured: runtime start, workload, runtime shutdown, and the drop of
    // the awaitscope guard (drain + flush of everything recorded).
    let cpu0 = process_cpu_ns();
    let t0 = Instant::now();
    let sum = workload(tasks);
    let t1 = Instant::now();
    // The exporter's CPU so far (its thread ends with the guard).
    let exporter_cpu = threads_cpu_ns("awaitscope-expo");
    drop(guard);
    let t2 = Instant::now();
    let cpu = process_cpu_ns().saturating_sub(cpu0);
    std::hint::black_box(sum);

    let wall = (t2 - t0).as_nanos();
    let flush = (t2 - t1).as_nanos();
    let rss = peak_rss_kib();
    let mut line = format!(
        "RESULT mode={mode} wall_ns={wall} flush_ns={flush} maxrss_kib={rss} cpu_ns={cpu} \
         exporter_cpu_ns={exporter_cpu}"
    );
    if let Some(path) = recording {
        let st = read_recording(&path);
        if let Ok(keep) = std::env::var("AWAITSCOPE_BENCH_KEEP") {
            let _ = std::fs::copy(&path, keep);
        }
        line.push_str(&st.result_fields());
    }
    println!("{line}");
}

// ---------------------------------------------------------------- parent

fn run_child(exe: &std::path::Path, mode: &str) -> BTreeMap<String, String> {
    let out = Command::new(exe)
        .env(CHILD_ENV, mode)
        .output()
        .expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
        panic!(
            "child {mode} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    parse(line)
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child_main(&mode);
        return;
    }
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test
    // --benches`) gets a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("AWAITSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 7 } else { 1 });
    if !full && std::env::var("AWAITSCOPE_BENCH_TASKS").is_err() {
        std::env::set_var("AWAITSCOPE_BENCH_TASKS", "500");
    }
    let modes: Vec<&str> = match std::env::var("AWAITSCOPE_BENCH_MODES") {
        Ok(s) => {
            let mut v: Vec<&str> = MODES
                .iter()
                .map(|m| m.0)
                .filter(|m| s.split(',').any(|x| x.trim() == *m))
                .collect();
            if !v.contains(&"none") {
                v.insert(0, "none");
            }
            v
        }
        Err(_) => MODES.iter().map(|m| m.0).collect(),
    };
    let exe = std::env::current_exe().unwrap();
    let tasks = std::env::var("AWAITSCOPE_BENCH_TASKS").unwrap_or_else(|_| "10000".into());
    println!(
        "workload: {tasks} tasks x (3 nested #[instrument] fns, 100 yield_now, join! of 2, \
         every 10th spawns+awaits a child); multi-thread runtime, 2 workers"
    );
    println!(
        "{rounds} rounds x {} modes, one child process per run, mode order rotated each round",
        modes.len()
    );
    println!(
        "timed: runtime build + workload + runtime drop + awaitscope guard drop \
         (drain + flush, INSIDE the timed span); flush also shown separately"
    );

    // results[mode] = one map per round
    let mut results: BTreeMap<&str, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for r in 0..rounds {
        let mut order = modes.clone();
        order.rotate_left(r % modes.len());
        let mut line = format!("round {}/{}:", r + 1, rounds);
        for m in &order {
            let res = run_child(&exe, m);
            line.push_str(&format!(" {m}={:.0}ms", get(&res, "wall_ns") / 1e6));
            if m.ends_with("-record") {
                line.push_str(&format!(
                    "(dropped {} of {})",
                    get(&res, "buffer_full")
                        + get(&res, "disconnected")
                        + get(&res, "write_failed"),
                    get(&res, "events")
                        + get(&res, "buffer_full")
                        + get(&res, "disconnected")
                        + get(&res, "write_failed"),
                ));
            }
            results.entry(m).or_default().push(res);
        }
        println!("{line}");
    }

    let base: Vec<f64> = results["none"].iter().map(|m| get(m, "wall_ns")).collect();
    let mut base_sorted = base.clone();
    let base_med = median(&mut base_sorted);
    let none_rss = median(
        &mut results["none"]
            .iter()
            .map(|m| get(m, "maxrss_kib") / 1024.0)
            .collect::<Vec<_>>(),
    );
    println!();
    println!(
        "| mode | median wall (ms) | ratio of medians vs (a) | median paired ratio | \
         added cost / console's added cost (paired median) | median flush (ms) | \
         median (max) peak RSS (MiB) | median CPU (ms) | of which exporter (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let console: Option<Vec<f64>> = results
        .get("console")
        .map(|r| r.iter().map(|x| get(x, "wall_ns")).collect());
    for (m, label) in MODES.iter().filter(|m| modes.contains(&m.0)) {
        let runs = &results[m];
        let mut wall: Vec<f64> = runs.iter().map(|x| get(x, "wall_ns")).collect();
        let mut paired: Vec<f64> = wall.iter().zip(&base).map(|(w, b)| w / b).collect();
        let mut flush: Vec<f64> = runs.iter().map(|x| get(x, "flush_ns") / 1e6).collect();
        let mut rss: Vec<f64> = runs.iter().map(|x| get(x, "maxrss_kib") / 1024.0).collect();
        // Per round: (mode - none) / (console - none).
        let added = console.as_ref().map(|cons| {
            let mut v: Vec<f64> = wall
                .iter()
                .zip(&base)
                .zip(cons)
                .map(|((w, b), c)| (w - b) / (c - b))
                .collect();
            median(&mut v)
        });
        let wm = median(&mut wall);
        let mut cpu: Vec<f64> = runs.iter().map(|x| get(x, "cpu_ns") / 1e6).collect();
        let mut exp: Vec<f64> = runs
            .iter()
            .map(|x| get(x, "exporter_cpu_ns") / 1e6)
            .collect();
        println!(
            "| {label} | {:.1} | {:.2}x | {:.2}x | {} | {:.1} | {:.1} ({:.1}) | {:.0} | {:.0} |",
            wm / 1e6,
            wm / base_med,
            median(&mut paired),
            added.map_or("-".into(), |a| format!("{a:.3}")),
            median(&mut flush),
            median(&mut rss),
            rss.iter().copied().fold(0.0, f64::max),
            median(&mut cpu),
            median(&mut exp)
        );
    }
    println!();
    println!("(peak RSS of (a) itself: {none_rss:.1} MiB; ratios are wall-time ratios)");

    if let Some(runs) = results.get("aw-record") {
        println!();
        println!("recording completeness, (d) awaitscope recording, per run:");
        println!(
            "| run | events written | dropped (buffer_full / disconnected / write_failed) | \
             dropped % | SpanNew | Enter | Exit | Close | Wake | MiB | Goodbye | decode error |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
        for (i, x) in runs.iter().enumerate() {
            let ev = get(x, "events");
            let (bf, dc, wf) = (
                get(x, "buffer_full"),
                get(x, "disconnected"),
                get(x, "write_failed"),
            );
            let dropped = bf + dc + wf;
            println!(
                "| {} | {ev:.0} | {dropped:.0} ({bf:.0} / {dc:.0} / {wf:.0}) | {:.2}% | {:.0} | \
                 {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {} | {} |",
                i + 1,
                100.0 * dropped / (ev + dropped),
                get(x, "span_new"),
                get(x, "enter"),
                get(x, "exit"),
                get(x, "close"),
                get(x, "wake"),
                get(x, "rec_bytes") / 1048576.0,
                x.get("goodbye").map_or("?", |s| s.as_str()),
                x.get("error").map_or("?", |s| s.as_str()),
            );
        }
    }
}
