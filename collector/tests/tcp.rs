//! Fault tests of the live collector: many producers, bad peers, producers
//! killed mid-frame, collector restarts, recording, queue drops.

mod live;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use awaitscope_collector::ingest::budget::Share;
use awaitscope_collector::ingest::recording;
use awaitscope_collector::ingest::server::{ServeError, Server, ServerConfig};
use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::{FindingKind, Model};
use awaitscope_wire::{MAGIC, MAX_FRAME_LEN};
use live::{start, wait_until, PATIENCE};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn test_config() -> ServerConfig {
    live::test_config(Duration::from_secs(1))
}

/// A producer's whole stream: hello, `tasks` tasks polled once, goodbye.
fn stream(pid: u32, tasks: usize, token: Option<&str>, goodbye: bool) -> Vec<u8> {
    let mut b = StreamBuilder::new(pid, 1_000 + pid as u64);
    b.hello(&format!("producer{pid}"), token, false);
    b.thread(0);
    for i in 0..tasks as u64 {
        let t = b.spawn(&TaskOpts::named("job"), None, 10 + i * 10);
        b.poll(t, 12 + i * 10, 15 + i * 10);
        b.flush();
    }
    if goodbye {
        b.goodbye();
    }
    b.recording()
}

async fn send(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    s.shutdown().await?;
    // Keep the socket until the server closes it.
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
    Ok(())
}

fn live_tasks(m: &Model, pid: u32) -> usize {
    m.processes()
        .filter(|p| p.key.pid == pid)
        .map(|p| p.tasks.len())
        .sum()
}

