//! A task's statistics between two updates as polls and wakes (the rules
//! are in [`super::mapping`]'s documentation).
//!
//! A poll running at an update is sent as started (an `Enter` of the task
//! span, on a thread of its own, so that the model knows the task is being
//! polled rather than waiting for a poll), and ended at a later update: at
//! its end when console gives it (it is still the task's last poll), else
//! at the earlier update that saw it running (a lower bound of its end: it
//! ran at least that long).

use awaitscope_wire::{Event, SpanId, TreeNode, WakeOp};
use console_api::tasks;

use super::emit::{duration_ns, unix_ns, Timed, MAX_POLLS_PER_UPDATE, THREAD};

/// Most polls running at once that are followed (each on a thread of its
/// own); a poll beyond them is sent when it has ended.
const MAX_RUNNING: u32 = 64;

/// What is kept of a task between updates.
#[derive(Debug)]
pub(super) struct TaskRec {
    pub(super) span: SpanId,
    /// When console says it was created (unix ns): with its id, what
    /// tells the task again after a reconnect.
    pub(super) created: u64,
    /// Polls completed, total busy time (ns), wakes and self-wakes, as of
    /// the last update.
    pub(super) polls: u64,
    pub(super) busy_ns: u64,
    pub(super) wakes: u64,
    pub(super) self_wakes: u64,
    /// End of the last completed poll sent (unix ns).
    pub(super) last_end: u64,
    /// Whether any poll was sent (the first poll follows the spawn, not a
    /// wake).
    pub(super) polled: bool,
    /// The last wake sent (unix ns).
    pub(super) woken_at: u64,
    /// The await tree last sent.
    pub(super) tree: Vec<SpanId>,
    /// A poll sent as started and not ended yet: its start (unix ns) and
    /// thread.
    pub(super) running: Option<(u64, u32)>,
    /// A `spawn_blocking` task: console sees its span entered only after
    /// the closure ran (to drop it), so its single "poll" is sent from its
    /// spawn to the end of what console counts.
    pub(super) blocking: bool,
}

impl TaskRec {
    /// A task created at `created` (unix ns).
    pub(super) fn new(span: SpanId, created: u64) -> Self {
        Self {
            span,
            created,
            polls: 0,
            busy_ns: 0,
            wakes: 0,
            self_wakes: 0,
            last_end: created,
            polled: false,
            woken_at: 0,
            tree: Vec::new(),
            running: None,
            blocking: false,
        }
    }

    /// A blocking task created at `created`: its poll starts there (see
    /// [`TaskRec::blocking`]).
    pub(super) fn new_blocking(
        span: SpanId,
        created: u64,
        threads: &mut Threads,
        clock_start: u64,
        out: &mut Vec<Timed>,
    ) -> Self {
        let mut rec = Self::new(span, created);
        rec.blocking = true;
        rec.polled = true;
        if let Some(th) = threads.take() {
            rec.running = Some((created, th));
            out.push(Timed::on(
                th,
                created,
                Event::Enter {
                    span,
                    ts: created.saturating_sub(clock_start),
                },
            ));
        }
        rec
    }
}

/// The threads that running polls are sent on (thread [`THREAD`] has the
/// rest).
#[derive(Debug, Default)]
pub(super) struct Threads {
    busy: Vec<u32>,
}

impl Threads {
    fn take(&mut self) -> Option<u32> {
        let id = (1..=MAX_RUNNING).find(|i| !self.busy.contains(i))?;
        self.busy.push(id);
        Some(id)
    }

    pub(super) fn give_back(&mut self, id: u32) {
        self.busy.retain(|b| *b != id);
    }
}

/// The times an update's polls are sent at.
#[derive(Clone, Copy)]
pub(super) struct Clock {
    /// The process's start (unix ns).
    pub(super) start: u64,
    /// This update's time and the previous one's (unix ns).
    pub(super) now: u64,
    pub(super) prev_now: u64,
}

impl Clock {
    fn rel(&self, t: u64) -> u64 {
        t.saturating_sub(self.start)
    }
}

/// One poll to send.
enum PollOut {
    /// Start and duration.
    Whole(u64, u64),
    /// The end of the poll that was running, on its thread.
    End(u64, u32),
    /// A poll running now, from its start.
    Begin(u64),
}

