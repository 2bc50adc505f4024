//! The stall watchdog: after each drain, the exporter looks at each
//! thread's poll in progress ([`PollSlot`]). A poll that has run past
//! `ANNOUNCE_AFTER_NS` gets a baseline of its thread's scheduler
//! statistics; once it runs past the stall threshold it is sampled once
//! (its async stack from the slot, its native stack, the statistics), and
//! after it ends its statistics are read again. Each gives a
//! [`Stall`] event; a sampled native stack follows its crossing's as a
//! [`NativeStack`] of addresses for the collector to symbolise.

use std::time::Duration;

use awaitscope_wire::{NativeStack, SpanId, StackState, Stall};

use crate::capture::local::PollSlot;
use crate::capture::Capture;
use crate::stacks::modules::Modules;
use crate::stacks::sched::{Reading, SchedReader};
use crate::stacks::{self, NoSample, StallConfig};

/// How often the statistics of a sampled poll still running are read
/// again (the end's fallback), in ns.
const REFRESH_NS: u64 = 5_000_000;

/// A stall on its way out: the thread it happened on (index and name, for
/// the `Thread` event before it), the event, and the native stack sampled
/// at its crossing.
pub(super) struct Pending {
    pub thread: u32,
    pub name: Option<String>,
    pub stall: Stall,
    pub native: Option<NativeStack>,
}

/// What the watchdog knows of one thread's long poll.
#[derive(Default)]
struct Watch {
    /// The poll watched (task span, raw start); span 0: none.
    poll: (u64, u64),
    /// The thread's statistics when the poll was first seen running long.
    baseline: Option<Reading>,
    /// The crossing was sampled (with this stack state).
    sampled: Option<StackState>,
    /// The latest statistics read since the crossing: the end's, should
    /// the thread be gone by the time the end is seen.
    last: Option<Reading>,
}

/// The watchdog's state, owned by the exporter.
pub(super) struct Watchdog {
    config: StallConfig,
    /// By thread index.
    watches: Vec<Watch>,
    sched: SchedReader,
    /// Reused buffer of a slot's spans.
    spans: Vec<u64>,
    /// The process's modules, read on the first sample.
    modules: Modules,
    /// Stalls to send.
    ready: Vec<Pending>,
}

impl Watchdog {
    pub fn new(config: StallConfig) -> Self {
        Self {
            config,
            watches: Vec::new(),
            sched: SchedReader::default(),
            spans: Vec::new(),
            modules: Modules::default(),
            ready: Vec::new(),
        }
    }

    /// Looks at `thread`'s poll slot at `now` (ns since start; `start_ns`
    /// converts the slot's raw start). Returns how soon to look again
    /// (the time left to the threshold of a poll running long and not
    /// sampled yet), if sooner than usual matters.
    pub fn check(
        &mut self,
        thread: u32,
        name: &Option<String>,
        slot: &PollSlot,
        shared: &Capture,
        announce_after_ns: u64,
    ) -> Option<Duration> {
        let now = shared.nanos(shared.raw());
        let start_ns = |raw| shared.nanos(raw);
        let i = thread as usize;
        if i >= self.watches.len() {
            self.watches.resize_with(i + 1, Default::default);
        }
        let cur = slot.read();
        let w = &mut self.watches[i];
        if w.poll.0 != 0 && cur != Some(w.poll) {
            // The watched poll ended.
            let done = std::mem::take(w);
            if let Some(state) = done.sampled {
                let sched = done.baseline.and_then(|b| {
                    let r = self.sched.read(slot.tid(), now).or(done.last)?;
                    Some(b.until(&r))
                });
                self.ready.push(Pending {
                    thread,
                    name: name.clone(),
                    stall: Stall {
                        task: SpanId(done.poll.0),
                        start: start_ns(done.poll.1),
                        ts: now,
                        ended: true,
                        spans: Vec::new(),
                        stack: state,
                        frames: Vec::new(),
                        sched,
                    },
                    native: None,
                });
            }
        }
        let poll = cur?;
        let start = start_ns(poll.1);
        let elapsed = now.saturating_sub(start);
        if elapsed < announce_after_ns {
            return None;
        }
        let w = &mut self.watches[i];
        if w.poll != poll {
            w.poll = poll;
            w.sampled = None;
            w.last = None;
            w.baseline = self.sched.read(slot.tid(), now);
        }
        let w = &mut self.watches[i];
        if w.sampled.is_some() {
            // At most every few ms: a busy exporter drains every 100 us.
            if w.last
                .is_none_or(|l| now.saturating_sub(l.at) >= REFRESH_NS)
            {
                w.last = self.sched.read(slot.tid(), now).or(w.last);
            }
            return None;
        }
        if elapsed < self.config.threshold_ns {
            return Some(Duration::from_nanos(self.config.threshold_ns - elapsed));
        }
        // The crossing: the async stack, then the native one.
        if !slot.read_spans(poll, &mut self.spans) {
            return None; // ended meanwhile: nothing to sample
        }
        let spans: Vec<SpanId> = self.spans.iter().map(|&s| SpanId(s)).collect();
        let (state, sample) = if !self.config.stacks {
            (StackState::Off, None)
        } else {
            match stacks::sample(slot.tid(), stacks::SAMPLE_WAIT) {
                // A sample taken after the poll ended is of something else.
                Ok(_) if slot.read() != Some(poll) => (StackState::Missed, None),
                Ok(s) => (StackState::Sampled, Some(s)),
                Err(NoSample::Missed) => (StackState::Missed, None),
                Err(NoSample::Unsupported) => (StackState::Unsupported, None),
            }
        };
        let at = shared.nanos(shared.raw());
        let reading = self.sched.read(slot.tid(), at);
        let sched = match (w.baseline, reading) {
            (Some(b), Some(r)) => Some(b.until(&r)),
            _ => None,
        };
        let w = &mut self.watches[i];
        w.sampled = Some(state);
        w.last = reading;
        // Addresses and modules only: symbolising is the collector's work
        // (loading the program's debug info would cost the program tens of
        // megabytes and a good part of a second).
        let native = sample.map(|s| {
            self.modules
                .stack(SpanId(poll.0), start, at, &s.addrs, s.exact_first)
        });
        self.ready.push(Pending {
            thread,
            name: name.clone(),
            stall: Stall {
                task: SpanId(poll.0),
                start,
                ts: at,
                ended: false,
                spans,
                stack: state,
                frames: Vec::new(),
                sched,
            },
            native,
        });
        None
    }

    /// Stalls to send now, in the order they were seen.
    pub fn ready(&mut self) -> std::vec::Drain<'_, Pending> {
        self.ready.drain(..)
    }
}
