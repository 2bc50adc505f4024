//! The live stream: a collector that is down, stuck or restarted never
//! blocks the program, and a reconnect re-sends what the collector needs.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use awaitscope_wire::{decode_frame, Body, Event, Frame, Preamble};
use tracing_subscriber::layer::SubscriberExt;

mod support;

/// Reads frames from `conn` until `done` says so or `limit` passes.
fn read_frames(
    conn: &mut TcpStream,
    limit: Duration,
    done: impl Fn(&[Frame]) -> bool,
) -> Vec<Frame> {
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut pos = None;
    let mut chunk = [0u8; 64 * 1024];
    while Instant::now() < deadline && !done(&frames) {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        if pos.is_none() && Preamble::parse(&buf).unwrap().is_some() {
            pos = Some(Preamble::LEN);
        }
        while let Some(p) = pos {
            match decode_frame(&buf[p..], p as u64).unwrap() {
                Some((f, used)) => {
                    frames.push(f);
                    pos = Some(p + used);
                }
                None => break,
            }
        }
    }
    frames
}

/// The collector goes away and comes back on the same address; returns the
/// producer's new connection (it reconnects with backoff).
fn collector_restarts(listener: TcpListener, guard: &awaitscope::Guard) -> TcpStream {
    let addr = listener.local_addr().unwrap();
    drop(listener);
    // Keep producing so the exporter notices the broken connection.
    support::collector_comes_up(addr, || {
        tracing::info_span!("tick").in_scope(|| {});
        guard.flush();
    })
}

/// Every event of the `Events` frames, in order.
fn events(frames: &[Frame]) -> impl Iterator<Item = &Event> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
}

fn span_news(frames: &[Frame]) -> Vec<u64> {
    events(frames)
        .filter_map(|e| match e {
            Event::SpanNew(n) => Some(n.id.0),
            _ => None,
        })
        .collect()
}

fn hello_reconnect(frames: &[Frame]) -> Option<bool> {
    frames.iter().find_map(|f| match &f.body {
        Body::Hello(h) => Some(h.reconnect),
        _ => None,
    })
}

#[test]
fn reconnect_resends_callsites_and_live_spans() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (layer, guard) = awaitscope::Builder::new()
        .stream_to(addr.to_string())
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        let long_lived = tracing::info_span!("long_lived", n = 1);
        long_lived.in_scope(|| {});
        guard.flush();
        let (mut conn, _) = listener.accept().unwrap();
        let first = read_frames(&mut conn, Duration::from_secs(20), |f| {
            !span_news(f).is_empty()
        });
        assert_eq!(hello_reconnect(&first), Some(false));
        let id = span_news(&first)[0];

        // The collector goes away and comes back on the same address.
        drop(conn);
        let mut conn = collector_restarts(listener, &guard);
        let second = read_frames(&mut conn, Duration::from_secs(20), |f| {
            span_news(f).contains(&id)
        });
        assert_eq!(
            hello_reconnect(&second),
            Some(true),
            "second Hello is a reconnect"
        );
        assert!(
            span_news(&second).contains(&id),
            "the live span is re-sent after the reconnect"
        );
        let callsites = second
            .iter()
            .filter_map(|f| match &f.body {
                Body::Events(e) => Some(e),
                _ => None,
            })
            .flatten()
            .filter(|e| matches!(e, Event::Callsite(c) if c.name == "long_lived"))
            .count();
        assert_eq!(callsites, 1, "callsites are re-sent once");
        drop(long_lived);
    });
}

#[test]
fn a_collector_that_never_reads_does_not_block_the_program() {
    // Accepts connections but never reads: the socket buffers fill up.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepter = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok((c, _)) = listener.accept() {
                held.push(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::Builder::new()
        .stream_to(addr.to_string())
        .record_in_memory(&memory)
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..200_000u64 {
            let _s = tracing::info_span!("busy", i).entered();
        }
    });
    drop(guard);
    // Everything reached the in-memory recording, whatever the stuck
    // collector did: the program itself was never held up.
    let frames = memory.frames().unwrap();
    assert!(matches!(frames.last().unwrap().body, Body::Goodbye));
    assert!(span_news(&frames).len() + (dropped(&frames) as usize) >= 200_000);
    drop(accepter);
}

