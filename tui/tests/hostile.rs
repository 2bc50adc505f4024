//! Hostile peers against a real `awaitscope serve`: what a serve left
//! running for a team must survive. Each scenario starts its own serve on
//! a free loopback port, is bounded (no loop without a deadline) and stops
//! by itself; serve is ended with SIGTERM, which must write its report.
//!
//! * quiet connections (a valid hello, then nothing) in every slot: a real
//!   producer still gets in and its data arrives;
//! * a peer that trickles bytes never completing a frame is closed at the
//!   idle timeout;
//! * connections holding near-cap frames before their handshake, and
//!   viewers that never read: serve's peak memory stays under 256 MiB;
//! * producers that come and go: their processes are evicted after the
//!   retention and serve's memory comes back;
//! * wrong tokens back off; no file any command writes holds the token.
//!
//! (A restarted serve keeping its earlier recordings is
//! `cli.rs::serve_recordings_are_unique_private_tokenless_and_sigterm_reports`.)

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_wire::CloseKind;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_awaitscope");
const PROGRAM_ENV: &str = "AWAITSCOPE_HOSTILE_PROGRAM";
const MS: u64 = 1_000_000;
/// Conditions are awaited up to this, never timed.
const PATIENCE: Duration = Duration::from_secs(30);
/// serve's peak resident memory must stay under this.
const PEAK_RSS_LIMIT_KIB: u64 = 256 * 1024;

