//! Per-operation costs of the subscribers on the span hot path.
//!
//! `cargo bench -p awaitscope-benches --bench micro`
//!
//! - `poll/<subscriber>`: one poll as tokio instruments it, i.e. enter + exit
//!   of a task span (target `tokio::task`, name `runtime.spawn`, which
//!   awaitscope classifies as a task).
//! - `span_life/<subscriber>`: create, enter, exit and close a task span (as
//!   tokio makes one per spawn; console-subscriber's own filter would skip
//!   any span outside `tokio`/`runtime` targets, so a task span keeps the
//!   comparison fair).
//!
//! Subscribers: `registry` (tracing_subscriber's registry alone),
//! `lookup-only` (registry + a reference layer that only does the span +
//! extension lookup awaitscope does on enter and exit: the floor of any
//! layer storing per-span data in the registry), `lookup-enter-only` (the
//! same, but exit pops a thread-local stack instead of a second lookup),
//! `awaitscope` (awaitscope's own subscriber, as `init()` installs it, no
//! stream, recording to a temp file), `awaitscope-layer` (the same as
//! `AwaitscopeLayer` on the registry, as `builder()` composes it) and
//! `console` (registry + console-subscriber's layer, server on loopback).
//!
//! Each subscriber is a scoped `Dispatch` (`with_default`), so all live in
//! one process. After each awaitscope group the recording is decoded and the
//! records awaitscope dropped (ring full) are printed: a benchmark whose
//! records were mostly dropped measures the drop path, not the record path.
//!
//! `AWAITSCOPE_BENCH_RING` sets awaitscope's ring capacity (slots per
//! thread); default: awaitscope's default.

use std::fs::File;
use std::hint::black_box;
use std::io::BufReader;
use std::net::TcpListener;
use std::time::Duration;

use awaitscope_wire::{Body, FrameReader};
use criterion::{criterion_group, criterion_main, Criterion};
use tracing::{Dispatch, Level};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

fn task_span() -> tracing::Span {
    tracing::span!(target: "tokio::task", Level::TRACE, "runtime.spawn", kind = "task", task.id = 1u64)
}

/// A task span as tokio makes one per spawn, with a varying task id.
fn task_span_n(i: u64) -> tracing::Span {
    tracing::span!(target: "tokio::task", Level::TRACE, "runtime.spawn", kind = "task", task.id = i)
}

/// Reference layer: stores a value in the span's extensions on creation and
/// looks it up on every enter and exit (what awaitscope's `span_id` does).
struct LookupOnly;

struct Marker(u64);

impl<S> Layer<S> for LookupOnly
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        id: &tracing::Id,
        ctx: Context<'_, S>,
    ) {
        if let Some(s) = ctx.span(id) {
            s.extensions_mut().insert(Marker(id.into_u64()));
        }
    }
    fn on_enter(&self, id: &tracing::Id, ctx: Context<'_, S>) {
        if let Some(s) = ctx.span(id) {
            black_box(s.extensions().get::<Marker>().map(|m| m.0));
        }
    }
    fn on_exit(&self, id: &tracing::Id, ctx: Context<'_, S>) {
        if let Some(s) = ctx.span(id) {
            black_box(s.extensions().get::<Marker>().map(|m| m.0));
        }
    }
}

/// Reference layer: like [`LookupOnly`] on enter, but remembers what it
/// looked up on a thread-local stack and pops it on exit instead of looking
/// the span up again (spans exit on the thread that entered them, almost
/// always in LIFO order). Shows what a lookup-free exit would save.
struct LookupEnterOnly;

thread_local! {
    static ENTERED: std::cell::RefCell<Vec<(u64, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<S> Layer<S> for LookupEnterOnly
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        id: &tracing::Id,
        ctx: Context<'_, S>,
    ) {
        if let Some(s) = ctx.span(id) {
            s.extensions_mut().insert(Marker(id.into_u64()));
        }
    }
    fn on_enter(&self, id: &tracing::Id, ctx: Context<'_, S>) {
        if let Some(s) = ctx.span(id) {
            if let Some(m) = s.extensions().get::<Marker>() {
                let entry = (id.into_u64(), m.0);
                ENTERED.with(|e| e.borrow_mut().push(entry));
            }
        }
    }
    fn on_exit(&self, id: &tracing::Id, ctx: Context<'_, S>) {
        let top = ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            match e.last() {
                Some(&(tid, v)) if tid == id.into_u64() => {
                    e.pop();
                    Some(v)
                }
                _ => None,
            }
        });
        match top {
            Some(v) => {
                black_box(v);
            }
            None => {
                if let Some(s) = ctx.span(id) {
                    black_box(s.extensions().get::<Marker>().map(|m| m.0));
                }
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bench_with(c: &mut Criterion, name: &str, dispatch: &Dispatch) {
    tracing::dispatcher::with_default(dispatch, || {
        let span = task_span();
        c.benchmark_group("poll").bench_function(name, |b| {
            b.iter(|| {
                let _e = span.enter();
            })
        });
        drop(span);
        c.benchmark_group("span_life").bench_function(name, |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                let s = task_span_n(i);
                {
                    let _e = s.enter();
                }
                drop(s);
            })
        });
    });
}

