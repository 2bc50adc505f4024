//! Per-operation cost of the capture layer in *instructions*, for A/B
//! comparisons of hot-path changes on a noisy machine, where timings of a
//! few nanoseconds drown in noise. Run under callgrind:
//!
//! ```sh
//! cargo build --release -p awaitscope-benches --example instr_count
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/instr_count
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep measure_
//! ```
//!
//! Each `measure_*` function runs its operation [`N`] times under
//! awaitscope's own subscriber, as `init()` installs it (records kept in
//! memory, nothing written); divide its inclusive count by `N`. With the
//! argument `layer`, under `registry()` + `AwaitscopeLayer`; with
//! `registry`, under `registry()` alone. With `record`, the exporter also
//! writes a recording, and the events in it are printed: divide
//! `Exporter::run`'s inclusive count by them for its cost per event. Instruction counts ignore cache misses and
//! contention, which the workload bench measures. (Under valgrind quanta
//! does not trust the TSC and reads the OS clock: each clock read costs
//! ~100 instructions here that it does not on hardware.)

use tracing::{Dispatch, Level};
use tracing_subscriber::layer::SubscriberExt;

/// Operations per scenario: small enough that every record fits the rings.
const N: u64 = 20_000;

fn task_span(i: u64) -> tracing::Span {
    tracing::span!(target: "tokio::task", Level::TRACE, "runtime.spawn", kind = "task", task.id = i)
}

/// One poll of a task: enter and exit of its span.
#[inline(never)]
fn measure_poll(task: &tracing::Span) {
    for _ in 0..N {
        let _e = task.enter();
    }
}

/// One poll that enters three nested spans inside the task's span.
#[inline(never)]
fn measure_poll_nested(task: &tracing::Span, spans: &[tracing::Span; 3]) {
    for _ in 0..N {
        let _t = task.enter();
        let _a = spans[0].enter();
        let _b = spans[1].enter();
        let _c = spans[2].enter();
    }
}

/// A waker clone inside the task's poll, then its wake outside any poll,
/// as tokio emits them for `yield_now`.
#[inline(never)]
fn measure_clone_wake(task: &tracing::Span) {
    let id = task.id().map_or(0, |i| i.into_u64());
    for _ in 0..N {
        {
            let _t = task.enter();
            tracing::trace!(target: "tokio::task::waker", op = "waker.clone", task.id = id);
        }
        tracing::trace!(target: "tokio::task::waker", op = "waker.wake", task.id = id);
    }
}

/// A task spawned and awaited on a current-thread runtime: its span's
/// creation with tokio's fields, one poll, its completion and close. (The
/// runtime is built once, outside.)
#[inline(never)]
fn measure_spawn(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        for i in 0..N {
            tokio::spawn(async move { std::hint::black_box(i) })
                .await
                .unwrap();
        }
    });
}

fn main() {
    let arg = |a: &str| std::env::args().any(|x| x == a);
    let mut builder = awaitscope::Builder::new()
        .no_stream()
        .ring_capacity(1 << 20);
    // With `record`, the exporter also encodes and writes everything:
    // `Exporter::run`'s inclusive count divided by the events written is
    // its cost per event.
    let recording = arg("record").then(|| {
        tempfile::Builder::new()
            .prefix("awaitscope-instr-")
            .tempfile()
            .unwrap()
            .into_temp_path()
    });
    if let Some(path) = &recording {
        builder = builder.record_to(path.to_path_buf());
    }
    let (dispatch, guard) = if arg("registry") {
        (Dispatch::new(tracing_subscriber::registry()), None)
    } else if arg("layer") {
        let (layer, guard) = builder.build();
        let d = Dispatch::new(tracing_subscriber::registry().with(layer));
        (d, Some(guard))
    } else {
        let (subscriber, guard) = builder.try_build_subscriber().unwrap().unwrap();
        (Dispatch::new(subscriber), Some(guard))
    };
    tracing::dispatcher::with_default(&dispatch, || {
        let task = task_span(1);
        let spans = [
            tracing::info_span!("outer", n = 1u64),
            tracing::info_span!("middle", n = 2u64),
            tracing::info_span!("inner", n = 3u64),
        ];
        // Warm up: first sightings of callsites and spans are not measured.
        for _ in 0..3 {
            let _t = task.enter();
            let _a = spans[0].enter();
            let _b = spans[1].enter();
            let _c = spans[2].enter();
        }
        measure_poll(&task);
        measure_poll_nested(&task, &spans);
        measure_clone_wake(&task);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..3 {
                tokio::spawn(async {}).await.unwrap();
            }
        });
        measure_spawn(&rt);
    });
    drop(dispatch);
    drop(guard);
    println!("ran {N} of each");
    if let Some(path) = recording {
        let file = std::fs::File::open(&path).unwrap();
        let reader = awaitscope_wire::FrameReader::new(std::io::BufReader::new(file)).unwrap();
        let events: usize = reader
            .filter_map(Result::ok)
            .map(|f| match f.body {
                awaitscope_wire::Body::Events(e) => e.len(),
                _ => 0,
            })
            .sum();
        println!("recorded {events} events");
    }
}
