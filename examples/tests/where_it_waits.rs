//! Findings say where, in the user's code: small real programs, recorded
//! under awaitscope's test harness, whose findings must name the
//! instrumented functions the task is in, innermost first, and never a
//! file of awaitscope's own or an absolute path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use awaitscope::testing::TestBuilder;
use awaitscope_collector::{Config, Finding, FindingKind};
use tokio::sync::{oneshot, Mutex};
use tracing::instrument;

/// The findings of `kind` in `findings`.
fn of_kind(findings: &[Finding], kind: FindingKind) -> Vec<&Finding> {
    findings.iter().filter(|f| f.kind == kind).collect()
}

/// The index of the first trace line containing `needle`.
fn line_of(trace: &[String], needle: &str) -> usize {
    trace
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {trace:#?}"))
}

/// No trace line points into awaitscope's files, into tokio's, or at an
/// absolute path.
fn assert_user_frames(f: &Finding) {
    for l in &f.trace {
        assert!(
            !l.contains("instrument/src/") && !l.contains("@ /") && !l.contains("tokio-1."),
            "a frame the user cannot act on: {l:?} in {:#?}",
            f.trace
        );
    }
}

/// Runs `start` (which spawns the program's tasks) for 300 ms under the
/// harness and returns its one deadlock, whose trace names only frames the
/// user can act on.
fn the_deadlock(start: impl FnOnce()) -> Finding {
    let (rt, guard) = TestBuilder::default().fail_on(&[]).runtime();
    rt.block_on(async {
        start();
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let outcome = guard.finish();
    drop(rt);
    let found = of_kind(&outcome.findings, FindingKind::Deadlock);
    assert_eq!(found.len(), 1, "{:#?}", outcome.findings);
    assert_user_frames(found[0]);
    found[0].clone()
}

/// The harness's configuration with a short `stuck` threshold.
fn config(stuck: Duration) -> Config {
    let mut c = Config::default();
    c.thresholds.long_poll_ns = 100_000_000;
    c.thresholds.lost_waker_grace_ns = 1_000_000;
    c.thresholds.deadlock_grace_ns = 1_000_000;
    c.thresholds.stuck_ns = stuck.as_nanos() as u64;
    c
}

#[instrument(skip_all)]
async fn transfer_a_to_b(a: Arc<Mutex<u64>>, b: Arc<Mutex<u64>>) {
    let mut from = a.lock().await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut to = b.lock().await;
    *from -= 1;
    *to += 1;
}

#[instrument(skip_all)]
async fn transfer_b_to_a(a: Arc<Mutex<u64>>, b: Arc<Mutex<u64>>) {
    let mut from = b.lock().await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut to = a.lock().await;
    *from -= 1;
    *to += 1;
}

#[test]
fn a_deadlock_names_the_functions_where_each_task_waits_and_took_its_lock() {
    let f = the_deadlock(|| {
        let a = Arc::new(Mutex::new(10u64));
        let b = Arc::new(Mutex::new(10u64));
        tokio::spawn(transfer_a_to_b(a.clone(), b.clone()));
        tokio::spawn(transfer_b_to_a(a, b));
    });
    let trace = &f.trace;
    // Each task: where it waits, innermost first (the lock operation,
    // then the function it is in), and where it took what it holds.
    for name in ["transfer_a_to_b", "transfer_b_to_a"] {
        let waits = trace
            .iter()
            .position(|l| l.contains("waiting in") && l.contains(name))
            .unwrap_or_else(|| panic!("{name} not named where it waits: {trace:#?}"));
        assert!(
            trace[waits - 1].contains("waiting in tokio::sync::Mutex::lock"),
            "the lock first, then {name}: {trace:#?}"
        );
        let taken = trace.iter().enumerate().position(|(i, l)| {
            l.contains(name) && i > 0 && !l.contains("waiting in") && {
                // Inside a "holds ..., taken in:" block.
                trace[..i]
                    .iter()
                    .rev()
                    .find(|p| !p.starts_with("    "))
                    .is_some_and(|p| p.contains("holds Mutex"))
            }
        });
        assert!(taken.is_some(), "where {name} took its lock: {trace:#?}");
    }
}

#[instrument(skip_all)]
async fn load_avatar(pool: Arc<tokio::sync::Semaphore>) {
    let _conn = pool.acquire().await.unwrap();
}

/// Holds a connection of the pool while it asks for a second one.
#[instrument(skip_all)]
async fn fetch_profile(pool: Arc<tokio::sync::Semaphore>) {
    let _conn = pool.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    load_avatar(pool.clone()).await;
}

#[test]
fn a_pool_exhausted_by_nested_acquires_names_the_functions_that_wait() {
    let f = the_deadlock(|| {
        let pool = Arc::new(tokio::sync::Semaphore::new(2));
        tokio::spawn(fetch_profile(pool.clone()));
        tokio::spawn(fetch_profile(pool));
    });
    let trace = &f.trace;
    // Each request waits in the pool's acquire inside `load_avatar`,
    // called from `fetch_profile`, and holds the program's Semaphore.
    let waits = line_of(trace, "waiting in tokio::sync::Semaphore::acquire");
    assert!(trace[waits + 1].contains("load_avatar"), "{trace:#?}");
    assert!(trace[waits + 2].contains("fetch_profile"), "{trace:#?}");
    assert!(
        trace
            .iter()
            .filter(|l| l.contains("holds Semaphore @ examples/tests/where_it_waits.rs"))
            .count()
            == 2,
        "{trace:#?}"
    );
    // Where each request took its connection: in `fetch_profile`.
    let taken: Vec<usize> = (0..trace.len())
        .filter(|&i| trace[i].ends_with(", taken in:"))
        .collect();
    assert_eq!(taken.len(), 2, "{trace:#?}");
    for i in taken {
        assert!(
            trace[i + 1..]
                .iter()
                .take_while(|l| l.starts_with("    "))
                .any(|l| l.contains("fetch_profile @ examples/tests/where_it_waits.rs")),
            "{trace:#?}"
        );
    }
}

/// The hog: burns the CPU for `ms` without yielding.
fn burn(ms: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < end {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
    }
    x
}

/// Runs `program` on a current-thread runtime under the harness (its
/// default thresholds, failing on nothing) and returns what it found.
fn on_one_thread(program: impl Future<Output = ()>) -> awaitscope::testing::Outcome {
    let guard = TestBuilder::default().fail_on(&[]).start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(program);
    drop(rt);
    guard.finish()
}

#[instrument]
async fn ticker() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn a_timer_fired_late_is_starvation_naming_the_ticker_and_the_hogs() {
    let outcome = on_one_thread(async {
        let ticker = tokio::spawn(ticker());
        // The ticker's first poll starts its timer.
        tokio::task::yield_now().await;
        let hogs: Vec<_> = (0..3).map(|_| tokio::spawn(async { burn(120) })).collect();
        for h in hogs {
            let _ = h.await;
        }
        let _ = ticker.await;
    });
    let late: Vec<_> = of_kind(&outcome.findings, FindingKind::Starvation)
        .into_iter()
        .filter(|f| f.message.contains("after its timer's deadline"))
        .collect();
    assert_eq!(late.len(), 1, "{:#?}", outcome.findings);
    let f = late[0];
    assert_user_frames(f);
    let sleep = line_of(
        &f.trace,
        "tokio::time::sleep @ examples/tests/where_it_waits.rs",
    );
    let ticker = line_of(&f.trace, "ticker @ examples/tests/where_it_waits.rs");
    assert!(sleep < ticker, "innermost first: {:#?}", f.trace);
    let hogs = f
        .trace
        .iter()
        .filter(|l| l.starts_with("held the thread"))
        .count();
    assert!(hogs >= 2, "the hogs that held the thread: {:#?}", f.trace);
    assert!(f.tasks.len() > 2, "{:#?}", f.tasks);
}

/// Two tasks that burn the CPU and yield, on one thread: each one's
/// `yield_now` wakes it at once, and it waits while the other burns. Its
/// own wait names no line (`yield_now` has no span), so the finding points
/// at what held the thread: a line of `burn`, not a spawn site.
#[test]
fn a_task_kept_from_its_thread_points_at_the_line_that_held_it() {
    let outcome = on_one_thread(async {
        let hogs: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async {
                    for _ in 0..2 {
                        // Past the harness's long-poll threshold (100
                        // ms), where the capture samples the worker's
                        // native stack: the line that held it.
                        burn(150);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for h in hogs {
            let _ = h.await;
        }
    });
    let starved: Vec<_> = of_kind(&outcome.findings, FindingKind::Starvation)
        .into_iter()
        .filter(|f| f.message.contains("was woken but not polled"))
        .collect();
    assert!(!starved.is_empty(), "{:#?}", outcome.findings);
    for f in starved {
        assert_user_frames(f);
        let at = f.location.as_ref().expect("a location");
        // The line the trace names as where the other task held the thread.
        let held = format!("in burn (examples/tests/where_it_waits.rs:{})", at.line);
        assert!(
            f.trace
                .iter()
                .any(|l| l.starts_with("held the thread") && l.contains(&held)),
            "not the line that held the thread: {f:#?}"
        );
    }
}

/// The demo's planted busy-wait (`spawn_self_waker`: a future without a
/// span that wakes its task and returns `Pending`, twenty times a round)
/// is found at the line that wakes the task, which only the stack the
/// producer took at one of those wakes names.
#[test]
fn a_task_that_wakes_itself_points_at_the_line_that_does() {
    let (rt, guard) = TestBuilder::default().fail_on(&[]).runtime();
    rt.block_on(async {
        awaitscope_tui::demo::planted_bugs::spawn_self_waker(1)
            .await
            .expect("the spinner ends");
    });
    drop(rt);
    let outcome = guard.finish();
    let found = of_kind(&outcome.findings, FindingKind::SelfWake);
    assert_eq!(found.len(), 1, "{:#?}", outcome.findings);
    let f = found[0];
    assert_user_frames(f);
    let at = f.location.as_ref().expect("a location");
    assert_eq!(at.file, "tui/src/demo/planted_bugs.rs", "{f:#?}");
    let source = include_str!("../../tui/src/demo/planted_bugs.rs");
    let text = source.lines().nth(at.line as usize - 1).unwrap_or_default();
    assert!(text.contains("wake_by_ref()"), "line {}: {text:?}", at.line);
    // Named as the stack names it (`SpinOnce::poll`, or `poll` where line
    // tables name an inlined frame without its type), at that line.
    let line = format!("poll (tui/src/demo/planted_bugs.rs:{})", at.line);
    assert!(
        f.message.contains(", waking itself in ") && f.message.ends_with(&line),
        "{}",
        f.message
    );
    // The stack from that frame out: the wake first, then its caller.
    assert!(
        f.trace[0].ends_with(&format!("planted_bugs.rs:{}", at.line)),
        "{:#?}",
        f.trace
    );
}

#[test]
fn short_timers_on_an_idle_runtime_are_not_late() {
    let (rt, guard) = TestBuilder::default().fail_on(&[]).runtime();
    rt.block_on(async {
        let sleepers: Vec<_> = (0..20)
            .map(|i| {
                tokio::spawn(async move {
                    for _ in 0..10 {
                        tokio::time::sleep(Duration::from_millis(1 + i % 5)).await;
                    }
                })
            })
            .collect();
        for s in sleepers {
            let _ = s.await;
        }
    });
    let outcome = guard.finish();
    drop(rt);
    let late = of_kind(&outcome.findings, FindingKind::Starvation).len();
    assert_eq!(late, 0, "{:#?}", outcome.findings);
}

/// A future that returns `Pending` without keeping the waker (a bug).
struct Forgetful;

impl Future for Forgetful {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

#[instrument]
async fn wait_for_callback() {
    Forgetful.await;
}

#[instrument]
async fn sync_ledger() {
    wait_for_callback().await;
}

#[test]
fn a_lost_waker_names_the_functions_innermost_first() {
    let (rt, guard) = TestBuilder::default().fail_on(&[]).runtime();
    rt.block_on(async {
        tokio::spawn(sync_ledger());
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let outcome = guard.finish();
    drop(rt);
    let found = of_kind(&outcome.findings, FindingKind::LostWaker);
    assert_eq!(found.len(), 1, "{:#?}", outcome.findings);
    let f = found[0];
    assert_user_frames(f);
    assert!(f.trace[0].contains("wait_for_callback @ examples/tests/where_it_waits.rs"));
    assert!(f.trace[1].contains("sync_ledger @ examples/tests/where_it_waits.rs"));
}

#[instrument(skip_all)]
async fn await_billing_reply(rx: oneshot::Receiver<u32>) -> Option<u32> {
    rx.await.ok()
}

#[instrument(skip_all)]
async fn checkout(rx: oneshot::Receiver<u32>) -> Option<u32> {
    await_billing_reply(rx).await
}

#[test]
fn a_task_stuck_on_a_oneshot_names_both_functions_innermost_first() {
    let (rt, guard) = TestBuilder::default()
        .fail_on(&[])
        .config(config(Duration::from_millis(100)))
        .runtime();
    let (tx, rx) = oneshot::channel::<u32>();
    rt.block_on(async {
        tokio::spawn(checkout(rx));
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let outcome = guard.finish();
    drop(rt);
    drop(tx);
    let found = of_kind(&outcome.findings, FindingKind::Stuck);
    assert_eq!(found.len(), 1, "{:#?}", outcome.findings);
    let f = found[0];
    assert_user_frames(f);
    let inner = line_of(
        &f.trace,
        "await_billing_reply @ examples/tests/where_it_waits.rs",
    );
    let outer = line_of(&f.trace, "checkout @ examples/tests/where_it_waits.rs");
    assert!(inner < outer, "innermost first: {:#?}", f.trace);
    assert!(f.trace[0].contains("oneshot"), "{:#?}", f.trace);
}

#[instrument(skip_all)]
async fn settle(m: Arc<Mutex<u64>>) {
    let mut g = m.lock().await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    *g += 1;
}

/// The Markdown report's "Slowest awaits" names labelled awaits, joins and
/// tokio locks at the user's lines: none of awaitscope's files, no
/// `batch_semaphore`/`Acquire::new` from tokio's, no absolute path.
#[test]
fn slowest_awaits_are_at_the_users_lines() {
    use awaitscope::AwaitPoint;
    use awaitscope_collector::export::{self, markdown, TimelineOptions};
    use tracing_subscriber::layer::SubscriberExt;

    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::Builder::new().record_in_memory(&memory).build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    {
        let _d = tracing::dispatcher::set_default(&dispatch);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let m = Arc::new(Mutex::new(0u64));
            let mut joins = Vec::new();
            for _ in 0..4 {
                joins.push(awaitscope::spawn(settle(m.clone())));
            }
            for j in joins {
                let _ = j.await;
            }
            tokio::time::sleep(Duration::from_millis(3))
                .await_point("cool down")
                .await;
        });
    }
    drop(guard);
    drop(dispatch);
    let r = export::render_recording("t.rec", &memory.bytes(), TimelineOptions::default())
        .expect("the recording decodes");
    let md = markdown::render(&r.report, &r.walk, &markdown::Options::default());
    let table = md
        .split("## Slowest awaits")
        .nth(1)
        .expect("a Slowest awaits section");
    let table = table.split("\n## ").next().unwrap_or(table);
    for bad in [
        "instrument/src/",
        "batch_semaphore",
        "Acquire::new",
        "| `/",
        "@ /",
    ] {
        assert!(!table.contains(bad), "{bad:?} in:\n{table}");
    }
    assert!(
        table.contains("cool down @ examples/tests/where_it_waits.rs"),
        "{table}"
    );
    assert!(
        table.contains("join @ examples/tests/where_it_waits.rs"),
        "{table}"
    );
}

/// A plain function, no `#[instrument]` anywhere near it: only the native
/// stack of the blocked worker can name it.
#[inline(never)]
fn hash_password(password: &str) -> usize {
    std::thread::sleep(Duration::from_millis(300));
    std::hint::black_box(password.len())
}

#[test]
fn blocking_in_a_plain_fn_is_named_by_the_native_stack() {
    let (rt, guard) = TestBuilder::default().fail_on(&[]).runtime();
    rt.block_on(async {
        let h = tokio::spawn(async { hash_password("hunter2") });
        assert_eq!(h.await.unwrap(), 7);
    });
    drop(rt);
    let outcome = guard.finish();
    let long = of_kind(&outcome.findings, FindingKind::LongPoll);
    assert_eq!(long.len(), 1, "{:#?}", outcome.findings);
    let f = long[0];
    assert_user_frames(f);
    let at = line_of(
        &f.trace,
        "hash_password @ examples/tests/where_it_waits.rs:",
    );
    // The innermost frame of the program's own; above it only the
    // runtime's (the sleep it called).
    assert!(
        f.trace[..at].iter().all(|l| l.starts_with('…')),
        "{:#?}",
        f.trace
    );
    assert!(
        f.message
            .contains("in hash_password (examples/tests/where_it_waits.rs:"),
        "{}",
        f.message
    );
    let loc = f.location.as_ref().expect("a location");
    assert_eq!(loc.file, "examples/tests/where_it_waits.rs");
    // It slept: off the CPU, and said so.
    assert!(f.message.contains("blocked/sleeping"), "{}", f.message);
}

/// Set to end [`checksum_everything`].
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Spins on the CPU until [`STOP`] is set.
#[inline(never)]
fn checksum_everything() -> u64 {
    let mut x = 0;
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        x ^= burn(5);
    }
    x
}

#[test]
fn a_cpu_loop_in_a_first_poll_names_the_loop_while_it_runs() {
    let mut c = config(Duration::from_secs(60));
    // The recording's clock ends at its last event, the stall sent when the
    // poll crossed the long-poll threshold (100 ms): judged below that.
    c.thresholds.never_yielded_ns = 50_000_000;
    let (rt, guard) = TestBuilder::default().fail_on(&[]).config(c).runtime();
    // Spawned inside the runtime's context, where the guard records.
    let h = {
        let _in_runtime = rt.enter();
        tokio::spawn(async { checksum_everything() })
    };
    // The loop is still in its first poll when the test's recording ends.
    std::thread::sleep(Duration::from_millis(700));
    let outcome = guard.finish();
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(h).unwrap();
    let never = of_kind(&outcome.findings, FindingKind::NeverYielded);
    assert_eq!(never.len(), 1, "{:#?}", outcome.findings);
    let f = never[0];
    assert_user_frames(f);
    let caller = line_of(
        &f.trace,
        "checksum_everything @ examples/tests/where_it_waits.rs:",
    );
    // Sampled where it was: in `burn`, or between two calls of it.
    let inner = f.trace[..caller]
        .iter()
        .all(|l| l.starts_with('…') || l.starts_with("burn @ "));
    assert!(inner, "innermost first: {:#?}", f.trace);
    assert!(
        f.message.contains("in burn (") || f.message.contains("in checksum_everything ("),
        "{}",
        f.message
    );
}

#[instrument(skip_all)]
async fn serve_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[instrument(skip_all)]
async fn next_job(rx: &mut tokio::sync::mpsc::Receiver<u32>) -> Option<u32> {
    rx.recv().await
}

#[instrument(skip_all)]
async fn job_worker(mut rx: tokio::sync::mpsc::Receiver<u32>) {
    while let Some(_job) = next_job(&mut rx).await {}
}

/// A server at rest is not stuck: a connection waiting for its client's
/// next request and a worker waiting for its next job, each inside a span
/// of its own, well past the threshold. Beside them, a task waiting for a
/// oneshot's reply that never comes is.
#[test]
fn an_idle_connection_or_worker_is_not_stuck() {
    let (rt, guard) = TestBuilder::default()
        .fail_on(&[])
        .config(config(Duration::from_millis(100)))
        .runtime();
    let (tx, rx) = tokio::sync::mpsc::channel::<u32>(8);
    let (reply_tx, reply_rx) = oneshot::channel::<u32>();
    let client = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        tokio::spawn(serve_connection(server));
        tokio::spawn(job_worker(rx));
        tokio::spawn(checkout(reply_rx));
        tokio::time::sleep(Duration::from_millis(400)).await;
        client
    });
    let outcome = guard.finish();
    drop(rt);
    drop((tx, reply_tx, client));
    let stuck = of_kind(&outcome.findings, FindingKind::Stuck);
    assert_eq!(stuck.len(), 1, "{:#?}", outcome.findings);
    assert!(stuck[0].trace[0].contains("oneshot"), "{:#?}", stuck[0]);
    assert!(
        outcome.findings.iter().all(|f| f
            .trace
            .iter()
            .all(|l| !l.contains("serve_connection") && !l.contains("next_job"))),
        "{:#?}",
        outcome.findings
    );
}

/// An outbound call that should answer within 200 ms: the program says
/// so on its span.
#[instrument(skip_all, fields(awaitscope.stuck_after = "200ms"))]
async fn fetch_quote(stream: &mut tokio::net::TcpStream) -> std::io::Result<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"QUOTE\n").await?;
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).await?;
    Ok(u32::from_be_bytes(reply))
}

#[instrument(skip_all)]
async fn price_order(addr: std::net::SocketAddr) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = fetch_quote(&mut stream).await;
}

/// A call whose span sets `awaitscope.stuck_after` and that hangs (its
/// server reads the request and never answers) is `stuck`, at the call's
/// function, innermost first, well before the collector's threshold
/// (10 s here); the server's connection, idle in a span without the
/// field, is not.
#[test]
fn a_call_past_its_stuck_after_is_stuck_where_it_waits() {
    let (rt, guard) = TestBuilder::default()
        .fail_on(&[])
        .config(config(Duration::from_secs(10)))
        .runtime();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (server, _) = listener.accept().await.unwrap();
            serve_connection(server).await;
        });
        tokio::spawn(price_order(addr));
        tokio::time::sleep(Duration::from_millis(700)).await;
    });
    let outcome = guard.finish();
    drop(rt);
    let stuck = of_kind(&outcome.findings, FindingKind::Stuck);
    assert_eq!(stuck.len(), 1, "{:#?}", outcome.findings);
    let f = stuck[0];
    assert!(
        f.message.contains("pending in fetch_quote for ")
            && f.message
                .contains("(awaitscope.stuck_after = 200.0ms on fetch_quote)"),
        "{}",
        f.message
    );
    assert!(
        f.trace[0].starts_with("fetch_quote @ examples/tests/where_it_waits.rs"),
        "{:#?}",
        f.trace
    );
    assert!(line_of(&f.trace, "price_order") > 0, "{:#?}", f.trace);
    assert_user_frames(f);
    assert_eq!(
        f.location.as_ref().map(|l| l.file.as_str()),
        Some("examples/tests/where_it_waits.rs")
    );
}
