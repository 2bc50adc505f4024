//! How events change one task: a poll starts and ends, a waker is used,
//! fields are recorded. [`super::apply`] finds the task an event is about
//! and applies these rules to it.

use awaitscope_wire::{names, Callsite, SpanId, WakeOp};

use super::await_tree::AwaitTree;
use super::span::{self, Location};
use super::task::{PendingPoll, Task, TaskState};

/// The span that identifies what a task waits on: its await point as far
/// as the tree tells at the poll's end (no resource node itself, see
/// [`AwaitTree::await_point`]); whether it is still open is judged when
/// read ([`super::Process::await_point`]).
#[inline]
fn leaf_span(tree: &AwaitTree) -> Option<SpanId> {
    tree.await_point(|_| true).map(|i| tree.nodes[i].span)
}

/// The fields a task's name, kind, tokio id and spawn location are
/// derived from (see [`derive_task_fields`]).
pub(super) const TASK_FIELDS: [&str; 6] = [
    names::TASK_NAME,
    names::KIND,
    names::TASK_ID,
    names::LOC_FILE,
    names::LOC_LINE,
    names::LOC_COL,
];

/// Derives a task's name, kind, tokio id and spawn location from its
/// fields (after they changed): `cs` is its callsite, `idx` the
/// [`span::field_indices`] of [`TASK_FIELDS`] in it.
pub(super) fn derive_task_fields(t: &mut Task, cs: Option<&Callsite>, idx: [Option<u16>; 6]) {
    let [name, kind, id, file, line, col] = span::values_at(&t.fields, idx);
    // Written over the strings the task holds (its own, or those of a task
    // dropped: see `TaskAllocs`).
    put_str(&mut t.name, span::as_str(name).filter(|s| !s.is_empty()));
    put_str(&mut t.kind, span::as_str(kind));
    t.tokio_id = span::as_u64(id);
    // As `span::loc_fields`, else the callsite's own location.
    match (span::as_str(file), span::as_u64(line)) {
        (Some(file), Some(line)) => {
            let (line, col) = (line as u32, span::as_u64(col).map(|c| c as u32));
            match &mut t.location {
                Some(l) => {
                    l.file.clear();
                    l.file.push_str(file);
                    l.line = line;
                    l.col = col;
                }
                None => {
                    t.location = Some(Location {
                        file: file.to_string(),
                        line,
                        col,
                    })
                }
            }
        }
        _ => t.location = span::callsite_location(cs),
    }
}

/// `s` made `v`, written over the string it holds if any.
fn put_str(s: &mut Option<String>, v: Option<&str>) {
    if let (Some(s), Some(v)) = (s.as_mut(), v) {
        s.clear();
        s.push_str(v);
        return;
    }
    *s = v.map(str::to_string);
}

/// A waker of `t` was used (`op`) at `ts`, by task `by` if any.
#[inline(always)]
pub(super) fn wake(t: &mut Task, op: WakeOp, by: Option<SpanId>, ts: u64) {
    match op {
        WakeOp::Clone => {
            t.wakers_alive = t.wakers_alive.saturating_add(1);
            return;
        }
        WakeOp::Drop => {
            t.wakers_alive = t.wakers_alive.saturating_sub(1);
            return;
        }
        WakeOp::LastDrop => {
            t.wakers_alive = 0;
            return;
        }
        WakeOp::Wake => t.wakers_alive = t.wakers_alive.saturating_sub(1),
        WakeOp::WakeByRef => {}
    }
    t.wakes += 1;
    if by == Some(t.id) {
        t.self_wakes += 1;
    }
    t.woken_by.note(by);
    t.woken_since_poll = true;
    if t.poll_start.is_some() {
        t.woken_during_poll = true;
    } else if t.scheduled_since.is_none() && t.closed.is_none() {
        t.scheduled_since = Some(ts);
        t.state = TaskState::Scheduled;
    }
}

/// What the start of a poll settled.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PollStarted {
    /// The previous poll (start, duration), committed by this one.
    pub(super) committed: Option<(u64, u64)>,
    /// The wait for this poll since the task was woken (or spawned).
    pub(super) waited: Option<u64>,
}

