//! `stuck`: a task pending on the same call on a tokio resource (a
//! `Mutex::lock`, a semaphore's permits, a oneshot's reply) for longer
//! than the threshold: something of this process should have given it
//! what it waits for, and has not.
//!
//! Not stuck:
//! - a task parked on a timer (a Sleep or Interval anywhere in its await
//!   tree, e.g. `select!` with a timeout): it will wake;
//! - a task waiting inside a span of the program's own with no resource
//!   under it: it waits on the world outside the process (a socket, a
//!   channel, an un-instrumented future). An idle connection waiting for
//!   its client's next request, or a worker for its next job, waits so
//!   for as long as nobody calls, and nothing in its tree tells that
//!   from a hang; the UI and the reports show how long it has waited;
//! - a task without an await tree, or whose tree holds only spans that
//!   closed (what it waits on now has no span), or with no live waker:
//!   left to `lost_waker`, the one hang that can be told from outside.
//!
//! A stuck task that is one of a deadlock's says so, and names the tasks
//! it is deadlocked with: the `deadlock` finding tells who holds what.
//!
//! The program can say where a wait is a hang, which the await tree alone
//! cannot tell: a span with the field `awaitscope.stuck_after`
//! ([`names::STUCK_AFTER`]: a duration, or `"never"`) sets the threshold
//! for every wait inside it, on a resource or not (an outbound call that
//! should answer within 30 s, a job that should finish). The innermost
//! span that sets it wins; a timer in the tree still means the task will
//! wake.

use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation};
use awaitscope_wire::{names, ProcessKey, SpanId, Value};

use super::deadlock;
use crate::config::Thresholds;
use crate::model::await_tree::AwaitTree;
use crate::model::hash::FastMap;
use crate::model::span::{as_str, as_u64};
use crate::model::task::group_key;
use crate::model::{task_label, Process, Task, TaskState};
use crate::units::{fmt_ns_brief, parse_duration, Bare};

/// The `stuck` detector: judges live tasks at each scan. An episode lasts while the
/// task stays so.
#[derive(Debug, Default)]
pub struct Stuck {
    /// The deadlocks of the process at the scan last asked about: each
    /// task of a cycle, with the other tasks of its cycles. Found at most
    /// once a scan, and only when a task is stuck.
    deadlocks: Option<(ProcessKey, u64, FastMap<SpanId, Vec<SpanId>>)>,
    /// Per process, the callsites that declare [`names::STUCK_AFTER`]
    /// (callsite -> the field's index), with how many callsites the
    /// process had when they were listed (callsites are only ever added).
    /// Empty for nearly every program: then no span is looked at.
    declared: FastMap<ProcessKey, (usize, FastMap<u32, u16>)>,
}

/// What the spans around a wait say of it (see [`names::STUCK_AFTER`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StuckAfter {
    /// A span sets this threshold (ns); the await-tree node of that span.
    After(u64, usize),
    /// A span says a wait inside it is never stuck.
    Never,
}

impl Stuck {
    /// The callsites of `p` that declare [`names::STUCK_AFTER`], listed
    /// again only when the process has new callsites.
    fn declared(&mut self, p: &Process) -> &FastMap<u32, u16> {
        let (seen, declared) = self.declared.entry(p.key).or_default();
        if *seen != p.callsites.len() {
            *seen = p.callsites.len();
            declared.clear();
            for (id, cs) in &p.callsites {
                if let Some(i) = cs.fields.iter().position(|f| f == names::STUCK_AFTER) {
                    declared.insert(*id, i as u16);
                }
            }
        }
        declared
    }

    /// The tasks `task` is deadlocked with in `p` at `now` (empty: none).
    fn deadlocked_with(
        &mut self,
        p: &Process,
        task: SpanId,
        now: u64,
        th: &Thresholds,
    ) -> &[SpanId] {
        if !matches!(&self.deadlocks, Some((k, at, _)) if *k == p.key && *at == now) {
            let mut with: FastMap<SpanId, Vec<SpanId>> = FastMap::default();
            for cycle in deadlock::cycles(p, now, th) {
                for &(t, _) in &cycle {
                    let others = with.entry(t).or_default();
                    for &(o, _) in &cycle {
                        if o != t && !others.contains(&o) {
                            others.push(o);
                        }
                    }
                }
            }
            self.deadlocks = Some((p.key, now, with));
        }
        self.deadlocks
            .as_ref()
            .and_then(|(_, _, with)| with.get(&task))
            .map_or(&[], Vec::as_slice)
    }
}

