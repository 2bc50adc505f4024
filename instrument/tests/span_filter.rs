//! The span filter (`AWAITSCOPE_SPANS`, `Builder::spans`): a span it
//! rejects is not captured, and under awaitscope's own subscriber it is
//! disabled at its callsite; tokio's task spans are always captured; a
//! kept span inside a rejected one hangs from the nearest kept span.

use awaitscope::MemoryRecording;
use awaitscope_wire::SpanClass;

mod support;
use support::{Captured, Flavor};

/// Whether the tests run under the layer on the registry (see
/// `support::dispatch_of`), where a rejected span is still a span for the
/// other layers.
fn under_layer() -> bool {
    std::env::var("AWAITSCOPE_TEST_STACK").as_deref() == Ok("layer")
}

#[tracing::instrument(target = "app::noisy", skip_all)]
async fn noisy() {
    // Kept, inside a rejected span.
    let inner = tracing::info_span!(target: "app::db", "query");
    let _g = inner.enter();
}

#[tracing::instrument(target = "app::handler", skip_all)]
async fn handler() {
    noisy().await;
    tokio::task::yield_now().await;
}

fn capture_filtered(spec: &str) -> (Captured, bool, bool) {
    let memory = MemoryRecording::new();
    let builder = awaitscope::Builder::new()
        .record_in_memory(&memory)
        .spans(spec);
    let (noisy_disabled, kept_disabled) = support::run(Flavor::MultiThread, builder, |_| async {
        let noisy = tracing::info_span!(target: "app::noisy", "probe").is_disabled();
        let kept = tracing::info_span!(target: "app::db", "probe").is_disabled();
        tokio::spawn(handler()).await.unwrap();
        (noisy, kept)
    });
    let cap = Captured::from_frames(memory.frames().expect("recording decodes"));
    (cap, noisy_disabled, kept_disabled)
}

#[test]
fn rejected_spans_are_not_captured_and_tasks_always_are() {
    let (cap, noisy_disabled, kept_disabled) = capture_filtered("app=info,app::noisy=off");
    let names: Vec<&str> = cap.spans.values().map(|s| s.name.as_str()).collect();
    assert!(
        !names.contains(&"noisy"),
        "rejected span captured: {names:?}"
    );
    let query = cap.span("query");
    let handler = cap.span("handler");
    // The rejected span is skipped: the kept one inside it hangs from the
    // nearest kept span.
    assert_eq!(query.parent, Some(handler.id));
    assert!(!kept_disabled);
    // Under the span store the rejected callsite is off for `tracing`
    // itself (it costs nothing more); a layer cannot turn it off for the
    // other layers of its stack.
    assert_eq!(noisy_disabled, !under_layer());
    // tokio's task spans exist with `--cfg tokio_unstable` only.
    let tasks_expected = cfg!(tokio_unstable);
    assert_eq!(
        !cap.of_class(SpanClass::Task).is_empty(),
        tasks_expected,
        "tokio's task spans are always captured"
    );

    // Everything off but tasks: the application's spans all go.
    let (cap, _, kept_disabled) = capture_filtered("off");
    assert_eq!(kept_disabled, !under_layer());
    assert!(cap.spans.values().all(|s| s.class == SpanClass::Task));
    assert_eq!(!cap.of_class(SpanClass::Task).is_empty(), tasks_expected);
}
