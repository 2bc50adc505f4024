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

pub(crate) mod destination;
mod tcp;
mod watchdog;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use awaitscope_wire as wire;
use wire::{Body, DropCounts, Event, Frame, ProcessInfo, ProcessKey, SpanId};

use crate::await_tree::{AwaitModel, Dump};
use crate::capture::record::{Raw, RawLog};
use crate::capture::{Capture, Ring};
use crate::names;
use crate::span_node::SpanNode;
use destination::Destination;
use watchdog::Watchdog;

/// Most closes kept waiting for their span's creation (see
/// `Exporter::early_closes`).
const MAX_EARLY_CLOSES: usize = 1 << 16;

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
/// Wait between drains while records keep coming: short enough that a ring
/// filling at tens of millions of records per second does not overflow.
const BUSY_TICK: Duration = Duration::from_micros(100);
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
        returns: Vec::new(),
        threads: Vec::new(),
        retired_drops: 0,
        fullest: 0,
        swept_drops: 0,
        close_suspects: Vec::new(),
        early_closes: Default::default(),
        drains: 0,
        stopping: false,
        stop_seen: None,
        frame: wire::EventsFrame::new(),
        buf: Vec::new(),
        last_flush: Instant::now(),
        watchdog: Watchdog::new(stall),
        next_check: None,
        slice_raw: 0,
        replaced: false,
        batch: BATCH,
    };
    exporter.slice_raw = raw_ticks(&exporter.capture, SLICE_NS);
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

struct Exporter {
    capture: Arc<Capture>,
    rings: Vec<Ring>,
    /// By thread index: where the nodes of spans the thread created go back
    /// to it once closed (see `capture::local::NODE_RETURNS`).
    returns: Vec<Option<rtrb::Producer<Arc<SpanNode>>>>,
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
    /// By thread index: what has been read of each thread's polls.
    threads: Vec<ThreadReads>,
    /// Drops of rings whose threads are gone.
    retired_drops: u64,
    /// How full the fullest ring was at the last drain, in quarters.
    fullest: usize,
    /// Records dropped when live spans were last checked for lost closes.
    swept_drops: u64,
    /// Live spans whose nodes said they closed at that check.
    close_suspects: Vec<u64>,
    /// Closes of spans whose creation was not read yet: span -> (how, when,
    /// drain). A span created on one thread and closed on another has its
    /// close in the second thread's ring, which a drain may read before the
    /// first's.
    early_closes: rustc_hash::FxHashMap<u64, (wire::CloseKind, u64, u64)>,
    /// Drains so far (`early_closes` are aged in drains).
    drains: u64,
    /// This drain is the last one (the guard was dropped).
    stopping: bool,
    /// When the exporter saw the stop request.
    stop_seen: Option<Instant>,
    /// The frame being filled: events are encoded as they are converted.
    frame: wire::EventsFrame,
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
            let wait = if n > 0 { BUSY_TICK } else { TICK };
            let wait = self.next_check.map_or(wait, |d| d.min(wait));
            drop(st);
            // Parked rather than waiting on the condvar: a thread whose ring
            // is three quarters full unparks this one (drain on demand), and
            // so do the guard's requests, made before the state read above
            // or with an unpark that makes this return at once.
            std::thread::park_timeout(wait);
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

