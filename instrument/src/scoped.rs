//! A subscriber installed as a *scoped* default (`tracing::dispatcher::
//! set_default` / `with_default` on some threads) in a process whose other
//! threads have none: the demo (the program and its collector in one
//! process), [`crate::testing`] (one test's threads among a test binary's),
//! and tests that run an instrumented program beside a collector.
//!
//! tracing-core caches each callsite's interest when the callsite is first
//! hit. While exactly one `Dispatch` exists in the process, it asks the
//! *hitting thread's* default rather than that dispatch
//! (tokio-rs/tracing#3611): a thread without a subscriber that hits a
//! callsite first (the collector's runtime spawning a task before the
//! program's runtime does) caches `never`, and the program's scoped
//! subscriber never sees that callsite, for the life of the process. In the
//! demo and in tests that was tokio's `runtime.spawn`: no task at all, now
//! and then.
//!
//! With a second dispatch registered for good, tracing-core asks every
//! registered dispatch instead. [`scoped_dispatch`] registers one that
//! wants nothing and answers `sometimes`: callsites are then decided per
//! call by the current thread's default, which is right for a scoped
//! subscriber. (A global subscriber, as [`crate::init`] installs, does not
//! need this, and does not get it: it keeps its callsites' cached `always`
//! and `never`.)

use std::sync::OnceLock;

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;

/// Wraps `subscriber` in a [`Dispatch`] meant to be installed as a scoped
/// default (`tracing::dispatcher::set_default`, `with_default`, a tokio
/// runtime's `on_thread_start`), in a process where other threads use no
/// subscriber or another one. Unlike `Dispatch::new`, the subscriber sees
/// every callsite hit on its threads, whichever thread hit the callsite
/// first (see the module doc). Costs one `enabled` call per span or event
/// on every thread of the process.
pub fn scoped_dispatch<S>(subscriber: S) -> Dispatch
where
    S: Subscriber + Send + Sync + 'static,
{
    static BYSTANDER: OnceLock<Dispatch> = OnceLock::new();
    // Registered before the subscriber: from now on two dispatches exist
    // (this one is never dropped), and every callsite's interest is
    // rebuilt from both when the subscriber's dispatch registers below.
    BYSTANDER.get_or_init(|| Dispatch::new(Bystander));
    Dispatch::new(subscriber)
}

/// A subscriber that wants nothing and leaves every callsite's decision to
/// the thread's default, per call.
struct Bystander;

impl Subscriber for Bystander {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        false
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Leaves the process's maximum level to the real subscribers.
        Some(LevelFilter::OFF)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Never called: `enabled` is false for everything.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
