//! The workloads of `awaitscope demo`, also run by the programs in
//! `examples/` (`cargo run --example NAME`): real async patterns
//! ([`shop`], [`jobs`], [`callbacks`]), the bugs the demo plants on purpose
//! ([`planted_bugs`]) and the demo mix of both ([`run`]).
//!
//! Everything here is plain tokio code instrumented only through `tracing`
//! spans and events and `awaitscope::spawn_named`; the caller installs
//! awaitscope (`awaitscope::init()` in the examples, an in-process
//! collector in `awaitscope demo`).
//!
//! [`run`] is a healthy storefront with clients, a job queue and a callback
//! bridge, with faults injected on a schedule so that these findings show
//! up within the first 15 seconds (and no `dropped_events`: the exporter
//! keeps up with the demo):
//!
//! | at | fault | finding |
//! | --- | --- | --- |
//! | 0.3 s | a task awaits a reply nobody sends | `stuck` (after 10 s) |
//! | 0.4 s | a call that should answer within 5 s never does | `stuck` (after the 5 s its span sets) |
//! | 0.5 s | two transfers lock two mutexes in opposite order | `deadlock` |
//! | 0.8 s | a future drops its waker | `lost_waker` |
//! | 1 s, every 3 s | `std::thread::sleep` in async code | `long_poll` |
//! | 1.2 s | a first poll of 2.5 s | `never_yielded` |
//! | 1.5 s, every 4 s | a card charge fails three spawns deep | `error` |
//! | 2 s | a config reload panics | `panic` |
//! | 2.5 s | a busy loop through `yield_now` | `self_wake` |
//! | 3 s | CPU-bound tasks on a one-thread runtime | `starvation` |
//!
//! Poison jobs fail after retries (errors naming the signup request).

pub mod callbacks;
pub mod jobs;
pub mod planted_bugs;
pub mod shop;

use std::time::Duration;

use tokio::time::Instant;

/// Runs the demo workload for `duration` (`None`: until the runtime is
/// dropped). Needs a multi-threaded runtime.
pub async fn run(duration: Option<Duration>) {
    let start = Instant::now();
    let addr = match shop::serve().await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("storefront could not bind: {e}");
            return;
        }
    };
    let load = awaitscope::spawn_named(
        "load-generator",
        shop::load(addr, None, Duration::from_millis(40)),
    );
    let queue = jobs::start(3);
    let signups = awaitscope::spawn_named("signups", async move {
        let mut user = 0;
        loop {
            jobs::handle_signup(&queue, user).await;
            user += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let lookups = awaitscope::spawn_named("legacy-lookups", async move {
        let mut key = 0;
        loop {
            let _ = callbacks::lookup(key).await;
            key += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let faults = awaitscope::spawn_named("fault-injector", faults());
    match duration {
        Some(d) => tokio::time::sleep_until(start + d).await,
        None => std::future::pending::<()>().await,
    }
    for h in [load, signups, lookups, faults] {
        h.abort();
    }
}

async fn at(ms: u64, start: Instant) {
    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
}

async fn faults() {
    let start = Instant::now();
    at(300, start).await;
    let (_stuck, reply) = planted_bugs::spawn_stuck();
    at(400, start).await;
    let (_hung, rates) = planted_bugs::spawn_hung_call();
    at(500, start).await;
    let _deadlock = planted_bugs::spawn_deadlock().await;
    at(800, start).await;
    let _lost = planted_bugs::spawn_lost_waker();
    at(1000, start).await;
    awaitscope::spawn_named("report-export", planted_bugs::blocking_in_async(60));
    at(1200, start).await;
    planted_bugs::spawn_never_yields(2500);
    at(1500, start).await;
    awaitscope::spawn_named("checkout", planted_bugs::error_three_spawns_deep(1001));
    at(2000, start).await;
    planted_bugs::spawn_panic();
    at(2500, start).await;
    planted_bugs::spawn_self_waker(1000);
    at(3000, start).await;
    planted_bugs::starvation_on_small_runtime(6);
    let mut n = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        n += 1;
        if n.rem_euclid(3) == 0 {
            awaitscope::spawn_named("report-export", planted_bugs::blocking_in_async(60));
        }
        if n.rem_euclid(4) == 0 {
            awaitscope::spawn_named(
                "checkout",
                planted_bugs::error_three_spawns_deep(1001 + n as u32),
            );
        }
        // The reply and the rate never come, but their senders stay alive.
        let _ = (&reply, &rates);
    }
}
