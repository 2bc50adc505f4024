//! Tests of the per-thread capture state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use awaitscope_wire::SpanClass;

use super::*;

fn node(id: u64) -> Arc<SpanNode> {
    node_of(id, SpanClass::User)
}

fn node_of(id: u64, class: SpanClass) -> Arc<SpanNode> {
    let meta = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        tracing::info_span!("cached").metadata().unwrap()
    });
    Arc::new(SpanNode {
        id,
        meta,
        callsite: 0,
        class,
        blocking: false,
        compact: false,
        parent: None,
        parent_id: 0,
        instance: 0,
        ctx_task: 0,
        ctx_task_node: None,
        ctx_span: 0,
        link: None,
        ts: 0,
        fields: Mutex::new(Vec::new()),
        last_tree_sig: AtomicU64::new(1),
        first_entered_in_poll: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        poll_cache: Default::default(),
        cached_in: Default::default(),
        closed_at: Default::default(),
        polls: Default::default(),
        store_refs: Default::default(),
    })
}

/// Drains the records pushed so far as (kind, span, task flag).
fn drained(consumer: &mut rtrb::Consumer<Raw>) -> Vec<(&'static str, u64, bool)> {
    let mut out = Vec::new();
    while let Ok(raw) = consumer.pop() {
        out.push(match raw {
            Raw::Enter { span, task, .. } => ("enter", span, task),
            Raw::Exit { span, task, .. } => ("exit", span, task),
            Raw::Poll { span, .. } => ("poll", span, true),
            Raw::TreeNode { span, .. } => ("tree", span, false),
            _ => ("other", 0, false),
        });
    }
    out
}

/// A thread whose ring reaches three quarters full wakes the exporter,
/// again every eighth of the ring while it stays that full, and not
/// below the mark once drained.
#[test]
fn a_ring_three_quarters_full_wakes_the_exporter() {
    let shared = Capture::new(64);
    let mut l = new_local(&shared);
    let mut consumer = shared
        .new_rings
        .lock()
        .unwrap()
        .pop()
        .expect("the thread's ring")
        .consumer;
    assert_eq!(l.producer.buffer().capacity(), 64);
    let wakes = || shared.on_demand_wakes.load(Ordering::Relaxed);
    let push = |l: &mut Local, n: usize| {
        for _ in 0..n {
            l.push_now(Raw::Wake {
                task: 1,
                by: 0,
                op: WakeOp::WakeByRef,
                ts: 0,
            });
        }
    };
    push(&mut l, 47);
    assert_eq!(wakes(), 0, "below the mark");
    push(&mut l, 1);
    assert_eq!(wakes(), 1, "at 48 of 64");
    push(&mut l, 7);
    assert_eq!(wakes(), 1, "not at every record");
    push(&mut l, 1);
    assert_eq!(wakes(), 2, "an eighth of the ring later, still full");
    while consumer.pop().is_ok() {}
    push(&mut l, 47);
    assert_eq!(wakes(), 2, "drained: below the mark again");
    push(&mut l, 1);
    assert_eq!(wakes(), 3);
}

/// Rings grow on overflow while the budget shared by all threads lasts
/// (at least doubling, or not at all); past it records are dropped and
/// counted, and a thread's exit gives its growth back.
#[test]
fn rings_grow_within_a_budget_shared_by_all_threads() {
    use crate::capture::INITIAL_RING;
    let max = 4 * INITIAL_RING;
    let shared = Capture::new(max);
    // Fills a thread's rings (nothing drains them) with `n` records.
    let fill = |l: &mut Local, n: usize| {
        for _ in 0..n {
            l.push_now(Raw::Wake {
                task: 1,
                by: 0,
                op: WakeOp::WakeByRef,
                ts: 0,
            });
        }
    };
    let mut a = new_local(&shared);
    // The first ring keeps its records (the exporter would drain it).
    fill(&mut a, INITIAL_RING + max + 10);
    assert_eq!(a.producer.buffer().capacity(), max);
    assert_eq!(a.grown, max - INITIAL_RING);
    assert_eq!(
        a.dropped.load(Ordering::Relaxed),
        10,
        "past its largest ring"
    );
    let mut b = new_local(&shared);
    fill(&mut b, INITIAL_RING + 1);
    assert_eq!(
        b.producer.buffer().capacity(),
        max,
        "the budget still had x4"
    );
    // Left: 2 * max - 2 * (max - INITIAL_RING) = 2 * INITIAL_RING, which is
    // at least double a first ring but less than the x4 step.
    let mut c = new_local(&shared);
    fill(&mut c, INITIAL_RING + 1);
    assert_eq!(c.producer.buffer().capacity(), 3 * INITIAL_RING);
    let mut d = new_local(&shared);
    fill(&mut d, INITIAL_RING + 5);
    assert_eq!(
        d.producer.buffer().capacity(),
        INITIAL_RING,
        "no budget left"
    );
    assert_eq!(d.dropped.load(Ordering::Relaxed), 5);
    drop(a);
    let mut e = new_local(&shared);
    fill(&mut e, INITIAL_RING + 1);
    assert_eq!(e.producer.buffer().capacity(), max, "a's growth came back");
}

