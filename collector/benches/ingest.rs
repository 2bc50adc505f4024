//! Benchmarks of the collector (issue #4):
//!
//! * `ingest`: events per second decoded from bytes and applied to the model
//!   (one core), for a churn of short tasks and for polls of 10,000 live
//!   tasks with mutex traffic.
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

/// A recording of `tasks` short tasks (spawn, wake, poll, drop, close):
/// 7 events each.
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
    (b.recording(), tasks * 7)
}

/// `live` tasks, then `rounds` rounds of wake + poll with a mutex lock in
/// every poll.
fn live_polls(live: u64, rounds: u64) -> (Vec<u8>, u64) {
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
            b.exit(t, ts + 40);
            ts += 50;
        }
    }
    let bytes = b.recording();
    // Count events by reading back.
    let mut n = 0;
    for f in awaitscope_wire::FrameReader::new(&bytes[..]).unwrap() {
        if let awaitscope_wire::Body::Events(ev) = f.unwrap().body {
            n += ev.len() as u64;
        }
    }
    (bytes, n)
}

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10);
    for (name, (bytes, events)) in [
        ("churn_50k_tasks", churn(50_000)),
        ("live_10k_tasks_polls", live_polls(10_000, 3)),
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

criterion_group!(benches, ingest, memory_per_live_task, report_1m_events);
criterion_main!(benches);
