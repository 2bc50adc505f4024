//! Viewers of a running collector (`awaitscope --connect ADDR`): a late
//! viewer rebuilds the server's state and then follows it; a slow viewer
//! never slows ingest and is told what it missed; tokens apply to viewers;
//! bad viewers are refused without affecting producers.

mod live;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use awaitscope_collector::config::{Config, Retention, MS};
use awaitscope_collector::ingest::server::ServerConfig;
use awaitscope_collector::ingest::viewer::{
    self, Client, ClientError, Control, Message, VIEWER_MAGIC, VIEWER_VERSION,
};
use awaitscope_collector::model::TaskState;
use awaitscope_collector::testing::{native_frame, stall, Scenario, StreamBuilder, TaskOpts};
use awaitscope_collector::{Finding, FindingKind, Model, Report};
use awaitscope_wire::{
    CloseKind, Frame, FrameOrigin, Level, ProcessKey, Sched, SpanId, StackState, Stall, WakeOp,
};
use live::{start, wait_until, PATIENCE};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn test_config() -> ServerConfig {
    live::test_config(Duration::from_secs(5))
}

/// A viewer and its model (blocking: run it on a blocking thread).
struct View {
    client: Client,
    model: Model,
    synced: bool,
    told_drops: u64,
}

impl View {
    fn connect(addr: SocketAddr, token: Option<&str>) -> Result<View, ClientError> {
        Client::connect(&addr.to_string(), token, PATIENCE).map(View::new)
    }

    fn new(client: Client) -> View {
        View {
            client,
            model: Model::default(),
            synced: false,
            told_drops: 0,
        }
    }

    /// Applies what arrives until `cond` holds of the model.
    fn until(&mut self, what: &str, cond: impl Fn(&View) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut msgs = Vec::new();
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "viewer timed out waiting for {what}"
            );
            self.client
                .read(&mut msgs, Duration::from_millis(100))
                .unwrap_or_else(|e| panic!("viewer waiting for {what}: {e}"));
            for m in msgs.drain(..) {
                match &m {
                    Message::Control(Control::Synced) => self.synced = true,
                    Message::Control(Control::Dropped { events, .. }) => self.told_drops += events,
                    _ => {}
                }
                viewer::apply(&mut self.model, &m, 0);
            }
        }
    }
}

fn tasks_named(m: &Model, pid: u32, prefix: &str) -> usize {
    m.processes()
        .filter(|p| p.key.pid == pid)
        .flat_map(|p| p.tasks.values())
        .filter(|t| t.name.as_deref().is_some_and(|n| n.starts_with(prefix)))
        .count()
}

/// Everything about a live task that a rebuild must carry.
fn task_view(m: &Model, key: ProcessKey) -> Vec<String> {
    let p = m.process(&key).expect("process");
    let mut tasks: Vec<_> = p.tasks.values().collect();
    tasks.sort_by_key(|t| t.id);
    tasks
        .iter()
        .map(|t| {
            let tree: Vec<_> = t
                .await_tree
                .nodes
                .iter()
                .map(|n| (n.span.0, n.parent))
                .collect();
            format!(
                "{}#{} {:?} parent={:?} loc={:?} state={:?} tree={tree:?} wakers={} leaf={:?} last_end={:?}",
                t.name.as_deref().unwrap_or(""),
                t.id.0,
                t.kind,
                t.parent,
                t.location,
                t.state,
                t.wakers_alive,
                t.leaf.map(|l| l.0),
                t.last_poll_end,
            )
        })
        .collect()
}

fn finding_set(m: &Model) -> BTreeSet<(String, Vec<u64>)> {
    m.findings()
        .list()
        .iter()
        .map(|f| {
            (
                f.kind.as_str().to_string(),
                f.tasks.iter().map(|t| t.id).collect(),
            )
        })
        .collect()
}

