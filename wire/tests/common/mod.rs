//! Helpers shared by the integration tests: sample frames covering every
//! variant, proptest strategies for valid frames, and stream builders.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{self, Read};

use awaitscope_wire::*;
use proptest::prelude::*;

pub const KEY: ProcessKey = ProcessKey {
    pid: 4242,
    start_unix_ns: 1_700_000_000_123_456_789,
};

pub fn frame(seq: u64, body: Body) -> Frame {
    Frame {
        process: KEY,
        seq,
        body,
    }
}

/// Name of an event's variant. The match is exhaustive on purpose: adding a
/// variant breaks the build here until the samples below cover it.
pub fn event_variant(e: &Event) -> &'static str {
    match e {
        Event::Callsite(_) => "Callsite",
        Event::Thread { .. } => "Thread",
        Event::SpanNew(_) => "SpanNew",
        Event::Record { .. } => "Record",
        Event::FollowsFrom { .. } => "FollowsFrom",
        Event::PollTree { .. } => "PollTree",
        Event::Enter { .. } => "Enter",
        Event::Exit { .. } => "Exit",
        Event::Close { .. } => "Close",
        Event::Wake { .. } => "Wake",
        Event::Log(_) => "Log",
        Event::Panic(_) => "Panic",
        Event::PollEnd { .. } => "PollEnd",
        Event::Poll { .. } => "Poll",
        Event::Stall(_) => "Stall",
        Event::NativeStack(_) => "NativeStack",
        Event::Handover(_) => "Handover",
        Event::WaitStack(_) => "WaitStack",
        Event::WakeStack(_) => "WakeStack",
    }
}

pub const EVENT_VARIANTS: usize = 19;

/// Name of a body's variant (exhaustive, see [`event_variant`]).
pub fn body_variant(b: &Body) -> &'static str {
    match b {
        Body::Hello(_) => "Hello",
        Body::Events(_) => "Events",
        Body::Dropped(_) => "Dropped",
        Body::Goodbye => "Goodbye",
    }
}

pub const BODY_VARIANTS: usize = 4;

pub fn all_values() -> Vec<Field> {
    vec![
        Field {
            index: 0,
            value: Value::I64(i64::MIN),
        },
        Field {
            index: 1,
            value: Value::U64(u64::MAX),
        },
        Field {
            index: 2,
            value: Value::F64(-1.5e300),
        },
        Field {
            index: 3,
            value: Value::Bool(true),
        },
        Field {
            index: u16::MAX,
            value: Value::Str("héllo ✓ wörld".into()),
        },
    ]
}

