//! Poll-local spans: under awaitscope's own subscriber a span of the program
//! made inside a poll, without fields, lives in its thread's own table
//! until it closes or its poll ends (then it moves to the store). These
//! tests take such spans where the common path does not go: to another
//! thread while the poll that made them still runs, past the table's size,
//! closed in another order than made. What the recording says of them must
//! be what it says of any span, and nothing may be lost. (Under the layer
//! on the registry, which `AWAITSCOPE_TEST_STACK=layer` runs these tests
//! with, there are no poll-local spans: the same must hold.)

mod support;

use std::sync::{mpsc, Arc};
use std::time::Duration;

use awaitscope::MemoryRecording;
use awaitscope_wire::{Body, CloseKind, Event, SpanClass};
use support::{run, Captured, Flavor};
use tracing::Instrument;

/// Runs `program` as the task "owner" on a runtime of `flavor`, recording
/// in memory; returns the capture and the recording's close events (span
/// ids, in stream order).
fn record<F, Fut>(flavor: Flavor, program: F) -> (Captured, Vec<awaitscope_wire::SpanId>)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let memory = MemoryRecording::new();
    let builder = awaitscope::Builder::new().record_in_memory(&memory);
    run(flavor, builder, |_| async move {
        awaitscope::spawn_named("owner", program()).await.unwrap();
    });
    let frames = memory.frames().expect("recording decodes");
    let closes = frames
        .iter()
        .flat_map(|f| match &f.body {
            Body::Events(events) => events.clone(),
            _ => Vec::new(),
        })
        .filter_map(|e| match e {
            Event::Close { span, .. } => Some(span),
            _ => None,
        })
        .collect();
    (Captured::from_frames(frames), closes)
}

fn nothing_dropped(cap: &Captured) {
    assert!(cap.goodbye, "the recording ended");
    assert_eq!(cap.dropped.total(), 0, "{:?}", cap.dropped);
}

/// `tokio::spawn(fut.instrument(span))` inside a poll: the spawned task
/// can run on the other worker before the poll that made the span ends. It
/// enters the span there, and an event inside it names it.
#[test]
fn a_span_carried_by_a_task_spawned_in_its_poll_is_entered_on_the_other_worker() {
    let (cap, closes) = record(Flavor::MultiThread, || async {
        let (ran_tx, ran_rx) = mpsc::channel();
        let span = tracing::info_span!("carried");
        let carrier = awaitscope::spawn_named(
            "carrier",
            async move {
                tracing::warn!("inside the carried span");
                let _ = ran_tx.send(());
            }
            .instrument(span),
        );
        // Out of the worker's last-in slot (which no other worker steals),
        // into its queue, which the other worker does.
        let _nudge = awaitscope::spawn_named("nudge", async {});
        // This poll goes on, blocking its worker, until the carrier ran.
        ran_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the carrier ran on the other worker");
        carrier.await.unwrap();
    });
    let owner = cap.task("owner").id;
    let carrier = cap.task("carrier").id;
    let carried = cap.span("carried");
    assert_eq!(carried.parent, Some(owner));
    assert_eq!(carried.ctx_task, Some(owner));
    assert_eq!(carried.close, Some(CloseKind::Span));
    assert_eq!(closes.iter().filter(|c| **c == carried.id).count(), 1);
    assert!(
        cap.entered_in_task
            .get(&carrier)
            .is_some_and(|e| e.contains(&carried.id)),
        "entered in the carrier's poll: {:?}",
        cap.entered_in_task.get(&carrier)
    );
    let log = cap
        .logs
        .iter()
        .find(|l| {
            l.fields
                .values()
                .any(|v| format!("{v:?}").contains("inside the carried"))
        })
        .expect("the event");
    assert_eq!(log.span, Some(carried.id));
    assert_eq!(log.task, Some(carrier));
    nothing_dropped(&cap);
}

/// A span's only handle sent to another thread and dropped there while the
/// poll that made it still runs: it closes once, and its table entry serves
/// the next span.
#[test]
fn a_span_dropped_on_another_thread_during_its_poll_closes_once() {
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        let (cap, closes) = record(flavor, || async {
            let span = tracing::info_span!("sent");
            std::thread::spawn(move || drop(span)).join().unwrap();
            drop(tracing::info_span!("next"));
        });
        let owner = cap.task("owner").id;
        for name in ["sent", "next"] {
            let s = cap.span(name);
            assert_eq!(s.parent, Some(owner), "{flavor:?}: {name}");
            assert_eq!(s.close, Some(CloseKind::Span), "{flavor:?}: {name}");
            assert_eq!(
                closes.iter().filter(|c| **c == s.id).count(),
                1,
                "{flavor:?}: {name}"
            );
        }
        nothing_dropped(&cap);
    }
}

