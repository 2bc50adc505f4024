//! A real tokio application under each subscriber: tokio's mini-redis
//! (0.4.1, from crates.io) serving SET/GET to clients over loopback.
//!
//! `cargo bench -p awaitscope-benches --bench mini_redis`
//!
//! Each measurement is a child process (this binary re-executed with
//! `AWAITSCOPE_BENCH_CHILD=<mode>`) running the mini-redis server on a
//! 2-worker multi-thread runtime, with one line of subscriber setup as a
//! user would write it (`awaitscope::init()`, configured by the
//! environment; `console_subscriber::init()`). The parent process, which
//! installs no subscriber, runs the clients on a runtime of its own: 32
//! connections, each doing SET then GET of its own keys in a loop, for a
//! fixed time after a short warm-up, and counts the operations answered.
//! Then it closes the child's stdin (the server's shutdown signal); the
//! child drops its guard (final flush), and prints one `RESULT` line: its
//! peak RSS, and for the recording mode what the recording holds.
//!
//! Streaming: (b) to a closed port, as `init()` does when no collector is
//! up (the stream's events are counted as not delivered, and awaitscope
//! says so on stderr at exit); (c) to a stand-in collector in the parent
//! that reads and discards what it gets (the encoding and the writes are
//! paid; a real collector's decoding is not, on this machine's 2 cores).
//! (f) is (d) with the span filter keeping tokio's task spans only, what a
//! user who wants tasks, polls and wakes but not mini-redis's per-command
//! `#[instrument]` spans can ask for (console-subscriber's default filter
//! drops those spans too). (g) is a floor: a subscriber handed every span
//! and event awaitscope is handed that does nothing with them (see
//! `awaitscope_benches::floor`), the cost of `tracing`'s calls alone, which
//! no subscriber keeping the same spans can go under; (h) is the same with
//! tokio's task spans only, the floor under (f).
//!
//! Rounds run every mode once, side by side, the order rotated each round;
//! the cost of a mode is its time per operation, and the reported ratio,
//! as in the `workload` bench, is per round `(t_mode - t_none) /
//! (t_console - t_none)`, the median over rounds. The same ratio is given
//! for the server's CPU time per operation (its threads' CPU time over the
//! measured window, read by the parent from `/proc`), which other
//! processes loading the machine disturb much less than wall time.
//! Under the table, each ratio's spread over the rounds with its notch
//! (the median's box-plot interval), and whether the run resolved the
//! ratios at all: where console adds a few percent and the machine drifts
//! by more between rounds, their medians are noise (see
//! `awaitscope_benches::Resolution`), and the instruction counts of
//! `benches/callgrind/per_command.sh` are the measure.
//!
//! Environment:
//! - `AWAITSCOPE_BENCH_ROUNDS` (default 5): rounds of all modes.
//! - `AWAITSCOPE_BENCH_MODES`: comma-separated subset of the modes (`none`
//!   is always run).
//! - `AWAITSCOPE_BENCH_SECS` (default 2): measured seconds per run (after
//!   a warm-up of a quarter of that).
//! - `AWAITSCOPE_BENCH_CLIENTS` (default 32): client connections.
//! - `AWAITSCOPE_BENCH_KEEP`: path; the recording mode copies its
//!   recording there (last run wins).
//! - `AWAITSCOPE_BENCH_WRAPPER`: a command (split at spaces) the server
//!   child runs under, e.g. `valgrind --tool=callgrind`, to count the
//!   instructions per operation of one mode (`total_ops` in the child's
//!   line is every operation it answered, warm-up included).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener as StdListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use awaitscope_benches::{get, median, parse, peak_rss_kib, read_recording, Notch, Resolution};

const CHILD_ENV: &str = "AWAITSCOPE_BENCH_CHILD";

