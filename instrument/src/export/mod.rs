//! The exporter: a background thread that drains the per-thread rings,
//! turns records into wire events, keeps the state needed to rebuild a
//! collector's model after a reconnect (callsites and live spans), and
//! writes frames to the sinks: a collector over TCP, a recording file, or
//! memory (tests).
//!
//! Nothing here runs on the instrumented program's threads, so nothing here
//! can block them: when a sink is slow or down, records pile up in the rings
//! until those are full, and further records are dropped and counted.

pub(crate) mod sink;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use awaitscope_wire as wire;
use rustc_hash::FxHashMap;
use wire::{Body, DropCounts, Event, Frame, ProcessInfo, ProcessKey, SpanId};

use crate::capture::record::Raw;
use crate::capture::{Ring, Shared};
use sink::Sink;

/// Events per frame; frames that still exceed the size cap are split.
const BATCH: usize = 4096;
/// Idle wait between drains.
const TICK: Duration = Duration::from_millis(50);
/// Wait between drains while records keep coming.
const BUSY_TICK: Duration = Duration::from_millis(1);
/// Recordings and streams are flushed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Control block shared by the exporter thread and the guard.
#[derive(Default)]
pub(crate) struct Control {
    state: Mutex<ControlState>,
    cond: Condvar,
}

#[derive(Default)]
struct ControlState {
    stop: bool,
    flush_requested: u64,
    flush_done: u64,
}