/// Starts a poll of `t` at `ts`: commits the previous poll (it was a real
/// poll) and ends the wait for this one.
// Always inlined: a whole poll's start is most of its work.
#[inline(always)]
pub(super) fn start_poll(t: &mut Task, ts: u64) -> PollStarted {
    let mut started = PollStarted::default();
    if let Some((p, d)) = t.commit_pending_poll_unrecorded() {
        started.committed = Some((p.start, d));
    }
    if let Some(since) = t.scheduled_since.take() {
        let wait = ts.saturating_sub(since);
        t.scheduled_ns = t.scheduled_ns.saturating_add(wait);
        started.waited = Some(wait);
    }
    // Recorded together: a busy task's poll records both.
    match (started.committed, started.waited) {
        (Some((_, d)), Some(wait)) => t.record_poll_and_scheduled(d, wait),
        (Some((_, d)), None) => t.record_poll(d),
        (None, Some(wait)) => t.record_scheduled(wait),
        (None, None) => {}
    }
    t.state = TaskState::Running;
    t.poll_start = Some(ts);
    t.woken_since_poll = false;
    t.woken_during_poll = false;
    // The await tree stays until a `PollTree` (or spans entered in this
    // poll) replaces it: producers send it only when it changes.
    t.tree_from_enters = false;
    t.waiting_on.clear();
    started
}

/// Ends the running poll of `t` at `ts` (the task span was exited).
/// Returns whether a poll was running.
#[inline]
pub(super) fn end_poll(t: &mut Task, ts: u64) -> bool {
    let Some(start) = t.poll_start.take() else {
        return false;
    };
    t.pending_poll = Some(PendingPoll { start, end: ts });
    t.last_poll_end = Some(ts);
    if t.woken_during_poll {
        t.state = TaskState::Scheduled;
        t.scheduled_since = Some(ts);
    } else {
        t.state = TaskState::Idle;
    }
    if !t.tree_changed {
        // Same tree as at the last poll's end: same leaf, same since.
        return true;
    }
    t.tree_changed = false;
    let leaf = leaf_span(&t.await_tree);
    t.leaf = match (leaf, t.leaf) {
        (Some(l), Some((old, since))) if l == old => Some((old, since)),
        (Some(l), _) => Some((l, start)),
        (None, _) => None,
    };
    true
}

#[cfg(test)]
mod leaf_tests {
    use crate::testing::{Scenario, TaskOpts};

    /// The leaf a task waits on, and since when, follows its await tree
    /// across polls that keep it and polls that change it.
    #[test]
    fn the_leaf_and_its_start_follow_tree_changes() {
        let mut s = Scenario::new();
        let t = s.spawn(TaskOpts::named("t"), 0);
        let a = s.user_span("a", 1);
        let b = s.user_span("b", 2);
        let leaf = |s: &mut Scenario| s.model().processes().next().unwrap().tasks[&t].leaf;
        let poll_in = |s: &mut Scenario, span, ts| {
            s.begin_poll(t, ts);
            s.enter(span, ts + 1);
            s.exit(span, ts + 2);
            s.end_poll(t, ts + 3);
        };
        // Poll 1 waits in `a`.
        poll_in(&mut s, a, 10);
        assert_eq!(leaf(&mut s), Some((a, 10)));
        // Poll 2 enters the same spans: the producer sends no tree, and the
        // wait goes on from poll 1.
        poll_in(&mut s, a, 20);
        assert_eq!(leaf(&mut s), Some((a, 10)));
        // Poll 3 waits in `b` instead, poll 4 too.
        poll_in(&mut s, b, 30);
        assert_eq!(leaf(&mut s), Some((b, 30)));
        poll_in(&mut s, b, 40);
        assert_eq!(leaf(&mut s), Some((b, 30)));
        // Poll 5 enters nothing: no leaf.
        s.poll_v2(t, 50, 51, 1);
        assert_eq!(leaf(&mut s), None);
        // Poll 6 goes back to `a`: a new wait, from this poll.
        poll_in(&mut s, a, 60);
        assert_eq!(leaf(&mut s), Some((a, 60)));
        poll_in(&mut s, a, 70);
        assert_eq!(leaf(&mut s), Some((a, 60)));
    }
}

#[cfg(test)]
mod woken_by_tests {
    use crate::testing::{Scenario, TaskOpts};

    #[test]
    fn who_woke_a_task_is_counted_most_frequent_first() {
        let mut s = Scenario::new();
        let waiter = s.spawn(TaskOpts::named("waiter"), 0);
        let a = s.spawn(TaskOpts::named("a"), 1);
        let b = s.spawn(TaskOpts::named("b"), 2);
        s.begin_poll(waiter, 3);
        s.end_poll(waiter, 4);
        s.wake(waiter, Some(a), 5);
        for ts in 6..9 {
            s.wake(waiter, Some(b), ts);
        }
        s.wake(waiter, None, 10);
        let m = s.model();
        let p = m.processes().next().unwrap();
        let w = &p.tasks[&waiter];
        assert_eq!(
            w.woken_by.to_vec(),
            vec![(Some(b), 3), (Some(a), 1), (None, 1)]
        );
    }
}

#[cfg(test)]
mod field_tests {
    use awaitscope_wire::{Event, Field, Value};

    use crate::testing::{StreamBuilder, TaskOpts};
    use crate::Model;

