//! A [`Context`] as a `traceparent` header and back
//! ([`Context::traceparent`], [`Context::from_traceparent`]), and the
//! `Handover` record that tells the collector what a producer sent, so that
//! it can join the consumer's traces to the producer's. The header value
//! itself (parsing, formatting, ids) is [`crate::traceparent`]'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::capture::local::with_local;
use crate::capture::record::{Raw, RawHandover};
use crate::causal::{CausalTrace, Context};
use crate::span_node::SpanNode;
use crate::traceparent::{ids_of, span_id_of, trace_id_of_root, TraceParent, SAMPLED};

impl Context {
    /// The context as a W3C `traceparent` header value
    /// (`00-<trace id>-<span id>-<flags>`), to send with a message to
    /// another process, whose consumer reads it back with
    /// [`Context::from_traceparent`].
    ///
    /// The ids are OpenTelemetry's when `tracing-opentelemetry` follows the
    /// span the context was taken in (feature `opentelemetry`), so the
    /// header is the one its propagator would send; otherwise awaitscope's
    /// own, stable for the span. The collector is told (a `Handover` event
    /// with the context's causal trace), so that it can continue the
    /// consumer's traces in this process.
    ///
    /// ```no_run
    /// # fn send(_: &str, _: String) {}
    /// let header = awaitscope::Context::current().traceparent();
    /// send("signup-jobs", header);
    /// ```
    pub fn traceparent(&self) -> String {
        let ids = match (&self.otel, &self.node, &self.remote) {
            (Some(otel), _, _) => Some(*otel),
            (None, Some(node), _) => {
                let (trace_id, span_id) = ids_of(node);
                Some(TraceParent {
                    trace_id,
                    span_id,
                    flags: SAMPLED,
                })
            }
            (None, None, remote) => *remote,
        };
        let Some(tp) = ids else {
            // Taken outside any span: a trace of its own.
            return fresh().to_string();
        };
        if let Some(node) = &self.node {
            record(node, self.task.as_ref(), &tp);
        }
        tp.to_string()
    }

    /// Reads a `traceparent` header value sent by another process
    /// ([`Context::traceparent`], or any W3C trace-context propagator such as
    /// OpenTelemetry's): the consumer enters the context
    /// ([`Context::enter`], or `fut.instrument(cx.span())`) as it does a
    /// context handed over in-process. `None` when the value is not a valid
    /// `traceparent` (W3C rules: lowercase hex, version `ff` and all-zero
    /// ids invalid, exact lengths).
    ///
    /// With the `opentelemetry` feature the context span is also made a
    /// child of the remote span for `tracing-opentelemetry`.
    pub fn from_traceparent(header: &str) -> Option<Context> {
        let remote = TraceParent::parse(header)?;
        Some(Context {
            remote: Some(remote),
            ..Context::default()
        })
    }
}

/// A new trace for a context taken outside any span.
fn fresh() -> TraceParent {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Far from the span ids a capture hands out (which count up from 1).
    let n = u64::MAX - NEXT.fetch_add(1, Ordering::Relaxed);
    TraceParent {
        trace_id: trace_id_of_root(n),
        span_id: span_id_of(n),
        flags: SAMPLED,
    }
}

/// Tells the capture that made `node` that its context left the process.
fn record(node: &Arc<SpanNode>, task: Option<&Arc<SpanNode>>, tp: &TraceParent) {
    let trace = CausalTrace::of(Some(node.clone()), task.cloned()).wire_lines();
    for shared in crate::panic::captures() {
        if shared.instance != node.instance {
            continue;
        }
        let ts = shared.raw();
        with_local(&shared, |l| {
            l.push(Raw::Handover(Box::new(RawHandover {
                span: node.id,
                task: task.map_or(0, |t| t.id),
                trace_id: tp.trace_id,
                span_id: tp.span_id,
                ts,
                trace: trace.clone(),
            })));
        });
    }
}
