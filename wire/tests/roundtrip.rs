//! Frames of every variant survive encoding and decoding, through both the
//! sans-IO functions and the reader/writer pair, however the bytes arrive.

mod common;

use std::collections::BTreeSet;

use awaitscope_wire::*;
use common::*;
use proptest::prelude::*;

#[test]
fn samples_cover_every_variant() {
    let frames = sample_frames();
    let bodies: BTreeSet<_> = frames.iter().map(|f| body_variant(&f.body)).collect();
    assert_eq!(bodies.len(), BODY_VARIANTS, "{bodies:?}");
    let events: BTreeSet<_> = frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Events(es) => Some(es),
            _ => None,
        })
        .flatten()
        .map(event_variant)
        .collect();
    assert_eq!(events.len(), EVENT_VARIANTS, "{events:?}");
}

#[test]
fn preamble_is_magic_then_version() {
    let p = preamble();
    assert_eq!(&p[..8], &MAGIC);
    assert_eq!(u16::from_le_bytes([p[8], p[9]]), VERSION);
    assert_eq!(p.len(), Preamble::LEN);
    assert_eq!(
        Preamble::parse(&p).unwrap(),
        Some(Preamble { version: VERSION })
    );
}

#[test]
fn each_frame_round_trips_with_encode_and_decode_frame() {
    for frame in sample_frames() {
        let mut buf = Vec::new();
        encode_frame(&frame, &mut buf).unwrap();
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, buf.len(), "length prefix counts the payload");
        let (decoded, used) = decode_frame(&buf, 0).unwrap().expect("whole frame");
        assert_eq!(used, buf.len());
        assert_eq!(decoded, frame);
        // Bytes after the frame are not consumed.
        buf.extend_from_slice(&[0xAB; 7]);
        let (decoded, used2) = decode_frame(&buf, 0).unwrap().unwrap();
        assert_eq!((decoded, used2), (frame, used));
    }
}

#[test]
fn encode_frame_appends() {
    let frames = sample_frames();
    let mut buf = b"prefix".to_vec();
    encode_frame(&frames[0], &mut buf).unwrap();
    assert_eq!(&buf[..6], b"prefix");
    let (f, used) = decode_frame(&buf[6..], 6).unwrap().unwrap();
    assert_eq!(f, frames[0]);
    assert_eq!(used, buf.len() - 6);
}

#[test]
fn decode_frame_needs_the_whole_frame() {
    for frame in sample_frames() {
        let mut buf = Vec::new();
        encode_frame(&frame, &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(
                matches!(decode_frame(&buf[..cut], 0), Ok(None)),
                "prefix of {cut}/{} bytes of {frame:?}",
                buf.len()
            );
        }
    }
}

/// Decodes a stream that arrives in pieces, the way a network client would:
/// append each piece to a buffer, then take out every whole frame.
fn decode_incrementally(bytes: &[u8], pieces: &[usize]) -> Vec<Frame> {
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    let mut preamble_seen = false;
    let mut offset = 0u64;
    let mut rest = bytes;
    let mut piece = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = (*piece.next().unwrap()).clamp(1, rest.len());
        pending.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if !preamble_seen {
            match Preamble::parse(&pending).unwrap() {
                None => continue,
                Some(p) => {
                    assert_eq!(p.version, VERSION);
                    pending.drain(..Preamble::LEN);
                    offset = Preamble::LEN as u64;
                    preamble_seen = true;
                }
            }
        }
        while let Some((f, used)) = decode_frame(&pending, offset).unwrap() {
            frames.push(f);
            pending.drain(..used);
            offset += used as u64;
        }
    }
    assert!(preamble_seen);
    assert!(pending.is_empty(), "{} bytes left over", pending.len());
    assert_eq!(offset, bytes.len() as u64);
    frames
}

#[test]
fn stream_round_trips_byte_by_byte() {
    let frames = sample_frames();
    let bytes = stream(&frames);
    assert_eq!(decode_incrementally(&bytes, &[1]), frames);
}

#[test]
fn stream_round_trips_in_odd_pieces() {
    let frames = sample_frames();
    let bytes = stream(&frames);
    for pieces in [
        &[2][..],
        &[3, 5, 7],
        &[13, 1, 1],
        &[64],
        &[1000],
        &[4, 4, 9],
    ] {
        assert_eq!(decode_incrementally(&bytes, pieces), frames, "{pieces:?}");
    }
}