impl Detector for Stuck {
    fn kind(&self) -> FindingKind {
        FindingKind::Stuck
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            tasks: true,
            ..Hooks::default()
        }
    }

    fn on_task(&mut self, p: &Process, t: &Task, now: u64, cx: &mut Cx<'_>) {
        let declared = self.declared(p);
        let mut o = check(p, t, now, cx.thresholds, declared);
        if let Some(o) = &mut o {
            let with = self.deadlocked_with(p, t.id, now, cx.thresholds);
            if !with.is_empty() {
                let names: Vec<String> = with
                    .iter()
                    .filter_map(|id| p.tasks.get(id))
                    .map(task_label)
                    .collect();
                o.message.push_str(&format!(
                    "; it is in a deadlock with {} (see the `deadlock` finding)",
                    names.join(", ")
                ));
            }
        }
        cx.episode(FindingKind::Stuck, t.id, o);
    }
}

/// The [`names::STUCK_AFTER`] in force at node `leaf` of `tree`: that of
/// the innermost span on its path that sets a value that reads as one
/// (`declared`: the callsites that have the field). `None`: no span does.
pub fn stuck_after(
    p: &Process,
    tree: &AwaitTree,
    leaf: usize,
    declared: &FastMap<u32, u16>,
) -> Option<StuckAfter> {
    let mut cur = Some(leaf);
    // Bounded: a malformed tree's parents may form a cycle.
    for _ in 0..tree.nodes.len() {
        let i = cur?;
        let node = &tree.nodes[i];
        if let Some(&index) = declared.get(&node.callsite) {
            let value = p.spans.get(&node.span).and_then(|s| {
                s.fields
                    .iter()
                    .rev()
                    .find(|f| f.index == index)
                    .map(|f| &f.value)
            });
            if let Some(set) = value.and_then(|v| read_stuck_after(v, i)) {
                return Some(set);
            }
        }
        cur = node.parent.map(usize::from);
    }
    None
}

/// A [`names::STUCK_AFTER`] value set on the span of node `node`: a
/// duration (a bare number is seconds) or `never`/`off`; `None` for
/// anything else, which is then as if it were not set.
fn read_stuck_after(v: &Value, node: usize) -> Option<StuckAfter> {
    let ns = match as_str(Some(v)) {
        Some(s) if ["never", "off"].contains(&s.trim()) => return Some(StuckAfter::Never),
        Some(s) => parse_duration(s, Bare::Secs).ok()?,
        None => as_u64(Some(v))?.saturating_mul(1_000_000_000),
    };
    Some(StuckAfter::After(ns, node))
}

