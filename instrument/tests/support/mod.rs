//! Runs real tokio programs under the awaitscope layer with an in-memory
//! recording, and reads back what was captured.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;

use awaitscope::MemoryRecording;
use awaitscope_wire::{
    Body, CallsiteKind, CloseKind, DropCounts, Event, EventClass, Field, Frame, SpanClass, SpanId,
    Value, WakeOp,
};
use tracing_subscriber::layer::SubscriberExt;

/// Which runtime to run the program on.
#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    CurrentThread,
    MultiThread,
}

/// Runs `program` on a fresh runtime of `flavor` with awaitscope capturing
/// into memory (ring of `ring` slots per thread), and returns the capture.
pub fn capture_with<F, Fut>(flavor: Flavor, ring: usize, program: F) -> Captured
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let memory = MemoryRecording::new();
    let builder = awaitscope::Builder::new()
        .record_in_memory(&memory)
        .ring_capacity(ring);
    run(flavor, builder, |_| program());
    Captured::from_frames(memory.frames().expect("recording decodes"))
}

/// The subscriber the tests run under: awaitscope's own (the one `init()`
/// installs), or with `AWAITSCOPE_TEST_STACK=layer` the `AwaitscopeLayer` on
/// `tracing_subscriber`'s registry (what `builder()` users compose). CI runs
/// the tests under both.
pub fn dispatch_of(builder: awaitscope::Builder) -> (tracing::Dispatch, awaitscope::Guard) {
    match std::env::var("AWAITSCOPE_TEST_STACK").as_deref() {
        Ok("layer") => {
            let (layer, guard) = builder.build();
            let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
            (dispatch, guard)
        }
        Ok("store") | Err(_) => {
            let (subscriber, guard) = builder
                .try_build_subscriber()
                .expect("awaitscope builds")
                .expect("awaitscope is on");
            (awaitscope::scoped_dispatch(subscriber), guard)
        }
        Ok(other) => panic!("AWAITSCOPE_TEST_STACK={other}: expected `store` or `layer`"),
    }
}

/// Runs `program` on a fresh runtime of `flavor` under the subscriber
/// `builder` makes (see [`dispatch_of`]); the program gets the guard (for
/// `dump`). Returns its output.
pub fn run<F, Fut, T>(flavor: Flavor, builder: awaitscope::Builder, program: F) -> T
where
    F: FnOnce(std::sync::Arc<awaitscope::Guard>) -> Fut,
    Fut: Future<Output = T>,
{
    let (dispatch, guard) = dispatch_of(builder);
    let guard = std::sync::Arc::new(guard);
    let out = {
        let d = dispatch.clone();
        let mut builder = match flavor {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavor::MultiThread => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            }
        };
        let rt = builder
            .enable_all()
            .on_thread_start(move || {
                // The default dispatcher of a worker thread lasts as long as
                // the thread.
                std::mem::forget(tracing::dispatcher::set_default(&d));
            })
            .build()
            .unwrap();
        tracing::dispatcher::with_default(&dispatch, || {
            // With a single scoped dispatcher, tracing caches a callsite's
            // interest from whichever thread hits it first; callsites first
            // hit on a thread without this dispatcher would stay disabled.
            tracing::callsite::rebuild_interest_cache();
            let out = rt.block_on(program(guard.clone()));
            drop(rt);
            out
        })
    };
    drop(dispatch);
    drop(guard);
    out
}

/// [`capture_with`] with the default ring size.
pub fn capture<F, Fut>(flavor: Flavor, program: F) -> Captured
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    capture_with(flavor, 16 * 1024, program)
}

#[derive(Clone, Debug)]
pub struct SpanInfo {
    pub id: SpanId,
    pub name: String,
    pub target: String,
    pub class: SpanClass,
    pub parent: Option<SpanId>,
    pub ctx_task: Option<SpanId>,
    pub ctx_span: Option<SpanId>,
    pub fields: HashMap<String, Value>,
    pub enters: Vec<(u32, u64)>,
    pub exits: Vec<(u32, u64)>,
    /// Task spans: live wakers at the end of each poll (`PollEnd`), in the
    /// order the polls ended (events of different threads in one frame come
    /// thread by thread, not in time order).
    pub poll_wakers: Vec<u32>,
    /// (end, live wakers) of each poll, in stream order.
    poll_ends: Vec<(u64, u32)>,
    pub close: Option<CloseKind>,
}

