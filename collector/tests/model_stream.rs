//! Whole-stream behaviour of the model: retention and memory bounds,
//! reconnects, several processes, await trees and resources.

use awaitscope_collector::model::TaskState;
use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::{Config, Model, Report};
use awaitscope_wire::{CloseKind, SpanId, WakeOp};

const MS: u64 = 1_000_000;

#[test]
fn million_short_tasks_stay_bounded() {
    let mut model = Model::new(Config::default());
    let mut b = StreamBuilder::new(7, 0);
    b.hello("churn", None, false);
    b.thread(0);
    let opts = [TaskOpts::named("short"), TaskOpts::named("other")];
    let mut ts = 1;
    let mut peak = 0;
    for i in 0..1_000_000u64 {
        let t = b.spawn(&opts[(i % 2) as usize], None, ts);
        b.waker(t, WakeOp::WakeByRef, None, ts + 1);
        b.poll(t, ts + 2, ts + 5);
        b.finish_task(t, CloseKind::Completed, ts + 6);
        ts += 10;
        if b.pending_events() >= 4000 {
            for f in b.take_frames() {
                model.apply(&f);
            }
            let s = model.stats();
            peak = peak.max(s.live_tasks + s.retained_tasks);
        }
    }
    for f in b.take_frames() {
        model.apply(&f);
    }
    model.finish();
    let s = model.stats();
    assert_eq!(s.live_tasks, 0);
    assert!(s.retained_tasks <= 1000, "{s:?}");
    assert!(peak <= 1000 + 4000, "peak detailed tasks {peak}");
    assert_eq!(s.summary_groups, 2, "{s:?}");
    assert_eq!(s.summarised_tasks + s.retained_tasks as u64, 1_000_000);
    assert_eq!(s.spans, 0);
    let p = model.processes().next().unwrap();
    let polls: u64 = p.summary.values().map(|g| g.polls).sum::<u64>()
        + p.completed.iter().map(|t| t.polls).sum::<u64>();
    assert_eq!(polls, 1_000_000, "the drop pair is not a poll");
}

#[test]
fn reconnect_resend_is_idempotent() {
    let mut model = Model::default();
    let mut b = StreamBuilder::new(9, 5);
    b.hello("app", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("keeper"), None, 10);
    b.poll(t, 20, 30);
    for f in b.take_frames() {
        model.apply(&f);
    }
    // Reconnect: hello again, then callsites and live spans re-sent.
    b.hello("app", None, true);
    b.thread(0);
    let mut resent = b.take_frames();
    let mut b2 = StreamBuilder::new(9, 5);
    b2.thread(0);
    let again = b2.spawn(&TaskOpts::named("keeper"), None, 10);
    assert_eq!(again, t);
    let mut frames2 = b2.take_frames();
    resent.append(&mut frames2);
    for f in &resent {
        model.apply(f);
    }
    model.finish();
    let p = model.processes().next().unwrap();
    assert_eq!(p.hellos, 2);
    assert_eq!(p.tasks.len(), 1);
    assert_eq!(p.tasks[&t].polls, 1);
    assert_eq!(p.tasks[&t].name.as_deref(), Some("keeper"));
}

#[test]
fn processes_are_separate_and_report_lists_them() {
    let mut model = Model::default();
    for pid in [100, 200, 300] {
        let mut b = StreamBuilder::new(pid, pid as u64 * 1000);
        b.hello(&format!("p{pid}"), None, false);
        b.thread(0);
        let t = b.spawn(&TaskOpts::named("main"), None, 1);
        b.poll(t, 2, 3);
        for f in b.take_frames() {
            model.apply(&f);
        }
    }
    model.finish();
    let r = Report::from_model(&model);
    assert_eq!(r.processes.len(), 3);
    assert_eq!(r.tasks.len(), 3);
    assert_eq!(
        r.processes
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["p100", "p200", "p300"]
    );
}

