//! End-to-end: real tokio programs under the awaitscope layer; assert what
//! was captured. Tests that need tokio's own instrumentation are gated on
//! `tokio_unstable`; the rest also run on stable tokio.

mod support;

use std::time::Duration;

use awaitscope_wire::{Body, CloseKind, Event, EventClass, Level, SpanClass, Value};
use support::{capture, capture_with, run, Flavor};
use tracing::Instrument;

const FLAVORS: [Flavor; 2] = [Flavor::CurrentThread, Flavor::MultiThread];

#[test]
fn spawn_context_links_task_tree_with_awaitscope_spawn() {
    for flavor in FLAVORS {
        let c = capture(flavor, || async {
            let parent = awaitscope::spawn_named("parent", async {
                async {
                    let child = awaitscope::spawn_named("child", async {
                        tokio::task::yield_now().await;
                    });
                    child.await.unwrap();
                }
                .instrument(tracing::info_span!("handle_request", id = 7))
                .await;
            });
            parent.await.unwrap();
        });
        let parent = c.task("parent");
        let child = c.task("child");
        let request = c.span("handle_request");
        assert_eq!(child.ctx_task, Some(parent.id), "{flavor:?}: spawning task");
        assert_eq!(
            child.ctx_span,
            Some(request.id),
            "{flavor:?}: spawn context"
        );
        assert_eq!(child.parent, None, "task spans are roots");
        assert_eq!(request.fields.get("id"), Some(&Value::I64(7)));
        assert_eq!(request.ctx_task, Some(parent.id));
        // The span was entered while the parent task was polled.
        assert!(c.entered_in_task[&parent.id].contains(&request.id));
        // Spawned at this file.
        assert!(child.str_field("loc.file").unwrap().ends_with("capture.rs"));
        assert_eq!(child.close, Some(CloseKind::Completed), "{flavor:?}");
        assert_eq!(parent.close, Some(CloseKind::Completed), "{flavor:?}");
        assert!(c.hello && c.goodbye);
    }
}

