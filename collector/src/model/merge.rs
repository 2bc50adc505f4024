//! The merge of a batch's per-thread runs into one stream in time order.
//!
//! A batch holds one run of events per thread of the producer (each opened
//! by a `Thread` event), in order within each thread but not across threads:
//! the producer drains its per-thread buffers one after the other. Applying
//! them in time order makes a task spawned on one thread exist before
//! another thread polls it.

use awaitscope_wire::Event;

/// The whole merge of a batch as [`merge_order`] gives it (the batch's own
/// order when it finds it already merged), for the tests.
#[cfg(test)]
fn merge_threads(events: &[Event]) -> Vec<(Option<u32>, &Event)> {
    // Batches of one `Thread` too (which `apply_events` applies in order).
    match merge_batch(events, 0) {
        Some(order) => order
            .map(|(j, switch)| ((switch != NO_SWITCH).then_some(switch), &events[j as usize]))
            .collect(),
        // Already in order: each run's first event is its `Thread` (or the
        // events before any, which belong to no run of a thread).
        None => events
            .iter()
            .map(|e| match e {
                Event::Thread { id, .. } if *id != u32::MAX => (Some(*id), e),
                _ => (None, e),
            })
            .collect(),
    }
}

/// Whether `e`, which says no time, sorts with the next timed event of its
/// run rather than the previous: a poll's await tree. The producer sends it
/// just before the poll's own event (`Poll`, at the poll's start, or
/// `PollEnd`), and the task may have been spawned on another thread after
/// the previous event of this one: keyed by that event, the tree went
/// before the task's creation and named a task the model did not know yet
/// (counted in `unknown_span_events`, and the tree lost).
#[inline]
fn goes_with_next(e: &Event) -> bool {
    matches!(e, Event::PollTree { .. })
}

/// One run of a batch: the events of one thread.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Its thread (`u32::MAX`: the events before the first `Thread`).
    thread: u32,
    /// Next event (index into the batch).
    pos: usize,
    /// End (exclusive).
    end: usize,
}

/// A run's smallest and largest key, for [`in_order`]: its timestamps (an
/// untimed event takes one of its run's), and 0 for a callsite or for every
/// event of a run without a timed one.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    lo: u64,
    hi: u64,
}

impl Bounds {
    const EMPTY: Bounds = Bounds {
        lo: u64::MAX,
        hi: 0,
    };

    /// The smallest key: 0 for a run without a timed event, whose bounds
    /// are still [`Bounds::EMPTY`]'s (a timed event leaves them so only if
    /// its time were both `u64::MAX` and 0).
    fn lo(&self) -> u64 {
        if self.lo == u64::MAX && self.hi == 0 {
            0
        } else {
            self.lo
        }
    }
}

/// In [`merge_order`]'s order: the event does not start a stretch of
/// another thread's run (a run's thread `u32::MAX` never does).
pub(crate) const NO_SWITCH: u32 = u32::MAX;

/// The merge of a batch's per-thread runs by timestamp, keeping the order
/// within each run (a k-way merge, not a sort): each event's index in the
/// batch with, when it starts a stretch of another run, that run's thread id
/// (else [`NO_SWITCH`]). Events without a timestamp sort with the previous
/// timed event of their run (the next one at the start of a run), but for a
/// poll's await tree, which sorts with the next (see [`goes_with_next`]);
/// callsites go first.
///
/// `None` when the merge would give the batch in its own order: at most one
/// `Thread` event, or every run's keys at most the keys of the runs after it
/// (found from each run's smallest and largest key).
pub(crate) fn merge_order(events: &[Event]) -> Option<Merge> {
    merge_batch(events, 2)
}