#[test]
fn task_tree_times_await_tree_and_resources() {
    let mut model = Model::default();
    let mut b = StreamBuilder::new(1, 0);
    b.hello("app", None, false);
    b.thread(0);
    let m = b.resource("Mutex", "Sync", 20, 0);
    let parent = b.spawn(&TaskOpts::named("parent"), None, 0);
    b.enter(parent, 10 * MS);
    let child = b.spawn(&TaskOpts::named("child"), Some(parent), 11 * MS);
    b.lock(parent, m, true, 12 * MS);
    b.exit(parent, 13 * MS);
    // child: woken at spawn (11ms), polled at 20ms; waits on the mutex.
    let outer = b.user_span("outer", None, 19 * MS);
    b.enter(child, 20 * MS);
    b.enter(outer, 21 * MS);
    b.lock(child, m, false, 22 * MS);
    b.exit(outer, 23 * MS);
    b.exit(child, 25 * MS);
    b.waker(child, WakeOp::Clone, None, 22 * MS);
    b.waker(parent, WakeOp::Clone, None, 13 * MS);
    for f in b.take_frames() {
        model.apply(&f);
    }
    model.finish();
    let p = model.processes().next().unwrap();
    let c = &p.tasks[&child];
    assert_eq!(c.parent, Some(parent));
    assert_eq!(c.state, TaskState::Idle);
    assert_eq!(c.polls, 1);
    assert_eq!(c.busy_ns, 5 * MS);
    assert_eq!(c.scheduled_ns, 9 * MS);
    let r = Report::from_model(&model);
    let ct = r.tasks.iter().find(|t| t.id == child.0).unwrap();
    assert_eq!(ct.parent, Some(parent.0));
    assert_eq!(ct.await_tree.len(), 1);
    assert_eq!(ct.await_tree[0].name, "outer");
    assert_eq!(ct.await_tree[0].children[0].name, "Mutex");
    assert_eq!(ct.await_tree[0].children[0].children[0].name, "Mutex::lock");
    assert_eq!(ct.await_tree[0].children[0].children[0].kind, "async_op");
    let res = &r.processes[0].resources[0];
    assert_eq!(res.concrete_type, "Mutex");
    assert_eq!(res.holders, vec![parent.0]);
    assert_eq!(res.waiters, vec![child.0]);
    assert_eq!(res.state["locked"], serde_json::json!(true));
    let _ = SpanId(0);
}

fn tree_names(model: &Model, task: SpanId) -> Vec<(String, usize)> {
    let r = Report::from_model(model);
    let t = r.tasks.iter().find(|t| t.id == task.0).unwrap();
    fn walk(
        n: &[awaitscope_collector::report::AwaitNodeReport],
        d: usize,
        out: &mut Vec<(String, usize)>,
    ) {
        for x in n {
            out.push((x.name.clone(), d));
            walk(&x.children, d + 1, out);
        }
    }
    let mut out = Vec::new();
    walk(&t.await_tree, 0, &mut out);
    out
}

#[test]
fn poll_tree_persists_until_replaced_and_async_op_polls_are_transparent() {
    use awaitscope_wire::{Body, Event, Frame, ProcessKey, TreeNode};
    let mut model = Model::default();
    let mut b = StreamBuilder::new(1, 0);
    b.hello("app", None, false);
    b.thread(0);
    let m = b.resource("Mutex", "Sync", 20, 0);
    let t = b.spawn(&TaskOpts::named("t"), None, 0);
    let a = b.user_span("a", None, 0);
    let c = b.user_span("c", None, 0);
    // Poll 1: a > Mutex > Mutex::lock (> its poll span, transparent).
    b.enter(t, 10).enter(a, 11);
    b.lock(t, m, false, 12);
    b.exit(a, 13).exit(t, 14);
    for f in b.take_frames() {
        model.apply(&f);
    }
    let expect = vec![
        ("a".to_string(), 0),
        ("Mutex".to_string(), 1),
        ("Mutex::lock".to_string(), 2),
    ];
    assert_eq!(tree_names(&model, t), expect);
    // Poll 2 sends no PollTree: the same spans as before.
    let key = ProcessKey {
        pid: 1,
        start_unix_ns: 0,
    };
    let raw = |seq, events| Frame {
        process: key,
        seq,
        body: Body::Events(events),
    };
    model.apply(&raw(
        100,
        vec![
            Event::Enter { span: t, ts: 20 },
            Event::Exit { span: t, ts: 21 },
        ],
    ));
    assert_eq!(tree_names(&model, t), expect);
    // Poll 3: a new tree with siblings under `a` (join!), depth-coded.
    model.apply(&raw(
        101,
        vec![
            Event::Enter { span: t, ts: 30 },
            Event::PollTree {
                task: t,
                spans: vec![
                    TreeNode { span: a, depth: 0 },
                    TreeNode { span: c, depth: 1 },
                    TreeNode {
                        span: SpanId(999),
                        depth: 1,
                    },
                    TreeNode { span: m, depth: 2 },
                ],
            },
            Event::Exit { span: t, ts: 31 },
        ],
    ));
    // The unknown span 999 is transparent: Mutex hangs under `a`.
    assert_eq!(
        tree_names(&model, t),
        vec![
            ("a".to_string(), 0),
            ("c".to_string(), 1),
            ("Mutex".to_string(), 1)
        ]
    );
    // Poll 4: an empty tree.
    model.apply(&raw(
        102,
        vec![
            Event::Enter { span: t, ts: 40 },
            Event::PollTree {
                task: t,
                spans: vec![],
            },
            Event::Exit { span: t, ts: 41 },
        ],
    ));
    assert!(tree_names(&model, t).is_empty());
}

