//! Deterministic recordings for the tests and benchmarks of the report
//! formats, built with [`crate::testing::StreamBuilder`].

use awaitscope_wire::{CloseKind, Event, Level, SpanId, WakeOp};

use crate::testing::{StreamBuilder, TaskOpts};

const MS: u64 = 1_000_000;
/// Process start of the fixtures (2023-11-14T22:13:20Z).
pub const START_UNIX_NS: u64 = 1_700_000_000_000_000_000;

fn named(name: &str, line: u32) -> TaskOpts {
    TaskOpts {
        line,
        ..TaskOpts::named(name)
    }
}

/// A small recording with something of everything: a root `server` task
/// spawning workers and requests (spawn flows), an await tree with two
/// leaves (`join!`), timers, a wake by another task, a queue hand-off
/// (`FollowsFrom`), an ERROR event, a panic, a long poll, a deadlock of two
/// workers on two mutexes and a lost waker; tasks still open at the end.
pub fn ci_recording() -> Vec<u8> {
    let mut b = StreamBuilder::new(4242, START_UNIX_NS);
    b.hello("shop", None, false);
    b.thread(0);
    let ma = b.resource("Mutex", "Sync", 30, 0);
    let mb = b.resource("Mutex", "Sync", 31, 0);
    let timer = b.resource("Sleep", "timer", 40, 0);
    let server = b.spawn(&named("server", 10), None, MS);
    // server's first poll: spawns workers, a join of two spans, an error.
    b.enter(server, MS);
    let wa = b.spawn(&named("worker-a", 20), Some(server), MS + 100_000);
    let wb = b.spawn(&named("worker-b", 21), Some(server), MS + 110_000);
    let handle = b.user_span("handle", None, MS + 120_000);
    let db = b.user_span("fetch_db", Some(handle), MS + 120_000);
    let cache = b.user_span("fetch_cache", Some(handle), MS + 120_000);
    b.enter(handle, MS + 130_000)
        .enter(db, MS + 130_000)
        .exit(db, MS + 140_000)
        .enter(cache, MS + 150_000)
        .exit(cache, MS + 160_000)
        .exit(handle, MS + 170_000);
    b.event(
        Level::Error,
        Some(server),
        Some(handle),
        "upstream refused connection",
        MS + 180_000,
    );
    // A message handed to worker-a through a queue (awaitscope::Context).
    let msg = SpanId(1000);
    b.push(Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
        id: msg,
        callsite: 100,
        parent: None,
        ctx_task: Some(server),
        ctx_span: None,
        ts: MS + 190_000,
        fields: vec![],
    })));
    b.exit(server, MS + 200_000);
    // Workers take one mutex each.
    b.enter(wa, 2 * MS).lock(wa, ma, true, 2 * MS + 10_000);
    let consumer = SpanId(1001);
    b.push(Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
        id: consumer,
        callsite: 100,
        parent: None,
        ctx_task: Some(wa),
        ctx_span: None,
        ts: 2 * MS + 20_000,
        fields: vec![],
    })));
    b.push(Event::FollowsFrom {
        span: consumer,
        follows: msg,
    });
    b.exit(wa, 2 * MS + 50_000);
    b.enter(wb, 2 * MS + 500_000)
        .lock(wb, mb, true, 2 * MS + 510_000)
        .exit(wb, 2 * MS + 550_000);
    // worker-a wakes the server, which polls again (same tree: not resent).
    b.enter(wa, 3 * MS)
        .waker(server, WakeOp::WakeByRef, Some(wa), 3 * MS + 10_000)
        .exit(wa, 3 * MS + 20_000);
    b.enter(server, 3 * MS + 100_000);
    b.enter(handle, 3 * MS + 100_000)
        .enter(db, 3 * MS + 110_000)
        .exit(db, 3 * MS + 120_000)
        .enter(cache, 3 * MS + 130_000)
        .exit(cache, 3 * MS + 140_000)
        .exit(handle, 3 * MS + 150_000);
    // Requests, each sleeping once then completing.
    let mut reqs = Vec::new();
    for i in 0..3u64 {
        reqs.push(b.spawn(
            &named("request", 50),
            Some(server),
            3 * MS + 160_000 + i * 1000,
        ));
    }
    b.exit(server, 3 * MS + 200_000);
    for (i, r) in reqs.iter().enumerate() {
        let t0 = 4 * MS + i as u64 * 200_000;
        b.enter(*r, t0)
            .sleep(*r, timer, t0 + 10_000)
            .waker(*r, WakeOp::Clone, None, t0 + 10_000)
            .exit(*r, t0 + 20_000);
        b.waker(*r, WakeOp::Wake, None, t0 + (i as u64 + 1) * MS);
        b.poll(
            *r,
            t0 + (i as u64 + 1) * MS + 50_000,
            t0 + (i as u64 + 1) * MS + 60_000,
        );
        b.finish_task(*r, CloseKind::Completed, t0 + (i as u64 + 1) * MS + 70_000);
    }
    // The deadlock: each worker waits on the other's mutex.
    b.enter(wa, 8 * MS)
        .lock(wa, mb, false, 8 * MS + 10_000)
        .waker(wa, WakeOp::Clone, None, 8 * MS + 10_000)
        .exit(wa, 8 * MS + 20_000);
    b.enter(wb, 8 * MS + 100_000)
        .lock(wb, ma, false, 8 * MS + 110_000)
        .waker(wb, WakeOp::Clone, None, 8 * MS + 110_000)
        .exit(wb, 8 * MS + 120_000);
    // A long poll.
    let cruncher = b.spawn(&named("cruncher", 60), None, 9 * MS);
    b.poll(cruncher, 10 * MS, 35 * MS);
    b.finish_task(cruncher, CloseKind::Completed, 36 * MS);
    // A panic.
    let flaky = b.spawn(&named("flaky", 70), None, 40 * MS);
    b.enter(flaky, 41 * MS);
    b.panic(Some(flaky), "index out of bounds", 41 * MS + 500_000);
    b.exit(flaky, 41 * MS + 600_000);
    b.close(flaky, CloseKind::Panicked, 41 * MS + 700_000);
    // Something to move the clock on, so that the stall shows.
    let ticker = b.spawn(&named("ticker", 80), None, 50 * MS);
    b.poll(ticker, 51 * MS, 51 * MS + 10_000);
    b.waker(ticker, WakeOp::Clone, None, 51 * MS + 10_000);
    b.poll(ticker, 2_000 * MS, 2_000 * MS + 10_000);
    // The program ended cleanly: a recording without this is reported with
    // a warning in every format.
    b.goodbye();
    b.recording()
}

