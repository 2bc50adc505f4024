//! The storefront example has no lost waker: recorded under awaitscope's
//! test harness on a multi-thread runtime, none of its tasks is reported as
//! one. (Its `reviews-fetch` tasks are spawned on one worker and often
//! finish on the other; the exporter used to lose the close of such a task
//! when it read the second worker's ring first, and the finished task was
//! then reported as a lost waker, tens of times per run.)

use std::time::Duration;

use awaitscope::testing::TestBuilder;
use awaitscope_collector::FindingKind;
use awaitscope_tui::demo::shop;

#[test]
fn no_storefront_task_is_reported_as_a_lost_waker() {
    let (rt, guard) = TestBuilder::default().runtime();
    rt.block_on(async {
        let addr = shop::serve().await.expect("bind the storefront");
        shop::load(addr, Some(120), Duration::from_millis(5)).await;
    });
    let outcome = guard.finish();
    drop(rt);
    let lost = outcome
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::LostWaker)
        .count();
    assert_eq!(lost, 0, "{}", outcome.report);
}

/// Nor does any of its timers fire late: on a healthy program, the
/// late-timer `starvation` finding stays quiet. A machine busy with other
/// work really makes a timer late now and then (its thread waits for a
/// CPU, or a poll it runs is stretched by one): a run with late timers is
/// run again, and the test fails only when the second run has them too. A
/// detector inventing late timers does it in every run.
#[test]
fn no_storefront_timer_is_reported_late() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (rt, guard) = TestBuilder::default().fail_on(&[]).runtime();
        rt.block_on(async {
            let addr = shop::serve().await.expect("bind the storefront");
            shop::load(addr, Some(120), Duration::from_millis(5)).await;
        });
        let outcome = guard.finish();
        drop(rt);
        let late: Vec<_> = outcome
            .findings
            .into_iter()
            .filter(|f| f.kind == FindingKind::Starvation && f.message.contains("timer's deadline"))
            .collect();
        if late.is_empty() {
            return;
        }
        runs.push(late);
    }
    panic!("late timers in both runs: {runs:#?}");
}