#[test]
fn spans_entered_as_events_inside_a_poll_build_the_tree_too() {
    use awaitscope_wire::{Body, Event, Frame};
    let mut model = Model::default();
    let mut b = StreamBuilder::new(1, 0);
    b.hello("app", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("t"), None, 0);
    let outer = b.user_span("outer", None, 0);
    let inner = b.user_span("inner", None, 0);
    for f in b.take_frames() {
        model.apply(&f);
    }
    let key = b.key();
    let ev = |span, enter: bool, ts| {
        if enter {
            Event::Enter { span, ts }
        } else {
            Event::Exit { span, ts }
        }
    };
    model.apply(&Frame {
        process: key,
        seq: 50,
        body: Body::Events(vec![
            ev(t, true, 10),
            ev(outer, true, 11),
            ev(inner, true, 12),
            ev(inner, false, 13),
            ev(outer, false, 14),
            ev(t, false, 15),
        ]),
    });
    assert_eq!(
        tree_names(&model, t),
        vec![("outer".to_string(), 0), ("inner".to_string(), 1)]
    );
}

#[test]
fn awaited_by_edges_from_join_handles() {
    let mut model = Model::default();
    let mut b = StreamBuilder::new(1, 0);
    b.hello("app", None, false);
    b.thread(0);
    let parent = b.spawn(&TaskOpts::named("parent"), None, 0);
    b.enter(parent, 1);
    let child = b.spawn(&TaskOpts::named("child"), Some(parent), 2);
    let join = b.join_span(child, 3);
    b.enter(join, 3).exit(join, 4);
    b.exit(parent, 5);
    for f in b.take_frames() {
        model.apply(&f);
    }
    let p = model.processes().next().unwrap();
    assert_eq!(p.awaited_by()[&child], vec![parent]);
    let r = Report::from_model(&model);
    let c = r.tasks.iter().find(|t| t.id == child.0).unwrap();
    assert_eq!(c.awaited_by, vec![parent.0]);
    let pt = r.tasks.iter().find(|t| t.id == parent.0).unwrap();
    assert_eq!(pt.await_tree[0].name, format!("join task.id={}", child.0));
}

#[test]
fn thread_runs_of_a_batch_are_merged_by_time() {
    use awaitscope_wire::{Body, Event, Frame};
    // Build the events of two threads, then send thread 1's later run
    // first, as the producer may when it drains its per-thread buffers.
    let mut b = StreamBuilder::new(1, 0);
    b.hello("app", None, false);
    let hello = b.take_frames();
    b.thread(2);
    let t = b.spawn(&TaskOpts::named("t"), None, 10);
    b.poll(t, 20, 30);
    let mut run2 = match b.take_frames().pop().unwrap().body {
        Body::Events(e) => e,
        _ => unreachable!(),
    };
    b.thread(1);
    b.waker(t, WakeOp::Wake, None, 40);
    b.poll(t, 50, 60);
    b.finish_task(t, CloseKind::Completed, 70);
    let mut run1 = match b.take_frames().pop().unwrap().body {
        Body::Events(e) => e,
        _ => unreachable!(),
    };
    // Callsites were registered in run 2; keep them at the batch start.
    let callsites: Vec<Event> = run2
        .iter()
        .filter(|e| matches!(e, Event::Callsite(_)))
        .cloned()
        .collect();
    run2.retain(|e| !matches!(e, Event::Callsite(_)));
    let mut batch = callsites;
    batch.append(&mut run1);
    batch.append(&mut run2);
    let mut model = Model::default();
    for f in &hello {
        model.apply(f);
    }
    model.apply(&Frame {
        process: b.key(),
        seq: 1,
        body: Body::Events(batch),
    });
    let p = model.processes().next().unwrap();
    assert!(p.tasks.is_empty(), "the task completed");
    let done = &p.completed[0];
    assert_eq!(done.polls, 2);
    assert_eq!(done.busy_ns, 20);
    assert_eq!(done.state, TaskState::Completed);
}

