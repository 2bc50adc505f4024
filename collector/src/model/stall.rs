//! Stalls: a poll that ran past the producer's stall threshold, as the
//! producer saw it while it ran ([`awaitscope_wire::Stall`]): the async
//! stack and the worker's native stack at the crossing, and how the worker
//! thread spent the poll (on a CPU, waiting for one, or blocked).
//!
//! The producer sends each stall in two halves, `ended: false` at the
//! crossing (with the stacks) and `ended: true` after the poll's end (with
//! the scheduler statistics up to the end); either may come after the
//! poll's end, and in either order. A task keeps the stalls of its latest
//! stalled polls, each poll's own, its halves merged by the poll's start
//! (an older poll's late half does not displace a newer poll's); the async stack is
//! resolved to names and locations when it arrives, while its spans are
//! still live.

use std::collections::VecDeque;
use std::sync::Arc;

use awaitscope_wire::{paths, NativeFrame, Sched, SpanClass, SpanId, StackState};

use super::hash::FastMap;
use super::span::Location;

/// One span of a stall's async stack, resolved when the stall arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallSpan {
    /// The span's label (its name, a resource's type, an async op's
    /// operation).
    pub label: String,
    /// Where it is in the source, the path shortened for display.
    pub location: Option<Location>,
    /// A span of the program's own code (see [`is_user_span`]): what a
    /// finding names when no native frame of the program was sampled.
    pub user: bool,
}

/// Whether a span of `class` from callsite `cs` at `location` is the
/// program's own (an `#[instrument]` fn or a span it made): a user span,
/// not one of awaitscope's own (an await point, a causal context), in a
/// file of the program's own tree (not a dependency's or the standard
/// library's).
pub fn is_user_span(
    class: SpanClass,
    cs: Option<&awaitscope_wire::Callsite>,
    location: Option<&Location>,
) -> bool {
    class == SpanClass::User
        // awaitscope's own spans have targets `awaitscope::*`; the
        // program's crates may be named `awaitscope_*` (the demo is).
        && cs.is_some_and(|c| c.target != "awaitscope" && !c.target.starts_with("awaitscope::"))
        && location.is_some_and(|l| super::file_memo::file_origin(&l.file) == paths::PathOrigin::Local)
}

/// The stall of a task's poll (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct PollStall {
    /// When the stalled poll started: with the task, the poll.
    pub start: u64,
    /// When the latest half was observed by the producer.
    pub ts: u64,
    /// The `ended: false` half (the stacks) arrived.
    pub crossed: bool,
    /// The `ended: true` half (the statistics up to the poll's end) arrived.
    pub ended: bool,
    /// The spans entered in the poll at the crossing, innermost first.
    pub spans: Vec<StallSpan>,
    /// What became of the native stack sample; `None` until the crossing's
    /// half arrived.
    pub stack: Option<StackState>,
    /// The native stack at the crossing, innermost first: sent symbolised
    /// (version 3), or symbolised here from a
    /// [`awaitscope_wire::NativeStack`].
    pub frames: Vec<NativeFrame>,
    /// Why (some of) the native stack could not be symbolised here: the
    /// program's file missing or rebuilt since it ran.
    pub unresolved: Option<String>,
    /// How the worker spent the poll: up to its end once the `ended` half
    /// arrived, else up to the crossing.
    pub sched: Option<Sched>,
    /// The poll's duration, once the poll is committed (known to be a
    /// poll, not the drop of the future): a stall arriving later is of a
    /// poll already judged.
    pub poll_ns: Option<u64>,
    /// `sched` as it was when the poll was committed (what it was first
    /// judged by).
    pub sched_at_commit: Option<Sched>,
}

impl PollStall {
    /// A stall of the poll started at `start`, with nothing in it yet.
    pub fn new(start: u64) -> Self {
        Self {
            start,
            ts: 0,
            crossed: false,
            ended: false,
            spans: Vec::new(),
            stack: None,
            frames: Vec::new(),
            unresolved: None,
            sched: None,
            poll_ns: None,
            sched_at_commit: None,
        }
    }

