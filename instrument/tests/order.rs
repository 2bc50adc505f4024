//! The order on the wire that a collector relies on: a span's creation in
//! the same frame as the first record about it (a collector merges a
//! frame's threads by time) or an earlier one, however the threads that
//! create and use spans interleave with the exporter's drains.

mod support;

use std::collections::HashSet;

use awaitscope::MemoryRecording;
use awaitscope_wire::{Body, Event, SpanId};
use support::{run, Flavor};

/// Tasks spawned on one worker and polled, woken and closed on the other,
/// many times over: every record about a span comes no earlier than the
/// frame of its creation.
#[test]
fn a_span_is_created_before_any_record_about_it() {
    let memory = MemoryRecording::new();
    let builder = awaitscope::Builder::new().record_in_memory(&memory);
    run(Flavor::MultiThread, builder, |_| async {
        for round in 0..40u32 {
            let mut parents = Vec::new();
            for p in 0..8u32 {
                parents.push(tokio::spawn(async move {
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
                    let mut children = Vec::new();
                    for c in 0..16u32 {
                        let tx = tx.clone();
                        children.push(tokio::spawn(async move {
                            let span = tracing::info_span!("child", round, p, c);
                            let _e = span.enter();
                            tokio::task::yield_now().await;
                            let _ = tx.send(c).await;
                        }));
                    }
                    drop(tx);
                    while rx.recv().await.is_some() {}
                    for c in children {
                        let _ = c.await;
                    }
                }));
            }
            for p in parents {
                p.await.unwrap();
            }
        }
    });
    let frames = memory.frames().expect("recording decodes");
    let mut known: HashSet<SpanId> = HashSet::new();
    let (mut checked, mut early) = (0usize, Vec::new());
    for (i, f) in frames.iter().enumerate() {
        let Body::Events(events) = &f.body else {
            continue;
        };
        known.extend(events.iter().filter_map(|e| match e {
            Event::SpanNew(n) => Some(n.id),
            _ => None,
        }));
        for e in events {
            let about = match e {
                Event::Enter { span, .. }
                | Event::Exit { span, .. }
                | Event::Close { span, .. } => *span,
                Event::Poll { task, .. }
                | Event::PollEnd { task, .. }
                | Event::PollTree { task, .. }
                | Event::Wake { task, .. } => *task,
                _ => continue,
            };
            checked += 1;
            if !known.contains(&about) {
                early.push((i, e.clone()));
            }
        }
    }
    assert!(checked > 5_000, "only {checked} records about spans");
    assert!(
        early.is_empty(),
        "{} of {checked} records came before their span's creation, first: {:?}",
        early.len(),
        &early[..early.len().min(5)]
    );
}
