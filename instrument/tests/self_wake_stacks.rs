//! Where a task wakes itself: at a task's eighth wake of itself inside its
//! own poll, the worker's stack there goes out (`WakeStack`), once per
//! task, whose innermost frame of the program's own code is the line that
//! woke it; a task that wakes itself fewer times, or is woken by another,
//! sends none. Needs `tokio_unstable`, where tokio reports its wakers.
#![cfg(tokio_unstable)]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use support::{capture, Captured, Flavor};

/// The line of [`SpinOnce`]'s wake.
static WAKE_LINE: AtomicU32 = AtomicU32::new(0);

/// Wakes its task and returns `Pending` once, then is ready.
#[derive(Default)]
struct SpinOnce(bool);

impl Future for SpinOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        let here = line!() + 1;
        cx.waker().wake_by_ref();
        WAKE_LINE.store(here, Ordering::Relaxed);
        Poll::Pending
    }
}

/// The lines the stacks of task `task` were sent with (see
/// [`support::stack_lines`]).
fn lines(c: &Captured, task: &str) -> Vec<u32> {
    support::stack_lines(&c.self_wakes, c.task(task).id, "tests/self_wake_stacks.rs")
}

#[test]
fn a_task_that_keeps_waking_itself_sends_where_once() {
    let c = capture(Flavor::CurrentThread, || async {
        let spinner = awaitscope::spawn_named("spinner", async {
            for _ in 0..40 {
                SpinOnce::default().await;
            }
        });
        let brief = awaitscope::spawn_named("brief", async {
            for _ in 0..7 {
                SpinOnce::default().await;
            }
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let woken =
            awaitscope::spawn_named("woken", async move { while rx.recv().await.is_some() {} });
        for i in 0..20 {
            tx.send(i).await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(tx);
        for h in [spinner, brief, woken] {
            h.await.unwrap();
        }
    });
    let line = WAKE_LINE.load(Ordering::Relaxed);
    assert_eq!(lines(&c, "spinner"), [line]);
    assert_eq!(lines(&c, "brief"), Vec::<u32>::new());
    assert_eq!(lines(&c, "woken"), Vec::<u32>::new());
}

#[test]
fn native_stacks_off_sends_no_wake_stack() {
    let memory = awaitscope::MemoryRecording::new();
    let b = awaitscope::Builder::new()
        .no_stream()
        .record_in_memory(&memory)
        .native_stacks(false);
    support::run(Flavor::CurrentThread, b, |_| async {
        let spinner = awaitscope::spawn_named("spinner", async {
            for _ in 0..40 {
                SpinOnce::default().await;
            }
        });
        spinner.await.unwrap();
    });
    let c = Captured::from_frames(memory.frames().expect("recording decodes"));
    assert!(c.self_wakes.is_empty(), "{:?}", c.self_wakes);
    // The wakes themselves were seen, by the task itself.
    let id = c.task("spinner").id;
    let own = c
        .wakes
        .iter()
        .filter(|w| w.task == id && w.by == Some(id))
        .count();
    assert!(own >= 40, "{own} of {:?}", c.wakes);
}
