//! Events into frames: each converted event is encoded into the frame
//! being built (or only counted while no destination is up), and a full
//! frame goes to every destination under its own sequence number.

use std::sync::atomic::Ordering;

use awaitscope_wire as wire;
use wire::{Event, SpanId};

use super::*;
use crate::span_node::SpanNode;

impl Exporter {
    /// Encodes `ev` into the current frame, sending the frame when it is
    /// full.
    #[inline(always)]
    pub(super) fn emit(&mut self, ev: &Event) {
        self.push_event(ev, Self::send_batch);
    }

    /// [`Exporter::emit`] of an event with nothing to drop (ids, times and
    /// counts: see [`is_plain`]), without a call to `Event`'s drop glue,
    /// which the compiler does not elide for a temporary (paid per
    /// event).
    #[inline(always)]
    pub(super) fn emit_plain(&mut self, ev: Event) {
        debug_assert!(is_plain(&ev));
        let ev = std::mem::ManuallyDrop::new(ev);
        self.emit(&ev);
    }

    /// Encodes `ev` into the frame being built; `flush` takes the frame when
    /// it is full or `ev` does not fit in it.
    #[inline(always)]
    pub(super) fn push_event<E: wire::EncodesAsEvent + ?Sized>(
        &mut self,
        ev: &E,
        flush: fn(&mut Self),
    ) {
        if self.count_only {
            self.count_uncoded(flush);
            return;
        }
        match self.frame.push(ev) {
            Ok(()) => {}
            Err(wire::EncodeError::FrameTooLarge(_)) if !self.frame.is_empty() => {
                self.flush_within_run(flush);
                if self.frame.push(ev).is_err() {
                    self.capture.buffer_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            // One event over the cap cannot happen with capped fields; drop
            // it rather than stall the stream.
            Err(_) => {
                self.capture.buffer_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.frame.len() >= self.batch {
            self.flush_within_run(flush);
        }
    }

    /// Counts an event not encoded (see `count_only`) in the frame being
    /// built, taken when full as an encoded one would be.
    #[inline(always)]
    pub(super) fn count_uncoded(&mut self, flush: fn(&mut Self)) {
        self.uncoded += 1;
        if self.uncoded >= self.batch as u64 {
            self.flush_within_run(flush);
        }
    }

    /// Takes the frame in the middle of a thread's run of events, and names
    /// that thread again at the start of the next frame. The collector
    /// applies a frame's events on the thread its last `Thread` event named
    /// and merges a frame's runs by time, so a run continued in the next
    /// frame without it would be applied on whichever thread the previous
    /// frame ended with: another thread's span stack, where the spans of
    /// one thread then show in the await tree of a task polled on another
    /// (a `stuck` finding on a task that never entered them).
    #[cold]
    #[inline(never)]
    pub(super) fn flush_within_run(&mut self, flush: fn(&mut Self)) {
        flush(self);
        if self.thread != u32::MAX {
            if self.count_only {
                self.uncoded += 1;
                return;
            }
            // An empty frame takes one small event.
            let _ = self.frame.push(&Event::Thread {
                id: self.thread,
                name: None,
            });
        }
    }

    /// Encodes the `SpanNew` event of a span node, its fields read in place
    /// under the node's lock (not copied: a spawn's fields are a vector and
    /// several strings).
    pub(super) fn push_span_new(&mut self, n: &SpanNode, flush: fn(&mut Self)) {
        if self.count_only {
            self.count_uncoded(flush);
            return;
        }
        if n.meta.fields().is_empty() {
            // A callsite without fields (`#[instrument(skip_all)]`, a
            // server's per-request span) has none to record, ever: its
            // lock, a line the creating thread wrote, is not taken here.
            self.push_span_new_with(n, &[], flush);
            return;
        }
        let fields = n.fields.lock().unwrap_or_else(|e| e.into_inner());
        self.push_span_new_with(n, &fields, flush);
    }

    /// Encodes the `SpanNew` of a compact span (see
    /// `Capture::new_compact`): no fields, `task` the one inferred.
    pub(super) fn push_span_compact(
        &mut self,
        id: u64,
        parent: u64,
        task: u64,
        ts: u64,
        callsite: u32,
        flush: fn(&mut Self),
    ) {
        if self.count_only {
            self.count_uncoded(flush);
            return;
        }
        let ev = wire::SpanNewRef {
            id: SpanId(id),
            callsite,
            parent: span_id(parent),
            ctx_task: span_id(task),
            ctx_span: span_id(parent),
            ts: self.capture.nanos(ts),
            fields: &[],
        };
        self.push_event(&ev, flush);
    }

    /// [`Exporter::push_span_new`] with the node's fields read.
    #[inline(always)]
    fn push_span_new_with(&mut self, n: &SpanNode, fields: &[wire::Field], flush: fn(&mut Self)) {
        let ev = wire::SpanNewRef {
            id: SpanId(n.id),
            callsite: n.callsite,
            parent: span_id(n.parent_id),
            ctx_task: (n.ctx_task != 0).then_some(SpanId(n.ctx_task)),
            ctx_span: (n.ctx_span != 0).then_some(SpanId(n.ctx_span)),
            ts: self.capture.nanos(n.ts),
            fields,
        };
        self.push_event(&ev, flush);
    }

    /// Whether records are converted to events: whenever some destination
    /// may take them, now or (a collector that is down) as a loss to count.
    /// A destination that is down counts the events of every frame it
    /// misses, so the drops it reports when it is back are events, as
    /// another destination's stream would have carried them.
    pub(super) fn wants_events(&self) -> bool {
        !self.destinations.is_empty()
    }

    /// Appends the frame being built to `out` with sequence number `seq`,
    /// keeping it; returns its events, or `None` if it cannot be encoded
    /// (then it is emptied and its events counted as dropped).
    pub(super) fn finish_frame(&mut self, seq: u64, out: &mut Vec<u8>) -> Option<u64> {
        if self.frame.is_empty() {
            return None;
        }
        let count = self.frame.len() as u64;
        match self.frame.write_to(self.process, seq, out) {
            Ok(()) => Some(count),
            Err(_) => {
                self.capture.buffer_full.fetch_add(count, Ordering::Relaxed);
                self.frame.clear();
                None
            }
        }
    }

    /// Sends the current frame to the destinations, each under its own
    /// sequence number, and empties it.
    pub(super) fn send_batch(&mut self) {
        if self.uncoded > 0 {
            // The frame nobody was up to take (see `count_only`): each
            // destination counts its events as dropped, and its sequence
            // number moves on as for a frame sent.
            let events = std::mem::take(&mut self.uncoded);
            for d in &mut self.destinations {
                d.next_seq();
                d.write(&[], events);
            }
        }
        if self.frame.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        for i in 0..self.destinations.len() {
            buf.clear();
            let seq = self.destinations[i].next_seq();
            match self.finish_frame(seq, &mut buf) {
                Some(count) => self.destinations[i].write(&buf, count),
                None => break,
            }
        }
        self.frame.clear();
        self.buf = buf;
    }

    /// Appends the current frame to `buf` (the handshake being built for
    /// destination `staging`), and empties it.
    pub(super) fn stage_frame(&mut self) {
        if self.frame.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        let seq = self.destinations[self.staging].next_seq();
        self.finish_frame(seq, &mut buf);
        self.frame.clear();
        self.buf = buf;
    }
}

/// Variants of `Event` that own no heap data.
#[inline(always)]
pub(super) fn is_plain(ev: &Event) -> bool {
    matches!(
        ev,
        Event::Poll { .. }
            | Event::PollEnd { .. }
            | Event::Wake { .. }
            | Event::Enter { .. }
            | Event::Exit { .. }
            | Event::Close { .. }
    )
}