/// [`merge_order`] of a batch with at least `min_threads` `Thread` events
/// (`None` for fewer).
fn merge_batch(events: &[Event], min_threads: usize) -> Option<Merge> {
    // The runs and their bounds, in one pass, which also keeps each timed
    // event's time as its merge key and notes the untimed events: the keys
    // of a batch to merge are then made without reading each event's kind
    // again.
    let mut runs: Vec<Run> = Vec::new();
    let mut bounds: Vec<Bounds> = Vec::new();
    let Spare {
        mut keys,
        mut untimed,
    } = SPARE.take();
    // Every key is written below (the timed ones here, the others by
    // `key_untimed`): the vector is zeroed only where it grows.
    if keys.len() < events.len() {
        keys.resize(events.len(), 0);
    }
    untimed.clear();
    let mut threads = 0usize;
    let mut b = Bounds::EMPTY;
    for ((j, e), key) in events.iter().enumerate().zip(keys.iter_mut()) {
        match e.ts() {
            Some(ts) => {
                b.lo = b.lo.min(ts);
                b.hi = b.hi.max(ts);
                *key = ts;
            }
            None => {
                untimed.push(j);
                match e {
                    Event::Thread { id, .. } => {
                        threads += 1;
                        if let Some(r) = runs.last_mut() {
                            r.end = j;
                            bounds.push(b);
                        }
                        b = Bounds::EMPTY;
                        runs.push(Run {
                            thread: *id,
                            pos: j,
                            end: events.len(),
                        });
                        continue;
                    }
                    Event::Callsite(_) => b.lo = 0,
                    _ => {}
                }
            }
        }
        if runs.is_empty() {
            runs.push(Run {
                thread: u32::MAX,
                pos: 0,
                end: events.len(),
            });
        }
    }
    if !runs.is_empty() {
        bounds.push(b);
    }
    if threads < min_threads || in_order(&runs, &bounds) {
        SPARE.set(Spare { keys, untimed });
        return None;
    }
    key_untimed(events, &runs, &untimed, &mut keys);
    SPARE.set(Spare {
        keys: Vec::new(),
        untimed,
    });
    Some(Merge::new(keys, runs))
}

/// The vectors of [`merge_batch`], kept between the batches merged on a
/// thread (a batch's keys are given back when its [`Merge`] is dropped):
/// made, zeroed and freed per batch, they cost as much as keying it.
#[derive(Default)]
struct Spare {
    /// Merge keys, by event (only the batch's first events are read).
    keys: Vec<u64>,
    /// The untimed events of the batch, by index.
    untimed: Vec<usize>,
}

thread_local! {
    static SPARE: std::cell::Cell<Spare> = std::cell::Cell::new(Spare::default());
}

/// Whether the runs are in order: every run's largest key at most the
/// smallest of every later run (ties go to the earlier run).
fn in_order(runs: &[Run], bounds: &[Bounds]) -> bool {
    let mut later_min = u64::MAX;
    for (r, b) in runs.iter().zip(bounds).rev() {
        if r.end <= r.pos {
            continue;
        }
        let lo = b.lo();
        if b.hi > later_min {
            return false;
        }
        later_min = later_min.min(lo);
    }
    true
}

/// Writes the merge keys of the batch's untimed events (`untimed`: their
/// indices, in order) into `keys`, which holds each timed event's time
/// (its key) already: an untimed event takes its run's previous timed
/// key; else (before the run's first timed event) the next. A poll's tree
/// takes the next timed key, else the previous. Callsites, and every event
/// of a run without a timed one, key 0.
fn key_untimed(events: &[Event], runs: &[Run], untimed: &[usize], keys: &mut [u64]) {
    let mut k = 0;
    for r in runs {
        while k < untimed.len() && untimed[k] < r.end {
            // A stretch of consecutive untimed events of the run,
            // `untimed[k..g]`: the same timed events of the run are before
            // and after each of them.
            let first = untimed[k];
            let mut g = k + 1;
            while g < untimed.len() && untimed[g] == untimed[g - 1] + 1 && untimed[g] < r.end {
                g += 1;
            }
            let after = untimed[g - 1] + 1;
            // The event before the stretch, if of this run, is timed.
            let prev = (first > r.pos).then(|| keys[first - 1]);
            let next = (after < r.end).then(|| keys[after]);
            for &i in &untimed[k..g] {
                let e = &events[i];
                keys[i] = if matches!(e, Event::Callsite(_)) {
                    0
                } else if goes_with_next(e) {
                    next.or(prev).unwrap_or(0)
                } else {
                    prev.or(next).unwrap_or(0)
                };
            }
            k = g;
        }
    }
}

/// The smallest head (key, run) among `runs` other than `skip`, the
/// earliest run on ties.
fn min_head(keys: &[u64], runs: &[Run], skip: usize) -> Option<(u64, usize)> {
    let mut best: Option<(u64, usize)> = None;
    for (i, r) in runs.iter().enumerate() {
        if i == skip || r.pos >= r.end {
            continue;
        }
        let k = keys[r.pos];
        if best.is_none_or(|(bk, _)| k < bk) {
            best = Some((k, i));
        }
    }
    best
}

