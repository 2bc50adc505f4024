//! A span of the program made inside a poll, without fields (most
//! `#[instrument]` spans of a request handler), gets no node on the worker
//! under awaitscope's own subscriber: its creation goes to the exporter in
//! a compact record. What the collector and the in-process dump see of it
//! must be what they see of any span. (Under the layer on the registry,
//! which `AWAITSCOPE_TEST_STACK=layer` runs these tests with, every span
//! has a node: the same must hold.)

mod support;

use std::time::Duration;

use awaitscope::MemoryRecording;
use awaitscope_wire::{CloseKind, SpanClass};
use support::{run, Captured, Flavor};
use tokio::sync::oneshot;
use tracing::instrument;

#[instrument]
async fn handle() {
    inner().await;
    with_fields(7).await;
    // A task spawned inside it hangs from it.
    let _ = awaitscope::spawn_named("child", async {}).await;
}

#[instrument]
async fn inner() {}

#[instrument]
async fn with_fields(n: u32) {
    std::hint::black_box(n);
}

#[instrument(skip_all)]
async fn across(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

#[test]
fn spans_made_inside_a_poll_keep_their_parent_task_and_place_in_the_tree() {
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        let memory = MemoryRecording::new();
        let builder = awaitscope::Builder::new().record_in_memory(&memory);
        let labels = run(flavor, builder, |guard| async move {
            let (tx, rx) = oneshot::channel::<()>();
            let worker = awaitscope::spawn_named("worker", async move {
                handle().await;
                across(rx).await;
            });
            // The worker parks inside `across`, a span made in a poll and
            // still open after it. It parks first inside `handle`, awaiting
            // the child task, so a dump taken then names that: wait for the
            // dump that names `across`, keeping the last one seen for the
            // failure message.
            let mut labels = Vec::new();
            for _ in 0..500 {
                let dump = guard.dump();
                if let Some(t) = dump.named("worker").next() {
                    if t.polls > 0 && !t.running && !t.tree.is_empty() {
                        labels = t.labels().into_iter().map(str::to_owned).collect();
                        if labels.iter().any(|l| l.ends_with("::across")) {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = tx.send(());
            worker.await.unwrap();
            labels
        });
        assert!(
            labels.iter().any(|l| l.ends_with("::across")),
            "{flavor:?}: the parked task's tree names the span it waits in: {labels:?}"
        );
        let cap = Captured::from_frames(memory.frames().expect("recording decodes"));
        let worker = cap.task("worker").id;
        let (handle, inner, with_fields, across) = (
            cap.span("handle"),
            cap.span("inner"),
            cap.span("with_fields"),
            cap.span("across"),
        );
        assert_eq!(handle.parent, Some(worker), "{flavor:?}");
        assert_eq!(inner.parent, Some(handle.id), "{flavor:?}");
        assert_eq!(with_fields.parent, Some(handle.id), "{flavor:?}");
        assert_eq!(across.parent, Some(worker), "{flavor:?}");
        for s in [handle, inner, with_fields, across] {
            assert_eq!(s.class, SpanClass::User);
            assert_eq!(s.ctx_task, Some(worker), "{flavor:?}: {}'s task", s.name);
            assert_eq!(
                s.close,
                Some(CloseKind::Span),
                "{flavor:?}: {} closed",
                s.name
            );
        }
        assert!(with_fields.fields.contains_key("n"), "{flavor:?}");
        let child = cap.task("child");
        assert_eq!(
            child.ctx_span,
            Some(handle.id),
            "{flavor:?}: spawned inside handle"
        );
        assert_eq!(child.ctx_task, Some(worker), "{flavor:?}");
    }
}

/// A compact span's handles are counted on its store slot, node or not: a
/// child with a node (it has a field) keeps it open after the parent's own
/// handle is gone, and the child's close closes it, not before.
#[test]
fn a_compact_parent_closes_after_its_child_with_a_node() {
    let memory = MemoryRecording::new();
    let builder = awaitscope::Builder::new().record_in_memory(&memory);
    run(Flavor::CurrentThread, builder, |_| async {
        awaitscope::spawn_named("owner", async {
            let parent = tracing::info_span!("parent");
            let child = tracing::info_span!(parent: &parent, "child", n = 1);
            let grandchild = child.in_scope(|| tracing::info_span!("grandchild"));
            drop(parent);
            drop(child);
            drop(grandchild);
        })
        .await
        .unwrap();
    });
    let frames = memory.frames().expect("recording decodes");
    let closes: Vec<_> = frames
        .iter()
        .flat_map(|f| match &f.body {
            awaitscope_wire::Body::Events(events) => events.clone(),
            _ => Vec::new(),
        })
        .filter_map(|e| match e {
            awaitscope_wire::Event::Close { span, .. } => Some(span),
            _ => None,
        })
        .collect();
    let cap = Captured::from_frames(frames);
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
        "innermost first: {closes:?}"
    );
    let owner = cap.task("owner").id;
    for s in [parent, child, grandchild] {
        assert_eq!(s.ctx_task, Some(owner), "{}'s task", s.name);
    }
}