/// The rebuild alone: a model fed only the rebuild of another has the same
/// live tasks in the same states, with the same await trees and clock, and
/// its detectors find the same, as often (no starvation read into the late
/// join, no deadlock counted twice).
#[test]
fn rebuild_reproduces_live_state_without_false_findings() {
    let mut s = Scenario::new();
    let key = s.key();
    let timer = s.timer(5);
    // Parked on a user span inside a sleep, with a live waker: fine.
    let parked = s.spawn(TaskOpts::named("parked"), 10);
    let span = s.user_span("waiting_for_reply", 11);
    s.begin_poll(parked, 20 * MS);
    s.enter(span, 20 * MS + 1);
    s.sleep(parked, timer, 20 * MS + 2);
    s.exit(span, 20 * MS + 3);
    s.waker(parked, WakeOp::Clone, 20 * MS + 3);
    s.end_poll(parked, 21 * MS);
    // Never polled yet.
    let fresh = s.spawn(TaskOpts::named("fresh"), 30 * MS);
    // Woken after its poll, waiting to be polled again.
    let woken = s.spawn(TaskOpts::named("woken"), 40 * MS);
    s.poll(woken, 41 * MS, 42 * MS);
    s.wake(woken, None, 43 * MS);
    // Being polled now.
    let running = s.spawn(TaskOpts::named("running"), 50 * MS);
    s.poll(running, 51 * MS, 52 * MS);
    s.waker(running, WakeOp::Clone, 52 * MS);
    s.wake(running, None, 53 * MS);
    s.begin_poll(running, 60 * MS);
    // Pending with no waker: a lost waker, for both.
    let lost = s.spawn(TaskOpts::named("lost"), 70 * MS);
    s.poll(lost, 71 * MS, 72 * MS);
    // Completed: retained in detail, and sent as such.
    let done = s.spawn(TaskOpts::named("done"), 80 * MS);
    s.poll(done, 81 * MS, 82 * MS);
    s.complete(done, 83 * MS);
    // Two tasks taking two mutexes in opposite order: a deadlock, found
    // before the viewer joins, and continued (not counted again) by the
    // viewer's detectors, which see the lock holders too.
    let (ma, mb) = (s.mutex(1), s.mutex(1));
    let (one, two) = (
        s.spawn(TaskOpts::named("one"), 2),
        s.spawn(TaskOpts::named("two"), 2),
    );
    s.begin_poll(one, 3);
    s.lock(one, ma, true, 4);
    s.end_poll(one, 5);
    s.begin_poll(two, 6);
    s.lock(two, mb, true, 7);
    s.end_poll(two, 8);
    s.wake(one, None, 9);
    s.begin_poll(one, 10);
    s.lock(one, mb, false, 11);
    s.end_poll(one, 12);
    s.waker(one, WakeOp::Clone, 11);
    s.wake(two, None, 13);
    s.begin_poll(two, 14);
    s.lock(two, ma, false, 15);
    s.end_poll(two, 16);
    s.waker(two, WakeOp::Clone, 15);
    s.tick(90 * MS);
    s.tick(300 * MS);
    s.error(lost, None, "invoice template missing", 73 * MS);
    let _ = fresh;

    let server = s.model();
    let mut bytes = Vec::new();
    viewer::rebuild(server, &mut bytes);
    let mut late = Model::default();
    let mut pos = 0;
    let mut synced = false;
    while let Some((m, used)) = viewer::decode_message(&bytes[pos..], pos as u64).unwrap() {
        pos += used;
        synced |= m == Message::Control(Control::Synced);
        viewer::apply(&mut late, &m, 0);
    }
    assert_eq!(pos, bytes.len());
    assert!(synced, "the rebuild ends with Synced");

    assert_eq!(task_view(&late, key), task_view(server, key));
    let (sp, lp) = (server.process(&key).unwrap(), late.process(&key).unwrap());
    assert_eq!(lp.now, sp.now, "the clock is re-sent");
    assert_eq!(lp.name(), "app");
    assert_eq!(lp.spans.len(), sp.spans.len());
    assert_eq!(lp.resources.len(), sp.resources.len());
    assert_eq!(
        lp.threads.get(&0).and_then(|t| t.name.clone()),
        sp.threads.get(&0).and_then(|t| t.name.clone())
    );
    assert!(!lp.tasks.contains_key(&done), "not live");
    let completed = |p: &awaitscope_collector::model::Process| -> Vec<_> {
        p.completed
            .iter()
            .map(|t| (t.id, t.name.clone(), t.state, t.closed))
            .collect()
    };
    assert_eq!(completed(lp), completed(sp));
    assert_eq!(completed(lp).len(), 1);
    assert_eq!(completed(lp)[0].2, TaskState::Completed);
    let t = lp.task(running).unwrap();
    assert_eq!((t.state, t.poll_start), (TaskState::Running, Some(60 * MS)));
    assert_eq!(lp.task(woken).unwrap().state, TaskState::Scheduled);
    let tree = &lp.task(parked).unwrap().await_tree.nodes;
    assert!(tree.iter().any(|n| n.span == span), "{tree:?}");

    // Both scan at the same times: the same findings.
    for t in [400 * MS, 20_000 * MS] {
        let wall = key.start_unix_ns + t;
        s.model_mut().scan_wall(wall);
        late.scan_wall(wall);
    }
    let server = s.model();
    assert_eq!(finding_set(&late), finding_set(server));
    assert!(
        finding_set(&late)
            .iter()
            .any(|(k, t)| k == "lost_waker" && t == &vec![lost.0]),
        "{:?}",
        finding_set(&late)
    );
    assert!(
        finding_set(&late)
            .iter()
            .all(|(_, t)| !t.contains(&parked.0)),
        "the parked task is fine"
    );
    assert!(
        finding_set(&late)
            .iter()
            .any(|(k, t)| k == "error" && t == &vec![lost.0]),
        "history is re-sent as findings"
    );
    assert!(
        finding_set(&late).iter().any(|(k, _)| k == "deadlock"),
        "{:?}",
        finding_set(&late)
    );
    // Findings the late model made itself merged with the re-sent ones.
    let counts = |m: &Model| -> Vec<(String, u64)> {
        let mut c: Vec<_> = m
            .findings()
            .list()
            .iter()
            .map(|f| (f.kind.as_str().to_string(), f.count))
            .collect();
        c.sort();
        c
    };
    assert_eq!(counts(&late), counts(server));
}

/// Applies a whole rebuild (as a viewer does) to an empty model.
fn late_model(server: &Model) -> Model {
    let mut bytes = Vec::new();
    viewer::rebuild(server, &mut bytes);
    let mut late = Model::new(server.config.clone());
    let mut pos = 0;
    while let Some((m, used)) = viewer::decode_message(&bytes[pos..], pos as u64).unwrap() {
        pos += used;
        viewer::apply(&mut late, &m, 0);
    }
    assert_eq!(pos, bytes.len());
    late
}

