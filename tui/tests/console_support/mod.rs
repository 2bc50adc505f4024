//! Programs that run console-subscriber (`console_subscriber::init()`) and
//! nothing of awaitscope, with bugs planted on purpose, and a healthy one;
//! and how a test runs one: the test binary runs itself again with
//! [`PROGRAM_ENV`] naming the program (its `console_program` test runs it),
//! console-subscriber bound to a free loopback port (`TOKIO_CONSOLE_BIND`).
//! Every program ends by itself.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Names the program the test binary runs instead of its tests.
pub const PROGRAM_ENV: &str = "AWAITSCOPE_CONSOLE_TEST_PROGRAM";

/// Runs the program [`PROGRAM_ENV`] names, if any (the `console_program`
/// test of each binary calls this).
pub fn run_program_if_asked() {
    let Ok(name) = std::env::var(PROGRAM_ENV) else {
        return;
    };
    let secs: u64 = std::env::var("AWAITSCOPE_CONSOLE_TEST_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        console_subscriber::init();
        let end = tokio::time::sleep(Duration::from_secs(secs));
        tokio::pin!(end);
        match name.as_str() {
            "blocking" => blocking(end.as_mut()).await,
            "lost_waker" => lost_waker(end.as_mut()).await,
            "mutex" => mutex(end.as_mut()).await,
            "healthy" => healthy(end.as_mut()).await,
            "deadlock" => deadlock(end.as_mut()).await,
            "never_yields" => never_yields(end.as_mut()).await,
            "busy_yield" => busy_yield(end.as_mut()).await,
            "no_tasks" => end.as_mut().await,
            "late_tasks" => late_tasks(end.as_mut()).await,
            other => panic!("no program {other}"),
        }
    });
    // Leave at once: the runtime's tasks (a lost waker's, a stuck one's)
    // would keep its drop waiting.
    std::process::exit(0);
}

#[track_caller]
fn spawn_named<F>(name: &str, f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::task::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn")
}

type End<'a> = std::pin::Pin<&'a mut tokio::time::Sleep>;

/// A task that blocks its worker for 300 ms in each poll (a
/// `std::thread::sleep` in async code), then waits a second.
async fn blocking(end: End<'_>) {
    spawn_named("checkout", async {
        loop {
            std::thread::sleep(Duration::from_millis(300));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    end.await;
}

/// A task pending on a future that never stores its waker: nothing can
/// wake it again.
async fn lost_waker(end: End<'_>) {
    spawn_named("orphan", async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::future::poll_fn(|_cx| std::task::Poll::<()>::Pending).await;
    });
    end.await;
}

/// `holder` takes a Mutex and waits for a message that never comes while
/// holding it; `waiter` waits for the Mutex for ever.
async fn mutex(end: End<'_>) {
    let lock = std::sync::Arc::new(tokio::sync::Mutex::new(0u32));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let l = lock.clone();
    spawn_named("holder", async move {
        let _g = l.lock().await;
        let _ = rx.await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let l = lock.clone();
    spawn_named("waiter", async move {
        let mut g = l.lock().await;
        *g += 1;
    });
    end.await;
    drop(tx);
}

/// A task whose first poll never returns (a busy loop with no await).
async fn never_yields(end: End<'_>) {
    spawn_named("spinner", async {
        loop {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    end.await;
}

/// A task polling for work that is never there by waking itself in its
/// poll, over and over (busy-looping through the scheduler). (tokio's
/// `yield_now` defers its wake to after the poll, which console does not
/// count as a self-wake.)
async fn busy_yield(end: End<'_>) {
    spawn_named("poller", async {
        std::future::poll_fn(|cx| {
            std::thread::sleep(Duration::from_micros(500));
            cx.waker().wake_by_ref();
            std::task::Poll::<()>::Pending
        })
        .await;
    });
    end.await;
}

/// Two tasks taking two Mutexes in opposite orders: each holds one and
/// waits for the other.
async fn deadlock(end: End<'_>) {
    let a = std::sync::Arc::new(tokio::sync::Mutex::new(0u32));
    let b = std::sync::Arc::new(tokio::sync::Mutex::new(0u32));
    let (a1, b1) = (a.clone(), b.clone());
    spawn_named("transfer-ab", async move {
        let _a = a1.lock().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _b = b1.lock().await;
    });
    spawn_named("transfer-ba", async move {
        let _b = b.lock().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _a = a.lock().await;
    });
    end.await;
}

/// The file whose creation lets program `late_tasks` on `addr` spawn its
/// first task.
pub fn go_file(addr: SocketAddr) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("awaitscope-console-go-{}", addr.port()))
}

/// No task until [`go_file`] exists, then one (`late`), waiting.
async fn late_tasks(end: End<'_>) {
    let addr: SocketAddr = std::env::var("TOKIO_CONSOLE_BIND")
        .ok()
        .and_then(|a| a.parse().ok())
        .expect("TOKIO_CONSOLE_BIND");
    while !go_file(addr).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spawn_named("late", tokio::time::sleep(Duration::from_secs(60)));
    end.await;
}

/// A healthy service: a producer and a consumer over a channel, a ticker,
/// workers sharing a Mutex briefly, short-lived request tasks, work handed
/// to `spawn_blocking`, and tasks that yield now and then.
async fn healthy(end: End<'_>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(16);
    spawn_named("producer", async move {
        let mut i = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            i += 1;
            if tx.send(i).await.is_err() {
                return;
            }
        }
    });
    spawn_named("consumer", async move {
        let mut sum = 0;
        while let Some(v) = rx.recv().await {
            sum += v;
        }
        sum
    });
    spawn_named("ticker", async {
        let mut t = tokio::time::interval(Duration::from_millis(50));
        loop {
            t.tick().await;
        }
    });
    let shared = std::sync::Arc::new(tokio::sync::Mutex::new(0u64));
    for w in 0..3 {
        let s = shared.clone();
        spawn_named(&format!("worker-{w}"), async move {
            loop {
                {
                    let mut g = s.lock().await;
                    *g += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
    }
    spawn_named("spawner", async {
        loop {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let h = spawn_named("request", async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                tokio::task::yield_now().await;
                42
            });
            let _ = h.await;
            if rand_ish().is_multiple_of(5) {
                let _ = tokio::task::spawn_blocking(|| {
                    std::thread::sleep(Duration::from_millis(120));
                })
                .await;
            }
        }
    });
    end.await;
}

fn rand_ish() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_micros())
}

/// A program running, killed when dropped.
pub struct Program {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Program {
    /// The URL of its console-subscriber.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released: another program could take
/// it meanwhile, which the caller sees as a program that does not answer).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Starts program `name` for `secs` seconds (this test binary again), and
/// waits until its console-subscriber listens.
pub fn start(name: &str, secs: u64) -> Program {
    start_at(name, secs, free_addr())
}

/// [`start`] on `addr`.
pub fn start_at(name: &str, secs: u64, addr: SocketAddr) -> Program {
    let exe = std::env::current_exe().expect("the test binary");
    let child = Command::new(exe)
        .args([
            "--exact",
            "console_program",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROGRAM_ENV, name)
        .env("AWAITSCOPE_CONSOLE_TEST_SECS", secs.to_string())
        .env("TOKIO_CONSOLE_BIND", addr.to_string())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the program starts");
    let p = Program { child, addr };
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "program {name} never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}