/// One event of every variant, with every optional part both set and unset
/// and every enum inside (levels, classes, close kinds, wake ops) present.
pub fn sample_events() -> Vec<Event> {
    let mut events = Vec::new();
    let levels = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
    ];
    let kinds = [
        CallsiteKind::Span(SpanClass::User),
        CallsiteKind::Span(SpanClass::Task),
        CallsiteKind::Span(SpanClass::Resource),
        CallsiteKind::Span(SpanClass::AsyncOp),
        CallsiteKind::Span(SpanClass::AsyncOpPoll),
        CallsiteKind::Event(EventClass::User),
        CallsiteKind::Event(EventClass::PollOp),
        CallsiteKind::Event(EventClass::StateUpdate),
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        events.push(Event::Callsite(Box::new(Callsite {
            id: i as u32,
            name: format!("callsite{i}"),
            target: "app::module".into(),
            level: levels[i % levels.len()],
            file: (i % 2 == 0).then(|| "src/main.rs".into()),
            line: (i % 2 == 0).then_some(42),
            kind,
            fields: (0..i).map(|f| format!("field{f}")).collect(),
        })));
    }
    events.push(Event::Thread {
        id: 0,
        name: Some("tokio-runtime-worker".into()),
    });
    events.push(Event::Thread { id: 1, name: None });
    events.push(Event::SpanNew(Box::new(SpanNew {
        id: SpanId(1),
        callsite: 1,
        parent: None,
        ctx_task: None,
        ctx_span: None,
        ts: 0,
        fields: vec![],
    })));
    events.push(Event::SpanNew(Box::new(SpanNew {
        id: SpanId(u64::MAX),
        callsite: u32::MAX,
        parent: Some(SpanId(1)),
        ctx_task: Some(SpanId(2)),
        ctx_span: Some(SpanId(3)),
        ts: u64::MAX,
        fields: all_values(),
    })));
    events.push(Event::Record {
        span: SpanId(1),
        fields: all_values(),
    });
    events.push(Event::FollowsFrom {
        span: SpanId(5),
        follows: SpanId(6),
    });
    events.push(Event::Enter {
        span: SpanId(5),
        ts: 10,
    });
    events.push(Event::Exit {
        span: SpanId(5),
        ts: 11,
    });
    events.push(Event::PollEnd {
        task: SpanId(5),
        ts: 12,
        wakers: 2,
    });
    events.push(Event::Poll {
        task: SpanId(5),
        start: 13,
        duration: 4,
        wakers: 1,
    });
    for (i, kind) in [
        CloseKind::Span,
        CloseKind::Completed,
        CloseKind::Cancelled,
        CloseKind::Panicked,
    ]
    .into_iter()
    .enumerate()
    {
        events.push(Event::Close {
            span: SpanId(i as u64),
            kind,
            ts: 100 + i as u64,
        });
    }
    events.push(Event::PollTree {
        task: SpanId(7),
        spans: vec![
            TreeNode {
                span: SpanId(8),
                depth: 0,
            },
            TreeNode {
                span: SpanId(9),
                depth: 1,
            },
        ],
    });
    events.push(Event::PollTree {
        task: SpanId(7),
        spans: vec![],
    });
    for (i, op) in [
        WakeOp::Wake,
        WakeOp::WakeByRef,
        WakeOp::Clone,
        WakeOp::Drop,
        WakeOp::LastDrop,
    ]
    .into_iter()
    .enumerate()
    {
        events.push(Event::Wake {
            task: SpanId(7),
            op,
            by: (i % 2 == 1).then_some(SpanId(8)),
            ts: 200 + i as u64,
        });
    }
    events.push(Event::Log(Box::new(Log {
        callsite: 6,
        span: Some(SpanId(5)),
        task: Some(SpanId(7)),
        ts: 300,
        fields: all_values(),
        trace: Vec::new(),
    })));
    events.push(Event::Log(Box::new(Log {
        callsite: 6,
        span: None,
        task: None,
        ts: 301,
        fields: vec![],
        trace: Vec::new(),
    })));
    events.push(Event::Panic(Box::new(Panic {
        task: Some(SpanId(7)),
        span: Some(SpanId(5)),
        message: "called `Option::unwrap()` on a `None` value".into(),
        file: Some("src/lib.rs".into()),
        line: Some(7),
        ts: 400,
        trace: Vec::new(),
    })));
    events.push(Event::Panic(Box::new(Panic {
        task: None,
        span: None,
        message: String::new(),
        file: None,
        line: None,
        ts: 401,
        trace: Vec::new(),
    })));
    events.push(Event::Stall(Box::new(Stall {
        task: SpanId(7),
        start: 500,
        ts: 10_500,
        ended: false,
        spans: vec![SpanId(9), SpanId(8)],
        stack: StackState::Sampled,
        frames: vec![
            NativeFrame {
                function: "app::auth::hash_password".into(),
                file: Some("src/auth.rs".into()),
                line: Some(12),
                origin: FrameOrigin::User,
            },
            NativeFrame {
                function: "??".into(),
                file: None,
                line: None,
                origin: FrameOrigin::Runtime,
            },
        ],
        sched: Some(Sched {
            window_ns: 9_000,
            on_cpu_ns: 100,
            kernel_ns: 50,
            waiting_ns: 0,
        }),
    })));
    events.push(Event::Stall(Box::new(Stall {
        task: SpanId(7),
        start: 500,
        ts: 20_000,
        ended: true,
        spans: vec![],
        stack: StackState::Missed,
        frames: vec![],
        sched: None,
    })));
    events.push(Event::NativeStack(Box::new(NativeStack {
        task: SpanId(7),
        start: 500,
        ts: 10_500,
        modules: vec![
            Module {
                path: "/srv/app/bin/server".into(),
                build_id: vec![0x50, 0xd9, 0xa5, 0x61],
            },
            Module {
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                build_id: vec![],
            },
        ],
        frames: vec![
            RawFrame {
                module: Some(1),
                address: 0xe_4a10,
            },
            RawFrame {
                module: Some(0),
                address: 0x1_2345,
            },
            RawFrame {
                module: None,
                address: 0x7fff_f7fc_1000,
            },
        ],
    })));
    events.push(Event::Handover(Box::new(Handover {
        span: Some(SpanId(3)),
        task: Some(SpanId(7)),
        trace_id: [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ],
        span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        ts: 11_000,
        trace: vec![
            "0: api::handle_signup{user=7} at src/api.rs:12 (task 7 \"conn\")".into(),
            "-- task 7 \"conn\" spawned at src/api.rs:40 --".into(),
        ],
    })));
    events.push(Event::WaitStack(Box::new(WaitStack {
        span: SpanId(12),
        stack: NativeStack {
            task: SpanId(7),
            start: 11_200,
            ts: 11_200,
            modules: vec![Module {
                path: "/srv/app/bin/server".into(),
                build_id: vec![0x50, 0xd9, 0xa5, 0x61],
            }],
            frames: vec![
                RawFrame {
                    module: Some(0),
                    address: 0x2_0010,
                },
                RawFrame {
                    module: None,
                    address: 0x7fff_f7fc_1000,
                },
            ],
        },
        at: None,
    })));
    events.push(Event::WaitStack(Box::new(WaitStack {
        span: SpanId(13),
        stack: NativeStack {
            task: SpanId(8),
            start: 11_300,
            ts: 11_300,
            modules: vec![],
            frames: vec![],
        },
        at: Some(NativeFrame {
            function: "app::billing::await_reply::{{closure}}".into(),
            file: Some("src/billing.rs".into()),
            line: Some(217),
            origin: FrameOrigin::User,
        }),
    })));
    events.push(Event::WakeStack(Box::new(WaitStack {
        span: SpanId(14),
        stack: NativeStack {
            task: SpanId(9),
            start: 11_400,
            ts: 11_450,
            modules: vec![Module {
                path: "/srv/app/bin/server".into(),
                build_id: vec![0x50, 0xd9, 0xa5, 0x61],
            }],
            frames: vec![RawFrame {
                module: Some(0),
                address: 0x2_0420,
            }],
        },
        at: None,
    })));
    events
}