/// What the views show of a model: the JSON report (processes with their
/// counters, summaries and resources; live and retained tasks with polls,
/// times, histograms, wakes, await trees and logs; findings), and the
/// histograms, leaves, holders and counters the report does not carry.
fn shown(m: &Model) -> (serde_json::Value, Vec<String>) {
    let report = serde_json::to_value(Report::from_model(m)).unwrap();
    let mut more = Vec::new();
    for p in m.processes() {
        let now = p.now;
        more.push(format!(
            "process {:?} hellos={} dropped={:?} collector_dropped={} threads={:?}",
            p.key,
            p.hellos,
            p.dropped,
            p.collector_dropped,
            {
                let mut t: Vec<_> = p
                    .threads
                    .iter()
                    .map(|(id, t)| (*id, t.name.clone()))
                    .collect();
                t.sort();
                t
            }
        ));
        let mut tasks: Vec<_> = p.tasks.values().chain(p.completed.iter()).collect();
        tasks.sort_by_key(|t| t.id);
        for t in tasks {
            let h = t.histograms();
            let (poll, sched) = match &h {
                Some(h) => (
                    h.poll_us
                        .iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect(),
                    h.scheduled_us
                        .iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect(),
                ),
                None => (Vec::new(), Vec::new()),
            };
            more.push(format!(
                "task {} polls={} busy={} sched={} idle={} max={} poll_us={poll:?} sched_us={sched:?} \
                 leaf={:?} woken_by={:?} pending={:?} running={:?}",
                t.id.0,
                t.polls_view(),
                t.busy_view(now),
                t.scheduled_view(now),
                t.idle_view(now),
                t.max_poll_ns,
                t.leaf,
                t.woken_by,
                t.pending_poll,
                t.poll_start,
            ));
        }
        let mut res: Vec<_> = p.resources.values().collect();
        res.sort_by_key(|r| r.id);
        for r in res {
            more.push(format!(
                "resource {} holders={:?} state={:?}",
                r.id.0, r.holders, r.state
            ));
        }
    }
    (report, more)
}

/// A realistic stream in two halves, around a viewer's join: workers that
/// poll, sleep and complete (more than retained, so some are summarised),
/// a long poll, a mutex held and waited on, a deadlock, a lost waker,
/// errors, a panic, a task in the middle of a poll at the join; then more
/// polls of the same tasks, an unlock, completions and the goodbye.
fn realistic_stream() -> (Vec<Frame>, Vec<Frame>, u64) {
    let mut b = StreamBuilder::new(4, 4_000);
    b.hello("shop", None, false);
    b.thread(0);
    let timer = b.resource("Sleep", "timer", 3, 1);
    let mut workers = Vec::new();
    for i in 0..12u64 {
        let t = b.spawn(&TaskOpts::named(&format!("worker-{i}")), None, 10 + i);
        workers.push(t);
    }
    let mut ts = MS;
    for round in 0..6u64 {
        for (i, &t) in workers.iter().enumerate() {
            let i = i as u64;
            if round > 0 {
                b.waker(t, WakeOp::Wake, None, ts);
                ts += 50_000 * (i + 1);
            }
            b.enter(t, ts);
            b.enter(timer, ts + 10);
            b.exit(timer, ts + 20);
            b.waker(t, WakeOp::Clone, None, ts + 20);
            ts += 30_000 * (round + 1) * (i + 1);
            b.exit(t, ts);
            ts += 1_000;
        }
        b.flush();
    }
    // Half of the workers complete: more than the three kept in detail.
    for &t in &workers[..6] {
        b.waker(t, WakeOp::Wake, None, ts);
        b.finish_task(t, CloseKind::Completed, ts + 5_000);
        ts += 10_000;
    }
    // A long poll.
    let slow = b.spawn(&TaskOpts::named("slow"), None, ts);
    b.poll(slow, ts + 1_000, ts + 300 * MS);
    ts += 301 * MS;
    // A mutex held by one task and waited on by another.
    let m = b.resource("Mutex", "Sync", 40, ts);
    let (holder, waiter) = (
        b.spawn(&TaskOpts::named("holder"), None, ts + 1),
        b.spawn(&TaskOpts::named("waiter"), None, ts + 2),
    );
    b.enter(holder, ts + 10)
        .lock(holder, m, true, ts + 11)
        .exit(holder, ts + 12);
    b.enter(waiter, ts + 20).lock(waiter, m, false, ts + 21);
    b.waker(waiter, WakeOp::Clone, None, ts + 21)
        .exit(waiter, ts + 22);
    // Two tasks taking two mutexes in opposite order.
    let (ma, mb) = (
        b.resource("Mutex", "Sync", 50, ts),
        b.resource("Mutex", "Sync", 51, ts),
    );
    let (one, two) = (
        b.spawn(&TaskOpts::named("one"), None, ts + 30),
        b.spawn(&TaskOpts::named("two"), None, ts + 30),
    );
    b.enter(one, ts + 31)
        .lock(one, ma, true, ts + 32)
        .exit(one, ts + 33);
    b.enter(two, ts + 34)
        .lock(two, mb, true, ts + 35)
        .exit(two, ts + 36);
    b.waker(one, WakeOp::Wake, None, ts + 37);
    b.enter(one, ts + 38).lock(one, mb, false, ts + 39);
    b.waker(one, WakeOp::Clone, None, ts + 39)
        .exit(one, ts + 40);
    b.waker(two, WakeOp::Wake, None, ts + 41);
    b.enter(two, ts + 42).lock(two, ma, false, ts + 43);
    b.waker(two, WakeOp::Clone, None, ts + 43)
        .exit(two, ts + 44);
    // Pending without a waker; logging errors.
    let lost = b.spawn(&TaskOpts::named("lost"), None, ts + 50);
    b.poll(lost, ts + 51, ts + 52);
    b.event(
        Level::Error,
        Some(lost),
        None,
        "invoice template missing",
        ts + 53,
    );
    b.event(Level::Warn, Some(lost), None, "retrying", ts + 54);
    // A panic.
    let doomed = b.spawn(&TaskOpts::named("doomed"), None, ts + 60);
    b.enter(doomed, ts + 61);
    b.panic(Some(doomed), "index out of bounds", ts + 62);
    b.exit(doomed, ts + 63)
        .close(doomed, CloseKind::Panicked, ts + 64);
    // In the middle of a poll at the join, on another thread.
    ts += 100;
    b.thread(1);
    let busy = b.spawn(&TaskOpts::named("busy"), None, ts);
    b.enter(busy, ts + 1);
    // Its stall's crossing, before the join (the stacks), and its end
    // after (the statistics): the late viewer judges it as the server.
    let mut crossing = stall(busy, ts + 1, ts + 20 * MS, false);
    crossing.stack = StackState::Sampled;
    crossing.frames = vec![native_frame(
        "shop::crunch",
        "src/crunch.rs",
        9,
        FrameOrigin::User,
    )];
    b.stall(crossing);
    let busy_start = ts + 1;
    b.thread(0);
    let join = ts + 2_000 * MS;
    let before = b.take_frames();

    // After the join: the same tasks go on.
    b.thread(1);
    ts = join;
    b.exit(busy, ts + 10);
    let mut end = stall(busy, busy_start, ts + 11, true);
    end.sched = Some(Sched {
        window_ns: 2_000 * MS,
        on_cpu_ns: 1_990 * MS,
        kernel_ns: 0,
        waiting_ns: 10 * MS,
    });
    b.stall(end);
    b.thread(0);
    for &t in &workers[6..] {
        b.waker(t, WakeOp::Wake, None, ts + 20);
        b.poll(t, ts + 30, ts + 30 + 7 * MS);
        ts += 8 * MS;
    }
    b.enter(holder, ts + 1)
        .unlock(holder, m, ts + 2)
        .exit(holder, ts + 3);
    b.waker(waiter, WakeOp::Wake, None, ts + 4);
    b.enter(waiter, ts + 5)
        .lock(waiter, m, true, ts + 6)
        .exit(waiter, ts + 7);
    b.finish_task(waiter, CloseKind::Completed, ts + 8);
    b.finish_task(workers[6], CloseKind::Cancelled, ts + 20);
    let late_one = b.spawn(&TaskOpts::named("late"), None, ts + 30);
    b.poll(late_one, ts + 31, ts + 32);
    b.goodbye();
    (before, b.take_frames(), join)
}