#[test]
fn frame_writer_and_frame_reader_round_trip() {
    let frames = sample_frames();
    let mut writer = FrameWriter::new(Vec::new()).unwrap();
    for f in &frames {
        writer.write_frame(f).unwrap();
    }
    writer.flush().unwrap();
    let bytes = writer.into_inner();
    // The writer and the free functions produce the same bytes.
    assert_eq!(bytes, stream(&frames));

    let mut reader = FrameReader::new(&bytes[..]).unwrap();
    assert_eq!(reader.offset(), Preamble::LEN as u64);
    let mut offsets = vec![];
    let mut read = vec![];
    while let Some(f) = reader.next_frame().unwrap() {
        read.push(f);
        offsets.push(reader.offset());
    }
    assert_eq!(read, frames);
    assert_eq!(reader.offset(), bytes.len() as u64);
    assert!(reader.next_frame().unwrap().is_none(), "stays at the end");

    // The offsets the reader reports are where each frame ends.
    let mut end = Preamble::LEN as u64;
    let ends: Vec<u64> = frames
        .iter()
        .map(|f| {
            let mut buf = Vec::new();
            encode_frame(f, &mut buf).unwrap();
            end += buf.len() as u64;
            end
        })
        .collect();
    assert_eq!(offsets, ends);
    let (decoded, rest) = decode_all(&bytes[Preamble::LEN..]);
    assert_eq!(decoded, frames);
    assert_eq!(rest.unwrap(), 0);

    // As an iterator.
    let collected: Result<Vec<_>, _> = FrameReader::new(&bytes[..]).unwrap().collect();
    assert_eq!(collected.unwrap(), frames);
}

#[test]
fn frame_reader_handles_short_reads_and_interrupts() {
    let frames = sample_frames();
    let bytes = stream(&frames);
    for sizes in [vec![1], vec![3, 1, 7], vec![4096]] {
        let reader = FrameReader::new(Chunked::new(&bytes, sizes.clone())).unwrap();
        let read: Vec<_> = reader.map(Result::unwrap).collect();
        assert_eq!(read, frames, "{sizes:?}");
    }
}

#[test]
fn frame_writer_to_a_file_and_back() {
    let frames = sample_frames();
    let mut file = tempfile::tempfile().unwrap();
    {
        let mut writer = FrameWriter::new(std::io::BufWriter::new(&mut file)).unwrap();
        for f in &frames {
            writer.write_frame(f).unwrap();
        }
        writer.flush().unwrap();
    }
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0)).unwrap();
    let reader = FrameReader::new(std::io::BufReader::new(file)).unwrap();
    let read: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(read, frames);
}

#[test]
fn empty_stream_has_no_frames() {
    let bytes = preamble();
    let mut reader = FrameReader::new(&bytes[..]).unwrap();
    assert!(reader.next_frame().unwrap().is_none());
}

#[test]
fn strings_at_the_cap_round_trip() {
    let at_cap = "a".repeat(limits::MAX_STR_LEN);
    let mut truncated = "ß".repeat(limits::MAX_STR_LEN);
    limits::truncate(&mut truncated);
    for s in [at_cap, truncated] {
        let f = frame(
            1,
            Body::Events(vec![Event::Panic(Box::new(Panic {
                task: None,
                span: None,
                message: s.clone(),
                file: Some(s.clone()),
                line: None,
                ts: 1,
                trace: Vec::new(),
            }))]),
        );
        let mut buf = Vec::new();
        encode_frame(&f, &mut buf).unwrap();
        assert_eq!(decode_frame(&buf, 0).unwrap().unwrap().0, f);
    }
}