/// One scenario at a time: each holds a thousand sockets and measures
/// serve's memory, which another scenario's serve must not disturb.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The real producer, when run by a scenario: named tasks doing timers on
/// a two-worker runtime for a second, streaming to `ADDR`, then a clean
/// end. The token, if any, comes from `AWAITSCOPE_TOKEN`.
#[test]
fn hostile_program() {
    let Ok(spec) = std::env::var(PROGRAM_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let addr = parts.next().unwrap();
    let record = parts.next().filter(|f| !f.is_empty());
    let mut b = awaitscope::builder().stream_to(addr);
    if let Some(f) = record {
        b = b.record_to(f);
    }
    let guard = b.try_init().expect("init");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..4 {
            tasks.push(awaitscope::spawn_named(
                "real_producer_ticker",
                async move {
                    for _ in 0..50 {
                        tokio::time::sleep(Duration::from_millis(10 + i)).await;
                    }
                },
            ));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    drop(rt);
    drop(guard);
}

fn run_program(addr: &str, record: Option<&Path>, token: Option<&str>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "hostile_program",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(
        PROGRAM_ENV,
        format!(
            "{addr}|{}",
            record.map(|p| p.display().to_string()).unwrap_or_default()
        ),
    )
    .env_remove("AWAITSCOPE_RECORD")
    .env_remove("AWAITSCOPE_ADDR")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    match token {
        Some(t) => cmd.env("AWAITSCOPE_TOKEN", t),
        None => cmd.env_remove("AWAITSCOPE_TOKEN"),
    };
    let status = cmd.status().unwrap();
    assert!(status.success(), "the producer program failed: {status}");
}

/// A running serve: its address, and its log lines as they come.
struct Serve {
    child: Child,
    addr: String,
    log: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// A test that fails leaves no serve running.
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("AWAITSCOPE_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Serve {
            child,
            addr: String::new(),
            log,
            seen: Vec::new(),
        };
        let line = s.wait_for(|l| l.contains("listening on "), 1);
        s.addr = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        s
    }

    /// Waits until `n` log lines match `f`; the last of them. Patient
    /// while serve gets on: [`PATIENCE`] is the longest wait for the next
    /// matching line, not for all `n` (a thousand handshakes on a loaded
    /// machine take what they take).
    fn wait_for(&mut self, f: impl Fn(&str) -> bool, n: usize) -> String {
        let mut deadline = Instant::now() + PATIENCE;
        loop {
            let matching: Vec<&String> = self.seen.iter().filter(|l| f(l)).collect();
            if matching.len() >= n {
                return matching[n - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) => {
                    if f(&l) {
                        deadline = Instant::now() + PATIENCE;
                    }
                    self.seen.push(l);
                }
                Err(_) => panic!(
                    "serve did not log {n} matching lines in time; its log:\n{}",
                    self.tail()
                ),
            }
        }
    }

    fn drain_log(&mut self) {
        while let Ok(l) = self.log.try_recv() {
            self.seen.push(l);
        }
    }

    /// The last lines of the log, and counts of the routine ones left out.
    fn tail(&self) -> String {
        let routine = |l: &&String| {
            l.contains("producer connected")
                || l.contains("producer said goodbye")
                || l.contains("viewer connected")
        };
        let others: Vec<&String> = self.seen.iter().filter(|l| !routine(l)).collect();
        let n = others.len();
        format!(
            "({} routine lines: connected, goodbye)\n{}",
            self.seen.iter().filter(routine).count(),
            others[n.saturating_sub(40)..]
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// Peak resident memory so far, KiB.
    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident memory now, KiB.
    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// SIGTERM; serve must exit 0 having written its report.
    fn terminate(mut self, report: &Path) -> (Value, String) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The log thread ends with serve's stderr.
        while let Ok(l) = self.log.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        let log = self.seen.join("\n");
        assert_eq!(status.code(), Some(0), "{log}");
        let v: Value = serde_json::from_slice(
            &std::fs::read(report).unwrap_or_else(|e| panic!("no report ({e}):\n{log}")),
        )
        .unwrap();
        (v, log)
    }
}

/// A producer's opening: preamble and a valid hello (no token).
fn hello_bytes(pid: u32) -> Vec<u8> {
    let mut b = StreamBuilder::new(pid, 1_000 + pid as u64);
    b.hello("quiet", None, false);
    b.recording()
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A process of the report, by pid.
fn process(v: &Value, pid: u64) -> Option<&Value> {
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
}

#[test]
fn quiet_connections_in_every_slot_do_not_keep_a_real_producer_out() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("serve.json");
    let mut serve = Serve::start(&["--report", report.to_str().unwrap()]);
    // 1,024 connections that say hello and then nothing, one for each
    // slot; in batches well under the 256 connections that may be in
    // their handshake at once, each batch through it before the next
    // opens (serve slow to read the hellos of a thousand at once, on a
    // loaded machine, would close the oldest for newcomers).
    const SLOTS: u32 = 1024;
    const BATCH: u32 = 128;
    let mut quiet = Vec::new();
    for batch in 0..SLOTS / BATCH {
        for i in 0..BATCH {
            let mut s = connect(&serve.addr);
            let _ = s.write_all(&hello_bytes(100_000 + batch * BATCH + i));
            quiet.push(s);
        }
        serve.wait_for(
            |l| l.contains("producer connected"),
            ((batch + 1) * BATCH) as usize,
        );
    }
    // Six more, for a full serve: each refused (every slot made progress
    // within the idle grace) or given the slot of one idle past it (the
    // slots took that long to fill).
    for pid in SLOTS..SLOTS + 6 {
        let mut s = connect(&serve.addr);
        // A refused connection may be closed before this is written.
        let _ = s.write_all(&hello_bytes(100_000 + pid));
        quiet.push(s);
    }
    serve.wait_for(
        |l| {
            l.contains("refused connection: busy")
                || l.contains("closing the connection idle longest")
        },
        6,
    );
    // Once the idle grace (10 s) has passed since the last quiet
    // connection's hello (before serve logged it connected), the real
    // producer takes an idle one's slot.
    std::thread::sleep(Duration::from_secs(11));
    run_program(&serve.addr, None, None);
    serve.wait_for(|l| l.contains("producer said goodbye"), 1);
    drop(quiet);
    let (v, log) = serve.terminate(&report);
    assert!(
        log.contains("closing the connection idle longest"),
        "{log:.2000}"
    );
    let me = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] != "quiet")
        .unwrap_or_else(|| panic!("the real producer is not in the report"));
    let tasks_of_me: Vec<&Value> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["pid"] == me["pid"])
        .collect();
    assert_eq!(me["ended"], true, "{me:#}");
    let pid = me["pid"].as_u64().unwrap();
    let tickers = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["pid"] == pid && t["name"] == "real_producer_ticker")
        .count();
    assert_eq!(
        tickers, 4,
        "the real producer's tasks arrived: {me:#}\n{tasks_of_me:#?}"
    );
    // All of it: quiet connections hold no memory the producer needs.
    assert_eq!(v["dropped"]["total"], 0, "{:#}", v["dropped"]);
}