/// A task polled inside another's poll whose span is exited after the
/// outer one (out of order): each poll still ends with its own task,
/// and the thread's state is empty afterwards.
#[test]
fn nested_polls_exited_out_of_order() {
    let shared = Capture::new(1024);
    let mut l = new_local(&shared);
    let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
    let (a, x, b) = (
        node_of(1, SpanClass::Task),
        node(2),
        node_of(3, SpanClass::Task),
    );
    l.enter_reg(&shared, 10, || Some(a.clone()));
    l.enter_reg(&shared, 20, || Some(x.clone()));
    l.enter_reg(&shared, 30, || Some(b.clone()));
    assert_eq!(l.current_task(), 3);
    // The outer task's span is exited first.
    assert!(l.exit(&shared, 10));
    assert_eq!(l.current_task(), 3, "the inner poll goes on");
    assert!(l.exit(&shared, 30));
    assert!(l.exit(&shared, 20));
    assert_eq!((l.frames.len(), l.polls.len(), l.task), (0, 0, 0));
    let records = drained(&mut consumer);
    let polls: Vec<_> = records.iter().filter(|r| r.2).map(|r| (r.0, r.1)).collect();
    assert_eq!(
        polls,
        [("enter", 1), ("enter", 3), ("exit", 1), ("exit", 3)],
        "{records:?}"
    );
    assert_eq!(a.polls.count.load(Ordering::Relaxed), 1);
    assert_eq!(b.polls.count.load(Ordering::Relaxed), 1);
    assert!(!a.polls.running.load(Ordering::Relaxed));
    // Nested polls reuse the stacks: again, in order this time.
    l.enter_reg(&shared, 10, || Some(a.clone()));
    l.enter_reg(&shared, 30, || Some(b.clone()));
    assert!(l.exit(&shared, 30));
    assert!(l.exit(&shared, 10));
    assert_eq!((l.frames.len(), l.polls.len(), l.task), (0, 0, 0));
    assert_eq!(a.polls.count.load(Ordering::Relaxed), 2);
}

/// A worker thread of a multi-thread runtime runs inside a blocking
/// task's poll (tokio starts each worker with `spawn_blocking`): that
/// poll is recorded as it starts, and the tasks polled inside it are
/// each one record, with their own await trees and poll caches.
#[test]
fn a_workers_polls_are_one_record_each_inside_its_blocking_task() {
    let shared = Capture::new(1024);
    let mut l = new_local(&shared);
    let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
    let mut worker = node_of(1, SpanClass::Task);
    Arc::get_mut(&mut worker).unwrap().blocking = true;
    let (a, x) = (node_of(2, SpanClass::Task), node(3));
    l.enter_reg(&shared, 10, || Some(worker.clone()));
    assert_eq!(l.current_task(), 1);
    assert_eq!(l.slot.read(), None, "its start is in the ring already");
    for _ in 0..2 {
        l.enter_reg(&shared, 20, || Some(a.clone()));
        assert_eq!(l.current_task(), 2);
        assert_eq!(l.slot.read().map(|(s, _)| s), Some(2), "published");
        l.enter_reg(&shared, 30, || Some(x.clone()));
        assert!(l.exit(&shared, 30));
        assert!(l.exit(&shared, 20));
        assert_eq!(l.slot.read(), None, "cleared");
        assert_eq!(l.current_task(), 1);
    }
    let worker_poll = l.polls.last().expect("the worker's poll goes on");
    assert_eq!(
        worker_poll.entered, 0,
        "the worker's poll cache is not used"
    );
    assert!(l.exit(&shared, 10));
    assert_eq!(
        drained(&mut consumer),
        [
            ("enter", 1, true),
            ("tree", 3, false),
            ("poll", 2, true),
            ("poll", 2, true),
            ("exit", 1, true)
        ],
        "the second poll's tree is unchanged"
    );
    assert_eq!(a.polls.count.load(Ordering::Relaxed), 2);
    // The task's own cache knows its span from its first poll on.
    assert!(a.poll_cache.acquire());
    // SAFETY: acquired just above.
    assert_eq!(unsafe { a.poll_cache.get(0, 30) }, Some(3));
    a.poll_cache.release();
}