/// Version 2's `Poll` (a whole poll in one event) builds the same model as
/// its `Enter` and `PollEnd`, and `PollEnd` carries the live wakers.
#[test]
fn whole_poll_events_equal_enter_and_poll_end() {
    let build = |whole: bool| {
        let mut b = StreamBuilder::new(1, 0);
        b.hello("app", None, false);
        b.thread(0);
        let t = b.spawn(&TaskOpts::named("t"), None, 0);
        for i in 0..3u64 {
            let start = (10 + i * 10) * MS;
            let wakers = (i + 1) as u32;
            if whole {
                b.poll_whole(t, start, start + 2 * MS, wakers);
            } else {
                b.enter(t, start).poll_end(t, start + 2 * MS, wakers);
            }
            b.waker(t, WakeOp::Wake, None, start + 5 * MS);
        }
        let mut model = Model::default();
        for f in b.take_frames() {
            model.apply(&f);
        }
        model.finish();
        let p = model.processes().next().unwrap();
        let task = &p.tasks[&t];
        (
            task.polls,
            task.busy_ns,
            task.scheduled_ns,
            task.wakes,
            task.wakers_alive,
        )
    };
    let whole = build(true);
    assert_eq!(whole, build(false));
    assert_eq!(whole.0, 3);
    assert_eq!(whole.1, 6 * MS);
    // Three wakers alive at the last poll's end, one consumed by the wake.
    assert_eq!(whole.4, 2);
}

/// A producer that reconnects to the same collector: a task woken before
/// the connection was lost was polled meanwhile (frames the collector never
/// got); its next poll seen is not the end of a wait since that wake.
#[test]
fn a_wake_before_a_reconnect_starts_no_wait() {
    let mut b = StreamBuilder::new(7, 1_000);
    b.hello("server", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("http-server"), None, 0);
    b.poll(t, MS, 2 * MS);
    b.waker(t, WakeOp::Wake, None, 10 * MS);
    let mut m = Model::default();
    for f in b.take_frames() {
        m.apply(&f);
    }
    // Reconnected 3 s later: the handshake sends the task again, without a
    // thread (state, not events), then the polls go on.
    b.hello("server", None, true);
    let mut re = StreamBuilder::new(7, 1_000);
    re.spawn(&TaskOpts::named("http-server"), None, 0);
    for f in b.take_frames().into_iter().chain(re.take_frames()) {
        m.apply(&f);
    }
    b.thread(0);
    b.poll(t, 3_000 * MS, 3_001 * MS);
    b.poll(t, 3_100 * MS, 3_101 * MS);
    for f in b.take_frames() {
        m.apply(&f);
    }
    m.finish();
    let r = Report::from_model(&m);
    assert!(
        !r.has_finding(&[awaitscope_collector::FindingKind::Starvation]),
        "{:#?}",
        r.findings
    );
    assert_eq!(r.tasks[0].polls, 3, "{:?}", r.tasks[0]);
}