/// Frames covering every `Body` variant; the `Events` frames together cover
/// every `Event` variant, both one event per frame and all in one batch.
pub fn sample_frames() -> Vec<Frame> {
    let mut bodies = vec![
        Body::Hello(ProcessInfo {
            name: "server".into(),
            cmdline: vec!["./server".into(), "--port".into(), "8080".into()],
            producer_version: "0.1.0".into(),
            tokio_unstable: true,
            reconnect: false,
            token: Some("s3cret".into()),
        }),
        Body::Hello(ProcessInfo {
            name: String::new(),
            cmdline: vec![],
            producer_version: "0.1.0".into(),
            tokio_unstable: false,
            reconnect: true,
            token: None,
        }),
        Body::Events(vec![]),
        Body::Events(sample_events()),
    ];
    bodies.extend(sample_events().into_iter().map(|e| Body::Events(vec![e])));
    bodies.push(Body::Dropped(DropCounts::default()));
    bodies.push(Body::Dropped(DropCounts {
        buffer_full: 1,
        disconnected: u64::MAX,
        write_failed: 3,
    }));
    bodies.push(Body::Goodbye);
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| frame(i as u64, b))
        .collect()
}

/// Encodes `frames` as a complete stream (preamble included).
pub fn stream(frames: &[Frame]) -> Vec<u8> {
    let mut out = preamble().to_vec();
    for f in frames {
        encode_frame(f, &mut out).expect("encode");
    }
    out
}