/// A late viewer's model equals the server's on everything the views
/// show, history included (poll counts, busy and scheduled times,
/// histograms, completed and summarised tasks, resource holders,
/// findings), at the join and after both applied the rest of the stream.
#[test]
fn late_viewer_model_equals_the_servers_on_what_views_show() {
    let cfg = Config {
        // Scans only when told, at the same times in both models.
        scan_interval_ns: u64::MAX / 4,
        retention: Retention {
            completed_max_count: 3,
            ..Retention::default()
        },
        ..Config::default()
    };
    let (before, after, join) = realistic_stream();
    let key = before[0].process;
    let mut server = Model::new(cfg);
    for f in &before {
        server.apply(f);
    }
    server.scan_wall(key.start_unix_ns + join);

    let mut late = late_model(&server);
    assert_eq!(shown(&late), shown(&server));
    // The stream has what the comparison is meant to cover.
    let p = late.process(&key).unwrap();
    assert!(!p.summary.is_empty() && p.completed.len() == 3);
    assert!(p.resources.values().any(|r| !r.holders.is_empty()));
    assert!(p
        .tasks
        .values()
        .any(|t| t.polls >= 5 && t.histograms().is_some()));
    assert!(p.tasks.values().any(|t| t.poll_start.is_some()));
    let kinds: BTreeSet<String> = finding_set(&late).into_iter().map(|(k, _)| k).collect();
    for k in ["deadlock", "error", "long_poll", "lost_waker", "panic"] {
        assert!(kinds.contains(k), "{k} in {kinds:?}");
    }
    assert!(p.tasks.values().any(|t| !t.stalls.is_empty()));

    for f in &after {
        server.apply(f);
        late.apply(f);
    }
    for t in [join + 500 * MS, join + 20_000 * MS] {
        server.scan_wall(key.start_unix_ns + t);
        late.scan_wall(key.start_unix_ns + t);
    }
    server.finish();
    late.finish();
    assert_eq!(shown(&late), shown(&server));
    // The stalled poll straddling the join names its line in both.
    let crunch = |m: &Model| {
        m.findings().list().iter().any(|f| {
            f.trace
                .first()
                .is_some_and(|l| l == "crunch @ src/crunch.rs:9")
        })
    };
    assert!(crunch(&server) && crunch(&late));
}

