//! End to end with the real capture layer (crate `awaitscope`): tokio
//! programs with a deadlock, a lost waker, a long poll, a task stuck on a
//! lock and tasks parked on timers, recorded in memory and analysed.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use awaitscope::MemoryRecording;
use awaitscope_collector::ingest::recording;
use awaitscope_collector::{Config, Finding, FindingKind, Model, Report};
use tokio::sync::Mutex;
use tracing_subscriber::layer::SubscriberExt;

/// Runs `program` on a current-thread runtime under the awaitscope layer;
/// returns what was recorded when the program returned (its tasks still
/// pending, before the runtime's shutdown cancels them).
fn record<F, Fut>(program: F) -> Vec<u8>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    record_with(|b| b, program)
}

/// [`record`] with the builder changed by `setup`.
fn record_with<F, Fut>(
    setup: impl FnOnce(awaitscope::Builder) -> awaitscope::Builder,
    program: F,
) -> Vec<u8>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let memory = MemoryRecording::new();
    let (layer, guard) = setup(awaitscope::Builder::new())
        .no_stream()
        .record_in_memory(&memory)
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    let d = dispatch.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&d)))
        .build()
        .unwrap();
    let bytes = tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        rt.block_on(async {
            program().await;
            guard.flush();
            memory.bytes()
        })
    });
    drop(rt);
    drop(guard);
    bytes
}

fn analyse(bytes: &[u8]) -> Model {
    let mut cfg = Config::default();
    cfg.thresholds.stuck_ns = 200_000_000;
    let mut model = Model::new(cfg);
    recording::load_reader(&mut model, "memory", bytes).expect("a recording");
    model.finish();
    model
}

fn named(m: &Model, kind: FindingKind) -> Vec<(&Finding, Vec<String>)> {
    m.findings()
        .of_kind(kind)
        .map(|f| {
            let names = f.tasks.iter().filter_map(|t| t.name.clone()).collect();
            (f, names)
        })
        .collect()
}

