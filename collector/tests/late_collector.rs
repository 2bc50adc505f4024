//! A real instrumented program that streams to a collector started after
//! it: the collector learns the program's live tasks from the handshake,
//! with their spawn times, and must not take a task spawned long before as
//! woken then and not polled since. The tasks here are polled all along, so
//! any `starvation` (or other stall finding) is invented.

mod live;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use awaitscope_collector::ingest::server::ServerHandle;
use awaitscope_collector::{FindingKind, Report};
use live::{start, test_config, wait_until};
use tracing_subscriber::layer::SubscriberExt;

/// Runs a busy, healthy program streaming to `addr` until `stop` is set;
/// returns once its guard is dropped (its goodbye sent).
fn program(addr: String, stop: Arc<AtomicBool>) {
    let (layer, guard) = awaitscope::Builder::new().stream_to(addr).build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    let d = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&d)))
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(16);
            // A server that handles requests as they come, all along.
            let server = tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(x) = rx.recv().await {
                    n = n.wrapping_add(x);
                }
                n
            });
            // A ticker, woken by the timer every few milliseconds.
            let stop2 = stop.clone();
            let ticker = tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(4));
                while !stop2.load(Ordering::Relaxed) {
                    every.tick().await;
                }
            });
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = tx.send(i).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            drop(tx);
            server.await.unwrap();
            ticker.await.unwrap();
        });
    });
    drop(rt);
    drop(guard);
}

/// Half a second more of the program's life seen live, then its end:
/// the collector's report once the goodbye arrived.
async fn watch_to_the_end(
    h: &ServerHandle,
    stop: &AtomicBool,
    prog: std::thread::JoinHandle<()>,
) -> Report {
    let seen = h.with_model(|m| m.processes().map(|p| p.now).max().unwrap_or(0));
    wait_until("half a second more", || {
        h.with_model(|m| m.processes().any(|p| p.now > seen + 500_000_000))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || prog.join().unwrap())
        .await
        .unwrap();
    wait_until("the goodbye", || {
        h.with_model(|m| m.processes().any(|p| p.ended))
    })
    .await;
    h.report()
}

/// No wait or stall finding: the program is healthy, its tasks polled all
/// along.
fn assert_no_invented_wait(report: &Report) {
    let invented: Vec<_> = report
        .findings
        .iter()
        .filter(|f| {
            matches!(
                f.kind,
                FindingKind::Starvation
                    | FindingKind::NeverYielded
                    | FindingKind::LostWaker
                    | FindingKind::Stuck
            )
        })
        .map(|f| format!("{}: {}", f.kind, f.message))
        .collect();
    assert!(
        invented.is_empty(),
        "findings on a healthy program: {invented:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_started_late_invents_no_wait() {
    // A free loopback port, for the collector to take later.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let prog = std::thread::spawn(move || program(addr.to_string(), stop2));
    // The program runs, its tasks spawned and polled, with no collector.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let server = start(awaitscope_collector::ingest::server::ServerConfig {
        listen: addr,
        ..test_config(Duration::from_secs(5))
    })
    .await;
    assert_eq!(server.addr, addr);
    let h = server.handle.clone();
    wait_until("the program connects and streams", || {
        h.with_model(|m| {
            m.processes()
                .any(|p| p.connected && p.tasks.len() >= 2 && p.now > 1_000_000_000)
        })
    })
    .await;
    let report = watch_to_the_end(&h, &stop, prog).await;
    server.stop().await;
    assert_no_invented_wait(&report);
    let p = &report.processes[0];
    assert!(p.tasks_live + p.tasks_retained as usize >= 2, "{p:?}");
}

/// The same program reconnecting to a new collector after the first one
/// went away: the new collector learns its live tasks from the reconnect's
/// handshake and invents no wait either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_collector_after_a_reconnect_invents_no_wait() {
    let first = start(test_config(Duration::from_secs(5))).await;
    let addr = first.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let prog = std::thread::spawn(move || program(addr.to_string(), stop2));
    let h1 = first.handle.clone();
    wait_until("the program streams to the first collector", || {
        h1.with_model(|m| m.processes().any(|p| p.connected && p.now > 300_000_000))
    })
    .await;
    first.stop().await;
    // The program goes on without a collector, then reconnects.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = start(awaitscope_collector::ingest::server::ServerConfig {
        listen: addr,
        ..test_config(Duration::from_secs(5))
    })
    .await;
    let h = second.handle.clone();
    wait_until("the program reconnects", || {
        h.with_model(|m| m.processes().any(|p| p.connected && p.tasks.len() >= 2))
    })
    .await;
    let report = watch_to_the_end(&h, &stop, prog).await;
    second.stop().await;
    assert_no_invented_wait(&report);
    assert_eq!(report.processes.len(), 1);
}
