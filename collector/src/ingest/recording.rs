//! Reading recordings (files written with `AWAITSCOPE_RECORD` or by
//! `awaitscope serve --record-dir`), several at once, into one model.
//!
//! A file that is not a recording at all (unreadable, empty, bad magic,
//! unsupported version) is an error. A recording cut short or corrupted
//! after a valid header is read up to its last good frame and reported with
//! a warning ([`InputReport::damaged`] tells a corrupted one from one cut
//! short). A process whose recording ends without its `Goodbye` (killed, or
//! still running) is reported with a warning that says when its last frame
//! was ([`warn_unended`]).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use awaitscope_wire::{DecodeError, Frame, FrameReader, ProcessKey};

use crate::report::InputReport;
use crate::units::{fmt_ns_brief, iso8601};
use crate::Model;

/// Why a recording could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why opening it failed.
        source: std::io::Error,
    },
    /// The file is not a recording this build can read.
    #[error("{path}: {source}")]
    NotARecording {
        /// The file.
        path: PathBuf,
        /// Why its preamble was refused (bad magic, newer version...).
        source: DecodeError,
    },
}

/// Reads the recording at `path` into `model`.
pub fn load_file(model: &mut Model, path: &Path) -> Result<InputReport, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(LoadError::Open {
            path: path.to_owned(),
            source: std::io::Error::other("is a directory"),
        });
    }
    // When the file was last written: how long after its last frame the
    // writer was still at it (a frame cut short by a kill).
    let written = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut rep = load_reader(
        model,
        &path.display().to_string(),
        BufReader::with_capacity(1 << 16, file),
    )
    .map_err(|source| LoadError::NotARecording {
        path: path.to_owned(),
        source,
    })?;
    rep.written_unix_ns = written;
    Ok(rep)
}

/// Reads several recordings into `model`, then ends the input
/// ([`Model::finish`]).
pub fn load_files<P: AsRef<Path>>(
    model: &mut Model,
    paths: &[P],
) -> Result<Vec<InputReport>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        out.push(load_file(model, p.as_ref())?);
    }
    model.finish();
    warn_unended(model, &out);
    Ok(out)
}

/// Warns, for each process of `inputs` that did not say goodbye in any of
/// them, that its recording stops before the process ended, and when: the
/// process clock and wall time of its last frame, and how long after it
/// the file was last written when that is known. Call it once every input
/// is read (a process may end in a later file than it started in).
pub fn warn_unended(model: &mut Model, inputs: &[InputReport]) {
    let mut warned = BTreeSet::new();
    let mut msgs = Vec::new();
    for input in inputs {
        for key in &input.processes {
            let Some(p) = model.process(key) else {
                continue;
            };
            if p.ended || !warned.insert(*key) {
                continue;
            }
            let last_wall = key.start_unix_ns.saturating_add(p.now);
            let mut msg = format!(
                "{}: process {} ({}) did not end: no goodbye (killed, or still running); \
                 the recording stops at its last frame, {} after the process started \
                 ({} UTC)",
                input.path,
                key.pid,
                p.name(),
                fmt_ns_brief(p.now),
                iso8601(last_wall),
            );
            // Past a day, the two clocks are not comparable (a synthetic
            // or copied file): not said.
            let day = 86_400 * 1_000_000_000;
            let after = input
                .written_unix_ns
                .filter(|w| *w > last_wall && *w - last_wall < day);
            if let Some(w) = after {
                msg.push_str(&format!(
                    ", and the file was last written {} after that frame",
                    fmt_ns_brief(w - last_wall)
                ));
            }
            msg.push_str(
                "; what the process did after that is missing (a killed process also loses \
                 what it had not flushed, up to 100 ms)",
            );
            msgs.push((*key, msg));
        }
    }
    for (key, msg) in msgs {
        model.note(key, msg.clone());
        model.warn(msg);
    }
}

/// Frames decoded ahead of the one being applied, at most (each at most
/// `limits::MAX_BATCH` events): enough that the decoding thread rarely
/// waits for the model, few enough to bound what they hold.
const DECODED_AHEAD: usize = 4;

/// What the decoding thread hands over: a frame (`None` at the end, or why
/// no more could be read) and the reader's offsets before and after it.
struct Decoded {
    frame: Result<Option<Frame>, DecodeError>,
    before: u64,
    after: u64,
}

/// Reads one recording from `reader` into `model`. Errors only when the
/// header is not a valid one; later problems are reported in the result
/// and as model warnings.
///
/// The frames are decoded on a thread of their own, a few ahead of the
/// model, which applies them here, in order: decoding is a large part of
/// reading a recording, and a collector serving live programs splits the
/// work the same way (each connection decodes its frames beside the task
/// applying them). Where no thread can be started, this one does both
/// (`apply_here`); what is read is the same either way.
pub fn load_reader<R: Read + Send>(
    model: &mut Model,
    name: &str,
    reader: R,
) -> Result<InputReport, DecodeError> {
    let mut frames = FrameReader::new(reader)?;
    let piped = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Decoded>(DECODED_AHEAD);
        // Applied frames go back to the decoding thread: their event
        // vectors hold its next frames' events.
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Frame>();
        let frames = &mut frames;
        let decoder = std::thread::Builder::new()
            .name("awaitscope-decode".into())
            .spawn_scoped(s, move || decode_ahead(frames, &tx, &back_rx));
        decoder.ok().map(|_| {
            apply_frames(
                model,
                name,
                || rx.recv().ok(),
                // The decoder gone (it stopped at the end or an error):
                // the frame is merely dropped.
                |f| drop(back_tx.send(f)),
            )
        })
    });
    Ok(piped.unwrap_or_else(|| apply_here(model, name, &mut frames)))
}