/// The k-way merge of a batch's runs by their keys, as an iterator of
/// [`merge_order`]'s pairs: the smallest head first, the earliest run on
/// ties. Once a run is chosen, it goes on while its head would still win
/// against the smallest head of the others (which do not move meanwhile),
/// so the heads are compared once per stretch; when it stops, that head of
/// the others is the smallest of all, and the next stretch is its run's.
pub(crate) struct Merge {
    /// Merge keys, by event (see [`key_untimed`]).
    keys: Vec<u64>,
    runs: Vec<Run>,
    /// The run of the current stretch (`usize::MAX` before the first).
    cur: usize,
    /// Its next event and end (its `Run::pos` is written back when the
    /// stretch ends).
    pos: usize,
    end: usize,
    /// The smallest head of the other runs.
    other: Option<(u64, usize)>,
}

impl Merge {
    fn new(keys: Vec<u64>, runs: Vec<Run>) -> Merge {
        let other = min_head(&keys, &runs, usize::MAX);
        Merge {
            keys,
            runs,
            cur: usize::MAX,
            pos: 0,
            end: 0,
            other,
        }
    }

    /// Ends the current stretch and starts the next (`None`: all merged).
    fn switch(&mut self) -> Option<(u32, u32)> {
        if let Some(r) = self.runs.get_mut(self.cur) {
            r.pos = self.pos;
        }
        let (_, i) = self.other?;
        let Run { thread, pos, end } = self.runs[i];
        self.cur = i;
        self.pos = pos + 1;
        self.end = end;
        self.other = min_head(&self.keys, &self.runs, i);
        Some((pos as u32, thread))
    }
}

impl Drop for Merge {
    /// Gives the keys' vector back for the next batch merged on this thread.
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        SPARE.with(|s| {
            let mut spare = s.take();
            if spare.keys.capacity() < keys.capacity() {
                spare.keys = keys;
            }
            s.set(spare);
        });
    }
}

impl Iterator for Merge {
    type Item = (u32, u32);

    #[inline]
    fn next(&mut self) -> Option<(u32, u32)> {
        if self.pos < self.end {
            let k = self.keys[self.pos];
            let go = match self.other {
                None => true,
                Some((ok, oi)) => k < ok || (k == ok && self.cur < oi),
            };
            if go {
                let j = self.pos;
                self.pos += 1;
                return Some((j as u32, NO_SWITCH));
            }
        }
        self.switch()
    }
}

#[cfg(test)]
mod tests {
    use awaitscope_wire::{Callsite, CallsiteKind, Event, Level, SpanClass, SpanId};
    use proptest::prelude::*;

    use super::merge_threads;