/// A poll during which nothing is recorded is one record; another
/// task's wake during it keeps it one record
/// and goes first; the task's wake of itself splits it, in order.
#[test]
fn a_poll_is_one_record_unless_it_records_something_of_its_own() {
    let shared = Capture::new(1024);
    let mut l = new_local(&shared);
    let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
    let (a, b) = (node_of(1, SpanClass::Task), node_of(2, SpanClass::Task));
    let poll = |l: &mut Local, wake: Option<(u64, &Arc<SpanNode>)>| {
        l.enter_reg(&shared, 10, || Some(a.clone()));
        assert_eq!(l.slot.read().map(|(s, _)| s), Some(1), "published");
        if let Some((reg, n)) = wake {
            l.waker(&shared, reg, WakeOp::WakeByRef, || Some(n.clone()));
        }
        assert!(l.exit(&shared, 10));
        assert_eq!(l.slot.read(), None, "cleared");
    };
    poll(&mut l, None);
    assert_eq!(drained(&mut consumer), [("poll", 1, true)]);
    poll(&mut l, Some((20, &b)));
    assert_eq!(
        drained(&mut consumer),
        [("other", 0, false), ("poll", 1, true)],
        "b's wake, then a's whole poll"
    );
    poll(&mut l, Some((10, &a)));
    assert_eq!(
        drained(&mut consumer),
        [("enter", 1, true), ("other", 0, false), ("exit", 1, true)],
        "a's own wake inside its poll"
    );
}

/// A span remembered in a task's poll cache closes and its registry id
/// goes to a new span: the next poll that enters that id enters the new
/// span, not the closed one.
#[test]
fn poll_cache_forgets_a_closed_span() {
    let shared = Capture::new(1024);
    let mut l = new_local(&shared);
    let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
    let task = node_of(1, SpanClass::Task);
    let (x, y) = (node(2), node(3));
    let poll = |l: &mut Local, span: &Arc<SpanNode>| {
        l.enter_reg(&shared, 10, || Some(task.clone()));
        l.enter_reg(&shared, 20, || Some(span.clone()));
        assert!(l.exit(&shared, 20));
        assert!(l.exit(&shared, 10));
    };
    poll(&mut l, &x);
    poll(&mut l, &x);
    assert!(
        x.cached_in.get().is_some(),
        "the span is in the task's cache"
    );
    let trees = |c: &mut rtrb::Consumer<Raw>| -> Vec<u64> {
        drained(c)
            .into_iter()
            .filter(|r| r.0 == "tree")
            .map(|r| r.1)
            .collect()
    };
    assert_eq!(trees(&mut consumer), [2], "one tree, sent once");
    x.close();
    poll(&mut l, &y);
    assert_eq!(trees(&mut consumer), [3], "the new span's tree");
    poll(&mut l, &y);
    assert_eq!(trees(&mut consumer), Vec::<u64>::new(), "unchanged");
}

/// A span created or exited inside a poll is entered again without a
/// lookup (see `Local::recent`), but never under a registry id that a span
/// which closed since then used: the id names the new span.
#[test]
fn a_registry_id_reused_in_one_poll_names_the_new_span() {
    let shared = Capture::new(1024);
    let mut l = new_local(&shared);
    let mut consumer = shared.new_rings.lock().unwrap().pop().unwrap().consumer;
    let task = node_of(1, SpanClass::Task);
    let (old, new) = (node(2), node(3));
    let no_lookup = || -> Option<Arc<SpanNode>> { panic!("looked up") };
    l.enter_reg(&shared, 10, || Some(task.clone()));
    // Created here (as `Capture::new_span` does: the poll's recent span,
    // not cached), entered, exited, entered again to drop its future,
    // closed here.
    l.set_recent(20, old.id);
    for _ in 0..2 {
        l.enter_reg(&shared, 20, no_lookup);
        assert!(l.exit(&shared, 20));
    }
    old.close();
    l.forget(20);
    // A new span under the same registry id, in the same poll.
    l.enter_reg(&shared, 20, || Some(new.clone()));
    assert!(l.exit(&shared, 20));
    assert!(l.exit(&shared, 10));
    let tree: Vec<u64> = drained(&mut consumer)
        .into_iter()
        .filter(|r| r.0 == "tree")
        .map(|r| r.1)
        .collect();
    assert_eq!(tree, [2, 3], "the old span once, then the new one");
}

