//! State logic without rendering: sorting, filtering, tree folding, and
//! the selection following a task as rows move.

mod common;

use awaitscope_collector::config::MS;
use awaitscope_collector::testing::{Scenario, TaskOpts};
use awaitscope_collector::FindingKind;
use awaitscope_tui::snapshot::Snapshot;
use awaitscope_tui::ui::app::{matches_query, Action, App, Column, RowKind};
use common::*;

fn names(a: &App) -> Vec<String> {
    a.rows
        .iter()
        .map(|r| match r.kind {
            RowKind::Task(i) => a.snap.tasks[i].name.clone(),
            RowKind::Process(_) => "<process>".into(),
        })
        .collect()
}

#[test]
fn sorts_by_any_column_and_reverses() {
    let mut a = app();
    a.sort = Column::Name;
    a.desc = false;
    a.rebuild();
    let n = names(&a);
    let mut sorted = n.clone();
    sorted.sort();
    assert_eq!(n, sorted);
    a.apply(Action::SortReverse);
    let mut rev = sorted.clone();
    rev.reverse();
    // Ties (same name) keep key order in both directions; compare names only.
    assert_eq!(names(&a), rev);
    for _ in 0..Column::ALL.len() {
        a.apply(Action::SortNext);
        assert_eq!(a.rows.len(), a.snap.tasks.len());
    }
    a.sort = Column::Polls;
    a.desc = true;
    a.rebuild();
    let polls: Vec<u64> = a
        .rows
        .iter()
        .map(|r| match r.kind {
            RowKind::Task(i) => a.snap.tasks[i].polls,
            _ => 0,
        })
        .collect();
    assert!(polls.windows(2).all(|w| w[0] >= w[1]), "{polls:?}");
}

#[test]
fn filters_by_name_state_location_and_warnings() {
    let mut a = app();
    for c in "conn".chars() {
        a.apply(Action::FilterChar(c));
    }
    assert_eq!(names(&a), vec!["conn"; 3]);
    a.apply(Action::FilterClear);
    a.filter = "state:idle".into();
    a.rebuild();
    assert!(a
        .rows
        .iter()
        .all(|r| matches!(r.kind, RowKind::Task(i) if a.snap.tasks[i].state.as_str() == "idle")));
    a.filter = "warn".into();
    a.rebuild();
    assert!(names(&a).contains(&"conn".to_string()));
    assert!(names(&a).contains(&"transfer-debit".to_string()));
    assert!(a.rows.len() < a.snap.tasks.len());
    // Fuzzy: "trdb" matches transfer-debit.
    let t = a
        .snap
        .tasks
        .iter()
        .find(|t| t.name == "transfer-debit")
        .unwrap();
    assert!(matches_query("trdb", t));
    assert!(matches_query("loc:main.rs name:tdeb", t));
    assert!(!matches_query("state:running", t));
    a.filter = "zzzz-nothing".into();
    a.rebuild();
    assert!(a.rows.is_empty());
}

#[test]
fn tree_folds_counts_descendants_and_keeps_ancestors_of_matches() {
    let mut a = app();
    a.apply(Action::ToggleTree);
    let main = a
        .rows
        .iter()
        .find(|r| matches!(r.kind, RowKind::Task(i) if a.snap.tasks[i].name == "main"))
        .unwrap()
        .clone();
    // main -> server -> 3 conns (one completed, retained).
    assert_eq!(main.descendants, 4);
    assert!(main.has_children);
    let n = a.rows.len();
    a.selected = Some(key_named(&a.snap, "main"));
    a.rebuild();
    a.apply(Action::Left); // fold main
    assert_eq!(a.rows.len(), n - 4);
    a.apply(Action::Right); // unfold
    assert_eq!(a.rows.len(), n);
    a.apply(Action::FoldAll);
    assert!(a.rows.len() < n);
    a.apply(Action::FoldAll);
    assert_eq!(a.rows.len(), n);
    // Filtering keeps the ancestors of matches.
    a.filter = "conn".into();
    a.rebuild();
    assert_eq!(names(&a), vec!["main", "server", "conn", "conn", "conn"]);
    let depths: Vec<u16> = a.rows.iter().map(|r| r.depth).collect();
    assert_eq!(depths, vec![0, 1, 2, 2, 2]);
}

