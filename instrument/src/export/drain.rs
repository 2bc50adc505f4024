//! A drain: the records each thread's ring holds, read in time order
//! across threads (in slices, see [`Exporter::convert_by_time`]) and turned
//! into events; and the polls still running, announced from the threads'
//! poll slots.

use std::sync::atomic::Ordering;

use awaitscope_wire as wire;
use wire::{Event, SpanId};

use super::*;
use crate::await_tree::AwaitModel;
use crate::capture::record::Raw;
use crate::capture::{Capture, Ring};

impl Exporter {
    /// Drains every ring once; returns the number of records drained.
    pub(super) fn drain(&mut self) -> usize {
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
                    let t = ring.thread as usize;
                    if let Some(returns) = ring.returns.take() {
                        if self.returns.len() <= t {
                            self.returns.resize_with(t + 1, || None);
                        }
                        self.returns[t] = Some(returns);
                    }
                    if self.drop_counters.len() <= t {
                        self.drop_counters.resize_with(t + 1, || None);
                    }
                    self.drop_counters[t].get_or_insert_with(|| ring.dropped.clone());
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
        // The polls this drain announces started before the rings were
        // counted, so that their tasks' creations are among the records
        // counted. (The last drain's `cut` takes every record counted,
        // but a poll started during the drain had its task's creation
        // pushed after the count: announced, it named a task the
        // collector never saw created, `unknown_span_events` at exit.)
        let announce_cut = cut.min(self.capture.raw());
        let now = Instant::now();
        let since = now.saturating_duration_since(self.last_count).as_nanos() as u64;
        self.last_count = now;
        let mut wait = u64::MAX;
        for ring in &self.rings {
            let n = ring.consumer.slots();
            let capacity = ring.consumer.buffer().capacity().max(1);
            self.fullest = self.fullest.max(n * 4 / capacity);
            if n > 0 {
                // The time this ring takes to fill a quarter at the rate
                // it filled since the last count.
                wait = wait.min(since.saturating_mul(capacity as u64 / 4) / n as u64);
            }
            counts.push(n);
        }
        // Polls that run long are looked for between drains (see
        // `Exporter::sleep_watching`), not by draining more often.
        self.busy_wait = Duration::from_nanos(wait).min(TICK).max(BUSY_TICK);
        let n: usize = counts.iter().sum();
        // Drops so far, read while the rings are in place (see
        // `recover_closes`).
        let drops = self.buffer_drops();
        let callsites = self.capture.callsites.since(self.callsites_sent);
        self.callsites_sent += callsites.len();
        let want_events = self.wants_events();
        // Destinations connect only between drains (`connect_destinations`):
        // none comes up during this one.
        self.count_only = want_events && !self.destinations.iter().any(|d| d.takes_frames());
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
            self.announce_polls(&shared, &rings, announce_cut);
        }
        self.age_closed_young(&shared, &mut model);
        self.age_compact(&shared, &mut model);
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
        self.retire_rings(&mut rings);
        self.rings = rings;
        self.counts = counts;
        self.send_batch();
        self.count_only = false;
        n
    }

    /// Retires the rings their threads let go (the thread exited, or grew
    /// a new ring) once they are empty; then the threads of those rings
    /// that are gone (see [`Exporter::retire_threads`]).
    pub(super) fn retire_rings(&mut self, rings: &mut Vec<Ring>) {
        let before = rings.len();
        rings.retain(|r| {
            let done = r.consumer.is_abandoned() && r.consumer.is_empty();
            if done {
                self.leaving.push(r.thread);
            }
            !done
        });
        if rings.len() != before {
            self.replaced = has_replaced(rings);
        }
        if !self.leaving.is_empty() {
            self.retire_threads(rings);
        }
    }

    /// Retires the threads in `leaving` that are gone: their drop count
    /// moves to the retired total, and the way back to them (the nodes and
    /// logs waiting there) and their watched poll go. A thread is gone when
    /// it has no ring here and nobody else holds its drop counter: its
    /// state (which holds one for as long as the thread records) and every
    /// ring of it (one that grew registers its new ring before letting the
    /// old one go) hold one. Counting rings alone, a thread whose emptied
    /// old ring was retired before the drain took in its new one was taken
    /// for gone: its nodes were no longer given back, and its drops were
    /// counted twice from then on. A thread not gone yet is looked at again
    /// at the next drain.
    pub(super) fn retire_threads(&mut self, rings: &[Ring]) {
        let mut leaving = std::mem::take(&mut self.leaving);
        leaving.sort_unstable();
        leaving.dedup();
        leaving.retain(|&thread| {
            if rings.iter().any(|r| r.thread == thread) {
                return false;
            }
            let t = thread as usize;
            let Some(Some(counter)) = self.drop_counters.get(t) else {
                return false;
            };
            if Arc::strong_count(counter) > 1 {
                return true;
            }
            // The thread's last write to its counter happened before it let
            // go of the counter (a release): read after this, it is final.
            std::sync::atomic::fence(Ordering::Acquire);
            self.retired_drops += counter.load(Ordering::Relaxed);
            self.drop_counters[t] = None;
            if let Some(returns) = self.returns.get_mut(t) {
                *returns = None;
            }
            // Nor is a poll of it watched any more (a long poll seen there
            // would keep the looks at their shortest).
            if let Some(seen) = self.seen_long.get_mut(t) {
                *seen = (0, 0);
            }
            false
        });
        self.leaving = leaving;
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
    pub(super) fn convert_by_time(
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
                let whole = take == counts[i];
                // The rest of this ring goes out in the next drain.
                counts[i] = if past_cut { 0 } else { counts[i] - take };
                let t = ring.thread;
                if take > 0 {
                    if want {
                        self.switch_thread(t, &ring.name);
                    }
                    // A chunk of exactly the records taken: its iterator
                    // needs no count of its own (a `take(n)` on it cost a
                    // counter kept in memory per record).
                    let chunk = if whole {
                        chunk
                    } else {
                        match ring.consumer.read_chunk(take) {
                            Ok(chunk) => chunk,
                            // Cannot happen: `take` of these were there.
                            Err(_) => continue,
                        }
                    };
                    for raw in chunk {
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
    pub(super) fn switch_thread(&mut self, t: u32, name: &Option<String>) {
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
    pub(super) fn announce_polls(&mut self, shared: &Capture, rings: &[Ring], cut: u64) {
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
            // The thread's poll running long, if any: the looks between
            // drains ask for a drain when another turns long or this one
            // ends (its statistics are then read at its end, not up to a
            // drain later).
            let now = shared.nanos(shared.raw());
            let long = ring.poll.read().filter(|&(_, start)| {
                now.saturating_sub(shared.nanos(start)) >= ANNOUNCE_AFTER_NS && start <= cut
            });
            let t = ring.thread as usize;
            if self.seen_long.len() <= t {
                self.seen_long.resize(t + 1, (0, 0));
            }
            self.seen_long[t] = long.unwrap_or((0, 0));
            let Some((span, start)) = long else {
                continue;
            };
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
}

/// Whether some thread has more than one of `rings`.
pub(super) fn has_replaced(rings: &[Ring]) -> bool {
    let mut threads: Vec<u32> = rings.iter().map(|r| r.thread).collect();
    threads.sort_unstable();
    threads.windows(2).any(|w| w[0] == w[1])
}

/// Raw clock ticks in `ns` nanoseconds (at least 1).
pub(super) fn raw_ticks(shared: &Capture, ns: u64) -> u64 {
    const SPAN: u64 = 1 << 40;
    let per_span = shared.delta_nanos(0, SPAN).max(1);
    ((u128::from(ns) * u128::from(SPAN)) / u128::from(per_span)).clamp(1, u128::from(u64::MAX))
        as u64
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

    /// A thread whose ring grew lets its old ring go; the exporter may
    /// empty and retire that ring before a drain takes in the new one. The
    /// thread is not gone: the way back to it stays (its spans' nodes keep
    /// going back to it) and its drops are counted once. When it exits, it
    /// is retired and its drops stay counted.
    #[test]
    fn a_thread_whose_ring_grew_is_not_taken_for_gone() {
        use std::sync::mpsc::channel;
        let initial = crate::capture::INITIAL_RING;
        // One growth (x4) reaches the maximum; past that, records drop.
        let shared = Capture::new(4 * initial);
        let mut exporter = Exporter::new(
            shared.clone(),
            Vec::new(),
            crate::process_info(None),
            ProcessKey {
                pid: std::process::id(),
                start_unix_ns: 1,
            },
            crate::stacks::StallConfig::default(),
        );
        let wake = |task| Raw::Wake {
            task,
            by: 0,
            op: wire::WakeOp::Wake,
            ts: 0,
        };
        let (go, step) = channel::<usize>();
        let (done, stepped) = channel::<()>();
        let recorder = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                // Each message: push that many records, then say so.
                while let Ok(n) = step.recv() {
                    for k in 0..n {
                        with_local(&shared, |l| l.push(wake(k as u64 + 1)));
                    }
                    done.send(()).unwrap();
                }
            })
        };
        let push = |n| {
            go.send(n).unwrap();
            stepped.recv().unwrap();
        };
        push(1);
        exporter.drain();
        let thread = exporter.rings[0].thread as usize;
        assert!(exporter.returns[thread].is_some());
        // The first ring fills, the thread grows a ring four times larger,
        // fills it and drops 10.
        push(initial + 4 * initial + 10);
        assert_eq!(exporter.rings.len(), 1, "the new ring is not taken in yet");
        while exporter.rings[0].consumer.pop().is_ok() {}
        let mut rings = std::mem::take(&mut exporter.rings);
        exporter.retire_rings(&mut rings);
        exporter.rings = rings;
        assert!(exporter.rings.is_empty(), "the old ring is retired");
        assert!(
            exporter.returns[thread].is_some(),
            "the thread lives: the way back to it stays"
        );
        assert_eq!(exporter.buffer_drops(), 10);
        exporter.drain();
        assert_eq!(exporter.rings.len(), 1, "the new ring is taken in");
        assert_eq!(exporter.buffer_drops(), 10, "drops counted once");
        // The thread exits: its last ring goes, then the thread.
        drop(go);
        recorder.join().unwrap();
        exporter.drain();
        assert!(exporter.rings.is_empty());
        assert!(exporter.returns[thread].is_none(), "the thread is gone");
        assert_eq!(exporter.buffer_drops(), 10, "its drops stay counted");
    }
}
