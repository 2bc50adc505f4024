//! A deterministic model for view and state tests: a server spawning
//! connections (one logs an error inside a request span), a deadlock of
//! two tasks over two mutexes, a sleeper, an unnamed task and a task with a
//! very long name.
#![allow(dead_code)]

use awaitscope_collector::config::{MS, SEC};
use awaitscope_collector::testing::{Scenario, TaskOpts};
use awaitscope_collector::Model;
use awaitscope_tui::snapshot::{Snapshot, TaskKey};
use awaitscope_tui::ui::app::App;
use awaitscope_tui::ui::render;
use awaitscope_tui::ui::theme::Theme;
use awaitscope_wire::WakeOp;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

pub fn opts(name: &str, line: u32) -> TaskOpts {
    TaskOpts {
        line,
        ..TaskOpts::named(name)
    }
}

pub fn model() -> Model {
    let mut s = Scenario::new();
    let main = s.spawn(opts("main", 10), 0);
    s.begin_poll(main, MS);
    let server = s.spawn_child(opts("server", 12), main, 2 * MS);
    s.end_poll(main, 3 * MS);
    s.waker(main, WakeOp::Clone, 3 * MS);
    s.begin_poll(server, 4 * MS);
    let conns: Vec<_> = (0..3)
        .map(|i| s.spawn_child(opts("conn", 20), server, (5 + i) * MS))
        .collect();
    s.end_poll(server, 9 * MS);
    s.waker(server, WakeOp::Clone, 9 * MS);
    let req = s.user_span("handle_request", 10 * MS);
    s.begin_poll(conns[0], 11 * MS);
    s.enter(req, 11 * MS);
    s.warn(conns[0], Some(req), "slow backend", 12 * MS);
    s.error(
        conns[0],
        Some(req),
        "db failed: connection refused",
        13 * MS,
    );
    s.exit(req, 14 * MS);
    s.end_poll(conns[0], 14 * MS);
    s.waker(conns[0], WakeOp::Clone, 14 * MS);
    s.poll(conns[1], 15 * MS, 16 * MS);
    s.complete(conns[2], 17 * MS);
    // Deadlock: two transfers, two mutexes, opposite order.
    let a = s.mutex(0);
    let b = s.mutex(0);
    let t1 = s.spawn(opts("transfer-debit", 40), 20 * MS);
    let t2 = s.spawn(opts("transfer-audit", 41), 20 * MS);
    s.begin_poll(t1, 21 * MS);
    s.lock(t1, a, true, 22 * MS);
    s.end_poll(t1, 23 * MS);
    s.begin_poll(t2, 24 * MS);
    s.lock(t2, b, true, 25 * MS);
    s.end_poll(t2, 26 * MS);
    s.wake(t1, None, 30 * MS);
    s.begin_poll(t1, 31 * MS);
    s.lock(t1, b, false, 32 * MS);
    s.end_poll(t1, 33 * MS);
    s.waker(t1, WakeOp::Clone, 32 * MS);
    s.wake(t2, None, 34 * MS);
    s.begin_poll(t2, 35 * MS);
    s.lock(t2, a, false, 36 * MS);
    s.end_poll(t2, 37 * MS);
    s.waker(t2, WakeOp::Clone, 36 * MS);
    // A sleeper, an unnamed task, a very long name.
    let timer = s.timer(40 * MS);
    let sleeper = s.spawn(opts("ticker", 50), 40 * MS);
    s.begin_poll(sleeper, 41 * MS);
    s.sleep(sleeper, timer, 42 * MS);
    s.end_poll(sleeper, 43 * MS);
    let anon = s.spawn(TaskOpts::default(), 44 * MS);
    s.poll(anon, 45 * MS, 46 * MS);
    s.waker(anon, WakeOp::Clone, 46 * MS);
    let long = "a-task-with-a-very-long-name-".repeat(8);
    let l = s.spawn(opts(&long, 60), 47 * MS);
    s.poll(l, 48 * MS, 60 * MS);
    s.waker(l, WakeOp::Clone, 60 * MS);
    s.tick(2 * SEC);
    s.tick(3 * SEC);
    s.finish()
}

pub fn key_named(snap: &Snapshot, name: &str) -> TaskKey {
    snap.tasks
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no task {name}"))
        .key
}

pub fn app() -> App {
    let mut a = App::new(Snapshot::build(&model(), None));
    a.source = "replay test.rec".into();
    a
}

/// Re-snapshots with the detail of the selected task (what the run loop does).
pub fn refresh(app: &mut App, m: &Model) {
    let s = Snapshot::build(m, app.wants_detail());
    app.set_snapshot(s);
}

pub fn draw(app: &App, w: u16, h: u16, ascii: bool) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    let theme = Theme {
        color: false,
        ascii,
    };
    term.draw(|f| render::draw(f, app, &theme)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