fn dropped(frames: &[Frame]) -> u64 {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Dropped(d) => Some(d.buffer_full),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn nobody_listening_leaves_other_sinks_whole() {
    // Port 1 on loopback: connection refused at once, retried with backoff.
    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::Builder::new()
        .stream_to("127.0.0.1:1")
        .record_in_memory(&memory)
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..1_000u64 {
            tracing::info_span!("s", i).in_scope(|| {});
            if i % 100 == 0 {
                guard.flush();
            }
        }
    });
    drop(guard);
    let frames = memory.frames().unwrap();
    assert_eq!(span_news(&frames).len(), 1_000);
    let disconnected: u64 = frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Dropped(d) => Some(d.disconnected),
            _ => None,
        })
        .sum();
    assert_eq!(
        disconnected, 0,
        "the recording is not charged for the stream's drops"
    );
}

fn poll_tree_tasks(frames: &[Frame]) -> Vec<u64> {
    events(frames)
        .filter_map(|e| match e {
            Event::PollTree { task, spans } if !spans.is_empty() => Some(task.0),
            _ => None,
        })
        .collect()
}

#[test]
fn reconnect_resends_await_trees_of_parked_tasks() {
    use tracing::Instrument;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (layer, guard) = awaitscope::Builder::new()
        .stream_to(addr.to_string())
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.block_on(async {
            awaitscope::spawn_named(
                "parked",
                async move {
                    let _ = rx.await;
                }
                .instrument(tracing::info_span!("waiting_for_reply")),
            );
            tokio::task::yield_now().await;
        });
        guard.flush();
        let (mut conn, _) = listener.accept().unwrap();
        let first = read_frames(&mut conn, Duration::from_secs(20), |f| {
            !poll_tree_tasks(f).is_empty()
        });
        let task = poll_tree_tasks(&first)[0];

        // The task stays parked: its tree will not change, so it is not
        // sent again by itself. After a reconnect it must be.
        drop(conn);
        let mut conn = collector_restarts(listener, &guard);
        let second = read_frames(&mut conn, Duration::from_secs(20), |f| {
            poll_tree_tasks(f).contains(&task)
        });
        assert!(poll_tree_tasks(&second).contains(&task), "tree re-sent");
        drop(rt);
    });
}

/// What a collector that comes up late is told it missed: `disconnected`
/// of the latest `Dropped` frame.
fn disconnected(frames: &[Frame]) -> u64 {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Dropped(d) => Some(d.disconnected),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn events_made_while_no_collector_is_up_are_counted_not_lost() {
    // While nobody listens, events are counted, not encoded: the count must
    // still be every event the stream would have carried. 2,000 spans made
    // and closed outside any task: a SpanNew, an Enter, an Exit and a Close
    // each, plus a few events per drain (the thread's name, callsites).
    const SPANS: u64 = 2_000;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (layer, guard) = awaitscope::Builder::new()
        .stream_to(addr.to_string())
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        // Past the wait in which the stream is kept whole for a first
        // connection (0.5 s): from then on nothing is kept, only counted.
        tracing::info_span!("before").in_scope(|| {});
        guard.flush();
        std::thread::sleep(Duration::from_millis(700));
        for i in 0..SPANS {
            tracing::info_span!("missed", i).in_scope(|| {});
            if i % 200 == 0 {
                guard.flush();
            }
        }
        guard.flush();
        // The collector comes up: the producer connects (with backoff)
        // and reports what it missed.
        let mut conn = support::collector_comes_up(addr, || {
            tracing::info_span!("tick").in_scope(|| {});
            guard.flush();
        });
        let frames = read_frames(&mut conn, Duration::from_secs(20), |f| {
            disconnected(f) >= 4 * SPANS
        });
        let missed = disconnected(&frames);
        // The ticks of the reconnect loop add 4 events each, a few hundred
        // at most; drains add a `Thread` event each.
        assert!(
            (4 * SPANS..4 * SPANS + 2_000).contains(&missed),
            "{missed} events counted as missed for {} made",
            4 * SPANS
        );
    });
}
