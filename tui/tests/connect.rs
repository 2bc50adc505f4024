//! `awaitscope --connect ADDR` end to end: a real instrumented program
//! streams to a serve-equivalent collector; a UI feed that connects later
//! sees the program's state (process, named tasks, await trees), then what
//! happens next; when the collector restarts, the feed says so, reconnects
//! and rebuilds.
//!
//! The program runs in a process of its own (this test binary, re-run for
//! [`program_streaming_to_serve`]), as it does for real: in one process,
//! with `--cfg tokio_unstable`, the collector's runtime and the program's
//! share tokio's `runtime.spawn` callsite, and the program's tasks were
//! seen (about one run in ten) without task spans.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use awaitscope_collector::ingest::server::{Server, ServerConfig, ServerHandle};
use awaitscope_collector::Model;
use awaitscope_tui::feed::{ConnectFeed, ConnectTarget, Feed};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Generous: conditions are awaited, never timed.
const PATIENCE: Duration = Duration::from_secs(60);

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A collector like `awaitscope serve`, on its own runtime.
struct Serve {
    handle: ServerHandle,
    stop: tokio::sync::oneshot::Sender<()>,
    rt: tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<()>,
}

impl Serve {
    fn start(listen: SocketAddr) -> (Serve, SocketAddr) {
        Serve::with_token(listen, None)
    }

    fn with_token(listen: SocketAddr, token: Option<&str>) -> (Serve, SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cfg = ServerConfig {
            listen,
            scan_interval: Duration::from_millis(100),
            token: token.map(Into::into),
            ..ServerConfig::default()
        };
        let server = rt.block_on(Server::bind(cfg)).expect("bind");
        let addr = server.local_addr();
        let handle = server.handle();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(server.run_until(async {
            let _ = rx.await;
        }));
        (
            Serve {
                handle,
                stop,
                rt,
                task,
            },
            addr,
        )
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.rt.block_on(self.task).unwrap();
    }
}

/// Live tasks whose name starts with `prefix` and whose await tree names
/// `span`.
fn parked(m: &Model, prefix: &str, span: &str) -> usize {
    m.processes()
        .flat_map(|p| {
            p.tasks.values().filter(move |t| {
                t.name.as_deref().is_some_and(|n| n.starts_with(prefix))
                    && t.await_tree
                        .nodes
                        .iter()
                        .any(|n| p.node_label(n).contains(span))
            })
        })
        .count()
}

/// Where the re-run program streams to.
const PROGRAM_ENV: &str = "AWAITSCOPE_CONNECT_TEST_ADDR";

/// Starts the instrumented program (this binary, re-run); `late` on its
/// stdin spawns two more workers, end of input ends it.
fn start_program(addr: SocketAddr) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "program_streaming_to_serve",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(PROGRAM_ENV, addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the program starts")
}

enum Cmd {
    SpawnLate,
    Quit,
}