/// Frames a producer sent before the server was told to stop, accepted
/// but still queued for the model, are applied before it stops: the
/// producer's goodbye, its last frame, is in the model. The model is held
/// (as a slow report or snapshot would hold it) while the frames queue and
/// while the server takes the stop; more batches are queued than a task
/// runs in one turn (tokio's budget: 128 receives of up to 256 frames), so
/// an applier stopped at its next turn would leave the goodbye unapplied.
#[test]
fn frames_queued_when_told_to_stop_are_applied() {
    const TASKS: usize = 40_000;
    // One worker: the server's applier waits for the held model on a
    // thread of its own. Were it waiting on the worker, no task could run
    // until the model was released (the connection's reads included, which
    // the release below waits for: the test would fail at its timeout).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ServerConfig {
            queue_capacity: 1 << 17,
            memory_budget: 1 << 30,
            // The scanner takes the model too: only at its first tick here,
            // long before the model is held.
            scan_interval: Duration::from_secs(3600),
            ..test_config()
        };
        let srv = start(cfg).await;
        let mut bytes = stream(7, TASKS, None, true);
        // The producer on std sockets and threads: what it waits for must
        // not need the runtime's one worker.
        let mut wr = std::net::TcpStream::connect(srv.addr).unwrap();
        let mut rd = wr.try_clone().unwrap();
        // Told when the server has closed the connection.
        let (read_tx, read_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::Read::read_to_end(&mut rd, &mut Vec::new());
            let _ = read_tx.send(());
        });
        // The preamble and hello first (the first frame), applied.
        let hello_len = awaitscope_wire::Preamble::LEN
            + 4
            + u32::from_le_bytes(
                bytes[awaitscope_wire::Preamble::LEN..awaitscope_wire::Preamble::LEN + 4]
                    .try_into()
                    .unwrap(),
            ) as usize;
        let rest = bytes.split_off(hello_len);
        std::io::Write::write_all(&mut wr, &bytes).unwrap();
        let h = srv.handle.clone();
        wait_until("the hello applied", || {
            h.with_model(|m| m.processes().count() == 1)
        })
        .await;
        let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            h.with_model(|_| {
                locked_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
        });
        locked_rx.recv().unwrap();
        // The reader ends once the server has read everything and closed the
        // connection: every frame is then queued (or counted as dropped).
        // Sent over time, as a producer sends its frames: the connection
        // reads, waits for more and is woken again while the model is held.
        std::thread::spawn(move || {
            for chunk in rest.chunks(rest.len().div_ceil(32)) {
                std::io::Write::write_all(&mut wr, chunk).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            wr.shutdown(std::net::Shutdown::Write).unwrap();
        });
        read_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server stopped reading the connection while the model was held");
        let h = srv.handle.clone();
        srv.stop_with(|| {
            // Time for the server to take the stop while the model is held
            // (the test can only pass early otherwise, never fail wrongly).
            std::thread::sleep(Duration::from_millis(300));
            release_tx.send(()).unwrap();
        })
        .await;
        holder.join().unwrap();
        h.with_model(|m| {
            let p = m
                .processes()
                .find(|p| p.key.pid == 7)
                .expect("the producer's process");
            assert!(p.ended, "the goodbye queued at the stop was not applied");
        });
        assert_eq!(h.report().dropped.total, 0, "frames were dropped");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_producers() {
    let cfg = ServerConfig {
        queue_capacity: 1 << 16,
        ..test_config()
    };
    let srv = start(cfg).await;
    let mut joins = Vec::new();
    for pid in 1..=50u32 {
        let addr = srv.addr;
        joins.push(tokio::spawn(async move {
            send(addr, &stream(pid, 100, None, true)).await.unwrap();
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let h = srv.handle.clone();
    wait_until("50 producers ingested", || {
        h.with_model(|m| {
            m.processes().count() == 50 && m.processes().all(|p| p.tasks.len() == 100 && p.ended)
        })
    })
    .await;
    assert_eq!(h.stats().producers.load(Ordering::Relaxed), 50);
    assert_eq!(h.stats().dropped_events.load(Ordering::Relaxed), 0);
    assert_eq!(h.stats().refused(), 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_while_others_ingest() {
    let cfg = ServerConfig {
        token: Some("s3cret".into()),
        ..test_config()
    };
    let srv = start(cfg).await;
    let addr = srv.addr;
    let mut oversized = awaitscope_wire::preamble().to_vec();
    oversized.extend(((MAX_FRAME_LEN + 1) as u32).to_le_bytes());
    oversized.extend(vec![0u8; 64 * 1024]);
    let mut version = MAGIC.to_vec();
    version.extend(99u16.to_le_bytes());
    let mut no_hello = {
        let mut b = StreamBuilder::new(77, 0);
        b.thread(0);
        b.spawn(&TaskOpts::named("x"), None, 1);
        b.recording()
    };
    no_hello.truncate(no_hello.len());
    let mut garbage_frame = awaitscope_wire::preamble().to_vec();
    garbage_frame.extend(8u32.to_le_bytes());
    garbage_frame.extend([0xff; 8]);
    let bad: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        oversized,
        version,
        no_hello,
        garbage_frame,
        stream(66, 3, Some("wrong"), true),
        stream(67, 3, None, true),
    ];
    let mut joins = Vec::new();
    for bytes in bad {
        joins.push(tokio::spawn(async move {
            let _ = send(addr, &bytes).await;
        }));
    }
    // A silent peer: connects and says nothing.
    let silent = TcpStream::connect(addr).await.unwrap();
    for pid in 1..=3u32 {
        joins.push(tokio::spawn(async move {
            send(addr, &stream(pid, 20, Some("s3cret"), true))
                .await
                .unwrap();
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let h = srv.handle.clone();
    wait_until("refusals counted", || {
        let s = h.stats();
        s.refused_garbage.load(Ordering::Relaxed) == 2
            && s.refused_oversized.load(Ordering::Relaxed) == 1
            && s.refused_version.load(Ordering::Relaxed) == 1
            && s.refused_protocol.load(Ordering::Relaxed) == 1
            && s.refused_token.load(Ordering::Relaxed) == 2
            && s.refused_timeout.load(Ordering::Relaxed) == 1
    })
    .await;
    wait_until("good producers ingested", || {
        h.with_model(|m| (1..=3).all(|pid| live_tasks(m, pid) == 20))
    })
    .await;
    h.with_model(|m| {
        assert!(
            m.processes().all(|p| [1, 2, 3].contains(&p.key.pid)),
            "refused peers left no process"
        );
    });
    drop(silent);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_killed_mid_frame() {
    let srv = start(test_config()).await;
    let bytes = stream(5, 10, None, false);
    let cut = bytes.len() - 7;
    send(srv.addr, &bytes[..cut]).await.unwrap();
    let h = srv.handle.clone();
    wait_until("truncation noticed", || {
        h.stats().truncated.load(Ordering::Relaxed) == 1
    })
    .await;
    wait_until("complete frames applied", || {
        h.with_model(|m| {
            m.processes().any(|p| {
                p.key.pid == 5 && p.tasks.len() == 9 && !p.connected && !p.notes.is_empty()
            })
        })
    })
    .await;
    // The collector still accepts producers.
    send(srv.addr, &stream(6, 2, None, true)).await.unwrap();
    wait_until("next producer", || h.with_model(|m| live_tasks(m, 6) == 2)).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_restart_while_producer_runs() {
    let first = start(test_config()).await;
    let addr = first.addr;
    // The producer: one task, then keeps streaming until the collector
    // goes away; reconnects and re-sends its state.
    let mut b = StreamBuilder::new(42, 4242);
    b.hello("steady", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("long-lived"), None, 10);
    b.poll(t, 11, 12);
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&b.recording()).await.unwrap();
    let h1 = first.handle.clone();
    wait_until("first collector sees the task", || {
        h1.with_model(|m| live_tasks(m, 42) == 1)
    })
    .await;
    first.stop().await;
    // Writes fail once the collector is gone.
    let mut ts = 100;
    let mut failed = false;
    for _ in 0..2000 {
        b.poll(t, ts, ts + 1);
        ts += 10;
        if conn.write_all(&b.take_bytes()).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(failed, "writes to a stopped collector fail");
    // A new collector on the same address; the producer reconnects.
    let cfg = ServerConfig {
        listen: addr,
        ..test_config()
    };
    let second = start(cfg).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    b.hello("steady", None, true);
    b.thread(0);
    let mut re = StreamBuilder::new(42, 4242);
    re.thread(0);
    let again = re.spawn(&TaskOpts::named("long-lived"), None, 10);
    assert_eq!(again, t);
    let mut bytes = awaitscope_wire::preamble().to_vec();
    bytes.extend(b.take_bytes());
    bytes.extend(re.take_bytes());
    conn.write_all(&bytes).await.unwrap();
    b.poll(t, ts + 100, ts + 101);
    b.goodbye();
    conn.write_all(&b.take_bytes()).await.unwrap();
    let h2 = second.handle.clone();
    wait_until("second collector rebuilt the process", || {
        h2.with_model(|m| {
            m.processes().any(|p| {
                p.key.pid == 42
                    && p.info.as_ref().is_some_and(|i| i.reconnect)
                    && p.tasks.len() == 1
                    && p.ended
            })
        })
    })
    .await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_dir_recordings_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig {
        record_dir: Some(dir.path().to_owned()),
        ..test_config()
    };
    let srv = start(cfg).await;
    send(srv.addr, &stream(11, 25, None, true)).await.unwrap();
    send(srv.addr, &stream(12, 5, None, true)).await.unwrap();
    let h = srv.handle.clone();
    wait_until("both ended", || {
        h.with_model(|m| m.processes().filter(|p| p.ended && !p.connected).count() == 2)
    })
    .await;
    srv.stop().await;
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let mut model = Model::default();
    let inputs = recording::load_files(&mut model, &files).unwrap();
    assert!(inputs.iter().all(|i| !i.truncated && i.error.is_none()));
    assert_eq!(live_tasks(&model, 11), 25);
    assert_eq!(live_tasks(&model, 12), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_are_counted() {
    let cfg = ServerConfig {
        queue_capacity: 1,
        ..test_config()
    };
    let srv = start(cfg).await;
    let h = srv.handle.clone();
    let addr = srv.addr;
    let producer = tokio::spawn(async move { send(addr, &stream(21, 300, None, true)).await });
    // Hold the model (a slow consumer) until frames were dropped.
    let h2 = h.clone();
    tokio::task::spawn_blocking(move || {
        h2.with_model(|_| {
            let deadline = std::time::Instant::now() + PATIENCE;
            while h2.stats().dropped_frames.load(Ordering::Relaxed) < 10 {
                assert!(std::time::Instant::now() < deadline, "no drops");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    })
    .await
    .unwrap();
    producer.await.unwrap().unwrap();
    wait_until("ended", || h.with_model(|m| m.processes().any(|p| p.ended))).await;
    wait_until("drop finding", || {
        h.with_model(|m| m.findings().of_kind(FindingKind::DroppedEvents).count() == 1)
    })
    .await;
    let dropped = h.stats().dropped_events.load(Ordering::Relaxed);
    let report = h.report();
    assert_eq!(report.dropped.collector, dropped);
    assert!(live_tasks_report(&report) < 300);
    srv.stop().await;
}

/// A producer that falls quiet after a burst, its connection still open,
/// holds none of the ingest's share of the budget once its frames are
/// applied: neither its read buffer nor the applied frames given back to
/// it for their memory to be reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_producer_holds_no_ingest_memory() {
    let srv = start(test_config()).await;
    let h = srv.handle.clone();
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    conn.write_all(&stream(7, 300, None, false)).await.unwrap();
    wait_until("its 300 tasks applied", || {
        h.with_model(|m| live_tasks(m, 7)) == 300
    })
    .await;
    assert!(h.budget().peak(Share::Ingest) > 0, "the burst held memory");
    wait_until("nothing held for the quiet producer", || {
        h.budget().used(Share::Ingest) == 0
    })
    .await;
    assert_eq!(h.connections().0, 1, "the producer is still connected");
    drop(conn);
    srv.stop().await;
}

fn live_tasks_report(r: &awaitscope_collector::Report) -> usize {
    r.tasks.len()
}

#[tokio::test]
async fn remote_binds_need_allow_remote_and_token() {
    let cfg = ServerConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..test_config()
    };
    assert!(matches!(
        Server::bind(cfg.clone()).await,
        Err(ServeError::RemoteNotAllowed(_))
    ));
    let cfg = ServerConfig {
        allow_remote: true,
        ..cfg
    };
    assert!(matches!(
        Server::bind(cfg.clone()).await,
        Err(ServeError::TokenRequired)
    ));
    let cfg = ServerConfig {
        token: Some("t".into()),
        ..cfg
    };
    assert!(Server::bind(cfg).await.is_ok());
}
