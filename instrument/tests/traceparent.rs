//! A context crossing a process boundary as a W3C `traceparent`: the header
//! round-trips, malformed ones are refused, the consumer's causal trace ends
//! at the remote parent, and the producer tells the collector (a `Handover`
//! event carrying the same ids and the context's causal trace).

mod support;

use awaitscope::{CausalTrace, Context, TraceItem};
use support::{capture, run, Flavor};
use tracing::{instrument, Instrument};

/// `00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>`.
fn well_formed(h: &str) -> bool {
    let parts: Vec<&str> = h.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

#[instrument]
async fn handle_signup(user: u32) -> (String, String) {
    // Taken twice in the same span: the same ids.
    let a = Context::current().traceparent();
    let b = Context::current().traceparent();
    (a, b)
}

#[test]
fn a_span_has_stable_ids_and_its_children_share_its_trace() {
    let (a, b, child, other) = run(Flavor::MultiThread, awaitscope::Builder::new(), |_| async {
        let (a, b) = handle_signup(1).await;
        let child = async { Context::current().traceparent() }
            .instrument(tracing::info_span!("outer"))
            .await;
        let other = handle_signup(2).await.0;
        (a, b, child, other)
    });
    for h in [&a, &b, &child, &other] {
        assert!(well_formed(h), "{h}");
    }
    assert_eq!(a, b);
    // Two requests: two traces.
    assert_ne!(a[3..35], other[3..35]);
    assert_ne!(a[36..52], other[36..52]);
    assert_ne!(child[36..52], a[36..52]);
}

#[test]
fn a_header_round_trips() {
    let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cx = Context::from_traceparent(h).expect("valid");
    assert_eq!(cx.traceparent(), h);
    // Unsampled flags are kept; surrounding whitespace is not.
    let h0 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    assert_eq!(
        Context::from_traceparent(&format!("  {h0} "))
            .unwrap()
            .traceparent(),
        h0
    );
    // A context taken outside any span still gives a valid header.
    assert!(well_formed(&Context::current().traceparent()));
}

#[test]
fn malformed_headers_give_none() {
    for bad in [
        "",
        "garbage",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert!(Context::from_traceparent(bad).is_none(), "{bad:?}");
    }
}

#[instrument]
async fn send_welcome_email(user: u32) -> CausalTrace {
    CausalTrace::capture()
}

#[test]
fn the_consumers_trace_ends_at_the_remote_parent() {
    let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (trace, own) = run(
        Flavor::CurrentThread,
        awaitscope::Builder::new(),
        |_| async {
            let cx = Context::from_traceparent(h).unwrap();
            async {
                // What the consumer would send on: the same trace, its own span.
                let own = Context::current().traceparent();
                (send_welcome_email(3).await, own)
            }
            .instrument(cx.span())
            .await
        },
    );
    let items = trace.items();
    assert!(
        matches!(&items[0], TraceItem::Span { name, .. } if *name == "send_welcome_email"),
        "{items:?}"
    );
    assert_eq!(
        items.last(),
        Some(&TraceItem::Remote {
            traceparent: h.into()
        })
    );
    let text = trace.to_string();
    assert!(
        text.contains(&format!(
            "-- handed over through a queue from traceparent {h} --"
        )),
        "{text}"
    );
    assert_eq!(own[3..35], h[3..35], "continues the remote trace: {own}");
    assert_ne!(own[36..52], h[36..52]);
}

#[test]
fn the_producer_records_the_handover_with_its_trace() {
    let sent = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s = sent.clone();
    let c = capture(Flavor::MultiThread, move || async move {
        awaitscope::spawn_named("api", async move {
            let (h, _) = handle_signup(7).await;
            *s.lock().unwrap() = h;
        })
        .await
        .unwrap();
    });
    let h = sent.lock().unwrap().clone();
    assert_eq!(c.handovers.len(), 2, "{:?}", c.handovers);
    let ho = &c.handovers[0];
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(hex(&ho.trace_id), h[3..35]);
    assert_eq!(hex(&ho.span_id), h[36..52]);
    // The span and task it names are those of the request.
    let span = ho.span.expect("a span");
    assert_eq!(c.spans[&span].name, "handle_signup");
    assert_eq!(ho.task, Some(c.task("api").id));
    assert!(
        ho.trace[0].contains("handle_signup{user=7}"),
        "{:?}",
        ho.trace
    );
    assert!(
        ho.trace
            .iter()
            .any(|l| l.contains("task") && l.contains("\"api\"")),
        "{:?}",
        ho.trace
    );
}