    /// A task's name follows its callsite's field names as they stand: a
    /// callsite sent again with its fields in another order (a producer
    /// that restarted its registry) names the next recorded fields by the
    /// new order, not by where the names were before.
    #[test]
    fn a_callsite_sent_again_renames_by_its_new_fields() {
        let mut b = StreamBuilder::new(1, 0);
        b.hello("app", None, false).thread(0);
        let t = b.spawn(&TaskOpts::named("first"), None, 10);
        let mut m = Model::default();
        let apply = |b: &mut StreamBuilder, m: &mut Model| {
            b.flush();
            for f in b.take_frames() {
                m.apply(&f);
            }
        };
        apply(&mut b, &mut m);
        let p = m.processes().next().expect("process");
        assert_eq!(p.tasks[&t].name.as_deref(), Some("first"));
        let id = p.tasks[&t].callsite;
        let mut cs = p.callsites[&id].clone();
        // `kind` and `task.name` change places.
        cs.fields.swap(0, 1);
        assert_eq!(cs.fields[0], awaitscope_wire::names::TASK_NAME);
        b.push(Event::Callsite(Box::new(cs)));
        b.push(Event::Record {
            span: t,
            fields: vec![Field {
                index: 0,
                value: Value::Str("second".into()),
            }],
        });
        apply(&mut b, &mut m);
        let p = m.processes().next().expect("process");
        assert_eq!(p.tasks[&t].name.as_deref(), Some("second"));
    }

    /// A task spawned after a completed one was dropped is made over the
    /// dropped one's allocations: its fields, name, kind, spawn location,
    /// tokio id and wakers are still its own, as in a model that dropped
    /// nothing (nothing of the dropped task, named, with more fields, a
    /// location of its own and other wakers, shows through).
    #[test]
    fn a_task_made_over_a_dropped_ones_allocations_is_its_own() {
        use awaitscope_wire::{CloseKind, SpanId, SpanNew, WakeOp};

        use crate::config::Config;

        let mut b = StreamBuilder::new(1, 0);
        b.hello("app", None, false).thread(0);
        let opts = TaskOpts {
            name: Some("the-first-task-with-a-long-name".into()),
            kind: Some("blocking".into()),
            line: 77,
        };
        let first = b.spawn(&opts, None, 10);
        b.waker(first, WakeOp::WakeByRef, Some(SpanId(999)), 20)
            .poll(first, 30, 40)
            .waker(first, WakeOp::Wake, None, 50)
            .poll(first, 60, 70)
            .close(first, CloseKind::Completed, 80);
        b.flush();
        let mut frames = b.take_frames();
        // The next task: of the same callsite, with `kind` twice (the
        // later value stands) and its tokio id, no name and no location
        // fields (its location is its callsite's).
        let callsite = {
            let mut m = Model::default();
            frames.iter().for_each(|f| m.apply(f));
            let p = m.processes().next().expect("process");
            p.completed.first(first).expect("kept").callsite
        };
        let next = SpanId(5000);
        let field = |index, value| Field { index, value };
        b.push(Event::SpanNew(Box::new(SpanNew {
            id: next,
            callsite,
            parent: None,
            ctx_task: None,
            ctx_span: None,
            ts: 90,
            fields: vec![
                field(0, Value::Str("task".into())),
                field(2, Value::U64(4242)),
                field(0, Value::Str("local".into())),
            ],
        })));
        b.waker(next, WakeOp::Wake, None, 100);
        b.flush();
        frames.extend(b.take_frames());

        // Keeping no completed task drops the first at its close.
        let mut config = Config::default();
        config.retention.completed_max_count = 0;
        let mut dropping = Model::new(config);
        let mut keeping = Model::default();
        for f in &frames {
            dropping.apply(f);
            keeping.apply(f);
        }
        let p = dropping.processes().next().expect("process");
        assert!(!p.completed.contains(first), "the first task was dropped");
        let k = keeping.processes().next().expect("process");
        assert!(k.completed.contains(first));
        let (t, want) = (&p.tasks[&next], &k.tasks[&next]);
        assert_eq!(t.fields, want.fields);
        assert_eq!(
            t.fields,
            vec![
                field(0, Value::Str("local".into())),
                field(2, Value::U64(4242))
            ]
        );
        assert_eq!(t.name, None);
        assert_eq!(t.kind.as_deref(), Some("local"));
        assert_eq!(t.tokio_id, Some(4242));
        assert_eq!(t.location, want.location);
        assert_eq!(
            t.location.as_ref().map(|l| (l.file.as_str(), l.col)),
            Some(("tokio/src/lib.rs", None))
        );
        assert_eq!(t.woken_by.to_vec(), vec![(None, 1)]);
        assert_eq!(t.woken_by, want.woken_by);
    }
}
