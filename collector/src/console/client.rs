//! The client of console-subscriber's gRPC API: connects to the program,
//! follows its updates (`WatchUpdates`), maps them ([`Mapper`]) and hands
//! the frames on; reconnects with backoff when the program goes away, and
//! says why in words (nothing listening, not console's protocol, garbage).
//!
//! A reconnect to the same program goes on with its process (console sends
//! every live task again, with the same ids); a program restarted on the
//! same address is a new process.

use std::future::Future;
use std::time::Duration;

use awaitscope_wire::{Frame, ProcessKey};
use console_api::instrument::instrument_client::InstrumentClient;
use console_api::instrument::{InstrumentRequest, Update};
use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use tonic::Code;

use super::mapping::Mapper;

/// Largest update accepted from the program (gRPC message), in bytes: a
/// program with a hundred thousand live tasks sends its first update under
/// it.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the source reports to whoever runs it.
#[derive(Debug)]
pub enum SourceEvent {
    /// Frames of the program's process (a new program starts with its
    /// `Hello`).
    Frames(Vec<Frame>),
    /// Connected to the program (the URL); said again when console names
    /// the program's first task after [`ConsoleError::NoTasks`], which it
    /// takes back.
    Connected(String),
    /// Something went wrong; the source keeps trying (reconnecting) unless
    /// the error says it cannot.
    Problem(ConsoleError),
}

/// Why reading a program over console's API failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsoleError {
    /// The URL is not one (no retry).
    #[error(
        "{url}: not a console-subscriber URL ({why}); expected one like http://127.0.0.1:6669"
    )]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        why: String,
    },
    /// Nothing answered.
    #[error(
        "cannot reach console-subscriber at {url}: {why} (is the program running with \
         console_subscriber::init(), listening there? its address is TOKIO_CONSOLE_BIND); retrying"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport's error.
        why: String,
    },
    /// Something answered, but not console's gRPC service.
    #[error(
        "{url} does not speak console-subscriber's gRPC API ({why}): another program, or a \
         console protocol this build does not read; retrying"
    )]
    WrongProtocol {
        /// The URL.
        url: String,
        /// What the server answered.
        why: String,
    },
    /// The stream broke or the program ended.
    #[error("console-subscriber at {url}: {why}; reconnecting")]
    Lost {
        /// The URL.
        url: String,
        /// What happened.
        why: String,
    },
    /// Not a failure of the connection: console-subscriber has sent
    /// [`SILENT_UPDATES`] updates and named no task in any. The program
    /// has spawned none yet, or tokio's task spans never reach console's
    /// layer: a filter in front of it that keeps tokio's TRACE spans out
    /// (a global `EnvFilter` at `info`, say), or a tokio built without
    /// `--cfg tokio_unstable` (which console-subscriber 0.5 refuses to
    /// start with, older ones did not). Said once per program; reading
    /// goes on.
    #[error(
        "console-subscriber at {url} has named no task in {updates} updates: either the \
         program has spawned none yet, or tokio's task spans do not reach console's layer (a \
         filter in front of it must let `tokio=trace,runtime=trace` through, and tokio needs \
         `--cfg tokio_unstable`)"
    )]
    NoTasks {
        /// The URL.
        url: String,
        /// Updates received from the program so far.
        updates: u64,
    },
}

/// Updates with no task in any after which [`ConsoleError::NoTasks`] is
/// said: the first (the program's state when the connection started) and
/// two more (two publish intervals, 2 s by default).
pub const SILENT_UPDATES: u64 = 3;

impl ConsoleError {
    /// Whether trying again cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ConsoleError::BadUrl { .. })
    }
}

/// Checks `url` and makes its endpoint.
pub fn endpoint(url: &str) -> Result<Endpoint, ConsoleError> {
    let bad = |why: String| ConsoleError::BadUrl {
        url: url.to_string(),
        why,
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("it must start with http://".into()));
    }
    Endpoint::from_shared(url.to_string())
        .map(|e| e.connect_timeout(Duration::from_secs(3)).tcp_nodelay(true))
        .map_err(|e| bad(e.to_string()))
}