#[test]
fn a_trickle_of_bytes_does_not_put_off_the_idle_timeout() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("serve.json");
    let mut serve = Serve::start(&["--idle-timeout", "2", "--report", report.to_str().unwrap()]);
    let mut s = connect(&serve.addr);
    s.write_all(&hello_bytes(7)).unwrap();
    serve.wait_for(|l| l.contains("producer connected"), 1);
    // A frame of 1,000 bytes announced, then a byte every 200 ms: bytes
    // arrive, no frame ever completes.
    s.write_all(&1000u32.to_le_bytes()).unwrap();
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        if s.write_all(&[0]).is_err() {
            closed = true;
            break;
        }
        serve.drain_log();
        if serve.seen.iter().any(|l| l.contains("idle timeout")) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickling peer is still connected");
    let line = serve.wait_for(|l| l.contains("closed connection"), 1);
    assert!(line.contains("idle timeout (no whole frame)"), "{line}");
    let (v, _) = serve.terminate(&report);
    assert!(process(&v, 7).is_some());
}

#[test]
fn near_cap_frames_before_the_handshake_stay_within_the_budget() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("serve.json");
    let mut serve = Serve::start(&["--report", report.to_str().unwrap()]);
    let preamble = awaitscope_wire::preamble();
    let near_cap = awaitscope_wire::MAX_FRAME_LEN - 16;
    let junk = vec![0x5au8; near_cap];
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut s = connect(&serve.addr);
        // Half announce a frame near the general cap, half one just
        // under the hello cap, and send all of it but its last bytes.
        let len = if i % 2 == 0 { near_cap } else { 60 * 1024 };
        let mut head = preamble.to_vec();
        head.extend_from_slice(&(len as u32).to_le_bytes());
        let _ = s.write_all(&head);
        let _ = s.write_all(&junk[..len - 8]);
        held.push(s);
    }
    serve.drain_log();
    let peak = serve.peak_rss_kib();
    // A real producer still gets in: once the flood's connections have
    // been pending for a second, a newcomer takes the oldest one's slot.
    std::thread::sleep(Duration::from_millis(1200));
    run_program(&serve.addr, None, None);
    serve.wait_for(|l| l.contains("producer said goodbye"), 1);
    drop(held);
    let (v, log) = serve.terminate(&report);
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "serve's peak RSS {peak} KiB with 1,000 near-cap pre-handshake frames"
    );
    assert!(log.contains("over the cap of"), "{log:.3000}");
    assert_eq!(
        v["processes"].as_array().unwrap().len(),
        1,
        "only the real producer got through: {v:#}"
    );
    eprintln!("peak RSS with 1,000 near-cap pre-handshake frames: {peak} KiB");
}

/// A producer's stream of `tasks` tasks with many polls each: enough
/// events to fill every viewer's queue.
fn busy_stream(pid: u32, tasks: u64, polls: u64) -> Vec<u8> {
    let mut b = StreamBuilder::new(pid, 5_000);
    b.hello("busy", None, false);
    let mut ts = MS;
    for i in 0..tasks {
        let t = b.spawn(&TaskOpts::named("busy_task"), None, ts);
        for _ in 0..polls {
            b.poll(t, ts, ts + 1_000);
            ts += 2_000;
        }
        b.finish_task(t, CloseKind::Completed, ts);
        if i % 64 == 0 {
            b.flush();
        }
    }
    b.goodbye();
    b.recording()
}