/// A span entered twice in one poll (polled, then entered again to drop
/// its future, as tracing's `Instrumented` does) stays out of its task's
/// poll cache: no later poll enters it. A span that a later poll enters
/// again joins it.
#[test]
fn poll_cache_takes_a_span_only_from_a_later_poll() {
    let shared = Capture::new(1024);
    let mut l = new_local(&shared);
    let task = node_of(1, SpanClass::Task);
    let (once, again) = (node(2), node(3));
    l.enter_reg(&shared, 10, || Some(task.clone()));
    for _ in 0..2 {
        l.enter_reg(&shared, 20, || Some(once.clone()));
        assert!(l.exit(&shared, 20));
    }
    assert!(l.exit(&shared, 10));
    assert!(
        once.cached_in.get().is_none(),
        "entered twice, in one poll only"
    );
    for _ in 0..2 {
        l.enter_reg(&shared, 10, || Some(task.clone()));
        l.enter_reg(&shared, 30, || Some(again.clone()));
        assert!(l.exit(&shared, 30));
        assert!(l.exit(&shared, 10));
    }
    assert!(
        again.cached_in.get().is_some(),
        "entered again by a later poll"
    );
}

#[test]
fn cache_grows_for_many_spans_in_turn() {
    let shared = Capture::new(16);
    let mut l = new_local(&shared);
    let nodes: Vec<_> = (1..=5000u64).map(node).collect();
    let mut missed = 0;
    for round in 0..8 {
        missed = 0;
        for n in &nodes {
            let id = l.span_id(n.id * 7919, || {
                missed += 1;
                Some(n.clone())
            });
            assert_eq!(id, Some(n.id), "round {round}");
        }
    }
    assert!(l.cache.len() > CACHE, "grew to {}", l.cache.len());
    assert!(missed < 5000 / 4, "misses in the last round: {missed}");
}

#[test]
fn cache_never_trusts_a_closed_span() {
    let shared = Capture::new(16);
    let mut l = new_local(&shared);
    let first = node(1);
    assert_eq!(l.span_id(42, || Some(first.clone())), Some(1));
    assert_eq!(
        l.span_id(42, || panic!("an open span is served from the cache")),
        Some(1)
    );
    // The span closes and the registry hands its id to another span.
    first.closed.store(true, Ordering::Release);
    assert_eq!(l.span_id(42, || Some(node(2))), Some(2));
    assert_eq!(l.span_id(42, || None), Some(2));
}

/// An exporter sleeping a whole idle tick is woken by the next poll to
/// start, once: it then watches that poll from its start (a poll that
/// blocks after a quiet spell is announced at 1 ms, not at the next tick).
#[test]
fn a_poll_after_a_quiet_spell_wakes_the_exporter() {
    let shared = Capture::new(1024);
    // This thread plays the exporter, about to sleep idle.
    shared.set_exporter();
    shared.sleep_idle();
    let worker = shared.clone();
    std::thread::spawn(move || {
        let mut l = new_local(&worker);
        let task = node_of(1, SpanClass::Task);
        for _ in 0..2 {
            l.enter_reg(&worker, 10, || Some(task.clone()));
            assert!(l.exit(&worker, 10));
        }
    })
    .join()
    .unwrap();
    assert!(
        !shared.idle_watch.0.load(Ordering::Relaxed),
        "the poll took the flag"
    );
    // The wake left this thread's unpark token: the park returns at once.
    let t = std::time::Instant::now();
    std::thread::park_timeout(std::time::Duration::from_secs(60));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "not woken"
    );
}

/// A task's stack is due at its eighth wake of itself, and again at each
/// count twice the last while none was taken (the stacks' rate refused
/// it); never once one was.
#[test]
fn a_self_wake_stack_is_due_at_eight_then_doubling_until_taken() {
    let n = std::sync::atomic::AtomicU32::new(0);
    let due: Vec<u32> = (1..=70).filter(|_| self_wake_stack_due(&n)).collect();
    assert_eq!(due, [8, 16, 32, 64]);
    let n = std::sync::atomic::AtomicU32::new(0);
    let mut first = None;
    for i in 1..=70 {
        if self_wake_stack_due(&n) {
            first.get_or_insert(i);
            n.fetch_or(SELF_WAKE_STACK_TAKEN, Ordering::Relaxed);
        }
    }
    assert_eq!(first, Some(8));
    assert!(!self_wake_stack_due(&n), "taken: never again");
}
