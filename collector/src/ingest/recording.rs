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

use awaitscope_wire::{DecodeError, FrameReader, ProcessKey};

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

/// Reads one recording from `reader` into `model`. Errors only when the
/// header is not a valid one; later problems are reported in the result
/// and as model warnings.
pub fn load_reader<R: Read>(
    model: &mut Model,
    name: &str,
    reader: R,
) -> Result<InputReport, DecodeError> {
    let mut frames = FrameReader::new(reader)?;
    let mut rep = InputReport {
        path: name.to_string(),
        ..InputReport::default()
    };
    let mut last: Option<ProcessKey> = None;
    let mut seen: BTreeSet<ProcessKey> = BTreeSet::new();
    loop {
        let before = frames.offset();
        match frames.next_frame() {
            Ok(Some(f)) => {
                rep.frames += 1;
                rep.bytes += frames.offset() - before;
                last = Some(f.process);
                seen.insert(f.process);
                model.apply(&f);
                // Its event vector holds the next frame's events.
                awaitscope_wire::recycle(f);
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
    Ok(rep)
}
