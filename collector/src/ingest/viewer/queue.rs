//! The server side: each viewer's queue, bounded in bytes, to which the
//! task applying frames only appends; a slow viewer's event batches are
//! dropped and counted (see the module doc of `viewer`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use awaitscope_wire::{limits, Body, Event, Frame, ProcessKey};

use super::protocol::{encode_control, encode_frame_msg, Control};
use crate::ingest::budget::Reservation;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frame applied by the server, encoded once for all viewers.
pub(crate) struct Outgoing {
    bytes: Arc<[u8]>,
    process: ProcessKey,
    /// Events in it, when it is an event batch (the only droppable kind).
    events: Option<u64>,
    /// Its callsites and named threads, kept when it is dropped.
    sticky: Vec<Event>,
}

impl Outgoing {
    /// Encodes a frame the server applied (a `Hello` without its token).
    pub(crate) fn frame(f: &Frame) -> Option<Outgoing> {
        let mut bytes = Vec::new();
        match &f.body {
            Body::Hello(info) if info.token.is_some() => {
                let mut info = info.clone();
                info.token = None;
                let hello = Frame {
                    body: Body::Hello(info),
                    ..f.clone()
                };
                encode_frame_msg(&hello, &mut bytes).ok()?;
            }
            _ => encode_frame_msg(f, &mut bytes).ok()?,
        }
        let (events, sticky) = match &f.body {
            Body::Events(ev) => (
                Some(ev.len() as u64),
                ev.iter()
                    .filter(|e| {
                        matches!(e, Event::Callsite(_) | Event::Thread { name: Some(_), .. })
                    })
                    .cloned()
                    .collect(),
            ),
            _ => (None, Vec::new()),
        };
        Some(Outgoing {
            bytes: bytes.into(),
            process: f.process,
            events,
            sticky,
        })
    }

    /// A control message (never dropped).
    pub(crate) fn control(c: &Control, process: ProcessKey) -> Outgoing {
        let mut bytes = Vec::new();
        encode_control(c, &mut bytes);
        Outgoing {
            bytes: bytes.into(),
            process,
            events: None,
            sticky: Vec::new(),
        }
    }
}

/// Most callsites and thread names kept per viewer from dropped batches;
/// beyond it they are dropped too (and later events of theirs misread).
const MAX_STICKY: usize = limits::MAX_BATCH;

struct Queue {
    items: VecDeque<Arc<[u8]>>,
    bytes: usize,
    /// Taken by the viewer's task and not yet written.
    inflight: usize,
    /// `bytes + inflight`, held against the viewers' share of the budget.
    held: Reservation,
    closed: bool,
    /// Dropped events not yet told to the viewer, per process.
    untold: BTreeMap<ProcessKey, u64>,
    /// Callsites and thread names of dropped batches, per process.
    sticky: BTreeMap<ProcessKey, Vec<Event>>,
    sticky_len: usize,
    dropped_frames: u64,
    dropped_events: u64,
}

impl Queue {
    fn push(&mut self, b: Arc<[u8]>) {
        self.bytes += b.len();
        // Control messages and what was kept of dropped batches are
        // small, and never dropped: held even past the share.
        if !self.held.resize(self.bytes + self.inflight) {
            self.held.force(self.bytes + self.inflight);
        }
        self.items.push_back(b);
    }

    /// Queues what was kept of dropped batches and tells the drops.
    fn tell_drops(&mut self) {
        for (process, events) in std::mem::take(&mut self.sticky) {
            let mut out = Vec::new();
            for chunk in events.chunks(limits::MAX_BATCH) {
                let f = Frame {
                    process,
                    seq: 0,
                    body: Body::Events(chunk.to_vec()),
                };
                if encode_frame_msg(&f, &mut out).is_err() {
                    // Split down to frames that fit.
                    for e in chunk {
                        let f = Frame {
                            process,
                            seq: 0,
                            body: Body::Events(vec![e.clone()]),
                        };
                        let _ = encode_frame_msg(&f, &mut out);
                    }
                }
            }
            self.push(out.into());
        }
        self.sticky_len = 0;
        for (process, events) in std::mem::take(&mut self.untold) {
            let mut out = Vec::new();
            encode_control(&Control::Dropped { process, events }, &mut out);
            self.push(out.into());
        }
    }
}

/// One viewer's queue: the applier appends, the viewer's task writes out.
pub(crate) struct ViewerQueue {
    q: Mutex<Queue>,
    notify: tokio::sync::Notify,
    cap: usize,
}

