//! Decoding is total: whatever the bytes, the decoders return frames or an
//! error, never panic, and finish. The sans-IO decoder and `FrameReader`
//! agree on every input.

mod common;

use awaitscope_wire::*;
use common::*;
use proptest::prelude::*;

/// Things a consumer does with a decoded frame; none may panic.
fn use_frame(f: &Frame) {
    assert_eq!(
        validate(f),
        Ok(()),
        "the decoder let a frame over the caps through"
    );
    if let Body::Dropped(d) = &f.body {
        let _ = d.total();
    }
    let _ = format!("{f:?}");
    // What was decoded can be encoded again, to the same bytes' worth of frame.
    let mut buf = Vec::new();
    encode_frame(f, &mut buf).unwrap();
    let (again, used) = decode_frame(&buf, 0).unwrap().unwrap();
    assert_eq!(used, buf.len());
    // `==` fails on NaN floats, so compare the encodings.
    let mut buf2 = Vec::new();
    encode_frame(&again, &mut buf2).unwrap();
    assert_eq!(buf, buf2);
}

/// Runs both decoders over `bytes` (a whole stream, preamble included) and
/// checks that they agree.
fn check_stream(bytes: &[u8]) {
    let (read, err) = read_all(bytes);
    read.iter().for_each(use_frame);

    match Preamble::parse(bytes) {
        Ok(Some(_)) => {}
        Ok(None) => {
            assert!(read.is_empty());
            let expected_empty = bytes.is_empty();
            match err {
                Some(DecodeError::Empty) => assert!(expected_empty),
                Some(DecodeError::Truncated { offset: 0 }) => assert!(!expected_empty),
                other => panic!("short header: {other:?}"),
            }
            return;
        }
        Err(e) => {
            assert!(read.is_empty());
            assert_eq!(
                std::mem::discriminant(&e),
                std::mem::discriminant(err.as_ref().unwrap())
            );
            return;
        }
    }

    let (decoded, end) = decode_all(&bytes[Preamble::LEN..]);
    assert_eq!(decoded.len(), read.len());
    for (a, b) in decoded.iter().zip(&read) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
    match (end, err) {
        (Ok(0), None) => {}
        (Ok(rest), Some(DecodeError::Truncated { offset })) => {
            assert!(rest > 0);
            assert_eq!(offset as usize, bytes.len() - rest);
        }
        (
            Err(DecodeError::FrameTooLarge { len, offset }),
            Some(DecodeError::FrameTooLarge {
                len: l2,
                offset: o2,
            }),
        ) => {
            assert!(len > MAX_FRAME_LEN);
            assert_eq!((len, offset), (l2, o2));
        }
        (
            Err(DecodeError::Malformed { offset, reason }),
            Some(DecodeError::Malformed {
                offset: o2,
                reason: r2,
            }),
        ) => {
            assert_eq!((offset, reason), (o2, r2));
        }
        (end, err) => panic!("decoders disagree: sans-IO {end:?}, reader {err:?}"),
    }
}

/// A stream of valid frames with a preamble.
fn arb_stream() -> impl Strategy<Value = (Vec<Frame>, Vec<u8>)> {
    prop::collection::vec(arb_frame(), 1..5).prop_map(|frames| {
        let bytes = stream(&frames);
        (frames, bytes)
    })
}

/// A frame with a correct length prefix and an arbitrary payload, so that
/// the payload decoder (not the framing) sees the garbage.
fn arb_raw_frame() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(|payload| {
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend(payload);
        out
    })
}

/// The direct reading of batches (`decode_frame`) and serde's
/// (`decode_frame_serde`) give the same frame, or the same error.
fn both_paths_agree(buf: &[u8]) -> Result<(), TestCaseError> {
    let direct = decode_frame(buf, 3);
    let serde = decode_frame_serde(buf, 3);
    match (&direct, &serde) {
        (Ok(Some((a, n))), Ok(Some((b, m)))) => {
            prop_assert_eq!(n, m);
            // `==` fails on NaN floats, so compare the encodings.
            let (mut x, mut y) = (Vec::new(), Vec::new());
            encode_frame(a, &mut x).unwrap();
            encode_frame(b, &mut y).unwrap();
            prop_assert_eq!(x, y);
        }
        _ => prop_assert_eq!(format!("{direct:?}"), format!("{serde:?}")),
    }
    Ok(())
}