    /// Whether nothing more will change what is known of its poll: the
    /// poll was committed, and both halves arrived.
    pub fn settled(&self) -> bool {
        self.poll_ns.is_some() && self.crossed && self.ended
    }

    /// Merges one half sent by the producer (`spans` already resolved).
    pub fn merge(&mut self, st: &awaitscope_wire::Stall, spans: Vec<StallSpan>) {
        self.ts = self.ts.max(st.ts);
        if st.ended {
            self.ended = true;
            // The statistics up to the poll's end cover the crossing's.
            if st.sched.is_some() {
                self.sched = st.sched;
            }
        } else {
            self.crossed = true;
            self.spans = spans;
            self.stack = Some(st.stack);
            // A version-4 stall's frames come after it, symbolised here.
            if !st.frames.is_empty() {
                self.frames = st.frames.clone();
            }
            if !self.ended || self.sched.is_none() {
                self.sched = st.sched.or(self.sched);
            }
        }
    }
}

/// Most closed spans remembered per process (see [`ClosedSpans`]).
pub const CLOSED_SPANS: usize = 1024;

/// What is kept of a closed span to name it in an await tree or a stall
/// that arrives after its close.
#[derive(Clone, Debug)]
pub struct ClosedSpan {
    /// The span.
    pub id: SpanId,
    /// Its callsite.
    pub callsite: u32,
    /// Its class.
    pub class: SpanClass,
    /// Its own label (a resource's type, an async op's operation).
    pub label: Option<Arc<str>>,
    /// When it was first entered, if it was.
    pub first_entered: Option<u64>,
    /// When it was created.
    pub created: u64,
    /// When it closed.
    pub closed: u64,
}

/// The latest closed spans of a process, most recent last, at most
/// [`CLOSED_SPANS`]: a span entered in a poll and closed before the poll's
/// end (an `#[instrument] async fn` that returned) is gone from the live
/// spans when the poll's await tree or its stall arrives, and would be
/// missing from them.
///
/// Indexed by id: a span is looked for here wherever a live one is not
/// found (each leaf of an await tree a finding describes, each node of a
/// tree sent with spans that closed), and walking the whole ring for a span
/// that is not in it cost thousands of instructions each time.
#[derive(Clone, Debug, Default)]
pub struct ClosedSpans {
    ring: VecDeque<ClosedSpan>,
    /// The sequence number of the newest span of each id in the ring (the
    /// ring's first span has `base`).
    index: FastMap<SpanId, u64>,
    /// Sequence number of the ring's first span.
    base: u64,
}

impl ClosedSpans {
    /// Remembers a closed span, forgetting the oldest beyond the cap.
    pub fn push(&mut self, s: ClosedSpan) {
        if self.ring.len() >= CLOSED_SPANS {
            if let Some(old) = self.ring.pop_front() {
                // Unless a newer span of its id is in the ring.
                if self.index.get(&old.id) == Some(&self.base) {
                    self.index.remove(&old.id);
                }
                self.base += 1;
            }
        }
        let seq = self.base + self.ring.len() as u64;
        self.index.insert(s.id, seq);
        self.ring.push_back(s);
    }

    /// The closed span `id`, if remembered (the latest to close, if its id
    /// was used again).
    pub fn get(&self, id: SpanId) -> Option<&ClosedSpan> {
        if self.index.is_empty() {
            return None;
        }
        let seq = *self.index.get(&id)?;
        self.ring.get(usize::try_from(seq - self.base).ok()?)
    }
}

#[cfg(test)]
mod closed_tests {
    use super::*;

    fn closed(id: u64, closed: u64) -> ClosedSpan {
        ClosedSpan {
            id: SpanId(id),
            callsite: 0,
            class: SpanClass::User,
            label: None,
            first_entered: None,
            created: 0,
            closed,
        }
    }

