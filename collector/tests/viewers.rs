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

use awaitscope_collector::config::MS;
use awaitscope_collector::ingest::server::ServerConfig;
use awaitscope_collector::ingest::viewer::{
    self, Client, ClientError, Control, Message, VIEWER_MAGIC, VIEWER_VERSION,
};
use awaitscope_collector::model::TaskState;
use awaitscope_collector::testing::{Scenario, StreamBuilder, TaskOpts};
use awaitscope_collector::Model;
use awaitscope_wire::{ProcessKey, WakeOp};
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
/// its detectors find the same (no starvation read into the late join).
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
    // Completed: not re-sent.
    let done = s.spawn(TaskOpts::named("done"), 80 * MS);
    s.poll(done, 81 * MS, 82 * MS);
    s.complete(done, 83 * MS);
    // Two tasks taking two mutexes in opposite order: a deadlock, found
    // before the viewer joins (whose rebuild cannot carry lock holders).
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