/// What a producer sends when its exporter was held up (a stalled
/// collector) and then drains its threads one after the other: thread 0's
/// backlog of 1.5 s first, over several frames, then thread 1's, where
/// the task woken at 10 ms was polled at 11 ms and all along after. Fed
/// frame by frame (and as one batch), the model reports no starvation or
/// never_yielded: the poll that ends each wait had not arrived yet.
fn skewed_backlog(
    b: &mut StreamBuilder,
    real_starvation: bool,
) -> Vec<Vec<awaitscope_wire::Frame>> {
    b.hello("server", None, false);
    b.thread(0);
    let ticker = b.spawn(&TaskOpts::named("ticker"), None, 0);
    b.thread(1);
    let server = b.spawn(&TaskOpts::named("http-server"), None, 0);
    b.poll(server, MS, 2 * MS);
    let young = b.spawn(&TaskOpts::named("young"), None, 3 * MS);
    // Its first poll starts here; its end comes with thread 1's backlog.
    b.enter(young, 4 * MS);
    let start = b.take_frames();
    // Thread 0's backlog: it wakes the server every 10 ms (as a timer
    // would) and runs the ticker, up to 1.5 s; a frame per 100 ms.
    let mut backlog = Vec::new();
    b.thread(0);
    for i in 1..150u64 {
        let ts = i * 10 * MS;
        b.waker(server, WakeOp::WakeByRef, None, ts);
        b.poll(ticker, ts + 100_000, ts + 200_000);
        if i % 10 == 0 {
            backlog.extend(b.take_frames());
            b.thread(0);
        }
    }
    backlog.extend(b.take_frames());
    // Thread 1's: the server polled a millisecond after each wake; the
    // young task's first poll starts and ends there too.
    b.thread(1);
    if real_starvation {
        // A poll that really holds thread 1 for the whole time.
        b.exit(young, 1_495 * MS);
    } else {
        b.exit(young, 5 * MS);
    }
    for i in 1..150u64 {
        let ts = i * 10 * MS + MS;
        if !real_starvation {
            b.poll(server, ts, ts + 100_000);
        }
    }
    b.poll(server, 1_496 * MS, 1_497 * MS);
    let rest = b.take_frames();
    vec![start, backlog, rest]
}

#[test]
fn a_backlog_drained_thread_by_thread_invents_no_wait() {
    use awaitscope_collector::FindingKind;
    let stalls = [FindingKind::Starvation, FindingKind::NeverYielded];
    // Frame by frame.
    let mut b = StreamBuilder::new(9, 1_000);
    let mut m = Model::default();
    for f in skewed_backlog(&mut b, false).into_iter().flatten() {
        m.apply(&f);
    }
    m.finish();
    let r = Report::from_model(&m);
    assert!(!r.has_finding(&stalls), "{:#?}", r.findings);
    // The same events as one batch (runs out of time order within it).
    let mut b = StreamBuilder::new(9, 1_000);
    let frames: Vec<_> = skewed_backlog(&mut b, false)
        .into_iter()
        .flatten()
        .collect();
    let mut events = Vec::new();
    for f in &frames[1..] {
        if let awaitscope_wire::Body::Events(e) = &f.body {
            events.extend(e.iter().cloned());
        }
    }
    let mut batch = frames[1].clone();
    batch.body = awaitscope_wire::Body::Events(events);
    let mut m = Model::default();
    m.apply(&frames[0]);
    m.apply(&batch);
    m.finish();
    let r = Report::from_model(&m);
    assert!(!r.has_finding(&stalls), "{:#?}", r.findings);

    // A thread really held by a poll: the wait is real and still found.
    let mut b = StreamBuilder::new(9, 1_000);
    let mut m = Model::default();
    for f in skewed_backlog(&mut b, true).into_iter().flatten() {
        m.apply(&f);
    }
    m.finish();
    let r = Report::from_model(&m);
    assert!(
        r.has_finding(&[FindingKind::Starvation]),
        "{:#?}",
        r.findings
    );
}

/// Events about a span never created are counted per process; events
/// about a span seen closed (a late wake of a finished task) are not.
#[test]
fn events_about_unknown_spans_are_counted() {
    let mut b = StreamBuilder::new(11, 1_000);
    b.hello("p", None, false);
    b.thread(0);
    let done = b.spawn(&TaskOpts::named("done"), None, 0);
    b.poll(done, MS, 2 * MS);
    b.finish_task(done, CloseKind::Completed, 3 * MS);
    b.waker(done, WakeOp::Wake, None, 4 * MS);
    // Never created: a wake, and a poll (its enter and exit).
    b.waker(SpanId(900), WakeOp::Wake, None, 5 * MS);
    b.poll(SpanId(901), 6 * MS, 7 * MS);
    let mut m = Model::default();
    for f in b.take_frames() {
        m.apply(&f);
    }
    let r = Report::from_model(&m);
    assert_eq!(r.processes[0].unknown_span_events, 3);
    assert!(
        r.summary_text()
            .contains("3 event(s) of pid 11 about spans never seen created"),
        "{}",
        r.summary_text()
    );
}