    /// The index answers as walking the ring from its newest span does,
    /// through ids used again and spans forgotten past the cap.
    #[test]
    fn lookups_match_the_ring() {
        let mut c = ClosedSpans::default();
        assert!(c.get(SpanId(1)).is_none());
        // Ids from a small set, so that most are used again, some while an
        // older span of the id is still in the ring, some after it left.
        for n in 0..(3 * CLOSED_SPANS as u64 + 17) {
            let id = (n * 7_919) % 700;
            c.push(closed(id, n));
            if n % 97 == 0 || n > 3 * CLOSED_SPANS as u64 {
                for id in 0..800 {
                    let walked = c.ring.iter().rev().find(|s| s.id == SpanId(id));
                    assert_eq!(
                        c.get(SpanId(id)).map(|s| s.closed),
                        walked.map(|s| s.closed),
                        "span {id} after {n} closes"
                    );
                }
            }
        }
        assert_eq!(c.ring.len(), CLOSED_SPANS);
        assert!(c.index.len() <= CLOSED_SPANS);
    }
}

#[cfg(test)]
mod tests {
    use awaitscope_wire::{CloseKind, FrameOrigin, Sched, SpanId, StackState};

    use crate::config::MS;
    use crate::testing::{native_frame, stall, Scenario, TaskOpts};

    fn sched(window_ns: u64) -> Option<Sched> {
        Some(Sched {
            window_ns,
            on_cpu_ns: 1,
            kernel_ns: 0,
            waiting_ns: 0,
        })
    }

    /// The two halves of the stall of `t`'s poll from `start`: the
    /// crossing's (a stack in `charge`, the statistics up to the crossing)
    /// and the end's.
    fn halves(t: SpanId, charge: SpanId, start: u64) -> [awaitscope_wire::Stall; 2] {
        let mut crossing = stall(t, start, start + 20 * MS, false);
        crossing.spans = vec![charge, SpanId(9_999)];
        crossing.stack = StackState::Sampled;
        crossing.frames = vec![native_frame(
            "app::hash",
            "src/auth.rs",
            12,
            FrameOrigin::User,
        )];
        crossing.sched = sched(20 * MS);
        let mut end = stall(t, start, start + 300 * MS, true);
        end.sched = sched(300 * MS);
        [crossing, end]
    }

    fn task_stall(s: &mut Scenario, t: SpanId) -> Option<super::PollStall> {
        let m = s.model();
        let p = m.processes().next().unwrap();
        p.tasks.get(&t).and_then(|t| t.stalls.last().cloned())
    }

    #[test]
    fn halves_merge_in_either_order_running_or_ended() {
        for crossing_first in [true, false] {
            for poll_ended_first in [true, false] {
                let mut s = Scenario::new();
                let t = s.spawn(TaskOpts::named("t"), 0);
                let charge = s.user_span("charge_card", 0);
                s.begin_poll(t, MS);
                s.enter(charge, MS + 1);
                let [crossing, end] = halves(t, charge, MS);
                let (a, b) = if crossing_first {
                    (crossing, end)
                } else {
                    (end, crossing)
                };
                // The crossing's spans are named while they live, or from
                // the closed spans once they closed.
                if poll_ended_first {
                    s.exit(charge, 300 * MS);
                    s.close(charge, CloseKind::Completed, 300 * MS);
                    s.end_poll(t, 301 * MS);
                }
                s.stall(a);
                s.stall(b);
                let st = task_stall(&mut s, t).expect("kept");
                let case = (crossing_first, poll_ended_first);
                assert!(st.crossed && st.ended, "{case:?}");
                assert_eq!(st.start, MS);
                assert_eq!(st.stack, Some(StackState::Sampled));
                assert_eq!(st.frames.len(), 1);
                // An unknown span is left out.
                assert_eq!(st.spans.len(), 1, "{case:?}");
                assert_eq!(st.spans[0].label, "charge_card");
                assert_eq!(
                    st.spans[0].location.as_ref().map(|l| l.to_string()),
                    Some("src/main.rs:100".into())
                );
                // The statistics up to the poll's end win.
                assert_eq!(st.sched.map(|s| s.window_ns), Some(300 * MS), "{case:?}");
            }
        }
    }