#[test]
fn counts_polls_of_a_yielding_task() {
    for flavor in FLAVORS {
        let c = capture(flavor, || async {
            awaitscope::spawn_named("yielder", async {
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap();
        });
        let t = c.task("yielder");
        // 10 yields: 11 polls. The drop of the future is not a poll.
        assert_eq!(t.polls(), 11, "{flavor:?}");
        assert_eq!(t.enters.len(), t.exits.len());
        for (enter, exit) in t.enters.iter().zip(&t.exits) {
            assert_eq!(enter.0, exit.0, "a poll starts and ends on one thread");
            assert!(enter.1 <= exit.1);
        }
    }
}

#[test]
fn cancelled_task_is_told_from_completed() {
    for flavor in FLAVORS {
        let c = capture(flavor, || async {
            let pending = awaitscope::spawn_named("forever", std::future::pending::<()>());
            let done = awaitscope::spawn_named("done", async {});
            done.await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            pending.abort();
            assert!(pending.await.unwrap_err().is_cancelled());
        });
        assert_eq!(
            c.task("forever").close,
            Some(CloseKind::Cancelled),
            "{flavor:?}"
        );
        assert_eq!(c.task("forever").polls(), 1, "{flavor:?}");
        assert_eq!(
            c.task("done").close,
            Some(CloseKind::Completed),
            "{flavor:?}"
        );
    }
}

#[test]
fn panic_in_task_is_captured_with_task_and_span() {
    for flavor in FLAVORS {
        let c = capture(flavor, || async {
            let h = awaitscope::spawn_named("boom", async {
                async {
                    panic!("kaboom 42");
                }
                .instrument(tracing::info_span!("explode"))
                .await
            });
            assert!(h.await.unwrap_err().is_panic());
        });
        let task = c.task("boom");
        let span = c.span("explode");
        let (ptask, pspan, msg) = c
            .panics
            .iter()
            .find(|p| p.2.contains("kaboom"))
            .expect("panic captured");
        assert_eq!(*ptask, Some(task.id), "{flavor:?}");
        assert_eq!(*pspan, Some(span.id), "{flavor:?}");
        assert_eq!(msg, "kaboom 42");
        let trace = &c.panic_traces[0];
        assert!(trace[0].starts_with("0: capture::explode at "), "{trace:?}");
        assert_eq!(task.close, Some(CloseKind::Panicked), "{flavor:?}");
    }
}

#[test]
fn error_events_carry_span_and_task_context() {
    for flavor in FLAVORS {
        let c = capture(flavor, || async {
            awaitscope::spawn_named("worker", async {
                async {
                    tracing::info!("not captured: below WARN");
                    tracing::error!(code = 503, "inventory refused");
                }
                .instrument(tracing::info_span!("fetch_inventory", sku = 42))
                .await
            })
            .await
            .unwrap();
        });
        let user: Vec<_> = c
            .logs
            .iter()
            .filter(|l| l.class == EventClass::User)
            .collect();
        assert_eq!(
            user.len(),
            1,
            "{flavor:?}: only WARN and ERROR are captured"
        );
        let e = user[0];
        assert_eq!(e.level, Level::Error);
        assert_eq!(e.span, Some(c.span("fetch_inventory").id));
        assert_eq!(e.task, Some(c.task("worker").id));
        assert_eq!(e.fields.get("code"), Some(&Value::I64(503)));
        assert_eq!(
            e.fields.get("message"),
            Some(&Value::Str("inventory refused".into()))
        );
        // ERROR events carry their causal trace, across the spawn.
        assert!(
            e.trace[0]
                .starts_with("0: capture::fetch_inventory{sku=42} at instrument/tests/capture.rs:"),
            "{:?}",
            e.trace
        );
        assert!(
            e.trace[1].starts_with("-- task ") && e.trace[1].contains("\"worker\" spawned at"),
            "{:?}",
            e.trace
        );
    }
}

#[test]
fn full_buffers_drop_and_count_instead_of_blocking() {
    let c = capture_with(Flavor::CurrentThread, 16, || async {
        for i in 0..20_000u64 {
            let _span = tracing::info_span!("hot", i);
        }
    });
    assert!(
        c.dropped.buffer_full > 0,
        "20,000 spans into a 16-slot ring must drop: {:?}",
        c.dropped
    );
    assert!(c.hello && c.goodbye, "the stream stays well formed");
}

/// A task's `Close` record dropped with a full ring is recovered from its
/// span's node: every task the recording announces also ends in it, so no
/// model keeps a finished task live for ever (looking starved or stuck).
#[test]
fn closes_lost_to_full_buffers_are_recovered() {
    let c = capture_with(Flavor::CurrentThread, 256, || async {
        for _ in 0..50 {
            let handles: Vec<_> = (0..100u64)
                // awaitscope's spawn: task spans on stable tokio too.
                .map(|i| awaitscope::spawn(async move { std::hint::black_box(i) }))
                .collect();
            for h in handles {
                h.await.unwrap();
            }
            tokio::task::yield_now().await;
        }
    });
    assert!(c.dropped.buffer_full > 0, "the test must overflow the ring");
    let tasks = c.of_class(SpanClass::Task);
    assert!(
        tasks.len() > 50,
        "some task spans were recorded: {}",
        tasks.len()
    );
    let open: Vec<_> = tasks
        .iter()
        .filter(|t| t.close.is_none() && t.name != "block_on")
        .map(|t| t.id)
        .collect();
    assert!(
        open.is_empty(),
        "{} of {} recorded tasks never closed (dropped {:?})",
        open.len(),
        tasks.len(),
        c.dropped
    );
}

#[test]
fn field_values_are_capped() {
    let c = capture(Flavor::CurrentThread, || async {
        let long = "x".repeat(10_000);
        let _s = tracing::info_span!("big", value = %long).entered();
    });
    let Some(Value::Str(v)) = c.span("big").fields.get("value").cloned() else {
        panic!("field missing")
    };
    assert!(v.len() <= awaitscope_wire::limits::MAX_STR_LEN);
    assert!(v.ends_with('…'));
}

/// Tests that need tokio's own instrumentation (`--cfg tokio_unstable`).
#[cfg(tokio_unstable)]
mod unstable {
    use super::*;
    use awaitscope_wire::{SpanClass, WakeOp};
    use std::sync::Arc;

    #[test]
    fn plain_tokio_spawn_is_tracked_with_spawn_context() {
        for flavor in FLAVORS {
            let c = capture(flavor, || async {
                let h = tokio::task::Builder::new()
                    .name("outer")
                    .spawn(
                        async {
                            tokio::spawn(async {}).await.unwrap();
                        }
                        .instrument(tracing::info_span!("req")),
                    )
                    .unwrap();
                h.await.unwrap();
            });
            let outer = c.task("outer");
            let inner = c
                .tasks()
                .into_iter()
                .find(|t| t.ctx_task == Some(outer.id))
                .expect("inner task links to outer");
            assert_eq!(inner.ctx_span, Some(c.span("req").id), "{flavor:?}");
            assert_eq!(inner.str_field("kind"), Some("task"));
            assert_eq!(inner.close, Some(CloseKind::Completed));
        }
    }

    #[test]
    fn wakes_name_the_waking_task() {
        for flavor in FLAVORS {
            let c = capture(flavor, || async {
                let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
                let waiter = awaitscope::spawn_named("waiter", async move {
                    rx.await.unwrap();
                });
                // Let the waiter park on the channel first.
                tokio::time::sleep(Duration::from_millis(20)).await;
                awaitscope::spawn_named("sender", async move {
                    tx.send(1).unwrap();
                })
                .await
                .unwrap();
                waiter.await.unwrap();
            });
            let waiter = c.task("waiter");
            let sender = c.task("sender");
            assert!(
                c.wakes.iter().any(|w| w.task == waiter.id
                    && w.by == Some(sender.id)
                    && matches!(w.op, WakeOp::Wake | WakeOp::WakeByRef)),
                "{flavor:?}: waiter woken by sender: {:?}",
                c.wakes
            );
            assert_eq!(waiter.polls(), 2, "{flavor:?}");
        }
    }

    /// A future that wakes itself by reference in its own poll: the
    /// classic self-wake (what tokio-console flags).
    struct WakeSelf(u32);

    impl std::future::Future for WakeSelf {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.0 == 0 {
                return std::task::Poll::Ready(());
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    #[test]
    fn self_wakes_name_the_task_itself() {
        for flavor in FLAVORS {
            let c = capture(flavor, || async {
                awaitscope::spawn_named("spinner", WakeSelf(5))
                    .await
                    .unwrap();
            });
            let t = c.task("spinner");
            let self_wakes = c
                .wakes
                .iter()
                .filter(|w| w.task == t.id && w.by == Some(t.id) && w.op == WakeOp::WakeByRef)
                .count();
            assert_eq!(self_wakes, 5, "{flavor:?}: {:?}", c.wakes);
        }
    }

    /// Waker clones and drops are counted on the task, not sent one by one:
    /// each poll's end carries the task's live wakers.
    #[test]
    fn poll_ends_carry_live_wakers() {
        for flavor in FLAVORS {
            let c = capture(flavor, || async {
                awaitscope::spawn_named("yielder", async {
                    for _ in 0..5 {
                        // `yield_now` hands a clone of the task's waker to
                        // the scheduler, which wakes (consumes) it later.
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .unwrap();
            });
            let t = c.task("yielder");
            assert!(t.poll_wakers.len() >= 6, "{flavor:?}: {:?}", t.poll_wakers);
            assert_eq!(
                &t.poll_wakers[..5],
                &[1; 5],
                "{flavor:?}: pending on the deferred waker"
            );
            assert_eq!(t.poll_wakers[5], 0, "{flavor:?}: completed, no waker left");
            assert!(
                c.whole_polls >= 5,
                "{flavor:?}: polls with nothing recorded inside go out as one event: {}",
                c.whole_polls
            );
            assert!(
                !c.wakes
                    .iter()
                    .any(|w| matches!(w.op, WakeOp::Clone | WakeOp::Drop)),
                "{flavor:?}: clones and drops are counted, not sent"
            );
            let wakes = c
                .wakes
                .iter()
                .filter(|w| w.task == t.id && w.op == WakeOp::Wake)
                .count();
            assert_eq!(wakes, 5, "{flavor:?}");
        }
    }

    /// A task whose only waker is dropped by another task, outside its own
    /// poll, without a wake (a lost waker): that drop is sent.
    #[test]
    fn last_waker_dropped_elsewhere_is_sent() {
        for flavor in FLAVORS {
            let c = capture(flavor, || async {
                let slot: Arc<std::sync::Mutex<Option<std::task::Waker>>> = Arc::default();
                let stored = slot.clone();
                let stuck = awaitscope::spawn_named(
                    "stuck",
                    std::future::poll_fn(move |cx| {
                        *stored.lock().unwrap() = Some(cx.waker().clone());
                        std::task::Poll::<()>::Pending
                    }),
                );
                awaitscope::spawn_named("dropper", async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    drop(slot.lock().unwrap().take());
                })
                .await
                .unwrap();
                stuck.abort();
                let _ = stuck.await;
            });
            let stuck = c.task("stuck");
            let dropper = c.task("dropper");
            assert_eq!(
                stuck.poll_wakers.first(),
                Some(&1),
                "{flavor:?}: {:?}",
                stuck.poll_wakers
            );
            assert!(
                c.wakes.iter().any(|w| w.task == stuck.id
                    && w.by == Some(dropper.id)
                    && w.op == WakeOp::LastDrop),
                "{flavor:?}: {:?}",
                c.wakes
            );
        }
    }

    #[test]
    fn mutex_wait_shows_waiter_and_holder() {
        for flavor in FLAVORS {
            let c = capture(flavor, || async {
                let m = Arc::new(tokio::sync::Mutex::new(0));
                let (held_tx, held_rx) = tokio::sync::oneshot::channel();
                let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
                let m1 = m.clone();
                let holder = awaitscope::spawn_named("holder", async move {
                    let _g = m1.lock().await;
                    held_tx.send(()).unwrap();
                    release_rx.await.unwrap();
                });
                held_rx.await.unwrap();
                let m2 = m.clone();
                let waiter = awaitscope::spawn_named("waiter", async move {
                    *m2.lock().await += 1;
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
                release_tx.send(()).unwrap();
                holder.await.unwrap();
                waiter.await.unwrap();
            });
            let holder = c.task("holder");
            let waiter = c.task("waiter");
            let mutex = c
                .of_class(SpanClass::Resource)
                .into_iter()
                .find(|r| r.str_field("concrete_type") == Some("Mutex"))
                .expect("mutex resource");
            assert!(mutex.str_field("loc.file").unwrap().ends_with("capture.rs"));
            // The holder acquired it: `locked = true` in the holder's poll.
            assert!(
                c.logs.iter().any(|l| l.class == EventClass::StateUpdate
                    && l.span == Some(mutex.id)
                    && l.task == Some(holder.id)
                    && l.fields.get("locked") == Some(&Value::Bool(true))),
                "{flavor:?}: holder's lock"
            );
            // The waiter's first poll entered the mutex and was not ready.
            assert!(c.entered_in_task[&waiter.id].contains(&mutex.id));
            assert!(
                c.logs.iter().any(|l| l.class == EventClass::PollOp
                    && l.task == Some(waiter.id)
                    && l.fields.get("is_ready") == Some(&Value::Bool(false))),
                "{flavor:?}: waiter pending on the lock"
            );
            // And the holder's release woke it.
            assert!(c
                .wakes
                .iter()
                .any(|w| w.task == waiter.id && w.by == Some(holder.id)));
            // tokio's async op polls are left out: no such span, and every
            // poll op of a task belongs to an async op on a resource (the op is the
            // span around it once its poll span is gone), the waiter's
            // not-ready ones to the Mutex's `lock` and to its internal
            // semaphore's acquire.
            assert!(c.of_class(SpanClass::AsyncOpPoll).is_empty(), "{flavor:?}");
            let class = |s: Option<awaitscope_wire::SpanId>| {
                s.and_then(|s| c.spans.get(&s)).map(|s| s.class)
            };
            let parent =
                |s: Option<awaitscope_wire::SpanId>| s.and_then(|s| c.spans.get(&s)?.parent);
            let poll_ops: Vec<_> = c
                .logs
                .iter()
                .filter(|l| l.class == EventClass::PollOp && l.task.is_some())
                .collect();
            assert!(!poll_ops.is_empty(), "{flavor:?}");
            for l in &poll_ops {
                assert_eq!(class(l.span), Some(SpanClass::AsyncOp), "{flavor:?}: {l:?}");
                assert_eq!(class(parent(l.span)), Some(SpanClass::Resource), "{l:?}");
            }
            let waits: Vec<_> = poll_ops
                .iter()
                .filter(|l| {
                    l.task == Some(waiter.id)
                        && l.fields.get("is_ready") == Some(&Value::Bool(false))
                })
                .collect();
            assert!(!waits.is_empty(), "{flavor:?}");
            let internal = |r: Option<awaitscope_wire::SpanId>| {
                r.and_then(|r| c.spans.get(&r))
                    .is_some_and(|r| r.fields.get("is_internal") == Some(&Value::Bool(true)))
            };
            for l in waits {
                let resource = parent(l.span);
                assert!(
                    resource == Some(mutex.id) || internal(resource),
                    "{flavor:?}: {l:?}"
                );
            }
        }
    }
}

#[test]
fn await_trees_are_sent_only_when_they_change() {
    for flavor in FLAVORS {
        let c = capture(flavor, || async {
            awaitscope::spawn_named("steady", async {
                async {
                    for _ in 0..50 {
                        tokio::task::yield_now().await;
                    }
                }
                .instrument(tracing::info_span!("phase_one"))
                .await;
                async {
                    async {
                        for _ in 0..50 {
                            tokio::task::yield_now().await;
                        }
                    }
                    .instrument(tracing::info_span!("inner"))
                    .await
                }
                .instrument(tracing::info_span!("phase_two"))
                .await;
            })
            .await
            .unwrap();
        });
        let task = c.task("steady");
        let one = c.span("phase_one").id;
        let two = c.span("phase_two").id;
        let inner = c.span("inner").id;
        let trees = &c.poll_trees[&task.id];
        // 101 polls and the drop of the future; the tree is sent only when
        // it changed, and a short poll's tree leaves out the spans that
        // closed during it: the first poll's, the poll that moved from one
        // phase to the next (phase_one closed in it), and the last poll's
        // (both closed: nothing left). A poll that ran 100 µs or more (this
        // thread preempted) sends its tree whole, the closed spans with it,
        // and the next poll's goes out as well: those are set apart here.
        assert_eq!(task.polls(), 101, "{flavor:?}");
        let whole = |t: &&Vec<(awaitscope_wire::SpanId, u16)>| {
            (t.contains(&(one, 0)) && t.len() > 1)
                || t.iter().filter(|n| **n == (two, 0)).count() > 1
        };
        // Almost always every poll is short: then exactly these trees.
        let any_long = task
            .enters
            .iter()
            .zip(&task.exits)
            .any(|(e, x)| x.1.saturating_sub(e.1) >= 99_000);
        if !any_long {
            assert_eq!(
                trees,
                &vec![vec![(one, 0)], vec![(two, 0), (inner, 1)], vec![]],
                "{flavor:?}"
            );
        }
        let open: Vec<_> = trees.iter().filter(|t| !whole(t)).cloned().collect();
        assert_eq!(
            open,
            vec![vec![(one, 0)], vec![(two, 0), (inner, 1)], vec![]],
            "{flavor:?}: {trees:?}"
        );
        assert!(
            trees.len() <= 5,
            "sent again though unchanged: {flavor:?}: {trees:?}"
        );
        for t in trees.iter().filter(whole) {
            assert!(
                [
                    vec![(one, 0), (two, 0), (inner, 1)],
                    vec![(two, 0), (inner, 1), (two, 0)]
                ]
                .contains(t),
                "{flavor:?}: {trees:?}"
            );
        }
    }
}

/// A task whose first poll runs 2 ms inside a span (`hashing`) that closes
/// before the poll ends.
async fn slow_poll_in_a_span() {
    awaitscope::spawn_named("slow", async {
        async { std::thread::sleep(Duration::from_millis(2)) }
            .instrument(tracing::info_span!("hashing"))
            .await;
        tokio::task::yield_now().await;
    })
    .await
    .unwrap();
}

/// A long poll's tree keeps the spans that closed during it: where the
/// poll spent its time is told from them when no stall of it was seen.
#[test]
fn a_long_polls_tree_keeps_the_spans_that_closed_in_it() {
    for flavor in FLAVORS {
        let c = capture(flavor, slow_poll_in_a_span);
        let task = c.task("slow");
        let hashing = c.span("hashing").id;
        let trees = &c.poll_trees[&task.id];
        assert_eq!(trees[0], vec![(hashing, 0)], "{flavor:?}: {trees:?}");
    }
}

/// The bound from which a poll's tree is whole can be raised
/// (`AWAITSCOPE_WHOLE_TREE`): from 1 s, the same 2 ms poll is short, and
/// its tree leaves the closed span out. That is how a run under valgrind,
/// where every poll takes hundreds of microseconds, counts what a native
/// run does.
#[test]
fn the_whole_tree_bound_can_be_raised() {
    for flavor in FLAVORS {
        let memory = awaitscope::MemoryRecording::new();
        let builder = awaitscope::Builder::new()
            .record_in_memory(&memory)
            .whole_tree(Duration::from_secs(1));
        run(flavor, builder, |_| slow_poll_in_a_span());
        let c = support::Captured::from_frames(memory.frames().expect("recording decodes"));
        let task = c.task("slow");
        let trees = c.poll_trees.get(&task.id);
        // No tree of the first poll holds the closed span (the task's
        // first tree, if any, is of a later poll and empty of it).
        let hashing = c.span("hashing").id;
        assert!(
            trees.is_none_or(|t| t.iter().all(|tree| tree.iter().all(|&(s, _)| s != hashing))),
            "{flavor:?}: {trees:?}"
        );
    }
}

#[test]
fn reused_registry_slots_never_alias_spans() {
    // One span at a time: the registry reuses the same slot for each. Every
    // enter must be attributed to its own span (see also the unit test of
    // the per-thread cache for a registry id that repeats exactly).
    let c = capture_with(Flavor::CurrentThread, 1 << 18, || async {
        // A plain thread: spans there are outside any poll, so each enter
        // is recorded with the span id it resolved to.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                for i in 0..40_000u64 {
                    let span = tracing::info_span!("recycled", i);
                    span.in_scope(|| {});
                }
            })
        })
        .join()
        .unwrap();
    });
    assert_eq!(c.dropped.buffer_full, 0);
    let spans: Vec<_> = c
        .span_order
        .iter()
        .map(|id| &c.spans[id])
        .filter(|s| s.name == "recycled")
        .collect();
    assert_eq!(spans.len(), 40_000);
    for s in spans {
        assert_eq!(
            s.enters.len(),
            1,
            "span {:?} i={:?}",
            s.id,
            s.fields.get("i")
        );
    }
}

/// A poll that records nothing goes out as one record when it ends; a task
/// that blocks its worker in such a poll is still seen as running while it
/// blocks (the exporter announces it from the thread's poll slot), and the
/// poll then ends once.
#[test]
fn a_blocking_poll_is_seen_while_it_blocks() {
    let memory = awaitscope::MemoryRecording::new();
    let builder = awaitscope::Builder::new().record_in_memory(&memory);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let running = |cap: &support::Captured| {
        cap.tasks()
            .into_iter()
            .find(|t| t.str_field("task.name") == Some("blocker"))
            .map(|t| (t.enters.len(), t.exits.len()))
    };
    let mem = memory.clone();
    let seen = support::run(Flavor::MultiThread, builder, move |_guard| async move {
        let blocker = awaitscope::spawn_named("blocker", async move {
            started_tx.send(()).unwrap();
            // Blocks its worker, recording nothing, until released.
            let _ = release_rx.recv_timeout(Duration::from_secs(60));
        });
        let watcher = std::thread::spawn(move || {
            started_rx.recv().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let seen = loop {
                // Empty until the exporter thread has run (a loaded machine).
                if let Ok(frames) = mem.frames() {
                    let cap = support::Captured::from_frames(frames);
                    if let Some((enters, exits)) = running(&cap) {
                        if enters > exits {
                            break true;
                        }
                    }
                }
                if std::time::Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            release_tx.send(()).unwrap();
            seen
        });
        blocker.await.unwrap();
        tokio::task::spawn_blocking(move || watcher.join().unwrap())
            .await
            .unwrap()
    });
    assert!(seen, "the blocking poll was not seen while it blocked");
    let cap = support::Captured::from_frames(memory.frames().unwrap());
    let (enters, exits) = running(&cap).expect("the task was recorded");
    assert_eq!(enters, exits, "every poll ended, once");
    assert!(cap.goodbye);
}

/// A span created on one thread and closed on another between two drains
/// of the exporter, where the closing thread's ring comes first (it was
/// registered first), is still sent as created and then closed. (Before the
/// exporter kept such a close until it read the span's creation, it dropped
/// the close of a span it had not seen, then kept the span open for ever: a
/// finished task stayed pending, and was reported as a lost waker.)
#[test]
fn a_span_closed_on_another_thread_before_the_exporter_saw_it_is_closed() {
    let cap = capture(Flavor::CurrentThread, || async {
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let (tx, rx) = std::sync::mpsc::channel::<tracing::Span>();
        let registered = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (d, r) = (dispatch.clone(), registered.clone());
        let closer = std::thread::spawn(move || {
            tracing::dispatcher::with_default(&d, || {
                // This thread's ring is registered before the creator's.
                drop(tracing::info_span!("closer-first"));
                r.wait();
                for span in rx {
                    drop(span);
                }
            })
        });
        registered.wait();
        let creator = std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                for i in 0..200u64 {
                    tx.send(tracing::info_span!("handed-over", i)).unwrap();
                }
            })
        });
        creator.join().unwrap();
        closer.join().unwrap();
    });
    let spans: Vec<_> = cap
        .spans
        .values()
        .filter(|s| s.name == "handed-over")
        .collect();
    assert_eq!(spans.len(), 200);
    let open = spans.iter().filter(|s| s.close.is_none()).count();
    assert_eq!(open, 0, "{open} of 200 spans never closed");
}