/// Decodes frames from `buf` (after the preamble) with the sans-IO API.
/// Returns the frames, and how it ended: `Ok(rest)` with the unconsumed bytes
/// (an incomplete frame, possibly empty) or the error.
pub fn decode_all(buf: &[u8]) -> (Vec<Frame>, Result<usize, DecodeError>) {
    let mut frames = Vec::new();
    let mut pos = 0;
    loop {
        let offset = (Preamble::LEN + pos) as u64;
        match decode_frame(&buf[pos..], offset) {
            Ok(Some((f, used))) => {
                assert!(used >= 4, "a frame uses at least its length prefix");
                assert!(pos + used <= buf.len(), "used more bytes than given");
                frames.push(f);
                pos += used;
            }
            Ok(None) => return (frames, Ok(buf.len() - pos)),
            Err(e) => return (frames, Err(e)),
        }
    }
}

/// Reads a stream with `FrameReader`, draining it. Returns the frames and the
/// first error (if any). Panics if the reader does not finish in a number of
/// steps bounded by the input length.
pub fn read_all(bytes: &[u8]) -> (Vec<Frame>, Option<DecodeError>) {
    let mut reader = match FrameReader::new(bytes) {
        Ok(r) => r,
        Err(e) => return (vec![], Some(e)),
    };
    let mut frames = Vec::new();
    // Each frame uses at least 4 bytes, so this bounds the iterations.
    for _ in 0..=bytes.len() / 4 + 1 {
        match reader.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {
                // Finished readers stay finished.
                assert!(matches!(reader.next_frame(), Ok(None)));
                return (frames, None);
            }
            Err(e) => {
                assert!(matches!(reader.next_frame(), Ok(None)));
                return (frames, Some(e));
            }
        }
    }
    panic!("FrameReader did not finish on {} bytes", bytes.len());
}

/// A reader that hands out its data in chunks of the given sizes (cycling),
/// and reports `Interrupted` before every other chunk.
pub struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
    interrupt: bool,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], sizes: Vec<usize>) -> Self {
        assert!(!sizes.is_empty() && sizes.iter().all(|&s| s > 0));
        Chunked {
            data,
            sizes,
            next: 0,
            interrupt: false,
        }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

// ---- proptest strategies for valid frames ----

/// Strings within the cap: mostly short and varied (including multi-byte
/// characters), sometimes at the cap exactly.
pub fn arb_str() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "\\PC{0,16}",
        1 => Just("x".repeat(limits::MAX_STR_LEN)),
        1 => Just("é".repeat(limits::MAX_STR_LEN / 2)),
    ]
}

pub fn arb_span() -> impl Strategy<Value = SpanId> {
    any::<u64>().prop_map(SpanId)
}

pub fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::I64),
        any::<u64>().prop_map(Value::U64),
        // NaN is not equal to itself, so it cannot be checked by `==`.
        any::<f64>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(Value::F64),
        any::<bool>().prop_map(Value::Bool),
        arb_str().prop_map(Value::Str),
    ]
}

pub fn arb_fields() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec(
        (any::<u16>(), arb_value()).prop_map(|(index, value)| Field { index, value }),
        0..=4,
    )
}

pub fn arb_level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::Trace),
        Just(Level::Debug),
        Just(Level::Info),
        Just(Level::Warn),
        Just(Level::Error),
    ]
}