    #[test]
    fn each_poll_keeps_its_own_stall_and_they_go_with_the_task() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("t"), 0);
        let charge = s.user_span("charge_card", 0);
        s.begin_poll(t, MS);
        let [crossing, first_end] = halves(t, charge, MS);
        s.stall(crossing);
        s.end_poll(t, 300 * MS);
        s.begin_poll(t, 400 * MS);
        let [crossing, end] = halves(t, charge, 400 * MS);
        s.stall(end);
        s.stall(crossing);
        // The first poll's end half comes after the second's crossing: it
        // is the first poll's, and leaves the second's as it was.
        s.stall(first_end);
        let st = task_stall(&mut s, t).expect("kept");
        assert_eq!(st.start, 400 * MS);
        assert!(st.crossed && st.ended);
        assert_eq!(st.stack, Some(StackState::Sampled));
        {
            let m = s.model();
            let task = &m.processes().next().unwrap().tasks[&t];
            let first = task.stall(MS).expect("the first poll's, kept");
            assert!(first.crossed && first.ended);
            assert_eq!(first.sched.map(|s| s.window_ns), Some(300 * MS));
            assert_eq!(task.stalls.len(), 2);
        }
        // Of an unknown task: ignored.
        s.stall(stall(SpanId(12_345), MS, 2 * MS, false));
        s.end_poll(t, 700 * MS);
        s.complete(t, 800 * MS);
        let m = s.model();
        let p = m.processes().next().unwrap();
        assert!(!p.tasks.contains_key(&SpanId(12_345)));
        // A stall stays with its task when it ends (a late half merges).
        assert!(p.completed.iter().any(|t| !t.stalls.is_empty()));
    }

    /// Beyond [`crate::model::task::STALLS_KEPT`] stalled polls, a settled
    /// one (committed, both halves in) is forgotten first, else the oldest;
    /// an older poll's half than all those kept, none settled, is not kept.
    #[test]
    fn a_task_keeps_its_latest_stalls_forgetting_settled_ones_first() {
        use crate::model::task::STALLS_KEPT;
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("t"), 0);
        let charge = s.user_span("charge_card", 0);
        let starts = |s: &mut Scenario| -> Vec<u64> {
            let m = s.model();
            let p = m.processes().next().unwrap();
            p.tasks[&t].stalls.iter().map(|s| s.start / MS).collect()
        };
        // Polls at 1, 1001, 2001...: the first settled (both halves, then
        // committed by the next poll), the others' crossings alone.
        for i in 0..STALLS_KEPT as u64 {
            let start = MS + i * 1000 * MS;
            s.begin_poll(t, start);
            let [crossing, end] = halves(t, charge, start);
            s.stall(crossing);
            s.end_poll(t, start + 300 * MS);
            if i == 0 {
                s.stall(end);
            }
        }
        assert_eq!(starts(&mut s), [1, 1001, 2001, 3001]);
        // One more: the settled first one goes.
        s.begin_poll(t, 5000 * MS);
        s.stall(halves(t, charge, 5000 * MS)[0].clone());
        assert_eq!(starts(&mut s), [1001, 2001, 3001, 5000]);
        // A half of a poll older than all of them: not kept.
        s.stall(halves(t, charge, 500 * MS)[1].clone());
        assert_eq!(starts(&mut s), [1001, 2001, 3001, 5000]);
        // One between them: the oldest goes.
        s.stall(halves(t, charge, 4000 * MS)[1].clone());
        assert_eq!(starts(&mut s), [2001, 3001, 4000, 5000]);
    }

    #[test]
    fn closed_spans_are_remembered_up_to_the_cap() {
        let mut c = super::ClosedSpans::default();
        for i in 0..(super::CLOSED_SPANS as u64 + 10) {
            c.push(super::ClosedSpan {
                id: SpanId(i),
                callsite: 1,
                class: awaitscope_wire::SpanClass::User,
                label: None,
                first_entered: None,
                created: 0,
                closed: 1,
            });
        }
        assert!(c.get(SpanId(5)).is_none());
        assert!(c.get(SpanId(10)).is_some());
        assert_eq!(c.ring.len(), super::CLOSED_SPANS);
    }
}
