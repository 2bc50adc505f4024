//! `awaitscope report` on a real recording cut at every frame boundary, cut
//! inside frames, and with junk appended: a recording that stops before the
//! process's goodbye is reported with a warning saying so; one cut inside a
//! frame, with a truncation warning as well; junk after the header is
//! damage, and `--fail-on` then exits 2 while the report keeps every frame
//! read before it. Bounded: at most [`MAX_CUTS`] cut points.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use awaitscope::MemoryRecording;
use awaitscope_wire::{Body, FrameReader, Preamble};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

/// Most cut points tried (each runs the binary three times).
const MAX_CUTS: usize = 40;

/// Records a small healthy program (tasks that sleep, share a lock and
/// end) and returns the whole recording, with its goodbye.
fn real_recording() -> Vec<u8> {
    let memory = MemoryRecording::new();
    let (layer, guard) = awaitscope::Builder::new()
        .no_stream()
        .record_in_memory(&memory)
        .build();
    let guard = std::sync::Arc::new(guard);
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    let d = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&d)))
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        rt.block_on(async {
            let lock = std::sync::Arc::new(tokio::sync::Mutex::new(0u64));
            let mut handles = Vec::new();
            for i in 0..8u64 {
                let lock = lock.clone();
                handles.push(awaitscope::spawn(async move {
                    for _ in 0..5 {
                        tokio::time::sleep(Duration::from_millis(2 + i)).await;
                        *lock.lock().await += 1;
                    }
                }));
                // Several flushes: a recording of several frames. On a
                // blocking thread: a flush waits for the exporter's drain,
                // which on a loaded machine took more than the long-poll
                // threshold, and the program then really had a long poll.
                tokio::time::sleep(Duration::from_millis(15)).await;
                let g = guard.clone();
                tokio::task::spawn_blocking(move || g.flush())
                    .await
                    .unwrap();
            }
            for h in handles {
                h.await.unwrap();
            }
        });
    });
    drop(rt);
    drop(guard);
    memory.bytes()
}

/// Offsets of the frames' ends (after the preamble), and whether the last
/// frame is the goodbye.
fn frame_ends(bytes: &[u8]) -> (Vec<usize>, bool) {
    let mut r = FrameReader::new(bytes).unwrap();
    let mut ends = Vec::new();
    let mut goodbye = false;
    while let Some(f) = r.next_frame().unwrap() {
        ends.push(r.offset() as usize);
        goodbye = matches!(f.body, Body::Goodbye);
    }
    (ends, goodbye)
}

