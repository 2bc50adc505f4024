//! Every view as a snapshot (TestBackend + insta), on an 80x24 terminal
//! and a wide 160x40 one.

mod common;

use awaitscope_tui::ui::app::{Action, View};
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
    assert!(out.contains("Causal trace"), "{out}");
    assert!(out.contains("span handle_request"), "{out}");
    both("errors", &a);
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
