//! The layer from `builder()` composes with other layers and per-layer
//! filters in an existing `tracing_subscriber` stack.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use awaitscope_wire::{Body, Event};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Counts the events it sees.
struct Counter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for Counter {
    fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn works_beside_filtered_layers() {
    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::Builder::new().record_in_memory(&memory).build();
    let seen = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry()
        .with(Counter(seen.clone()).with_filter(LevelFilter::WARN))
        .with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::trace_span!("deep", n = 1);
        span.in_scope(|| {
            tracing::info!("info: awaitscope ignores it, the WARN filter drops it");
            tracing::warn!("warn: both see it");
        });
    });
    drop(guard);
    // The other layer's filter applied to it alone.
    assert_eq!(seen.load(Ordering::Relaxed), 1);
    // awaitscope still saw the TRACE span and the WARN event in it.
    let events: Vec<Event> = memory
        .frames()
        .unwrap()
        .into_iter()
        .filter_map(|f| match f.body {
            Body::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .collect();
    let span_id = events
        .iter()
        .find_map(|e| match e {
            Event::SpanNew(n) => Some(n.id),
            _ => None,
        })
        .expect("TRACE span captured despite the other layer's WARN filter");
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Log(l) if l.span == Some(span_id))));
}

#[test]
fn a_filtered_awaitscope_layer_sees_only_what_passes() {
    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::Builder::new().record_in_memory(&memory).build();
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(LevelFilter::INFO));
    tracing::subscriber::with_default(subscriber, || {
        tracing::trace_span!("hidden").in_scope(|| {});
        tracing::info_span!("shown").in_scope(|| {});
    });
    drop(guard);
    let names: Vec<String> = memory
        .frames()
        .unwrap()
        .into_iter()
        .filter_map(|f| match f.body {
            Body::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .filter_map(|e| match e {
            Event::Callsite(c) => Some(c.name),
            _ => None,
        })
        .collect();
    let spans: usize = memory
        .frames()
        .unwrap()
        .iter()
        .filter_map(|f| match &f.body {
            Body::Events(e) => Some(e.iter().filter(|e| matches!(e, Event::SpanNew(_))).count()),
            _ => None,
        })
        .sum();
    assert!(names.contains(&"shown".to_string()));
    assert_eq!(spans, 1, "only the INFO span passed the filter");
}
