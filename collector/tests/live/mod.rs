//! A collector server running in the test's runtime, shared by the live
//! tests (`tcp.rs`, `viewers.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use awaitscope_collector::ingest::server::{Server, ServerConfig, ServerHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous: conditions are awaited, never timed.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Running {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        self.stop_with(|| ()).await;
    }

    /// Tells the server to stop, runs `between`, and waits until it has
    /// stopped.
    pub async fn stop_with(mut self, between: impl FnOnce()) {
        let _ = self.stop.take().unwrap().send(());
        between();
        self.task.await.unwrap();
    }
}

/// Loopback, an ephemeral port, and `handshake_timeout` for a peer's hello.
pub fn test_config(handshake_timeout: Duration) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout,
        scan_interval: Duration::from_millis(50),
        ..ServerConfig::default()
    }
}

pub async fn start(cfg: ServerConfig) -> Running {
    let server = Server::bind(cfg).await.expect("bind");
    let addr = server.local_addr();
    let handle = server.handle();
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(server.run_until(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        handle,
        stop: Some(stop),
        task,
    }
}

pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
