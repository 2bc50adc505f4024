//! Every way a stream can be wrong gives the right `DecodeError`.

mod common;

use awaitscope_wire::*;
use common::*;

/// A frame whose payload is `payload`, length prefix included.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The encoding of `f` without checking the caps (encode_frame does not
/// check them: producers truncate before encoding).
fn encode_unchecked(f: &Frame) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_frame(f, &mut buf).unwrap();
    buf
}

/// Decodes `frame_bytes` both ways and returns the two errors.
fn both_errors(frame_bytes: &[u8]) -> (DecodeError, DecodeError) {
    let sans_io = decode_frame(frame_bytes, 10).expect_err("decode_frame accepted it");
    let mut bytes = preamble().to_vec();
    bytes.extend_from_slice(frame_bytes);
    let (frames, err) = read_all(&bytes);
    assert!(frames.is_empty());
    (sans_io, err.expect("FrameReader accepted it"))
}

fn assert_malformed(frame_bytes: &[u8], reason_contains: &str) {
    let (a, b) = both_errors(frame_bytes);
    for e in [a, b] {
        match &e {
            DecodeError::Malformed { offset, reason } => {
                assert_eq!(*offset, 10);
                assert!(
                    reason.contains(reason_contains),
                    "reason {reason:?} lacks {reason_contains:?}"
                );
                let msg = e.to_string();
                assert!(msg.contains("offset 10"), "{msg}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }
}

// ---- header ----

#[test]
fn empty_input_is_empty() {
    assert!(matches!(FrameReader::new(&[][..]), Err(DecodeError::Empty)));
    assert!(matches!(Preamble::parse(&[]), Ok(None)));
    assert!(!DecodeError::Empty.to_string().is_empty());
}

#[test]
fn bad_magic() {
    for bytes in [
        &b"X"[..],
        b"AWSCOPF",
        b"AWSCOPE\x01\x01\x00",
        b"awscope\0\x01\x00",
        b"GIF89a\0\0\0\0\0\0\0\0",
        b"{\"json\": true}",
    ] {
        assert!(
            matches!(Preamble::parse(bytes), Err(DecodeError::BadMagic)),
            "{bytes:?}"
        );
        assert!(
            matches!(FrameReader::new(bytes), Err(DecodeError::BadMagic)),
            "{bytes:?}"
        );
    }
    assert!(DecodeError::BadMagic.to_string().contains("magic"));
}

#[test]
fn magic_prefix_needs_more_bytes() {
    let p = preamble();
    for n in 0..Preamble::LEN {
        assert!(matches!(Preamble::parse(&p[..n]), Ok(None)), "{n}");
        if n > 0 {
            // The reader has reached the end: the header is cut short.
            assert!(
                matches!(
                    FrameReader::new(&p[..n]),
                    Err(DecodeError::Truncated { offset: 0 })
                ),
                "{n}"
            );
        }
    }
}

#[test]
fn unsupported_version() {
    let mut bytes = preamble().to_vec();
    bytes[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
    // Frames after the header do not matter.
    bytes.extend(stream(&sample_frames()[..2]).into_iter().skip(10));
    for err in [
        Preamble::parse(&bytes).unwrap_err(),
        Preamble::parse(&bytes[..Preamble::LEN]).unwrap_err(),
        FrameReader::new(&bytes[..]).err().unwrap(),
    ] {
        assert!(
            matches!(
                err,
                DecodeError::UnsupportedVersion {
                    found: 8,
                    supported: 7
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("version 8"), "{msg}");
        assert!(msg.contains("1 to 7"), "{msg}");
    }
    for version in [0u16, 8, 0x0100, u16::MAX] {
        let mut bytes = preamble().to_vec();
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        match Preamble::parse(&bytes) {
            Err(DecodeError::UnsupportedVersion { found, supported }) => {
                assert_eq!((found, supported), (version, VERSION));
            }
            other => panic!("{version}: {other:?}"),
        }
    }
}

// ---- frame length ----

#[test]
fn length_over_the_cap_is_refused_before_reading_the_payload() {
    for len in [MAX_FRAME_LEN as u32 + 1, u32::MAX] {
        let prefix = len.to_le_bytes();
        // Sans-IO: the four length bytes are enough to refuse it.
        match decode_frame(&prefix, 77) {
            Err(DecodeError::FrameTooLarge { len: l, offset: 77 }) => assert_eq!(l, len as usize),
            other => panic!("{other:?}"),
        }
        // Reader: fails at once, though the payload is not there.
        let mut bytes = stream(&sample_frames()[..1]);
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(&prefix);
        let (frames, err) = read_all(&bytes);
        assert_eq!(frames.len(), 1);
        match err {
            Some(e @ DecodeError::FrameTooLarge { .. }) => {
                let DecodeError::FrameTooLarge { len: l, offset: o } = e else {
                    unreachable!()
                };
                assert_eq!((l, o), (len as usize, offset));
                let msg = e.to_string();
                assert!(msg.contains(&len.to_string()), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn frame_reader_does_not_read_past_an_oversized_length() {
    // An endless source: if the reader tried to read the announced 4 GiB it
    // would hang or run out of memory.
    let mut head = preamble().to_vec();
    head.extend_from_slice(&u32::MAX.to_le_bytes());
    let source = std::io::Read::chain(&head[..], std::io::repeat(0));
    let mut reader = FrameReader::new(source).unwrap();
    assert!(matches!(
        reader.next_frame(),
        Err(DecodeError::FrameTooLarge {
            len: 0xFFFF_FFFF,
            offset: 10
        })
    ));
    assert!(matches!(reader.next_frame(), Ok(None)));
}

#[test]
fn length_at_the_cap_is_accepted_then_checked() {
    // MAX_FRAME_LEN itself is allowed; a payload of zeros is then malformed
    // (trailing bytes), not too large.
    let payload = vec![0u8; MAX_FRAME_LEN];
    let bytes = raw_frame(&payload);
    let (a, b) = both_errors(&bytes);
    assert!(matches!(a, DecodeError::Malformed { .. }), "{a:?}");
    assert!(matches!(b, DecodeError::Malformed { .. }), "{b:?}");
}

#[test]
fn zero_length_frame_is_malformed() {
    let (a, b) = both_errors(&raw_frame(&[]));
    assert!(
        matches!(a, DecodeError::Malformed { offset: 10, .. }),
        "{a:?}"
    );
    assert!(
        matches!(b, DecodeError::Malformed { offset: 10, .. }),
        "{b:?}"
    );
}

// ---- payload ----

#[test]
fn trailing_bytes_inside_a_frame_are_malformed() {
    for f in sample_frames() {
        let mut payload = encode_unchecked(&f)[4..].to_vec();
        payload.extend_from_slice(&[0, 1, 2]);
        assert_malformed(&raw_frame(&payload), "3 trailing bytes");
    }
}

#[test]
fn garbage_payload_is_malformed() {
    // Unknown Body variant index.
    let mut payload = vec![1, 0, 0]; // pid, start, seq
    payload.push(9);
    let (a, b) = both_errors(&raw_frame(&payload));
    assert!(matches!(a, DecodeError::Malformed { .. }), "{a:?}");
    assert!(matches!(b, DecodeError::Malformed { .. }), "{b:?}");
    // Invalid UTF-8 in a string.
    let f = frame(
        0,
        Body::Events(vec![Event::Thread {
            id: 0,
            name: Some("abc".into()),
        }]),
    );
    let mut bytes = encode_unchecked(&f);
    let at = bytes.windows(3).position(|w| w == b"abc").unwrap();
    bytes[at] = 0xFF;
    let (a, b) = both_errors(&bytes);
    assert!(matches!(a, DecodeError::Malformed { .. }), "{a:?}");
    assert!(matches!(b, DecodeError::Malformed { .. }), "{b:?}");
}

fn long() -> String {
    "x".repeat(limits::MAX_STR_LEN + 1)
}

fn info() -> ProcessInfo {
    ProcessInfo {
        name: "p".into(),
        cmdline: vec![],
        producer_version: "0.1.0".into(),
        tokio_unstable: false,
        reconnect: false,
        token: None,
    }
}

fn callsite() -> Callsite {
    Callsite {
        id: 1,
        name: "n".into(),
        target: "t".into(),
        level: Level::Info,
        file: None,
        line: None,
        kind: CallsiteKind::Span(SpanClass::User),
        fields: vec![],
    }
}

/// Frames that each break exactly one cap.
fn over_the_caps() -> Vec<(&'static str, Frame)> {
    let str_field = vec![Field {
        index: 0,
        value: Value::Str(long()),
    }];
    let many_fields: Vec<Field> = (0..=limits::MAX_FIELDS as u16)
        .map(|index| Field {
            index,
            value: Value::Bool(true),
        })
        .collect();
    let events = |e: Event| Body::Events(vec![e]);
    let new_span = |fields: Vec<Field>| {
        Event::SpanNew(Box::new(SpanNew {
            id: SpanId(1),
            callsite: 1,
            parent: None,
            ctx_task: None,
            ctx_span: None,
            ts: 0,
            fields,
        }))
    };
    let log = |fields: Vec<Field>| {
        Event::Log(Box::new(Log {
            callsite: 1,
            span: None,
            task: None,
            ts: 0,
            fields,
            trace: Vec::new(),
        }))
    };
    let panic = |message: String, file: Option<String>| {
        Event::Panic(Box::new(Panic {
            task: None,
            span: None,
            message,
            file,
            line: None,
            ts: 0,
            trace: Vec::new(),
        }))
    };
    let cases = vec![
        (
            "hello name",
            Body::Hello(ProcessInfo {
                name: long(),
                ..info()
            }),
        ),
        (
            "hello version",
            Body::Hello(ProcessInfo {
                producer_version: long(),
                ..info()
            }),
        ),
        (
            "hello cmdline arg",
            Body::Hello(ProcessInfo {
                cmdline: vec!["a".into(), long()],
                ..info()
            }),
        ),
        (
            "hello cmdline length",
            Body::Hello(ProcessInfo {
                cmdline: vec!["a".into(); limits::MAX_FIELDS + 1],
                ..info()
            }),
        ),
        (
            "hello token",
            Body::Hello(ProcessInfo {
                token: Some(long()),
                ..info()
            }),
        ),
        (
            "callsite name",
            events(Event::Callsite(Box::new(Callsite {
                name: long(),
                ..callsite()
            }))),
        ),
        (
            "callsite target",
            events(Event::Callsite(Box::new(Callsite {
                target: long(),
                ..callsite()
            }))),
        ),
        (
            "callsite file",
            events(Event::Callsite(Box::new(Callsite {
                file: Some(long()),
                ..callsite()
            }))),
        ),
        (
            "callsite field name",
            events(Event::Callsite(Box::new(Callsite {
                fields: vec![long()],
                ..callsite()
            }))),
        ),
        (
            "callsite field count",
            events(Event::Callsite(Box::new(Callsite {
                fields: vec!["f".into(); limits::MAX_FIELDS + 1],
                ..callsite()
            }))),
        ),
        (
            "thread name",
            events(Event::Thread {
                id: 0,
                name: Some(long()),
            }),
        ),
        ("span string field", events(new_span(str_field.clone()))),
        ("span field count", events(new_span(many_fields.clone()))),
        (
            "await tree nodes",
            events(Event::PollTree {
                task: SpanId(1),
                spans: vec![
                    TreeNode {
                        span: SpanId(2),
                        depth: 0
                    };
                    limits::MAX_TREE + 1
                ],
            }),
        ),
        (
            "record string field",
            events(Event::Record {
                span: SpanId(1),
                fields: str_field.clone(),
            }),
        ),
        (
            "record field count",
            events(Event::Record {
                span: SpanId(1),
                fields: many_fields.clone(),
            }),
        ),
        ("log string field", events(log(str_field))),
        ("log field count", events(log(many_fields))),
        ("panic message", events(panic(long(), None))),
        ("panic file", events(panic("m".into(), Some(long())))),
        (
            "batch length",
            Body::Events(
                (0..=limits::MAX_BATCH as u64)
                    .map(|ts| Event::Enter {
                        span: SpanId(1),
                        ts,
                    })
                    .collect(),
            ),
        ),
    ];
    cases.into_iter().map(|(n, b)| (n, frame(0, b))).collect()
}

#[test]
fn frames_over_the_caps_are_malformed() {
    for (name, f) in over_the_caps() {
        assert!(validate(&f).is_err(), "validate accepted {name}");
        let bytes = encode_unchecked(&f);
        let (a, b) = both_errors(&bytes);
        for e in [a, b] {
            assert!(
                matches!(e, DecodeError::Malformed { offset: 10, .. }),
                "{name}: {e:?}"
            );
        }
    }
}

#[test]
fn cap_errors_say_what_is_wrong() {
    let f = frame(
        0,
        Body::Events(vec![Event::Thread {
            id: 0,
            name: Some(long()),
        }]),
    );
    assert_malformed(&encode_unchecked(&f), "string of 1025 bytes");
    let f = frame(
        0,
        Body::Events(vec![Event::Record {
            span: SpanId(1),
            fields: vec![
                Field {
                    index: 0,
                    value: Value::I64(0)
                };
                limits::MAX_FIELDS + 1
            ],
        }]),
    );
    assert_malformed(&encode_unchecked(&f), "33 fields");
}

#[test]
fn frames_at_the_caps_are_valid() {
    for f in sample_frames() {
        assert_eq!(validate(&f), Ok(()));
    }
    let at_cap = "y".repeat(limits::MAX_STR_LEN);
    let f = frame(
        0,
        Body::Hello(ProcessInfo {
            name: at_cap.clone(),
            cmdline: vec![at_cap.clone(); limits::MAX_FIELDS],
            producer_version: at_cap.clone(),
            tokio_unstable: true,
            reconnect: true,
            token: Some(at_cap),
        }),
    );
    assert_eq!(validate(&f), Ok(()));
}

#[test]
fn an_error_ends_the_stream_after_the_good_frames() {
    let good = sample_frames();
    let mut bytes = stream(&good);
    let bad_at = bytes.len() as u64;
    bytes.extend_from_slice(&raw_frame(&[0xFF; 5]));
    bytes.extend(stream(&good).into_iter().skip(Preamble::LEN));
    let (frames, err) = read_all(&bytes);
    assert_eq!(frames, good);
    assert!(
        matches!(err, Some(DecodeError::Malformed { offset, .. }) if offset == bad_at),
        "{err:?}"
    );
    let (frames, end) = decode_all(&bytes[Preamble::LEN..]);
    assert_eq!(frames, good);
    assert!(
        matches!(end, Err(DecodeError::Malformed { offset, .. }) if offset == bad_at),
        "{end:?}"
    );
}

#[test]
fn io_errors_are_reported() {
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let err = FrameReader::new(Failing).err().unwrap();
    assert!(matches!(err, DecodeError::Io(_)), "{err:?}");
    assert!(err.to_string().contains("disk on fire"));

    let bytes = stream(&sample_frames()[..1]);
    let mut reader = FrameReader::new(std::io::Read::chain(&bytes[..], Failing)).unwrap();
    assert_eq!(
        reader.next_frame().unwrap(),
        Some(sample_frames()[0].clone())
    );
    assert!(matches!(reader.next_frame(), Err(DecodeError::Io(_))));
    assert!(matches!(reader.next_frame(), Ok(None)));
}

// ---- encoding ----

#[test]
fn encoding_a_frame_over_the_cap_fails_and_leaves_the_buffer_alone() {
    // About 1.5 MiB of payload, in strings of the cap each.
    let s = "z".repeat(limits::MAX_STR_LEN);
    let events: Vec<Event> = (0..1500)
        .map(|i| Event::Thread {
            id: i,
            name: Some(s.clone()),
        })
        .collect();
    let big = frame(0, Body::Events(events));
    let mut out = stream(&sample_frames()[..2]);
    let before = out.clone();
    match encode_frame(&big, &mut out) {
        Err(EncodeError::FrameTooLarge(len)) => {
            assert!(len > MAX_FRAME_LEN);
            let msg = EncodeError::FrameTooLarge(len).to_string();
            assert!(msg.contains(&len.to_string()), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out, before);

    // Same with an empty buffer.
    let mut empty = Vec::new();
    assert!(matches!(
        encode_frame(&big, &mut empty),
        Err(EncodeError::FrameTooLarge(_))
    ));
    assert!(empty.is_empty());

    // The writer writes nothing and stays usable.
    let mut writer = FrameWriter::new(Vec::new()).unwrap();
    writer.write_frame(&sample_frames()[0]).unwrap();
    let len_before = writer.get_mut().len();
    assert!(matches!(
        writer.write_frame(&big),
        Err(EncodeError::FrameTooLarge(_))
    ));
    assert_eq!(writer.get_mut().len(), len_before);
    writer.write_frame(&sample_frames()[1]).unwrap();
    let (frames, err) = read_all(&writer.into_inner());
    assert!(err.is_none());
    assert_eq!(frames, sample_frames()[..2].to_vec());
}

#[test]
fn encoding_a_frame_at_the_cap_succeeds() {
    // Names of 100 bytes; then adjust the last name so that the payload is
    // exactly MAX_FRAME_LEN bytes.
    let mut events: Vec<Event> = (0..MAX_FRAME_LEN / 104 - 1)
        .map(|_| Event::Thread {
            id: 0,
            name: Some("n".repeat(100)),
        })
        .collect();
    let payload_len = |events: &Vec<Event>| {
        let mut out = Vec::new();
        encode_frame(&frame(0, Body::Events(events.clone())), &mut out).unwrap();
        out.len() - 4
    };
    let short = MAX_FRAME_LEN - payload_len(&events);
    assert!((1..200).contains(&short), "{short}");
    // A name of 128 bytes or more takes a 2-byte length varint.
    let extra = if 100 + short >= 128 { short - 1 } else { short };
    if let Some(Event::Thread { name: Some(n), .. }) = events.last_mut() {
        n.push_str(&"m".repeat(extra));
    }
    assert_eq!(payload_len(&events), MAX_FRAME_LEN);
    let mut f = frame(0, Body::Events(events));
    let mut out = Vec::new();
    encode_frame(&f, &mut out).unwrap();
    assert_eq!(out.len(), 4 + MAX_FRAME_LEN);
    assert_eq!(&out[..4], &(MAX_FRAME_LEN as u32).to_le_bytes());
    // Not too large for the reader either: it decodes (the batch is under
    // the cap, the strings too).
    assert_eq!(
        decode_frame(&out, 0).unwrap().unwrap(),
        (f.clone(), out.len())
    );

    // One byte more is too large.
    if let Body::Events(es) = &mut f.body {
        if let Some(Event::Thread { name: Some(n), .. }) = es.last_mut() {
            n.push('m');
        }
    }
    let mut out = Vec::new();
    assert!(matches!(
        encode_frame(&f, &mut out),
        Err(EncodeError::FrameTooLarge(len)) if len == MAX_FRAME_LEN + 1
    ));
    assert!(out.is_empty());
}
