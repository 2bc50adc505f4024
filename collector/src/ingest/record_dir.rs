//! `serve --record-dir`: each producer's stream written to a recording of
//! its own, as the producer sent it but for its token, in a file created
//! new (never over an earlier one) and readable by its owner only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use awaitscope_wire::{Body, ProcessKey};
use tokio::io::{AsyncWriteExt, BufWriter};
use tracing::{info, warn};

use super::state::ServerState;

/// A `Hello` frame as it is recorded: without the producer's token, which
/// must never reach a file. Frames that do not decode are kept as they are
/// (the connection was refused before, or will be).
fn without_token(hello: Vec<u8>) -> Vec<u8> {
    let Ok(Some((mut frame, _))) = awaitscope_wire::decode_frame(&hello, 0) else {
        return hello;
    };
    match &mut frame.body {
        Body::Hello(info) if info.token.is_some() => info.token = None,
        _ => return hello,
    }
    let mut out = Vec::with_capacity(hello.len());
    match awaitscope_wire::encode_frame(&frame, &mut out) {
        Ok(()) => out,
        Err(_) => hello,
    }
}

/// A producer's recording being written, and where.
pub(crate) struct Recording {
    pub(crate) writer: BufWriter<tokio::fs::File>,
    pub(crate) path: std::path::PathBuf,
}

/// Opens the recording of the producer `key` (named `name`) in `dir`,
/// starting with its `hello` (the raw frame); failures are logged and
/// counted (`None`: the connection goes on unrecorded).
pub(crate) async fn open(
    state: &ServerState,
    dir: &Path,
    key: ProcessKey,
    name: &str,
    hello: Vec<u8>,
    peer: SocketAddr,
) -> Option<Recording> {
    let id = state.conn_ids.fetch_add(1, Ordering::Relaxed);
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let base = format!("{name}-{}-{}-{id}", key.pid, key.start_unix_ns);
    let hello = without_token(hello);
    let mut path = dir.join(format!("{base}.rec"));
    let res = async {
        // Never over an earlier recording: a `serve` restarted numbers its
        // connections from 0 again, and a producer that reconnects keeps
        // its pid and start time.
        let mut n = 0;
        let f = loop {
            let mut o = tokio::fs::OpenOptions::new();
            o.write(true).create_new(true);
            // Recordings hold what programs did: readable by their owner.
            #[cfg(unix)]
            o.mode(0o600);
            match o.open(&path).await {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                    n += 1;
                    path = dir.join(format!("{base}-{n}.rec"));
                }
                Err(e) => return Err(e),
            }
        };
        let mut w = BufWriter::new(f);
        w.write_all(&awaitscope_wire::preamble()).await?;
        w.write_all(&hello).await?;
        w.flush().await?;
        Ok::<_, std::io::Error>(w)
    }
    .await;
    match res {
        Ok(writer) => {
            info!(%peer, "recording to {}", path.display());
            Some(Recording { writer, path })
        }
        Err(e) => {
            state.stats.record_errors.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "cannot record to {}: {e}", path.display());
            None
        }
    }
}
