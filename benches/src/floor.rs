//! A subscriber that is handed what awaitscope is handed and does nothing
//! with it: the cost of `tracing`'s own calls for the spans and events
//! awaitscope takes, a floor under what any subscriber that keeps the same
//! spans can cost (mode `floor` of the `mini_redis` bench).
//!
//! Its interest is awaitscope's default: every span (the span filter's
//! default keeps them all), tokio's waker, poll-op and state-update events
//! (all at TRACE), and the program's WARN and ERROR events. A span gets an
//! id and nothing else: fields are not visited, enters, exits and closes
//! touch nothing, no event is looked at. [`Floor::tokio_spans_only`] keeps
//! only tokio's task spans (mode `floor-tasks`), as `AWAITSCOPE_SPANS=off`
//! does for awaitscope: the difference between the two floors is what the
//! other spans (the program's, and tokio's resource spans) cost `tracing`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use awaitscope_wire::names;
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// tokio's waker events' target (awaitscope's own constant is private to
/// the capture).
const TOKIO_WAKER_TARGET: &str = "tokio::task::waker";

/// Threads numbered for their ids' low bits.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's number and the count of spans it made: ids are made
    /// without a write other threads share.
    static IDS: (u64, Cell<u64>) = (NEXT_THREAD.fetch_add(1, Ordering::Relaxed) & 0xff, Cell::new(0));
}

/// tokio's spans' targets begin so (tasks, resources, async ops).
const TOKIO_TARGET_PREFIX: &str = "tokio";

/// The do-nothing subscriber; see the module's doc.
#[derive(Debug, Default)]
pub struct Floor {
    /// Only tokio's task spans are taken (as `AWAITSCOPE_SPANS=off` keeps).
    pub tokio_spans_only: bool,
}

impl Floor {
    /// Whether awaitscope's default configuration (or, with
    /// `tokio_spans_only`, `AWAITSCOPE_SPANS=off`) takes `meta`.
    fn wants(&self, meta: &Metadata<'_>) -> bool {
        let target = meta.target();
        if meta.is_span() {
            return !self.tokio_spans_only
                || (target.starts_with(TOKIO_TARGET_PREFIX) && meta.name() == names::SPAWN_SPAN);
        }
        target == TOKIO_WAKER_TARGET
            || target == names::TOKIO_POLL_OP_TARGET
            || names::TOKIO_STATE_UPDATE_TARGETS.contains(&target)
            || *meta.level() <= Level::WARN
    }
}

impl Subscriber for Floor {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.wants(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        IDS.with(|(thread, n)| {
            let i = n.get() + 1;
            n.set(i);
            Id::from_u64(i << 8 | thread | 1 << 63)
        })
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}

    fn try_close(&self, _: Id) -> bool {
        true
    }
}

/// Installs [`Floor`] as the global default, as `awaitscope::init()` would
/// install awaitscope.
pub fn init(tokio_spans_only: bool) {
    tracing::subscriber::set_global_default(Floor { tokio_spans_only })
        .expect("no other global subscriber");
}
