//! Every view as a snapshot (TestBackend + insta), on an 80x24 terminal
//! and a wide 160x40 one.

mod common;

use awaitscope_collector::config::{MS, SEC};
use awaitscope_tui::ui::app::{Action, View};
use awaitscope_wire::WakeOp;
use common::*;

fn both(name: &str, app: &awaitscope_tui::ui::app::App) {
    insta::assert_snapshot!(format!("{name}_80x24"), draw(app, 80, 24, false));
    insta::assert_snapshot!(format!("{name}_160x40"), draw(app, 160, 40, false));
}

#[test]
fn task_table() {
    let a = app();
    both("tasks", &a);
}

#[test]
fn task_table_ascii() {
    let a = app();
    insta::assert_snapshot!("tasks_ascii_80x24", draw(&a, 80, 24, true));
}

#[test]
fn task_tree() {
    let mut a = app();
    a.apply(Action::ToggleTree);
    both("tree", &a);
}

#[test]
fn task_detail_with_await_tree() {
    let m = model();
    let mut a = app();
    let k = key_named(&a.snap, "transfer-debit");
    a.selected = Some(k);
    a.rebuild();
    a.apply(Action::Enter);
    assert_eq!(a.view, View::Detail);
    refresh(&mut a, &m);
    let out = draw(&a, 160, 40, false);
    assert!(out.contains("Await tree"), "{out}");
    assert!(out.contains("held by task transfer-audit"), "{out}");
    both("detail", &a);
}

#[test]
fn task_detail_of_failing_task() {
    let m = model();
    let mut a = app();
    a.selected = Some(key_named(&a.snap, "conn"));
    a.rebuild();
    a.apply(Action::Enter);
    refresh(&mut a, &m);
    insta::assert_snapshot!("detail_error_160x40", draw(&a, 160, 40, false));
}

#[test]
fn findings_with_deadlock_cycle() {
    let mut a = app();
    a.apply(Action::NextView);
    assert_eq!(a.view, View::Findings);
    // Select the deadlock finding.
    for _ in 0..a.finding_rows.len() {
        if a.selected_finding()
            .is_some_and(|f| f.kind.as_str() == "deadlock")
        {
            break;
        }
        a.apply(Action::Down);
    }
    let out = draw(&a, 160, 40, false);
    assert!(out.contains("Cycle:"), "{out}");
    assert!(out.contains("waits on Mutex"), "{out}");
    both("findings", &a);
}

#[test]
fn errors_with_causal_trace() {
    let mut a = app();
    a.apply(Action::NextView);
    a.apply(Action::NextView);
    assert_eq!(a.view, View::Errors);
    let out = draw(&a, 160, 40, false);
    assert!(out.contains("Trace (innermost first):"), "{out}");
    assert!(out.contains("span handle_request"), "{out}");
    both("errors", &a);
}

#[test]
fn a_long_finding_trace_is_shown_in_order_and_scrolls() {
    let mut a = app();
    a.apply(Action::NextView);
    // The first finding of the list, given a long native-style trace.
    a.apply(Action::Down);
    let i = a
        .snap
        .findings
        .iter()
        .position(|f| std::ptr::eq(f, a.selected_finding().expect("a finding")))
        .unwrap();
    let mut trace = vec![
        "hash_password @ examples/examples/blocking.rs:40".to_string(),
        "… 14 runtime frames".to_string(),
    ];
    trace.extend((0..40).map(|n| format!("frame_{n:02} @ src/deep.rs:{n}")));
    trace.push("checkout @ examples/examples/blocking.rs:25".to_string());
    a.snap.findings[i].trace = trace;
    let top = draw(&a, 160, 40, false);
    assert!(top.contains("Trace (innermost first):"), "{top}");
    let (hash, fold) = (
        top.find("hash_password @").expect("innermost step shown"),
        top.find("… 14 runtime frames")
            .expect("fold shown as it is"),
    );
    assert!(hash < fold, "innermost first, as given:\n{top}");
    assert!(!top.contains("checkout @"), "{top}");
    for _ in 0..40 {
        a.apply(Action::ScrollDetail(1));
    }
    let scrolled = draw(&a, 160, 40, false);
    assert!(
        scrolled.contains("checkout @ examples/examples/blocking.rs:25"),
        "{scrolled}"
    );
    assert!(!scrolled.contains("hash_password @"), "{scrolled}");
    // Moving the selection shows the next finding from its top.
    a.apply(Action::Down);
    assert_eq!(a.detail_scroll, 0);
}

