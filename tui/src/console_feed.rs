//! `awaitscope --console URL`: the UI over a program that runs
//! console-subscriber. The embedded collector ([`LiveFeed`], on a free
//! loopback port) gets the program as a stream of its own, read over
//! console's gRPC API and forwarded to it by a runtime of this feed
//! (`awaitscope_collector::console::forward`); the header says how reading
//! the program goes (connected, or why not).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use awaitscope_collector::console::forward::{forward_with, Status};
use awaitscope_collector::console::ConsoleError;

use crate::feed::{Feed, LiveFeed};
use crate::snapshot::{Snapshot, TaskKey};
use crate::ui::app::ReplayCmd;

/// The embedded collector, fed by a console-subscriber program.
pub struct ConsoleFeed {
    live: LiveFeed,
    url: String,
    status: Arc<Mutex<(String, bool)>>,
    _rt: tokio::runtime::Runtime,
}

impl ConsoleFeed {
    /// Starts the embedded collector and reading the program at `url`.
    pub fn start(url: &str) -> Result<ConsoleFeed, String> {
        let live = LiveFeed::start(SocketAddr::from(([127, 0, 0, 1], 0)), "collector {addr}")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("console")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let status = Arc::new(Mutex::new((format!("connecting to {url}"), false)));
        let st = status.clone();
        let set = move |s: Status| {
            let v = match s {
                Status::Connected(u) => (format!("console {u}"), true),
                // The header is one line: the notice's gist, first.
                Status::Problem(ConsoleError::NoTasks { url, updates }) => (
                    format!(
                        "console {url}: no task named in {updates} updates (none spawned yet, \
                         or a filter keeps tokio's task spans from console's layer)"
                    ),
                    false,
                ),
                Status::Problem(p) => (p.to_string(), false),
                Status::Stopped(why) => (format!("stopped: {why}"), false),
            };
            *st.lock().unwrap_or_else(|e| e.into_inner()) = v;
        };
        rt.spawn(forward_with(url.to_string(), live.addr(), None, set));
        Ok(ConsoleFeed {
            live,
            url: url.to_string(),
            status,
            _rt: rt,
        })
    }

    /// The URL read.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Feed for ConsoleFeed {
    fn poll(&mut self) -> bool {
        self.live.poll()
    }

    fn snapshot(&mut self, detail: Option<TaskKey>) -> Snapshot {
        self.live.snapshot(detail)
    }

    fn status(&self) -> (String, bool) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn control(&mut self, c: ReplayCmd) {
        self.live.control(c);
    }
}
