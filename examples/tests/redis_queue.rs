//! End to end across two processes: the Redis queue example (`queue_api`
//! publishes welcome-email jobs carrying their `traceparent`, `queue_worker`
//! runs them in another process and fails on user 3) under a real
//! `awaitscope serve`. The worker's error finding has a causal trace that
//! names the worker's failing function, then crosses the process boundary
//! to the request in `queue_api` that enqueued the job, in that order; and
//! `awaitscope report` over serve's two recordings says the same.
//!
//! The broker is a `redis-server` the test starts on a free loopback port
//! and stops (CI installs it); where none is installed (or with
//! `AWAITSCOPE_TEST_BROKER=mini-redis`), tokio's mini-redis server, which
//! speaks the same protocol, runs in this process instead. The test says
//! which one it used.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one step may take before the test gives up (a loaded CI
/// machine builds and runs much else at once).
const STEP: Duration = Duration::from_secs(90);

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The message broker the two programs talk through.
enum Broker {
    /// Killed when dropped.
    Redis {
        _server: Killed,
    },
    MiniRedis(Option<tokio::sync::oneshot::Sender<()>>),
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::MiniRedis(stop) = self {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Starts a broker on a free loopback port; gives it and its URL.
fn start_broker() -> (Broker, String) {
    let forced_mini = std::env::var("AWAITSCOPE_TEST_BROKER").as_deref() == Ok("mini-redis");
    if let (Some(server), false) = (find_in_path("redis-server"), forced_mini) {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let broker = Broker::Redis {
            _server: Killed(child),
        };
        let deadline = Instant::now() + STEP;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "broker: redis-server ({}) on 127.0.0.1:{port}",
            server.display()
        );
        return (broker, format!("redis://127.0.0.1:{port}/"));
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = mini_redis::server::run(listener, stopped).await;
        });
    });
    eprintln!(
        "broker: mini-redis in the test process on 127.0.0.1:{port} ({})",
        if forced_mini {
            "AWAITSCOPE_TEST_BROKER=mini-redis"
        } else {
            "no redis-server installed"
        }
    );
    (
        Broker::MiniRedis(Some(stop)),
        format!("redis://127.0.0.1:{port}/"),
    )
}

/// The workspace's build directory (`target/debug`): this test runs from
/// its `deps/`.
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// The `awaitscope` binary and the two example programs, built first if
/// this test runs alone (`cargo test --workspace` has built them).
fn programs() -> (PathBuf, PathBuf, PathBuf) {
    let dir = build_dir();
    let paths = (
        dir.join("awaitscope"),
        dir.join("examples").join("queue_api"),
        dir.join("examples").join("queue_worker"),
    );
    if ![&paths.0, &paths.1, &paths.2].iter().all(|p| p.is_file()) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let status = Command::new(env!("CARGO"))
            .current_dir(root)
            .args(["build", "-q", "-p", "awaitscope-tui", "--bin", "awaitscope"])
            .args(["-p", "awaitscope-examples", "--example", "queue_api"])
            .args(["--example", "queue_worker"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the programs failed");
    }
    paths
}

/// Lines of a child's output, read in the background.
fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line satisfying `want`, returning it.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// Waits for `child` to exit successfully.
fn wait_success(child: &mut Killed, what: &str) {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{what} failed: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one error finding of `report`, and that its trace goes from the
/// worker's failing function across the queue to the producer's request.
fn assert_trace_crosses(report: &Value, api_pid: u32, worker_pid: u32, source: &str) {
    let errors: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{source}: {report:#}");
    let f = errors[0];
    assert_eq!(f["pid"], worker_pid, "{source}: {f:#}");
    let trace: Vec<&str> = f["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let at = |what: &dyn Fn(&str) -> bool, name: &str| {
        trace
            .iter()
            .position(|l| what(l))
            .unwrap_or_else(|| panic!("{source}: no {name} in the trace:\n{}", trace.join("\n")))
    };
    let failing = at(
        &|l| l.contains("queue_worker::send_welcome_email{user=3}"),
        "failing function",
    );
    let boundary =
        format!("-- handed over through a queue from process queue_api (pid {api_pid}), task ");
    let crossing = at(&|l| l.starts_with(&boundary), "process boundary");
    let request = at(
        &|l| l.contains("queue_api::handle_signup{user=3}"),
        "producer's request",
    );
    assert!(
        failing < crossing && crossing < request,
        "{source}: not in causal order:\n{}",
        trace.join("\n")
    );
    assert!(
        trace[crossing].ends_with("\"handle_signup\" --"),
        "{source}: {}",
        trace[crossing]
    );
}

#[test]
fn the_workers_error_traces_back_into_the_producers_request() {
    let (awaitscope, api, worker) = programs();
    let (_broker, redis_url) = start_broker();
    let dir = tempfile::tempdir().unwrap();
    let recs = dir.path().join("recs");
    let report = dir.path().join("serve.json");

    let mut serve = Killed(
        Command::new(&awaitscope)
            .args(["serve", "--listen", "127.0.0.1:0", "--record-dir"])
            .arg(&recs)
            .arg("--report")
            .arg(&report)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start awaitscope serve"),
    );
    let serve_log = lines_of(serve.0.stderr.take().unwrap());
    let listening = wait_line(&serve_log, "serve's address", |l| {
        l.contains("listening on ")
    });
    let addr = listening
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();

    let program = |path: &Path| {
        let mut c = Command::new(path);
        c.env("AWAITSCOPE_ADDR", &addr)
            .env("REDIS_URL", &redis_url)
            .env_remove("AWAITSCOPE_RECORD")
            .env_remove("AWAITSCOPE")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c
    };
    let mut worker = Killed(program(&worker).spawn().expect("start queue_worker"));
    let worker_out = lines_of(worker.0.stdout.take().unwrap());
    wait_line(&worker_out, "the worker to subscribe", |l| {
        l.starts_with("subscribed")
    });
    let mut api = Killed(program(&api).spawn().expect("start queue_api"));
    let (api_pid, worker_pid) = (api.0.id(), worker.0.id());
    wait_success(&mut api, "queue_api");
    wait_success(&mut worker, "queue_worker");
    let said = wait_line(&worker_out, "the worker's summary", |l| {
        l.contains("job(s) run")
    });
    assert_eq!(said, "queue_worker: 5 job(s) run");

    // Serve has all of both processes once each said goodbye.
    let mut gone = Vec::new();
    while gone.len() < 2 {
        let line = wait_line(&serve_log, "both goodbyes", |l| {
            l.contains("producer said goodbye")
        });
        gone.push(line);
    }
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGINT) };
    wait_success(&mut serve, "awaitscope serve");
    let live: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_trace_crosses(&live, api_pid, worker_pid, "serve");

    // The same from serve's two recordings.
    let files: Vec<PathBuf> = std::fs::read_dir(&recs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let out = Command::new(&awaitscope)
        .arg("report")
        .args(&files)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_trace_crosses(&recorded, api_pid, worker_pid, "report");
}