#[test]
fn real_program_findings_and_exemptions() {
    let bytes = record(|| async {
        let (a, b) = (Arc::new(Mutex::new(())), Arc::new(Mutex::new(())));
        let (a2, b2) = (a.clone(), b.clone());
        awaitscope::spawn_named("left", async move {
            let _ga = a.lock().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _gb = b.lock().await;
        });
        awaitscope::spawn_named("right", async move {
            let _gb = b2.lock().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ga = a2.lock().await;
        });
        awaitscope::spawn_named("forgotten", std::future::poll_fn(|_| Poll::<()>::Pending));
        awaitscope::spawn_named("hog", async {
            std::thread::sleep(Duration::from_millis(30));
        });
        awaitscope::spawn_named("napper", tokio::time::sleep(Duration::from_secs(60)));
        let m = Arc::new(Mutex::new(()));
        let m2 = m.clone();
        awaitscope::spawn_named("holder", async move {
            let _g = m2.lock().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        awaitscope::spawn_named("waiter", async move {
            let _g = m.lock().await;
        });
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(50)));
        tokio::time::sleep(Duration::from_millis(600)).await;
    });
    let model = analyse(&bytes);
    let report = Report::from_model(&model);
    let all: Vec<_> = model
        .findings()
        .list()
        .iter()
        .map(|f| (f.kind.as_str(), f.message.clone()))
        .collect();

    let dl = named(&model, FindingKind::Deadlock);
    let tasks: Vec<_> = report
        .tasks
        .iter()
        .map(|t| (t.name.clone(), t.state, t.polls, t.waiting_on.clone()))
        .collect();
    assert!(
        !dl.is_empty(),
        "{all:#?}\n{} bytes, events {:?}, tasks {tasks:?}, resources {:?}",
        bytes.len(),
        report
            .processes
            .iter()
            .map(|p| p.events)
            .collect::<Vec<_>>(),
        report
            .processes
            .iter()
            .map(|p| &p.resources)
            .collect::<Vec<_>>()
    );
    let mut cycle = dl[0].1.clone();
    assert!(
        // A line per task of the cycle; indented under it, where it waits
        // and what it holds.
        dl[0]
            .0
            .trace
            .iter()
            .filter(|l| !l.starts_with(' '))
            .all(|l| l.contains("waits on Mutex")),
        "{:?}",
        dl[0].0.trace
    );
    cycle.sort();
    assert_eq!(cycle, ["left", "right"]);

    let lost = named(&model, FindingKind::LostWaker);
    let lost_names: Vec<_> = lost.iter().flat_map(|(_, n)| n.clone()).collect();
    assert_eq!(lost_names, ["forgotten"], "{all:#?}");

    let long = named(&model, FindingKind::LongPoll);
    assert!(
        long.iter()
            .any(|(f, n)| n == &["hog"] && f.worst_ns >= Some(30_000_000)),
        "{all:#?}"
    );

    let stuck: Vec<_> = named(&model, FindingKind::Stuck)
        .into_iter()
        .flat_map(|(_, n)| n)
        .collect();
    assert!(stuck.contains(&"waiter".to_string()), "{all:#?}");
    let waiter_stuck = model
        .findings()
        .of_kind(FindingKind::Stuck)
        .find(|f| f.tasks.iter().any(|t| t.name.as_deref() == Some("waiter")))
        .unwrap();
    assert!(
        waiter_stuck.message.contains("Mutex::lock"),
        "{}",
        waiter_stuck.message
    );
    assert!(
        !stuck.contains(&"napper".to_string()),
        "parked on a timer: {all:#?}"
    );
    assert!(
        !stuck.contains(&"holder".to_string()),
        "parked on a timer: {all:#?}"
    );

    assert_eq!(
        model.findings().of_kind(FindingKind::NeverYielded).count(),
        0,
        "{all:#?}"
    );

    // The model: task tree, holders and waiters, await trees.
    let task = |name: &str| {
        report
            .tasks
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap()
    };
    assert_eq!(
        task("hog").state,
        "completed",
        "{:#?}\n{:#?}",
        task("hog"),
        report.dropped
    );
    assert_eq!(task("waiter").state, "idle");
    let waiter_tree = serde_json::to_string(&task("waiter").await_tree).unwrap();
    assert!(waiter_tree.contains("Mutex"), "{waiter_tree}");
    let napper_tree = serde_json::to_string(&task("napper").await_tree).unwrap();
    assert!(napper_tree.contains("Sleep"), "{napper_tree}");
    let mutexes: Vec<_> = report.processes[0]
        .resources
        .iter()
        .filter(|r| r.concrete_type == "Mutex")
        .collect();
    assert!(
        mutexes
            .iter()
            .any(|r| r.holders == [task("holder").id] && r.waiters == [task("waiter").id]),
        "{mutexes:#?}"
    );
}

/// An error three spawns deep, after the middle task and its span ended:
/// the `error` finding carries the stitched causal trace across all three.
#[test]
fn error_three_spawns_deep_has_the_stitched_trace() {
    use tracing::Instrument;
    let bytes = record(|| async {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        awaitscope::spawn_named(
            "http-conn",
            async move {
                awaitscope::spawn_named(
                    "order-worker",
                    async move {
                        awaitscope::spawn_named(
                            "payment",
                            async move {
                                go_rx.await.unwrap();
                                tracing::error!(code = 402, "card declined");
                                done_tx.send(()).unwrap();
                            }
                            .instrument(tracing::info_span!("charge", amount = 30)),
                        );
                    }
                    .instrument(tracing::info_span!("process_order", order = 7)),
                )
                .await
                .unwrap();
            }
            .instrument(tracing::info_span!("request", path = "/checkout")),
        )
        .await
        .unwrap();
        // order-worker and its span are gone before the error happens.
        go_tx.send(()).unwrap();
        done_rx.await.unwrap();
    });
    let model = analyse(&bytes);
    let errors: Vec<&Finding> = model.findings().of_kind(FindingKind::Error).collect();
    assert_eq!(errors.len(), 1);
    let trace = &errors[0].trace;
    let joined = trace.join("\n");
    let find = |needle: &str| {
        trace
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in\n{joined}"))
    };
    let charge = find("charge{amount=30}");
    let payment = find("\"payment\" spawned at");
    let order = find("process_order{order=7}");
    let worker = find("\"order-worker\" spawned at");
    let request = find("request{path=/checkout}");
    assert!(
        charge < payment && payment < order && order < worker && worker < request,
        "{joined}"
    );
    assert!(
        trace[payment].contains("by task") && trace[payment].contains("\"order-worker\""),
        "{joined}"
    );
}