pub fn arb_kind() -> impl Strategy<Value = CallsiteKind> {
    prop_oneof![
        Just(CallsiteKind::Span(SpanClass::User)),
        Just(CallsiteKind::Span(SpanClass::Task)),
        Just(CallsiteKind::Span(SpanClass::Resource)),
        Just(CallsiteKind::Span(SpanClass::AsyncOp)),
        Just(CallsiteKind::Span(SpanClass::AsyncOpPoll)),
        Just(CallsiteKind::Event(EventClass::User)),
        Just(CallsiteKind::Event(EventClass::PollOp)),
        Just(CallsiteKind::Event(EventClass::StateUpdate)),
    ]
}

pub fn arb_close() -> impl Strategy<Value = CloseKind> {
    prop_oneof![
        Just(CloseKind::Span),
        Just(CloseKind::Completed),
        Just(CloseKind::Cancelled),
        Just(CloseKind::Panicked),
    ]
}

pub fn arb_wake() -> impl Strategy<Value = WakeOp> {
    prop_oneof![
        Just(WakeOp::Wake),
        Just(WakeOp::WakeByRef),
        Just(WakeOp::Clone),
        Just(WakeOp::Drop),
        Just(WakeOp::LastDrop),
    ]
}

/// Integers at every varint length and at its edges (`any::<u64>()` is
/// nearly always ten bytes long).
pub fn arb_varint_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u32..64).prop_map(|s| 1u64 << s),
        (0u32..64).prop_map(|s| (1u64 << s) - 1),
        Just(u64::MAX),
    ]
}

/// The events the producer writes without serde (`wire/src/direct.rs`),
/// with integers of every varint length.
pub fn arb_frequent_event() -> impl Strategy<Value = Event> {
    let id = || arb_varint_u64().prop_map(SpanId);
    let n = arb_varint_u64;
    let small = || prop_oneof![any::<u32>(), (0u32..32).prop_map(|s| 1u32 << s)];
    prop_oneof![
        (id(), n(), n(), small()).prop_map(|(task, start, duration, wakers)| Event::Poll {
            task,
            start,
            duration,
            wakers,
        }),
        (id(), arb_wake(), proptest::option::of(id()), n())
            .prop_map(|(task, op, by, ts)| Event::Wake { task, op, by, ts }),
        (id(), n(), small()).prop_map(|(task, ts, wakers)| Event::PollEnd { task, ts, wakers }),
        (id(), n()).prop_map(|(span, ts)| Event::Enter { span, ts }),
        (id(), n()).prop_map(|(span, ts)| Event::Exit { span, ts }),
        (id(), arb_close(), n()).prop_map(|(span, kind, ts)| Event::Close { span, kind, ts }),
        (
            id(),
            small(),
            proptest::option::of(id()),
            proptest::option::of(id()),
            proptest::option::of(id()),
            n(),
            arb_fields()
        )
            .prop_map(|(id, callsite, parent, ctx_task, ctx_span, ts, fields)| {
                Event::SpanNew(Box::new(SpanNew {
                    id,
                    callsite,
                    parent,
                    ctx_task,
                    ctx_span,
                    ts,
                    fields,
                }))
            }),
        (
            id(),
            prop::collection::vec((id(), any::<u16>()), 0..=limits::MAX_TREE + 1)
        )
            .prop_map(|(task, spans)| Event::PollTree {
                task,
                spans: spans
                    .into_iter()
                    .map(|(span, depth)| TreeNode { span, depth })
                    .collect(),
            }),
    ]
}

pub fn arb_callsite() -> impl Strategy<Value = Callsite> {
    (
        any::<u32>(),
        arb_str(),
        arb_str(),
        arb_level(),
        proptest::option::of(arb_str()),
        any::<Option<u32>>(),
        arb_kind(),
        prop::collection::vec(arb_str(), 0..=3),
    )
        .prop_map(
            |(id, name, target, level, file, line, kind, fields)| Callsite {
                id,
                name,
                target,
                level,
                file,
                line,
                kind,
                fields,
            },
        )
}

