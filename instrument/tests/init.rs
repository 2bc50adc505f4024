//! `awaitscope::init()` end to end, in a child process (a global subscriber
//! can be set once per process): its own span store gives `Span::current()`,
//! span parents and causal traces across spawns, its log output prints what
//! `RUST_LOG` lets through in fmt's layout, and the recording holds the
//! program's tasks and spans.

use std::process::Command;

use awaitscope_wire::{Body, FrameReader};
use tracing::Instrument;

mod support;

const CHILD_ENV: &str = "AWAITSCOPE_TEST_CHILD";

#[tracing::instrument(fields(order = 7))]
async fn checkout() {
    let h = awaitscope::spawn_named(
        "reserve-worker",
        async {
            let span = tracing::Span::current();
            println!(
                "current-in-task={}",
                span.metadata().map_or("none", |m| m.name())
            );
            tracing::info!(sku = 42, "reserving");
            tracing::debug!("not printed at RUST_LOG=info");
            tracing::warn!(target: "noisy::dep", "filtered out by RUST_LOG");
            println!("trace:\n{}", awaitscope::CausalTrace::capture());
        }
        .instrument(tracing::info_span!("reserve", sku = 42)),
    );
    h.await.unwrap();
}

/// The child program.
#[test]
#[ignore = "run by init_installs_its_own_subscriber in a child process"]
fn child_program() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let guard = awaitscope::init();
    assert!(guard.is_active());
    println!("current-outside={}", tracing::Span::current().is_none());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let request = tracing::info_span!("request", path = "/checkout");
        async {
            let span = tracing::Span::current();
            println!(
                "current-in-request={}",
                span.metadata().map_or("none", |m| m.name())
            );
            checkout().await;
            request_span_record();
        }
        .instrument(request)
        .await;
    });
    drop(rt);
    drop(guard);
}

/// `span.record` after creation reaches the log output's span fields.
fn request_span_record() {
    let span = tracing::info_span!("late", status = tracing::field::Empty);
    span.record("status", 200);
    let _e = span.enter();
    tracing::error!("done");
}

#[test]
fn init_installs_its_own_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init.rec");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_program", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env("AWAITSCOPE_RECORD", &path)
        .env("AWAITSCOPE_ADDR", "off")
        .env("RUST_LOG", "init=info,noisy=error,[weird{x=1}]=trace")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");

    // The store's current span, inside and outside spans and tasks.
    assert!(stdout.contains("current-outside=true"), "{stdout}");
    assert!(stdout.contains("current-in-request=request"), "{stdout}");
    assert!(stdout.contains("current-in-task=reserve"), "{stdout}");

    // The causal trace crosses the spawn into the request.
    let trace = stdout
        .split("trace:\n")
        .nth(1)
        .expect("the child printed its trace");
    let at = |name: &str| {
        trace
            .find(name)
            .unwrap_or_else(|| panic!("{name} missing from the trace:\n{trace}"))
    };
    assert!(at("reserve{sku=42}") < at("checkout{order=7}"), "{trace}");
    assert!(at("checkout{order=7}") < at("request{path="), "{trace}");
    assert!(trace.contains("spawned at"), "{trace}");

    // The log output: fmt's layout, the RUST_LOG filter, span fields
    // (including recorded later), the unsupported directive reported.
    let line = stderr
        .lines()
        .find(|l| l.contains("reserving"))
        .unwrap_or_else(|| panic!("the INFO event is not on stderr:\n{stderr}"));
    // fmt's chain: the event's span and its parents (the spawn does not
    // cut a span's contextual parent).
    assert!(line.contains("Z  INFO "), "level right-aligned: {line}");
    // Spans the filter disables are not shown (tokio's TRACE task spans).
    assert!(!line.contains("runtime.spawn"), "{line}");
    assert!(
        line.contains(
            "request{path=/checkout}:checkout{order=7}:reserve{sku=42}: init: reserving sku=42"
        ),
        "{line}"
    );
    assert!(
        line.starts_with(char::is_numeric),
        "a timestamp first: {line}"
    );
    assert!(!stderr.contains("not printed"), "{stderr}");
    assert!(!stderr.contains("filtered out"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.contains("Z ERROR ")
            && l.ends_with("request{path=/checkout}:late{status=200}: init: done")),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipped directive(s) [weird{x=1}]=trace"),
        "{stderr}"
    );

    // The recording: the task, its spawn context, the program's spans.
    let file = std::fs::File::open(&path).unwrap();
    let frames: Vec<_> = FrameReader::new(file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(matches!(frames.last().unwrap().body, Body::Goodbye));
    let cap = support::Captured::from_frames(frames);
    let task = cap.task("reserve-worker");
    let checkout = cap.span("checkout");
    let request = cap.span("request");
    assert_eq!(task.ctx_span, Some(checkout.id), "spawned inside checkout");
    assert_eq!(checkout.parent, Some(request.id));
    assert_eq!(cap.span("reserve").parent, Some(checkout.id));
}
