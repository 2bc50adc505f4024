//! A recording cut short (the producer killed mid-write) reads up to its last
//! complete frame, then reports `Truncated` at the offset of the cut frame.

mod common;

use std::io::{Seek, SeekFrom, Write};

use awaitscope_wire::*;
use common::*;
use proptest::prelude::*;

/// Writes `frames` with a `FrameWriter`; returns the bytes and the offset at
/// which the last frame starts.
fn recording(frames: &[Frame]) -> (Vec<u8>, usize) {
    let mut writer = FrameWriter::new(Vec::new()).unwrap();
    for f in &frames[..frames.len() - 1] {
        writer.write_frame(f).unwrap();
    }
    let last_start = writer.get_mut().len();
    writer.write_frame(frames.last().unwrap()).unwrap();
    (writer.into_inner(), last_start)
}

fn check_cuts(frames: &[Frame], read_in_pieces: &[usize]) {
    let n = frames.len();
    let (bytes, last) = recording(frames);
    assert!(bytes.len() - last > 4, "the last frame has a payload");

    // Cut exactly before the last frame: a clean end after N-1 frames.
    let (read, err) = read_all(&bytes[..last]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(read, frames[..n - 1]);

    for cut in last + 1..bytes.len() {
        let cut_bytes = &bytes[..cut];

        let (read, err) = read_all(cut_bytes);
        assert_eq!(read, frames[..n - 1], "cut at {cut}");
        match err {
            Some(DecodeError::Truncated { offset }) => {
                assert_eq!(offset, last as u64, "cut at {cut}");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }

        // The same through a reader that returns few bytes at a time.
        let mut reader =
            FrameReader::new(Chunked::new(cut_bytes, read_in_pieces.to_vec())).unwrap();
        for f in &frames[..n - 1] {
            assert_eq!(reader.next_frame().unwrap().as_ref(), Some(f));
        }
        assert_eq!(reader.offset(), last as u64);
        match reader.next_frame() {
            Err(e @ DecodeError::Truncated { .. }) => {
                assert!(e.to_string().contains(&last.to_string()), "{e}");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
        assert!(matches!(reader.next_frame(), Ok(None)));

        // Sans-IO: the whole frames decode, the rest waits for more bytes.
        let (read, end) = decode_all(&cut_bytes[Preamble::LEN..]);
        assert_eq!(read, frames[..n - 1], "cut at {cut}");
        assert_eq!(end.unwrap(), cut - last, "cut at {cut}");
    }

    // Uncut, everything reads.
    let (read, err) = read_all(&bytes);
    assert!(err.is_none());
    assert_eq!(read, frames);
}

#[test]
fn cut_inside_the_last_frame() {
    let frames = sample_frames();
    check_cuts(&frames, &[1]);
    check_cuts(&frames, &[3, 8]);
}

#[test]
fn cut_inside_the_only_frame() {
    for f in sample_frames() {
        check_cuts(&[f], &[2]);
    }
}

#[test]
fn cut_inside_each_sample_frame_as_last() {
    // Every kind of frame, as the frame that gets cut.
    let frames = sample_frames();
    for i in 1..frames.len() {
        check_cuts(&frames[..=i], &[5]);
    }
}

#[test]
fn cut_inside_the_header() {
    let bytes = stream(&sample_frames());
    assert!(matches!(
        FrameReader::new(&bytes[..0]),
        Err(DecodeError::Empty)
    ));
    for cut in 1..Preamble::LEN {
        assert!(
            matches!(
                FrameReader::new(&bytes[..cut]),
                Err(DecodeError::Truncated { offset: 0 })
            ),
            "cut at {cut}"
        );
    }
}

#[test]
fn recording_file_cut_short() {
    let frames = sample_frames();
    let mut file = tempfile::tempfile().unwrap();
    let mut writer = FrameWriter::new(&mut file).unwrap();
    for f in &frames {
        writer.write_frame(f).unwrap();
    }
    writer.flush().unwrap();
    let (bytes, last) = recording(&frames);
    assert_eq!(file.stream_position().unwrap(), bytes.len() as u64);
    // The process was killed three bytes into writing its last frame.
    file.set_len(last as u64 + 3).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut reader = FrameReader::new(std::io::BufReader::new(&mut file)).unwrap();
    let mut read = vec![];
    let err = loop {
        match reader.next_frame() {
            Ok(Some(f)) => read.push(f),
            Ok(None) => panic!("clean end"),
            Err(e) => break e,
        }
    };
    assert_eq!(read, frames[..frames.len() - 1]);
    assert!(matches!(err, DecodeError::Truncated { offset } if offset == last as u64));

    // Appending the rest completes it.
    file.seek(SeekFrom::End(0)).unwrap();
    file.write_all(&bytes[last + 3..]).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let read: Result<Vec<_>, _> = FrameReader::new(&mut file).unwrap().collect();
    assert_eq!(read.unwrap(), frames);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_recordings_cut_anywhere_in_the_last_frame(
        frames in prop::collection::vec(arb_frame(), 1..5),
        cut_frac in 0.0f64..1.0,
    ) {
        let (bytes, last) = recording(&frames);
        let len = bytes.len() - last;
        let cut = last + 1 + ((len - 1) as f64 * cut_frac) as usize;
        prop_assume!(cut < bytes.len());
        let (read, err) = read_all(&bytes[..cut]);
        prop_assert_eq!(&read[..], &frames[..frames.len() - 1]);
        prop_assert!(
            matches!(err, Some(DecodeError::Truncated { offset }) if offset == last as u64),
            "{:?}", err
        );
    }
}