    /// Drains every ring once; returns the number of records drained.
    fn drain(&mut self) -> usize {
        // The cut: this drain sends the records stamped before it (the
        // last drain, everything). Read before the new rings are taken and
        // the rings counted, it makes a span's creation go out no later
        // than any record about it from another thread: that record's time
        // was read after the creation was pushed (the span did not exist
        // for other threads before), into a ring registered before that,
        // so a record stamped before the cut has its creation in a ring
        // this drain takes and counts after the cut. Counting the rings one after the
        // other without it, a creation pushed just after its ring was
        // counted went out a drain after a record another thread pushed
        // about it just before its own ring was counted.
        let cut = if self.stopping {
            u64::MAX
        } else {
            self.capture.raw()
        };
        {
            let mut new = self
                .capture
                .new_rings
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !new.is_empty() {
                for ring in new.iter_mut() {
                    if let Some(returns) = ring.returns.take() {
                        let t = ring.thread as usize;
                        if self.returns.len() <= t {
                            self.returns.resize_with(t + 1, || None);
                        }
                        self.returns[t] = Some(returns);
                    }
                }
                self.rings.append(&mut new);
                self.replaced = has_replaced(&self.rings);
            }
        }
        // How many records each ring holds now. Callsites are read after
        // this: any callsite those records refer to was registered before
        // they were pushed.
        self.fullest = 0;
        let mut counts = std::mem::take(&mut self.counts);
        counts.clear();
        for ring in &self.rings {
            let n = ring.consumer.slots();
            self.fullest = self
                .fullest
                .max(n * 4 / ring.consumer.buffer().capacity().max(1));
            counts.push(n);
        }
        let n: usize = counts.iter().sum();
        // Drops so far, read while the rings are in place (see
        // `recover_closes`).
        let drops = self.buffer_drops();
        let callsites = self.capture.callsites.since(self.callsites_sent);
        self.callsites_sent += callsites.len();
        let want_events = self.wants_events();
        if want_events {
            for c in callsites {
                self.emit(&Event::Callsite(Box::new(c)));
            }
        }
        // Records are converted straight out of the rings, not copied first.
        // Each drain names the thread again: a destination may have
        // (re)connected.
        self.thread = u32::MAX;
        let mut rings = std::mem::take(&mut self.rings);
        let shared = self.capture.clone();
        let model = self.model.clone();
        let mut model = model.lock().unwrap_or_else(|e| e.into_inner());
        self.convert_by_time(
            &shared,
            &mut model,
            &mut rings,
            &mut counts,
            cut,
            want_events,
        );
        if want_events {
            self.announce_polls(&shared, &rings, cut);
        }
        self.recover_closes(&shared, &mut model, drops, want_events);
        drop(model);
        // A creation is read at the latest in the drain after the one that
        // read the close (it was pushed before the close): what waits longer
        // was dropped.
        self.drains += 1;
        if !self.early_closes.is_empty() {
            let now = self.drains;
            self.early_closes.retain(|_, (_, _, d)| now - *d <= 2);
        }
        // A thread's rings share one drop counter; it is retired with the
        // thread's last ring.
        let mut gone: Vec<(u32, u64)> = Vec::new();
        rings.retain(|r| {
            let done = r.consumer.is_abandoned() && r.consumer.is_empty();
            if done {
                gone.push((r.thread, r.dropped.load(Ordering::Relaxed)));
            }
            !done
        });
        let gone_empty = gone.is_empty();
        for (thread, dropped) in gone {
            if !rings.iter().any(|r| r.thread == thread) {
                self.retired_drops += dropped;
                // The thread is gone: so is the way back to it (and the
                // nodes that waited there).
                if let Some(returns) = self.returns.get_mut(thread as usize) {
                    *returns = None;
                }
            }
        }
        if !gone_empty {
            self.replaced = has_replaced(&rings);
        }
        self.rings = rings;
        self.counts = counts;
        self.send_batch();
        n
    }