/// Decodes and applies `frames` on this thread, one after the other.
fn apply_here<R: Read>(model: &mut Model, name: &str, frames: &mut FrameReader<R>) -> InputReport {
    apply_frames(
        model,
        name,
        || Some(decode_one(frames)),
        awaitscope_wire::recycle,
    )
}

/// The next frame of `frames`, with its offsets.
fn decode_one<R: Read>(frames: &mut FrameReader<R>) -> Decoded {
    let before = frames.offset();
    let frame = frames.next_frame();
    Decoded {
        frame,
        before,
        after: frames.offset(),
    }
}

/// Decodes `frames` into `tx` until its end, an error, or the receiver
/// gone, reusing the event vectors of the frames sent back on `back`.
fn decode_ahead<R: Read>(
    frames: &mut FrameReader<R>,
    tx: &std::sync::mpsc::SyncSender<Decoded>,
    back: &std::sync::mpsc::Receiver<Frame>,
) {
    loop {
        while let Ok(f) = back.try_recv() {
            awaitscope_wire::recycle(f);
        }
        let d = decode_one(frames);
        let last = !matches!(d.frame, Ok(Some(_)));
        if tx.send(d).is_err() || last {
            return;
        }
    }
}

/// Applies the frames `next` gives to `model` until the end or an error,
/// handing each applied frame to `done`; what was read is reported.
fn apply_frames(
    model: &mut Model,
    name: &str,
    mut next: impl FnMut() -> Option<Decoded>,
    mut done: impl FnMut(Frame),
) -> InputReport {
    let mut rep = InputReport {
        path: name.to_string(),
        ..InputReport::default()
    };
    let mut last: Option<ProcessKey> = None;
    let mut seen: BTreeSet<ProcessKey> = BTreeSet::new();
    while let Some(Decoded {
        frame,
        before,
        after,
    }) = next()
    {
        match frame {
            Ok(Some(f)) => {
                rep.frames += 1;
                rep.bytes += after - before;
                last = Some(f.process);
                seen.insert(f.process);
                model.apply(&f);
                done(f);
            }
            Ok(None) => break,
            Err(e) => {
                rep.truncated = matches!(e, DecodeError::Truncated { .. });
                let msg = if rep.truncated && rep.frames > 0 {
                    format!(
                        "{name}: recording truncated ({e}); reported up to the last complete frame"
                    )
                } else {
                    format!(
                        "{name}: damaged: unreadable past byte {}: {e}; reported up to the \
                         last good frame ({} frame(s) read), the rest is lost",
                        before, rep.frames
                    )
                };
                if let Some(k) = last {
                    model.note(k, msg.clone());
                }
                model.warn(msg);
                rep.error = Some(e.to_string());
                break;
            }
        }
    }
    if let Some(k) = last {
        // The recording is over; the process is no longer streaming to it.
        model.disconnected(k, true);
    }
    rep.processes = seen.into_iter().collect();
    rep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{StreamBuilder, TaskOpts};
    use crate::Report;

    /// A recording of `tasks` tasks polled and ended (over enough frames
    /// that several are decoded ahead).
    fn recording(tasks: u64) -> Vec<u8> {
        let mut b = StreamBuilder::new(7, 0);
        b.hello("piped", None, false);
        b.thread(0);
        for i in 0..tasks {
            let t = b.spawn(&TaskOpts::named("t"), None, 10 * i + 1);
            b.poll(t, 10 * i + 2, 10 * i + 3);
            b.close(t, awaitscope_wire::CloseKind::Completed, 10 * i + 4);
            b.flush();
        }
        b.goodbye();
        b.recording()
    }

    /// What reading `bytes` both ways gives: the input's report, and the
    /// model's JSON report and warnings.
    fn read_both(bytes: &[u8]) -> [(InputReport, String, Vec<String>); 2] {
        let piped = {
            let mut m = Model::default();
            let rep = load_reader(&mut m, "r", bytes).expect("a recording");
            m.finish();
            (rep, m)
        };
        let here = {
            let mut m = Model::default();
            let mut frames = FrameReader::new(bytes).expect("a recording");
            let rep = apply_here(&mut m, "r", &mut frames);
            m.finish();
            (rep, m)
        };
        [piped, here].map(|(rep, m)| {
            let report = serde_json::to_string(&Report::from_model(&m)).expect("json");
            (rep, report, m.warnings.clone())
        })
    }

    /// Decoding on its own thread reads what one thread reads: a whole
    /// recording, one cut inside a frame, and one with junk after its good
    /// frames give the same input reports, model and warnings.
    #[test]
    fn decoding_ahead_reads_what_one_thread_reads() {
        let whole = recording(200);
        let cut = whole[..whole.len() * 2 / 3].to_vec();
        let mut junk = whole.clone();
        junk.extend([0xff; 64]);
        for (what, bytes) in [("whole", whole), ("cut", cut), ("junk", junk)] {
            let [piped, here] = read_both(&bytes);
            assert_eq!(format!("{:?}", piped.0), format!("{:?}", here.0), "{what}");
            assert_eq!(piped.1, here.1, "{what}");
            assert_eq!(piped.2, here.2, "{what}");
            let rep = &piped.0;
            match what {
                // Its `Hello`, a frame per task, its `Goodbye`.
                "whole" => assert!(rep.frames == 202 && rep.error.is_none(), "{rep:?}"),
                "cut" => assert!(
                    rep.truncated && !rep.damaged() && rep.frames > 100,
                    "{rep:?}"
                ),
                _ => assert!(rep.damaged() && rep.frames == 202, "{rep:?}"),
            }
        }
    }
}