/// Events in a recording's batches.
fn events_in(recording: &[u8]) -> u64 {
    let mut r = awaitscope_wire::FrameReader::new(recording).unwrap();
    let mut n = 0;
    while let Ok(Some(f)) = r.next_frame() {
        if let awaitscope_wire::Body::Events(e) = f.body {
            n += e.len() as u64;
        }
    }
    n
}

#[test]
fn viewers_that_never_read_stay_within_the_budget() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("serve.json");
    let mut serve = Serve::start(&["--report", report.to_str().unwrap()]);
    let greeting = awaitscope_collector::ingest::viewer::greeting(None);
    let mut viewers = Vec::new();
    for _ in 0..200 {
        let mut s = connect(&serve.addr);
        s.write_all(&greeting).unwrap();
        // Never read: let the kernel buffer as little as it will.
        viewers.push(s);
    }
    serve.wait_for(|l| l.contains("viewer connected"), 200);
    let stream = busy_stream(4300, 40_000, 50);
    let mut p = connect(&serve.addr);
    p.set_write_timeout(Some(PATIENCE)).unwrap();
    p.write_all(&stream).unwrap();
    drop(p);
    serve.wait_for(|l| l.contains("producer said goodbye"), 1);
    let peak = serve.peak_rss_kib();
    drop(viewers);
    let (v, log) = serve.terminate(&report);
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "serve's peak RSS {peak} KiB with 200 viewers that never read ({} bytes streamed)",
        stream.len()
    );
    // Every event is in the model or counted as dropped by the
    // collector (whose model, in a debug build, may fall behind a producer
    // writing as fast as loopback allows); viewers that do not read cost
    // only themselves.
    let busy = process(&v, 4300).unwrap();
    assert_eq!(busy["ended"], true);
    assert_eq!(
        busy["events"].as_u64().unwrap() + v["dropped"]["collector"].as_u64().unwrap(),
        events_in(&stream),
        "{busy:#}\n{:#}",
        v["dropped"]
    );
    assert!(
        log.contains("memory budget share=\"viewers\""),
        "serve logs its budget on exit"
    );
    eprintln!(
        "peak RSS with 200 viewers that never read, {} MiB streamed: {peak} KiB",
        stream.len() >> 20
    );
}

#[test]
fn producers_that_come_and_go_are_evicted_and_memory_comes_back() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("serve.json");
    let mut serve = Serve::start(&["--retention", "2s", "--report", report.to_str().unwrap()]);
    // Settled: the runtime and the first scans done.
    std::thread::sleep(Duration::from_millis(500));
    let start = serve.rss_kib();
    let streams: Vec<Vec<u8>> = (0..400u32)
        .map(|i| busy_stream(20_000 + i, 200, 5))
        .collect();
    // Paced: at most 128 connections ahead of serve's goodbyes. Faster,
    // on a loaded machine, and more than its 256 handshakes at once are
    // waiting: serve then refuses new ones (busy), as it should.
    for (i, chunk) in streams.chunks(8).enumerate() {
        let sent = i * 8;
        if sent > 128 {
            serve.wait_for(|l| l.contains("producer said goodbye"), sent - 128);
        }
        let conns: Vec<TcpStream> = chunk
            .iter()
            .map(|bytes| {
                let mut s = connect(&serve.addr);
                s.write_all(bytes).unwrap();
                s
            })
            .collect();
        drop(conns);
    }
    serve.wait_for(|l| l.contains("producer said goodbye"), 400);
    let full = serve.rss_kib();
    // Every one of them evicted (the scan evicts once a second)...
    let deadline = Instant::now() + PATIENCE;
    loop {
        serve.drain_log();
        let evicted: u64 = serve
            .seen
            .iter()
            .filter(|l| l.contains("evicted ended processes"))
            .filter_map(|l| l.split("processes=").nth(1)?.trim().parse::<u64>().ok())
            .sum();
        if evicted >= 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{evicted} of 400 evicted\n{}",
            serve.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...then memory back near where it started.
    let deadline = Instant::now() + PATIENCE;
    let mut now = serve.rss_kib();
    while now > start + 24 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = serve.rss_kib();
    }
    let (v, log) = serve.terminate(&report);
    let evicted = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["evicted"] == true)
        .count();
    assert_eq!(evicted, 400, "{}", &log[log.len().saturating_sub(3000)..]);
    assert!(
        v["tasks"].as_array().unwrap().is_empty(),
        "evicted processes' tasks are not listed"
    );
    assert!(
        now <= start + 24 * 1024,
        "RSS {now} KiB after eviction; {start} KiB at the start, {full} KiB with 400 processes"
    );
    eprintln!("RSS: {start} KiB at the start, {full} KiB with 400 ended processes, {now} KiB after eviction");
}

