//! Render time of one frame (task table and tree) for 1,000 / 10,000 /
//! 100,000 tasks, plus the snapshot + sort/tree rebuild that precedes a
//! frame when data changes, and model update + snapshot + render under a
//! stream of 50,000 events per second.
//!
//! `CARGO_TARGET_DIR=target/h-tui cargo bench -p awaitscope-tui --bench render`

use std::time::{Duration, Instant};

use awaitscope_collector::testing::{Scenario, TaskOpts};
use awaitscope_collector::Model;
use awaitscope_tui::snapshot::Snapshot;
use awaitscope_tui::ui::app::{Action, App};
use awaitscope_tui::ui::render;
use awaitscope_tui::ui::theme::Theme;
use awaitscope_wire::WakeOp;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn model(n: usize) -> Model {
    let mut s = Scenario::new();
    let mut parents = Vec::new();
    for i in 0..n {
        let opts = TaskOpts {
            line: (i % 50) as u32,
            ..TaskOpts::named(&format!("worker-{}", i % 97))
        };
        let id = if i % 10 == 0 || parents.is_empty() {
            s.spawn(opts, i as u64 * 1000)
        } else {
            s.spawn_child(opts, parents[i % parents.len()], i as u64 * 1000)
        };
        if i % 10 == 0 {
            parents.push(id);
        }
        s.poll(id, i as u64 * 1000 + 10, i as u64 * 1000 + 500);
        s.waker(id, WakeOp::Clone, i as u64 * 1000 + 500);
    }
    s.finish()
}

fn time<F: FnMut()>(mut f: F) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best
}

fn main() {
    let theme = Theme::default();
    let mut term = Terminal::new(TestBackend::new(160, 48)).unwrap();
    println!("| tasks | snapshot | rebuild table | render table | rebuild tree | render tree |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [1_000usize, 10_000, 100_000] {
        let m = model(n);
        let snap_t = time(|| {
            std::hint::black_box(Snapshot::build(&m, None));
        });
        let mut app = App::new(Snapshot::build(&m, None));
        app.apply(Action::PageDown);
        let rebuild_table = time(|| app.rebuild());
        let render_table = time(|| {
            term.draw(|f| render::draw(f, &app, &theme)).unwrap();
        });
        app.apply(Action::ToggleTree);
        let rebuild_tree = time(|| app.rebuild());
        let render_tree = time(|| {
            term.draw(|f| render::draw(f, &app, &theme)).unwrap();
        });
        println!(
            "| {n} | {:.2} ms | {:.2} ms | {:.3} ms | {:.2} ms | {:.3} ms |",
            snap_t.as_secs_f64() * 1e3,
            rebuild_table.as_secs_f64() * 1e3,
            render_table.as_secs_f64() * 1e3,
            rebuild_tree.as_secs_f64() * 1e3,
            render_tree.as_secs_f64() * 1e3,
        );
    }
    // 50,000 events/s for 2 s: apply them in 100 ms batches (5,000 events),
    // taking a snapshot and drawing a frame after each batch.
    let mut s = Scenario::new();
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(s.spawn(TaskOpts::named(&format!("t{}", i % 50)), i));
    }
    let mut app = App::default();
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    let mut ts = 10_000u64;
    for _batch in 0..20 {
        let t = Instant::now();
        // A poll is about 4 events (enter, exit, waker clone, wake).
        for k in 0..1250 {
            let id = ids[k % ids.len()];
            s.poll(id, ts, ts + 100);
            s.waker(id, WakeOp::Clone, ts + 100);
            s.wake(id, None, ts + 150);
            ts += 200;
        }
        app.set_snapshot(Snapshot::build(s.model(), None));
        term.draw(|f| render::draw(f, &app, &theme)).unwrap();
        let e = t.elapsed();
        worst = worst.max(e);
        total += e;
    }
    println!(
        "\n50,000 events/s (1,000 tasks), per 100 ms batch of 5,000 events: apply + snapshot + frame mean {:.2} ms, worst {:.2} ms ({:.0}% of real time)",
        total.as_secs_f64() * 1e3 / 20.0,
        worst.as_secs_f64() * 1e3,
        total.as_secs_f64() / 2.0 * 100.0
    );
}