/// A thread's run of events longer than a frame goes on in the next frame
/// under its own thread: every frame names the thread (a `Thread` event)
/// before any enter, exit or poll in it. Without that, the collector
/// applied the continuation on the thread the previous frame ended with,
/// and the spans of one thread showed in the await tree of a task polled
/// on another (a false `stuck` finding in `awaitscope demo`).
#[test]
fn a_run_longer_than_a_frame_names_its_thread_in_every_frame() {
    let memory = awaitscope::MemoryRecording::new();
    let builder = awaitscope::Builder::new()
        .record_in_memory(&memory)
        .ring_capacity(256 * 1024);
    run(Flavor::CurrentThread, builder, |_| async {
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                // ~80,000 events, many times a frame's 4,096.
                for i in 0..20_000u32 {
                    let s = tracing::info_span!("long-run", i);
                    let _e = s.enter();
                }
            })
        })
        .join()
        .unwrap();
    });
    let frames = memory.frames().expect("recording decodes");
    let mut stack_frames = 0;
    for (n, f) in frames.iter().enumerate() {
        let Body::Events(events) = &f.body else {
            continue;
        };
        let first_stack = events.iter().position(|e| {
            matches!(
                e,
                Event::Enter { .. }
                    | Event::Exit { .. }
                    | Event::Poll { .. }
                    | Event::PollEnd { .. }
            )
        });
        let Some(first_stack) = first_stack else {
            continue;
        };
        stack_frames += 1;
        assert!(
            events[..first_stack]
                .iter()
                .any(|e| matches!(e, Event::Thread { .. })),
            "frame {n}: {} events, the first enter/exit/poll at {first_stack} \
             with no Thread event before it",
            events.len()
        );
    }
    assert!(
        stack_frames >= 10,
        "the run should span many frames, not {stack_frames}"
    );
}

