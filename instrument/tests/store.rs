//! awaitscope's own span store (the subscriber `init()` installs): span
//! handles' reference counts, parents kept open by their children, the
//! current span, and stale ids.

use awaitscope::MemoryRecording;
use awaitscope_wire::{Body, CloseKind, Event, SpanId};

mod support;
use support::Captured;

/// Runs `f` under a fresh store subscriber recording into memory; returns
/// the capture and the ids of closed spans in the order they closed.
fn under_store(f: impl FnOnce()) -> (Captured, Vec<SpanId>) {
    let memory = MemoryRecording::new();
    let (subscriber, guard) = awaitscope::Builder::new()
        .record_in_memory(&memory)
        .try_build_subscriber()
        .unwrap()
        .expect("awaitscope is on");
    tracing::subscriber::with_default(subscriber, f);
    drop(guard);
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

#[test]
fn a_parent_closes_after_its_children_and_clones_keep_a_span_open() {
    let (cap, closes) = under_store(|| {
        let parent = tracing::info_span!("parent");
        let child = tracing::info_span!(parent: &parent, "child");
        let clone = child.clone();
        // The parent's handle goes first: its child still refers to it.
        drop(parent);
        drop(child);
        // One handle of the child is left: nothing has closed yet.
        let orphan = tracing::info_span!(parent: None, "orphan");
        drop(orphan);
        drop(clone);
    });
    let (parent, child, orphan) = (cap.span("parent"), cap.span("child"), cap.span("orphan"));
    assert_eq!(child.parent, Some(parent.id));
    assert_eq!(orphan.parent, None);
    assert_eq!(closes, vec![orphan.id, child.id, parent.id]);
    assert_eq!(parent.close, Some(CloseKind::Span));
}

/// A closing child gives its parent's reference back, and the last
/// child's close closes its ancestors in turn, not before: whether the
/// child was made with an explicit parent or inside the entered parent, and
/// with the ancestors' own handles and clones dropped first.
#[test]
fn the_last_child_closes_a_chain_of_ancestors() {
    let (cap, closes) = under_store(|| {
        let root = tracing::info_span!("root");
        let mid = tracing::info_span!(parent: &root, "mid");
        let explicit = tracing::info_span!(parent: &mid, "explicit");
        let contextual = mid.in_scope(|| tracing::info_span!("contextual"));
        let mid_clone = mid.clone();
        drop(root);
        drop(mid);
        drop(explicit);
        // `mid` still has a clone and a child; `root`, its child `mid`.
        let marker = tracing::info_span!(parent: None, "marker");
        drop(marker);
        drop(mid_clone);
        let marker2 = tracing::info_span!(parent: None, "marker2");
        drop(marker2);
        drop(contextual);
        // Slots and nodes of closed spans are used again: counted afresh.
        let again = tracing::info_span!(parent: None, "again");
        let again_child = tracing::info_span!(parent: &again, "again_child");
        drop(again);
        drop(again_child);
    });
    let id = |name: &str| cap.span(name).id;
    assert_eq!(cap.span("contextual").parent, Some(id("mid")));
    assert_eq!(cap.span("explicit").parent, Some(id("mid")));
    assert_eq!(
        closes,
        vec![
            id("explicit"),
            id("marker"),
            id("marker2"),
            id("contextual"),
            id("mid"),
            id("root"),
            id("again_child"),
            id("again"),
        ]
    );
}

#[test]
fn the_current_span_follows_enters_and_exits() {
    let (cap, _) = under_store(|| {
        assert!(tracing::Span::current().is_none());
        let outer = tracing::info_span!("outer");
        let _o = outer.enter();
        let inner = tracing::info_span!("inner");
        {
            let _i = inner.enter();
            assert_eq!(
                tracing::Span::current().metadata().map(|m| m.name()),
                Some("inner")
            );
            // A contextual parent is the current span.
            let leaf = tracing::info_span!("leaf");
            drop(leaf);
        }
        assert_eq!(
            tracing::Span::current().metadata().map(|m| m.name()),
            Some("outer")
        );
        // The current span's handle can be taken and outlive the scope.
        let current = tracing::Span::current();
        assert_eq!(current.id(), outer.id());
    });
    assert_eq!(cap.span("inner").parent, Some(cap.span("outer").id));
    assert_eq!(cap.span("leaf").parent, Some(cap.span("inner").id));
}

#[test]
fn stale_and_unknown_ids_are_ignored() {
    let (cap, closes) = under_store(|| {
        let task = tracing::span!(
            target: "tokio::task",
            tracing::Level::TRACE,
            "runtime.spawn",
            kind = "task"
        );
        let stale = task.id().expect("an enabled span").into_u64();
        drop(task);
        // tokio names the woken task by its span id, which may have closed.
        tracing::trace!(target: "tokio::task::waker", op = "waker.wake", task.id = stale);
        tracing::trace!(target: "tokio::task::waker", op = "waker.drop", task.id = u64::MAX);
        tracing::dispatcher::get_default(|d| {
            let id = tracing::Id::from_u64(stale);
            d.enter(&id);
            d.exit(&id);
            let _ = d.clone_span(&id);
            assert!(!d.try_close(id));
        });
        // A span made after it may reuse its slot; it is a new span.
        let again = tracing::info_span!("after");
        drop(again);
    });
    assert!(cap.wakes.is_empty(), "{:?}", cap.wakes);
    assert_eq!(closes.len(), 2, "the task and `after`, once each");
    assert!(cap.span("after").enters.is_empty());
}
