//! Memory use of decoding: no allocation for a refused length, and none much
//! larger than one capped frame for any input.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use awaitscope_wire::*;
use common::*;

/// Records the largest single allocation (or reallocation) made by the
/// current thread while tracking is on.
struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: thread-locals may be gone while a thread shuts down.
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            let _ = TOTAL.try_with(|l| l.set(l.get() + size));
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f`, returning its result, the largest single allocation it made and
/// the sum of all its allocations.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    (r, LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}

#[test]
fn refused_length_allocates_nothing_large() {
    let mut bytes = preamble().to_vec();
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 64]);
    let (r, largest, _) = measure(|| decode_frame(&bytes[Preamble::LEN..], 10));
    assert!(matches!(r, Err(DecodeError::FrameTooLarge { .. })));
    assert_eq!(largest, 0, "decode_frame allocated {largest} bytes");

    let (r, largest, _) = measure(|| {
        let mut reader = FrameReader::new(&bytes[..]).unwrap();
        reader.next_frame()
    });
    assert!(matches!(r, Err(DecodeError::FrameTooLarge { .. })), "{r:?}");
    assert!(largest < 1024, "FrameReader allocated {largest} bytes");

    // Just over the cap.
    let mut bytes = preamble().to_vec();
    bytes.extend_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_le_bytes());
    let (r, largest, _) = measure(|| FrameReader::new(&bytes[..]).unwrap().next_frame());
    assert!(matches!(r, Err(DecodeError::FrameTooLarge { .. })), "{r:?}");
    assert!(largest < 1024, "FrameReader allocated {largest} bytes");
}

/// A frame of `count` copies of a small event (as raw bytes, no caps checked).
fn batch_of(count: usize, e: Event) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&frame(0, Body::Events(vec![e; count])), &mut out).unwrap();
    assert!(out.len() - 4 <= MAX_FRAME_LEN);
    out
}

/// Decodes `bytes` (one frame) both ways; checks that it is refused with a
/// reason containing `reason`, with no allocation over `max_alloc` bytes.
fn assert_refused_cheaply(bytes: &[u8], reason: &str, max_alloc: usize) {
    let (r, largest, _) = measure(|| decode_frame(bytes, 0));
    match r {
        Err(DecodeError::Malformed { reason: why, .. }) => {
            assert!(why.contains(reason), "{why:?} lacks {reason:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        largest <= max_alloc,
        "decode_frame allocated {largest} bytes at once"
    );

    let mut stream = preamble().to_vec();
    stream.extend_from_slice(bytes);
    let (r, largest, _) = measure(|| FrameReader::new(&stream[..]).unwrap().next_frame());
    assert!(matches!(r, Err(DecodeError::Malformed { .. })), "{r:?}");
    // The reader holds the payload itself.
    assert!(
        largest <= bytes.len() + max_alloc,
        "FrameReader allocated {largest} bytes at once"
    );
}

// A megabyte of tiny list elements would take tens of megabytes once
// decoded (64 MiB in one allocation for a batch of 3-byte events, before the
// fix); lists over their cap must be refused while they are decoded.

#[test]
fn huge_batches_are_refused_without_inflating_them() {
    let e = Event::Enter {
        span: SpanId(1),
        ts: 1,
    };
    let bytes = batch_of((MAX_FRAME_LEN - 16) / 3, e.clone());
    assert_refused_cheaply(&bytes, "events in a batch exceed the cap", 64 * 1024);
    // Just over the cap.
    let bytes = batch_of(limits::MAX_BATCH + 1, e);
    assert_refused_cheaply(&bytes, "16385 events", 64 * 1024);
}

#[test]
fn long_field_lists_are_refused_without_inflating_them() {
    let fields = vec![
        Field {
            index: 0,
            value: Value::Bool(true),
        };
        (MAX_FRAME_LEN - 64) / 3
    ];
    for e in [
        Event::Record {
            span: SpanId(1),
            fields: fields.clone(),
        },
        Event::SpanNew(Box::new(SpanNew {
            id: SpanId(1),
            callsite: 0,
            parent: None,
            ctx_task: None,
            ctx_span: None,
            ts: 0,
            fields: fields.clone(),
        })),
        Event::Log(Box::new(Log {
            callsite: 0,
            span: None,
            task: None,
            ts: 0,
            fields: fields.clone(),
            trace: Vec::new(),
        })),
    ] {
        assert_refused_cheaply(&batch_of(1, e), "fields exceed the cap", 4096);
    }
}

#[test]
fn long_string_lists_are_refused_without_inflating_them() {
    let f = frame(
        0,
        Body::Hello(ProcessInfo {
            name: "p".into(),
            cmdline: vec![String::new(); MAX_FRAME_LEN - 64],
            producer_version: "v".into(),
            tokio_unstable: false,
            reconnect: false,
            token: None,
        }),
    );
    let mut bytes = Vec::new();
    encode_frame(&f, &mut bytes).unwrap();
    assert_refused_cheaply(&bytes, "command-line arguments exceed the cap", 4096);

    let c = Event::Callsite(Box::new(Callsite {
        id: 0,
        name: "n".into(),
        target: "t".into(),
        level: Level::Info,
        file: None,
        line: None,
        kind: CallsiteKind::Event(EventClass::User),
        fields: vec![String::new(); MAX_FRAME_LEN - 64],
    }));
    assert_refused_cheaply(&batch_of(1, c), "field names exceed the cap", 4096);
}

#[test]
fn a_full_batch_decodes_in_one_batch_sized_allocation() {
    let e = Event::Enter {
        span: SpanId(1),
        ts: 1,
    };
    let bytes = batch_of(limits::MAX_BATCH, e);
    let (r, largest, _) = measure(|| decode_frame(&bytes, 0));
    let (f, _) = r.unwrap().unwrap();
    assert!(matches!(&f.body, Body::Events(es) if es.len() == limits::MAX_BATCH));
    assert!(
        largest <= limits::MAX_BATCH * std::mem::size_of::<Event>(),
        "{largest}"
    );
}

#[test]
fn sample_frames_decode_in_small_allocations() {
    let bytes = stream(&sample_frames());
    let (r, largest, _) = measure(|| {
        FrameReader::new(&bytes[..])
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
    });
    assert_eq!(r.unwrap(), sample_frames());
    assert!(largest < 64 * 1024, "{largest}");
}
