//! Reading recordings (files written with `AWAITSCOPE_RECORD` or by
//! `awaitscope serve --record-dir`), several at once, into one model.
//!
//! A file that is not a recording at all (unreadable, empty, bad magic,
//! unsupported version) is an error. A recording cut short or corrupted
//! after a valid header is read up to its last good frame and reported with
//! a warning.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use awaitscope_wire::{DecodeError, FrameReader, ProcessKey};

use crate::report::InputReport;
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
    load_reader(
        model,
        &path.display().to_string(),
        BufReader::with_capacity(1 << 16, file),
    )
    .map_err(|source| LoadError::NotARecording {
        path: path.to_owned(),
        source,
    })
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
    Ok(out)
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
    loop {
        let before = frames.offset();
        match frames.next_frame() {
            Ok(Some(f)) => {
                rep.frames += 1;
                rep.bytes += frames.offset() - before;
                last = Some(f.process);
                model.apply(&f);
                // Its event vector holds the next frame's events.
                awaitscope_wire::recycle(f);
            }
            Ok(None) => break,
            Err(e) => {
                rep.truncated = matches!(e, DecodeError::Truncated { .. });
                let msg = if rep.truncated {
                    format!(
                        "{name}: recording truncated ({e}); reported up to the last complete frame"
                    )
                } else {
                    format!(
                        "{name}: reading stopped early: {e}; reported up to the last good frame"
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
    Ok(rep)
}