#[test]
fn fields_and_batch_at_the_cap_round_trip() {
    let fields: Vec<Field> = (0..limits::MAX_FIELDS as u16)
        .map(|index| Field {
            index,
            value: Value::U64(index.into()),
        })
        .collect();
    let mut events = vec![Event::Record {
        span: SpanId(1),
        fields,
    }];
    events.extend((1..limits::MAX_BATCH as u64).map(|ts| Event::Enter {
        span: SpanId(ts),
        ts,
    }));
    let f = frame(0, Body::Events(events));
    let bytes = stream(std::slice::from_ref(&f));
    let read: Vec<_> = FrameReader::new(&bytes[..])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(read, vec![f]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_frames_round_trip(frames in prop::collection::vec(arb_frame(), 1..6)) {
        for f in &frames {
            prop_assert_eq!(validate(f), Ok(()));
        }
        let bytes = stream(&frames);
        let (decoded, rest) = decode_all(&bytes[Preamble::LEN..]);
        prop_assert_eq!(&decoded, &frames);
        prop_assert_eq!(rest.unwrap(), 0);

        let mut writer = FrameWriter::new(Vec::new()).unwrap();
        for f in &frames {
            writer.write_frame(f).unwrap();
        }
        let written = writer.into_inner();
        prop_assert_eq!(&written, &bytes);
        let (read, err) = read_all(&written);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(&read, &frames);
    }

    #[test]
    fn random_frames_round_trip_in_random_pieces(
        frames in prop::collection::vec(arb_frame(), 1..4),
        pieces in prop::collection::vec(1usize..64, 1..8),
    ) {
        let bytes = stream(&frames);
        prop_assert_eq!(decode_incrementally(&bytes, &pieces), frames.clone());
        let reader = FrameReader::new(Chunked::new(&bytes, pieces)).unwrap();
        let read: Result<Vec<_>, _> = reader.collect();
        prop_assert_eq!(read.unwrap(), frames);
    }

    #[test]
    fn every_strict_prefix_of_a_frame_is_incomplete(f in arb_frame()) {
        let mut buf = Vec::new();
        encode_frame(&f, &mut buf).unwrap();
        for cut in 0..buf.len() {
            prop_assert!(matches!(decode_frame(&buf[..cut], 0), Ok(None)));
        }
        prop_assert_eq!(decode_frame(&buf, 0).unwrap(), Some((f, buf.len())));
    }
}

#[test]
fn dropped_counts_from_the_wire_total_without_overflow() {
    // Counts come from another process: any value must be summable.
    let f = frame(
        9,
        Body::Dropped(DropCounts {
            buffer_full: u64::MAX - 1,
            disconnected: 5,
            write_failed: u64::MAX,
        }),
    );
    let bytes = stream(std::slice::from_ref(&f));
    let (read, err) = read_all(&bytes);
    assert!(err.is_none());
    assert_eq!(read, vec![f]);
    let Body::Dropped(d) = &read[0].body else {
        unreachable!()
    };
    assert_eq!(d.total(), u64::MAX);
}

/// Version-1 recordings (written before `PollEnd` existed) still read: their
/// events are a subset of version 2's, encoded the same way.
#[test]
fn version_1_streams_still_read() {
    let frames: Vec<Frame> = sample_frames()
        .into_iter()
        .map(|mut f| {
            if let Body::Events(es) = &mut f.body {
                es.retain(|e| {
                    !matches!(
                        e,
                        Event::PollEnd { .. }
                            | Event::Poll { .. }
                            | Event::Wake {
                                op: WakeOp::LastDrop,
                                ..
                            }
                    )
                });
            }
            f
        })
        .collect();
    let mut bytes = stream(&frames);
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    let mut reader = FrameReader::new(&bytes[..]).unwrap();
    assert_eq!(reader.version(), 1);
    let mut read = Vec::new();
    while let Some(f) = reader.next_frame().unwrap() {
        read.push(f);
    }
    assert_eq!(read, frames);
}

/// Builds a frame of `events` event by event and checks it is byte for
/// byte the frame `encode_frame` (serde and postcard) makes of them.
fn check_events_frame(
    events: Vec<Event>,
    process: ProcessKey,
    seq: u64,
) -> Result<(), TestCaseError> {
    let mut built = EventsFrame::new();
    for e in &events {
        built.push(e).unwrap();
    }
    prop_assert_eq!(built.len(), events.len());
    let mut out = vec![7u8];
    built.finish(process, seq, &mut out).unwrap();
    prop_assert!(built.is_empty());
    let mut expected = vec![7u8];
    encode_frame(
        &Frame {
            process,
            seq,
            body: Body::Events(events),
        },
        &mut expected,
    )
    .unwrap();
    prop_assert_eq!(out, expected);
    Ok(())
}

proptest! {
    /// A frame built event by event is byte for byte the frame
    /// `encode_frame` makes of the same events.
    #[test]
    fn events_frame_matches_encode_frame(
        events in prop::collection::vec(arb_event(), 1..40),
        pid: u32,
        start: u64,
        seq: u64,
    ) {
        check_events_frame(events, ProcessKey { pid, start_unix_ns: start }, seq)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    /// The same for the events encoded without serde, with integers of
    /// every varint length.
    #[test]
    fn directly_encoded_events_match_postcard(
        events in prop::collection::vec(arb_frequent_event(), 1..8),
        seq: u64,
    ) {
        check_events_frame(events, ProcessKey { pid: 1, start_unix_ns: 2 }, seq)?;
    }
}

#[test]
fn events_frame_refuses_what_would_exceed_the_cap() {
    let big = Event::Log(Box::new(Log {
        callsite: 1,
        span: None,
        task: None,
        ts: 0,
        fields: (0..limits::MAX_FIELDS as u16)
            .map(|index| Field {
                index,
                value: Value::Str("x".repeat(limits::MAX_STR_LEN)),
            })
            .collect(),
        trace: vec!["y".repeat(limits::MAX_STR_LEN); limits::MAX_TRACE],
    }));
    let mut f = EventsFrame::new();
    let mut pushed = 0;
    loop {
        match f.push(&big) {
            Ok(()) => pushed += 1,
            Err(EncodeError::FrameTooLarge(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(pushed >= 1);
    let before = f.bytes();
    assert!(matches!(f.push(&big), Err(EncodeError::FrameTooLarge(_))));
    assert_eq!(
        f.bytes(),
        before,
        "a refused event leaves the frame as it was"
    );
    let mut out = Vec::new();
    f.finish(
        ProcessKey {
            pid: 1,
            start_unix_ns: 2,
        },
        3,
        &mut out,
    )
    .unwrap();
    let (frame, used) = decode_frame(&out, 0).unwrap().unwrap();
    assert_eq!(used, out.len());
    match frame.body {
        Body::Events(es) => assert_eq!(es.len(), pushed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn recycled_event_vectors_are_reused_and_decode_the_same() {
    let frames = sample_frames();
    let bytes = stream(&frames);
    // Decode twice, giving each frame back: the second pass fills the
    // vectors of the first and decodes the same frames.
    for _ in 0..2 {
        let mut reader = FrameReader::new(&bytes[..]).unwrap();
        let mut n = 0;
        while let Some(f) = reader.next_frame().unwrap() {
            assert_eq!(f, frames[n]);
            n += 1;
            recycle(f);
        }
        assert_eq!(n, frames.len());
    }
    // The spare is used: a batch decoded after one was given back lands in
    // its allocation.
    let batch = frames
        .iter()
        .find(|f| matches!(&f.body, Body::Events(e) if !e.is_empty()))
        .unwrap();
    let mut buf = Vec::new();
    encode_frame(batch, &mut buf).unwrap();
    let (first, _) = decode_frame(&buf, 0).unwrap().unwrap();
    let Body::Events(events) = &first.body else {
        unreachable!()
    };
    let ptr = events.as_ptr();
    recycle(first);
    let (second, _) = decode_frame(&buf, 0).unwrap().unwrap();
    let Body::Events(events) = &second.body else {
        unreachable!()
    };
    assert_eq!(events.as_ptr(), ptr);
    assert_eq!(&second, batch);
}

/// A span read into the box of one given back reads its string fields
/// into the strings that box held (no allocation per string), and reads
/// whole: fields fewer or more than the old span's, of other types, and
/// strings longer than the old ones.
#[test]
fn span_fields_are_read_over_those_of_a_recycled_span() {
    let span = |id: u64, fields: Vec<Field>| Frame {
        process: ProcessKey {
            pid: 1,
            start_unix_ns: 2,
        },
        seq: id,
        body: Body::Events(vec![Event::SpanNew(Box::new(SpanNew {
            id: SpanId(id),
            callsite: 3,
            parent: None,
            ctx_task: None,
            ctx_span: None,
            ts: id,
            fields,
        }))]),
    };
    let s = |index: u16, v: &str| Field {
        index,
        value: Value::Str(v.to_string()),
    };
    let frames = [
        span(1, vec![s(0, "blocking"), s(1, "src/main.rs"), s(2, "x")]),
        span(2, vec![s(0, "task"), s(1, "src/lib.rs")]),
        span(
            3,
            vec![
                Field {
                    index: 0,
                    value: Value::U64(7),
                },
                s(1, "src/a/much/longer/path/than/before.rs"),
                s(2, "y"),
                s(5, "z"),
            ],
        ),
    ];
    let strings = |f: &Frame| -> Vec<*const u8> {
        let Body::Events(e) = &f.body else {
            unreachable!()
        };
        let Event::SpanNew(n) = &e[0] else {
            unreachable!()
        };
        n.fields
            .iter()
            .filter_map(|f| match &f.value {
                Value::Str(s) => Some(s.as_ptr()),
                _ => None,
            })
            .collect()
    };
    let mut buf = Vec::new();
    encode_frame(&frames[0], &mut buf).unwrap();
    let (first, _) = decode_frame(&buf, 0).unwrap().unwrap();
    let old = strings(&first);
    recycle(first);
    buf.clear();
    encode_frame(&frames[1], &mut buf).unwrap();
    let (second, _) = decode_frame(&buf, 0).unwrap().unwrap();
    assert_eq!(second, frames[1]);
    assert_eq!(strings(&second), old[..2], "read into the old strings");
    recycle(second);
    for f in &frames {
        buf.clear();
        encode_frame(f, &mut buf).unwrap();
        let (d, _) = decode_frame(&buf, 0).unwrap().unwrap();
        assert_eq!(&d, f);
        recycle(d);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Frames decoded into the vectors and boxes of frames given back
    /// decode as into new ones: nothing of the old frames shows through.
    #[test]
    fn frames_decoded_after_recycled_ones_are_intact(
        frames in prop::collection::vec(arb_frame(), 1..8),
    ) {
        let bytes = stream(&frames);
        let mut reader = FrameReader::new(&bytes[..]).unwrap();
        let mut n = 0;
        while let Some(f) = reader.next_frame().unwrap() {
            prop_assert_eq!(&f, &frames[n]);
            n += 1;
            recycle(f);
        }
        prop_assert_eq!(n, frames.len());
        // Again, from the other end: other frames land in the spares.
        let rev: Vec<Frame> = frames.into_iter().rev().collect();
        let (decoded, rest) = decode_all(&stream(&rev)[Preamble::LEN..]);
        prop_assert_eq!(decoded, rev);
        prop_assert_eq!(rest.unwrap(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A `SpanNewRef` encodes byte for byte as the owned `Event::SpanNew`,
    /// alone and among other events of a frame.
    #[test]
    fn borrowed_span_new_encodes_as_the_owned_event(
        id in arb_span(),
        callsite in any::<u32>(),
        parent in prop::option::of(arb_span()),
        ctx_task in prop::option::of(arb_span()),
        ctx_span in prop::option::of(arb_span()),
        ts in any::<u64>(),
        fields in arb_fields(),
    ) {
        let owned = Event::SpanNew(Box::new(SpanNew {
            id, callsite, parent, ctx_task, ctx_span, ts, fields: fields.clone(),
        }));
        let borrowed = SpanNewRef { id, callsite, parent, ctx_task, ctx_span, ts, fields: &fields };
        prop_assert_eq!(
            postcard::to_stdvec(&borrowed).unwrap(),
            postcard::to_stdvec(&owned).unwrap()
        );
        let other = Event::Enter { span: id, ts };
        let key = ProcessKey { pid: 7, start_unix_ns: 9 };
        let (mut a, mut b) = (EventsFrame::new(), EventsFrame::new());
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        a.push(&other).unwrap();
        a.push(&owned).unwrap();
        a.finish(key, 3, &mut out_a).unwrap();
        b.push(&other).unwrap();
        b.push(&borrowed).unwrap();
        b.finish(key, 3, &mut out_b).unwrap();
        prop_assert_eq!(&out_a, &out_b);
        let (decoded, _) = decode_frame(&out_b, 0).unwrap().unwrap();
        let Body::Events(events) = decoded.body else { unreachable!() };
        prop_assert_eq!(events, vec![other, owned]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A `PollTreeRef` encodes byte for byte as the owned `Event::PollTree`,
    /// through serde and directly among other events of a frame.
    #[test]
    fn borrowed_poll_tree_encodes_as_the_owned_event(
        task in arb_span(),
        spans in prop::collection::vec((any::<u64>(), any::<u16>()), 0..40),
        ts in any::<u64>(),
    ) {
        let owned = Event::PollTree {
            task,
            spans: spans
                .iter()
                .map(|&(s, depth)| TreeNode { span: SpanId(s), depth })
                .collect(),
        };
        let borrowed = PollTreeRef { task, spans: &spans };
        prop_assert_eq!(
            postcard::to_stdvec(&borrowed).unwrap(),
            postcard::to_stdvec(&owned).unwrap()
        );
        let other = Event::Exit { span: task, ts };
        let key = ProcessKey { pid: 7, start_unix_ns: 9 };
        let (mut a, mut b) = (EventsFrame::new(), EventsFrame::new());
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        a.push(&owned).unwrap();
        a.push(&other).unwrap();
        a.finish(key, 3, &mut out_a).unwrap();
        b.push(&borrowed).unwrap();
        b.push(&other).unwrap();
        b.finish(key, 3, &mut out_b).unwrap();
        prop_assert_eq!(&out_a, &out_b);
    }
}