#[test]
fn selection_follows_the_task_when_rows_move() {
    let mut s = Scenario::new();
    let a_ = s.spawn(TaskOpts::named("alpha"), 0);
    let b_ = s.spawn(TaskOpts::named("beta"), 0);
    let c_ = s.spawn(TaskOpts::named("gamma"), 0);
    s.poll(c_, MS, 2 * MS);
    let mut app = App::new(Snapshot::build(s.model(), None));
    app.sort = Column::Polls;
    app.desc = true;
    app.rebuild();
    // Select beta.
    let beta = key_named(&app.snap, "beta");
    // Sorting moved the cursor with the selected task (alpha, last now).
    assert_eq!(app.cursor, 2, "{:?}", names(&app));
    app.apply(Action::Up);
    assert_eq!(app.selected, Some(beta), "{:?}", names(&app));
    let before = app.cursor;
    // beta gets many polls: it moves to the top.
    for i in 0..5 {
        s.poll(b_, (3 + 2 * i) * MS, (4 + 2 * i) * MS);
    }
    s.poll(a_, 20 * MS, 21 * MS);
    app.set_snapshot(Snapshot::build(s.model(), None));
    assert_eq!(app.selected, Some(key_named(&app.snap, "beta")));
    assert_eq!(app.cursor, 0, "beta is first now (was {before})");
    // The selected task disappears: the cursor stays in range.
    let mut empty = App::default();
    empty.apply(Action::Down);
    assert_eq!(empty.cursor, 0);
}

#[test]
fn enter_on_a_finding_jumps_to_its_task_and_esc_returns() {
    let mut a = app();
    a.apply(Action::NextView);
    a.apply(Action::Down); // first item after the group header
    let f = a.selected_finding().cloned().expect("a finding");
    a.apply(Action::Enter);
    assert_eq!(a.view, awaitscope_tui::ui::app::View::Detail);
    assert_eq!(a.selected, Some(f.tasks[0].0));
    a.apply(Action::Back);
    assert_eq!(a.view, awaitscope_tui::ui::app::View::Findings);
}

#[test]
fn ten_thousand_children_and_deep_chains() {
    let mut s = Scenario::new();
    let root = s.spawn(TaskOpts::named("root"), 0);
    for i in 0..10_000 {
        s.spawn_child(TaskOpts::default(), root, i);
    }
    let mut parent = root;
    for i in 0..2_000 {
        parent = s.spawn_child(TaskOpts::named("deep"), parent, 20_000 + i);
    }
    let mut a = App::new(Snapshot::build(s.model(), None));
    a.apply(Action::ToggleTree);
    assert_eq!(a.rows.len(), 12_001);
    assert_eq!(a.rows[0].descendants, 12_000);
    let _ = draw(&a, 120, 30, false);
    a.apply(Action::Bottom);
    let _ = draw(&a, 120, 30, true);
}

