//! Allocation on the span path: once the exporter has read a thread's
//! closed spans, the thread's next spans reuse their nodes, so a program
//! that creates and closes spans in steady state (a span per request)
//! allocates nothing for them. The same for events sent as logs (tokio's
//! resource events, a warning): their records come back to the thread
//! that made them. (Drains are asked for with `Guard::flush`, so that the
//! test does not depend on the exporter's timing.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use awaitscope::MemoryRecording;

/// Counts the allocations the current thread makes while counting is on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: thread-locals may be gone while a thread shuts down.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Spans between two drains of the exporter.
const BATCH: u64 = 50;

/// The events of the recording in `memory` that `which` picks.
fn recorded(memory: &MemoryRecording, which: impl Fn(&awaitscope_wire::Event) -> bool) -> usize {
    let frames = memory.frames().expect("recording decodes");
    frames
        .iter()
        .filter_map(|f| match &f.body {
            awaitscope_wire::Body::Events(evs) => Some(evs),
            _ => None,
        })
        .flatten()
        .filter(|e| which(e))
        .count()
}

/// A request's span: created, entered, exited, closed.
fn request(i: u64) {
    let span = tracing::info_span!("request");
    let _entered = span.enter();
    std::hint::black_box(i);
}

/// Runs `step(i)` for `i` in `0..30 * BATCH` under awaitscope's own
/// subscriber recording into `memory`, in batches each followed by a
/// drain, and returns the allocations this thread made in the last 10
/// batches (the first 20 warm up: this thread's state, the store's slots,
/// and the records a batch needs; a thread's pool of nodes or log records
/// is as large as the most it had in flight between two drains, when the
/// exporter gives them back). The recording is complete on return.
fn allocations_in_steady_state(memory: &MemoryRecording, step: impl Fn(u64)) -> usize {
    let (subscriber, guard) = awaitscope::Builder::new()
        .record_in_memory(memory)
        .try_build_subscriber()
        .expect("awaitscope builds")
        .expect("awaitscope is on");
    tracing::subscriber::with_default(subscriber, || {
        for batch in 0..30 {
            COUNTING.with(|c| c.set(batch >= 20));
            for i in 0..BATCH {
                step(batch * BATCH + i);
            }
            COUNTING.with(|c| c.set(false));
            guard.flush();
        }
    });
    drop(guard);
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn spans_in_steady_state_allocate_nothing() {
    let memory = MemoryRecording::new();
    let allocations = allocations_in_steady_state(&memory, request);
    assert_eq!(allocations, 0, "allocations for 500 spans in steady state");
    // The spans were captured all the same.
    let created = recorded(&memory, |e| matches!(e, awaitscope_wire::Event::SpanNew(_)));
    assert_eq!(created, 30 * BATCH as usize);
}

/// Spans with text fields (tokio's resource spans name their kind, type
/// and source file; a handler's span its route): the thread's next spans
/// write their texts into the buffers of the nodes they reuse, so in
/// steady state nothing is allocated for them, and the texts are
/// recorded as given.
#[test]
fn spans_with_text_fields_in_steady_state_allocate_nothing() {
    let memory = MemoryRecording::new();
    let allocations = allocations_in_steady_state(&memory, |i| {
        let route = if i % 2 == 0 { "/users" } else { "/orders/{id}" };
        let span = tracing::info_span!(
            "request",
            route,
            method = %"GET",
            attempt = i % 3,
            peer = ?("10.0.0.1", 443)
        );
        let _entered = span.enter();
        std::hint::black_box(i);
    });
    assert_eq!(allocations, 0, "allocations for 500 spans in steady state");
    use awaitscope_wire::{Event, Value};
    let with = |route: &str| {
        recorded(&memory, |e| {
            matches!(e, Event::SpanNew(s) if s.fields.len() == 4
                && s.fields.iter().any(|f| f.value == Value::Str(route.into()))
                && s.fields.iter().any(|f| f.value == Value::Str("GET".into()))
                && s.fields.iter().any(|f| f.value == Value::Str("(\"10.0.0.1\", 443)".into())))
        })
    };
    assert_eq!(
        (with("/users"), with("/orders/{id}")),
        (15 * BATCH as usize, 15 * BATCH as usize)
    );
}

/// A program's warnings (what awaitscope captures of its events: WARN and
/// ERROR) with a message and text fields: the records the exporter gives
/// back carry their texts' buffers, which the thread's next events write
/// over.
#[test]
fn events_with_messages_in_steady_state_allocate_nothing() {
    let memory = MemoryRecording::new();
    let allocations = allocations_in_steady_state(&memory, |i| {
        let user = if i % 2 == 0 { "ada" } else { "grace" };
        // Numbered in four digits: a text buffer grows to the longest
        // text it held, and the longer numbers would start just as the
        // count does.
        tracing::warn!(user, order = i, "slow order {i:04} for {user}");
    });
    assert_eq!(
        allocations,
        0,
        "allocations for {} events in steady state",
        10 * BATCH
    );
    use awaitscope_wire::{Event, Value};
    let slow = |user: &str| {
        recorded(&memory, |e| {
            matches!(e, Event::Log(l) if l.fields.len() == 3
                && l.fields.iter().any(|f| f.value == Value::Str(user.into()))
                && l.fields.iter().any(|f| matches!(&f.value,
                    Value::Str(m) if m.starts_with("slow order ") && m.ends_with(user))))
        })
    };
    assert_eq!(
        (slow("ada"), slow("grace")),
        (15 * BATCH as usize, 15 * BATCH as usize)
    );
}

/// tokio's resource events, their fields held inline (a state update's
/// permits and lock state, a poll op's name and readiness, a timer's
/// deadline: their texts numbered once, not copied): in steady state
/// nothing is allocated for them, and they are recorded whole.
#[test]
fn logs_in_steady_state_allocate_nothing() {
    let memory = MemoryRecording::new();
    let allocations = allocations_in_steady_state(&memory, |i| {
        // What tokio sends when a semaphore's permits change.
        tracing::trace!(
            target: "runtime::resource::state_update",
            permits = i,
            locked = false
        );
        // And when a task polls it.
        tracing::trace!(
            target: "runtime::resource::poll_op",
            op_name = "poll_acquire",
            is_ready = i % 2 == 0
        );
        // A timer's deadline set.
        tracing::trace!(
            target: "runtime::resource::state_update",
            duration = 5_000u64,
            duration.unit = "ms",
            duration.op = "override"
        );
    });
    assert_eq!(
        allocations,
        0,
        "allocations for {} logs in steady state",
        3 * 10 * BATCH
    );
    use awaitscope_wire::{Event, Value};
    let state_updates = recorded(&memory, |e| {
        matches!(e, Event::Log(l) if l.fields.len() == 2
            && l.fields.iter().any(|f| f.value == Value::Bool(false))
            && l.fields.iter().any(|f| matches!(f.value, Value::U64(_))))
    });
    let polls = |ready: bool| {
        recorded(&memory, |e| {
            matches!(e, Event::Log(l) if l.fields.len() == 2
                && l.fields.iter().any(|f| f.value == Value::Str("poll_acquire".into()))
                && l.fields.iter().any(|f| f.value == Value::Bool(ready)))
        })
    };
    let deadlines = recorded(&memory, |e| {
        matches!(e, Event::Log(l) if l.fields.len() == 3
            && l.fields.iter().any(|f| f.value == Value::U64(5_000))
            && l.fields.iter().any(|f| f.value == Value::Str("ms".into()))
            && l.fields.iter().any(|f| f.value == Value::Str("override".into())))
    });
    assert_eq!(state_updates, 30 * BATCH as usize);
    assert_eq!(deadlines, 30 * BATCH as usize);
    assert_eq!(
        (polls(true), polls(false)),
        (15 * BATCH as usize, 15 * BATCH as usize)
    );
}
