//! Benchmarks of the collector (issue #4):
//!
//! * `ingest`: events per second decoded from bytes and applied to the model
//!   as `recording::load_reader` does it (decoded on a thread of its own, a
//!   few frames ahead of the model), for a churn of short tasks and for polls of 10,000 live
//!   tasks with mutex traffic, each as version-1 producers sent them
//!   (`Enter`/`Exit` pairs) and as version-2 producers send them
//!   (`_v2`: whole polls as one `Event::Poll`, `PollEnd` with the live
//!   wakers, no waker clones or drops), the churn also from 2 worker
//!   threads (per-thread runs in each frame, merged by the collector).
//! * `decode`: decoding alone, for three of those streams: what `ingest`
//!   would reach with a model that cost nothing.
//! * `memory_per_live_task`: bytes of model per live task, for 10,000 and
//!   100,000 live tasks (printed; measured with a counting allocator).
//! * `report_1m_events`: reading a recording of ~1,000,000 events and
//!   generating its JSON report.
//!
//! Run: `cargo bench -p awaitscope-collector --bench ingest`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use awaitscope_collector::ingest::recording;
use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::{Model, Report};
use awaitscope_wire::{CloseKind, WakeOp};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Events in a recording (read back).
fn count_events(bytes: &[u8]) -> u64 {
    let mut n = 0;
    for f in awaitscope_wire::FrameReader::new(bytes).unwrap() {
        if let awaitscope_wire::Body::Events(ev) = f.unwrap().body {
            n += ev.len() as u64;
        }
    }
    n
}

/// A recording of `tasks` short tasks (spawn, wake, poll, drop, close) as
/// version-1 producers sent them (`Enter`/`Exit` pairs): 7 events each.
fn churn(tasks: u64) -> (Vec<u8>, u64) {
    let mut b = StreamBuilder::new(1, 0);
    b.hello("bench", None, false);
    b.thread(0);
    let opts = TaskOpts::named("short");
    for i in 0..tasks {
        let ts = i * 10_000;
        let t = b.spawn(&opts, None, ts);
        b.waker(t, WakeOp::WakeByRef, None, ts + 100);
        b.poll(t, ts + 200, ts + 2_000);
        b.finish_task(t, CloseKind::Completed, ts + 3_000);
    }
    let bytes = b.recording();
    debug_assert_eq!(count_events(&bytes), tasks * 7 + 2);
    (bytes, tasks * 7)
}

/// The same short tasks as [`churn`] as a version-2 producer sends them:
/// each poll (and the drop of the future) one `Event::Poll` with the live
/// wakers at its end, no waker clones or drops: spawn, wake, poll, drop,
/// close (5 events each).
///
/// With `threads` > 1 the tasks run on that many worker threads, and each
/// frame holds one run per thread (opened by a `Thread` event) as the
/// producer drains its per-thread buffers one after the other: the runs
/// overlap in time, so the collector merges them.
fn churn_v2(tasks: u64, threads: u32) -> (Vec<u8>, u64) {
    let mut b = StreamBuilder::new(1, 0);
    b.hello("bench", None, false);
    for th in 0..threads {
        b.thread(th);
    }
    let opts = TaskOpts::named("short");
    // Tasks per thread per frame.
    const RUN: u64 = 128;
    let mut i = 0;
    while i < tasks {
        for th in 0..threads {
            // Names were sent once; later runs only switch threads.
            b.push(awaitscope_wire::Event::Thread { id: th, name: None });
            for k in 0..RUN {
                // Task number `i + k * threads + th` of the stream.
                let n = i + k * u64::from(threads) + u64::from(th);
                if n >= tasks {
                    break;
                }
                let ts = n * 10_000 / u64::from(threads);
                let t = b.spawn(&opts, None, ts);
                b.waker(t, WakeOp::WakeByRef, None, ts + 100);
                b.poll_whole(t, ts + 200, ts + 2_000, 0);
                b.poll_whole(t, ts + 3_000, ts + 3_001, 0);
                b.close(t, CloseKind::Completed, ts + 3_002);
            }
        }
        b.flush();
        i += RUN * u64::from(threads);
    }
    let bytes = b.recording();
    let n = count_events(&bytes);
    (bytes, n)
}

/// `live` tasks, then `rounds` rounds of wake + poll with a mutex lock in
/// every poll (version 1: polls as `Enter`/`Exit`).
fn live_polls(live: u64, rounds: u64) -> (Vec<u8>, u64) {
    live_polls_with(live, rounds, false)
}

