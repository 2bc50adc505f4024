//! A scoped subscriber sees a callsite that a thread without a subscriber
//! hit first (tokio-rs/tracing#3611: with one `Dispatch` in the process,
//! tracing-core caches the first hitting thread's `never`).
//!
//! One test in its own binary: another `Dispatch` in the process would hide
//! the bug this guards against.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Counts the spans it is told of.
struct Count(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for Count {
    fn on_new_span(&self, _: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// One callsite, hit from two threads.
fn request_span() {
    let _span = tracing::info_span!("request").entered();
}

#[test]
fn a_callsite_first_hit_by_a_thread_without_subscriber_still_reaches_the_scoped_one() {
    let seen = Arc::new(AtomicUsize::new(0));
    let dispatch =
        awaitscope::scoped_dispatch(tracing_subscriber::registry().with(Count(seen.clone())));
    // A thread with no subscriber (the collector's runtime in the demo)
    // hits the callsite first and registers it.
    std::thread::spawn(request_span).join().unwrap();
    // The scoped subscriber's thread hits it next.
    tracing::dispatcher::with_default(&dispatch, request_span);
    assert_eq!(
        seen.load(Ordering::Relaxed),
        1,
        "the scoped subscriber did not see the span: the callsite kept the interest the first thread's (missing) subscriber gave it"
    );
}
