//! With the `opentelemetry` feature, awaitscope's `traceparent` is the one
//! OpenTelemetry's own propagator sends for the same span, and a context
//! read from a header sent by OpenTelemetry makes the consumer's spans
//! children of the remote parent in OpenTelemetry too: an app already
//! propagating with `tracing-opentelemetry` joins up.

use std::collections::HashMap;

use awaitscope::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::TracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

struct Headers(HashMap<String, String>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Runs `f` under registry + tracing-opentelemetry + awaitscope's layer.
fn with_otel<T>(f: impl FnOnce() -> T) -> T {
    let provider = TracerProvider::builder().build();
    let tracer = provider.tracer("interop");
    let (layer, _guard) = awaitscope::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::with_default(subscriber, f)
}

#[test]
fn traceparent_is_what_the_otel_propagator_sends() {
    let (ours, theirs) = with_otel(|| {
        let span = tracing::info_span!("handle_signup", user = 7);
        let _e = span.enter();
        let ours = Context::current().traceparent();
        let mut h = Headers(HashMap::new());
        TraceContextPropagator::new().inject_context(&span.context(), &mut h);
        (ours, h.0["traceparent"].clone())
    });
    assert_eq!(ours, theirs);
}

#[test]
fn a_header_from_otel_parents_the_consumers_spans() {
    // The producer: OpenTelemetry's propagator.
    let sent = with_otel(|| {
        let span = tracing::info_span!("enqueue");
        let mut h = Headers(HashMap::new());
        TraceContextPropagator::new().inject_context(&span.context(), &mut h);
        h.0["traceparent"].clone()
    });
    // The consumer: awaitscope's context, read back by OpenTelemetry.
    let (child_trace, child_parent_ok, ours) = with_otel(|| {
        let cx = Context::from_traceparent(&sent).expect("valid");
        let _in = cx.enter();
        let work = tracing::info_span!("send_welcome_email");
        let _w = work.enter();
        let otel = work.context();
        let sc = otel.span().span_context().clone();
        let mut h = Headers(HashMap::new());
        TraceContextPropagator::new().inject_context(&otel, &mut h);
        let read_back = TraceContextPropagator::new().extract(&h);
        (
            sc.trace_id().to_string(),
            read_back.span().span_context().trace_id() == sc.trace_id(),
            Context::current().traceparent(),
        )
    });
    assert_eq!(child_trace, sent[3..35], "same OpenTelemetry trace");
    assert!(child_parent_ok);
    // awaitscope's header for the consumer's span is OpenTelemetry's too.
    assert_eq!(ours[3..35], sent[3..35]);
    assert_ne!(ours[36..52], sent[36..52]);
}
