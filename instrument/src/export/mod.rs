//! The exporter: a background thread that drains the per-thread rings,
//! turns records into wire events, keeps the state needed to rebuild a
//! collector's model after a reconnect (callsites and live spans), and
//! writes frames to its destinations: a collector over TCP, a recording
//! file, or memory (tests).
//!
//! Nothing here runs on the instrumented program's threads, so nothing here
//! can block them: when a destination is slow or down, records pile up in
//! the rings until those are full, and further records are dropped and
//! counted.
//!
//! Here, the thread's life (start, the loop of drains, flushes, the last
//! writes at exit) and its destinations' connections and handshakes. The
//! steps of a drain have modules of their own: [`drain`] reads the rings
//! in time order across threads, [`convert`] turns each record into its
//! event and keeps the model of what is live, [`frame`] encodes events into
//! frames and sends them; [`destination`] and [`tcp`] are where frames go,
//! [`watchdog`] samples polls that run too long.

mod convert;
pub(crate) mod destination;
mod drain;
mod frame;
mod tcp;
mod watchdog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use awaitscope_wire as wire;
use wire::{Body, DropCounts, Event, Frame, ProcessInfo, ProcessKey, SpanId};

use crate::await_tree::{AwaitModel, Dump};
use crate::capture::{Capture, Ring};
use crate::names;
use crate::span_node::SpanNode;
use convert::{span_id, thread_reads, ThreadReads};
use destination::Destination;
use drain::raw_ticks;
use watchdog::Watchdog;

/// Most closes kept waiting for their span's creation (see
/// `Exporter::early_closes`).
const MAX_EARLY_CLOSES: usize = 1 << 16;

/// Most spans kept aside in a drain as closed when their creation was read
/// (see `Exporter::closed_young`).
const MAX_CLOSED_YOUNG: usize = 256;

/// Events per frame; frames that still exceed the size cap are split.
const BATCH: usize = 4096;
/// Events per frame while a drain's round of time slices is converted
/// (see `Exporter::convert_by_time`): frames are cut between rounds, where
/// every thread was read up to the same time, so that a record about a
/// span and the span's creation on another thread, in the same round,
/// land in the same frame (which the collector merges by time); only a
/// round of more events than this (or of more bytes than a frame's cap)
/// is cut inside.
const ROUND_BATCH: usize = 4 * BATCH;
/// Idle wait between drains. Short enough that a program starting work
/// while the exporter idles does not fill its threads' first rings and grow
/// them for good: with 50 ms, the benchmark's workers grew theirs to the
/// largest size at startup (peak RSS of a recording 50 -> 32 MiB, median of
/// 10 A/B rounds, with 10 ms). A hundred wake-ups a second cost nothing
/// measurable.
const TICK: Duration = Duration::from_millis(10);
/// Shortest wait between drains while records keep coming: short enough
/// that a ring filling at tens of millions of records per second does not
/// overflow. The wait is longer when the rings fill slower (see
/// [`Exporter::busy_wait`]).
const BUSY_TICK: Duration = Duration::from_micros(100);
/// How often the exporter looks at the threads' polls in progress while it
/// waits between drains and a poll the last drain saw running long goes on
/// (see [`Exporter::sleep_watching`]): its end is seen, and its thread's
/// statistics read, within this of it.
const WATCH_TICK: Duration = Duration::from_millis(1);
/// The same while no poll is seen running long, the usual state of a busy
/// program: a poll is announced, and watched for a stall, within this of
/// crossing [`ANNOUNCE_AFTER_NS`] (at most: see [`look_tick`]). Each look
/// wakes the exporter's thread, which on a machine the program keeps busy
/// takes a core from it for a context switch and a timer each time; at
/// [`WATCH_TICK`] the looks were most of the exporter's wake-ups on a
/// server and a large part of its CPU time (BENCHMARKS.md, #17).
const LOOK_TICK: Duration = Duration::from_millis(4);