/// What happened to a push.
pub(crate) enum Pushed {
    Queued,
    Dropped { events: u64 },
    Closed,
}

impl ViewerQueue {
    pub(crate) fn new(cap_bytes: usize, held: Reservation) -> ViewerQueue {
        ViewerQueue {
            q: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                inflight: 0,
                held,
                closed: false,
                untold: BTreeMap::new(),
                sticky: BTreeMap::new(),
                sticky_len: 0,
                dropped_frames: 0,
                dropped_events: 0,
            }),
            notify: tokio::sync::Notify::new(),
            cap: cap_bytes.max(1),
        }
    }

    /// Appends `o`, or drops it if it is an event batch and the queue is
    /// full: over its cap, over `fair` (its part of the viewers' share), or
    /// with no room left in the share (at least one item is always let in).
    pub(crate) fn push(&self, o: &Outgoing, fair: usize) -> Pushed {
        let mut q = lock(&self.q);
        if q.closed {
            return Pushed::Closed;
        }
        if let Some(events) = o.events {
            let after = q.bytes + q.inflight + o.bytes.len();
            let held = q.held.bytes();
            let full = !q.items.is_empty()
                && (after > self.cap.min(fair) || !q.held.resize(after.max(held)));
            if full {
                *q.untold.entry(o.process).or_default() += events;
                q.dropped_frames += 1;
                q.dropped_events += events;
                let room = MAX_STICKY.saturating_sub(q.sticky_len);
                let keep = o.sticky.len().min(room);
                if keep > 0 {
                    q.sticky_len += keep;
                    q.sticky
                        .entry(o.process)
                        .or_default()
                        .extend(o.sticky[..keep].iter().cloned());
                }
                return Pushed::Dropped { events };
            }
        }
        if !q.untold.is_empty() {
            q.tell_drops();
        }
        q.push(o.bytes.clone());
        drop(q);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Counts `events` of `process` the viewer will not get (dropped before
    /// they reached the server's model); told with the next write.
    pub(crate) fn note_drops(&self, process: ProcessKey, events: u64) {
        let mut q = lock(&self.q);
        *q.untold.entry(process).or_default() += events;
        drop(q);
        self.notify.notify_one();
    }

    /// Takes everything queued (telling pending drops first when nothing
    /// else is queued); empty when nothing is.
    pub(crate) fn take(&self, out: &mut Vec<Arc<[u8]>>) {
        let mut q = lock(&self.q);
        if q.items.is_empty() && !q.untold.is_empty() {
            q.tell_drops();
        }
        out.extend(q.items.drain(..));
        q.inflight += q.bytes;
        q.bytes = 0;
    }

    /// `bytes` taken with [`ViewerQueue::take`] were written out.
    pub(crate) fn written(&self, bytes: usize) {
        let mut q = lock(&self.q);
        q.inflight = q.inflight.saturating_sub(bytes);
        let held = q.bytes + q.inflight;
        q.held.resize(held);
    }

    /// Waits until something may be queued.
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Stops queueing (the viewer left).
    pub(crate) fn close(&self) {
        let mut q = lock(&self.q);
        q.closed = true;
        q.items.clear();
        q.bytes = 0;
        q.inflight = 0;
        q.held.resize(0);
    }

    /// Frames and events dropped so far.
    pub(crate) fn dropped(&self) -> (u64, u64) {
        let q = lock(&self.q);
        (q.dropped_frames, q.dropped_events)
    }
}

/// The viewers of a server. Lock order: the model, then this, then a
/// queue.
#[derive(Default)]
pub(crate) struct Viewers {
    list: Mutex<Vec<Arc<ViewerQueue>>>,
    count: AtomicUsize,
}

impl Viewers {
    /// Whether any viewer is connected (a hint: check again under the lock).
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn list(&self) -> MutexGuard<'_, Vec<Arc<ViewerQueue>>> {
        lock(&self.list)
    }

    /// Adds a viewer (call under the model lock, with its rebuild).
    pub(crate) fn add(&self, q: Arc<ViewerQueue>) {
        let mut l = lock(&self.list);
        l.push(q);
        self.count.store(l.len(), Ordering::Relaxed);
    }

    pub(crate) fn remove(&self, q: &Arc<ViewerQueue>) {
        q.close();
        let mut l = lock(&self.list);
        l.retain(|x| !Arc::ptr_eq(x, q));
        self.count.store(l.len(), Ordering::Relaxed);
    }
}
