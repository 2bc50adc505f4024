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
//!
//! Then `awaitscope report --format otlp` sends the recordings to an OTLP
//! receiver in this test (OpenTelemetry's messages decoded with
//! opentelemetry-proto): the request's spans are in the trace the
//! producer's `traceparent` named, the consumer's spans too, under the
//! producer's span, and the error finding arrives as a span event with its
//! trace.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use prost::Message;
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
    // serve forwards live to an OTLP receiver of its own.
    let live_stop = Arc::new(AtomicBool::new(false));
    let (live_endpoint, live_receiver) = otlp_receiver(live_stop.clone());

    let mut serve = Killed(
        Command::new(&awaitscope)
            .args(["serve", "--otlp", "--listen", "127.0.0.1:0", "--record-dir"])
            .arg(&recs)
            .arg("--report")
            .arg(&report)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &live_endpoint)
            .env("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret%21")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
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
    let api_out = lines_of(api.0.stdout.take().unwrap());
    let (api_pid, worker_pid) = (api.0.id(), worker.0.id());
    let sent = wait_line(&api_out, "user 3's traceparent", |l| {
        l.starts_with("queue_api: user 3: ")
    });
    let traceparent = sent.rsplit(' ').next().unwrap().to_owned();
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
    live_stop.store(true, Ordering::Relaxed);
    let forwarded = live_receiver.join().unwrap();
    live_otlp_joins_the_trace(&forwarded, &traceparent);

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

    otlp_export_joins_the_trace(&awaitscope, &files, &traceparent);
}

/// One received OTLP request: its headers and its spans.
struct Received {
    headers: Vec<(String, String)>,
    request: ExportTraceServiceRequest,
}

/// An OTLP/HTTP receiver on a free loopback port, until `stop` is set;
/// answers 200 to each POST to /v1/traces and keeps what it decoded.
fn otlp_receiver(stop: Arc<AtomicBool>) -> (String, std::thread::JoinHandle<Vec<Received>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap();
    let handle = std::thread::spawn(move || {
        let mut got = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            assert_eq!(req.url(), "/v1/traces");
            let headers = req
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.field.to_string().to_ascii_lowercase(),
                        h.value.to_string(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            std::io::Read::read_to_end(req.as_reader(), &mut body).unwrap();
            let request = ExportTraceServiceRequest::decode(&body[..]).expect("OTLP protobuf");
            got.push(Received { headers, request });
            req.respond(tiny_http::Response::empty(200)).unwrap();
        }
        got
    });
    (format!("http://{addr}"), handle)
}