/// The looks' interval while no poll is seen running long: [`LOOK_TICK`],
/// or less under a low stall threshold, so that a poll is first seen long
/// (its thread's statistics read, the baseline of its stall verdict) by
/// half way from [`ANNOUNCE_AFTER_NS`] to `threshold_ns`; never under
/// [`WATCH_TICK`].
fn look_tick(threshold_ns: u64) -> Duration {
    let half_way = Duration::from_nanos(threshold_ns.saturating_sub(ANNOUNCE_AFTER_NS) / 2);
    LOOK_TICK.min(half_way).max(WATCH_TICK)
}

/// What a look at the threads' polls in progress found (see
/// [`Exporter::look`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// A poll ran past [`ANNOUNCE_AFTER_NS`] that no drain saw so, or one
    /// a drain saw so ended: drain.
    TurnedLong,
    /// Some poll runs.
    Running,
    /// No thread is in a poll.
    Quiet,
}
/// Width of the time slices in which a drain interleaves threads (see
/// `Exporter::convert_by_time`): well under the collector's thresholds
/// (50 ms for starvation), wide enough that a thread's run of records is
/// rarely cut.
const SLICE_NS: u64 = 1_000_000;
/// Recordings and streams are flushed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What the guard asks of the exporter thread (stop, flush) and what the
/// thread answers (flushes done), with the condvar a flush waits on (the
/// exporter parks between drains: a request also unparks it, see
/// `Capture::wake_exporter`).
#[derive(Default)]
struct Requests {
    state: Mutex<RequestState>,
    cond: Condvar,
}

/// The state behind [`Requests`]' mutex: a stop flag, and flushes counted
/// as asked and as done (a flush waits until the done count reaches its
/// own number).
#[derive(Default)]
struct RequestState {
    stop: bool,
    flush_requested: u64,
    flush_done: u64,
    /// The thread has sent its `Goodbye`s and returned.
    finished: bool,
}

/// How long collectors get at exit, from the stop request, to take what
/// waits for them (at least [`FINAL_GRACE`] after the final drain): all a
/// collector that does not read can delay the exit by. What they did not
/// take then is counted as dropped.
const FINAL_WRITES: Duration = Duration::from_millis(150);
/// See [`FINAL_WRITES`]: a final drain that took longer still leaves a
/// collector that reads this long to take its last frames.
const FINAL_GRACE: Duration = Duration::from_millis(20);
/// Longest the exit waits for the exporter at all: its final drain and the
/// recording's last writes are work on this machine, but a recording on a
/// hung file system must not hold the program for ever.
const EXIT_WAIT_MAX: Duration = Duration::from_secs(5);

/// What flushing and dumping need of an exporter.
#[derive(Clone)]
pub(crate) struct Source {
    requests: Arc<Requests>,
    model: Arc<Mutex<AwaitModel>>,
    capture: Arc<Capture>,
}

/// The guard's handle on the exporter thread: flushes and dumps through
/// its [`Source`], and stops and joins the thread.
pub(crate) struct ExporterHandle {
    source: Source,
    thread: Option<JoinHandle<()>>,
}

impl ExporterHandle {
    /// The exporter's flush and dump side.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Final drain, `Goodbye`, flush, and join the thread (see
    /// [`Source::stop`] for how long this may take).
    pub fn shutdown(&mut self) {
        let finished = self.source.stop();
        if let Some(t) = self.thread.take() {
            if finished {
                let _ = t.join();
            }
            // Else the thread is left to itself: the exit does not wait.
        }
    }
}