impl SpanInfo {
    pub fn str_field(&self, name: &str) -> Option<&str> {
        match self.fields.get(name) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
    /// Polls of a task: enter/exit pairs, minus the drop of its future when
    /// it ended.
    pub fn polls(&self) -> usize {
        let pairs = self.enters.len();
        match self.close {
            Some(CloseKind::Span) | None => pairs,
            Some(_) => pairs.saturating_sub(1),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogInfo {
    pub name: String,
    pub target: String,
    pub class: EventClass,
    pub level: awaitscope_wire::Level,
    pub span: Option<SpanId>,
    pub task: Option<SpanId>,
    pub fields: HashMap<String, Value>,
    pub trace: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Wake {
    pub task: SpanId,
    pub by: Option<SpanId>,
    pub op: WakeOp,
}

/// Everything captured, decoded.
#[derive(Debug, Default)]
pub struct Captured {
    pub frames: usize,
    pub hello: bool,
    pub goodbye: bool,
    pub spans: HashMap<SpanId, SpanInfo>,
    pub span_order: Vec<SpanId>,
    pub logs: Vec<LogInfo>,
    pub wakes: Vec<Wake>,
    pub panics: Vec<(Option<SpanId>, Option<SpanId>, String)>,
    pub panic_traces: Vec<Vec<String>>,
    /// Stalls reported by the watchdog, in stream order.
    pub stalls: Vec<awaitscope_wire::Stall>,
    /// `NativeStack` events seen (each symbolised into its stall).
    pub native_stacks: usize,
    pub dropped: DropCounts,
    /// Per task: the await trees sent (span, depth), in order.
    pub poll_trees: HashMap<SpanId, Vec<Vec<(SpanId, u16)>>>,
    /// Per task: spans entered while the task was being polled, in order.
    pub entered_in_task: HashMap<SpanId, Vec<SpanId>>,
    /// `Poll` events (a whole poll in one event) seen.
    pub whole_polls: usize,
    /// Contexts that left the process (`Context::traceparent`).
    pub handovers: Vec<awaitscope_wire::Handover>,
    /// Where tasks went to wait (`WaitStack`), each with the frame it
    /// awaits at, symbolised as a collector does.
    pub waits: Vec<(
        awaitscope_wire::WaitStack,
        Option<awaitscope_wire::NativeFrame>,
    )>,
    /// Where tasks woke themselves in their own polls (`WakeStack`), each
    /// with its innermost frame of the program's own, symbolised.
    pub self_wakes: Vec<(
        awaitscope_wire::WaitStack,
        Option<awaitscope_wire::NativeFrame>,
    )>,
}

fn fields_map(names: &[String], fields: &[Field]) -> HashMap<String, Value> {
    fields
        .iter()
        .filter_map(|f| {
            names
                .get(f.index as usize)
                .map(|n| (n.clone(), f.value.clone()))
        })
        .collect()
}

impl Captured {
    pub fn from_frames(frames: Vec<Frame>) -> Self {
        let mut c = Captured {
            frames: frames.len(),
            ..Default::default()
        };
        let mut callsites = HashMap::new();
        // Per thread: stack of entered spans.
        let mut stacks: HashMap<u32, Vec<SpanId>> = HashMap::new();
        let mut thread = 0u32;
        for frame in frames {
            match frame.body {
                Body::Hello(_) => c.hello = true,
                Body::Goodbye => c.goodbye = true,
                Body::Dropped(d) => c.dropped = d,
                Body::Events(events) => {
                    for e in events {
                        c.apply(e, &mut callsites, &mut stacks, &mut thread);
                    }
                }
            }
        }
        for s in c.spans.values_mut() {
            // Stable: polls ending at the same instant keep stream order.
            s.poll_ends.sort_by_key(|&(ts, _)| ts);
            s.poll_wakers = s.poll_ends.iter().map(|&(_, w)| w).collect();
        }
        c
    }

    fn apply(
        &mut self,
        e: Event,
        callsites: &mut HashMap<u32, awaitscope_wire::Callsite>,
        stacks: &mut HashMap<u32, Vec<SpanId>>,
        thread: &mut u32,
    ) {
        match e {
            Event::Callsite(cs) => {
                callsites.insert(cs.id, *cs);
            }
            Event::Thread { id, .. } => *thread = id,
            Event::SpanNew(boxed) => {
                let awaitscope_wire::SpanNew {
                    id,
                    callsite,
                    parent,
                    ctx_task,
                    ctx_span,
                    fields,
                    ..
                } = *boxed;
                let cs = &callsites[&callsite];
                let CallsiteKind::Span(class) = cs.kind else {
                    panic!("span of an event callsite")
                };
                self.span_order.push(id);
                self.spans.insert(
                    id,
                    SpanInfo {
                        id,
                        name: cs.name.clone(),
                        target: cs.target.clone(),
                        class,
                        parent,
                        ctx_task,
                        ctx_span,
                        fields: fields_map(&cs.fields, &fields),
                        enters: vec![],
                        exits: vec![],
                        poll_wakers: vec![],
                        poll_ends: vec![],
                        close: None,
                    },
                );
            }
            Event::Record { span, fields } => {
                let _ = (span, fields);
            }
            Event::FollowsFrom { .. } => {}
            Event::PollTree { task, spans } => {
                self.poll_trees
                    .entry(task)
                    .or_default()
                    .push(spans.iter().map(|n| (n.span, n.depth)).collect());
                let entered = self.entered_in_task.entry(task).or_default();
                for n in spans {
                    if !entered.contains(&n.span) {
                        entered.push(n.span);
                    }
                }
            }
            Event::Poll {
                task,
                start,
                duration,
                wakers,
            } => {
                self.whole_polls += 1;
                self.apply(
                    Event::Enter {
                        span: task,
                        ts: start,
                    },
                    callsites,
                    stacks,
                    thread,
                );
                self.apply(
                    Event::PollEnd {
                        task,
                        ts: start + duration,
                        wakers,
                    },
                    callsites,
                    stacks,
                    thread,
                );
            }
            Event::Enter { span, ts } => {
                let stack = stacks.entry(*thread).or_default();
                if let Some(task) = stack.iter().rev().find(|s| {
                    self.spans
                        .get(s)
                        .is_some_and(|i| i.class == SpanClass::Task)
                }) {
                    self.entered_in_task.entry(*task).or_default().push(span);
                }
                stack.push(span);
                if let Some(s) = self.spans.get_mut(&span) {
                    s.enters.push((*thread, ts));
                }
            }
            Event::Exit { span, ts } => self.exit(span, ts, None, stacks, *thread),
            Event::PollEnd { task, ts, wakers } => {
                self.exit(task, ts, Some(wakers), stacks, *thread)
            }
            Event::Close { span, kind, .. } => {
                if let Some(s) = self.spans.get_mut(&span) {
                    s.close = Some(kind);
                }
            }
            Event::Wake { task, op, by, .. } => self.wakes.push(Wake { task, by, op }),
            Event::Log(boxed) => {
                let awaitscope_wire::Log {
                    callsite,
                    span,
                    task,
                    fields,
                    trace,
                    ..
                } = *boxed;
                let cs = &callsites[&callsite];
                let CallsiteKind::Event(class) = cs.kind else {
                    panic!("log of a span callsite")
                };
                self.logs.push(LogInfo {
                    name: cs.name.clone(),
                    target: cs.target.clone(),
                    class,
                    level: cs.level,
                    span,
                    task,
                    fields: fields_map(&cs.fields, &fields),
                    trace,
                });
            }
            Event::Panic(boxed) => {
                let awaitscope_wire::Panic {
                    task,
                    span,
                    message,
                    trace,
                    ..
                } = *boxed;
                self.panics.push((task, span, message));
                self.panic_traces.push(trace);
            }
            Event::Stall(st) => self.stalls.push(*st),
            // Symbolised as a collector does, into its stall's frames.
            Event::NativeStack(ns) => {
                let s = awaitscope_collector::symbolize::symbolize(&ns, None);
                if let Some(st) = self
                    .stalls
                    .iter_mut()
                    .rev()
                    .find(|st| !st.ended && st.task == ns.task && st.start == ns.start)
                {
                    st.frames = s.frames;
                }
                self.native_stacks += 1;
            }
            Event::Handover(h) => self.handovers.push(*h),
            Event::WaitStack(w) => {
                let at = awaitscope_collector::symbolize::awaited_at(&w.stack, None);
                self.waits.push((*w, at));
            }
            Event::WakeStack(w) => {
                let at = awaitscope_collector::symbolize::awaited_at(&w.stack, None);
                self.self_wakes.push((*w, at));
            }
        }
    }

    fn exit(
        &mut self,
        span: SpanId,
        ts: u64,
        wakers: Option<u32>,
        stacks: &mut HashMap<u32, Vec<SpanId>>,
        thread: u32,
    ) {
        let stack = stacks.entry(thread).or_default();
        if let Some(pos) = stack.iter().rposition(|s| *s == span) {
            stack.remove(pos);
        }
        if let Some(s) = self.spans.get_mut(&span) {
            s.exits.push((thread, ts));
            if let Some(w) = wakers {
                s.poll_ends.push((ts, w));
            }
        }
    }

    /// Tasks (in creation order).
    pub fn tasks(&self) -> Vec<&SpanInfo> {
        self.span_order
            .iter()
            .map(|id| &self.spans[id])
            .filter(|s| s.class == SpanClass::Task)
            .collect()
    }

    /// The task named `name` (tokio's `task.name` field).
    pub fn task(&self, name: &str) -> &SpanInfo {
        let found: Vec<_> = self
            .tasks()
            .into_iter()
            .filter(|t| t.str_field("task.name") == Some(name))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one task named {name}, found {found:?}"
        );
        found[0]
    }

    /// The user span named `name` (exactly one).
    pub fn span(&self, name: &str) -> &SpanInfo {
        let found: Vec<_> = self
            .span_order
            .iter()
            .map(|id| &self.spans[id])
            .filter(|s| s.name == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one span named {name}, found {}",
            found.len()
        );
        found[0]
    }

    /// Spans of a given class.
    pub fn of_class(&self, class: SpanClass) -> Vec<&SpanInfo> {
        self.span_order
            .iter()
            .map(|id| &self.spans[id])
            .filter(|s| s.class == class)
            .collect()
    }
}

/// A collector comes up at `addr` (a loopback address the program streams
/// to, nobody listening there now) and waits, up to 30 s, for the program
/// to connect; `tick` runs between tries (make a span, flush: the exporter
/// tries to connect before its drains). Returns the connection, blocking.
pub fn collector_comes_up(addr: std::net::SocketAddr, tick: impl Fn()) -> std::net::TcpStream {
    use std::time::{Duration, Instant};
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let conn = loop {
        tick();
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the program never connected: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn
}

/// Every frame the program sends on `conn` until it closes it (its guard
/// dropped), read whole.
pub fn frames_until_closed(mut conn: std::net::TcpStream) -> Vec<Frame> {
    use std::io::Read;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes).unwrap();
    let mut reader = awaitscope_wire::FrameReader::new(&bytes[..]).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = reader.next_frame().unwrap() {
        frames.push(f);
    }
    frames
}

/// The lines of the stacks in `stacks` (a capture's `waits` or
/// `self_wakes`) of task `task`, each the stack's innermost frame of the
/// program's own code, which must be in a file ending in `file`.
#[allow(dead_code)]
pub fn stack_lines(
    stacks: &[(
        awaitscope_wire::WaitStack,
        Option<awaitscope_wire::NativeFrame>,
    )],
    task: SpanId,
    file: &str,
) -> Vec<u32> {
    stacks
        .iter()
        .filter(|(w, _)| w.stack.task == task)
        .map(|(_, at)| {
            let at = at.as_ref().expect("the stack names the program's code");
            assert_eq!(at.origin, awaitscope_wire::FrameOrigin::User);
            assert!(
                at.file.as_deref().is_some_and(|f| f.ends_with(file)),
                "{at:?}"
            );
            at.line.expect("a line")
        })
        .collect()
}