/// Modes, in their base order. `none` is the baseline of the ratios.
const MODES: &[(&str, &str)] = &[
    ("none", "(a) no subscriber"),
    (
        "aw-stream",
        "(b) `awaitscope::init()`, streaming (nobody listening)",
    ),
    (
        "aw-collector",
        "(c) `awaitscope::init()`, streaming to a reader (a sink that reads and discards)",
    ),
    ("aw-record", "(d) `awaitscope::init()`, recording to a file"),
    ("console", "(e) `console_subscriber::init()`"),
    (
        "aw-record-tasks",
        "(f) as (d), with `AWAITSCOPE_SPANS=off` (tokio's task spans only)",
    ),
    (
        "floor",
        "(g) a subscriber handed what (b)-(d) are, doing nothing with it (tracing's own calls)",
    ),
    (
        "floor-tasks",
        "(h) as (g), tokio's task spans only (as (f))",
    ),
];

// ---------------------------------------------------------------- child

/// The server: installs the mode's subscriber (one line, as a user would),
/// serves until stdin closes, then drops the guard and reports.
fn child_main(mode: &str) {
    // Configured by the parent through the environment (AWAITSCOPE_ADDR,
    // AWAITSCOPE_RECORD, TOKIO_CONSOLE_BIND).
    let guard = match mode {
        "none" => None,
        "aw-stream" | "aw-collector" | "aw-record" | "aw-record-tasks" => Some(awaitscope::init()),
        "console" => {
            console_subscriber::init();
            None
        }
        "floor" | "floor-tasks" => {
            awaitscope_benches::floor::init(mode == "floor-tasks");
            None
        }
        other => panic!("unknown mode {other}"),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT {}", listener.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        // Shutdown: the parent closes our stdin.
        let shutdown = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        });
        mini_redis::server::run(listener, shutdown).await.unwrap();
    });
    drop(rt);
    drop(guard);
    let mut line = format!("RESULT mode={mode} maxrss_kib={}", peak_rss_kib());
    if let Ok(path) = std::env::var("AWAITSCOPE_RECORD") {
        let st = read_recording(std::path::Path::new(&path));
        if let Ok(keep) = std::env::var("AWAITSCOPE_BENCH_KEEP") {
            let _ = std::fs::copy(&path, keep);
        }
        line.push_str(&st.result_fields());
    }
    println!("{line}");
}

// ---------------------------------------------------------------- parent

/// A port nobody listens on (bound, read, closed).
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A collector stand-in (mode `aw-collector`): accepts connections and reads (and discards)
/// everything, on a thread of its own, until the process ends.
fn start_sink() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 1 << 16];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// The name of awaitscope's exporter thread as `/proc/<pid>/task/*/comm`
/// shows it (the kernel keeps 15 bytes of "awaitscope-export").
const EXPORTER_COMM: &str = "awaitscope-expo";

/// CPU time and wake-ups of a server process so far, from its threads'
/// `/proc` files (threads that ended are not counted: the server's threads
/// live as long as it).
#[derive(Clone, Copy, Default)]
struct ServerCpu {
    /// CPU time (ns) of all its threads (`schedstat`).
    all_ns: u64,
    /// Of which awaitscope's exporter thread's (0 without awaitscope).
    exporter_ns: u64,
    /// The exporter thread's voluntary context switches (`status`): how
    /// often it slept and was woken.
    exporter_switches: u64,
}