/// A span cloned on another thread while its poll runs stays open until
/// that clone is gone, after the poll ended and the owner's handle was
/// dropped: an event in it then still names it, and it closes after that.
#[test]
fn a_span_cloned_on_another_thread_lives_until_its_last_handle() {
    let (late_tx, late_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (cap, _) = record(Flavor::MultiThread, move || async move {
        let span = Arc::new(tracing::info_span!("shared"));
        let (cloned_tx, cloned_rx) = mpsc::channel();
        let other = span.clone();
        // A thread of the program's own, under the same subscriber.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                let mine = (*other).clone();
                drop(other);
                cloned_tx.send(()).unwrap();
                late_rx.recv().unwrap();
                mine.in_scope(|| tracing::warn!("late in the shared span"));
                drop(mine);
            });
            done_tx.send(()).unwrap();
        });
        cloned_rx.recv().unwrap();
        drop(span);
        // The poll ends at the next await: then the other thread uses its
        // clone.
        tokio::task::yield_now().await;
        late_tx.send(()).unwrap();
        tokio::task::spawn_blocking(move || done_rx.recv().unwrap())
            .await
            .unwrap();
    });
    let shared = cap.span("shared");
    assert_eq!(shared.close, Some(CloseKind::Span));
    let log = cap
        .logs
        .iter()
        .find(|l| {
            l.fields
                .values()
                .any(|v| format!("{v:?}").contains("late in the shared"))
        })
        .expect("the event");
    assert_eq!(log.span, Some(shared.id), "the span was still open");
    nothing_dropped(&cap);
}

/// More spans open at once in one poll than a thread's table holds: the
/// ones past it go to the store, and every one is recorded whole.
#[test]
fn more_spans_open_in_one_poll_than_a_table_holds() {
    const SPANS: usize = 150;
    let (cap, closes) = record(Flavor::CurrentThread, || async {
        let spans: Vec<_> = (0..SPANS).map(|_| tracing::info_span!("many")).collect();
        for s in &spans {
            s.in_scope(|| {});
        }
        drop(spans);
    });
    let owner = cap.task("owner").id;
    let many: Vec<_> = cap
        .of_class(SpanClass::User)
        .into_iter()
        .filter(|s| s.name == "many")
        .collect();
    assert_eq!(many.len(), SPANS);
    for s in many {
        assert_eq!(s.parent, Some(owner));
        assert_eq!(s.ctx_task, Some(owner));
        assert_eq!(s.close, Some(CloseKind::Span));
        assert_eq!(closes.iter().filter(|c| **c == s.id).count(), 1);
    }
    nothing_dropped(&cap);
}

/// A poll-local parent whose own handle goes first stays open for its
/// poll-local child, and closes after it, as under the registry.
#[test]
fn a_poll_local_parent_closes_after_its_child() {
    let (cap, closes) = record(Flavor::CurrentThread, || async {
        let parent = tracing::info_span!("parent");
        let child = parent.in_scope(|| tracing::info_span!("child"));
        let grandchild = child.in_scope(|| tracing::info_span!("grandchild"));
        drop(parent);
        drop(child);
        drop(grandchild);
    });
    let (parent, child, grandchild) = (
        cap.span("parent"),
        cap.span("child"),
        cap.span("grandchild"),
    );
    assert_eq!(child.parent, Some(parent.id));
    assert_eq!(grandchild.parent, Some(child.id));
    let at = |id| closes.iter().position(|c| *c == id).expect("closed");
    assert!(
        at(grandchild.id) < at(child.id) && at(child.id) < at(parent.id),
        "innermost first: {closes:?} (parent {:?}, child {:?}, grandchild {:?})",
        parent.id,
        child.id,
        grandchild.id
    );
    let owner = cap.task("owner").id;
    for s in [parent, child, grandchild] {
        assert_eq!(s.ctx_task, Some(owner), "{}'s task", s.name);
        assert_eq!(s.close, Some(CloseKind::Span));
    }
    nothing_dropped(&cap);
}
