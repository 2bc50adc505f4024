//! Recordings: `awaitscope::init()` with `AWAITSCOPE_RECORD` in a child
//! process killed with SIGKILL leaves a recording readable up to its last
//! complete frame.

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use awaitscope_wire::{Body, DecodeError, Event, FrameReader};

const CHILD_ENV: &str = "AWAITSCOPE_TEST_CHILD";

/// The child program: a busy instrumented service that never ends.
#[test]
#[ignore = "run by sigkill_leaves_a_readable_recording in a child process"]
fn child_program() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let _guard = awaitscope::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut n = 0u64;
        loop {
            n += 1;
            let h = awaitscope::spawn_named("job", async move {
                let span = tracing::info_span!("handle", n);
                let _e = span.enter();
                tokio::task::yield_now().await;
            });
            h.await.unwrap();
            if n.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
}

#[test]
fn sigkill_leaves_a_readable_recording() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.rec");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_program", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env("AWAITSCOPE_RECORD", &path)
        .env("AWAITSCOPE_ADDR", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the recording holds a good amount of data.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&path).map_or(0, |m| m.len()) < 64 * 1024 {
        assert!(Instant::now() < deadline, "child never wrote its recording");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush.
    child.wait().unwrap();

    let mut reader = FrameReader::new(File::open(&path).unwrap()).unwrap();
    let mut frames = Vec::new();
    let end = loop {
        match reader.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(
        matches!(end, None | Some(DecodeError::Truncated { .. })),
        "a killed recording ends cleanly or truncated, not corrupt: {end:?}"
    );
    assert!(matches!(frames[0].body, Body::Hello(_)));
    assert!(
        !frames.iter().any(|f| matches!(f.body, Body::Goodbye)),
        "no clean shutdown happened"
    );
    let spans = frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .filter(|e| matches!(e, Event::SpanNew(_)))
        .count();
    assert!(
        spans > 100,
        "the recording holds the program's spans: {spans}"
    );
}
