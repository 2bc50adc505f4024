//! Several destinations at once: each stream is numbered on its own, so a
//! stream that lost nothing has no gap in its sequence numbers, whatever
//! went to the other destinations only (a collector's handshake, drop
//! counts).

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use awaitscope_wire::{Body, Frame, FrameReader};
use tracing_subscriber::layer::SubscriberExt;

/// Sequence numbers of `frames` that do not follow the previous one.
fn gaps(frames: &[Frame]) -> Vec<(u64, u64)> {
    frames
        .windows(2)
        .filter(|w| w[1].seq != w[0].seq + 1)
        .map(|w| (w[0].seq, w[1].seq))
        .collect()
}

fn events(frames: &[Frame]) -> usize {
    frames
        .iter()
        .map(|f| match &f.body {
            Body::Events(e) => e.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn each_destination_numbers_its_own_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut bytes = Vec::new();
        let _ = s.read_to_end(&mut bytes);
        bytes
    });
    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::builder()
        .record_in_memory(&memory)
        .stream_to(addr.to_string())
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for round in 0..20 {
                let mut tasks = Vec::new();
                for i in 0..20 {
                    tasks.push(awaitscope::spawn_named("job", async move {
                        let span = tracing::info_span!("step", round, i);
                        let _e = span.enter();
                        tokio::task::yield_now().await;
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                // Several flushes: frames and drop reports over time.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
    });
    drop(guard);
    let recorded = memory.frames().unwrap();
    let bytes = collector.join().unwrap();
    let mut reader = FrameReader::new(&bytes[..]).unwrap();
    let mut streamed = Vec::new();
    while let Ok(Some(f)) = reader.next_frame() {
        streamed.push(f);
    }
    assert!(events(&recorded) > 1000, "{} events", events(&recorded));
    assert_eq!(gaps(&recorded), vec![], "the recording is gapless");
    assert_eq!(gaps(&streamed), vec![], "the stream is gapless");
    assert_eq!(recorded[0].seq, 0);
    assert!(matches!(recorded.last().unwrap().body, Body::Goodbye));
    assert!(matches!(streamed.last().unwrap().body, Body::Goodbye));
    // Both carried the same events (the stream connected before any was
    // recorded, so its handshake re-sent nothing).
    assert_eq!(events(&streamed), events(&recorded));
}

/// The token goes to the collector it authenticates to, never into a
/// recording (which may be published, a CI artifact).
#[test]
fn the_token_goes_to_the_collector_only() {
    const TOKEN: &str = "a-token-for-the-collector";
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut bytes = Vec::new();
        let _ = s.read_to_end(&mut bytes);
        bytes
    });
    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::builder()
        .record_in_memory(&memory)
        .stream_to(addr.to_string())
        .token(TOKEN)
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("work").in_scope(|| {});
    });
    // Give the exporter time to connect before it stops.
    std::thread::sleep(Duration::from_millis(300));
    drop(guard);
    let hello_token = |frames: &[Frame]| {
        frames.iter().find_map(|f| match &f.body {
            Body::Hello(info) => Some(info.token.clone()),
            _ => None,
        })
    };
    assert_eq!(hello_token(&memory.frames().unwrap()), Some(None));
    let bytes = collector.join().unwrap();
    let mut reader = FrameReader::new(&bytes[..]).unwrap();
    let mut streamed = Vec::new();
    while let Ok(Some(f)) = reader.next_frame() {
        streamed.push(f);
    }
    assert_eq!(hello_token(&streamed), Some(Some(TOKEN.to_string())));
}