/// A synthetic load of about `events` events: waves of request tasks
/// spawned by a root task, each polled a few times around a timer and a
/// mutex, completing; a few hundred live at any time. For benchmarks.
pub fn load_recording(events: usize) -> Vec<u8> {
    let mut b = StreamBuilder::new(7, START_UNIX_NS);
    b.hello("load", None, false);
    b.thread(0);
    let m = b.resource("Mutex", "Sync", 30, 0);
    let timer = b.resource("Sleep", "timer", 40, 0);
    let root = b.spawn(&named("acceptor", 10), None, 0);
    let mut ts = 1_000u64;
    let mut emitted = 0usize;
    let mut live: std::collections::VecDeque<(SpanId, u32)> = std::collections::VecDeque::new();
    let mut n = 0u64;
    // Events pushed since `before` (the builder flushes every 4096).
    let delta = |b: &StreamBuilder, before: usize| {
        let after = b.pending_events();
        if after >= before {
            after - before
        } else {
            after + 4096 - before
        }
    };
    while emitted < events {
        // The acceptor spawns one request per round.
        let before = b.pending_events();
        b.enter(root, ts);
        let r = b.spawn(&named("request", 20 + (n % 4) as u32), Some(root), ts + 100);
        b.exit(root, ts + 500);
        emitted += delta(&b, before);
        live.push_back((r, 0));
        n += 1;
        ts += 1_000;
        // Advance the oldest live requests, a step each, keeping ~200 live;
        // at the end, finish them all.
        while live.len() > 200 || (emitted >= events && !live.is_empty()) {
            let (r, step) = live.pop_front().expect("non-empty");
            let before = b.pending_events();
            match step {
                0 => {
                    b.enter(r, ts)
                        .sleep(r, timer, ts + 100)
                        .waker(r, WakeOp::Clone, None, ts + 100)
                        .exit(r, ts + 300);
                    b.waker(r, WakeOp::Wake, None, ts + 900);
                    live.push_back((r, 1));
                }
                1 => {
                    b.enter(r, ts)
                        .lock(r, m, true, ts + 100)
                        .unlock(r, m, ts + 200)
                        .exit(r, ts + 400);
                    b.waker(r, WakeOp::Wake, Some(root), ts + 500);
                    live.push_back((r, 2));
                }
                _ => {
                    b.poll(r, ts, ts + 200);
                    b.finish_task(r, CloseKind::Completed, ts + 300);
                }
            }
            emitted += delta(&b, before);
            ts += 1_000;
        }
    }
    b.recording()
}