impl Source {
    /// Asks for the final drain, `Goodbye` and flush, and waits for them
    /// (collectors get [`FINAL_WRITES`]; the whole at most
    /// [`EXIT_WAIT_MAX`]). Returns whether the exporter thread finished.
    pub fn stop(&self) -> bool {
        let requests = &self.requests;
        let mut st = requests.state.lock().unwrap_or_else(|e| e.into_inner());
        st.stop = true;
        requests.cond.notify_all();
        // The exporter parks between drains.
        self.capture.wake_exporter();
        let deadline = Instant::now() + EXIT_WAIT_MAX;
        while !st.finished {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = requests
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Whether both are the same exporter.
    pub fn same(&self, other: &Source) -> bool {
        Arc::ptr_eq(&self.requests, &other.requests)
    }

    /// Every live task with its await tree, after draining what was
    /// recorded so far.
    pub fn dump(&self) -> Dump {
        self.flush(Duration::from_secs(5));
        let shared = &self.capture;
        let now = shared.nanos(shared.raw());
        self.model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot(now, |raw| shared.nanos(raw))
    }

    /// Drains everything recorded so far and flushes the destinations;
    /// returns when done (or after `timeout`).
    pub fn flush(&self, timeout: Duration) {
        let mut st = self
            .requests
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        st.flush_requested += 1;
        let want = st.flush_requested;
        self.requests.cond.notify_all();
        self.capture.wake_exporter();
        let deadline = Instant::now() + timeout;
        while st.flush_done < want && !st.stop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .requests
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Starts the exporter thread.
pub(crate) fn start(
    capture: Arc<Capture>,
    destinations: Vec<Destination>,
    info: ProcessInfo,
    process: ProcessKey,
    stall: crate::stacks::StallConfig,
) -> ExporterHandle {
    let requests = Arc::new(Requests::default());
    let mut exporter = Exporter::new(capture, destinations, info, process, stall);
    let model = exporter.model.clone();
    let c = requests.clone();
    let capture = exporter.capture.clone();
    let thread = std::thread::Builder::new()
        .name("awaitscope-export".into())
        .spawn(move || exporter.run(&c))
        .ok();
    if thread.is_none() {
        // No exporter to wait for at exit.
        requests
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished = true;
    }
    ExporterHandle {
        source: Source {
            requests,
            model,
            capture,
        },
        thread,
    }
}

impl Exporter {
    /// An exporter of `capture` to `destinations`, not started (see
    /// [`start`]).
    fn new(
        capture: Arc<Capture>,
        destinations: Vec<Destination>,
        info: ProcessInfo,
        process: ProcessKey,
        stall: crate::stacks::StallConfig,
    ) -> Exporter {
        let model = Arc::new(Mutex::new(AwaitModel::default()));
        let mut exporter = Exporter {
            capture,
            rings: Vec::new(),
            announced: Vec::new(),
            callsites_sent: 0,
            model: model.clone(),
            process,
            info,
            destinations,
            staging: 0,
            counts: Vec::new(),
            thread: u32::MAX,
            held: None,
            spare_log: None,
            spare_texts: Vec::with_capacity(SPARE_TEXTS),
            returns: Vec::new(),
            threads: Vec::new(),
            drop_counters: Vec::new(),
            leaving: Vec::new(),
            retired_drops: 0,
            fullest: 0,
            last_count: Instant::now(),
            busy_wait: BUSY_TICK,
            seen_long: Vec::new(),
            look_tick: look_tick(stall.threshold_ns),
            swept_drops: 0,
            close_suspects: Vec::new(),
            early_closes: Default::default(),
            closed_young: Default::default(),
            open_compact: Vec::new(),
            drains: 0,
            stopping: false,
            stop_seen: None,
            frame: wire::EventsFrame::new(),
            count_only: false,
            uncoded: 0,
            buf: Vec::new(),
            last_flush: Instant::now(),
            watchdog: Watchdog::new(stall),
            next_check: None,
            slice_raw: 0,
            replaced: false,
            batch: BATCH,
        };
        exporter.slice_raw = raw_ticks(&exporter.capture, SLICE_NS);
        exporter
    }
}

struct Exporter {
    capture: Arc<Capture>,
    rings: Vec<Ring>,
    /// By thread index: where the nodes of spans the thread created go back
    /// to it once closed, and its log records once sent (see
    /// `capture::local::NODE_RETURNS` and `LOG_RETURNS`).
    returns: Vec<Option<crate::capture::local::Returns>>,
    /// Threads whose name was already sent.
    announced: Vec<u32>,
    callsites_sent: usize,
    /// Live spans and tasks with their await trees; live spans are re-sent
    /// to a collector after a reconnect.
    model: Arc<Mutex<AwaitModel>>,
    process: ProcessKey,
    info: ProcessInfo,
    destinations: Vec<Destination>,
    /// The destination whose handshake is being built (see
    /// [`Exporter::stage_frame`]).
    staging: usize,
    /// Records in each ring at the start of a drain (reused).
    counts: Vec<usize>,
    /// Thread of the last `Thread` event sent.
    thread: u32,
    /// A task's poll start (span, raw time) not sent yet: if the next record
    /// of its ring ends that poll, both go out as one `Poll` event.
    held: Option<(u64, u64)>,
    /// The allocation of the `Log` event last sent, kept for the next
    /// (tokio's resource events are logs, several per lock taken).
    spare_log: Option<Box<awaitscope_wire::Log>>,
    /// Text buffers of the spare log's fields that the last log did not
    /// need, for the next one's texts (at most [`SPARE_TEXTS`]): tokio's
    /// resource events of different layouts (a poll op, a state update, a
    /// timer's deadline) come in turn through the one spare log.
    spare_texts: Vec<String>,
    /// By thread index: what has been read of each thread's polls.
    threads: Vec<ThreadReads>,
    /// By thread index: the counter of records the thread dropped (shared
    /// by its rings), until the thread is gone (see
    /// [`Exporter::retire_threads`]).
    drop_counters: Vec<Option<Arc<AtomicU64>>>,
    /// Threads whose last ring here was retired, not known to be gone yet.
    leaving: Vec<u32>,
    /// Drops of threads that are gone.
    retired_drops: u64,
    /// How full the fullest ring was at the last drain, in quarters.
    fullest: usize,
    /// When the last drain counted the rings.
    last_count: Instant,
    /// Wait before the next drain while records keep coming: about the
    /// time the fastest-filling ring takes to fill a quarter, at the rate
    /// the last drain saw, between [`BUSY_TICK`] and [`TICK`]. Each drain
    /// converts, encodes and writes, on a machine the program keeps busy; a
    /// fixed short tick paid thousands of them a second for a few records
    /// each. Polls that run long are looked for in between (see
    /// [`Exporter::sleep_watching`]).
    busy_wait: Duration,
    /// By thread index: the poll in progress (task span, raw start) that
    /// the last drain saw running past [`ANNOUNCE_AFTER_NS`], if any ((0,
    /// 0): none). The looks between drains ask for a drain when another
    /// poll turns long or this one ends.
    seen_long: Vec<(u64, u64)>,
    /// The looks' interval while no poll is seen long (see [`look_tick`]).
    look_tick: Duration,
    /// Records dropped when live spans were last checked for lost closes.
    swept_drops: u64,
    /// Live spans whose nodes said they closed at that check.
    close_suspects: Vec<u64>,
    /// Closes of spans whose creation was not read yet: span -> (how, when,
    /// drain). A span created on one thread and closed on another has its
    /// close in the second thread's ring, which a drain may read before the
    /// first's.
    early_closes: rustc_hash::FxHashMap<u64, (wire::CloseKind, u64, u64)>,
    /// Spans that were already closed when this drain read their creation
    /// (a span made and closed inside one poll: a server's per-request
    /// span), with the thread that made them, oldest first: their closes
    /// nearly always follow in this drain, in the same order, and take them
    /// from the front. The ones left at the drain's end go into the model
    /// as any span. Each skips an insert into the model and its removal.
    closed_young: std::collections::VecDeque<(Arc<SpanNode>, u32)>,
    /// The compact spans whose creation this drain read and whose close it
    /// has not (see `Exporter::age_compact`).
    open_compact: Vec<convert::OpenCompact>,
    /// Drains so far (`early_closes` are aged in drains).
    drains: u64,
    /// This drain is the last one (the guard was dropped).
    stopping: bool,
    /// When the exporter saw the stop request.
    stop_seen: Option<Instant>,
    /// The frame being filled: events are encoded as they are converted.
    frame: wire::EventsFrame,
    /// No destination takes frames during this drain (a collector that is
    /// not running, past the first connection's wait: the usual state of a
    /// program with `init()` that nobody is debugging): events are still
    /// converted, which keeps the model that
    /// a collector connecting later gets in its handshake, but not
    /// encoded, since every destination would only count them as dropped.
    /// They are counted in `uncoded` instead and charged to the
    /// destinations frame by frame, as encoded frames would have been.
    count_only: bool,
    /// Events of the frame being built while `count_only`.
    uncoded: u64,
    buf: Vec<u8>,
    last_flush: Instant,
    /// Samples polls that run past the stall threshold.
    watchdog: Watchdog,
    /// Events at which the frame being built is sent: [`BATCH`], or
    /// [`ROUND_BATCH`] inside a round of a drain.
    batch: usize,
    /// Some thread has more than one ring (a full one replaced by a larger
    /// one, not drained yet): recomputed when rings come and go.
    replaced: bool,
    /// [`SLICE_NS`] in raw clock ticks.
    slice_raw: u64,
    /// Look at the poll slots again this soon (a poll nears the stall
    /// threshold), rather than after the usual tick.
    next_check: Option<Duration>,
}

impl Exporter {
    fn run(&mut self, requests: &Requests) {
        self.capture.set_exporter();
        for i in 0..self.destinations.len() {
            let mut info = self.info.clone();
            // The token authenticates to a collector; it never goes into a
            // recording, which may be shared (a CI artifact).
            if !self.destinations[i].is_collector() {
                info.token = None;
            }
            let hello = self.frame_bytes(i, Body::Hello(info));
            self.destinations[i].start(&hello);
        }
        loop {
            let (stop, flush_want, flush_done) = {
                let st = requests.state.lock().unwrap_or_else(|e| e.into_inner());
                (st.stop, st.flush_requested, st.flush_done)
            };
            if stop && self.stop_seen.is_none() {
                self.stop_seen = Some(Instant::now());
            }
            if !stop {
                // Not at exit: a connection attempt may take up to its
                // timeout, and the exit waits for nothing remote.
                self.connect_destinations();
            }
            for s in &mut self.destinations {
                s.pump();
            }
            self.stopping = stop;
            let n = self.drain();
            let flush = flush_want > flush_done || stop;
            if flush || self.last_flush.elapsed() >= FLUSH_EVERY {
                self.report_drops();
                for s in &mut self.destinations {
                    s.flush();
                }
                self.last_flush = Instant::now();
            }
            if stop {
                let deadline = (self.stop_seen.unwrap_or_else(Instant::now) + FINAL_WRITES)
                    .max(Instant::now() + FINAL_GRACE);
                for i in 0..self.destinations.len() {
                    let bye = self.frame_bytes(i, Body::Goodbye);
                    let s = &mut self.destinations[i];
                    s.write(&bye, 0);
                    s.flush();
                }
                for s in &mut self.destinations {
                    s.finish(deadline);
                    s.warn_undelivered();
                }
                let mut st = requests.state.lock().unwrap_or_else(|e| e.into_inner());
                st.finished = true;
                requests.cond.notify_all();
                return;
            }
            let mut st = requests.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.flush_done < flush_want {
                st.flush_done = flush_want;
                requests.cond.notify_all();
            }
            if st.stop || st.flush_requested > st.flush_done {
                continue;
            }
            if self.fullest >= 1 {
                // Records are coming in fast (a ring was a quarter full, or
                // many records in all): drain again at once rather than let
                // rings overflow while this thread sleeps.
                drop(st);
                continue;
            }
            let wait = if n > 0 { self.busy_wait } else { TICK };
            let wait = self.next_check.map_or(wait, |d| d.min(wait));
            drop(st);
            self.sleep_watching(wait, n > 0);
        }
    }

    /// Sleeps up to `wait` before the next drain, looking at the threads'
    /// poll slots every [`LOOK_TICK`] meanwhile ([`WATCH_TICK`] while a
    /// poll seen long runs): a poll that has run past
    /// [`ANNOUNCE_AFTER_NS`] and that the last drain did not see running
    /// long ends the sleep, so that it is announced, and its thread's
    /// scheduler statistics read (its stall verdict's baseline), soon after
    /// it crosses that age, however long the drains wait for the rings to
    /// fill. A look is a few loads per thread; a drain converts, encodes
    /// and writes. After a drain that found nothing (`busy` false), and
    /// once a look finds no poll running, it sleeps the rest without
    /// looking, and the next poll to start wakes it
    /// ([`Capture::poll_started`]): an idle program's exporter wakes no
    /// more often than [`TICK`], and a poll that blocks after a quiet spell
    /// is still watched from its start. Returns at once when unparked: a
    /// thread whose ring is three quarters full (drain on demand), the
    /// guard's requests, a poll after a quiet spell.
    fn sleep_watching(&mut self, wait: Duration, busy: bool) {
        let until = Instant::now() + wait;
        let mut look = busy || self.look() != Look::Quiet;
        // A poll seen long is watched closely until it ends (only drains
        // change what is seen long: a look that finds it ended returns).
        let tick = if self.seen_long.iter().any(|&(span, _)| span != 0) {
            WATCH_TICK
        } else {
            self.look_tick
        };
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            let step = if look {
                (until - now).min(tick)
            } else {
                // The first poll to start wakes this thread, which then
                // watches it from its start.
                self.capture.sleep_idle();
                if self.look() != Look::Quiet {
                    // One started meanwhile.
                    self.capture.woke();
                    look = true;
                    continue;
                }
                until - now
            };
            // Parked rather than waiting on the condvar: whoever wants a
            // drain unparks this thread, before or during the park.
            std::thread::park_timeout(step);
            if !look {
                self.capture.woke();
            }
            if now.elapsed() < step {
                // Unparked (or a rare spurious return): a drain, then
                // looks while the poll that woke it runs.
                return;
            }
            match self.look() {
                Look::TurnedLong => return,
                Look::Running => {}
                Look::Quiet if !busy => look = false,
                Look::Quiet => {}
            }
        }
    }

    /// A look at the threads' polls in progress between drains: whether
    /// one has run past [`ANNOUNCE_AFTER_NS`] and is not the one the last
    /// drain saw there, or the one it saw there has ended (see
    /// [`Exporter::seen_long`]), else whether any runs.
    fn look(&self) -> Look {
        let shared = &self.capture;
        let now = shared.nanos(shared.raw());
        let mut running = false;
        for ring in &self.rings {
            let seen = self
                .seen_long
                .get(ring.thread as usize)
                .copied()
                .unwrap_or((0, 0));
            let cur = ring.poll.read();
            if seen.0 != 0 && cur != Some(seen) {
                return Look::TurnedLong;
            }
            let Some(pair @ (_, start)) = cur else {
                continue;
            };
            running = true;
            if now.saturating_sub(shared.nanos(start)) >= ANNOUNCE_AFTER_NS && seen != pair {
                return Look::TurnedLong;
            }
        }
        if running {
            Look::Running
        } else {
            Look::Quiet
        }
    }

    /// A control frame for destination `i`, with its next sequence number.
    fn frame_bytes(&mut self, i: usize, body: Body) -> Vec<u8> {
        let frame = Frame {
            process: self.process,
            seq: self.destinations[i].next_seq(),
            body,
        };
        let mut out = Vec::new();
        // Control frames are small; an error here would be a bug.
        let _ = wire::encode_frame(&frame, &mut out);
        out
    }

    /// (Re)connects destinations that are down and due for an attempt,
    /// sending them the state needed to rebuild the model.
    fn connect_destinations(&mut self) {
        for i in 0..self.destinations.len() {
            if !self.destinations[i].wants_connect() {
                continue;
            }
            // Nothing of the stream may be pending once it is connected: it
            // would go out before the handshake. (Every drain ends with a
            // send; this is for safety.)
            self.send_batch();
            // A first connection gets the stream from its start if it was
            // kept whole; any other, the live state.
            if self.destinations[i].connect() && !self.destinations[i].send_start() {
                let handshake = self.handshake(i);
                self.destinations[i].handshake(&handshake);
            }
        }
    }

    /// `Hello`, then every callsite sent so far and every live span: what a
    /// collector needs to rebuild its model of this process; then what was
    /// dropped so far (on this connection's destination: what it missed
    /// while it was down).
    fn handshake(&mut self, dest: usize) -> Vec<u8> {
        let mut info = self.info.clone();
        info.reconnect = self.destinations[dest].connected_before();
        let mut out = self.frame_bytes(dest, Body::Hello(info));
        let callsites: Vec<Event> = self
            .capture
            .callsites
            .since(0)
            .into_iter()
            .take(self.callsites_sent)
            .map(|c| Event::Callsite(Box::new(c)))
            .collect();
        let (spans, trees) = {
            let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            let mut spans: Vec<Arc<SpanNode>> =
                model.spans.values().map(|s| s.node.clone()).collect();
            spans.sort_by_key(|n| n.id);
            let trees: Vec<Event> = model
                .trees()
                .into_iter()
                .map(|(task, nodes)| Event::PollTree {
                    task: SpanId(task),
                    spans: nodes
                        .into_iter()
                        .map(|(span, depth)| wire::TreeNode {
                            span: SpanId(span),
                            depth,
                        })
                        .collect(),
                })
                .collect();
            (spans, trees)
        };
        let buffer_full = self.buffer_drops();
        // Through the stream's frame builder, into `buf` for this
        // destination only.
        self.staging = dest;
        self.buf.clear();
        for ev in &callsites {
            self.push_event(ev, Self::stage_frame);
        }
        for n in &spans {
            self.push_span_new(n, Self::stage_frame);
        }
        for ev in &trees {
            self.push_event(ev, Self::stage_frame);
        }
        self.stage_frame();
        out.extend_from_slice(&self.buf);
        let counts = DropCounts {
            buffer_full,
            ..self.destinations[dest].drops()
        };
        if counts.total() > 0 {
            let bytes = self.frame_bytes(dest, Body::Dropped(counts));
            out.extend_from_slice(&bytes);
        }
        self.destinations[dest].set_reported(counts);
        out
    }

    /// Records dropped so far because a ring was full: every thread's
    /// counter once, whichever of its rings are in place.
    fn buffer_drops(&self) -> u64 {
        let live: u64 = self
            .drop_counters
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        self.capture.buffer_full.load(Ordering::Relaxed) + self.retired_drops + live
    }

    fn report_drops(&mut self) {
        let buffer_full = self.buffer_drops();
        for i in 0..self.destinations.len() {
            let counts = DropCounts {
                buffer_full,
                ..self.destinations[i].drops()
            };
            if self.destinations[i].is_up() && self.destinations[i].last_reported() != counts {
                let bytes = self.frame_bytes(i, Body::Dropped(counts));
                self.destinations[i].write_report(&bytes, counts);
            }
        }
    }
}

/// Text buffers kept aside between logs (see `Exporter::spare_texts`).
const SPARE_TEXTS: usize = 8;

/// How long a poll runs before the exporter announces it from its
/// thread's `PollSlot` (its start is otherwise sent with its end).
const ANNOUNCE_AFTER_NS: u64 = 1_000_000;

#[cfg(test)]
mod look_tick_tests {
    use super::*;

    /// The looks slow down to `LOOK_TICK` under the default threshold, and
    /// keep a poll's first sighting before half way to a low threshold,
    /// never looking more often than `WATCH_TICK`.
    #[test]
    fn looks_come_before_half_way_to_the_stall_threshold() {
        let default = crate::stacks::DEFAULT_LONG_POLL.as_nanos() as u64;
        assert_eq!(look_tick(default), LOOK_TICK);
        assert_eq!(look_tick(5_000_000), Duration::from_millis(2));
        assert_eq!(look_tick(2_000_000), WATCH_TICK);
        assert_eq!(look_tick(0), WATCH_TICK);
        assert_eq!(look_tick(u64::MAX), LOOK_TICK);
    }
}
