//! Deliberate bugs that the demo plants so that every finding kind shows:
//! blocking in async, a lost waker, a deadlock, starvation, an error three
//! spawns deep, a panic, a busy self-waking loop, a task stuck forever, a
//! call that never answers past the deadline its span sets, and a burst
//! that overflows the event ring. Each is small and bounded, and
//! each item here is wrong on purpose: do not copy them into real code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use awaitscope::{AwaitPoint, JoinHandle};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::instrument;

/// Deliberate bug (`long_poll`): blocks the worker thread for `ms` inside
/// async code (`std::thread::sleep` where `tokio::time::sleep` was meant).
#[instrument]
pub async fn blocking_in_async(ms: u64) {
    tokio::task::yield_now().await;
    std::thread::sleep(Duration::from_millis(ms));
}

/// Deliberate bug (`lost_waker`): a hand-written future that returns
/// `Pending` without keeping the waker, so nobody can ever wake its task.
#[derive(Debug, Default)]
pub struct ForgetfulFuture;

impl Future for ForgetfulFuture {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        // Bug: should store `_cx.waker().clone()` for whoever completes us.
        Poll::Pending
    }
}

/// Deliberate bug (`lost_waker`): spawns a task that waits on a
/// [`ForgetfulFuture`] forever.
pub fn spawn_lost_waker() -> JoinHandle<()> {
    awaitscope::spawn_named("lost-waker", await_settlement())
}

/// Waits on a [`ForgetfulFuture`]: its task is never woken.
#[instrument]
async fn await_settlement() {
    ForgetfulFuture.await_point("forgetful future").await;
}

/// Deliberate bug (`deadlock`, with the cycle): two tasks take two mutexes
/// in opposite order; each holds one and waits for the other forever.
pub async fn spawn_deadlock() -> (JoinHandle<()>, JoinHandle<()>) {
    let accounts = Arc::new(Mutex::new(0u64));
    let ledger = Arc::new(Mutex::new(0u64));
    let (a1, l1) = (accounts.clone(), ledger.clone());
    let left = awaitscope::spawn_named("transfer-debit", transfer_debit(a1, l1));
    let right = awaitscope::spawn_named("transfer-audit", transfer_audit(accounts, ledger));
    (left, right)
}

/// Takes the accounts, then the ledger.
#[instrument(skip_all)]
async fn transfer_debit(accounts: Arc<Mutex<u64>>, ledger: Arc<Mutex<u64>>) {
    let mut acc = accounts.lock().await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut led = ledger.lock().await;
    *acc += 1;
    *led += 1;
}

/// Takes the ledger, then the accounts: the opposite order.
#[instrument(skip_all)]
async fn transfer_audit(accounts: Arc<Mutex<u64>>, ledger: Arc<Mutex<u64>>) {
    let mut led = ledger.lock().await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut acc = accounts.lock().await;
    *acc += 1;
    *led += 1;
}

/// Burns the CPU for `ms` without yielding: the CPU-bound step of the
/// planted [`starvation`] and [`spawn_never_yields`] bugs.
pub fn burn_cpu(ms: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < end {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
    }
    x
}

/// Deliberate bug (`starvation`): on a single-threaded runtime, CPU-bound
/// tasks keep a ticker that wakes every 5 ms from being polled for tens of
/// milliseconds.
pub async fn starvation(rounds: u32) {
    let ticker = awaitscope::spawn_named("ticker", tick(rounds * 20));
    let mut hogs = Vec::new();
    for i in 0..2 {
        hogs.push(awaitscope::spawn_named("cpu-hog", async move {
            for _ in 0..rounds {
                std::hint::black_box(burn_cpu(60 + i * 10));
                tokio::task::yield_now().await;
            }
        }));
    }
    for h in hogs {
        let _ = h.await;
    }
    let _ = ticker.await;
}