pub fn arb_event() -> impl Strategy<Value = Event> {
    let opt_span = || proptest::option::of(arb_span());
    prop_oneof![
        arb_callsite().prop_map(|c| Event::Callsite(Box::new(c))),
        (any::<u32>(), proptest::option::of(arb_str()))
            .prop_map(|(id, name)| Event::Thread { id, name }),
        (
            arb_span(),
            any::<u32>(),
            opt_span(),
            opt_span(),
            opt_span(),
            any::<u64>(),
            arb_fields()
        )
            .prop_map(|(id, callsite, parent, ctx_task, ctx_span, ts, fields)| {
                Event::SpanNew(Box::new(SpanNew {
                    id,
                    callsite,
                    parent,
                    ctx_task,
                    ctx_span,
                    ts,
                    fields,
                }))
            }),
        (arb_span(), arb_fields()).prop_map(|(span, fields)| Event::Record { span, fields }),
        (arb_span(), arb_span()).prop_map(|(span, follows)| Event::FollowsFrom { span, follows }),
        (
            arb_span(),
            proptest::collection::vec((arb_span(), any::<u16>()), 0..8)
        )
            .prop_map(|(task, spans)| Event::PollTree {
                task,
                spans: spans
                    .into_iter()
                    .map(|(span, depth)| TreeNode { span, depth })
                    .collect(),
            }),
        (arb_span(), any::<u64>()).prop_map(|(span, ts)| Event::Enter { span, ts }),
        (arb_span(), any::<u64>()).prop_map(|(span, ts)| Event::Exit { span, ts }),
        (arb_span(), any::<u64>(), any::<u32>()).prop_map(|(task, ts, wakers)| Event::PollEnd {
            task,
            ts,
            wakers
        }),
        (arb_span(), arb_close(), any::<u64>()).prop_map(|(span, kind, ts)| Event::Close {
            span,
            kind,
            ts
        }),
        (arb_span(), arb_wake(), opt_span(), any::<u64>())
            .prop_map(|(task, op, by, ts)| Event::Wake { task, op, by, ts }),
        (
            any::<u32>(),
            opt_span(),
            opt_span(),
            any::<u64>(),
            arb_fields()
        )
            .prop_map(
                |(callsite, span, task, ts, fields)| Event::Log(Box::new(Log {
                    callsite,
                    span,
                    task,
                    ts,
                    fields,
                    trace: Vec::new(),
                }))
            ),
        (
            opt_span(),
            opt_span(),
            arb_str(),
            proptest::option::of(arb_str()),
            any::<Option<u32>>(),
            any::<u64>()
        )
            .prop_map(
                |(task, span, message, file, line, ts)| Event::Panic(Box::new(Panic {
                    task,
                    span,
                    message,
                    file,
                    line,
                    ts,
                    trace: Vec::new(),
                }))
            ),
        (
            arb_span(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec(arb_span(), 0..4),
            proptest::collection::vec(
                (
                    arb_str(),
                    proptest::option::of(arb_str()),
                    any::<Option<u32>>()
                ),
                0..4
            ),
            any::<Option<(u64, u64, u64, u64)>>()
        )
            .prop_map(|(task, start, ts, ended, spans, frames, sched)| {
                Event::Stall(Box::new(Stall {
                    task,
                    start,
                    ts,
                    ended,
                    spans,
                    stack: if frames.is_empty() {
                        StackState::Off
                    } else {
                        StackState::Sampled
                    },
                    frames: frames
                        .into_iter()
                        .map(|(function, file, line)| NativeFrame {
                            function,
                            file,
                            line,
                            origin: FrameOrigin::Dependency,
                        })
                        .collect(),
                    sched: sched.map(|(window_ns, on_cpu_ns, kernel_ns, waiting_ns)| Sched {
                        window_ns,
                        on_cpu_ns,
                        kernel_ns,
                        waiting_ns,
                    }),
                }))
            }),
        (
            arb_span(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(
                (arb_str(), proptest::collection::vec(any::<u8>(), 0..24)),
                0..3
            ),
            proptest::collection::vec((any::<Option<u32>>(), any::<u64>()), 0..6)
        )
            .prop_map(|(task, start, ts, modules, frames)| {
                let n = modules.len() as u32;
                Event::NativeStack(Box::new(NativeStack {
                    task,
                    start,
                    ts,
                    modules: modules
                        .into_iter()
                        .map(|(path, build_id)| Module { path, build_id })
                        .collect(),
                    frames: frames
                        .into_iter()
                        .map(|(module, address)| RawFrame {
                            // Valid frames name listed modules only.
                            module: module.filter(|_| n > 0).map(|m| m % n.max(1)),
                            address,
                        })
                        .collect(),
                }))
            }),
        (
            proptest::option::of(arb_span()),
            proptest::option::of(arb_span()),
            any::<[u8; 16]>().prop_map(|mut t| {
                t[0] |= 1; // a valid trace id is not all zero
                t
            }),
            any::<[u8; 8]>().prop_map(|mut s| {
                s[7] |= 1;
                s
            }),
            any::<u64>(),
            proptest::collection::vec(arb_str(), 0..4),
        )
            .prop_map(|(span, task, trace_id, span_id, ts, trace)| {
                Event::Handover(Box::new(Handover {
                    span,
                    task,
                    trace_id,
                    span_id,
                    ts,
                    trace,
                }))
            }),
        (
            arb_span(),
            arb_span(),
            any::<u64>(),
            proptest::collection::vec(arb_str(), 0..3),
            proptest::collection::vec((any::<Option<u32>>(), any::<u64>()), 0..6),
            proptest::option::of((arb_str(), any::<Option<u32>>())),
            any::<bool>(),
        )
            .prop_map(|(span, task, ts, paths, frames, at, wake)| {
                let n = paths.len() as u32;
                let stack = Box::new(WaitStack {
                    span,
                    stack: NativeStack {
                        task,
                        start: ts,
                        ts,
                        modules: paths
                            .into_iter()
                            .map(|path| Module {
                                path,
                                build_id: vec![],
                            })
                            .collect(),
                        frames: frames
                            .into_iter()
                            .map(|(module, address)| RawFrame {
                                module: module.filter(|_| n > 0).map(|m| m % n.max(1)),
                                address,
                            })
                            .collect(),
                    },
                    at: at.map(|(function, line)| NativeFrame {
                        function,
                        file: line.map(|_| "src/main.rs".into()),
                        line,
                        origin: FrameOrigin::User,
                    }),
                });
                // A wake's stack has a wait's shape.
                if wake {
                    Event::WakeStack(stack)
                } else {
                    Event::WaitStack(stack)
                }
            }),
    ]
}

pub fn arb_process_info() -> impl Strategy<Value = ProcessInfo> {
    (
        arb_str(),
        prop::collection::vec(arb_str(), 0..=4),
        arb_str(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(arb_str()),
    )
        .prop_map(
            |(name, cmdline, producer_version, tokio_unstable, reconnect, token)| ProcessInfo {
                name,
                cmdline,
                producer_version,
                tokio_unstable,
                reconnect,
                token,
            },
        )
}

pub fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        1 => arb_process_info().prop_map(Body::Hello),
        4 => prop::collection::vec(arb_event(), 0..8).prop_map(Body::Events),
        1 => any::<(u64, u64, u64)>().prop_map(|(buffer_full, disconnected, write_failed)| {
            Body::Dropped(DropCounts {
                buffer_full,
                disconnected,
                write_failed,
            })
        }),
        1 => Just(Body::Goodbye),
    ]
}

pub fn arb_frame() -> impl Strategy<Value = Frame> {
    (any::<u32>(), any::<u64>(), any::<u64>(), arb_body()).prop_map(
        |(pid, start_unix_ns, seq, body)| Frame {
            process: ProcessKey { pid, start_unix_ns },
            seq,
            body,
        },
    )
}