#[test]
fn resources() {
    let mut a = app();
    for _ in 0..3 {
        a.apply(Action::NextView);
    }
    assert_eq!(a.view, View::Resources);
    both("resources", &a);
}

#[test]
fn help() {
    let mut a = app();
    a.apply(Action::Help);
    both("help", &a);
}

/// An empty task table says why it is empty: no program yet, a program
/// that has spawned no task, or a console program whose console-subscriber
/// names none.
#[test]
fn an_empty_task_table_says_why() {
    use awaitscope_collector::testing::StreamBuilder;
    use awaitscope_collector::Model;
    let say = |m: &Model| {
        let mut a = awaitscope_tui::ui::app::App::default();
        refresh(&mut a, m);
        draw(&a, 100, 8, false)
    };
    let mut m = Model::default();
    assert!(say(&m).contains("No tasks yet. Instrument a program"));
    let mut b = StreamBuilder::new(7, 1);
    b.hello("quiet", None, false).flush();
    for f in b.take_frames() {
        m.apply(&f);
    }
    let s = say(&m);
    assert!(
        s.contains("the programs connected have spawned none"),
        "{s}"
    );
    let mut m = Model::default();
    let mut mapper = awaitscope_collector::console::Mapper::new("http://127.0.0.1:6669");
    let update = console_api::instrument::Update {
        now: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        ..Default::default()
    };
    for f in mapper.update(&update) {
        m.apply(&f);
    }
    let s = say(&m);
    assert!(s.contains("console-subscriber has named none"), "{s}");
}

#[test]
fn empty_model_and_tiny_terminal_do_not_panic() {
    let mut a = awaitscope_tui::ui::app::App::default();
    for v in 0..5 {
        for (w, h) in [(1, 1), (10, 3), (80, 24)] {
            let _ = draw(&a, w, h, v % 2 == 0);
        }
        a.apply(Action::NextView);
    }
    let full = app();
    for (w, h) in [(1, 1), (5, 2), (20, 5)] {
        let _ = draw(&full, w, h, false);
    }
}

#[test]
fn every_kind_is_drawn_with_its_trace() {
    use awaitscope_collector::FindingKind;
    for kind in FindingKind::ALL {
        let mut a = app();
        for f in &mut a.snap.findings {
            f.kind = kind;
            f.severity = kind.severity();
            f.trace = vec!["inner @ src/a.rs:1".into(), "outer @ src/b.rs:2".into()];
        }
        a.rebuild();
        a.apply(Action::NextView);
        a.apply(Action::Down);
        let out = draw(&a, 160, 40, false);
        assert!(out.contains(kind.as_str()), "{out}");
        assert!(out.contains("Trace (innermost first):"), "{kind}: {out}");
        let (inner, outer) = (out.find("inner @").unwrap(), out.find("outer @").unwrap());
        assert!(inner < outer, "{out}");
    }
}

/// On a wide terminal the table's columns take what their rows hold: what
/// a task waits on is shown whole beside short names and locations, and
/// states are words ("completed"), not their first four letters; on a
/// narrow one the state keeps four letters, which `state:` still matches.
#[test]
fn wide_columns_fit_what_they_hold() {
    use awaitscope_collector::testing::Scenario;
    let waits = "fetch_exchange_rate_from_the_upstream_pricing_service";
    let mut s = Scenario::new();
    let quote = s.spawn(opts("quote", 10), 0);
    let span = s.user_span(waits, MS);
    s.begin_poll(quote, 2 * MS);
    s.enter(span, 2 * MS);
    s.exit(span, 3 * MS);
    s.end_poll(quote, 3 * MS);
    s.waker(quote, WakeOp::Clone, 3 * MS);
    let done = s.spawn(opts("done", 11), 4 * MS);
    s.complete(done, 5 * MS);
    s.tick(SEC);
    let mut a = awaitscope_tui::ui::app::App::default();
    refresh(&mut a, &s.finish());
    let wide = draw(&a, 140, 10, false);
    let row = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row {name}: {out}"))
            .to_string()
    };
    assert!(row(&wide, "quote").contains(waits), "{wide}");
    assert!(row(&wide, "done").contains("✓ completed"), "{wide}");
    let narrow = draw(&a, 80, 10, false);
    assert!(row(&narrow, "done").contains("✓ comp "), "{narrow}");
    a.apply(Action::StartFilter);
    for c in "state:comp".chars() {
        a.apply(Action::FilterChar(c));
    }
    a.apply(Action::FilterDone);
    let filtered = draw(&a, 140, 10, false);
    assert!(
        filtered.contains("done") && !filtered.contains("quote"),
        "{filtered}"
    );
}
