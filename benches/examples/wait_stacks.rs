//! What the stacks taken where tasks go to wait cost (`capture::wait_stack`):
//! a workload made of waits (16 tasks taking one tokio Mutex in turn, 5,000
//! times each, yielding while they hold it, on 2 workers: nearly every lock
//! is contended), in a child process per run, with
//!
//! - `none`: no subscriber;
//! - `aw-record`: `awaitscope::init()` recording to a file (native stacks
//!   on, the default);
//! - `aw-record-nostacks`: the same with `AWAITSCOPE_STACKS=off`;
//! - `console`: `console_subscriber::init()`.
//!
//! The modes run in turn, rotated each round; printed are the medians of
//! the rounds, each mode's time over `none`'s and stacks on over off, what
//! a recording holds per lock taken, and the records awaitscope dropped
//! because its exporter could not keep up (counted by the program, which
//! never waits for it).
//!
//! ```sh
//! cargo run --release -p awaitscope-benches --example wait_stacks
//! #   AWAITSCOPE_BENCH_ROUNDS=7   rounds
//! #   AWAITSCOPE_BENCH_WORKLOAD=timeouts   a timeout around each step of
//! #     16 tasks (5,000 steps each) instead of the lock: tokio's timers
//! ```
//!
//! Needs `--cfg tokio_unstable` (the workspace's `.cargo/config.toml`):
//! without it tokio reports no resource and no wait is taken.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const MODES: [&str; 4] = ["none", "aw-record", "aw-record-nostacks", "console"];

/// Tasks taking the lock, and the locks each takes.
const TASKS: usize = 16;
const LOCKS_PER_TASK: usize = 5_000;

/// The child: runs the workload under `mode`, prints its seconds.
fn child(mode: &str) {
    let _guard = match mode {
        "console" => {
            console_subscriber::init();
            None
        }
        "none" => None,
        _ => Some(awaitscope::init()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let t = Instant::now();
    if workload() == "timeouts" {
        rt.block_on(timeouts());
        println!("{}", t.elapsed().as_secs_f64());
        return;
    }
    rt.block_on(async {
        let m = Arc::new(tokio::sync::Mutex::new(0u64));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move {
                    for _ in 0..LOCKS_PER_TASK {
                        let mut g = m.lock().await;
                        *g += 1;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    });
    println!("{}", t.elapsed().as_secs_f64());
}

/// The workload: `locks` (the default) or `timeouts`
/// (`AWAITSCOPE_BENCH_WORKLOAD`).
fn workload() -> String {
    std::env::var("AWAITSCOPE_BENCH_WORKLOAD").unwrap_or_else(|_| "locks".into())
}

/// A timeout around every step of a request, the other tokio resource a
/// server makes per request: each `timeout` makes a timer (a resource, its
/// async op, its deadline set, its polls), and the step inside yields
/// once, so the timer is polled twice. As many steps as the lock workload
/// takes locks.
async fn timeouts() {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..LOCKS_PER_TASK {
                    let step = tokio::task::yield_now();
                    tokio::time::timeout(std::time::Duration::from_secs(5), step)
                        .await
                        .expect("the step ends in time");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

fn main() {
    if let Ok(mode) = std::env::var("AWAITSCOPE_WAIT_BENCH_CHILD") {
        return child(&mode);
    }
    let rounds: usize = std::env::var("AWAITSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let exe = std::env::current_exe().expect("this executable");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut taken = Vec::new();
    let mut dropped = Vec::new();
    // Per lock taken: records in all, span creations, log events.
    let mut per_lock: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for k in 0..MODES.len() {
            let i = (round + k) % MODES.len();
            let mode = MODES[i];
            let mut cmd = Command::new(&exe);
            cmd.env("AWAITSCOPE_WAIT_BENCH_CHILD", mode)
                .env("AWAITSCOPE_ADDR", "off")
                .env_remove("AWAITSCOPE_STACKS")
                .env_remove("AWAITSCOPE_RECORD");
            match mode {
                "aw-record" => {
                    cmd.env("AWAITSCOPE_RECORD", dir.path().join("on.aws"));
                }
                "aw-record-nostacks" => {
                    cmd.env("AWAITSCOPE_RECORD", dir.path().join("off.aws"))
                        .env("AWAITSCOPE_STACKS", "off");
                }
                "console" => {
                    cmd.env("TOKIO_CONSOLE_BIND", "127.0.0.1:0");
                }
                _ => {}
            }
            let out = cmd.output().expect("the child runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let s: f64 = text.trim().parse().unwrap_or_else(|_| {
                panic!("{mode}: {text}\n{}", String::from_utf8_lossy(&out.stderr))
            });
            secs[i].push(s);
            if mode == "aw-record" {
                let st = awaitscope_benches::read_recording(&dir.path().join("on.aws"));
                assert!(st.goodbye && st.error.is_none(), "{st:?}");
                taken.push(st.wait_stacks as f64);
                let locks = (TASKS * LOCKS_PER_TASK) as f64;
                for (v, n) in per_lock.iter_mut().zip([st.events, st.span_new, st.logs]) {
                    v.push(n as f64 / locks);
                }
                // Records the exporter could not take in time (counted by
                // the program): a share of what it made.
                dropped.push(st.buffer_full as f64 / (st.events + st.buffer_full).max(1) as f64);
            }
        }
    }
    let med: Vec<f64> = secs
        .iter_mut()
        .map(|v| awaitscope_benches::median(v))
        .collect();
    match workload().as_str() {
        "timeouts" => println!(
            "a timeout per step, {TASKS} tasks x {LOCKS_PER_TASK} steps, 2 workers; medians of {rounds} rounds"
        ),
        _ => println!(
            "contended tokio Mutex, {TASKS} tasks x {LOCKS_PER_TASK} locks, 2 workers; medians of {rounds} rounds"
        ),
    }
    println!("{:<20} {:>9} {:>9}", "mode", "seconds", "vs none");
    for (m, s) in MODES.iter().zip(&med) {
        println!("{m:<20} {s:>9.3} {:>8.2}x", s / med[0]);
    }
    println!(
        "stacks on / off: {:.3} (aw-record / aw-record-nostacks); stacks taken per run: {:.0} (median)",
        med[1] / med[2],
        awaitscope_benches::median(&mut taken)
    );
    let [all, spans, logs] = per_lock.each_mut().map(|v| awaitscope_benches::median(v));
    println!(
        "aw-record's recording per lock taken or step (median): {all:.1} records, of which {spans:.1} span creations and {logs:.1} log events"
    );
    let worst = dropped.iter().cloned().fold(0.0, f64::max);
    println!(
        "aw-record dropped (share of the records made): {} run(s) of {rounds} with drops, worst {:.1} %",
        dropped.iter().filter(|d| **d > 0.0).count(),
        worst * 100.0
    );
}