/// Checks `t` at `now`; `declared` lists the callsites that declare
/// [`names::STUCK_AFTER`] (see [`stuck_after`]).
pub fn check(
    p: &Process,
    t: &Task,
    now: u64,
    th: &Thresholds,
    declared: &FastMap<u32, u16>,
) -> Option<Observation> {
    if t.state != TaskState::Idle || t.poll_start.is_some() {
        return None;
    }
    let (_, since) = t.leaf?;
    let pending = now.saturating_sub(since);
    if declared.is_empty() && pending <= th.stuck_ns {
        return None;
    }
    let tree = &t.await_tree;
    // What it is pending on must still be there, and be an await point:
    // no span that closed in the poll, no resource itself (see
    // `AwaitTree::await_point_from`). None (a harness parked on a shutdown
    // signal after some set-up): nothing to name, not stuck.
    let leaf = p.await_point(tree)?;
    let set = if declared.is_empty() {
        None
    } else {
        stuck_after(p, tree, leaf, declared)
    };
    let threshold = match set {
        Some(StuckAfter::After(ns, _)) => ns,
        Some(StuckAfter::Never) => return None,
        None => th.stuck_ns,
    };
    if pending <= threshold {
        return None;
    }
    if (0..tree.nodes.len()).any(|i| p.node_is_timer(tree, i)) {
        return None;
    }
    let on_resource = p.resource_of(tree.nodes[leaf].span).is_some();
    if set.is_none() && !on_resource {
        // A span of the program's own, not a call on a resource: an idle
        // server waits so (see the module's docs).
        return None;
    }
    // The innermost frame names what it waits on (tokio's internals folded
    // into the operation the user called), at the user's line.
    let frames = p.await_frames(tree, leaf);
    let location = frames.iter().find_map(|f| f.location.clone());
    let label = frames.first().map_or_else(
        || p.node_label(&tree.nodes[p.culprit(tree, leaf)]),
        |f| f.label.clone(),
    );
    let threshold = match set {
        Some(StuckAfter::After(ns, node)) => format!(
            "{} = {} on {}",
            names::STUCK_AFTER,
            fmt_ns_brief(ns),
            p.node_label(&tree.nodes[node])
        ),
        _ => format!("threshold {}", fmt_ns_brief(th.stuck_ns)),
    };
    Some(Observation {
        kind: FindingKind::Stuck,
        process: p.key,
        key: format!("{}|{:?}", group_key(t), location),
        tasks: vec![FindingTask::of(t)],
        location,
        message: format!(
            "{} has been pending {} {} for {} ({threshold})",
            task_label(t),
            if on_resource { "on" } else { "in" },
            label,
            fmt_ns_brief(pending),
        ),
        trace: frames.iter().map(ToString::to_string).collect(),
        duration_ns: Some(pending),
        ts: now,
        new_occurrence: true,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::SEC;
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;
    use awaitscope_wire::{names, Value, WakeOp};

    #[test]
    fn pending_on_the_same_lock_is_stuck() {
        let mut s = Scenario::new();
        let m = s.mutex(0);
        let t = s.spawn(TaskOpts::named("waiter"), 0);
        let fetch = s.user_span("fetch", 0);
        s.begin_poll(t, 1000);
        s.enter(fetch, 1100);
        s.lock(t, m, false, 1200);
        s.exit(fetch, 1300);
        s.end_poll(t, 1400);
        // A live waker: not lost, just waiting.
        s.waker(t, awaitscope_wire::WakeOp::Clone, 1250);
        s.tick(30 * SEC);
        let model = s.model();
        let f: Vec<_> = model.findings().of_kind(FindingKind::Stuck).collect();
        assert_eq!(f.len(), 1, "{:?}", model.findings().list());
        assert!(f[0].message.contains("Mutex::lock"), "{}", f[0].message);
        // Innermost first, the Mutex and its `Mutex::lock` one frame.
        assert_eq!(f[0].trace.len(), 2, "Mutex::lock < fetch: {:?}", f[0].trace);
        assert!(
            f[0].trace[0].starts_with("tokio::sync::Mutex::lock @ src/main.rs"),
            "{:?}",
            f[0].trace
        );
        assert!(f[0].trace[1].starts_with("fetch"), "{:?}", f[0].trace);
        assert_eq!(f[0].location.as_ref().unwrap().file, "src/main.rs");
        assert_eq!(model.findings().of_kind(FindingKind::LostWaker).count(), 0);
    }

    /// A task parked (on a shutdown signal, say) after set-up spans that
    /// returned in the same poll is not pending on them; nor is the same
    /// task still inside its span with no resource under it (a server
    /// between requests waits so): not stuck either way.
    #[test]
    fn parked_in_or_after_spans_of_its_own_is_not_stuck() {
        let stuck = |close: bool| {
            let mut s = Scenario::new();
            let t = s.spawn(TaskOpts::named("harness"), 0);
            let setup = s.user_span("serve", 0);
            s.begin_poll(t, 1000);
            s.enter(setup, 1100);
            s.exit(setup, 1200);
            s.end_poll(t, 1400);
            s.waker(t, awaitscope_wire::WakeOp::Clone, 1250);
            if close {
                s.complete(setup, 1500);
            }
            s.tick(60 * SEC);
            s.model().findings().of_kind(FindingKind::Stuck).count()
        };
        assert_eq!(stuck(false), 0);
        assert_eq!(stuck(true), 0);
    }

    /// A task that took a lock and let it go in its poll, then parked on
    /// something un-instrumented (`std::future::pending()`, a harness's
    /// shutdown): the Mutex outlives the lock call, but the task is not
    /// pending on it. The same task still waiting for the lock is stuck.
    #[test]
    fn parked_after_a_lock_it_took_is_not_stuck_on_the_lock() {
        let stuck = |acquired: bool| {
            let mut s = Scenario::new();
            let m = s.mutex(0);
            let t = s.spawn(TaskOpts::named("harness"), 0);
            s.begin_poll(t, 1000);
            if acquired {
                s.lock_and_release(t, m, 1100);
            } else {
                s.lock(t, m, false, 1100);
            }
            s.end_poll(t, 1400);
            s.waker(t, awaitscope_wire::WakeOp::Clone, 1250);
            s.tick(60 * SEC);
            s.model()
                .findings()
                .of_kind(FindingKind::Stuck)
                .map(|f| f.message.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(stuck(true), Vec::<String>::new());
        let waiting = stuck(false);
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].contains("Mutex::lock"), "{waiting:?}");
    }

    /// Two tasks each waiting for the lock the other holds: each is stuck,
    /// and says whom it is deadlocked with; a task stuck on a lock held by
    /// a task that waits on nothing of it says no such thing.
    #[test]
    fn a_stuck_task_of_a_deadlock_names_the_others() {
        let mut s = Scenario::new();
        let (a, b, c) = (s.mutex(0), s.mutex(0), s.mutex(0));
        let one = s.spawn(TaskOpts::named("one"), 0);
        let two = s.spawn(TaskOpts::named("two"), 0);
        let holder = s.spawn(TaskOpts::named("holder"), 0);
        let waiter = s.spawn(TaskOpts::named("waiter"), 0);
        for (t, m, at) in [(one, a, 10), (two, b, 20), (holder, c, 30)] {
            s.begin_poll(t, at);
            s.lock(t, m, true, at + 1);
            s.end_poll(t, at + 2);
        }
        for (t, m, at) in [(one, b, 40), (two, a, 50), (waiter, c, 60)] {
            s.begin_poll(t, at);
            s.lock(t, m, false, at + 1);
            s.end_poll(t, at + 2);
            s.waker(t, awaitscope_wire::WakeOp::Clone, at + 1);
        }
        s.tick(5 * SEC);
        s.tick(30 * SEC);
        let model = s.model();
        let stuck: Vec<_> = model.findings().of_kind(FindingKind::Stuck).collect();
        assert_eq!(stuck.len(), 3, "{:?}", model.findings().list());
        let of = |name: &str| {
            stuck
                .iter()
                .find(|f| f.tasks.iter().any(|t| t.name.as_deref() == Some(name)))
                .unwrap_or_else(|| panic!("{name}: {stuck:?}"))
                .message
                .clone()
        };
        assert!(
            of("one").contains("; it is in a deadlock with task two#"),
            "{}",
            of("one")
        );
        assert!(
            of("two").contains("; it is in a deadlock with task one#"),
            "{}",
            of("two")
        );
        assert!(!of("waiter").contains("deadlock"), "{}", of("waiter"));
        assert_eq!(model.findings().of_kind(FindingKind::Deadlock).count(), 1);
    }

    /// The `stuck` findings (message, trace) of `s` once `wait` has passed.
    fn stuck_after_waiting(mut s: Scenario, wait: u64) -> Vec<(String, Vec<String>)> {
        s.tick(wait);
        s.model()
            .findings()
            .of_kind(FindingKind::Stuck)
            .map(|f| (f.message.clone(), f.trace.clone()))
            .collect()
    }

    /// A task waiting inside a span of its own (an outbound call, here
    /// with no resource under it) is `stuck` once it has waited longer
    /// than the span's `awaitscope.stuck_after`, and not before; the same
    /// wait in a span without the field is not, however long.
    #[test]
    fn a_span_that_sets_stuck_after_makes_a_wait_inside_it_stuck() {
        let run = |fields: &[(&str, Value)], wait: u64| {
            let mut s = Scenario::new();
            let t = s.spawn(TaskOpts::named("checkout"), 0);
            let call = s.user_span_with("call_billing", fields, 0);
            s.begin_poll(t, 1000);
            s.enter(call, 1100);
            s.exit(call, 1300);
            s.end_poll(t, 1400);
            s.waker(t, WakeOp::Clone, 1250);
            stuck_after_waiting(s, wait)
        };
        let two_s = [(names::STUCK_AFTER, Value::Str("2s".into()))];
        assert_eq!(run(&two_s, SEC), vec![], "under its stuck_after");
        let stuck = run(&two_s, 3 * SEC);
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert!(
            stuck[0]
                .0
                .contains("pending in call_billing for 3.00s (awaitscope.stuck_after = 2.00s on call_billing)"),
            "{}",
            stuck[0].0
        );
        assert!(
            stuck[0].1[0].starts_with("call_billing @ src/main.rs"),
            "{:?}",
            stuck[0].1
        );
        // A bare number is seconds.
        let five = [(names::STUCK_AFTER, Value::U64(5))];
        assert_eq!(run(&five, 4 * SEC), vec![]);
        assert_eq!(run(&five, 6 * SEC).len(), 1);
        // Without the field, or with a value that is not a duration: a
        // wait on the world outside, not judged.
        assert_eq!(run(&[], 60 * SEC), vec![]);
        let bad = [(names::STUCK_AFTER, Value::Str("soon".into()))];
        assert_eq!(run(&bad, 60 * SEC), vec![]);
    }

    /// The innermost span that sets `awaitscope.stuck_after` wins, over
    /// the spans around it and over the threshold for a lock: `never` on
    /// the inner span keeps a long lock wait inside it from being stuck,
    /// and a shorter value on it makes the lock wait stuck sooner.
    #[test]
    fn the_innermost_stuck_after_wins_over_the_threshold() {
        let run = |inner: &str, wait: u64| {
            let mut s = Scenario::new();
            let m = s.mutex(0);
            let t = s.spawn(TaskOpts::named("worker"), 0);
            let outer =
                s.user_span_with("job", &[(names::STUCK_AFTER, Value::Str("1s".into()))], 0);
            let inner = s.user_span_with(
                "reserve",
                &[(names::STUCK_AFTER, Value::Str(inner.into()))],
                0,
            );
            s.begin_poll(t, 1000);
            s.enter(outer, 1010);
            s.enter(inner, 1020);
            s.lock(t, m, false, 1100);
            s.exit(inner, 1200);
            s.exit(outer, 1210);
            s.end_poll(t, 1400);
            s.waker(t, WakeOp::Clone, 1250);
            let stuck = stuck_after_waiting(s, wait);
            stuck.into_iter().map(|(m, _)| m).collect::<Vec<_>>()
        };
        // The collector's threshold is 10 s: a lock wait of 60 s would be
        // stuck, but the inner span says never (the outer's 1 s too).
        assert_eq!(run("never", 60 * SEC), Vec::<String>::new());
        // 3s on the inner span: stuck at 4 s, well under the threshold.
        let stuck = run("3s", 4 * SEC);
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert!(
            stuck[0].contains("Mutex::lock for 4.00s (awaitscope.stuck_after = 3.00s on reserve)"),
            "{}",
            stuck[0]
        );
        assert_eq!(
            run("3s", 2 * SEC),
            Vec::<String>::new(),
            "the outer 1 s does not apply"
        );
    }

    #[test]
    fn parked_on_a_timer_is_not_stuck() {
        let mut s = Scenario::new();
        let timer = s.timer(0);
        let t = s.spawn(TaskOpts::named("sleeper"), 0);
        s.begin_poll(t, 1000);
        s.sleep(t, timer, 1100);
        s.end_poll(t, 1400);
        s.waker(t, awaitscope_wire::WakeOp::Clone, 1250);
        s.tick(60 * SEC);
        assert_eq!(s.model().findings().of_kind(FindingKind::Stuck).count(), 0);
    }

    #[test]
    fn progressing_or_recent_is_not_stuck() {
        let mut s = Scenario::new();
        let m = s.mutex(0);
        let t = s.spawn(TaskOpts::named("busy"), 0);
        for i in 0..20u64 {
            // A new lock attempt (new async op) each second: progress.
            s.begin_poll(t, i * SEC + 1);
            s.lock(t, m, false, i * SEC + 2);
            s.end_poll(t, i * SEC + 3);
            s.waker(t, awaitscope_wire::WakeOp::Clone, i * SEC + 4);
            s.lock_abandon(t, m);
        }
        s.tick(25 * SEC);
        assert_eq!(s.model().findings().of_kind(FindingKind::Stuck).count(), 0);
    }
}
