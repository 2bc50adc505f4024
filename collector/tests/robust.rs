//! Arbitrary event streams and bytes never panic the model, the detectors,
//! the report or the recording reader.

use awaitscope_collector::ingest::recording;
use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::{Model, Report};
use awaitscope_wire::{
    names, Body, Callsite, CallsiteKind, CloseKind, DropCounts, Event, EventClass, Field, Frame,
    Level, ProcessInfo, ProcessKey, SpanClass, SpanId, TreeNode, Value, WakeOp,
};
use proptest::prelude::*;

fn span_id() -> impl Strategy<Value = SpanId> {
    (0u64..12).prop_map(SpanId)
}

fn ts() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1_000_000_000_000, Just(u64::MAX), Just(0)]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::I64),
        any::<u64>().prop_map(Value::U64),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just("Mutex"),
            Just("Sleep"),
            Just(names::OP_SUB),
            Just(names::OP_ADD),
            Just(""),
            Just(names::KIND_BLOCKING)
        ]
        .prop_map(|s| Value::Str(s.into())),
    ]
}

fn fields() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec(
        (0u16..8, value()).prop_map(|(index, value)| Field { index, value }),
        0..6,
    )
}

fn callsite() -> impl Strategy<Value = Callsite> {
    let kind = prop_oneof![
        Just(CallsiteKind::Span(SpanClass::User)),
        Just(CallsiteKind::Span(SpanClass::Task)),
        Just(CallsiteKind::Span(SpanClass::Resource)),
        Just(CallsiteKind::Span(SpanClass::AsyncOp)),
        Just(CallsiteKind::Span(SpanClass::AsyncOpPoll)),
        Just(CallsiteKind::Event(EventClass::User)),
        Just(CallsiteKind::Event(EventClass::PollOp)),
        Just(CallsiteKind::Event(EventClass::StateUpdate)),
    ];
    let level = prop_oneof![Just(Level::Info), Just(Level::Warn), Just(Level::Error)];
    (0u32..6, kind, level).prop_map(|(id, kind, level)| Callsite {
        id,
        name: format!("cs{id}"),
        target: "t".into(),
        level,
        file: Some("f.rs".into()),
        line: Some(id),
        kind,
        fields: [
            names::KIND,
            names::TASK_NAME,
            names::CONCRETE_TYPE,
            names::LOCKED,
            names::IS_READY,
            names::PERMITS_OP,
            names::LOC_FILE,
            names::LOC_LINE,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    })
}

fn event() -> impl Strategy<Value = Event> {
    let op = prop_oneof![
        Just(WakeOp::Wake),
        Just(WakeOp::WakeByRef),
        Just(WakeOp::Clone),
        Just(WakeOp::Drop)
    ];
    let close = prop_oneof![
        Just(CloseKind::Span),
        Just(CloseKind::Completed),
        Just(CloseKind::Cancelled),
        Just(CloseKind::Panicked)
    ];
    prop_oneof![
        callsite().prop_map(|c| Event::Callsite(Box::new(c))),
        (0u32..3).prop_map(|id| Event::Thread { id, name: None }),
        (
            span_id(),
            0u32..6,
            prop::option::of(span_id()),
            prop::option::of(span_id()),
            ts(),
            fields()
        )
            .prop_map(
                |(id, callsite, parent, ctx_task, ts, fields)| Event::SpanNew(Box::new(
                    awaitscope_wire::SpanNew {
                        id,
                        callsite,
                        parent,
                        ctx_task,
                        ctx_span: parent,
                        ts,
                        fields
                    }
                ))
            ),
        (span_id(), fields()).prop_map(|(span, fields)| Event::Record { span, fields }),
        (
            span_id(),
            prop::collection::vec((span_id(), 0u16..5), 0..10)
        )
            .prop_map(|(task, n)| Event::PollTree {
                task,
                spans: n
                    .into_iter()
                    .map(|(span, depth)| TreeNode { span, depth })
                    .collect(),
            }),
        (span_id(), ts()).prop_map(|(span, ts)| Event::Enter { span, ts }),
        (span_id(), ts()).prop_map(|(span, ts)| Event::Exit { span, ts }),
        (span_id(), close, ts()).prop_map(|(span, kind, ts)| Event::Close { span, kind, ts }),
        (span_id(), op, prop::option::of(span_id()), ts())
            .prop_map(|(task, op, by, ts)| Event::Wake { task, op, by, ts }),
        (
            0u32..6,
            prop::option::of(span_id()),
            prop::option::of(span_id()),
            ts(),
            fields()
        )
            .prop_map(|(callsite, span, task, ts, fields)| Event::Log(Box::new(
                awaitscope_wire::Log {
                    callsite,
                    span,
                    task,
                    ts,
                    fields,
                    trace: Vec::new(),
                }
            ))),
        (prop::option::of(span_id()), ts()).prop_map(|(task, ts)| Event::Panic(Box::new(
            awaitscope_wire::Panic {
                task,
                span: None,
                message: "p".into(),
                file: None,
                line: None,
                ts,
                trace: Vec::new(),
            }
        ))),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        1 => any::<bool>().prop_map(|reconnect| Body::Hello(ProcessInfo {
            name: "x".into(),
            cmdline: vec![],
            producer_version: "0".into(),
            tokio_unstable: true,
            reconnect,
            token: None,
        })),
        8 => prop::collection::vec(event(), 0..40).prop_map(Body::Events),
        1 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| Body::Dropped(DropCounts {
            buffer_full: a,
            disconnected: b,
            write_failed: c
        })),
        1 => Just(Body::Goodbye),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_streams_never_panic(bodies in prop::collection::vec((0u32..2, body()), 1..30)) {
        let mut model = Model::default();
        for (i, (pid, body)) in bodies.into_iter().enumerate() {
            model.apply(&Frame { process: ProcessKey { pid, start_unix_ns: 0 }, seq: i as u64, body });
            model.scan_wall(u64::MAX / 2);
        }
        model.finish();
        let r = Report::from_model(&model);
        serde_json::to_string(&r).unwrap();
        r.summary_text();
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reader(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = StreamBuilder::new(1, 0);
        b.hello("x", None, false);
        b.thread(0);
        let t = b.spawn(&TaskOpts::named("t"), None, 1);
        b.poll(t, 2, 3);
        let mut bytes = b.recording();
        bytes.extend(tail);
        let mut model = Model::default();
        let rep = recording::load_reader(&mut model, "fuzz", &bytes[..]).unwrap();
        prop_assert!(rep.frames >= 2);
        model.finish();
        Report::from_model(&model);
    }
}
