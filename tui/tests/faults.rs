//! Faults between a real instrumented program and a real collector
//! (`awaitscope serve`): the collector down from the start, started late,
//! killed and restarted, or accepting and never reading; the program ending
//! without dropping its guard. Each scenario runs the program (this test
//! binary, re-run for [`faults_program`]) with a recording file as a second
//! sink that keeps everything, and checks against it that every event the
//! collector did not get is counted, that the program's exit is not held up,
//! and that the healthy program has no findings.
//!
//! Loopback only; every scenario is bounded (a few seconds of program) and
//! stops by itself.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use awaitscope_wire::{Body, DropCounts, Event, FrameReader};
use serde_json::Value;

const PROGRAM_ENV: &str = "AWAITSCOPE_FAULTS_PROGRAM";
const BIN: &str = env!("CARGO_BIN_EXE_awaitscope");
/// Generous bound of the program's exit after its last line of work: the
/// exporter waits at most 200 ms for a collector.
const EXIT_BOUND: Duration = Duration::from_secs(1);
/// Conditions are awaited up to this, never timed.
const PATIENCE: Duration = Duration::from_secs(15);

/// One scenario at a time: on a small machine, programs and collectors of
/// several scenarios at once would starve each other's tasks (real
/// `starvation` findings on a program that is healthy on its own).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the program ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Drops its guard, then returns from the test.
    Drop,
    /// `std::process::exit(0)` with the guard alive.
    Exit,
    /// Leaks the guard, then returns.
    Leak,
}