    /// Converts the first `counts[i]` records of each ring stamped up to
    /// `cut` (a ring stops at its first record after it: the rest waits for
    /// the next drain), threads interleaved by time: in rounds, each taking from every ring the
    /// records up to [`SLICE_NS`] after the earliest one not read yet (a
    /// record that says no time goes with the one before it). A collector
    /// that judges time as its clock advances then never sees one thread's
    /// whole backlog before another's (reading rings one after the other,
    /// a drain behind by 1.5 s made a healthy task look starved that
    /// long). A thread's rings (a full one replaced by a larger one) are
    /// read in turn: a later one only once the earlier is read.
    fn convert_by_time(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        rings: &mut [Ring],
        counts: &mut [usize],
        cut: u64,
        want: bool,
    ) {
        // A ring that waits for an earlier ring of its thread.
        let waits = |rings: &[Ring], counts: &[usize], i: usize| {
            let t = rings[i].thread;
            rings[..i]
                .iter()
                .zip(counts)
                .any(|(r, &c)| c > 0 && r.thread == t)
        };
        let replaced = self.replaced;
        self.batch = ROUND_BATCH;
        loop {
            // The earliest record not read yet; one ring left reads all.
            let mut earliest = u64::MAX;
            let mut left = 0;
            for (i, ring) in rings.iter().enumerate() {
                if counts[i] == 0 || (replaced && waits(rings, counts, i)) {
                    continue;
                }
                left += 1;
                let ts = ring.consumer.peek().ok().and_then(Raw::ts).unwrap_or(0);
                earliest = earliest.min(ts);
            }
            if left == 0 {
                break;
            }
            let horizon = if left == 1 && !replaced {
                cut
            } else {
                earliest.saturating_add(self.slice_raw).min(cut)
            };
            for i in 0..rings.len() {
                if counts[i] == 0 || (replaced && waits(rings, counts, i)) {
                    continue;
                }
                let ring = &mut rings[i];
                let Ok(chunk) = ring.consumer.read_chunk(counts[i]) else {
                    counts[i] = 0;
                    continue;
                };
                let (a, b) = chunk.as_slices();
                let last = b.last().or(a.last()).and_then(Raw::ts);
                // Stamps grow along a ring: if the last is in, all are.
                let (take, past_cut) = if last.is_some_and(|ts| ts <= horizon) {
                    (counts[i], false)
                } else {
                    match a
                        .iter()
                        .chain(b)
                        .position(|r| r.ts().is_some_and(|ts| ts > horizon))
                    {
                        Some(p) => (p, a.iter().chain(b).nth(p).and_then(Raw::ts) > Some(cut)),
                        None => (counts[i], false),
                    }
                };
                // The rest of this ring goes out in the next drain.
                counts[i] = if past_cut { 0 } else { counts[i] - take };
                let t = ring.thread;
                if take > 0 {
                    if want {
                        self.switch_thread(t, &ring.name);
                    }
                    for raw in chunk.into_iter().take(take) {
                        if let Some(ev) = self.convert(shared, model, t, raw, want) {
                            self.emit(&ev);
                        }
                    }
                }
                if past_cut && replaced {
                    // And so do the thread's later rings.
                    for (r, c) in rings.iter().zip(counts.iter_mut()).skip(i + 1) {
                        if r.thread == t {
                            *c = 0;
                        }
                    }
                }
                self.release_held(shared);
            }
            // Between rounds: the frame is sent once it is full.
            if self.frame.len() >= BATCH {
                self.flush_within_run(Self::send_batch);
            }
        }
        self.batch = BATCH;
    }

    /// Names the thread whose events follow, if it is not the current one.
    fn switch_thread(&mut self, t: u32, name: &Option<String>) {
        if t == self.thread {
            return;
        }
        self.thread = t;
        let name = if self.announced.contains(&t) {
            None
        } else {
            self.announced.push(t);
            name.clone()
        };
        self.emit(&Event::Thread { id: t, name });
    }

    /// Sends the start of each thread's poll in progress that has run for
    /// [`ANNOUNCE_AFTER_NS`] and whose start was not read from a ring (a
    /// poll that records nothing sends its start with its end): a task
    /// blocking its worker shows as running while it blocks.
    ///
    /// Only polls started before the drain's `cut`: the task's creation,
    /// pushed before its poll started, then went out in this drain or an
    /// earlier one (a later poll is announced by the next drain).
    fn announce_polls(&mut self, shared: &Capture, rings: &[Ring], cut: u64) {
        self.next_check = None;
        for (i, ring) in rings.iter().enumerate() {
            // A thread's rings share its slot: read it once.
            if rings[..i].iter().any(|r| r.thread == ring.thread) {
                continue;
            }
            let soon = self.watchdog.check(
                ring.thread,
                &ring.name,
                &ring.poll,
                shared,
                ANNOUNCE_AFTER_NS,
            );
            if let Some(d) = soon {
                self.next_check = Some(self.next_check.map_or(d, |n| n.min(d)));
            }
            let Some((span, start)) = ring.poll.read() else {
                continue;
            };
            if start > cut {
                continue;
            }
            let now = shared.nanos(shared.raw());
            if now.saturating_sub(shared.nanos(start)) < ANNOUNCE_AFTER_NS {
                continue;
            }
            let tp = thread_reads(&mut self.threads, ring.thread);
            let pair = (span, start);
            if tp.open == pair || tp.done == pair || tp.announced == pair {
                continue;
            }
            tp.announced = pair;
            self.switch_thread(ring.thread, &ring.name);
            self.emit_plain(Event::Enter {
                span: SpanId(span),
                ts: shared.nanos(start),
            });
        }
        let stalls: Vec<_> = self.watchdog.ready().collect();
        for p in stalls {
            self.switch_thread(p.thread, &p.name);
            self.emit(&Event::Stall(Box::new(p.stall)));
            if let Some(native) = p.native {
                self.emit(&Event::NativeStack(Box::new(native)));
            }
        }
    }