#[test]
fn wrong_tokens_back_off() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("serve.json");
    let mut serve = Serve::start(&[
        "--token",
        "the-right-token",
        "--report",
        report.to_str().unwrap(),
    ]);
    for guess in 0..3 {
        let mut b = StreamBuilder::new(9, 9);
        b.hello("guesser", Some(&format!("guess-{guess}")), false);
        let mut s = connect(&serve.addr);
        s.write_all(&b.recording()).unwrap();
        serve.wait_for(|l| l.contains("missing or wrong token"), guess + 1);
    }
    // The next guess is not even read.
    let _s = connect(&serve.addr);
    serve.wait_for(|l| l.contains("too many wrong tokens"), 1);
    let (v, _) = serve.terminate(&report);
    assert!(v["processes"].as_array().unwrap().is_empty());
}

/// Every file any command writes, grepped for the token: serve's
/// recordings and report, the producer's own recording, `record`'s
/// output, and `report --out` in every format.
#[test]
fn no_file_any_command_writes_holds_the_token() {
    let _one = one_at_a_time();
    const TOKEN: &str = "tok-3f1c9a7e-never-in-a-file";
    let dir = tempfile::tempdir().unwrap();
    let recs = dir.path().join("recs");
    let report = dir.path().join("serve.json");
    let mut serve = Serve::start(&[
        "--token",
        TOKEN,
        "--record-dir",
        recs.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let own = dir.path().join("own.rec");
    run_program(&serve.addr, Some(&own), Some(TOKEN));
    serve.wait_for(|l| l.contains("producer said goodbye"), 1);
    let (v, _) = serve.terminate(&report);
    assert_eq!(v["processes"].as_array().unwrap().len(), 1);
    // `record` of the same program, the token in its environment.
    let recorded = dir.path().join("recorded.rec");
    let o = Command::new(BIN)
        .args(["record", "--out"])
        .arg(&recorded)
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "hostile_program", "--nocapture"])
        .env(PROGRAM_ENV, format!("{}|", serve_addr_unused()))
        .env("AWAITSCOPE_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for format in [
        "json", "text", "markdown", "junit", "perfetto", "chrome", "folded", "svg", "github",
    ] {
        let out = dir.path().join(format!("report.{format}"));
        let o = Command::new(BIN)
            .args(["report", "--format", format, "--out"])
            .arg(&out)
            .arg(&own)
            .arg(&recorded)
            .output()
            .unwrap();
        assert!(
            o.status.code().is_some_and(|c| c <= 1),
            "report --format {format}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut files = Vec::new();
    collect_files(dir.path(), &mut files);
    assert!(files.len() >= 12, "{files:?}");
    for f in &files {
        let content = std::fs::read(f).unwrap();
        assert!(
            !content.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the token",
            f.display()
        );
    }
}

/// An address nobody listens on: the program records, its stream counts
/// its losses.
fn serve_addr_unused() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}