    /// The merge as first written (a vector of keyed events per run, the
    /// smallest head taken each step): what the fast paths must reproduce.
    fn reference(events: &[Event]) -> Vec<(Option<u32>, &Event)> {
        struct Run<'a> {
            thread: u32,
            items: Vec<(u64, &'a Event)>,
            pos: usize,
        }
        let mut runs: Vec<Run> = Vec::new();
        for e in events {
            if let Event::Thread { id, .. } = e {
                runs.push(Run {
                    thread: *id,
                    items: Vec::new(),
                    pos: 0,
                });
            } else if runs.is_empty() {
                runs.push(Run {
                    thread: u32::MAX,
                    items: Vec::new(),
                    pos: 0,
                });
            }
            runs.last_mut().unwrap().items.push((0, e));
        }
        for run in &mut runs {
            let mut prev: Option<u64> = None;
            // Untimed events waiting for the next timed key: those before
            // the run's first, and trees.
            let mut pending: Vec<usize> = Vec::new();
            for j in 0..run.items.len() {
                let e = run.items[j].1;
                if matches!(e, Event::Callsite(_)) {
                    run.items[j].0 = 0;
                    continue;
                }
                match e.ts() {
                    Some(ts) => {
                        for k in pending.drain(..) {
                            run.items[k].0 = ts;
                        }
                        run.items[j].0 = ts;
                        prev = Some(ts);
                    }
                    None => {
                        // A tree at the run's end keeps the previous key.
                        if let Some(p) = prev {
                            run.items[j].0 = p;
                        }
                        if prev.is_none() || matches!(e, Event::PollTree { .. }) {
                            pending.push(j);
                        }
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(events.len());
        let mut last: Option<usize> = None;
        loop {
            let mut best: Option<(u64, usize)> = None;
            for (i, run) in runs.iter().enumerate() {
                if let Some(&(k, _)) = run.items.get(run.pos) {
                    if best.is_none_or(|(bk, _)| k < bk) {
                        best = Some((k, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let run = &mut runs[i];
            let e = run.items[run.pos].1;
            run.pos += 1;
            let switch = (last != Some(i) && run.thread != u32::MAX).then_some(run.thread);
            last = Some(i);
            out.push((switch, e));
        }
        out
    }

    fn event(kind: u8, arg: u8, ts: u64) -> Event {
        let span = SpanId(u64::from(arg));
        match kind % KINDS {
            0 => Event::Thread {
                id: if arg == 255 {
                    u32::MAX
                } else {
                    u32::from(arg % 4)
                },
                name: None,
            },
            1 => Event::Callsite(Box::new(Callsite {
                id: u32::from(arg),
                name: "c".into(),
                target: "t".into(),
                level: Level::Info,
                file: None,
                line: None,
                kind: CallsiteKind::Span(SpanClass::User),
                fields: vec![],
            })),
            2 => Event::FollowsFrom {
                span,
                follows: span,
            },
            3 => Event::Enter { span, ts },
            4 => Event::Exit { span, ts },
            5 => Event::Poll {
                task: span,
                start: ts,
                duration: 3,
                wakers: 0,
            },
            6 => Event::PollEnd {
                task: span,
                ts,
                wakers: 1,
            },
            7 => Event::Record {
                span,
                fields: vec![],
            },
            _ => Event::PollTree {
                task: span,
                spans: vec![],
            },
        }
    }

    /// Kinds of events [`event`] makes (kind 0: a thread).
    const KINDS: u8 = 9;

    /// Batches of up to 4 runs; timestamps increasing across the batch
    /// (runs in order), increasing within each run (overlapping runs), or
    /// anything (few distinct values: ties).
    fn batch() -> impl Strategy<Value = Vec<Event>> {
        (
            0u8..3,
            prop::collection::vec((any::<u8>(), any::<u8>(), 0u64..12), 0..48),
        )
            .prop_map(|(mode, raw)| {
                let mut clock = 0;
                let mut run_clock = 0;
                raw.into_iter()
                    .map(|(kind, arg, r)| {
                        if kind % KINDS == 0 {
                            run_clock = r;
                        }
                        let ts = match mode {
                            0 => {
                                clock += r;
                                clock
                            }
                            1 => {
                                run_clock += r;
                                run_clock
                            }
                            _ => r,
                        };
                        event(kind, arg, ts)
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn merge_is_the_reference_merge(events in batch()) {
            let fast = merge_threads(&events);
            let slow = reference(&events);
            prop_assert_eq!(fast.len(), slow.len());
            for (k, (a, b)) in fast.iter().zip(&slow).enumerate() {
                prop_assert_eq!(a.0, b.0, "switch at {}", k);
                prop_assert!(std::ptr::eq(a.1, b.1), "event at {}", k);
            }
        }
    }

    /// Runs without a timed event, and times at the ends of the range (a
    /// run's bounds are told apart from no bounds by them), merge as the
    /// reference merges them.
    #[test]
    fn runs_at_the_ends_of_time_merge_as_the_reference() {
        let (max, thread, record, enter, tree) = (u64::MAX, 0, 7, 3, 8);
        let batches: [&[(u8, u8, u64)]; 5] = [
            &[
                (thread, 0, 0),
                (enter, 1, max),
                (thread, 1, 0),
                (record, 2, 0),
            ],
            &[
                (thread, 0, 0),
                (record, 1, 0),
                (thread, 1, 0),
                (enter, 2, 0),
            ],
            &[(thread, 0, 0), (enter, 1, 0), (thread, 1, 0), (tree, 2, 0)],
            &[
                (enter, 9, max),
                (thread, 0, 0),
                (enter, 1, 0),
                (enter, 1, max),
            ],
            &[
                (thread, 0, 0),
                (tree, 1, 0),
                (thread, 1, 0),
                (enter, 2, max),
            ],
        ];
        for raw in batches {
            let events: Vec<Event> = raw.iter().map(|&(k, a, ts)| event(k, a, ts)).collect();
            let fast = merge_threads(&events);
            let slow = reference(&events);
            assert_eq!(fast.len(), slow.len());
            for (a, b) in fast.iter().zip(&slow) {
                assert_eq!(a.0, b.0);
                assert!(std::ptr::eq(a.1, b.1), "{raw:?}");
            }
        }
    }

    #[test]
    fn runs_in_time_order_are_not_merged() {
        let events: Vec<Event> = [(0, 0, 0), (3, 1, 5), (0, 1, 0), (3, 2, 5), (4, 2, 9)]
            .into_iter()
            .map(|(k, a, ts)| event(k, a, ts))
            .collect();
        assert!(super::merge_order(&events).is_none());
        let overlapping: Vec<Event> = [(0, 0, 0), (3, 1, 6), (0, 1, 0), (3, 2, 5)]
            .into_iter()
            .map(|(k, a, ts)| event(k, a, ts))
            .collect();
        assert!(super::merge_order(&overlapping).is_some());
    }
}