/// The instrumented program, when run by a scenario: timers, wakes and
/// yields on a two-worker runtime for a while, nothing that is slow or
/// stuck. The spec is `ADDR|FILE|MILLIS|END|BUSY` (ADDR `-` for no stream).
#[test]
fn faults_program() {
    let Ok(spec) = std::env::var(PROGRAM_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (addr, file, millis, end, busy) = (parts[0], parts[1], parts[2], parts[3], parts[4]);
    let mut builder = awaitscope::builder().record_to(file);
    builder = if addr == "-" {
        builder.no_stream()
    } else {
        builder.stream_to(addr)
    };
    let guard = builder.try_init().expect("init");
    let millis: u64 = millis.parse().unwrap();
    let busy = busy == "busy";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("working");
    rt.block_on(async move {
        let until = tokio::time::Instant::now() + Duration::from_millis(millis);
        let mut tasks = Vec::new();
        for i in 0..4 {
            tasks.push(awaitscope::spawn_named(
                &format!("ticker-{i}"),
                async move {
                    let mut n = 0u64;
                    while tokio::time::Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        n += 1;
                    }
                    n
                },
            ));
        }
        if busy {
            for i in 0..2 {
                tasks.push(awaitscope::spawn_named(&format!("churn-{i}"), async move {
                    let mut n = 0u64;
                    while tokio::time::Instant::now() < until {
                        for _ in 0..50 {
                            tokio::task::yield_now().await;
                            n += 1;
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    n
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    drop(rt);
    println!("exiting");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match end {
        "drop" => drop(guard),
        "exit" => std::process::exit(0),
        _ => std::mem::forget(guard),
    }
}

/// A running program of [`faults_program`].
struct Program {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Program {
    fn start(addr: Option<SocketAddr>, file: &Path, millis: u64, end: End, busy: bool) -> Self {
        let end = match end {
            End::Drop => "drop",
            End::Exit => "exit",
            End::Leak => "leak",
        };
        let addr = addr.map_or("-".to_string(), |a| a.to_string());
        let spec = format!(
            "{addr}|{}|{millis}|{end}|{}",
            file.display(),
            if busy { "busy" } else { "calm" }
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "faults_program",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PROGRAM_ENV, spec)
            .env_remove("AWAITSCOPE")
            .env_remove("AWAITSCOPE_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("program");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Program {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the program to end; returns how long its exit took after
    /// its work was done, and its stderr.
    fn finish(mut self) -> (Duration, String) {
        let done = loop {
            match self.stdout.recv_timeout(PATIENCE) {
                Ok(l) if l.trim().ends_with("exiting") => break Instant::now(),
                Ok(_) => {}
                Err(e) => panic!("program did not finish its work: {e}"),
            }
        };
        let deadline = done + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("program did not exit");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let delay = done.elapsed();
        eprintln!("program's exit took {delay:?}");
        assert!(status.success(), "program failed: {status}");
        let stderr: Vec<String> = self.stderr.iter().collect();
        (delay, stderr.join("\n"))
    }
}

/// The lines of `r`, read on a thread of their own (a full pipe would block
/// the process writing it).
fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                // Keep draining: the process must not block on a full pipe.
            }
        }
    });
    rx
}

/// `awaitscope serve`, recording what it receives, with its JSON report.
struct Serve {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    report: PathBuf,
}

impl Serve {
    /// Starts `serve` on `listen` (port 0 for any); returns once it listens.
    fn start(listen: SocketAddr, dir: &Path, name: &str) -> Serve {
        let rec = dir.join(name);
        let report = dir.join(format!("{name}.json"));
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--record-dir")
            .arg(&rec)
            .arg("--report")
            .arg(&report)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve");
        let stderr = lines(child.stderr.take().unwrap());
        let addr = loop {
            let l = stderr
                .recv_timeout(PATIENCE)
                .expect("serve did not start listening");
            if let Some(at) = l.find("listening on ") {
                let a: String = l[at + "listening on ".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                break a.parse().expect("serve's address");
            }
        };
        std::thread::spawn(move || for _ in stderr.iter() {});
        Serve {
            child,
            addr,
            dir: rec,
            report,
        }
    }

    /// Stops it as Ctrl-C does; returns its report.
    fn stop(mut self) -> (Value, PathBuf) {
        // SAFETY: a plain signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve failed: {status}");
        let report = std::fs::read_to_string(&self.report).expect("serve's report");
        (
            serde_json::from_str(&report).unwrap(),
            recording_in(&self.dir),
        )
    }

    /// `kill -9`.
    fn kill(mut self) -> PathBuf {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        recording_in(&self.dir)
    }
}

/// The one recording `serve` wrote in `dir`.
fn recording_in(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("serve's recordings")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one recording in {}", dir.display());
    files[0].clone()
}

/// An address nothing listens on.
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// What a stream or recording holds, read frame by frame.
#[derive(Debug, Default)]
struct Stream {
    /// Events of `Events` frames.
    events: u64,
    /// Of those, the events of a reconnect handshake (the `Events` frames
    /// right after a `Hello` without a `Thread` event: callsites, live
    /// spans and their trees, sent again).
    handshake: u64,
    /// The last drop counts.
    dropped: DropCounts,
    seq_gaps: u64,
    goodbye: bool,
}

fn read_stream(path: &Path) -> Stream {
    let f = std::fs::File::open(path).unwrap();
    let mut r = FrameReader::new(BufReader::new(f)).expect("preamble");
    let mut s = Stream::default();
    let mut last_seq: Option<u64> = None;
    let mut after_hello = false;
    let mut hellos = 0;
    // A killed collector's recording may end inside a frame.
    while let Ok(Some(frame)) = r.next_frame() {
        if let Some(l) = last_seq {
            if frame.seq != l + 1 {
                s.seq_gaps += 1;
            }
        }
        last_seq = Some(frame.seq);
        match frame.body {
            Body::Hello(_) => {
                hellos += 1;
                after_hello = true;
            }
            Body::Events(evs) => {
                s.events += evs.len() as u64;
                let thread = evs.iter().any(|e| matches!(e, Event::Thread { .. }));
                if after_hello && !thread && hellos > 0 {
                    s.handshake += evs.len() as u64;
                } else {
                    after_hello = false;
                }
            }
            Body::Dropped(d) => {
                s.dropped = d;
                after_hello = false;
            }
            Body::Goodbye => s.goodbye = true,
        }
    }
    s
}

/// `awaitscope report FILE --format json`.
fn report(path: &Path) -> Value {
    let out = Command::new(BIN)
        .arg("report")
        .arg(path)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "report {}: {:?}", path.display(), out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The program's own recording kept everything: complete, nothing dropped,
/// no gap, no finding.
fn assert_complete(file: &Path) -> Stream {
    let s = read_stream(file);
    assert!(s.goodbye, "recording ends with a Goodbye: {s:?}");
    assert_eq!(s.dropped.total(), 0, "the recording lost nothing: {s:?}");
    assert_eq!(s.seq_gaps, 0, "{s:?}");
    assert!(s.events > 1000, "the program was busy: {s:?}");
    let r = report(file);
    assert_eq!(r["dropped"]["total"], 0);
    assert_eq!(r["processes"][0]["seq_gaps"], 0);
    assert_eq!(r["processes"][0]["ended"], true);
    assert_eq!(r["warnings"], serde_json::json!([]), "{}", r["warnings"]);
    assert_eq!(
        findings(&r),
        Vec::<String>::new(),
        "a healthy program: {}",
        r["findings"]
    );
    s
}

/// Below this, a long poll or a wait for a worker is the machine's own
/// noise (a loaded 2-core machine preempts a worker mid-poll for 10-20 ms),
/// not a fault's: the false findings faults caused were of 1.5 s and more.
const NOISE_NS: u64 = 250_000_000;

/// The kinds of a report's findings, less the machine's noise (see
/// [`NOISE_NS`]).
fn findings(r: &Value) -> Vec<String> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            let timed = ["long_poll", "starvation", "never_yielded", "descheduled"]
                .iter()
                .any(|k| f["kind"] == *k);
            !(timed && f["worst_ns"].as_u64().is_some_and(|w| w < NOISE_NS))
        })
        .map(|f| f["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The kinds of the findings of a collector's report. A producer that
/// connected late or reconnected once got false `starvation` findings
/// ("woken but not polled" for the whole time before the connection): the
/// handshake's re-sent state must start no wait.
fn collector_findings(r: &Value) -> Vec<String> {
    findings(r)
}

/// The count the program printed of events its collector never got.
fn undelivered(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("awaitscope: ")?;
            let (n, tail) = rest.split_once(' ')?;
            tail.starts_with("events were not delivered")
                .then(|| n.parse::<u64>().ok())?
        })
        .sum()
}

#[test]
fn collector_down_from_the_start() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.awaitscope");
    let p = Program::start(Some(free_addr()), &file, 1200, End::Drop, false);
    let (delay, stderr) = p.finish();
    assert!(delay < EXIT_BOUND, "exit took {delay:?}");
    let kept = assert_complete(&file);
    // Every events frame was missed by the collector, and counted.
    assert_eq!(undelivered(&stderr), kept.events, "{stderr}");
}

#[test]
fn collector_started_late() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.awaitscope");
    let addr = free_addr();
    let p = Program::start(Some(addr), &file, 2500, End::Drop, false);
    std::thread::sleep(Duration::from_millis(800));
    let serve = Serve::start(addr, dir.path(), "serve");
    let (delay, stderr) = p.finish();
    let (r, rec) = serve.stop();
    assert!(delay < EXIT_BOUND, "exit took {delay:?}");
    let kept = assert_complete(&file);
    let got = read_stream(&rec);
    assert!(got.goodbye, "{got:?}");
    assert!(
        got.dropped.disconnected > 0,
        "the outage is counted: {got:?}"
    );
    // What the collector got (less what the handshake sent again) and what
    // it was told it missed are exactly what the program recorded.
    assert_eq!(
        got.events - got.handshake + got.dropped.total(),
        kept.events,
        "collector {got:?}, recording {kept:?}"
    );
    assert_eq!(got.seq_gaps, 0, "{got:?}");
    assert_eq!(undelivered(&stderr), 0, "{stderr}");
    assert_eq!(r["dropped"]["total"], got.dropped.total());
    assert_eq!(r["processes"][0]["seq_gaps"], 0);
    assert_eq!(r["processes"][0]["ended"], true);
    assert_eq!(
        collector_findings(&r),
        vec!["dropped_events".to_string()],
        "only the outage: {}",
        r["findings"]
    );
}

#[test]
fn collector_killed_and_restarted() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.awaitscope");
    let first = Serve::start("127.0.0.1:0".parse().unwrap(), dir.path(), "first");
    let addr = first.addr;
    // Long enough after the restart for the program's reconnect backoff
    // (doubling from 100 ms) to reach the new collector on a loaded machine.
    let p = Program::start(Some(addr), &file, 5000, End::Drop, false);
    std::thread::sleep(Duration::from_millis(800));
    let first_rec = first.kill();
    std::thread::sleep(Duration::from_millis(700));
    let second = Serve::start(addr, dir.path(), "second");
    let (delay, _stderr) = p.finish();
    let (r, rec) = second.stop();
    assert!(delay < EXIT_BOUND, "exit took {delay:?}");
    let kept = assert_complete(&file);
    let a = read_stream(&first_rec);
    let b = read_stream(&rec);
    assert!(b.goodbye, "{b:?}");
    let counted = b.dropped.disconnected + b.dropped.write_failed;
    assert!(counted > 0, "the outage is counted: {b:?}");
    let seen = a.events - a.handshake + b.events - b.handshake;
    // Nothing is invented: the drops counted are events the collectors
    // did not see. What was in flight when the first collector was killed
    // (in its socket buffers, read but not recorded) is lost uncounted: the
    // program cannot know it.
    assert!(
        seen + counted <= kept.events,
        "first {a:?}, second {b:?}, recording {kept:?}"
    );
    eprintln!(
        "killed collector: recording {}, seen {seen}, counted {counted}, lost in flight {}",
        kept.events,
        kept.events - seen - counted
    );
    assert_eq!(b.seq_gaps, 0, "{b:?}");
    assert_eq!(r["processes"][0]["ended"], true);
    assert_eq!(r["processes"][0]["seq_gaps"], 0);
    assert_eq!(r["dropped"]["total"], b.dropped.total());
    assert_eq!(
        collector_findings(&r),
        vec!["dropped_events".to_string()],
        "only the outage: {}",
        r["findings"]
    );
}

#[test]
fn collector_that_never_reads() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.awaitscope");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // A small receive buffer, inherited by the accepted connection: the
    // program's writes block (would block) after a few kilobytes.
    set_rcvbuf(&listener, 4096);
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    // Holds the first connection without reading, then stops listening:
    // a reconnect (after the program gives up on this collector) is
    // refused, so what the program counted cannot have been told to a
    // collector, and must be said at exit.
    let holder = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let held = loop {
            if let Ok((s, _)) = listener.accept() {
                break Some(s);
            }
            if stop_rx.try_recv().is_ok() {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        drop(listener);
        let mut got = Vec::new();
        if let Some(mut held) = held {
            let _ = stop_rx.recv();
            // The program has exited: what its kernel still held goes out
            // now; read all that reached this collector.
            held.set_nonblocking(false).unwrap();
            held.set_read_timeout(Some(PATIENCE)).unwrap();
            let _ = held.read_to_end(&mut got);
        }
        got
    });
    let p = Program::start(Some(addr), &file, 1500, End::Drop, true);
    let (delay, stderr) = p.finish();
    let _ = stop_tx.send(());
    let got = holder.join().unwrap();
    assert!(!got.is_empty(), "the program connected");
    assert!(delay < EXIT_BOUND, "exit took {delay:?}");
    let kept = assert_complete(&file);
    let rec = dir.path().join("collector.awaitscope");
    std::fs::write(&rec, &got).unwrap();
    let got = read_stream(&rec);
    let told = got.dropped.disconnected + got.dropped.write_failed;
    let said = undelivered(&stderr);
    eprintln!(
        "never-reading collector: recording {}, collector got {} (handshake {}), told {told}, said at exit {said}",
        kept.events, got.events, got.handshake
    );
    // The collector listened before the program started: the program was
    // connected before its first frame, so nothing was sent again at a
    // handshake (the frames after its `Hello` that hold no `Thread` event
    // are the program's first callsites, not state sent again).
    assert_eq!(got.dropped.disconnected, 0, "{got:?}");
    // Every event is either in what reached the collector, or counted in
    // the drops it was told of, or said at exit: nothing lost uncounted.
    assert_eq!(
        got.events + told + said,
        kept.events,
        "collector {got:?}, recording {kept:?}: {stderr}"
    );
}

#[test]
fn recording_complete_without_dropping_the_guard() {
    let _one = one_at_a_time();
    for end in [End::Exit, End::Leak] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.awaitscope");
        let p = Program::start(None, &file, 600, end, false);
        let (delay, _) = p.finish();
        assert!(delay < EXIT_BOUND, "{end:?}: exit took {delay:?}");
        assert_complete(&file);
    }
}

#[test]
fn program_killed_while_recording() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.awaitscope");
    let mut p = Program::start(None, &file, 5000, End::Drop, false);
    loop {
        let l = p.stdout.recv_timeout(PATIENCE).expect("program started");
        if l.trim().ends_with("working") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    p.child.kill().unwrap();
    let _ = p.child.wait();
    let r = report(&file);
    let proc = &r["processes"][0];
    assert_eq!(proc["ended"], false, "{proc}");
    // The report says so rather than reading the file as a clean end.
    assert!(
        r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("did not end"))),
        "{}",
        r["warnings"]
    );
    // A killed program is no damage: its findings decide `--fail-on`.
    let o = Command::new(BIN)
        .arg("report")
        .arg(&file)
        .args(["--format", "text", "--fail-on", "any"])
        .output()
        .unwrap();
    let findings = r["findings"].as_array().unwrap();
    assert_eq!(
        o.status.code(),
        Some(if findings.is_empty() { 0 } else { 1 }),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(proc["events"].as_u64().unwrap() > 1000, "{proc}");
    // A healthy program: the kill invents no lost waker, stuck task or
    // deadlock of the tasks it cut short. Only a busy machine's doing may
    // be found (a poll or a wake it made late).
    let machine = ["long_poll", "descheduled", "starvation"];
    assert!(
        findings
            .iter()
            .all(|f| machine.iter().any(|k| f["kind"] == *k)),
        "a healthy program: {findings:#?}"
    );
    let last = proc["start_unix_ns"].as_u64().unwrap() + proc["now_ns"].as_u64().unwrap();
    let missing = Duration::from_nanos(killed.saturating_sub(last));
    eprintln!("killed program: its recording ends {missing:?} before the kill");
    // The file is flushed every 100 ms; generous for a loaded machine.
    assert!(missing < Duration::from_millis(500), "{missing:?} lost");
}

/// Sets `SO_RCVBUF` of a listening socket.
fn set_rcvbuf(l: &TcpListener, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt");
}