/// `live` tasks, then `rounds` rounds of wake + poll with a mutex lock in
/// every poll. `v2`: as version-2 producers send it (the poll ends with a
/// `PollEnd` carrying the live wakers; events were recorded during the poll,
/// so it is not a whole `Event::Poll`).
fn live_polls_with(live: u64, rounds: u64, v2: bool) -> (Vec<u8>, u64) {
    let mut b = StreamBuilder::new(1, 0);
    b.hello("bench", None, false);
    b.thread(0);
    let m = b.resource("Mutex", "Sync", 1, 0);
    let opts = TaskOpts::named("live");
    let tasks: Vec<_> = (0..live).map(|i| b.spawn(&opts, None, i)).collect();
    let mut ts = live;
    for _ in 0..rounds {
        for &t in &tasks {
            b.waker(t, WakeOp::WakeByRef, None, ts);
            b.enter(t, ts + 10);
            b.lock(t, m, true, ts + 20);
            b.unlock(t, m, ts + 30);
            if v2 {
                b.poll_end(t, ts + 40, 1);
            } else {
                b.exit(t, ts + 40);
            }
            ts += 50;
        }
    }
    let bytes = b.recording();
    let n = count_events(&bytes);
    (bytes, n)
}

/// `live` tasks, then `rounds` rounds of wake + whole poll (version 2: one
/// `Event::Poll` each, nothing recorded inside).
fn live_whole_polls(live: u64, rounds: u64) -> (Vec<u8>, u64) {
    let mut b = StreamBuilder::new(1, 0);
    b.hello("bench", None, false);
    b.thread(0);
    let opts = TaskOpts::named("live");
    let tasks: Vec<_> = (0..live).map(|i| b.spawn(&opts, None, i)).collect();
    let mut ts = live;
    for _ in 0..rounds {
        for &t in &tasks {
            b.waker(t, WakeOp::Wake, None, ts);
            b.poll_whole(t, ts + 10, ts + 40, 1);
            ts += 50;
        }
    }
    let bytes = b.recording();
    let n = count_events(&bytes);
    (bytes, n)
}

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10);
    for (name, (bytes, events)) in [
        ("churn_50k_tasks", churn(50_000)),
        ("churn_50k_tasks_v2", churn_v2(50_000, 1)),
        ("churn_50k_tasks_v2_2threads", churn_v2(50_000, 2)),
        ("live_10k_tasks_polls", live_polls(10_000, 3)),
        ("live_10k_tasks_polls_v2", live_polls_with(10_000, 3, true)),
        (
            "live_10k_tasks_whole_polls_v2",
            live_whole_polls(10_000, 10),
        ),
    ] {
        g.throughput(Throughput::Elements(events));
        g.bench_function(name, |bch| {
            bch.iter_batched(
                Model::default,
                |mut m| {
                    recording::load_reader(&mut m, "bench", &bytes[..]).unwrap();
                    m
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// Decoding alone (frames read and dropped, nothing applied): the part of
/// `ingest` that is not the model's, and so the most it could reach.
fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.sample_size(10);
    for (name, (bytes, events)) in [
        ("churn_50k_tasks", churn(50_000)),
        ("churn_50k_tasks_v2", churn_v2(50_000, 1)),
        (
            "live_10k_tasks_whole_polls_v2",
            live_whole_polls(10_000, 10),
        ),
    ] {
        g.throughput(Throughput::Elements(events));
        g.bench_function(name, |bch| {
            bch.iter(|| {
                let mut n = 0;
                for f in awaitscope_wire::FrameReader::new(&bytes[..]).unwrap() {
                    let f = f.unwrap();
                    if let awaitscope_wire::Body::Events(ev) = &f.body {
                        n += ev.len();
                    }
                    // As `recording::load_reader`'s decoding thread does.
                    awaitscope_wire::recycle(f);
                }
                n
            })
        });
    }
    g.finish();
}

fn memory_per_live_task(_: &mut Criterion) {
    for live in [10_000u64, 100_000] {
        let (bytes, _) = live_polls(live, 1);
        let before = LIVE.load(Ordering::Relaxed);
        let mut m = Model::default();
        recording::load_reader(&mut m, "bench", &bytes[..]).unwrap();
        let after = LIVE.load(Ordering::Relaxed);
        let per = (after - before) as f64 / live as f64;
        println!(
            "memory_per_live_task/{live}: {per:.0} bytes per live task (model total {:.1} MiB)",
            (after - before) as f64 / (1 << 20) as f64
        );
        drop(m);
    }
}

fn report_1m_events(c: &mut Criterion) {
    // 10,000 live tasks polled with mutex traffic: ~1,000,000 events.
    let (bytes, events) = live_polls(10_000, 9);
    println!(
        "report_1m_events: recording of {events} events, {} bytes",
        bytes.len()
    );
    let mut g = c.benchmark_group("report");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events));
    g.bench_function("report_1m_events", |bch| {
        bch.iter(|| {
            let mut m = Model::default();
            recording::load_reader(&mut m, "bench", &bytes[..]).unwrap();
            m.finish();
            serde_json::to_vec(&Report::from_model(&m)).unwrap().len()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    ingest,
    decode,
    memory_per_live_task,
    report_1m_events
);
criterion_main!(benches);
