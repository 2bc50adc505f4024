//! The test harness itself: a clean test passes, a deadlocked or blocking
//! one fails with a readable report.

#[cfg(tokio_unstable)]
use std::sync::Arc;
use std::time::Duration;

use awaitscope::testing::{self, TestBuilder};
use awaitscope_collector::FindingKind;

#[tokio::test]
async fn a_clean_test_passes() {
    let scope = testing::guard();
    let h = awaitscope::spawn_named("worker", async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        7
    });
    assert_eq!(h.await.unwrap(), 7);
    let outcome = scope.finish();
    assert!(outcome.failures.is_empty(), "{}", outcome.report);
    assert!(outcome.report.is_empty());
}

#[tokio::test]
async fn a_blocking_poll_fails_the_test() {
    let scope = testing::guard();
    awaitscope::spawn_named("blocker", async {
        std::thread::sleep(Duration::from_millis(150));
    })
    .await
    .unwrap();
    let outcome = scope.finish();
    assert_eq!(outcome.failures.len(), 1, "{:?}", outcome.findings);
    assert_eq!(outcome.failures[0].kind, FindingKind::LongPoll);
    assert!(outcome.report.contains("long_poll"), "{}", outcome.report);
    assert!(outcome.report.contains("\"blocker\""), "{}", outcome.report);
}

#[tokio::test]
async fn chosen_kinds_only() {
    let scope = TestBuilder::default()
        .fail_on(&[FindingKind::Deadlock])
        .start();
    awaitscope::spawn_named("blocker", async {
        std::thread::sleep(Duration::from_millis(150));
    })
    .await
    .unwrap();
    let outcome = scope.finish();
    assert!(outcome.failures.is_empty());
    assert!(outcome
        .findings
        .iter()
        .any(|f| f.kind == FindingKind::LongPoll));
}

#[cfg(tokio_unstable)]
#[tokio::test]
#[should_panic(expected = "deadlock")]
async fn a_deadlock_fails_the_test_on_drop() {
    let _scope = testing::guard();
    let a = Arc::new(tokio::sync::Mutex::new(()));
    let b = Arc::new(tokio::sync::Mutex::new(()));
    let (a1, b1) = (a.clone(), b.clone());
    awaitscope::spawn_named("left", async move {
        let _ga = a1.lock().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _gb = b1.lock().await;
    });
    awaitscope::spawn_named("right", async move {
        let _gb = b.lock().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ga = a.lock().await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[cfg(tokio_unstable)]
#[test]
fn multi_thread_runtime_is_covered() {
    let (rt, scope) = TestBuilder::default().runtime();
    rt.block_on(async {
        let (a, b) = (
            Arc::new(tokio::sync::Mutex::new(())),
            Arc::new(tokio::sync::Mutex::new(())),
        );
        let (a1, b1) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let _ga = a1.lock().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _gb = b1.lock().await;
        });
        tokio::spawn(async move {
            let _gb = b.lock().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ga = a.lock().await;
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    // Checked while the runtime still holds the deadlocked tasks.
    let outcome = scope.finish();
    drop(rt);
    let deadlocks: Vec<_> = outcome
        .failures
        .iter()
        .filter(|f| f.kind == FindingKind::Deadlock)
        .collect();
    assert_eq!(deadlocks.len(), 1, "{:?}", outcome.findings);
    assert_eq!(deadlocks[0].tasks.len(), 2);
    assert!(outcome.report.contains("deadlock"), "{}", outcome.report);
}

/// Blocks its worker for 250 ms inside an instrumented function, then
/// awaits (so the function is still on the task's await tree when the poll
/// ends).
#[tracing::instrument]
async fn load_config_then_yield() -> u32 {
    std::thread::sleep(Duration::from_millis(250));
    tokio::task::yield_now().await;
    7
}

/// Blocks its worker for 250 ms inside an instrumented function and
/// returns: when the poll ends, the function is gone from the await tree,
/// so only a trace taken while the poll ran can name it.
#[tracing::instrument]
async fn load_config() -> u32 {
    std::thread::sleep(Duration::from_millis(250));
    7
}

/// The failure message names `function` first in the trace (after the
/// runtime frames it called into), and a
/// location in this file. (Other tests' panics may be seen too: the panic
/// hook is the process's.)
fn assert_names(outcome: &testing::Outcome, function: &str) {
    let r = &outcome.report;
    assert!(
        outcome
            .failures
            .iter()
            .any(|f| f.kind == FindingKind::LongPoll),
        "{:?}",
        outcome.findings
    );
    let long_poll = r
        .split("\nlong_poll (1x): ")
        .nth(1)
        .unwrap_or_else(|| panic!("no long_poll in:\n{r}"));
    assert!(long_poll.contains("\n  at "), "a location:\n{r}");
    let trace = long_poll
        .split_once("  trace (innermost first):\n")
        .unwrap_or_else(|| panic!("no trace in:\n{r}"))
        .1;
    // The innermost step of the program's own: folded runtime frames (the
    // sleep it called) may come before it.
    let first = trace
        .lines()
        .map(str::trim)
        .find(|l| !l.starts_with('…'))
        .unwrap_or_default();
    assert!(
        first.starts_with(&format!("{function} @ ")) && first.contains("tests/testing.rs:"),
        "{function} innermost:\n{r}"
    );
}

#[tokio::test]
async fn a_long_poll_message_names_the_instrumented_fn_it_is_in() {
    let scope = testing::guard();
    let h = awaitscope::spawn_named("loader", load_config_then_yield());
    assert_eq!(h.await.unwrap(), 7);
    assert_names(&scope.finish(), "load_config_then_yield");
}

#[tokio::test]
async fn a_long_poll_message_names_the_instrumented_fn_that_blocked() {
    let scope = testing::guard();
    let h = awaitscope::spawn_named("loader", load_config());
    assert_eq!(h.await.unwrap(), 7);
    assert_names(&scope.finish(), "load_config");
}
