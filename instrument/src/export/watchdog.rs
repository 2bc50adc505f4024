//! The stall watchdog: after each drain, the exporter looks at each
//! thread's poll in progress ([`PollSlot`]). A poll that has run past
//! `ANNOUNCE_AFTER_NS` gets a baseline of its thread's scheduler
//! statistics; once it runs past the stall threshold it is sampled once
//! (its async stack from the slot, its native stack, the statistics), and
//! after it ends its statistics are read again. Each gives a
//! [`Stall`] event; a sampled native stack follows its crossing's as a
//! [`NativeStack`] of addresses for the collector to symbolise.
//!
//! The native stack is asked for at the crossing and collected on a later
//! pass (the exporter drains meanwhile: waiting for the worker here let
//! the rings overflow); it is kept only if the same poll still runs when
//! the answer is collected, else the crossing says `Missed`.

use std::time::{Duration, Instant};

use awaitscope_wire::{NativeStack, SpanId, StackState, Stall};

use crate::capture::local::PollSlot;
use crate::capture::Capture;
use crate::stacks::modules::Modules;
use crate::stacks::sched::{Reading, SchedReader};
use crate::stacks::{self, InFlight, NoSample, StallConfig};

/// How soon to look again while a native stack sample is in flight (the
/// worker answers within tens of microseconds unless it is descheduled).
const SAMPLE_POLL: Duration = Duration::from_micros(100);

/// A native stack sample in flight: for which thread's poll, with the
/// crossing's spans read when it was asked for.
struct Sampling {
    thread: u32,
    poll: (u64, u64),
    request: InFlight,
    spans: Vec<SpanId>,
    asked: Instant,
}

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
    /// The native stack sample in flight (one at a time).
    sampling: Option<Sampling>,
    /// A request given up while the worker's handler was still walking:
    /// finished on a later pass (its buffer is the handler's until then).
    orphan: Option<InFlight>,
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
            sampling: None,
            orphan: None,
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
        if let Some(o) = &mut self.orphan {
            if o.cancel() {
                self.orphan = None;
            }
        }
        match &self.sampling {
            Some(s) if s.thread == thread => {
                if let Some(soon) = self.collect_sample(thread, name, slot, cur, shared) {
                    return Some(soon);
                }
            }
            // Not collected in time by its own thread's check: that thread
            // is gone.
            Some(s) if s.asked.elapsed() > 4 * stacks::SAMPLE_WAIT => {
                if let Some(mut s) = self.sampling.take() {
                    if !s.request.cancel() {
                        self.orphan = Some(s.request);
                    }
                }
            }
            _ => {}
        }
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
            // At most every few ms: a busy exporter may drain every 100 us.
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
        if !self.config.stacks {
            self.crossed(
                thread,
                name,
                slot,
                shared,
                poll,
                spans,
                StackState::Off,
                None,
            );
            return None;
        }
        match stacks::start_sample(slot.tid(), stacks::SAMPLE_WAIT) {
            Ok(request) => {
                self.sampling = Some(Sampling {
                    thread,
                    poll,
                    request,
                    spans,
                    asked: Instant::now(),
                });
                Some(SAMPLE_POLL)
            }
            // Another capture's sample (or a walk given up) holds the one
            // request: ask again on the next pass, for a while.
            Err(NoSample::Busy)
                if elapsed
                    < self.config.threshold_ns + 2 * stacks::SAMPLE_WAIT.as_nanos() as u64 =>
            {
                Some(SAMPLE_POLL)
            }
            Err(e) => {
                let state = no_sample_state(e);
                self.crossed(thread, name, slot, shared, poll, spans, state, None);
                None
            }
        }
    }

    /// The sample in flight for `thread`, whose slot now shows `cur`: its
    /// crossing goes out once the worker answered (or did not in time, or
    /// the poll ended: then `Missed`). Returns how soon to look again while
    /// it is still out.
    fn collect_sample(
        &mut self,
        thread: u32,
        name: &Option<String>,
        slot: &PollSlot,
        cur: Option<(u64, u64)>,
        shared: &Capture,
    ) -> Option<Duration> {
        let s = self.sampling.as_mut()?;
        let answer = if cur != Some(s.poll) {
            // The poll ended: what the worker answers is of something else.
            None
        } else {
            match s.request.collect() {
                None => return Some(SAMPLE_POLL),
                Some(answer) => Some(answer),
            }
        };
        let mut s = self.sampling.take()?;
        let (state, sample) = match answer {
            // Collected, but the poll ended meanwhile.
            Some(Ok(_)) if slot.read() != Some(s.poll) => (StackState::Missed, None),
            Some(Ok(sample)) => (StackState::Sampled, Some(sample)),
            Some(Err(e)) => (no_sample_state(e), None),
            None => {
                if !s.request.cancel() {
                    self.orphan = Some(s.request);
                }
                (StackState::Missed, None)
            }
        };
        self.crossed(thread, name, slot, shared, s.poll, s.spans, state, sample);
        None
    }

    /// The crossing of `poll` on `thread` was sampled (`state`, with the
    /// native stack if there is one): its stall is ready to send.
    #[allow(clippy::too_many_arguments)]
    fn crossed(
        &mut self,
        thread: u32,
        name: &Option<String>,
        slot: &PollSlot,
        shared: &Capture,
        poll: (u64, u64),
        spans: Vec<SpanId>,
        state: StackState,
        sample: Option<stacks::Sample>,
    ) {
        let start = shared.nanos(poll.1);
        let at = shared.nanos(shared.raw());
        let reading = self.sched.read(slot.tid(), at);
        let w = &mut self.watches[thread as usize];
        let sched = match (w.baseline, reading) {
            (Some(b), Some(r)) => Some(b.until(&r)),
            _ => None,
        };
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
    }

    /// The return addresses `addrs` a worker took where task `task` went
    /// to wait at `ts` (see `capture::wait_stack`), placed in the
    /// program's modules as a stall's stack is.
    pub fn place(&mut self, task: SpanId, ts: u64, addrs: &[usize]) -> NativeStack {
        self.modules.stack(task, ts, ts, addrs, false)
    }

    /// Stalls to send now, in the order they were seen.
    pub fn ready(&mut self) -> std::vec::Drain<'_, Pending> {
        self.ready.drain(..)
    }
}

/// The stack state of a crossing whose native stack was not sampled.
fn no_sample_state(e: NoSample) -> StackState {
    match e {
        NoSample::Unsupported => StackState::Unsupported,
        NoSample::Missed | NoSample::Busy => StackState::Missed,
    }
}