/// A request's span made and closed inside one poll (an `#[instrument]`ed
/// handler that completes at once, as a server's command handlers do) does
/// not split the poll: the serving task's polls still go out as one `Poll`
/// event each, with the span's creation and close beside them.
#[cfg(tokio_unstable)]
#[test]
fn a_span_made_and_closed_inside_a_poll_keeps_the_poll_whole() {
    use std::sync::{Arc, Mutex};
    use std::task::{Poll, Waker};

    #[tracing::instrument]
    async fn handle(i: u64) -> u64 {
        i * 2
    }
    /// A one-slot mailbox without tokio's resource instrumentation (its
    /// channels record their own events inside the receiver's polls).
    #[derive(Default)]
    struct Slot {
        value: Option<u64>,
        closed: bool,
        waker: Option<Waker>,
    }
    let c = support::capture(Flavor::CurrentThread, || async {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let server = tokio::spawn({
            let slot = slot.clone();
            async move {
                loop {
                    // Woken by the sender (another task): nothing of its own
                    // is recorded during these polls but the handler's span.
                    let next = std::future::poll_fn(|cx| {
                        let mut s = slot.lock().unwrap();
                        match s.value.take() {
                            Some(v) => Poll::Ready(Some(v)),
                            None if s.closed => Poll::Ready(None),
                            None => {
                                s.waker = Some(cx.waker().clone());
                                Poll::Pending
                            }
                        }
                    })
                    .await;
                    let Some(i) = next else { break };
                    std::hint::black_box(handle(i).await);
                }
            }
        });
        for i in 0..201u64 {
            let waker = {
                let mut s = slot.lock().unwrap();
                if i == 200 {
                    s.closed = true;
                } else {
                    s.value = Some(i);
                }
                s.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
            // The server takes it before the next one.
            tokio::task::yield_now().await;
        }
        server.await.unwrap();
    });
    let handled = c
        .spans
        .values()
        .filter(|s| s.name == "handle" && s.close.is_some())
        .count();
    assert_eq!(handled, 200);
    // Every poll of both tasks is one event (the sender's `yield_now` wakes
    // it after its poll, not during it); before, each of the server's polls
    // went out as an `Enter` and a `PollEnd` around the handler's span.
    let polls: usize = c
        .spans
        .values()
        .filter(|s| s.class == SpanClass::Task)
        .map(|s| s.polls())
        .sum();
    assert!(polls >= 400, "{polls} polls");
    assert!(
        c.whole_polls + 5 >= polls,
        "{} of {polls} polls whole",
        c.whole_polls
    );
}