    /// Encodes `ev` into the current frame, sending the frame when it is
    /// full.
    #[inline(always)]
    fn emit(&mut self, ev: &Event) {
        self.push_event(ev, Self::send_batch);
    }

    /// [`Exporter::emit`] of an event with nothing to drop (ids, times and
    /// counts: see [`is_plain`]), without a call to `Event`'s drop glue,
    /// which the compiler does not elide for a temporary (~20 instructions
    /// per event).
    #[inline(always)]
    fn emit_plain(&mut self, ev: Event) {
        debug_assert!(is_plain(&ev));
        let ev = std::mem::ManuallyDrop::new(ev);
        self.emit(&ev);
    }

    /// Encodes `ev` into the frame being built; `flush` takes the frame when
    /// it is full or `ev` does not fit in it.
    #[inline(always)]
    fn push_event<E: wire::EncodesAsEvent + ?Sized>(&mut self, ev: &E, flush: fn(&mut Self)) {
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
    fn flush_within_run(&mut self, flush: fn(&mut Self)) {
        flush(self);
        if self.thread != u32::MAX {
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
    fn push_span_new(&mut self, n: &SpanNode, flush: fn(&mut Self)) {
        let fields = n.fields.lock().unwrap_or_else(|e| e.into_inner());
        let ev = wire::SpanNewRef {
            id: SpanId(n.id),
            callsite: n.callsite,
            parent: n.parent.as_ref().map(|p| SpanId(p.id)),
            ctx_task: (n.ctx_task != 0).then_some(SpanId(n.ctx_task)),
            ctx_span: (n.ctx_span != 0).then_some(SpanId(n.ctx_span)),
            ts: self.capture.nanos(n.ts),
            fields: &fields,
        };
        self.push_event(&ev, flush);
    }

    /// Whether records are converted to events: whenever some destination
    /// may take them, now or (a collector that is down) as a loss to count.
    /// A destination that is down counts the events of every frame it
    /// misses, so the drops it reports when it is back are events, as
    /// another destination's stream would have carried them.
    fn wants_events(&self) -> bool {
        !self.destinations.is_empty()
    }

    /// Appends the frame being built to `out` with sequence number `seq`,
    /// keeping it; returns its events, or `None` if it cannot be encoded
    /// (then it is emptied and its events counted as dropped).
    fn finish_frame(&mut self, seq: u64, out: &mut Vec<u8>) -> Option<u64> {
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
    fn send_batch(&mut self) {
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
    fn stage_frame(&mut self) {
        if self.frame.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        let seq = self.destinations[self.staging].next_seq();
        self.finish_frame(seq, &mut buf);
        self.frame.clear();
        self.buf = buf;
    }

    /// Updates the model for a record and converts it to a wire event (only
    /// when some destination is up). Events that own nothing are emitted here
    /// ([`Exporter::emit_plain`]); the others are returned.
    ///
    /// First the ordering step: a poll start held back (see `held`) goes
    /// out before any record but the poll's own tree nodes and end. Then
    /// one step per kind of record, each doing the model update it needs
    /// before the conversion.
    #[inline(always)]
    fn convert(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        thread: u32,
        raw: Raw,
        want: bool,
    ) -> Option<Event> {
        if self.held.is_some()
            && !matches!(raw, Raw::TreeNode { .. } | Raw::Exit { task: true, .. })
        {
            self.release_held(shared);
        }
        let ns = |raw: u64| shared.nanos(raw);
        match raw {
            Raw::Span(node) => self.span_created(shared, model, thread, node, want),
            Raw::Enter {
                span,
                task: true,
                ts,
            } => self.poll_started(thread, span, ts, want),
            Raw::Enter { span, ts, .. } => {
                if want {
                    self.emit_plain(Event::Enter {
                        span: SpanId(span),
                        ts: ns(ts),
                    });
                }
            }
            Raw::TreeNode { task, span, depth } => {
                Self::tree_node(&mut self.threads, thread, task, span, depth)
            }
            Raw::Exit {
                span,
                task: false,
                ts,
                ..
            } => {
                if want {
                    self.emit_plain(Event::Exit {
                        span: SpanId(span),
                        ts: ns(ts),
                    });
                }
            }
            Raw::Poll {
                span,
                start,
                end,
                tree,
                wakers,
            } => self.whole_poll(
                shared,
                model,
                thread,
                span,
                (start, end),
                tree,
                wakers,
                want,
            ),
            Raw::Exit {
                span,
                task: true,
                tree,
                wakers,
                ts,
            } => self.poll_ended(shared, model, thread, span, ts, tree, wakers, want),
            Raw::Close { span, kind, ts } => self.span_closed(shared, model, span, kind, ts, want),
            Raw::Log(l) => {
                if l.class == wire::EventClass::StateUpdate {
                    model.on_state_update(l.span, l.task, locked_field(&l));
                }
                if want {
                    return Some(log_event(*l, ns));
                }
            }
            // The rest changes no model: converted only for the destinations.
            _ if !want => {}
            Raw::Wake { task, by, op, ts } => {
                self.emit_plain(Event::Wake {
                    task: SpanId(task),
                    op,
                    by: span_id(by),
                    ts: ns(ts),
                });
            }
            Raw::Record(r) => {
                // The node's fields were updated by the layer.
                let (span, fields) = *r;
                return Some(Event::Record {
                    span: SpanId(span),
                    fields,
                });
            }
            Raw::FollowsFrom { span, follows } => {
                return Some(Event::FollowsFrom {
                    span: SpanId(span),
                    follows: SpanId(follows),
                })
            }
            Raw::Panic(p) => {
                return Some(Event::Panic(Box::new(awaitscope_wire::Panic {
                    task: span_id(p.task),
                    span: span_id(p.span),
                    message: p.message,
                    file: p.file,
                    line: p.line,
                    ts: ns(p.ts),
                    trace: p.trace,
                })))
            }
            Raw::Handover(h) => {
                return Some(Event::Handover(Box::new(awaitscope_wire::Handover {
                    span: span_id(h.span),
                    task: span_id(h.task),
                    trace_id: h.trace_id,
                    span_id: h.span_id,
                    ts: ns(h.ts),
                    trace: h.trace,
                })))
            }
        }
        None
    }

    /// A span was created: its `SpanNew` goes out, and it becomes live in
    /// the model, unless its close was read first (it closed on another
    /// thread, whose ring this drain read first): then it is closed at
    /// once and never live.
    #[inline(always)]
    fn span_created(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        thread: u32,
        node: Arc<SpanNode>,
        want: bool,
    ) {
        if want {
            self.push_span_new(&node, Self::send_batch);
        }
        if !self.early_closes.is_empty() && self.closed_early(shared, node.id, want) {
            return;
        }
        let created = shared.nanos(node.ts);
        model.on_span(node, created, thread);
    }

    /// Whether span `id`'s close was read before its creation; if so, the
    /// close goes out now. Out of line: rare, and it keeps the drain loop
    /// small.
    #[cold]
    #[inline(never)]
    fn closed_early(&mut self, shared: &Capture, id: u64, want: bool) -> bool {
        let Some((kind, ts, _)) = self.early_closes.remove(&id) else {
            return false;
        };
        if want {
            self.emit_close(shared, id, kind, ts);
        }
        true
    }

    /// A poll's start, read from the ring: remembered as the thread's open
    /// poll, and held back (when not already announced from the thread's
    /// poll slot) so that a poll with nothing recorded in between goes out
    /// as one `Poll` event with its end.
    #[inline(always)]
    fn poll_started(&mut self, thread: u32, span: u64, ts: u64, want: bool) {
        let tp = thread_reads(&mut self.threads, thread);
        tp.open = (span, ts);
        if tp.announced == (span, ts) {
            // Sent already, from the thread's poll slot.
            return;
        }
        if want {
            self.held = Some((span, ts));
        }
    }

    /// One node of the await tree of the poll about to end on `thread`:
    /// collected until the poll's end says whether it is a new tree.
    #[inline(always)]
    fn tree_node(threads: &mut Vec<ThreadReads>, thread: u32, task: u64, span: u64, depth: u16) {
        let pending = &mut thread_reads(threads, thread).tree;
        if pending.0 != task {
            // Left over from a poll whose exit was dropped.
            pending.1.clear();
            pending.0 = task;
        }
        pending.1.push((span, depth));
    }

    /// A whole poll in one record (nothing else was recorded during it):
    /// its tree, then a `Poll` event, or a `PollEnd` if its start was
    /// announced from the thread's poll slot while it ran.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn whole_poll(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        thread: u32,
        span: u64,
        (start, end): (u64, u64),
        tree: bool,
        wakers: u32,
        want: bool,
    ) {
        self.poll_tree(model, thread, span, tree, want);
        let announced = thread_reads(&mut self.threads, thread).whole_poll_read(span, start);
        if !want {
            return;
        }
        // One `emit_plain` per variant: the encoder inlined into each is
        // specialized for it (one site for both costs a match per event).
        if announced {
            self.emit_plain(Event::PollEnd {
                task: SpanId(span),
                ts: shared.nanos(end),
                wakers,
            });
        } else {
            self.emit_plain(poll_event(shared, span, start, end, wakers));
        }
    }

    /// The end of a poll whose start was its own record: its tree, then a
    /// `Poll` event if the start is the one held back, else (the start went
    /// out already, or was dropped) a `PollEnd`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn poll_ended(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        thread: u32,
        span: u64,
        ts: u64,
        tree: bool,
        wakers: u32,
        want: bool,
    ) {
        self.poll_tree(model, thread, span, tree, want);
        thread_reads(&mut self.threads, thread).poll_end_read(span);
        if !want {
            return;
        }
        let ev = match self.held.take() {
            Some((task, start)) if task == span => poll_event(shared, span, start, ts, wakers),
            held => {
                self.held = held;
                self.release_held(shared);
                Event::PollEnd {
                    task: SpanId(span),
                    ts: shared.nanos(ts),
                    wakers,
                }
            }
        };
        self.emit_plain(ev);
    }

    /// A span closed: no longer live in the model, and its `Close` goes
    /// out. A close of a span not live is kept for its creation instead
    /// (see `early_closes`).
    #[inline(always)]
    fn span_closed(
        &mut self,
        shared: &Capture,
        model: &mut AwaitModel,
        span: u64,
        kind: wire::CloseKind,
        ts: u64,
        want: bool,
    ) {
        let Some((node, home)) = model.on_close(span) else {
            // Not live. Most often its creation is in a ring read
            // after this one (it was created on another thread): kept
            // until that record is read. Else it was closed from its
            // node after drops (this record came late), or its
            // creation was dropped: forgotten after two drains.
            if self.early_closes.len() < MAX_EARLY_CLOSES {
                self.early_closes.insert(span, (kind, ts, self.drains));
            }
            return;
        };
        if want {
            self.emit_close(shared, span, kind, ts);
        }
        self.give_back(node, home);
    }

    /// Gives a closed span's node back to the thread that made it, for its
    /// next span (see `capture::local::NODE_RETURNS`); dropped here when
    /// that thread is gone or has enough waiting.
    #[inline(always)]
    fn give_back(&mut self, node: Arc<SpanNode>, home: u32) {
        if let Some(Some(returns)) = self.returns.get_mut(home as usize) {
            // A thread that is gone frees nothing more: the node is
            // dropped here.
            if !returns.is_abandoned() {
                let _ = returns.push(node);
            }
        }
    }

    /// Emits the `Close` of `span`, closed at raw time `ts` as `kind`.
    #[inline(always)]
    fn emit_close(&mut self, shared: &Capture, span: u64, kind: wire::CloseKind, ts: u64) {
        self.emit_plain(Event::Close {
            span: SpanId(span),
            kind,
            ts: shared.nanos(ts),
        });
    }

    /// The end of a task's poll: its await tree, if it changed (the
    /// `TreeNode` records just read), goes to the model and, sent just
    /// before the poll's end, to the destinations.
    #[inline(always)]
    fn poll_tree(
        &mut self,
        model: &mut AwaitModel,
        thread: u32,
        span: u64,
        tree: bool,
        want: bool,
    ) {
        if !tree {
            // The usual case: no tree, and no tree nodes left over (from a
            // poll whose end a full ring dropped) to clear.
            if let Some(p) = self.threads.get_mut(thread as usize).map(|t| &mut t.tree) {
                if p.0 != 0 || !p.1.is_empty() {
                    p.0 = 0;
                    p.1.clear();
                }
            }
            return;
        }
        self.new_poll_tree(model, thread, span, want);
    }

    /// [`Exporter::poll_tree`] when the tree changed.
    fn new_poll_tree(&mut self, model: &mut AwaitModel, thread: u32, span: u64, want: bool) {
        let pending = &mut thread_reads(&mut self.threads, thread).tree;
        let nodes = if pending.0 == span {
            &pending.1[..]
        } else {
            // Its tree nodes were dropped with a full ring.
            &[]
        };
        model.on_tree(span, nodes);
        if want {
            // Encoded from the pending nodes in place (no event built).
            let nodes = std::mem::take(&mut pending.1);
            let tree = wire::PollTreeRef {
                task: SpanId(span),
                spans: if pending.0 == span { &nodes } else { &[] },
            };
            self.push_event(&tree, Self::send_batch);
            thread_reads(&mut self.threads, thread).tree.1 = nodes;
        }
        let pending = &mut thread_reads(&mut self.threads, thread).tree;
        pending.0 = 0;
        pending.1.clear();
    }

    /// Closes whose `Close` records a full ring dropped, recovered from the
    /// span nodes (which record when and how they closed): without them a
    /// task whose close was lost stays live in every model for ever, and
    /// looks starved, stuck or without wakers.
    ///
    /// After records were dropped (`drops`, counted at the start of this
    /// drain), the live spans whose nodes say they closed become suspects;
    /// those still live at the next drain (their record, if it was pushed,
    /// has nearly always been read by then; one that comes later is not
    /// sent, see `Raw::Close` in `convert`) are closed here. The last drain
    /// closes them at once: nothing more will come.
    fn recover_closes(&mut self, shared: &Capture, model: &mut AwaitModel, drops: u64, want: bool) {
        let mut suspects = std::mem::take(&mut self.close_suspects);
        if self.stopping && drops > 0 {
            suspects = model.spans.keys().copied().collect();
            suspects.sort_unstable();
        }
        for id in suspects {
            let Some((ts, kind)) = model.spans.get(&id).and_then(|s| s.node.closed_as()) else {
                continue;
            };
            self.release_held(shared);
            if let Some((node, home)) = model.on_close(id) {
                self.give_back(node, home);
            }
            if want {
                self.emit_close(shared, id, kind, ts);
            }
        }
        if drops > self.swept_drops {
            self.swept_drops = drops;
            self.close_suspects = model
                .spans
                .iter()
                .filter(|(_, s)| s.node.closed.load(Ordering::Acquire))
                .map(|(id, _)| *id)
                .collect();
            self.close_suspects.sort_unstable();
        }
    }

    /// Sends the start of a poll that was held back (see `convert`).
    fn release_held(&mut self, shared: &Capture) {
        if let Some((span, ts)) = self.held.take() {
            self.emit_plain(Event::Enter {
                span: SpanId(span),
                ts: shared.nanos(ts),
            });
        }
    }

    /// Records dropped so far because a ring was full.
    fn buffer_drops(&self) -> u64 {
        // A thread's rings share its counter: count it at its first ring.
        let mut live = 0;
        for (i, r) in self.rings.iter().enumerate() {
            if !self.rings[..i].iter().any(|q| q.thread == r.thread) {
                live += r.dropped.load(Ordering::Relaxed);
            }
        }
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

/// What the exporter has read of one thread's polls. Poll starts are
/// (task span, raw start) pairs, span 0 for none.
#[derive(Default)]
struct ThreadReads {
    /// The task and await tree nodes of the poll being read (they precede
    /// the record that ends it).
    tree: (u64, Vec<(u64, u16)>),
    /// Started (its `Enter` read), not ended.
    open: (u64, u64),
    /// The last poll that ended (task, raw start): the thread's poll slot
    /// may still show it, and an ended poll is not announced.
    done: (u64, u64),
    /// Announced from the thread's `PollSlot` while it ran, not ended.
    announced: (u64, u64),
}

impl ThreadReads {
    /// A whole poll (start `start`) of `span` was read: it is the last one
    /// that ended. Returns whether it had been announced (its announcement
    /// is then over).
    #[inline(always)]
    fn whole_poll_read(&mut self, span: u64, start: u64) -> bool {
        self.done = (span, start);
        let announced = self.announced == (span, start);
        if announced {
            self.announced = (0, 0);
        }
        announced
    }

    /// The end of a poll of `span` was read: the open poll, if it is that
    /// one, is the last that ended, and an announcement of it is over.
    #[inline(always)]
    fn poll_end_read(&mut self, span: u64) {
        if self.open.0 == span {
            self.done = std::mem::take(&mut self.open);
        }
        if self.announced.0 == span {
            self.announced = (0, 0);
        }
    }
}

/// Whether some thread has more than one of `rings`.
fn has_replaced(rings: &[Ring]) -> bool {
    let mut threads: Vec<u32> = rings.iter().map(|r| r.thread).collect();
    threads.sort_unstable();
    threads.windows(2).any(|w| w[0] == w[1])
}

/// Raw clock ticks in `ns` nanoseconds (at least 1).
fn raw_ticks(shared: &Capture, ns: u64) -> u64 {
    const SPAN: u64 = 1 << 40;
    let per_span = shared.delta_nanos(0, SPAN).max(1);
    ((u128::from(ns) * u128::from(SPAN)) / u128::from(per_span)).clamp(1, u128::from(u64::MAX))
        as u64
}

/// The wire id of a span id, `None` for 0 (no span).
#[inline(always)]
fn span_id(v: u64) -> Option<SpanId> {
    (v != 0).then_some(SpanId(v))
}

/// A whole poll of `task` from raw time `start` to `end`.
#[inline(always)]
fn poll_event(shared: &Capture, task: u64, start: u64, end: u64, wakers: u32) -> Event {
    let start = shared.nanos(start);
    Event::Poll {
        task: SpanId(task),
        start,
        duration: shared.nanos(end).saturating_sub(start),
        wakers,
    }
}

/// The `locked` field of a resource's state update, if it has one.
fn locked_field(l: &RawLog) -> Option<bool> {
    let f = l.meta.fields().field(names::LOCKED)?;
    l.fields
        .iter()
        .find(|v| v.index as usize == f.index())
        .and_then(|v| match v.value {
            wire::Value::Bool(b) => Some(b),
            _ => None,
        })
}

/// The `Log` event of a captured event; `ns` converts raw clock readings.
fn log_event(l: RawLog, ns: impl Fn(u64) -> u64) -> Event {
    Event::Log(Box::new(awaitscope_wire::Log {
        callsite: l.callsite,
        span: span_id(l.span),
        task: span_id(l.task),
        ts: ns(l.ts),
        fields: l.fields,
        trace: l.trace,
    }))
}

/// How long a poll runs before the exporter announces it from its
/// thread's `PollSlot` (its start is otherwise sent with its end).
const ANNOUNCE_AFTER_NS: u64 = 1_000_000;

/// Variants of `Event` that own no heap data.
#[inline(always)]
fn is_plain(ev: &Event) -> bool {
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

/// The state of `thread`, made on first sight.
#[inline]
fn thread_reads(threads: &mut Vec<ThreadReads>, thread: u32) -> &mut ThreadReads {
    let i = thread as usize;
    if i >= threads.len() {
        threads.resize_with(i + 1, Default::default);
    }
    &mut threads[i]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::local::with_local;

    /// A drain that finds several threads' backlogs sends them interleaved
    /// by time (to within a slice), not one thread's whole backlog before
    /// the next: two threads' records alternate over 40 ms and go out in
    /// that order.
    #[test]
    fn a_drain_interleaves_threads_by_time() {
        let shared = Capture::new(1 << 12);
        let ms = raw_ticks(&shared, 1_000_000);
        // In the past: a drain sends what was stamped before it began.
        let base = shared.raw().saturating_sub(50 * ms);
        // Each thread records its half: even milliseconds, odd ones.
        std::thread::scope(|s| {
            for parity in 0..2u64 {
                let shared = shared.clone();
                s.spawn(move || {
                    for k in (parity..40).step_by(2) {
                        with_local(&shared, |l| {
                            l.push(Raw::Wake {
                                task: 100 + k,
                                by: 0,
                                op: wire::WakeOp::Wake,
                                ts: base + k * ms,
                            })
                        });
                    }
                });
            }
        });
        // The exporter starts with both backlogs in place: one drain.
        let memory = Arc::new(Mutex::new(Vec::new()));
        let process = ProcessKey {
            pid: std::process::id(),
            start_unix_ns: 1,
        };
        let mut exporter = start(
            shared.clone(),
            vec![Destination::memory(memory.clone())],
            crate::process_info(None),
            process,
            crate::stacks::StallConfig::default(),
        );
        exporter.shutdown();
        let bytes = memory.lock().unwrap().clone();
        let frames: Vec<Frame> = wire::FrameReader::new(&bytes[..])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let woken: Vec<u64> = frames
            .iter()
            .filter_map(|f| match &f.body {
                Body::Events(evs) => Some(evs),
                _ => None,
            })
            .flatten()
            .filter_map(|e| match e {
                Event::Wake { task, .. } => Some(task.0 - 100),
                _ => None,
            })
            .collect();
        assert_eq!(woken.len(), 40, "{woken:?}");
        for pair in woken.windows(2) {
            assert!(
                pair[1] + 1 >= pair[0],
                "out of time order by more than a slice: {woken:?}"
            );
        }
    }
}