/// What `serve --otlp` forwarded: the request's spans with the
/// traceparent's ids, the worker's failing span in that trace, and the
/// error finding as a span under the worker's task, in that trace, with its
/// joined causal trace.
fn live_otlp_joins_the_trace(got: &[Received], traceparent: &str) {
    assert!(!got.is_empty(), "serve --otlp sent nothing");
    for r in got {
        assert!(r.headers.contains(&("x-api-key".into(), "s3cret!".into())));
    }
    let (trace, parent) = (&traceparent[3..35], &traceparent[36..52]);
    let spans: Vec<&OtlpSpan> = got
        .iter()
        .flat_map(|r| &r.request.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    let user3 = |name: &str| {
        spans
            .iter()
            .copied()
            .find(|s| s.name == name && attr(s, "user") == Some(&any_value::Value::IntValue(3)))
            .unwrap_or_else(|| panic!("serve --otlp: no span {name} of user 3"))
    };
    let enqueue = user3("enqueue_welcome_email");
    assert_eq!(
        (hex(&enqueue.trace_id), hex(&enqueue.span_id)),
        (trace.into(), parent.into())
    );
    assert_eq!(hex(&user3("handle_signup").trace_id), trace);
    assert_eq!(hex(&user3("send_welcome_email").trace_id), trace);
    let finding = spans
        .iter()
        .find(|s| s.name == "awaitscope finding error")
        .expect("serve --otlp: the error finding");
    assert_eq!(hex(&finding.trace_id), trace);
    let task = spans
        .iter()
        .find(|s| s.span_id == finding.parent_span_id)
        .expect("the finding's task span");
    assert_eq!(task.name, "task welcome_email_job");
    let trace_attr = finding.events[0]
        .attributes
        .iter()
        .find(|a| a.key == "awaitscope.finding.trace")
        .and_then(|a| a.value.as_ref()?.value.clone());
    let Some(any_value::Value::StringValue(t)) = trace_attr else {
        panic!("no trace on the finding");
    };
    assert!(
        t.contains("-- handed over through a queue from process queue_api"),
        "{t}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(s: &'a OtlpSpan, key: &str) -> Option<&'a any_value::Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn otlp_export_joins_the_trace(awaitscope: &Path, files: &[PathBuf], traceparent: &str) {
    let stop = Arc::new(AtomicBool::new(false));
    let (endpoint, receiver) = otlp_receiver(stop.clone());
    let out = Command::new(awaitscope)
        .arg("report")
        .args(files)
        .args(["--format", "otlp"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=s3cret%21,x-team=queue",
        )
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let got = receiver.join().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("finding(s) to http://127.0.0.1:"), "{said}");
    assert!(
        !said.contains("s3cret"),
        "a header value was printed: {said}"
    );
    assert!(!got.is_empty());
    for r in &got {
        assert!(r.headers.contains(&("x-api-key".into(), "s3cret!".into())));
        assert!(r
            .headers
            .contains(&("content-type".into(), "application/x-protobuf".into())));
    }
    let (trace, parent) = (&traceparent[3..35], &traceparent[36..52]);
    // Every span with its process's name.
    let spans: Vec<(String, &OtlpSpan)> = got
        .iter()
        .flat_map(|r| &r.request.resource_spans)
        .flat_map(|rs| {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    any_value::Value::StringValue(s) => s.clone(),
                    _ => String::new(),
                })
                .unwrap_or_default();
            rs.scope_spans
                .iter()
                .flat_map(|ss| &ss.spans)
                .map(move |s| (service.clone(), s))
        })
        .collect();
    let user3 = |service: &str, name: &str| -> &OtlpSpan {
        spans
            .iter()
            .find(|(svc, s)| {
                svc == service
                    && s.name == name
                    && attr(s, "user") == Some(&any_value::Value::IntValue(3))
            })
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("no span {name} of user 3 from {service}"))
    };
    // The producer's request and the span that sent the context: the ids
    // of its traceparent.
    let enqueue = user3("queue_api", "enqueue_welcome_email");
    assert_eq!(hex(&enqueue.trace_id), trace);
    assert_eq!(hex(&enqueue.span_id), parent);
    let request = user3("queue_api", "handle_signup");
    assert_eq!(hex(&request.trace_id), trace);
    assert_eq!(enqueue.parent_span_id, request.span_id);
    // The consumer's spans: in the same trace, under the producer's span.
    let failing = user3("queue_worker", "send_welcome_email");
    assert_eq!(hex(&failing.trace_id), trace);
    let context = spans
        .iter()
        .map(|(_, s)| *s)
        .find(|s| s.name == "awaitscope.context" && hex(&s.trace_id) == trace)
        .expect("the consumer's context span");
    assert_eq!(hex(&context.parent_span_id), parent);
    // The error finding, as an event on the worker's task span, in the
    // request's trace, with its joined causal trace.
    let (holder, event) = spans
        .iter()
        .flat_map(|(_, s)| s.events.iter().map(move |e| (*s, e)))
        .find(|(_, e)| e.name == "awaitscope.finding.error")
        .expect("the error finding as a span event");
    assert_eq!(hex(&holder.trace_id), trace);
    assert_eq!(holder.name, "task welcome_email_job");
    let event_attr = |k: &str| {
        event
            .attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref()?.value.clone())
    };
    let Some(any_value::Value::StringValue(t)) = event_attr("awaitscope.finding.trace") else {
        panic!("no trace on {event:?}");
    };
    assert!(
        t.contains("-- handed over through a queue from process queue_api"),
        "{t}"
    );
    assert!(t.contains("queue_api::handle_signup{user=3}"), "{t}");
    assert_eq!(
        event_attr("awaitscope.finding.severity"),
        Some(any_value::Value::StringValue("error".into()))
    );
    assert!(event_attr("code.filepath").is_some_and(
        |v| matches!(v, any_value::Value::StringValue(f) if f.ends_with("queue_worker.rs"))
    ));
}