/// The instrumented program: three workers parked in `waiting_for_reply`
/// and a ticker; on `late`, two more workers.
#[test]
#[ignore = "the program of the other test here, run in a process of its own"]
fn program_streaming_to_serve() {
    let Ok(addr) = std::env::var(PROGRAM_ENV) else {
        return;
    };
    let (tx, cmds) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line.trim() == "late" {
                let _ = tx.send(Cmd::SpawnLate);
            }
        }
        let _ = tx.send(Cmd::Quit);
    });
    let thread = std::thread::Builder::new().name("program-main".into());
    thread
        .spawn(move || {
            let (layer, guard) = awaitscope::Builder::new().stream_to(addr).build();
            let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::callsite::rebuild_interest_cache();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let release = std::sync::Arc::new(tokio::sync::Notify::new());
                    let park = |name: String| {
                        let r = release.clone();
                        awaitscope::spawn_named(
                            &name,
                            async move { r.notified().await }
                                .instrument(tracing::info_span!("waiting_for_reply")),
                        );
                    };
                    for i in 0..3 {
                        park(format!("worker-{i}"));
                    }
                    // Keeps events flowing (a producer notices a lost collector
                    // when it writes).
                    awaitscope::spawn_named("ticker", async {
                        loop {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    });
                    loop {
                        match cmds.try_recv() {
                            Ok(Cmd::SpawnLate) => {
                                for i in 0..2 {
                                    park(format!("late-{i}"));
                                }
                            }
                            Ok(Cmd::Quit) | Err(mpsc::TryRecvError::Disconnected) => break,
                            Err(mpsc::TryRecvError::Empty) => {}
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                rt.shutdown_background();
            });
            drop(guard);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn connect_feed_joins_late_follows_and_rebuilds_after_a_serve_restart() {
    let (serve, addr) = Serve::start("127.0.0.1:0".parse().unwrap());
    let mut program = start_program(addr);
    let mut cmd = program.stdin.take().unwrap();
    let h = serve.handle.clone();
    let deadline = Instant::now() + PATIENCE;
    while !h.with_model(|m| parked(m, "worker-", "waiting_for_reply") == 3) {
        if Instant::now() > deadline {
            let dump = h.with_model(|m| {
                m.processes()
                    .map(|p| {
                        let t: Vec<_> = p
                            .tasks
                            .values()
                            .map(|t| (t.name.clone(), t.state, t.await_tree.nodes.len(), t.polls))
                            .collect();
                        format!(
                            "{} spans={} {:?} notes={:?}",
                            p.name(),
                            p.spans.len(),
                            t,
                            p.notes
                        )
                    })
                    .collect::<Vec<_>>()
            });
            panic!(
                "serve never saw the parked workers: {dump:#?} {:?}",
                h.stats()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // The UI connects after the program's spans were sent.
    assert_eq!(
        ConnectTarget::parse(&addr.to_string()),
        ConnectTarget::Addr(addr.to_string())
    );
    let mut feed = ConnectFeed::start(addr.to_string(), None);
    wait_until("the feed synced", || feed.connected());
    feed.with_model(|m| {
        let p = m.processes().next().expect("the program's process");
        let name = &p.info.as_ref().expect("its hello").name;
        assert!(name.starts_with("connect"), "{name}");
        assert!(p.connected);
        assert!(
            p.threads
                .values()
                .any(|t| t.name.as_deref() == Some("program-main")),
            "thread names"
        );
        assert!(p
            .tasks
            .values()
            .any(|t| t.name.as_deref() == Some("ticker")));
    });
    wait_until(
        "the feed's model has the workers and their await trees",
        || feed.with_model(|m| parked(m, "worker-", "waiting_for_reply") == 3),
    );
    let (status, ok) = feed.status();
    assert!(
        ok && status == format!("connected to serve at {addr}"),
        "{status}"
    );
    assert!(feed.poll());
    let snap = feed.snapshot(None);
    for i in 0..3 {
        let name = format!("worker-{i}");
        assert!(
            snap.tasks.iter().any(|t| t.name == name),
            "{name} in the table"
        );
    }

    // What happens next arrives too.
    writeln!(cmd, "late").unwrap();
    cmd.flush().unwrap();
    wait_until("the feed sees the late workers", || {
        feed.with_model(|m| parked(m, "late-", "waiting_for_reply") == 2)
    });

    // serve goes away: the feed says so, keeps the last model, reconnects.
    serve.stop();
    wait_until("the feed notices", || {
        let (status, ok) = feed.status();
        !ok && status.contains("gone") && status.contains("reconnecting")
    });
    assert!(feed.with_model(|m| parked(m, "worker-", "waiting_for_reply")) == 3);
    let (serve, again) = Serve::start(addr);
    assert_eq!(again, addr);
    wait_until("the feed reconnected and rebuilt", || {
        feed.connected()
            && feed.with_model(|m| {
                parked(m, "worker-", "waiting_for_reply") == 3
                    && parked(m, "late-", "waiting_for_reply") == 2
            })
    });
    let (status, ok) = feed.status();
    assert!(ok && status.contains("connected to serve"), "{status}");

    drop(cmd);
    assert!(program.wait().unwrap().success());
    drop(feed);
    serve.stop();
}

#[test]
fn connect_target_tells_addresses_from_directories() {
    let addr = |s: &str| ConnectTarget::Addr(s.to_string());
    assert_eq!(
        ConnectTarget::parse("127.0.0.1:6670"),
        addr("127.0.0.1:6670")
    );
    assert_eq!(ConnectTarget::parse("[::1]:6670"), addr("[::1]:6670"));
    assert_eq!(
        ConnectTarget::parse("localhost:6670"),
        addr("localhost:6670")
    );
    assert_eq!(
        ConnectTarget::parse("collector.internal:7000"),
        addr("collector.internal:7000")
    );
    for d in ["recs", "./recs:1", "/tmp/x:80", "host:notaport", ":6670"] {
        assert_eq!(ConnectTarget::parse(d), ConnectTarget::Dir(d.into()), "{d}");
    }
}

#[test]
fn connect_feed_shows_a_refusal_and_connects_with_the_token() {
    let (serve, addr) = Serve::with_token("127.0.0.1:0".parse().unwrap(), Some("s3cret"));
    let refused = ConnectFeed::start(addr.to_string(), None);
    wait_until("the refusal shown", || {
        let (status, ok) = refused.status();
        !ok && status.contains("refused") && status.contains("token")
    });
    assert!(!refused.connected());
    let admitted = ConnectFeed::start(addr.to_string(), Some("s3cret".into()));
    wait_until("connected with the token", || admitted.connected());
    drop((refused, admitted));
    serve.stop();
}

/// A serve that sends a snapshot the UI cannot decode: the feed says so
/// and keeps the model it had, rather than showing a half-built one.
#[test]
fn connect_feed_keeps_its_model_on_a_bad_snapshot() {
    use awaitscope_collector::ingest::viewer;
    use awaitscope_collector::testing::{Scenario, TaskOpts};
    use std::io::Read;
    use std::net::TcpListener;

    let mut s = Scenario::new();
    let t = s.spawn(TaskOpts::named("kept"), 10);
    s.poll(t, 20, 30);
    let model = s.finish();
    let key = model.processes().next().unwrap().key;
    let mut good = viewer::reply(None);
    viewer::rebuild(&model, &mut good);
    let mut snapshot = Vec::new();
    viewer::encode_snapshot(&model.snapshot_process(&key).unwrap(), &mut snapshot);
    // Cut short, its length saying so.
    let body = snapshot[5..snapshot.len() / 2].to_vec();
    let mut bad = viewer::reply(None);
    bad.push(snapshot[0]);
    bad.extend((body.len() as u32).to_le_bytes());
    bad.extend(body);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (close, closed) = mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        for answer in [good, bad] {
            let (mut c, _) = listener.accept().unwrap();
            let mut greeting = [0u8; viewer::GREETING_HEAD];
            c.read_exact(&mut greeting).unwrap();
            c.write_all(&answer).unwrap();
            // Held open: the feed must not need the close to act.
            let _ = closed.recv();
        }
    });
    let feed = ConnectFeed::start(addr.to_string(), None);
    let kept = |feed: &ConnectFeed| {
        feed.with_model(|m| {
            m.processes()
                .flat_map(|p| p.tasks.values())
                .any(|t| t.name.as_deref() == Some("kept") && t.polls_view() == 1)
        })
    };
    wait_until("the first state", || feed.connected() && kept(&feed));
    close.send(()).unwrap();
    wait_until("the bad snapshot reported", || {
        let (status, ok) = feed.status();
        !ok && status.contains("bad snapshot message")
    });
    assert!(kept(&feed), "the model shown before is kept");
    drop(feed);
    close.send(()).unwrap();
    fake.join().unwrap();
}
