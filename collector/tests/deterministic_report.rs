//! The report of a recording is the same, byte for byte, however often it
//! is made: the model's maps are seeded per map (so per run), and nothing
//! that reaches the report may depend on their iteration order.

use awaitscope_collector::ingest::recording;
use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::{FindingKind, Model, Report};
use awaitscope_wire::{CloseKind, WakeOp};

const MS: u64 = 1_000_000;

/// Many tasks of one group that end up alike: lost wakers and stuck tasks
/// with the same idle time (ties for the worst occurrence), more than a
/// finding lists, scanned while some are still running.
fn recording() -> Vec<u8> {
    let mut b = StreamBuilder::new(1, 0);
    b.hello("det", None, false);
    b.thread(0);
    let lost = TaskOpts::named("lost");
    let waiting = TaskOpts::named("waiting");
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let opts = if i % 3 == 0 { &waiting } else { &lost };
        let t = b.spawn(opts, None, i);
        tasks.push(t);
    }
    for (i, &t) in tasks.iter().enumerate() {
        // Those of `waiting` keep a waker: pending, not lost.
        let wakers = u32::from(i % 3 == 0);
        b.poll_whole(t, 1_000, 1_000 + 10 * MS, wakers);
    }
    // Scans happen as time passes (each second of process time).
    let m = b.resource("Mutex", "Sync", 7, 20 * MS);
    for k in 1..=5u64 {
        let t = tasks[(k * 7) as usize];
        b.waker(t, WakeOp::WakeByRef, None, k * 1_000 * MS);
        b.enter(t, k * 1_000 * MS + 1);
        b.lock(t, m, true, k * 1_000 * MS + 2);
        b.unlock(t, m, k * 1_000 * MS + 3);
        b.poll_end(t, k * 1_000 * MS + 4, 0);
    }
    b.close(tasks[1], CloseKind::Completed, 6_000 * MS);
    b.recording()
}

fn report_json(bytes: &[u8]) -> String {
    let mut m = Model::default();
    recording::load_reader(&mut m, "det.aws", bytes).unwrap();
    m.finish();
    serde_json::to_string_pretty(&Report::from_model(&m)).unwrap()
}

#[test]
fn reports_of_one_recording_are_identical() {
    let bytes = recording();
    let first = report_json(&bytes);
    for _ in 0..5 {
        assert!(report_json(&bytes) == first, "reports differ between runs");
    }
    // And what they say does not depend on the order of the maps: the
    // lost-waker finding lists the first tasks by id.
    let r: serde_json::Value = serde_json::from_str(&first).unwrap();
    let lost: Vec<&serde_json::Value> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == FindingKind::LostWaker.as_str())
        .collect();
    assert!(!lost.is_empty(), "{first}");
    let ids: Vec<u64> = lost[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 8, "{ids:?}");
}
