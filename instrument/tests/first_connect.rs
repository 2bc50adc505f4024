//! A collector that does not listen yet at the program's first connection
//! attempt (started a moment after the program, or the attempt failed on a
//! loaded machine) gets the whole stream once the program connects: its
//! `Hello` first, every frame since, nothing dropped, no state sent again.

use std::net::TcpListener;

use awaitscope_wire::{Body, Event, Frame};
use tracing_subscriber::layer::SubscriberExt;

mod support;

/// Every event of the `Events` frames, in order.
fn events(frames: &[Frame]) -> Vec<&Event> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_collector_up_just_after_the_first_attempt_gets_the_whole_stream() {
    // A free loopback port: nobody listens there at first.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::builder()
        .record_in_memory(&memory)
        .stream_to(addr.to_string())
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    let conn = tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        for i in 0..200 {
            tracing::info_span!("before", i).in_scope(|| {});
        }
        // The exporter tries to connect before each drain that is due for
        // an attempt, its first at once: refused, as the flush returns.
        guard.flush();
        // Its next attempt, after the backoff, finds the collector.
        let conn = support::collector_comes_up(addr, || {
            tracing::info_span!("waiting").in_scope(|| {});
            guard.flush();
        });
        for i in 0..200 {
            tracing::info_span!("after", i).in_scope(|| {});
        }
        conn
    });
    drop(guard);
    let got = support::frames_until_closed(conn);
    let recorded = memory.frames().unwrap();

    match &got[0].body {
        Body::Hello(info) => assert!(!info.reconnect, "{info:?}"),
        b => panic!("the stream starts with {b:?}"),
    }
    assert_eq!(got[0].seq, 0);
    let gaps: Vec<_> = got
        .windows(2)
        .filter(|w| w[1].seq != w[0].seq + 1)
        .map(|w| (w[0].seq, w[1].seq))
        .collect();
    assert!(gaps.is_empty(), "sequence gaps: {gaps:?}");
    let dropped: Vec<_> = got
        .iter()
        .filter_map(|f| match &f.body {
            Body::Dropped(d) if d.total() > 0 => Some(*d),
            _ => None,
        })
        .collect();
    assert!(dropped.is_empty(), "{dropped:?}");
    assert!(matches!(got.last().unwrap().body, Body::Goodbye));
    // The events the recording has, every one of them, in its order: the
    // spans made while nobody listened included.
    let (got, recorded) = (events(&got), events(&recorded));
    let spans = |ev: &[&Event]| ev.iter().filter(|e| matches!(e, Event::SpanNew(_))).count();
    assert!(spans(&recorded) >= 400, "{}", spans(&recorded));
    assert_eq!(got.len(), recorded.len());
    assert!(
        got == recorded,
        "the stream's events differ from the recording's"
    );
}

#[test]
fn the_stream_is_kept_whole_when_it_is_the_only_destination() {
    // As above, with the stream alone: while it waits for its first
    // connection it is the only place events go, and they must be kept
    // (encoded), not merely counted as a stream that nobody takes would be.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (layer, guard) = awaitscope::builder().stream_to(addr.to_string()).build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    let conn = tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        for i in 0..200 {
            tracing::info_span!("before", i).in_scope(|| {});
        }
        guard.flush();
        support::collector_comes_up(addr, || guard.flush())
    });
    drop(guard);
    let got = support::frames_until_closed(conn);
    assert_eq!(got[0].seq, 0, "{:?}", got[0].body);
    let before = events(&got)
        .into_iter()
        .filter(|e| matches!(e, Event::SpanNew(_)))
        .count();
    assert!(
        before >= 200,
        "{before} spans reached the collector, of 200"
    );
}