/// A batch of events (mostly the frequent ones, which are read directly),
/// encoded, with its payload changed at one place: replaced by a byte, cut
/// short, or grown by a byte, length prefix kept right.
fn arb_mutated_batch() -> impl Strategy<Value = Vec<u8>> {
    let event = prop_oneof![3 => arb_frequent_event(), 1 => arb_event()];
    (
        any::<u32>(),
        any::<u64>(),
        prop::collection::vec(event, 0..12),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0u8..4,
    )
        .prop_map(|(pid, seq, events, at, byte, how)| {
            let f = Frame {
                process: ProcessKey {
                    pid,
                    start_unix_ns: seq / 3,
                },
                seq,
                body: Body::Events(events),
            };
            let mut buf = Vec::new();
            encode_frame(&f, &mut buf).unwrap();
            let mut payload = buf.split_off(4);
            let i = at.index(payload.len());
            match how {
                0 => payload[i] = byte,
                1 => payload.truncate(i),
                2 => payload.insert(i, byte),
                _ => {}
            }
            let mut out = (payload.len() as u32).to_le_bytes().to_vec();
            out.extend(payload);
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_frame_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), offset: u64) {
        match decode_frame(&bytes, offset) {
            Ok(Some((f, used))) => {
                prop_assert!((4..=bytes.len()).contains(&used));
                use_frame(&f);
            }
            Ok(None) => {
                // Only when the bytes could still become a whole frame.
                if bytes.len() >= 4 {
                    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
                    prop_assert!(bytes.len() < 4 + len);
                }
            }
            Err(DecodeError::FrameTooLarge { offset: o, .. })
            | Err(DecodeError::Malformed { offset: o, .. }) => prop_assert_eq!(o, offset),
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
    }

    #[test]
    fn decode_frame_never_panics_on_garbage_payloads(frame in arb_raw_frame()) {
        match decode_frame(&frame, 10) {
            Ok(Some((f, used))) => {
                prop_assert_eq!(used, frame.len());
                use_frame(&f);
            }
            Ok(None) => prop_assert!(false, "whole frame reported incomplete"),
            Err(DecodeError::Malformed { offset: 10, .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
    }

    #[test]
    fn direct_and_serde_reading_agree_on_garbage_payloads(frame in arb_raw_frame()) {
        both_paths_agree(&frame)?;
    }

    #[test]
    fn direct_and_serde_reading_agree_on_damaged_batches(frame in arb_mutated_batch()) {
        both_paths_agree(&frame)?;
    }

    #[test]
    fn direct_and_serde_reading_agree_on_any_frame(f in arb_frame()) {
        let mut buf = Vec::new();
        encode_frame(&f, &mut buf).unwrap();
        both_paths_agree(&buf)?;
    }

    #[test]
    fn preamble_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
        match Preamble::parse(&bytes) {
            Ok(Some(p)) => {
                prop_assert_eq!(p.version, VERSION);
                prop_assert_eq!(&bytes[..Preamble::LEN], &preamble()[..]);
            }
            Ok(None) => prop_assert!(bytes.len() < Preamble::LEN && preamble().starts_with(&bytes)),
            Err(DecodeError::BadMagic) => {
                let n = bytes.len().min(8);
                prop_assert_ne!(&bytes[..n], &MAGIC[..n]);
            }
            Err(DecodeError::UnsupportedVersion { found, supported }) => {
                prop_assert_eq!(&bytes[..8], &MAGIC[..]);
                prop_assert_ne!(found, supported);
            }
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
    }

    #[test]
    fn preamble_parse_of_magic_and_any_version(version: u16, rest in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend(rest);
        match Preamble::parse(&bytes) {
            Ok(Some(p)) => {
                prop_assert_eq!(p.version, version);
                prop_assert!((MIN_VERSION..=VERSION).contains(&version));
            }
            Err(DecodeError::UnsupportedVersion { found, supported }) => {
                prop_assert_eq!((found, supported), (version, VERSION));
                prop_assert!(!(MIN_VERSION..=VERSION).contains(&version));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn frame_reader_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_stream(&bytes);
    }

    #[test]
    fn frame_reader_never_panics_after_a_valid_preamble(rest in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = preamble().to_vec();
        bytes.extend(rest);
        check_stream(&bytes);
    }

    #[test]
    fn frame_reader_never_panics_on_garbage_frames(frames in prop::collection::vec(arb_raw_frame(), 0..6)) {
        let mut bytes = preamble().to_vec();
        bytes.extend(frames.concat());
        check_stream(&bytes);
    }

    #[test]
    fn flipped_bytes_give_frames_or_an_error(
        (frames, bytes) in arb_stream(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let mut bytes = bytes;
        for (at, mask) in &flips {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        check_stream(&bytes);
        // Frames before the first damaged one still decode.
        let (read, _) = read_all(&bytes);
        let first_flip = flips.iter().map(|(at, _)| at.index(bytes.len())).min().unwrap();
        let intact = stream(&frames);
        let mut end = Preamble::LEN;
        let mut whole = 0;
        for f in &frames {
            let mut buf = Vec::new();
            encode_frame(f, &mut buf).unwrap();
            end += buf.len();
            if end <= first_flip { whole += 1 } else { break }
        }
        prop_assert!(read.len() >= whole, "{} < {}", read.len(), whole);
        prop_assert_eq!(&read[..whole], &frames[..whole]);
        prop_assert_eq!(intact.len(), bytes.len());
    }

    #[test]
    fn cut_streams_give_frames_or_an_error((frames, bytes) in arb_stream(), cut: prop::sample::Index) {
        let cut = cut.index(bytes.len() + 1);
        check_stream(&bytes[..cut]);
        let (read, _) = read_all(&bytes[..cut]);
        prop_assert!(read.len() <= frames.len());
        prop_assert_eq!(&read[..], &frames[..read.len()]);
    }

    #[test]
    fn spliced_streams_give_frames_or_an_error(
        (_, a) in arb_stream(),
        (_, b) in arb_stream(),
        cut_a: prop::sample::Index,
        cut_b: prop::sample::Index,
    ) {
        // Part of one stream followed by part of another, as after a lost
        // chunk in the middle of a recording.
        let mut bytes = a[..cut_a.index(a.len() + 1)].to_vec();
        bytes.extend_from_slice(&b[cut_b.index(b.len() + 1)..]);
        check_stream(&bytes);
    }
}