/// `report FILE --fail-on any --out OUT`: the exit code, stderr and the
/// JSON report.
/// Every finding kind but `descheduled`: on a loaded machine the healthy
/// program's polls really wait for a CPU, which the report says (its stall
/// may come after the poll's commit: the poll is still `descheduled`, not a
/// `long_poll`); whatever else it found would be invented.
fn fail_on() -> String {
    awaitscope_collector::FindingKind::ALL
        .iter()
        .filter(|k| **k != awaitscope_collector::FindingKind::Descheduled)
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether every finding of report `r` says that the machine, not the
/// program, made it: a `starvation` while no task of the program held a
/// worker, or a `long_poll` with no scheduler statistics to tell. A busy
/// machine (CI's, sharing its cores) really starves the healthy program's
/// timers and polls, and the report says so; any other finding would be
/// invented.
fn only_the_machine(r: &Value) -> bool {
    const NO_TASK_HELD: &str = "no task of the program polled for 1ms or more meanwhile, \
         on any thread: no task held its workers";
    const NOT_KNOWN: &str = "whether the code or a busy machine held it is not known";
    let findings = r["findings"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    !findings.is_empty()
        && findings.iter().all(|f| {
            let m = f["message"].as_str().unwrap_or("");
            (f["kind"] == "starvation" && m.contains(NO_TASK_HELD))
                || (f["kind"] == "long_poll" && m.contains(NOT_KNOWN))
        })
}

fn report(dir: &Path, name: &str, bytes: &[u8]) -> (Output, Value) {
    let file = dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    let out = dir.join(format!("{name}.json"));
    let o = Command::new(env!("CARGO_BIN_EXE_awaitscope"))
        .env_remove("AWAITSCOPE_TOKEN")
        .env_remove("RUST_LOG")
        .args(["report", "--fail-on", &fail_on(), "--out"])
        .arg(&out)
        .arg(&file)
        .output()
        .expect("runs");
    let json = std::fs::read(&out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (o, json)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Up to `n` items of `v`, spread over it, always with the first and last.
fn spread<T: Copy>(v: &[T], n: usize) -> Vec<T> {
    if v.len() <= n {
        return v.to_vec();
    }
    (0..n).map(|i| v[i * (v.len() - 1) / (n - 1)]).collect()
}

#[test]
fn a_recording_cut_at_every_frame_boundary_and_with_junk_appended() {
    let bytes = real_recording();
    let (ends, goodbye) = frame_ends(&bytes);
    assert!(
        goodbye,
        "the program ended: its recording ends with a goodbye"
    );
    assert!(ends.len() >= 4, "several frames: {}", ends.len());
    let dir = tempfile::tempdir().unwrap();
    let junk = b"\xde\xad\xbe\xefjunk appended after the frames, not a frame\n";

    // Whole: clean, no warning; the healthy program has no finding.
    let (o, r) = report(dir.path(), "whole.rec", &bytes);
    // Exit 1 only for what a busy machine did to the healthy program.
    let machine = o.status.code() == Some(1);
    assert!(
        o.status.code() == Some(0) || (machine && only_the_machine(&r)),
        "exit {:?}: {}\nfindings: {:#}",
        o.status.code(),
        stderr(&o),
        r["findings"]
    );
    assert_eq!(r["warnings"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["processes"][0]["ended"], true);
    assert_eq!(r["processes"][0]["unknown_span_events"], 0, "{r}");
    let all_tasks = r["tasks"].as_array().unwrap().len();
    assert!(all_tasks >= 8, "{all_tasks}");

    // Junk after the whole recording: damage, exit 2, nothing lost.
    let mut damaged = bytes.clone();
    damaged.extend_from_slice(junk);
    let (o, r) = report(dir.path(), "whole-junk.rec", &damaged);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged, unreadable past some point"));
    assert_eq!(r["inputs"][0]["frames"], ends.len() as u64);
    assert_eq!(r["tasks"].as_array().unwrap().len(), all_tasks);

    // Not one whole frame after the header (a length within the cap, the
    // file ends before it): nothing readable past the header, exit 2.
    for (i, tail) in [
        &bytes[Preamble::LEN..Preamble::LEN + 3],
        b"\x10\x00\x00\x00abc",
    ]
    .into_iter()
    .enumerate()
    {
        let mut head = bytes[..Preamble::LEN].to_vec();
        head.extend_from_slice(tail);
        let (o, r) = report(dir.path(), &format!("head{i}.rec"), &head);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
        assert_eq!(r["inputs"][0]["frames"], 0);
    }

    // Cut before the goodbye, at frame boundaries and inside frames.
    let starts: Vec<usize> = std::iter::once(Preamble::LEN)
        .chain(ends.iter().copied())
        .collect();
    let cuts = spread(&starts[1..starts.len() - 1], MAX_CUTS / 2);
    for (i, &cut) in cuts.iter().enumerate() {
        let frames = ends.iter().filter(|e| **e <= cut).count() as u64;
        // At a boundary: the process did not end, said as a warning; the
        // frames read are kept; a cut invents no finding (exit 0).
        let (o, r) = report(dir.path(), &format!("cut{i}.rec"), &bytes[..cut]);
        let err = stderr(&o);
        assert!(
            o.status.code() == Some(0) || (machine && only_the_machine(&r)),
            "cut at {cut}: exit {:?}: {err}\nfindings: {:#}",
            o.status.code(),
            r["findings"]
        );
        assert!(
            err.contains("did not end: no goodbye"),
            "cut at {cut}: {err}"
        );
        assert!(!err.contains("truncated"), "cut at {cut}: {err}");
        assert_eq!(r["inputs"][0]["frames"], frames, "cut at {cut}");
        assert_eq!(r["processes"][0]["ended"], false);
        let w = r["warnings"][0].as_str().unwrap();
        assert!(w.contains("after the process started"), "{w}");
        assert!(w.contains("UTC)"), "{w}");

        // Inside the next frame: truncated as well, same frames kept.
        let next = starts[starts.iter().position(|s| *s == cut).unwrap() + 1];
        let mid = cut + (next - cut) / 2;
        let (o, r) = report(dir.path(), &format!("mid{i}.rec"), &bytes[..mid]);
        let err = stderr(&o);
        assert!(
            o.status.code() == Some(0) || (machine && only_the_machine(&r)),
            "cut inside at {mid}: exit {:?}: {err}\nfindings: {:#}",
            o.status.code(),
            r["findings"]
        );
        assert!(err.contains("truncated"), "cut inside at {mid}: {err}");
        assert!(err.contains("did not end: no goodbye"), "{err}");
        assert_eq!(r["inputs"][0]["truncated"], true);
        assert_eq!(r["inputs"][0]["frames"], frames, "cut inside at {mid}");

        // Junk after the cut: damage, exit 2, the frames before it kept.
        let mut damaged = bytes[..cut].to_vec();
        damaged.extend_from_slice(junk);
        let (o, r) = report(dir.path(), &format!("junk{i}.rec"), &damaged);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "junk after {cut}: {err}");
        assert!(
            err.contains(&format!("unreadable past byte {cut}")),
            "{err}"
        );
        assert!(err.contains("did not end: no goodbye"), "{err}");
        assert_eq!(r["inputs"][0]["frames"], frames, "junk after {cut}");
        assert_eq!(r["inputs"][0]["truncated"], false);
    }
}

/// The replay's header says that the process did not end, and nothing when
/// it did.
#[test]
fn the_replay_header_says_the_process_did_not_end() {
    use awaitscope_tui::feed::{Feed, ReplayFeed};
    let bytes = real_recording();
    let (ends, _) = frame_ends(&bytes);
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.rec");
    std::fs::write(&whole, &bytes).unwrap();
    let (status, ok) = ReplayFeed::open(&whole, 1.0).unwrap().status();
    assert!(ok, "{status}");
    assert!(!status.contains("did not end"), "{status}");
    let cut = dir.path().join("cut.rec");
    std::fs::write(&cut, &bytes[..ends[ends.len() - 2]]).unwrap();
    let (status, ok) = ReplayFeed::open(&cut, 1.0).unwrap().status();
    assert!(!ok, "{status}");
    assert!(status.contains("did not end: no goodbye"), "{status}");
}