/// A whole poll (`Poll`) and a close of spans never created are counted
/// too, each once; those of a task or span the model knows, or saw end,
/// are not.
#[test]
fn whole_polls_and_closes_of_unknown_spans_are_counted() {
    let mut b = StreamBuilder::new(12, 1_000);
    b.hello("p", None, false);
    b.thread(0);
    let done = b.spawn(&TaskOpts::named("done"), None, 0);
    let live = b.spawn(&TaskOpts::named("live"), None, 0);
    let span = b.user_span("work", None, 0);
    b.poll_whole(done, MS, 2 * MS, 1);
    b.poll_whole(live, MS, 2 * MS, 1);
    b.finish_task(done, CloseKind::Completed, 3 * MS);
    b.close(span, CloseKind::Span, 3 * MS);
    // Known, or seen ended: not counted.
    b.poll_whole(live, 4 * MS, 5 * MS, 1);
    b.poll_whole(done, 4 * MS, 5 * MS, 0);
    b.close(span, CloseKind::Span, 5 * MS);
    // Never created: a whole poll, and the close of a span.
    b.poll_whole(SpanId(902), 6 * MS, 7 * MS, 0);
    b.close(SpanId(903), CloseKind::Span, 8 * MS);
    let mut m = Model::default();
    for f in b.take_frames() {
        m.apply(&f);
    }
    let r = Report::from_model(&m);
    assert_eq!(r.processes[0].unknown_span_events, 2);
    let live = r.tasks.iter().find(|t| t.id == live.0).expect("live task");
    assert_eq!(live.polls, 2, "{live:?}");
}

/// A first poll that really runs on, reported stalled by the producer's
/// watchdog, is found running while another thread's events go on: the
/// stalled thread's silence does not hold the judgement back.
#[test]
fn a_stalled_first_poll_is_still_found_while_other_threads_go_on() {
    use awaitscope_collector::testing::stall;
    use awaitscope_collector::FindingKind;
    let mut b = StreamBuilder::new(9, 1_000);
    b.hello("server", None, false);
    b.thread(0);
    let ticker = b.spawn(&TaskOpts::named("ticker"), None, 0);
    b.thread(1);
    let spin = b.spawn(&TaskOpts::named("spin"), None, MS);
    b.enter(spin, 2 * MS);
    b.stall(stall(spin, 2 * MS, 102 * MS, false));
    let mut m = Model::default();
    for f in b.take_frames() {
        m.apply(&f);
    }
    b.thread(0);
    for i in 1..300u64 {
        b.poll(ticker, i * 10 * MS, i * 10 * MS + 100_000);
        if i % 10 == 0 {
            for f in b.take_frames() {
                m.apply(&f);
            }
            b.thread(0);
        }
    }
    // Not the end of the recording: found by a scan on the way.
    let r = Report::from_model(&m);
    assert!(
        r.has_finding(&[FindingKind::NeverYielded]),
        "{:#?}",
        r.findings
    );
}

