//! A program read over console's API, streamed to an awaitscope collector
//! (`awaitscope serve --console URL`, the UI's `--console URL`) as an
//! instrumented program streams itself: over TCP to the collector's port,
//! a connection per process, with the collector's token. The collector
//! needs nothing of its own for it: recordings (`--record-dir`), viewers
//! and reports take the program as any other.

use std::net::SocketAddr;

use awaitscope_wire::{encode_frame, preamble, Body, Frame, ProcessKey};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::client::{self, ConsoleError, SourceEvent};

/// How forwarding goes, for whoever shows it.
#[derive(Debug)]
pub enum Status {
    /// Reading the program at this URL.
    Connected(String),
    /// A problem reading it; still trying unless [`ConsoleError::is_fatal`].
    Problem(ConsoleError),
    /// Forwarding stopped, for this reason.
    Stopped(String),
}

/// [`forward_with`], logging its status (`tracing`): what `serve` does.
pub async fn forward(url: String, collector: SocketAddr, token: Option<String>) {
    forward_with(url, collector, token, |s| match s {
        Status::Connected(u) => info!(url = %u, "console-subscriber connected"),
        Status::Problem(p) => warn!("{p}"),
        Status::Stopped(why) => warn!(%collector, "console program no longer streamed: {why}"),
    })
    .await;
}

/// Reads the program at `url` and streams it to the collector at
/// `collector` until the collector goes away (what was sent is the
/// collector's) or the program's URL is refused; `status` is told how it
/// goes.
pub async fn forward_with(
    url: String,
    collector: SocketAddr,
    token: Option<String>,
    mut status: impl FnMut(Status) + Send,
) {
    let (tx, mut rx) = mpsc::channel(64);
    let source = tokio::spawn(client::run(url.clone(), tx, std::future::pending()));
    let mut conn: Option<(ProcessKey, TcpStream)> = None;
    let mut buf = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            SourceEvent::Connected(u) => status(Status::Connected(u)),
            SourceEvent::Problem(p) => {
                let fatal = p.is_fatal();
                status(Status::Problem(p));
                if fatal {
                    break;
                }
            }
            SourceEvent::Frames(frames) => {
                if let Err(e) = send(&mut conn, &mut buf, frames, collector, &token).await {
                    status(Status::Stopped(format!(
                        "the collector at {collector}: {e}"
                    )));
                    break;
                }
            }
        }
    }
    source.abort();
}

async fn send(
    conn: &mut Option<(ProcessKey, TcpStream)>,
    buf: &mut Vec<u8>,
    frames: Vec<Frame>,
    collector: SocketAddr,
    token: &Option<String>,
) -> std::io::Result<()> {
    for mut f in frames {
        if conn.as_ref().is_none_or(|(k, _)| *k != f.process) {
            // A new program (or the first): a connection of its own.
            let mut s = TcpStream::connect(collector).await?;
            s.write_all(&preamble()).await?;
            *conn = Some((f.process, s));
        }
        if let Body::Hello(h) = &mut f.body {
            h.token.clone_from(token);
        }
        buf.clear();
        encode_frame(&f, buf).map_err(std::io::Error::other)?;
        if let Some((_, s)) = conn.as_mut() {
            s.write_all(buf).await?;
        }
    }
    Ok(())
}
