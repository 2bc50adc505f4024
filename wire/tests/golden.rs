//! The encoding is pinned by files: today's types must read those bytes and
//! write exactly the same bytes again. The version-2 files were written
//! before `Event` changed shape in Rust (its large variants boxed) and before
//! version 3 added `Stall`, the version-3 files before version 4 added
//! `NativeStack`: they must still decode, and their frames encode to the
//! same bytes after the preamble, and the version-4 files (before version 5
//! added `Handover`), version-5 files (before version 6 added
//! `WaitStack`) and version-6 files (before version 7 added `WakeStack`)
//! likewise. Regenerate the version-7 files only on a
//! deliberate format change (`cargo test -p awaitscope-wire --test golden
//! -- --ignored`), which also needs a new format version.

mod common;

use awaitscope_wire::*;
use common::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/samples_v7.aws");
const ARBITRARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/arbitrary_v7.aws");
const SAMPLES_V6: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/samples_v6.aws");
const ARBITRARY_V6: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/arbitrary_v6.aws");
const SAMPLES_V5: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/samples_v5.aws");
const ARBITRARY_V5: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/arbitrary_v5.aws");
const SAMPLES_V4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/samples_v4.aws");
const ARBITRARY_V4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/arbitrary_v4.aws");
const SAMPLES_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/samples_v3.aws");
const ARBITRARY_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/arbitrary_v3.aws");
const SAMPLES_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/samples_v2.aws");
const ARBITRARY_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/arbitrary_v2.aws");

/// 400 arbitrary valid frames from a fixed seed.
fn arbitrary_frames() -> Vec<Frame> {
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    (0..400)
        .map(|_| arb_frame().new_tree(&mut runner).expect("tree").current())
        .collect()
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
#[ignore = "writes the golden files"]
fn write_golden_files() {
    std::fs::write(SAMPLES, stream(&sample_frames())).unwrap();
    std::fs::write(ARBITRARY, stream(&arbitrary_frames())).unwrap();
}

#[test]
fn sample_frames_encode_to_the_pinned_bytes() {
    let pinned = read(SAMPLES);
    assert_eq!(stream(&sample_frames()), pinned);
    let (frames, err) = read_all(&pinned);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames, sample_frames());
}

#[test]
fn pinned_arbitrary_frames_decode_and_encode_to_the_same_bytes() {
    let pinned = read(ARBITRARY);
    let (frames, err) = read_all(&pinned);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames.len(), 400);
    assert_eq!(stream(&frames), pinned);
    // The strategies still make the same frames from the same seed.
    assert_eq!(frames, arbitrary_frames());
}

/// An older version's file decodes, and its frames encode to its bytes
/// again.
fn old_version_reads_and_encodes_the_same(path: &str, version: u16) -> Vec<Frame> {
    let pinned = read(path);
    assert_eq!(&pinned[8..10], &version.to_le_bytes());
    let (frames, err) = read_all(&pinned);
    assert!(err.is_none(), "{err:?}");
    assert!(!frames.is_empty());
    assert_eq!(stream(&frames)[Preamble::LEN..], pinned[Preamble::LEN..]);
    frames
}

/// The events of `frames`, without those `newer` picks (the events of
/// versions after a file's).
fn events_without(frames: Vec<Frame>, newer: fn(&Event) -> bool) -> Vec<Event> {
    frames
        .into_iter()
        .filter_map(|f| match f.body {
            Body::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .filter(|e| !newer(e))
        .collect()
}

/// An older version's samples are today's samples without the events of
/// the versions after it (`newer`).
fn old_samples_are_todays_without(path: &str, version: u16, newer: fn(&Event) -> bool) {
    let frames = old_version_reads_and_encodes_the_same(path, version);
    assert_eq!(
        events_without(frames, newer),
        events_without(sample_frames(), newer)
    );
}

#[test]
fn version_2_samples_still_decode() {
    old_samples_are_todays_without(SAMPLES_V2, 2, |e| {
        matches!(
            e,
            Event::Stall(_)
                | Event::NativeStack(_)
                | Event::Handover(_)
                | Event::WaitStack(_)
                | Event::WakeStack(_)
        )
    });
}

#[test]
fn version_2_arbitrary_frames_still_decode() {
    let frames = old_version_reads_and_encodes_the_same(ARBITRARY_V2, 2);
    assert_eq!(frames.len(), 400);
}

#[test]
fn version_3_samples_still_decode() {
    old_samples_are_todays_without(SAMPLES_V3, 3, |e| {
        matches!(
            e,
            Event::NativeStack(_) | Event::Handover(_) | Event::WaitStack(_) | Event::WakeStack(_)
        )
    });
}

#[test]
fn version_3_arbitrary_frames_still_decode() {
    let frames = old_version_reads_and_encodes_the_same(ARBITRARY_V3, 3);
    assert_eq!(frames.len(), 400);
}

#[test]
fn version_4_samples_still_decode() {
    old_samples_are_todays_without(SAMPLES_V4, 4, |e| {
        matches!(
            e,
            Event::Handover(_) | Event::WaitStack(_) | Event::WakeStack(_)
        )
    });
}

#[test]
fn version_4_arbitrary_frames_still_decode() {
    let frames = old_version_reads_and_encodes_the_same(ARBITRARY_V4, 4);
    assert_eq!(frames.len(), 400);
}

#[test]
fn version_5_samples_still_decode() {
    old_samples_are_todays_without(SAMPLES_V5, 5, |e| {
        matches!(e, Event::WaitStack(_) | Event::WakeStack(_))
    });
}

#[test]
fn version_5_arbitrary_frames_still_decode() {
    let frames = old_version_reads_and_encodes_the_same(ARBITRARY_V5, 5);
    assert_eq!(frames.len(), 400);
}

#[test]
fn version_6_samples_still_decode() {
    old_samples_are_todays_without(SAMPLES_V6, 6, |e| matches!(e, Event::WakeStack(_)));
}

#[test]
fn version_6_arbitrary_frames_still_decode() {
    let frames = old_version_reads_and_encodes_the_same(ARBITRARY_V6, 6);
    assert_eq!(frames.len(), 400);
}