/// The events of task `rec`'s statistics `s` into `out`; the task's await
/// tree `tree` (when it changed) and resource polls `ops` go with its last
/// poll. Returns the task's close when console says it was dropped.
#[allow(clippy::too_many_arguments)]
pub(super) fn task_stats(
    rec: &mut TaskRec,
    threads: &mut Threads,
    s: &tasks::Stats,
    clock: Clock,
    tree: Option<Vec<TreeNode>>,
    ops: Vec<Event>,
    out: &mut Vec<Timed>,
) -> Option<Timed> {
    let Clock { now, prev_now, .. } = clock;
    let ps = s.poll_stats.unwrap_or_default();
    let started = ps.last_poll_started.as_ref().map(unix_ns);
    let ended = ps.last_poll_ended.as_ref().map(unix_ns);
    // A poll running now: started after the last one ended.
    let running = match (started, ended) {
        (Some(s), Some(e)) => s > e,
        (Some(_), None) => true,
        _ => false,
    };
    let done = ps.polls.saturating_sub(u64::from(running));
    let busy = ps.busy_time.as_ref().map_or(0, duration_ns);
    if rec.blocking {
        return blocking_stats(rec, threads, s, clock, ended.filter(|_| !running), out);
    }
    let mut new_polls = done.saturating_sub(rec.polls);
    let mut new_busy = busy.saturating_sub(rec.busy_ns);
    let mut polls: Vec<PollOut> = Vec::new();
    // The poll that was running at the last update.
    let mut still_running = false;
    if let Some((st, th)) = rec.running {
        if running && started == Some(st) {
            still_running = true;
        } else {
            let end = match (started, ended) {
                (Some(s2), Some(e)) if s2 == st && !running => e,
                // It ran at least until the update that saw it running.
                _ => prev_now
                    .max(st)
                    .min(started.filter(|&s2| s2 > st).unwrap_or(u64::MAX)),
            };
            if new_polls > 0 {
                new_polls -= 1;
                new_busy = new_busy.saturating_sub(end - st);
            }
            polls.push(PollOut::End(end, th));
            rec.running = None;
            rec.last_end = end;
        }
    }
    let mut exact = None;
    if new_polls > 0 && !running {
        if let (Some(st), Some(en)) = (started, ended) {
            if en > rec.last_end || !rec.polled {
                exact = Some((st, en.saturating_sub(st)));
            }
        }
    }
    let others = new_polls - u64::from(exact.is_some());
    if let Some(avg) = new_busy
        .saturating_sub(exact.map_or(0, |e| e.1))
        .checked_div(others)
    {
        // Before the last poll (or the one running), after the task's
        // last known poll and, when that leaves room, after the previous
        // update (console may report polls late: a task's whole life can
        // come in one update).
        let to = exact
            .map(|e| e.0)
            .or(started.filter(|_| running))
            .unwrap_or(now)
            .max(rec.last_end);
        let from = rec.last_end.max(prev_now.min(to)).max(clock.start).min(to);
        let n = others.min(MAX_POLLS_PER_UPDATE);
        let slot = (to - from) / n;
        // An average is never longer than the longest of the polls.
        let dur = avg.min(slot);
        for i in 0..n {
            polls.push(PollOut::Whole(from + i * slot, dur));
        }
    }
    if let Some((st, d)) = exact {
        polls.push(PollOut::Whole(st, d));
    }
    if running && !still_running {
        if let Some(st) = started {
            polls.push(PollOut::Begin(st));
        }
    }
    // Wakes: one right before each poll but a first one (at its start: how
    // long it waited is not known), self-wakes in console's proportion;
    // then one after the last poll, when console says it came after.
    let new_wakes = s.wakes.saturating_sub(rec.wakes);
    let new_self = s.self_wakes.saturating_sub(rec.self_wakes).min(new_wakes);
    let last_wake = s.last_wake.as_ref().map(unix_ns);
    let end_of_polls = polls
        .iter()
        .filter_map(|p| match p {
            PollOut::Whole(st, d) => Some(st + d),
            PollOut::End(e, _) => Some(*e),
            PollOut::Begin(_) => None,
        })
        .max()
        .unwrap_or(rec.last_end);
    let woken_after = !running
        && new_wakes > 0
        && last_wake.is_some_and(|w| w > end_of_polls && w > rec.woken_at);
    let mut budget = new_wakes - u64::from(woken_after);
    let starts = polls
        .iter()
        .filter(|p| !matches!(p, PollOut::End(..)))
        .count() as u64;
    let wakeable = starts - u64::from(!rec.polled && starts > 0);
    let sent = budget.min(wakeable);
    let mut self_left = sent
        .saturating_mul(new_self)
        .checked_div(new_wakes)
        .unwrap_or(0);
    let wakers = if s.waker_drops > s.waker_clones {
        // Console lost count: not known, and not lost.
        1
    } else {
        u32::try_from(s.waker_clones - s.waker_drops).unwrap_or(u32::MAX)
    };
    let last = polls.iter().rposition(|p| !matches!(p, PollOut::Begin(_)));
    let task = rec.span;
    let rel = |t: u64| clock.rel(t);
    for (i, p) in polls.iter().enumerate() {
        let is_last = Some(i) == last;
        // Earlier polls were followed by another: their wakers are not
        // known, and were not lost.
        let w = if is_last && !running {
            wakers
        } else {
            wakers.max(1)
        };
        let at = match p {
            PollOut::Whole(st, _) | PollOut::Begin(st) => *st,
            PollOut::End(e, _) => *e,
        };
        if !matches!(p, PollOut::End(..)) {
            if rec.polled && budget > 0 {
                budget -= 1;
                let by = (self_left > 0).then(|| {
                    self_left -= 1;
                    task
                });
                out.push(Timed::on(
                    THREAD,
                    at,
                    Event::Wake {
                        task,
                        op: WakeOp::WakeByRef,
                        by,
                        ts: rel(at),
                    },
                ));
            }
            rec.polled = true;
        }
        if is_last {
            if let Some(tree) = &tree {
                out.push(Timed::on(
                    THREAD,
                    at,
                    Event::PollTree {
                        task,
                        spans: tree.clone(),
                    },
                ));
            }
        }
        match *p {
            PollOut::Whole(st, d) => out.push(Timed::on(
                THREAD,
                st,
                Event::Poll {
                    task,
                    start: rel(st),
                    duration: d,
                    wakers: w,
                },
            )),
            PollOut::End(e, th) => {
                threads.give_back(th);
                out.push(Timed::on(
                    th,
                    e,
                    Event::PollEnd {
                        task,
                        ts: rel(e),
                        wakers: w,
                    },
                ));
            }
            PollOut::Begin(st) => {
                if let Some(th) = threads.take() {
                    rec.running = Some((st, th));
                    out.push(Timed::on(
                        th,
                        st,
                        Event::Enter {
                            span: task,
                            ts: rel(st),
                        },
                    ));
                }
            }
        }
        if is_last {
            // After the poll's start (a poll start forgets what the task
            // waited on): console does not say when in the poll.
            let (th, end) = match *p {
                PollOut::Whole(st, d) => (THREAD, st + d),
                PollOut::End(e, th) => (th, e),
                PollOut::Begin(_) => (THREAD, at),
            };
            for e in &ops {
                let mut e = e.clone();
                if let Event::Log(l) = &mut e {
                    l.ts = rel(end);
                }
                out.push(Timed::on(th, end, e));
            }
        }
    }
    if last.is_none() && !ops.is_empty() {
        // Resource polls of a poll still running: their own time is not
        // known.
        for e in ops {
            out.push(Timed::on(THREAD, now, e));
        }
    }
    if let (Some(tree), Some(_)) = (tree, last) {
        // Sent with the last poll; one that came without a poll waits for
        // the next.
        rec.tree = tree.iter().map(|n| n.span).collect();
    }
    if let (true, Some(w)) = (woken_after, last_wake) {
        rec.woken_at = w;
        out.push(Timed::on(
            THREAD,
            w,
            Event::Wake {
                task,
                op: WakeOp::WakeByRef,
                by: None,
                ts: rel(w),
            },
        ));
    }
    rec.polls = done;
    rec.busy_ns = busy;
    rec.wakes = s.wakes;
    rec.self_wakes = s.self_wakes;
    rec.last_end = rec.last_end.max(end_of_polls);
    let dropped = s.dropped_at.as_ref().map(unix_ns)?;
    if let Some((st, th)) = rec.running.take() {
        // Dropped while console last saw it polled: the poll ended by then.
        let end = dropped.max(st);
        threads.give_back(th);
        out.push(Timed::on(
            th,
            end,
            Event::PollEnd {
                task,
                ts: rel(end),
                wakers: 0,
            },
        ));
    }
    let at = dropped.max(rec.last_end);
    Some(Timed::on(
        THREAD,
        at,
        Event::Close {
            span: task,
            // Console does not tell a task that completed from one that
            // was aborted.
            kind: awaitscope_wire::CloseKind::Completed,
            ts: rel(at),
        },
    ))
}

/// A blocking task's statistics: its poll (from its spawn) ends when
/// console's last poll of it ended; nothing wakes it.
fn blocking_stats(
    rec: &mut TaskRec,
    threads: &mut Threads,
    s: &tasks::Stats,
    clock: Clock,
    ended: Option<u64>,
    out: &mut Vec<Timed>,
) -> Option<Timed> {
    let dropped = s.dropped_at.as_ref().map(unix_ns);
    let end = ended.or(dropped.filter(|_| rec.running.is_some()));
    if let (Some((st, th)), Some(end)) = (rec.running, end) {
        let end = end.max(st);
        threads.give_back(th);
        rec.running = None;
        rec.last_end = end;
        out.push(Timed::on(
            th,
            end,
            Event::PollEnd {
                task: rec.span,
                ts: clock.rel(end),
                wakers: 0,
            },
        ));
    }
    let dropped = dropped?;
    let at = dropped.max(rec.last_end);
    Some(Timed::on(
        THREAD,
        at,
        Event::Close {
            span: rec.span,
            kind: awaitscope_wire::CloseKind::Completed,
            ts: clock.rel(at),
        },
    ))
}