/// Blocks its worker in a plain call, inside an instrumented fn that
/// returns within the poll (its span is closed before the poll's end).
#[tracing::instrument]
async fn charge_card() {
    std::thread::sleep(Duration::from_millis(40));
}

#[tracing::instrument]
async fn checkout() {
    charge_card().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// A long poll of a real program, without a stall from the producer (its
/// stall threshold set past the poll): the finding's trace is the poll's
/// await tree, innermost first, with the instrumented fn that returned
/// during the poll, and the finding names it.
#[test]
fn long_poll_names_the_instrumented_fns_innermost_first() {
    let bytes = record_with(
        |b| b.long_poll(Duration::from_secs(60)),
        || async {
            awaitscope::spawn_named("checkout", checkout())
                .await
                .unwrap();
        },
    );
    let m = analyse(&bytes);
    let long = named(&m, FindingKind::LongPoll);
    let (f, _) = long
        .iter()
        .find(|(_, names)| names.iter().any(|n| n == "checkout"))
        .unwrap_or_else(|| panic!("{:#?}", m.findings().list()));
    let labels: Vec<&str> = f
        .trace
        .iter()
        .map(|l| l.split(" @ ").next().unwrap())
        .collect();
    let charge = labels.iter().position(|l| *l == "charge_card");
    let outer = labels.iter().position(|l| *l == "checkout");
    assert!(
        matches!((charge, outer), (Some(c), Some(o)) if c < o),
        "{:#?}",
        f.trace
    );
    assert!(f.trace[0].starts_with("no native stack"), "{:#?}", f.trace);
    assert!(
        f.trace.last().unwrap().starts_with("task #"),
        "{:#?}",
        f.trace
    );
    assert!(
        f.message
            .contains("in charge_card (collector/tests/real_capture.rs:"),
        "{}",
        f.message
    );
    assert_eq!(
        f.location.as_ref().map(|l| l.file.as_str()),
        Some("collector/tests/real_capture.rs")
    );
}

/// A task that waits on a tokio Mutex points at the line of its `.await`,
/// not at the Mutex's creation: the stack taken where tokio told it "not
/// ready" names the line, which no span does. Both tasks of a deadlock
/// show their own lines; with native stacks off, neither does.
#[test]
fn a_wait_on_a_lock_points_at_the_awaiting_line() {
    type Lines = Arc<std::sync::Mutex<Vec<(&'static str, u32)>>>;
    async fn deadlock(lines: Lines) {
        let (a, b) = (Arc::new(Mutex::new(())), Arc::new(Mutex::new(())));
        let (a2, b2) = (a.clone(), b.clone());
        let (l1, l2) = (lines.clone(), lines);
        awaitscope::spawn_named("left", async move {
            let _ga = a.lock().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            l1.lock().unwrap().push(("left", line!() + 1));
            let _gb = b.lock().await;
        });
        awaitscope::spawn_named("right", async move {
            let _gb = b2.lock().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            l2.lock().unwrap().push(("right", line!() + 1));
            let _ga = a2.lock().await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let trace = |stacks: bool| {
        let lines = Lines::default();
        let l = lines.clone();
        let bytes = record_with(|b| b.native_stacks(stacks), || deadlock(l));
        let model = analyse(&bytes);
        let dl = named(&model, FindingKind::Deadlock);
        assert_eq!(dl.len(), 1, "{:#?}", model.findings().list());
        let lines = lines.lock().unwrap().clone();
        let at = dl[0].0.location.as_ref().map(|l| (l.file.clone(), l.line));
        (dl[0].0.trace.clone(), lines, Report::from_model(&model), at)
    };
    let (with, lines, report, at) = trace(true);
    assert_eq!(lines.len(), 2);
    // The finding points at the line its first task waits at.
    let here = "collector/tests/real_capture.rs".to_string();
    assert!(
        lines.iter().any(|(_, l)| at == Some((here.clone(), *l))),
        "{at:?} {lines:?}"
    );
    // The report's await trees put the lock's wait at its line too.
    for (task, line) in &lines {
        let t = report
            .tasks
            .iter()
            .find(|t| t.name.as_deref() == Some(*task))
            .unwrap();
        let tree = serde_json::to_string(&t.await_tree).unwrap();
        let at =
            format!(r#""location":{{"file":"collector/tests/real_capture.rs","line":{line}}}"#);
        assert!(tree.contains(&at), "{task}: {tree}");
    }
    for (task, line) in &lines {
        let at = format!(
            "  waiting in tokio::sync::Mutex::lock @ collector/tests/real_capture.rs:{line}"
        );
        let task_at = with
            .iter()
            .position(|l| l.starts_with(&format!("task {task}")))
            .unwrap_or_else(|| panic!("no line of {task}: {with:#?}"));
        assert_eq!(with.get(task_at + 1), Some(&at), "{task}: {with:#?}");
    }
    let (without, lines, _, _) = trace(false);
    for (_, line) in &lines {
        let at = format!("real_capture.rs:{line}");
        assert!(!without.iter().any(|l| l.ends_with(&at)), "{without:#?}");
    }
}

/// Holders of a resource by task name, with their counts.
type Holders = Vec<(String, u32)>;
/// A resource's state fields.
type State = Vec<(String, awaitscope_wire::Value)>;

/// The resource of concrete type `ty` (the internal one of a pair when
/// `internal`), its holders by task name and its state.
fn resource_seen(m: &Model, ty: &str, internal: bool) -> (Holders, State) {
    let p = m.processes().next().expect("a process");
    let r = p
        .resources
        .values()
        .find(|r| r.concrete_type == ty && r.internal == internal)
        .unwrap_or_else(|| panic!("a {ty} resource"));
    let name = |t: awaitscope_wire::SpanId| {
        p.tasks
            .get(&t)
            .and_then(|t| t.name.clone())
            .unwrap_or_default()
    };
    let mut holders: Vec<_> = r.holders.iter().map(|(t, n)| (name(*t), *n)).collect();
    holders.sort();
    (holders, r.state.clone())
}

/// tokio reports a semaphore's permits as changes (`permits = 3,
/// permits.op = "sub"`) and hands a release's permits straight to the
/// waiting acquire (only its async op hears of it). The model keeps the
/// permits left and who holds how many: a release handed to a waiter moves
/// them, and the acquire's own state stays off the semaphore's.
#[test]
fn a_semaphore_shows_its_permits_left_and_who_holds_them() {
    let bytes = record(|| async {
        let sem = Arc::new(tokio::sync::Semaphore::new(10));
        let (s1, s2) = (sem.clone(), sem.clone());
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        awaitscope::spawn_named("holder", async move {
            let held = s1.acquire_many(3).await.unwrap();
            let _ = release_rx.await;
            drop(held);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        awaitscope::spawn_named("waiter", async move {
            // 7 are free: it takes them and waits for one more.
            let _p = s2.acquire_many(8).await.unwrap();
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The holder's 3: one to the waiter, two back to the semaphore.
        release_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
    let m = analyse(&bytes);
    let (holders, state) = resource_seen(&m, "Semaphore", true);
    assert_eq!(holders, [("waiter".to_string(), 8)]);
    let permits: Vec<_> = state
        .iter()
        .filter(|(n, _)| n.starts_with("permits"))
        .collect();
    assert_eq!(
        permits,
        [&("permits".to_string(), awaitscope_wire::Value::U64(2))],
        "{state:?}"
    );
    // Where the permits were taken is kept on the program's Semaphore, for
    // the holder left: the one that let its permits go is forgotten.
    let p = m.processes().next().unwrap();
    let outer = p
        .resources
        .values()
        .find(|r| r.concrete_type == "Semaphore" && !r.internal)
        .unwrap();
    let takers: Vec<_> = outer
        .held_at
        .iter()
        .map(|(t, _)| p.tasks.get(t).and_then(|t| t.name.clone()))
        .collect();
    assert_eq!(takers, [Some("waiter".to_string())]);
}

/// An RwLock's readers come with `current_readers.op = "add"` and go with
/// `"sub"`: the reader still holding it is its holder, the one gone is not.
#[test]
fn an_rwlock_holds_the_readers_still_reading() {
    let bytes = record(|| async {
        let lock = Arc::new(tokio::sync::RwLock::new(0));
        let (l1, l2) = (lock.clone(), lock.clone());
        awaitscope::spawn_named("reading", async move {
            let _r = l1.read().await;
            std::future::pending::<()>().await;
        });
        awaitscope::spawn_named("read-once", async move {
            let r = l2.read().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(r);
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
    let m = analyse(&bytes);
    let (holders, state) = resource_seen(&m, "RwLock", false);
    assert_eq!(holders, [("reading".to_string(), 1)]);
    // tokio sends the readers as `i32` (recorded as `i64`).
    assert!(
        state.contains(&(
            "current_readers".to_string(),
            awaitscope_wire::Value::I64(1)
        )),
        "{state:?}"
    );
}

/// The one deadlock of `m`: its tasks are `tasks`, and each of its waits
/// names a `lock` made in this file.
fn the_deadlock<'m>(m: &'m Model, tasks: [&str; 2], lock: &str) -> &'m Finding {
    let dl = named(m, FindingKind::Deadlock);
    assert_eq!(dl.len(), 1, "{:#?}", m.findings().list());
    let (f, mut names) = (dl[0].0, dl[0].1.clone());
    names.sort();
    assert_eq!(names, tasks);
    let waits: Vec<_> = f
        .trace
        .iter()
        .filter(|l| l.contains(" waits on "))
        .collect();
    assert_eq!(waits.len(), 2, "{:#?}", f.trace);
    for w in waits {
        assert!(
            w.contains(&format!(
                "waits on {lock} @ collector/tests/real_capture.rs:"
            )),
            "{w}"
        );
    }
    f
}

/// Two tasks each holding a semaphore's permit and waiting for the other's:
/// a deadlock, found through the semaphores' holders (kept by tokio on the
/// semaphore inside each) and named by the program's semaphores.
#[test]
fn a_deadlock_on_semaphores_is_found() {
    let bytes = record(|| async {
        let (a, b) = (
            Arc::new(tokio::sync::Semaphore::new(1)),
            Arc::new(tokio::sync::Semaphore::new(1)),
        );
        let (a2, b2) = (a.clone(), b.clone());
        awaitscope::spawn_named("left", async move {
            let _pa = a.acquire().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _pb = b.acquire().await.unwrap();
        });
        awaitscope::spawn_named("right", async move {
            let _pb = b2.acquire().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _pa = a2.acquire().await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let m = analyse(&bytes);
    // Each wait names the program's semaphore, made in this file.
    let f = the_deadlock(&m, ["left", "right"], "Semaphore");
    let here = "collector/tests/real_capture.rs";
    assert_eq!(f.location.as_ref().map(|l| l.file.as_str()), Some(here));
}

/// Two tasks each reading one RwLock and waiting to write the other's: a
/// deadlock through readers (an RwLock's holders are its readers while
/// they read).
#[test]
fn a_deadlock_through_rwlock_readers_is_found() {
    let bytes = record(|| async {
        let (a, b) = (
            Arc::new(tokio::sync::RwLock::new(0)),
            Arc::new(tokio::sync::RwLock::new(0)),
        );
        let (a2, b2) = (a.clone(), b.clone());
        awaitscope::spawn_named("left", async move {
            let _ra = a.read().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            *b.write().await += 1;
        });
        awaitscope::spawn_named("right", async move {
            let _rb = b2.read().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            *a2.write().await += 1;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    the_deadlock(&analyse(&bytes), ["left", "right"], "RwLock");
}

/// A pool of two connections (a Semaphore), two requests each holding one
/// and asking for a second: neither can go on. The pool's holders make it
/// a cycle, reported as a deadlock of the two requests on the pool.
#[test]
fn a_pool_exhausted_by_nested_acquires_is_a_deadlock() {
    let bytes = record(|| async {
        let pool = Arc::new(tokio::sync::Semaphore::new(2));
        for name in ["req-1", "req-2"] {
            let pool = pool.clone();
            awaitscope::spawn_named(name, async move {
                let _conn = pool.acquire().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _second = pool.acquire().await.unwrap();
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    the_deadlock(&analyse(&bytes), ["req-1", "req-2"], "Semaphore");
}