/// The task table's "Waiting on" and the detail's await-point marks name
/// what a task waits on now: a task that took a lock and dropped its guard
/// in its poll, then parked on something un-instrumented (the demo's
/// harness on `std::future::pending()`), waits on no Mutex, though the
/// Mutex it touched outlives the call; a task still waiting for the lock
/// does.
#[test]
fn waiting_on_names_a_lock_only_while_waiting_for_it() {
    let mut s = Scenario::new();
    let m = s.mutex(0);
    let timer = s.timer(0);
    let harness = s.spawn(TaskOpts::named("harness"), 0);
    let waiter = s.spawn(TaskOpts::named("waiter"), 0);
    let sleeper = s.spawn(TaskOpts::named("sleeper"), 0);
    s.begin_poll(sleeper, 500);
    s.sleep(sleeper, timer, 600);
    s.end_poll(sleeper, 700);
    s.begin_poll(harness, 1000);
    s.lock(harness, m, true, 1100);
    // The lock call's future is gone; the guard's drop enters the Mutex's
    // span for its state change.
    s.lock_abandon(harness, m);
    s.enter(m, 1150);
    s.unlock(harness, m, 1150);
    s.exit(m, 1160);
    s.end_poll(harness, 1400);
    s.begin_poll(waiter, 2000);
    s.lock(waiter, m, false, 2100);
    s.end_poll(waiter, 2400);
    s.tick(3000);
    let model = s.model();
    let row = |name: &str| {
        let snap = Snapshot::build(model, None);
        let k = key_named(&snap, name);
        snap.task(k).expect("row").waiting.clone()
    };
    assert_eq!(row("harness"), "");
    // Named as its `stuck` finding names it: the operation the user
    // called, not tokio's semaphore under it.
    assert_eq!(row("waiter"), "tokio::sync::Mutex::lock");
    // `sleep(..).await`, not tokio's `Sleep::new_timeout` inside it.
    assert_eq!(row("sleeper"), "tokio::time::sleep");
    // The detail's await tree marks no node of the harness as waited on,
    // and the waiter's lock call.
    let marked = |name: &str| {
        let k = key_named(&Snapshot::build(model, None), name);
        let snap = Snapshot::build(model, Some(k));
        let (_, d) = snap.detail.expect("detail");
        d.await_tree
            .iter()
            .filter(|n| n.leaf)
            .map(|n| n.label.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(marked("harness"), Vec::<String>::new());
    let w = marked("waiter");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("Mutex"), "{w:?}");
}

/// A task whose last poll took a lock (its calls closed) and then parked
/// on a span of its own waits on that span: the table names it, as the
/// detail marks it, though the tree's deepest leaf is the closed lock call.
#[test]
fn waiting_on_names_the_open_wait_when_the_deepest_path_closed() {
    let mut s = Scenario::new();
    let worker = s.spawn(TaskOpts::named("worker"), 0);
    let setup = s.user_span("setup", 100);
    let connect = s.user_span("connect", 100);
    let next = s.user_span("next job", 100);
    s.begin_poll(worker, 1000);
    s.enter(setup, 1100);
    s.enter(connect, 1110);
    s.exit(connect, 1120);
    s.exit(setup, 1130);
    s.enter(next, 1140);
    s.exit(next, 1150);
    s.end_poll(worker, 1200);
    s.close(connect, awaitscope_wire::CloseKind::Span, 1300);
    s.close(setup, awaitscope_wire::CloseKind::Span, 1310);
    s.tick(2000);
    let snap = Snapshot::build(s.model(), None);
    let k = key_named(&snap, "worker");
    assert_eq!(snap.task(k).expect("row").waiting, "next job");
}

/// The selected finding stays selected as the list moves under it: another
/// finding recurring (findings are newest first) or taken back (a
/// `long_poll` found `descheduled`) does not put the cursor, and the detail
/// shown, on another finding.
#[test]
fn the_selected_finding_is_followed_as_findings_move() {
    let mut s = Scenario::new();
    let a = s.spawn(TaskOpts::named("alpha"), 0);
    let b = s.spawn(TaskOpts::named("beta"), 0);
    s.waker(a, awaitscope_wire::WakeOp::Clone, 1);
    s.waker(b, awaitscope_wire::WakeOp::Clone, 1);
    // Long polls, each committed by the next poll: alpha's, then beta's.
    s.poll(a, MS, 31 * MS);
    s.poll(a, 40 * MS, 41 * MS);
    s.poll(b, 50 * MS, 80 * MS);
    s.poll(b, 90 * MS, 91 * MS);
    let mut app = App::new(Snapshot::build(s.model(), None));
    app.apply(Action::NextView);
    let selected = |app: &App| {
        app.selected_finding()
            .map(|f| (f.id.kind, f.message.clone()))
            .expect("a finding selected")
    };
    // Beta's is newest; alpha's below it.
    app.apply(Action::Down);
    app.apply(Action::Down);
    let (kind, alpha) = selected(&app);
    assert_eq!(kind, FindingKind::LongPoll);
    assert!(alpha.contains("alpha"), "{alpha}");
    // Beta's long poll recurs: beta's finding goes first.
    s.poll(b, 100 * MS, 130 * MS);
    s.poll(b, 140 * MS, 141 * MS);
    app.set_snapshot(Snapshot::build(s.model(), None));
    assert_eq!(selected(&app), (FindingKind::LongPoll, alpha.clone()));
    // Alpha's long poll recurs, then beta's first one is found to have
    // waited for a CPU: its finding loses it, a descheduled one comes.
    s.poll(a, 150 * MS, 180 * MS);
    s.poll(a, 190 * MS, 191 * MS);
    app.set_snapshot(Snapshot::build(s.model(), None));
    let (_, alpha) = selected(&app);
    assert!(alpha.contains("alpha"), "{alpha}");
    let mut st = awaitscope_collector::testing::stall(b, 100 * MS, 130 * MS + 1, true);
    st.sched = Some(awaitscope_wire::Sched {
        window_ns: 30 * MS,
        on_cpu_ns: 2 * MS,
        kernel_ns: 0,
        waiting_ns: 28 * MS,
    });
    s.stall(st);
    app.set_snapshot(Snapshot::build(s.model(), None));
    assert_eq!(
        app.snap
            .findings
            .iter()
            .filter(|f| f.id.kind == FindingKind::Descheduled)
            .count(),
        1,
        "{:?}",
        app.snap.findings
    );
    assert_eq!(selected(&app), (FindingKind::LongPoll, alpha));
}

/// A task waiting on a lock whose wait's stack named the line of its
/// `.await` shows that line beside the operation it waits on; one without
/// a stack shows the operation alone.
#[test]
fn the_waiting_column_names_the_line_a_task_awaits_at() {
    use awaitscope_collector::testing::StreamBuilder;
    use awaitscope_collector::Model;
    use awaitscope_wire::{Event, FrameOrigin, NativeFrame, NativeStack, SpanClass, WaitStack};
    let mut b = StreamBuilder::new(7, 1);
    b.hello("locks", None, false);
    let mutex = b.resource("Mutex", "Sync", 3, 1);
    let waiter = b.spawn(&TaskOpts::named("waiter"), None, 1);
    let other = b.spawn(&TaskOpts::named("other"), None, 1);
    for (t, ts) in [(waiter, 2), (other, 10)] {
        b.enter(t, ts);
        b.lock(t, mutex, false, ts + 1);
        b.exit(t, ts + 2);
    }
    b.flush();
    let mut m = Model::default();
    for f in b.take_frames() {
        m.apply(&f);
    }
    // The waiter's async op on the Mutex.
    let p = m.processes().next().expect("the process");
    let op = p
        .spans
        .iter()
        .find(|(_, s)| s.class == SpanClass::AsyncOp && s.ctx_task == Some(waiter))
        .map(|(id, _)| *id)
        .expect("the waiter's lock");
    b.push(Event::WaitStack(Box::new(WaitStack {
        span: op,
        stack: NativeStack {
            task: waiter,
            start: 4,
            ts: 4,
            modules: vec![],
            frames: vec![],
        },
        at: Some(NativeFrame {
            function: "app::withdraw::{{closure}}".into(),
            file: Some("src/bank.rs".into()),
            line: Some(42),
            origin: FrameOrigin::User,
        }),
    })));
    b.flush();
    for f in b.take_frames() {
        m.apply(&f);
    }
    let s = Snapshot::build(&m, None);
    let row = |name: &str| {
        s.tasks
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no task {name}"))
            .waiting
            .clone()
    };
    assert_eq!(row("waiter"), "tokio::sync::Mutex::lock @ src/bank.rs:42");
    assert!(!row("other").contains('@'), "{}", row("other"));
}

/// A program's tokio Semaphore, recorded for real: tokio keeps its permits
/// and holders on the semaphore inside it, which the resources view does
/// not list; the program's Semaphore row shows them.
#[cfg(tokio_unstable)]
#[test]
fn a_semaphore_row_shows_its_permits_and_holders() {
    use std::sync::Arc;
    let memory = awaitscope::MemoryRecording::new();
    let (subscriber, guard) = awaitscope::Builder::new()
        .no_stream()
        .record_in_memory(&memory)
        .try_build_subscriber()
        .expect("awaitscope builds")
        .expect("awaitscope is on");
    let dispatch = awaitscope::scoped_dispatch(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(4));
            let s = sem.clone();
            awaitscope::spawn_named("holder", async move {
                let _p = s.acquire_many(3).await.unwrap();
                std::future::pending::<()>().await;
            });
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            guard.flush();
            memory.bytes()
        })
    });
    drop(rt);
    let mut m = awaitscope_collector::Model::default();
    awaitscope_collector::ingest::recording::load_reader(&mut m, "memory", &bytes[..])
        .expect("a recording");
    let s = Snapshot::build(&m, None);
    let rows: Vec<_> = s
        .resources
        .iter()
        .filter(|r| r.concrete_type == "Semaphore")
        .collect();
    assert_eq!(rows.len(), 1, "only the program's Semaphore is listed");
    let holders: Vec<_> = rows[0].holders.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert!(
        holders[0].starts_with("task holder") && holders[0].ends_with(" ×3"),
        "{holders:?}"
    );
    assert_eq!(rows[0].state, "permits=1");
}