impl ServerCpu {
    fn read(pid: u32) -> Self {
        let mut cpu = Self::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return cpu;
        };
        for t in tasks.flatten() {
            let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            else {
                continue;
            };
            cpu.all_ns += ns;
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == EXPORTER_COMM {
                cpu.exporter_ns += ns;
                cpu.exporter_switches += std::fs::read_to_string(t.path().join("status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                    .unwrap_or(0);
            }
        }
        cpu
    }

    /// What was spent between `before` and `self`, scaled by `scale`.
    fn since(self, before: Self, scale: f64) -> Self {
        let d = |a: u64, b: u64| (a.saturating_sub(b) as f64 * scale) as u64;
        Self {
            all_ns: d(self.all_ns, before.all_ns),
            exporter_ns: d(self.exporter_ns, before.exporter_ns),
            exporter_switches: d(self.exporter_switches, before.exporter_switches),
        }
    }
}

/// Runs `clients` connections against the server at `port` (process
/// `pid`) for a warm-up and then `secs` seconds; returns the operations
/// answered in the measured window, scaled to exactly `secs`, all the
/// operations answered, and the server's CPU over the window (scaled
/// alike).
fn drive(
    rt: &tokio::runtime::Runtime,
    port: u16,
    pid: u32,
    clients: usize,
    secs: f64,
) -> (u64, u64, ServerCpu) {
    let ops = Arc::new(AtomicU64::new(0));
    let all_ops = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    rt.block_on(async {
        let mut handles = Vec::new();
        for c in 0..clients {
            let (ops, all_ops) = (ops.clone(), all_ops.clone());
            let (counting, stop) = (counting.clone(), stop.clone());
            handles.push(tokio::spawn(async move {
                let mut client = mini_redis::client::connect(("127.0.0.1", port))
                    .await
                    .expect("connect to mini-redis");
                let value = bytes::Bytes::from(vec![b'v'; 32]);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("client{c}-key{}", i % 64);
                    client.set(&key, value.clone()).await.expect("SET");
                    let got = client.get(&key).await.expect("GET");
                    assert!(got.is_some(), "GET of a key just SET");
                    all_ops.fetch_add(2, Ordering::Relaxed);
                    if counting.load(Ordering::Relaxed) {
                        ops.fetch_add(2, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(secs / 4.0)).await;
        counting.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let cpu0 = ServerCpu::read(pid);
        let start = ops.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let n = ops.load(Ordering::Relaxed) - start;
        let cpu = ServerCpu::read(pid);
        let elapsed = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.await.unwrap();
        }
        // Operations per `secs`, whatever the timer's lateness.
        let scale = secs / elapsed;
        (
            (n as f64 * scale) as u64,
            all_ops.load(Ordering::Relaxed),
            cpu.since(cpu0, scale),
        )
    })
}

/// One measurement: the server in a child process under `mode`, driven for
/// `secs`; its `RESULT` fields plus `ops`.
fn run_one(
    exe: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    mode: &str,
    sink_port: u16,
    clients: usize,
    secs: f64,
) -> BTreeMap<String, String> {
    let wrapper = std::env::var("AWAITSCOPE_BENCH_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.env(CHILD_ENV, mode)
        .env_remove("AWAITSCOPE_RECORD")
        .env_remove("AWAITSCOPE_ADDR")
        .env_remove("AWAITSCOPE")
        .env_remove("AWAITSCOPE_SPANS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut recording = None;
    match mode {
        "aw-stream" => {
            cmd.env("AWAITSCOPE_ADDR", format!("127.0.0.1:{}", free_port()));
        }
        "aw-collector" => {
            cmd.env("AWAITSCOPE_ADDR", format!("127.0.0.1:{sink_port}"));
        }
        "aw-record" | "aw-record-tasks" => {
            if mode == "aw-record-tasks" {
                cmd.env("AWAITSCOPE_SPANS", "off");
            }
            let path = tempfile::Builder::new()
                .prefix("awaitscope-bench-redis-")
                .suffix(".awrec")
                .tempfile()
                .unwrap()
                .into_temp_path();
            cmd.env("AWAITSCOPE_ADDR", "off")
                .env("AWAITSCOPE_RECORD", &path);
            recording = Some(path);
        }
        "console" => {
            cmd.env("TOKIO_CONSOLE_BIND", format!("127.0.0.1:{}", free_port()));
        }
        _ => {}
    }
    let mut child = cmd.spawn().expect("spawn server child");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("server child {mode} ended before printing its port");
        }
        if let Some(p) = line.trim().strip_prefix("PORT ") {
            break p.parse().unwrap();
        }
    };
    let (ops, total_ops, window_cpu) = drive(rt, port, child.id(), clients, secs);
    drop(child.stdin.take()); // shutdown
    let mut result = None;
    for l in out.lines() {
        let l = l.unwrap();
        if l.starts_with("RESULT ") {
            result = Some(parse(&l));
        }
    }
    let status = child.wait().unwrap();
    drop(recording);
    let mut res = result.unwrap_or_else(|| panic!("server child {mode} failed ({status})"));
    res.insert("ops".into(), ops.to_string());
    res.insert("window_cpu_ns".into(), window_cpu.all_ns.to_string());
    res.insert("exporter_cpu_ns".into(), window_cpu.exporter_ns.to_string());
    res.insert(
        "exporter_switches".into(),
        window_cpu.exporter_switches.to_string(),
    );
    res.insert("total_ops".into(), total_ops.to_string());
    res
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child_main(&mode);
        return;
    }
    // `cargo bench` passes `--bench`; anything else (`cargo test
    // --benches`) gets a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let env_num = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(d)
    };
    let rounds = env_num("AWAITSCOPE_BENCH_ROUNDS", if full { 5.0 } else { 1.0 }) as usize;
    let secs = env_num("AWAITSCOPE_BENCH_SECS", if full { 2.0 } else { 0.3 });
    let clients = env_num("AWAITSCOPE_BENCH_CLIENTS", 32.0) as usize;
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
    // The clients' runtime: as many workers as the server's.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink_port = start_sink();
    println!(
        "mini-redis 0.4.1 server (child process, 2 workers) <- {clients} clients (this process, \
         2 workers, no subscriber) doing SET+GET over loopback, {secs} s measured after \
         {:.2} s warm-up",
        secs / 4.0
    );
    println!(
        "{rounds} rounds x {} modes, one child process per run, mode order rotated each round",
        modes.len()
    );

    // One run unmeasured first: the first child of a process ran slower
    // than the others (page cache, the clients' runtime warming up).
    run_one(&exe, &rt, "none", sink_port, clients, secs / 4.0);

    let mut results: BTreeMap<&str, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for r in 0..rounds {
        let mut order = modes.clone();
        order.rotate_left(r % modes.len());
        let mut line = format!("round {}/{}:", r + 1, rounds);
        for m in &order {
            let res = run_one(&exe, &rt, m, sink_port, clients, secs);
            line.push_str(&format!(" {m}={:.0}k ops/s", get(&res, "ops") / secs / 1e3));
            if std::env::var_os("AWAITSCOPE_BENCH_WRAPPER").is_some() {
                line.push_str(&format!(" (total_ops={})", get(&res, "total_ops")));
            }
            if m.starts_with("aw-record") {
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

    // Per round and mode: wall time per operation, and the server's CPU
    // time per operation (ns).
    let per_op = |m: &str, key: Option<&str>| -> Vec<f64> {
        results[m]
            .iter()
            .map(|x| key.map_or(secs * 1e9, |k| get(x, k)) / get(x, "ops"))
            .collect()
    };
    // Per round, (mode - none) / (console - none); the median.
    let share = |t: &[f64], base: &[f64], console: Option<&Vec<f64>>| {
        console.map(|c| {
            let mut v: Vec<f64> = t
                .iter()
                .zip(base)
                .zip(c)
                .map(|((a, b), c)| (a - b) / (c - b))
                .collect();
            median(&mut v)
        })
    };
    let fmt = |a: Option<f64>| a.map_or("-".into(), |a| format!("{a:.3}"));
    let (base, base_cpu) = (per_op("none", None), per_op("none", Some("window_cpu_ns")));
    let has_console = results.contains_key("console");
    let console = has_console.then(|| per_op("console", None));
    let console_cpu = has_console.then(|| per_op("console", Some("window_cpu_ns")));
    println!();
    println!(
        "| mode | median ops/s | time per op vs (a) (paired median) | \
         added time per op / console's (paired median) | server CPU per op (us, median) | \
         added CPU per op / console's (paired median) | median (max) peak RSS (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (m, label) in MODES.iter().filter(|m| modes.contains(&m.0)) {
        let runs = &results[m];
        let t = per_op(m, None);
        let mut cpu = per_op(m, Some("window_cpu_ns"));
        let mut ops: Vec<f64> = runs.iter().map(|x| get(x, "ops") / secs).collect();
        let mut paired: Vec<f64> = t.iter().zip(&base).map(|(a, b)| a / b).collect();
        let added = share(&t, &base, console.as_ref());
        let added_cpu = share(&cpu, &base_cpu, console_cpu.as_ref());
        let mut rss: Vec<f64> = runs.iter().map(|x| get(x, "maxrss_kib") / 1024.0).collect();
        println!(
            "| {label} | {:.0} | {:.2}x | {} | {:.2} | {} | {:.1} ({:.1}) |",
            median(&mut ops),
            median(&mut paired),
            fmt(added),
            median(&mut cpu) / 1e3,
            fmt(added_cpu),
            median(&mut rss),
            rss.iter().copied().fold(0.0, f64::max),
        );
    }
    println!();
    println!(
        "(server CPU: user + system time of the server's threads over the measured window, \
         from /proc/<pid>/task/*/schedstat; unlike wall time, it does not count what other \
         processes on the machine take)"
    );
    if let (Some(console), Some(console_cpu)) = (&console, &console_cpu) {
        // The rounds' spread, and whether the machine resolved the ratios
        // at all: a median alone hides both.
        let shown: Vec<_> = MODES
            .iter()
            .filter(|m| modes.contains(&m.0) && m.0 != "none" && m.0 != "console")
            .collect();
        let ratios = |t: &[f64], base: &[f64], c: &[f64]| -> Vec<f64> {
            t.iter()
                .zip(base)
                .zip(c)
                .map(|((a, b), c)| (a - b) / (c - b))
                .collect()
        };
        for (what, key, base, console) in [
            ("time", None, &base, console),
            ("server CPU", Some("window_cpu_ns"), &base_cpu, console_cpu),
        ] {
            let notches: Vec<Notch> = shown
                .iter()
                .map(|(m, _)| Notch::of(&ratios(&per_op(m, key), base, console)))
                .collect();
            println!();
            println!(
                "{what}: {}",
                Resolution::of(base, console, &notches).describe()
            );
            println!();
            println!("added {what} per op / console's, over the rounds:");
            println!(
                "| mode | least | lower quartile | median | upper quartile | most | notch (median +- 1.58 IQR / sqrt(rounds)) |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|");
            for ((_, label), n) in shown.iter().zip(&notches) {
                let q: Vec<String> = n.quartiles.iter().map(|q| format!("{q:.3}")).collect();
                println!(
                    "| {label} | {} | {:.3}-{:.3} |",
                    q.join(" | "),
                    n.median() - n.half_width,
                    n.median() + n.half_width
                );
            }
        }
    }
    let exporter_modes: Vec<_> = MODES
        .iter()
        .filter(|m| m.0.starts_with("aw-") && modes.contains(&m.0))
        .collect();
    if !exporter_modes.is_empty() {
        println!();
        println!(
            "awaitscope's exporter thread over the measured window (medians of rounds; a \
             wake-up is one voluntary context switch, /proc/<pid>/task/*/status):"
        );
        println!("| mode | share of the server's CPU | wake-ups a second |");
        println!("|---|---:|---:|");
        for (m, label) in exporter_modes {
            let runs = &results[m];
            let mut share: Vec<f64> = runs
                .iter()
                .map(|x| get(x, "exporter_cpu_ns") / get(x, "window_cpu_ns").max(1.0))
                .collect();
            let mut wakes: Vec<f64> = runs
                .iter()
                .map(|x| get(x, "exporter_switches") / secs)
                .collect();
            println!(
                "| {label} | {:.3} | {:.0} |",
                median(&mut share),
                median(&mut wakes)
            );
        }
    }
    for (mode, label) in [("aw-record", "(d)"), ("aw-record-tasks", "(f)")] {
        let Some(runs) = results.get(mode) else {
            continue;
        };
        println!();
        println!("recordings of {label}, per run (per op: over every operation answered):");
        println!(
            "| run | events written | events per op | dropped | SpanNew | Close | polls | \
             Wake | MiB | Goodbye | decode error |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
        for (i, x) in runs.iter().enumerate() {
            let dropped = get(x, "buffer_full") + get(x, "disconnected") + get(x, "write_failed");
            println!(
                "| {} | {:.0} | {:.1} | {dropped:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {} \
                 | {} |",
                i + 1,
                get(x, "events"),
                get(x, "events") / get(x, "total_ops"),
                get(x, "span_new"),
                get(x, "close"),
                get(x, "exit"),
                get(x, "wake"),
                get(x, "rec_bytes") / 1048576.0,
                x.get("goodbye").map_or("?", |s| s.as_str()),
                x.get("error").map_or("?", |s| s.as_str()),
            );
        }
    }
}