/// Handle on a running exporter.
pub(crate) struct ExporterHandle {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl ExporterHandle {
    /// Drains everything recorded so far and flushes the sinks; returns when
    /// done (or after `timeout`).
    pub fn flush(&self, timeout: Duration) {
        let mut st = self.control.state.lock().unwrap_or_else(|e| e.into_inner());
        st.flush_requested += 1;
        let want = st.flush_requested;
        self.control.cond.notify_all();
        let deadline = Instant::now() + timeout;
        while st.flush_done < want && !st.stop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .control
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Final drain, `Goodbye`, flush, and join the thread.
    pub fn shutdown(&mut self) {
        {
            let mut st = self.control.state.lock().unwrap_or_else(|e| e.into_inner());
            st.stop = true;
            self.control.cond.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the exporter thread.
pub(crate) fn start(
    shared: Arc<Shared>,
    sinks: Vec<Sink>,
    info: ProcessInfo,
    process: ProcessKey,
) -> ExporterHandle {
    let control = Arc::new(Control::default());
    let mut exporter = Exporter {
        shared,
        rings: Vec::new(),
        announced: Vec::new(),
        callsites_sent: 0,
        live: FxHashMap::default(),
        process,
        info,
        seq: 0,
        sinks,
        raws: Vec::new(),
        batch: Vec::with_capacity(BATCH),
        buf: Vec::new(),
        last_flush: Instant::now(),
    };
    let c = control.clone();
    let thread = std::thread::Builder::new()
        .name("awaitscope-export".into())
        .spawn(move || exporter.run(&c))
        .ok();
    ExporterHandle { control, thread }
}

struct Exporter {
    shared: Arc<Shared>,
    rings: Vec<Ring>,
    /// Threads whose name was already sent.
    announced: Vec<u32>,
    callsites_sent: usize,
    /// Live spans, as their `SpanNew` (fields kept current), re-sent to a
    /// collector after a reconnect.
    live: FxHashMap<u64, Event>,
    process: ProcessKey,
    info: ProcessInfo,
    seq: u64,
    sinks: Vec<Sink>,
    raws: Vec<(u32, Raw)>,
    batch: Vec<Event>,
    buf: Vec<u8>,
    last_flush: Instant,
}

impl Exporter {
    fn run(&mut self, control: &Control) {
        let hello = self.frame_bytes(Body::Hello(self.info.clone()));
        for s in &mut self.sinks {
            s.start(&hello);
        }
        loop {
            let (stop, flush_want, flush_done) = {
                let st = control.state.lock().unwrap_or_else(|e| e.into_inner());
                (st.stop, st.flush_requested, st.flush_done)
            };
            self.connect_sinks();
            let n = self.drain();
            let flush = flush_want > flush_done || stop;
            if flush || self.last_flush.elapsed() >= FLUSH_EVERY {
                self.report_drops();
                for s in &mut self.sinks {
                    s.flush();
                }
                self.last_flush = Instant::now();
            }
            if stop {
                let bye = self.frame_bytes(Body::Goodbye);
                for s in &mut self.sinks {
                    s.write(&bye, 0);
                    s.flush();
                }
                return;
            }
            let mut st = control.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.flush_done < flush_want {
                st.flush_done = flush_want;
                control.cond.notify_all();
            }
            if st.stop || st.flush_requested > st.flush_done {
                continue;
            }
            let wait = if n > 256 { BUSY_TICK } else { TICK };
            let _ = control.cond.wait_timeout(st, wait);
        }
    }

    fn frame_bytes(&mut self, body: Body) -> Vec<u8> {
        let frame = Frame {
            process: self.process,
            seq: self.seq,
            body,
        };
        self.seq += 1;
        let mut out = Vec::new();
        // Control frames are small; an error here would be a bug.
        let _ = wire::encode_frame(&frame, &mut out);
        out
    }

    /// (Re)connects sinks that are down and due for an attempt, sending them
    /// the state needed to rebuild the model.
    fn connect_sinks(&mut self) {
        for i in 0..self.sinks.len() {
            if !self.sinks[i].wants_connect() {
                continue;
            }
            let handshake = self.handshake(self.sinks[i].connected_before());
            self.sinks[i].connect(&handshake);
        }
    }

    /// `Hello`, then every callsite sent so far and every live span: what a
    /// collector needs to rebuild its model of this process.
    fn handshake(&mut self, reconnect: bool) -> Vec<u8> {
        let mut info = self.info.clone();
        info.reconnect = reconnect;
        let mut out = self.frame_bytes(Body::Hello(info));
        let mut events: Vec<Event> = self
            .shared
            .callsites
            .since(0)
            .into_iter()
            .take(self.callsites_sent)
            .map(Event::Callsite)
            .collect();
        let mut spans: Vec<&Event> = self.live.values().collect();
        spans.sort_by_key(|e| match e {
            Event::SpanNew { id, .. } => id.0,
            _ => 0,
        });
        events.extend(spans.into_iter().cloned());
        let buffer_full = self.shared.buffer_full.load(Ordering::Relaxed);
        for chunk in events.chunks(BATCH) {
            self.encode_events(chunk.to_vec(), &mut out);
        }
        if buffer_full > 0 {
            let bytes = self.frame_bytes(Body::Dropped(DropCounts {
                buffer_full,
                ..DropCounts::default()
            }));
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Drains every ring once; returns the number of records drained.
    fn drain(&mut self) -> usize {
        {
            let mut new = self
                .shared
                .new_rings
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.rings.append(&mut new);
        }
        self.raws.clear();
        for ring in &mut self.rings {
            let n = ring.consumer.slots();
            if n == 0 {
                continue;
            }
            if let Ok(chunk) = ring.consumer.read_chunk(n) {
                self.raws
                    .extend(chunk.into_iter().map(|raw| (ring.thread, raw)));
            }
        }
        self.rings
            .retain(|r| !(r.consumer.is_abandoned() && r.consumer.is_empty()));
        let n = self.raws.len();
        // Callsites are read after the rings: any callsite a drained record
        // refers to was registered before the record was pushed.
        let callsites = self.shared.callsites.since(self.callsites_sent);
        self.callsites_sent += callsites.len();
        let want_events = self.sinks.iter().any(Sink::is_up);
        if want_events {
            self.batch
                .extend(callsites.into_iter().map(Event::Callsite));
        }
        let mut raws = std::mem::take(&mut self.raws);
        let mut thread = u32::MAX;
        for (t, raw) in raws.drain(..) {
            if want_events && t != thread {
                thread = t;
                let name = if self.announced.contains(&t) {
                    None
                } else {
                    self.announced.push(t);
                    self.rings
                        .iter()
                        .find(|r| r.thread == t)
                        .and_then(|r| r.name.clone())
                };
                self.batch.push(Event::Thread { id: t, name });
            }
            if let Some(ev) = self.convert(raw, want_events) {
                self.batch.push(ev);
                if self.batch.len() >= BATCH {
                    self.send_batch();
                }
            }
        }
        self.raws = raws;
        self.send_batch();
        n
    }

    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.batch);
        let count = events.len() as u64;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let events = self.encode_events(events, &mut buf);
        for s in &mut self.sinks {
            s.write(&buf, count);
        }
        self.buf = buf;
        self.batch = events;
        self.batch.clear();
    }

    /// Encodes `events` as one frame (or several, if over the size cap) onto
    /// `out`; returns the vector for reuse.
    fn encode_events(&mut self, events: Vec<Event>, out: &mut Vec<u8>) -> Vec<Event> {
        let mut frame = Frame {
            process: self.process,
            seq: self.seq,
            body: Body::Events(events),
        };
        self.seq += 1;
        match wire::encode_frame(&frame, out) {
            Ok(()) => {}
            Err(wire::EncodeError::FrameTooLarge(_)) => {
                if let Body::Events(events) = &mut frame.body {
                    if events.len() > 1 {
                        let second = events.split_off(events.len() / 2);
                        let first = std::mem::take(events);
                        self.encode_events(first, out);
                        self.encode_events(second, out);
                    } else {
                        // One event over the cap cannot happen with capped
                        // fields; drop it rather than stall the stream.
                        self.shared.buffer_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(_) => {
                self.shared.buffer_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        match frame.body {
            Body::Events(v) => v,
            _ => Vec::new(),
        }
    }

    /// Updates the live state for a record and converts it to a wire event
    /// (only when some sink is up).
    fn convert(&mut self, raw: Raw, want: bool) -> Option<Event> {
        let id = |v: u64| (v != 0).then_some(SpanId(v));
        let ns = |raw: u64| self.shared.nanos(raw);
        Some(match raw {
            Raw::Span(s) => {
                let ev = Event::SpanNew {
                    id: SpanId(s.id),
                    callsite: s.callsite,
                    parent: id(s.parent),
                    ctx_task: id(s.ctx_task),
                    ctx_span: id(s.ctx_span),
                    ts: ns(s.ts),
                    fields: s.fields,
                };
                if want {
                    self.live.insert(s.id, ev.clone());
                    ev
                } else {
                    self.live.insert(s.id, ev);
                    return None;
                }
            }
            Raw::Record(r) => {
                let (span, new) = *r;
                if let Some(Event::SpanNew { fields, .. }) = self.live.get_mut(&span) {
                    for f in &new {
                        if let Some(g) = fields.iter_mut().find(|g| g.index == f.index) {
                            g.value = f.value.clone();
                        } else if fields.len() < wire::limits::MAX_FIELDS {
                            fields.push(f.clone());
                        }
                    }
                }
                if !want {
                    return None;
                }
                Event::Record {
                    span: SpanId(span),
                    fields: new,
                }
            }
            Raw::Close { span, kind, ts } => {
                self.live.remove(&span);
                if !want {
                    return None;
                }
                Event::Close {
                    span: SpanId(span),
                    kind,
                    ts: ns(ts),
                }
            }
            _ if !want => return None,
            Raw::Enter { span, ts } => Event::Enter {
                span: SpanId(span),
                ts: ns(ts),
            },
            Raw::Exit { span, ts } => Event::Exit {
                span: SpanId(span),
                ts: ns(ts),
            },
            Raw::FollowsFrom { span, follows } => Event::FollowsFrom {
                span: SpanId(span),
                follows: SpanId(follows),
            },
            Raw::Wake { task, by, op, ts } => Event::Wake {
                task: SpanId(task),
                op,
                by: id(by),
                ts: ns(ts),
            },
            Raw::Log(l) => Event::Log {
                callsite: l.callsite,
                span: id(l.span),
                task: id(l.task),
                ts: ns(l.ts),
                fields: l.fields,
            },
            Raw::Panic(p) => Event::Panic {
                task: id(p.task),
                span: id(p.span),
                message: p.message,
                file: p.file,
                line: p.line,
                ts: ns(p.ts),
            },
        })
    }

    fn report_drops(&mut self) {
        let buffer_full = self.shared.buffer_full.load(Ordering::Relaxed);
        for i in 0..self.sinks.len() {
            let counts = DropCounts {
                buffer_full,
                ..self.sinks[i].drops()
            };
            if self.sinks[i].is_up() && self.sinks[i].last_reported() != counts {
                let bytes = self.frame_bytes(Body::Dropped(counts));
                self.sinks[i].write(&bytes, 0);
                self.sinks[i].set_reported(counts);
            }
        }
    }
}