/// Reads the program at `url` until `stop` completes or `tx` is closed,
/// sending what it maps to `tx`; at the stop, the program's process gets
/// its `Goodbye` (its stream ends cleanly). Returns the first fatal error
/// (a bad URL), else `Ok` at the stop.
pub async fn run(
    url: String,
    tx: mpsc::Sender<SourceEvent>,
    stop: impl Future<Output = ()>,
) -> Result<(), ConsoleError> {
    let endpoint = match endpoint(&url) {
        Ok(e) => e,
        Err(e) => {
            let _ = tx.send(SourceEvent::Problem(e.clone())).await;
            return Err(e);
        }
    };
    let mut mapper = Mapper::new(&url);
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(100);
    let mut last_problem: Option<String> = None;
    // The program told of having no task (see `ConsoleError::NoTasks`),
    // and whether console has named one since.
    let mut told: Option<(ProcessKey, bool)> = None;
    loop {
        let mut got = false;
        let session = follow(&endpoint, &url, &mut mapper, &tx, &mut got, &mut told);
        let problem = tokio::select! {
            _ = &mut stop => break,
            p = session => p,
        };
        if tx.is_closed() {
            return Ok(());
        }
        if got {
            // Connected for a while: a new problem is news, and the next
            // attempt is soon.
            backoff = Duration::from_millis(100);
            last_problem = None;
        }
        match problem {
            Ok(()) => {}
            Err(p) => {
                let p = p.unwrap_or_else(|| ConsoleError::Lost {
                    url: url.clone(),
                    why: "the stream ended (the program exited?)".into(),
                });
                // Said once until something changes.
                let text = p.to_string();
                if last_problem.as_deref() != Some(text.as_str()) {
                    last_problem = Some(text);
                    let _ = tx.send(SourceEvent::Problem(p)).await;
                }
            }
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    if let Some(bye) = mapper.goodbye() {
        let _ = tx.send(SourceEvent::Frames(vec![bye])).await;
    }
    Ok(())
}

/// One connection: connects, then maps updates until the stream ends;
/// `got` says whether an update came; `told`, the program last told that
/// console named none of its tasks, and whether it has named one since.
/// `Err(None)`: it ended without a message worth giving beyond "lost".
async fn follow(
    endpoint: &Endpoint,
    url: &str,
    mapper: &mut Mapper,
    tx: &mpsc::Sender<SourceEvent>,
    got: &mut bool,
    told: &mut Option<(ProcessKey, bool)>,
) -> Result<(), Option<ConsoleError>> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Some(unreachable(url, &e)))?;
    let mut client = InstrumentClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let mut stream = client
        .watch_updates(InstrumentRequest {})
        .await
        .map_err(|s| Some(status_error(url, &s, false)))?
        .into_inner();
    let mut first = true;
    loop {
        let update: Update = match stream.message().await {
            Ok(Some(u)) => u,
            Ok(None) => return Err(None),
            Err(s) => return Err(Some(status_error(url, &s, !first))),
        };
        if update.now.is_none() {
            return Err(Some(ConsoleError::WrongProtocol {
                url: url.to_string(),
                why: "an update without its time".into(),
            }));
        }
        *got = true;
        if first {
            first = false;
            if mapper.key().is_some() && !mapper.same_program(&update) {
                // Another program on the same address: a new process. The
                // old one ends here without a goodbye (it was not seen
                // ending).
                *mapper = Mapper::new(url);
            }
            let _ = tx.send(SourceEvent::Connected(url.to_string())).await;
        }
        let frames = mapper.update(&update);
        if tx.send(SourceEvent::Frames(frames)).await.is_err() {
            return Ok(());
        }
        match (mapper.silent_updates(), mapper.key(), *told) {
            // Told once per program.
            (Some(updates), Some(key), t)
                if updates >= SILENT_UPDATES && t.is_none_or(|(k, _)| k != key) =>
            {
                *told = Some((key, false));
                let notice = ConsoleError::NoTasks {
                    url: url.to_string(),
                    updates,
                };
                let _ = tx.send(SourceEvent::Problem(notice)).await;
            }
            // Its first task since: whoever shows the notice takes it back.
            (None, Some(key), Some((k, false))) if k == key => {
                *told = Some((key, true));
                let _ = tx.send(SourceEvent::Connected(url.to_string())).await;
            }
            _ => {}
        }
    }
}

fn unreachable(url: &str, e: &tonic::transport::Error) -> ConsoleError {
    // The transport's error says "transport error"; its source says why.
    let mut why = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        why = format!("{why}: {s}");
        src = s.source();
    }
    ConsoleError::Unreachable {
        url: url.to_string(),
        why,
    }
}

/// A gRPC status in words: `streaming` when the stream had started.
fn status_error(url: &str, s: &tonic::Status, streaming: bool) -> ConsoleError {
    let why = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {}", s.code(), s.message())
    };
    match s.code() {
        Code::Unimplemented | Code::InvalidArgument | Code::NotFound => {
            ConsoleError::WrongProtocol {
                url: url.to_string(),
                why,
            }
        }
        Code::Internal | Code::Unknown if !streaming => ConsoleError::WrongProtocol {
            url: url.to_string(),
            why,
        },
        Code::Unavailable if !streaming => ConsoleError::Unreachable {
            url: url.to_string(),
            why,
        },
        _ => ConsoleError::Lost {
            url: url.to_string(),
            why,
        },
    }
}