/// Wakes every 5 ms, `ticks` times: the timer the hogs starve.
#[instrument]
async fn tick(ticks: u32) {
    for _ in 0..ticks {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Deliberate bug (`starvation`): runs [`starvation`] on its own
/// current-thread runtime (on a new thread
/// that keeps the caller's `tracing` dispatcher), returning when it ends.
pub fn starvation_on_small_runtime(rounds: u32) -> std::thread::JoinHandle<()> {
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    std::thread::Builder::new()
        .name("small-runtime".into())
        .spawn(move || {
            let _d = tracing::dispatcher::set_default(&dispatch);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(starvation(rounds));
        })
        .expect("thread")
}

#[instrument(skip_all, fields(order))]
async fn charge_card(order: u32) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    tracing::error!(
        order,
        gateway = "payments.example",
        "card declined: gateway timeout"
    );
    Err(format!("order {order}: card declined"))
}

/// Deliberate bug (`error`): a request span spawns a task, which spawns a
/// task, which spawns the task that fails; the error's causal trace
/// crosses three spawns back to the request.
#[instrument(fields(order))]
pub async fn error_three_spawns_deep(order: u32) -> Result<(), String> {
    let level1 = awaitscope::spawn_named("checkout-saga", async move {
        let level2 = awaitscope::spawn_named("payment-step", async move {
            let level3 = awaitscope::spawn_named("card-charge", charge_card(order));
            level3.await.map_err(|e| e.to_string())?
        });
        level2.await.map_err(|e| e.to_string())?
    });
    level1.await.map_err(|e| e.to_string())?
}

/// Deliberate bug (`panic`): a task that panics on a missing config key.
pub fn spawn_panic() -> JoinHandle<()> {
    awaitscope::spawn_named("config-reload", async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cfg: Option<&str> = None;
        panic!("config reload: missing key `db.url` ({cfg:?})");
    })
}

/// Deliberate bug (`self_wake`): wakes its own task and returns `Pending`
/// once, a busy-wait step.
#[derive(Debug, Default)]
pub struct SpinOnce(bool);

impl Future for SpinOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Deliberate bug (`self_wake`): a task that busy-waits through the
/// scheduler, waking itself on almost every poll, `rounds` times 20 spins.
pub fn spawn_self_waker(rounds: u32) -> JoinHandle<()> {
    awaitscope::spawn_named("spin-wait", async move {
        for _ in 0..rounds {
            for _ in 0..20 {
                SpinOnce::default().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Deliberate bug (`stuck`): a task that awaits a reply nobody will send
/// (the sender is kept alive), pending on the same await point for ever.
pub fn spawn_stuck() -> (JoinHandle<()>, oneshot::Sender<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let h = awaitscope::spawn_named("await-reply", await_billing_reply(rx));
    (h, tx)
}

/// Waits for billing's reply.
#[instrument(skip_all)]
async fn await_billing_reply(rx: oneshot::Receiver<()>) {
    let _ = rx.await_point("reply from billing").await;
}

/// Deliberate bug (`stuck` past the program's own deadline): a call to the
/// exchange-rate service whose answer never comes (the service keeps the
/// channel open and never sends). A wait on a channel is not a call on a
/// tokio resource, so without its span's `awaitscope.stuck_after` it would
/// read as a worker waiting for work.
pub fn spawn_hung_call() -> (JoinHandle<()>, mpsc::Sender<u64>) {
    let (tx, rx) = mpsc::channel::<u64>(1);
    let h = awaitscope::spawn_named("price-quote", fetch_exchange_rate(rx));
    (h, tx)
}

/// Asks the exchange-rate service and waits for its answer, which must
/// come within 5 s.
#[instrument(skip_all, fields(awaitscope.stuck_after = "5s"))]
async fn fetch_exchange_rate(mut answers: mpsc::Receiver<u64>) {
    let _ = answers.recv().await;
}

/// Deliberate bug (`never_yielded` past 1 s): a task whose first poll runs
/// for `ms`.
pub fn spawn_never_yields(ms: u64) -> JoinHandle<()> {
    awaitscope::spawn_named("warm-cache", async move {
        std::hint::black_box(burn_cpu(ms));
    })
}

/// Deliberate bug (`dropped_events`): emits `n` records from a new thread
/// faster than awaitscope drains them (with a small ring), so events are
/// dropped.
pub fn burst(n: u32) -> std::thread::JoinHandle<()> {
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    std::thread::Builder::new()
        .name("burst".into())
        .spawn(move || {
            let _d = tracing::dispatcher::set_default(&dispatch);
            for i in 0..n {
                let s = tracing::info_span!("burst", i);
                let _e = s.enter();
            }
        })
        .expect("thread")
}
