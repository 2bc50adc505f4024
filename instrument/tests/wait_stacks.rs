//! Where a task goes to wait: a tokio resource telling a task "not ready"
//! (a contended Mutex, a oneshot with no value yet) sends the worker's
//! stack there, whose innermost frame of the program's own code is the
//! line of the `.await`; a sleep sends none (its span says where it is),
//! and neither does a lock taken at once. Needs `tokio_unstable`, where
//! tokio reports its resources' polls.
#![cfg(tokio_unstable)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{capture, Captured, Flavor};

/// The lines the stacks of task `task` were sent with (see
/// [`support::stack_lines`]).
fn lines(c: &Captured, task: &str) -> Vec<u32> {
    support::stack_lines(&c.waits, c.task(task).id, "tests/wait_stacks.rs")
}

#[test]
fn a_wait_on_a_resource_sends_the_line_it_awaits_at() {
    let mutex_line = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let reply_line = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (ml, rl) = (mutex_line.clone(), reply_line.clone());
    let c = capture(Flavor::CurrentThread, || async move {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let held = lock.clone().lock_owned().await;
        let l = lock.clone();
        let waiter = awaitscope::spawn_named("waiter", async move {
            ml.store(line!() + 1, std::sync::atomic::Ordering::Relaxed);
            let _g = l.lock().await;
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let replied = awaitscope::spawn_named("replied", async move {
            rl.store(line!() + 1, std::sync::atomic::Ordering::Relaxed);
            let _ = rx.await;
        });
        let napper = awaitscope::spawn_named("napper", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        let free = Arc::new(tokio::sync::Mutex::new(()));
        let at_once = awaitscope::spawn_named("at-once", async move {
            let _g = free.lock().await;
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(held);
        let _ = tx.send(());
        for h in [waiter, replied, napper, at_once] {
            h.await.unwrap();
        }
    });
    let at = |l: &Arc<std::sync::atomic::AtomicU32>| l.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(lines(&c, "waiter"), [at(&mutex_line)]);
    assert_eq!(lines(&c, "replied"), [at(&reply_line)]);
    assert_eq!(lines(&c, "napper"), Vec::<u32>::new());
    assert_eq!(lines(&c, "at-once"), Vec::<u32>::new());
}

#[test]
fn native_stacks_off_sends_no_wait_stack() {
    let memory = awaitscope::MemoryRecording::new();
    let b = awaitscope::Builder::new()
        .no_stream()
        .record_in_memory(&memory)
        .native_stacks(false);
    support::run(Flavor::CurrentThread, b, |_| async {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let held = lock.clone().lock_owned().await;
        let waiter = awaitscope::spawn_named("waiter", async move {
            let _g = lock.lock().await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        waiter.await.unwrap();
    });
    let c = Captured::from_frames(memory.frames().expect("recording decodes"));
    assert!(c.waits.is_empty(), "{:?}", c.waits);
    // The wait itself was seen.
    let waiter = c.task("waiter").id;
    assert!(
        c.logs.iter().any(|l| l.task == Some(waiter)
            && l.fields.get("is_ready") == Some(&awaitscope_wire::Value::Bool(false))),
        "{:?}",
        c.logs
    );
}