/// An error whose trace goes on in a process not seen yet waits for it by
/// the finding, not by its place in the list: a finding before it taken
/// back in the meantime (a `long_poll` found `descheduled`, which moves
/// the findings after it up) leaves the wait on the error, which is joined
/// when the sender's hand-over arrives.
#[test]
fn a_join_waits_for_its_finding_when_findings_before_it_are_taken_back() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const IDS: ([u8; 16], [u8; 8]) = (
        [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ],
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
    );
    let mut m = Model::default();
    let mut c = StreamBuilder::new(200, 2_000);
    c.hello("queue_worker", None, false);
    c.thread(0);
    let job = c.spawn(&TaskOpts::named("job"), None, 0);
    c.waker(job, WakeOp::Clone, None, 1);
    // A 30ms poll committed before any stall: an open long poll, first in
    // the list.
    c.poll(job, MS, 31 * MS);
    c.poll(job, 40 * MS, 41 * MS);
    // Then an error of another task whose trace goes on in the producer,
    // not seen yet.
    let mail = c.spawn(&TaskOpts::named("mail"), None, 45 * MS);
    let s = c.user_span("send_welcome_email", None, 50 * MS);
    c.enter(mail, 50 * MS);
    c.error_traced(
        Some(mail),
        Some(s),
        "welcome email failed",
        &[
            "0: queue_worker::send_welcome_email at src/worker.rs:57 (task 2 \"mail\")",
            &format!("-- handed over through a queue from traceparent {TP} --"),
        ],
        51 * MS,
    );
    c.exit(mail, 52 * MS);
    c.flush();
    for f in c.take_frames() {
        m.apply(&f);
    }
    let kinds = |m: &Model| -> Vec<&str> {
        m.findings()
            .list()
            .iter()
            .map(|f| f.kind.as_str())
            .collect()
    };
    assert_eq!(kinds(&m), ["long_poll", "error"]);
    // The long poll's statistics: it mostly waited for a CPU.
    let mut st = awaitscope_collector::testing::stall(job, MS, 31 * MS + 1, true);
    st.sched = Some(awaitscope_wire::Sched {
        window_ns: 30 * MS,
        on_cpu_ns: 2 * MS,
        kernel_ns: 0,
        waiting_ns: 28 * MS,
    });
    c.stall(st);
    c.flush();
    for f in c.take_frames() {
        m.apply(&f);
    }
    assert_eq!(kinds(&m), ["error", "descheduled"]);
    // The sender arrives.
    let mut p = StreamBuilder::new(100, 1_000);
    p.hello("queue_api", None, false);
    p.thread(0);
    let t = p.spawn(&TaskOpts::named("handle_signup"), None, 0);
    let req = p.user_span("handle_signup", None, MS);
    p.enter(t, MS);
    p.handover(
        req,
        t,
        IDS,
        &["0: queue_api::handle_signup at src/api.rs:53 (task 1 \"handle_signup\")"],
        2 * MS,
    );
    p.exit(t, 3 * MS);
    p.flush();
    for f in p.take_frames() {
        m.apply(&f);
    }
    let error = &m.findings().list()[0];
    assert!(
        error
            .trace
            .iter()
            .any(|l| l.starts_with("-- handed over through a queue from process queue_api")),
        "{:?}",
        error.trace
    );
    let d = &m.findings().list()[1];
    assert!(
        !d.trace.iter().any(|l| l.contains("queue_api")),
        "{:?}",
        d.trace
    );
}

/// A wait's stack names an async op whose parents make a cycle (a hostile
/// or broken stream): the model walks a bounded number of them, keeps the
/// line, and goes on.
#[test]
fn a_wait_on_spans_whose_parents_make_a_cycle_ends() {
    use awaitscope_wire::{Event, FrameOrigin, NativeFrame, NativeStack, SpanNew, WaitStack};
    let mut b = StreamBuilder::new(7, 1);
    b.hello("cyclic", None, false);
    let task = b.spawn(&TaskOpts::named("t"), None, 1);
    let mutex = b.resource("Mutex", "Sync", 3, 1);
    b.enter(task, 2);
    // Registers the async op callsites (3: async op).
    b.lock(task, mutex, false, 3);
    b.exit(task, 4);
    for (id, parent) in [(9000, 9001), (9001, 9000)] {
        b.push(Event::SpanNew(Box::new(SpanNew {
            id: SpanId(id),
            callsite: 3,
            parent: Some(SpanId(parent)),
            ctx_task: Some(task),
            ctx_span: None,
            ts: 5,
            fields: vec![],
        })));
    }
    b.push(Event::WaitStack(Box::new(WaitStack {
        span: SpanId(9000),
        stack: NativeStack {
            task,
            start: 6,
            ts: 6,
            modules: vec![],
            frames: vec![],
        },
        at: Some(NativeFrame {
            function: "app::wait".into(),
            file: Some("src/main.rs".into()),
            line: Some(12),
            origin: FrameOrigin::User,
        }),
    })));
    b.flush();
    let frames = b.take_frames();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut m = Model::new(Config::default());
        for f in &frames {
            m.apply(f);
        }
        let _ = tx.send(m.processes().next().map(|p| p.wait_lines.len()));
    });
    let kept = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the wait was applied");
    assert_eq!(kept, Some(2));
}