/// Events written and dropped, from a recording.
fn recording_counts(path: &std::path::Path) -> (u64, u64, u64) {
    let Ok(r) = File::open(path)
        .map_err(|_| ())
        .and_then(|f| FrameReader::new(BufReader::new(f)).map_err(|_| ()))
    else {
        return (0, 0, 0);
    };
    let (mut events, mut dropped) = (0u64, 0u64);
    for frame in r.flatten() {
        match frame.body {
            Body::Events(e) => events += e.len() as u64,
            Body::Dropped(d) => dropped = dropped.max(d.total()),
            _ => {}
        }
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    (events, dropped, bytes)
}

/// `tokio::spawn` + await of an empty task, N at a time in one `block_on`.
fn bench_spawn(c: &mut Criterion, name: &str, dispatch: &Dispatch) {
    tracing::dispatcher::with_default(dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        c.benchmark_group("spawn").bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        tokio::spawn(async {}).await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    });
}

/// `CausalTrace::capture()` three spans deep inside a task (a tokio-style
/// task span entered as a poll would).
fn bench_causal(c: &mut Criterion, dispatch: &Dispatch) {
    tracing::dispatcher::with_default(dispatch, || {
        let task = task_span();
        let _t = task.enter();
        let _a = tracing::info_span!("request", id = 1).entered();
        let _b = tracing::info_span!("checkout", order = 7).entered();
        let _c = tracing::info_span!("reserve").entered();
        c.benchmark_group("causal_trace")
            .bench_function("capture", |b| {
                b.iter(|| std::hint::black_box(awaitscope::CausalTrace::capture()))
            });
        let trace = awaitscope::CausalTrace::capture();
        c.benchmark_group("causal_trace")
            .bench_function("format", |b| {
                b.iter(|| std::hint::black_box(trace.to_string()))
            });
    });
}

/// awaitscope recording to a temp file: as `init()` installs it (its own
/// subscriber), or with `layer` as `AwaitscopeLayer` on the registry.
fn bench_awaitscope(c: &mut Criterion, name: &str, layer: bool) {
    let path = tempfile::Builder::new()
        .prefix("awaitscope-micro-")
        .suffix(".awrec")
        .tempfile()
        .unwrap()
        .into_temp_path();
    let mut builder = awaitscope::Builder::new()
        .no_stream()
        .record_to(path.to_path_buf());
    if let Some(n) = std::env::var("AWAITSCOPE_BENCH_RING")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        builder = builder.ring_capacity(n);
    }
    let (dispatch, guard) = if layer {
        let (layer, guard) = builder.try_build().unwrap();
        let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
        (dispatch, guard)
    } else {
        let (subscriber, guard) = builder.try_build_subscriber().unwrap().unwrap();
        (Dispatch::new(subscriber), guard)
    };
    bench_with(c, name, &dispatch);
    bench_spawn(c, name, &dispatch);
    if !layer {
        bench_causal(c, &dispatch);
    }
    drop(dispatch);
    drop(guard); // drains and flushes the recording
    let (events, dropped, bytes) = recording_counts(&path);
    println!(
        "{name} recording: {events} events written, {dropped} dropped ({:.1}% of records), \
         {:.1} MiB",
        100.0 * dropped as f64 / (events + dropped).max(1) as f64,
        bytes as f64 / 1048576.0
    );
}

fn benches(c: &mut Criterion) {
    bench_spawn(c, "none", &Dispatch::none());
    bench_spawn(
        c,
        "registry",
        &Dispatch::new(tracing_subscriber::registry()),
    );
    bench_with(
        c,
        "registry",
        &Dispatch::new(tracing_subscriber::registry()),
    );
    bench_with(
        c,
        "lookup-only",
        &Dispatch::new(tracing_subscriber::registry().with(LookupOnly)),
    );

    bench_with(
        c,
        "lookup-enter-only",
        &Dispatch::new(tracing_subscriber::registry().with(LookupEnterOnly)),
    );

    bench_awaitscope(c, "awaitscope", false);
    bench_awaitscope(c, "awaitscope-layer", true);

    let console = console_subscriber::ConsoleLayer::builder()
        .server_addr(([127, 0, 0, 1], free_port()))
        .spawn();
    bench_with(
        c,
        "console",
        &Dispatch::new(tracing_subscriber::registry().with(console)),
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

criterion_group! {
    name = micro;
    config = config();
    targets = benches
}
criterion_main!(micro);