/// A snapshot message that is cut short, corrupt, of another format
/// version or over the cap is refused with an error, never a panic; a
/// message still arriving is waited for.
#[test]
fn bad_snapshot_messages_are_errors() {
    let (before, _, _) = realistic_stream();
    let mut server = Model::default();
    for f in &before {
        server.apply(f);
    }
    let mut good = Vec::new();
    viewer::encode_snapshot(
        &server.snapshot_process(&before[0].process).unwrap(),
        &mut good,
    );
    let (m, used) = viewer::decode_message(&good, 0).unwrap().unwrap();
    assert_eq!(used, good.len());
    assert!(matches!(m, Message::Snapshot(_)));
    // Still arriving: not an error.
    for n in [0, 1, 4, 5, good.len() / 2, good.len() - 1] {
        assert!(
            viewer::decode_message(&good[..n], 0).unwrap().is_none(),
            "{n} bytes"
        );
    }
    let body = &good[5..];
    let with_body = |body: &[u8]| {
        let mut m = vec![good[0]];
        m.extend((body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    };
    let bad = |msg: &[u8]| match viewer::decode_message(msg, 7) {
        Err(e @ viewer::MessageError::Snapshot { .. }) => e.to_string(),
        other => panic!("expected a snapshot error, got {other:?}"),
    };
    // Truncated at every length (the length prefix saying so).
    for n in (0..body.len()).step_by(97) {
        bad(&with_body(&body[..n]));
    }
    // Bytes after its end.
    let mut longer = body.to_vec();
    longer.push(0);
    assert!(bad(&with_body(&longer)).contains("after its end"));
    // Garbage, and garbage after a valid start.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for n in [1, 2, 16, 1000, 100_000] {
        let mut g = noise(n);
        g[0] = 1; // the version
        let _ = viewer::decode_message(&with_body(&g), 0);
        let mut g = body[..body.len() / 3].to_vec();
        g.extend(noise(n));
        let _ = viewer::decode_message(&with_body(&g), 0);
    }
    // Another version.
    let mut other = body.to_vec();
    other[0] = 9;
    let e = bad(&with_body(&other));
    assert!(e.contains("version 9"), "{e}");
    assert!(e.contains("offset 7"), "{e}");
    // Over the cap: refused from its length alone.
    let mut huge = vec![good[0]];
    huge.extend(((viewer::MAX_SNAPSHOT_LEN + 1) as u32).to_le_bytes());
    assert!(bad(&huge).contains("exceed the cap"));
}

/// A snapshot over the cap is sent smaller, with a note, and still
/// decodes.
#[test]
fn snapshots_over_the_cap_leave_parts_out() {
    let (before, _, _) = realistic_stream();
    let mut server = Model::default();
    for f in &before {
        server.apply(f);
    }
    let s = server.snapshot_process(&before[0].process).unwrap();
    let mut whole = Vec::new();
    s.encode(&mut whole);
    let cap = whole.len() / 2;
    let mut small = Vec::new();
    s.encode_capped(cap, &mut small);
    assert!(small.len() <= cap, "{} > {cap}", small.len());
    let back = awaitscope_collector::model::ProcessSnapshot::decode(&small).unwrap();
    assert!(back.live_tasks() < s.live_tasks() && back.live_tasks() > 0);
    let mut late = Model::default();
    late.restore_process(&back);
    let p = late.process(&back.key()).unwrap();
    assert!(
        p.notes.iter().any(|n| n.contains("left out")),
        "{:?}",
        p.notes
    );
}

/// A producer's stream so far: hello, `n` tasks named `prefix-i`, each
/// polled once while parked on a user span.
fn producer(pid: u32, prefix: &str, n: u64, b: &mut StreamBuilder, start: u64) {
    for i in 0..n {
        let ts = start + i * 10;
        let t = b.spawn(&TaskOpts::named(&format!("{prefix}-{i}")), None, ts);
        let span = b.user_span("waiting_for_reply", None, ts + 1);
        b.enter(t, ts + 2);
        b.enter(span, ts + 3);
        b.exit(span, ts + 4);
        b.waker(t, WakeOp::Clone, None, ts + 4);
        b.exit(t, ts + 5);
        b.flush();
    }
    let _ = pid;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_viewer_sees_current_state_then_new_frames() {
    let srv = start(test_config()).await;
    let mut b = StreamBuilder::new(7, 7_000);
    b.hello("shop", None, false);
    b.thread(0);
    producer(7, "early", 5, &mut b, 10);
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    conn.write_all(&b.recording()).await.unwrap();
    let h = srv.handle.clone();
    wait_until("serve ingested the early tasks", || {
        h.with_model(|m| tasks_named(m, 7, "early") == 5)
    })
    .await;

    // The viewer joins now.
    let addr = srv.addr;
    let mut view = tokio::task::spawn_blocking(move || {
        let mut v = View::connect(addr, None).expect("viewer connects");
        v.until("the rebuild", |v| v.synced);
        v
    })
    .await
    .unwrap();
    let key = ProcessKey {
        pid: 7,
        start_unix_ns: 7_000,
    };
    {
        let p = view
            .model
            .process(&key)
            .expect("the viewer knows the process");
        assert_eq!(p.name(), "shop");
        assert!(p.connected);
        assert_eq!(tasks_named(&view.model, 7, "early"), 5);
        for t in p.tasks.values() {
            let tree: Vec<String> = t.await_tree.nodes.iter().map(|n| p.node_label(n)).collect();
            assert_eq!(tree.len(), 1, "{tree:?}");
            assert!(tree[0].contains("waiting_for_reply"), "{tree:?}");
            assert_eq!(t.state, TaskState::Idle);
        }
    }
    assert_eq!(h.stats().viewers_active.load(Ordering::Relaxed), 1);

    // More frames: the viewer sees them too, then the goodbye.
    producer(7, "late", 3, &mut b, 1_000);
    b.goodbye();
    conn.write_all(&b.take_bytes()).await.unwrap();
    let view = tokio::task::spawn_blocking(move || {
        view.until("the late tasks and the goodbye", |v| {
            tasks_named(&v.model, 7, "late") == 3
                && v.model.processes().any(|p| p.ended && !p.connected)
        });
        view
    })
    .await
    .unwrap();
    assert_eq!(tasks_named(&view.model, 7, "early"), 5);
    assert_eq!(view.told_drops, 0);
    drop(view);
    wait_until("the viewer's leaving noticed", || {
        h.stats().viewers_active.load(Ordering::Relaxed) == 0
    })
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_viewer_does_not_slow_ingest_and_is_told_its_drops() {
    let cfg = ServerConfig {
        queue_capacity: 1 << 16,
        viewer_queue_bytes: 64 * 1024,
        ..test_config()
    };
    let srv = start(cfg).await;
    let h = srv.handle.clone();
    // A viewer that greets, then never reads (a small receive buffer so
    // the kernel does not absorb the stream).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let slow = sock.connect(srv.addr).await.unwrap().into_std().unwrap();
    slow.set_nonblocking(false).unwrap();
    let slow = tokio::task::spawn_blocking(move || {
        Client::handshake(slow, None, PATIENCE).expect("slow viewer accepted")
    })
    .await
    .unwrap();
    wait_until("the viewer registered", || {
        h.stats().viewers_active.load(Ordering::Relaxed) == 1
    })
    .await;

    // ~12 MB of task spans (long names), far more than the viewer's queue
    // and socket buffers hold.
    const TASKS: u64 = 12_000;
    let name = "n".repeat(1000);
    let mut b = StreamBuilder::new(9, 9_000);
    b.hello("busy", None, false);
    b.thread(0);
    for i in 0..TASKS {
        b.spawn(&TaskOpts::named(&format!("{name}{i}")), None, 10 + i);
        if i % 400 == 399 {
            b.flush();
        }
    }
    b.goodbye();
    let addr = srv.addr;
    let bytes = b.recording();
    tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&bytes).await.unwrap();
        let _ = c.shutdown().await;
    })
    .await
    .unwrap();
    wait_until("serve ingested everything", || {
        h.with_model(|m| {
            m.processes()
                .any(|p| p.key.pid == 9 && p.tasks.len() == TASKS as usize && p.ended)
        })
    })
    .await;
    assert_eq!(h.stats().dropped_events.load(Ordering::Relaxed), 0);
    let dropped = h.stats().viewer_dropped_events.load(Ordering::Relaxed);
    assert!(
        h.stats().viewer_dropped_frames.load(Ordering::Relaxed) > 0 && dropped > 0,
        "the slow viewer's queue overflowed"
    );

    // The viewer reads at last: it is told exactly what it missed, and its
    // model counts it as dropped events.
    let view = tokio::task::spawn_blocking(move || {
        let mut v = View::new(slow);
        v.until("the drops told", |v| v.told_drops == dropped);
        v.until("the goodbye", |v| v.model.processes().any(|p| p.ended));
        v
    })
    .await
    .unwrap();
    let p = view.model.processes().find(|p| p.key.pid == 9).unwrap();
    assert_eq!(p.collector_dropped, dropped);
    assert!(p.tasks.len() < TASKS as usize);
    // Callsites of dropped batches were kept: what arrived is still tasks.
    assert!(p.tasks.values().all(|t| t.name.is_some()));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_need_the_token_when_serve_has_one() {
    let cfg = ServerConfig {
        token: Some("s3cret".into()),
        ..test_config()
    };
    let srv = start(cfg).await;
    let addr = srv.addr;
    let (none, wrong, right) = tokio::task::spawn_blocking(move || {
        let none = View::connect(addr, None).err();
        let wrong = View::connect(addr, Some("guess")).err();
        let mut right = View::connect(addr, Some("s3cret")).expect("the token opens");
        right.until("the rebuild", |v| v.synced);
        (none, wrong, right)
    })
    .await
    .unwrap();
    for e in [none, wrong] {
        match e {
            Some(ClientError::Refused(reason)) => assert!(reason.contains("token"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let h = srv.handle.clone();
    assert_eq!(h.stats().refused_token.load(Ordering::Relaxed), 2);
    assert_eq!(h.stats().viewers.load(Ordering::Relaxed), 1);
    // A producer's token is not passed on to viewers.
    let mut b = StreamBuilder::new(3, 3);
    b.hello("app", Some("s3cret"), false);
    b.thread(0);
    producer(3, "job", 1, &mut b, 10);
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&b.recording()).await.unwrap();
    let hellos = tokio::task::spawn_blocking(move || {
        let mut right = right;
        let mut hellos = Vec::new();
        let mut msgs = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while hellos.is_empty() {
            assert!(Instant::now() < deadline, "no hello forwarded");
            right
                .client
                .read(&mut msgs, Duration::from_millis(100))
                .unwrap();
            for m in msgs.drain(..) {
                if let Message::Frame(awaitscope_wire::Frame {
                    body: awaitscope_wire::Body::Hello(info),
                    ..
                }) = m
                {
                    hellos.push(info);
                }
            }
        }
        hellos
    })
    .await
    .unwrap();
    assert!(hellos.iter().all(|i| i.token.is_none()), "{hellos:?}");
    drop(conn);
    srv.stop().await;
}

/// Sends `bytes`, half-closes, and returns what the server answered.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer
}

fn refusal(answer: &[u8]) -> String {
    assert!(answer.len() >= 13, "a refusal reply: {answer:?}");
    assert_eq!(answer[..8], VIEWER_MAGIC);
    assert_eq!(answer[10], 1, "refused");
    String::from_utf8_lossy(&answer[13..]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_viewers_are_refused_while_producers_ingest() {
    let srv = start(test_config()).await;
    let addr = srv.addr;
    let h = srv.handle.clone();
    // A good viewer, watching throughout.
    let good = tokio::task::spawn_blocking(move || {
        let mut v = View::connect(addr, None).unwrap();
        v.until("the rebuild", |v| v.synced);
        v
    });
    // Producers, streaming meanwhile.
    let mut producers = Vec::new();
    for pid in 1..=3u32 {
        producers.push(tokio::spawn(async move {
            let mut b = StreamBuilder::new(pid, pid as u64);
            b.hello("app", None, false);
            b.thread(0);
            producer(pid, "job", 20, &mut b, 10);
            b.goodbye();
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&b.recording()).await.unwrap();
            let _ = c.shutdown().await;
        }));
    }
    let answers = tokio::task::spawn_blocking(move || {
        let mut version = VIEWER_MAGIC.to_vec();
        version.extend(99u16.to_le_bytes());
        version.extend(0u16.to_le_bytes());
        let mut long_token = VIEWER_MAGIC.to_vec();
        long_token.extend(VIEWER_VERSION.to_le_bytes());
        long_token.extend(60_000u16.to_le_bytes());
        long_token.extend(vec![b'x'; 60_000]);
        let mut chatty = viewer::greeting(None);
        chatty.extend(b"GET / HTTP/1.1\r\n\r\n");
        let mut not_utf8 = viewer::greeting(Some("ab"));
        let n = not_utf8.len();
        not_utf8[n - 1] = 0xff;
        let mut not_viewer = b"AWSVIEWX".to_vec();
        not_viewer.extend([0u8; 16]);
        [
            exchange(addr, &version),
            exchange(addr, &long_token),
            exchange(addr, &chatty),
            exchange(addr, &not_utf8),
            exchange(addr, &not_viewer),
        ]
    })
    .await
    .unwrap();
    assert!(refusal(&answers[0]).contains("unsupported viewer protocol version 99"));
    assert!(refusal(&answers[1]).contains("exceeds the cap"));
    assert!(refusal(&answers[2]).contains("viewer sent data after its greeting"));
    assert!(refusal(&answers[3]).contains("not UTF-8"));
    assert!(answers[4].is_empty(), "not a viewer: refused as a producer");
    // An accepted viewer that then sends garbage is closed.
    let chatty_later = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut c = Client::handshake(s.try_clone().unwrap(), None, PATIENCE).unwrap();
        s.write_all(b"\x00garbage").unwrap();
        let mut msgs = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "never closed");
            match c.read(&mut msgs, Duration::from_millis(100)) {
                Ok(()) => {}
                Err(e) => break e,
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(chatty_later, ClientError::Closed | ClientError::Io(_)),
        "{chatty_later:?}"
    );
    for p in producers {
        p.await.unwrap();
    }
    wait_until("the refusals counted", || {
        let s = h.stats();
        s.refused_version.load(Ordering::Relaxed) == 1
            && s.refused_oversized.load(Ordering::Relaxed) == 1
            && s.refused_protocol.load(Ordering::Relaxed) == 2
            && s.refused_garbage.load(Ordering::Relaxed) == 2
    })
    .await;
    wait_until("producers ingested", || {
        h.with_model(|m| (1..=3).all(|pid| tasks_named(m, pid, "job") == 20))
    })
    .await;
    let mut v = good.await.unwrap();
    let view = tokio::task::spawn_blocking(move || {
        v.until("all producers, through the viewer", |v| {
            (1..=3).all(|pid| tasks_named(&v.model, pid, "job") == 20)
        });
        v
    })
    .await
    .unwrap();
    assert_eq!(view.told_drops, 0);
    srv.stop().await;
}

/// An ended process evicted after the retention leaves the server's model
/// and every viewer's, its findings kept in both; the report keeps its
/// summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_forget_what_the_server_evicts() {
    let srv = start(ServerConfig {
        retention: Duration::from_millis(300),
        ..test_config()
    })
    .await;
    let addr = srv.addr;
    let mut view = tokio::task::spawn_blocking(move || {
        let mut v = View::connect(addr, None).expect("viewer connects");
        v.until("the rebuild", |v| v.synced);
        v
    })
    .await
    .unwrap();
    let mut b = StreamBuilder::new(8, 8_000);
    b.hello("gone", None, false);
    b.thread(0);
    producer(8, "done", 3, &mut b, 10);
    let job = b.spawn(&TaskOpts::named("job"), None, 400);
    b.enter(job, 401);
    b.event(Level::Error, Some(job), None, "the job failed", 402);
    b.exit(job, 403);
    b.flush();
    b.goodbye();
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    conn.write_all(&b.recording()).await.unwrap();
    drop(conn);
    let key = ProcessKey {
        pid: 8,
        start_unix_ns: 8_000,
    };
    let view = tokio::task::spawn_blocking(move || {
        view.until("the process, then its eviction", |v| {
            v.model.process(&key).is_none() && !v.model.findings().list().is_empty()
        });
        view
    })
    .await
    .unwrap();
    let h = srv.handle.clone();
    assert!(h.with_model(|m| m.process(&key).is_none()));
    assert_eq!(h.stats().processes_evicted.load(Ordering::Relaxed), 1);
    let r = h.report();
    assert_eq!(r.processes.len(), 1);
    assert!(r.processes[0].evicted && r.processes[0].ended);
    assert!(r.tasks.is_empty());
    assert_eq!(
        finding_set(&view.model),
        h.with_model(finding_set),
        "the viewer keeps the findings the server keeps"
    );
    assert!(!r.findings.is_empty());
    srv.stop().await;
}

/// The statistics of the stall of `t`'s poll from `start` lasting `window`:
/// `on_cpu` of it on a CPU, `waiting` waiting for one (final: the end's
/// half).
fn sched_stall(t: SpanId, start: u64, window: u64, on_cpu: u64, waiting: u64) -> Stall {
    let mut st = stall(t, start, start + window + 1, true);
    st.sched = Some(Sched {
        window_ns: window,
        on_cpu_ns: on_cpu,
        kernel_ns: 0,
        waiting_ns: waiting,
    });
    st
}

/// The `long_poll` and `descheduled` findings of a model, as the views show
/// them.
fn poll_findings(m: &Model) -> Vec<Finding> {
    m.findings()
        .list()
        .iter()
        .filter(|f| matches!(f.kind, FindingKind::LongPoll | FindingKind::Descheduled))
        .cloned()
        .collect()
}

/// A viewer that joins while a finding holds an occurrence still open (a
/// long poll whose stall's statistics have not arrived) is sent it as
/// open: when the statistics say the poll mostly waited for a CPU, the
/// late viewer, like the server and a viewer there from the start, shows
/// it as `descheduled` alone, the `long_poll` finding left with the other
/// poll (not both, the late one holding the first verdict as final).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_viewer_takes_back_an_open_occurrence_as_the_server_does() {
    let srv = start(test_config()).await;
    let addr = srv.addr;
    let early = tokio::task::spawn_blocking(move || {
        let mut v = View::connect(addr, None).expect("early viewer connects");
        v.until("the (empty) rebuild", |v| v.synced);
        v
    })
    .await
    .unwrap();

    let mut b = StreamBuilder::new(9, 9_000);
    b.hello("shop", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("x"), None, 10);
    b.waker(t, WakeOp::Clone, None, 11);
    // A 30ms long poll, its statistics final (on a CPU) before its commit:
    // settled.
    b.poll(t, MS, 31 * MS);
    b.stall(sched_stall(t, MS, 30 * MS, 29 * MS, 0));
    b.poll(t, 40 * MS, 41 * MS);
    // A 50ms one committed with no statistics yet: open.
    b.poll(t, 100 * MS, 150 * MS);
    b.poll(t, 200 * MS, 201 * MS);
    b.flush();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&b.recording()).await.unwrap();
    let h = srv.handle.clone();
    let long = |m: &Model| -> Option<(u64, Option<u64>)> {
        m.findings()
            .of_kind(FindingKind::LongPoll)
            .next()
            .map(|f| (f.count, f.worst_ns))
    };
    wait_until("serve found both long polls", || {
        h.with_model(|m| long(m) == Some((2, Some(50 * MS))))
    })
    .await;

    // The late viewer joins now; the early one has seen it all happen.
    let (early, late) = tokio::task::spawn_blocking(move || {
        let mut early = early;
        early.until("both long polls", |v| {
            long(&v.model) == Some((2, Some(50 * MS)))
        });
        let mut late = View::connect(addr, None).expect("late viewer connects");
        late.until("the rebuild", |v| v.synced);
        assert_eq!(poll_findings(&late.model), poll_findings(&early.model));
        (early, late)
    })
    .await
    .unwrap();

    // The open poll's statistics: 7/8 of it waiting for a CPU.
    b.stall(sched_stall(
        t,
        100 * MS,
        50 * MS,
        50 * MS / 8,
        50 * MS * 7 / 8,
    ));
    b.flush();
    conn.write_all(&b.take_bytes()).await.unwrap();
    let descheduled = |m: &Model| m.findings().of_kind(FindingKind::Descheduled).count() == 1;
    wait_until("serve found the poll descheduled", || {
        h.with_model(descheduled)
    })
    .await;
    let server = h.with_model(poll_findings);
    let (early, late) = tokio::task::spawn_blocking(move || {
        let (mut early, mut late) = (early, late);
        early.until("the descheduled poll", |v| descheduled(&v.model));
        late.until("the descheduled poll", |v| descheduled(&v.model));
        (poll_findings(&early.model), poll_findings(&late.model))
    })
    .await
    .unwrap();
    let kinds: Vec<(FindingKind, u64, Option<u64>)> = server
        .iter()
        .map(|f| (f.kind, f.count, f.worst_ns))
        .collect();
    assert_eq!(
        kinds,
        [
            (FindingKind::LongPoll, 1, Some(30 * MS)),
            (FindingKind::Descheduled, 1, Some(50 * MS))
        ]
    );
    assert_eq!(early, server);
    assert_eq!(late, server);
    srv.stop().await;
}
