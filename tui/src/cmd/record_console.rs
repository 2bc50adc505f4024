//! `awaitscope record --console URL [--duration D] --out FILE`: records a
//! program that runs console-subscriber, read over its gRPC API, until
//! `--duration` or Ctrl-C (or SIGTERM). The recording is an ordinary one
//! (`report` and `replay` read it; its process says it came from
//! console). Frames are written and flushed as each update comes, so an
//! end by a kill keeps everything up to the last update; a clean end
//! closes the process with its goodbye.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

use awaitscope_collector::console::{self, SourceEvent};
use awaitscope_wire::FrameWriter;
use tokio::sync::mpsc;

use super::EXIT_BAD_INPUT;

/// Records the program at `url` into `out`. `Err` carries the exit code
/// when there is nothing to summarise (a bad URL, nothing recorded, the
/// file not writable).
pub fn record(url: &str, duration: Option<Duration>, out: &Path) -> Result<(), u8> {
    if let Err(e) = console::client::endpoint(url) {
        eprintln!("awaitscope record: {e}");
        return Err(EXIT_BAD_INPUT);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("awaitscope record: cannot start the runtime: {e}");
            EXIT_BAD_INPUT
        })?;
    rt.block_on(record_async(url, duration, out))
}

async fn record_async(url: &str, duration: Option<Duration>, out: &Path) -> Result<(), u8> {
    let (tx, mut rx) = mpsc::channel(64);
    let source = tokio::spawn(console::run(url.to_string(), tx, stop(duration)));
    let mut writer: Option<FrameWriter<BufWriter<File>>> = None;
    let mut frames = 0u64;
    let mut failed = None;
    // Told that console named no task (`ConsoleError::NoTasks`): the next
    // `Connected` takes it back.
    let mut no_tasks = false;
    while let Some(ev) = rx.recv().await {
        match ev {
            SourceEvent::Connected(u) if std::mem::take(&mut no_tasks) => {
                eprintln!("awaitscope record: console-subscriber at {u} names tasks now");
            }
            SourceEvent::Connected(u) => {
                eprintln!("awaitscope record: connected to console-subscriber at {u}");
            }
            SourceEvent::Problem(p) => {
                no_tasks = matches!(p, console::ConsoleError::NoTasks { .. });
                eprintln!("awaitscope record: {p}");
            }
            SourceEvent::Frames(batch) => {
                if failed.is_some() {
                    continue;
                }
                if writer.is_none() {
                    match File::create(out).and_then(|f| FrameWriter::new(BufWriter::new(f))) {
                        Ok(w) => writer = Some(w),
                        Err(e) => {
                            eprintln!("awaitscope record: cannot write {}: {e}", out.display());
                            failed = Some(EXIT_BAD_INPUT);
                            source.abort();
                            continue;
                        }
                    }
                }
                let Some(w) = writer.as_mut() else { continue };
                let written = batch
                    .iter()
                    .try_for_each(|f| w.write_frame(f).map_err(|e| e.to_string()))
                    .and_then(|()| w.flush().map_err(|e| e.to_string()));
                match written {
                    Ok(()) => frames += batch.len() as u64,
                    Err(e) => {
                        // What was written stays readable up to here.
                        eprintln!(
                            "awaitscope record: writing {} failed, stopped: {e}",
                            out.display()
                        );
                        failed = Some(EXIT_BAD_INPUT);
                        source.abort();
                    }
                }
            }
        }
    }
    let fatal = matches!(source.await, Ok(Err(_)));
    if let Some(code) = failed {
        return Err(code);
    }
    if fatal {
        return Err(EXIT_BAD_INPUT);
    }
    if frames == 0 {
        eprintln!(
            "awaitscope record: nothing recorded: console-subscriber at {url} never answered; \
             {} not written",
            out.display()
        );
        return Err(EXIT_BAD_INPUT);
    }
    Ok(())
}

/// Completes after `duration`, or at Ctrl-C or SIGTERM.
async fn stop(duration: Option<Duration>) {
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = timer => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    tokio::select! {
        _ = timer => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
