//! The rebuild: what a viewer joining late gets, the server's state as
//! snapshots and control messages (see the module doc of `viewer`).

use super::protocol::{
    control_len, encode_control, Control, KIND_SNAPSHOT, MAX_CONTROL_LEN, MAX_SNAPSHOT_LEN,
};
use crate::detect::Recollection;
use crate::model::{Process, ProcessSnapshot, Task};
use crate::{Finding, FindingKind, Model};

/// Appends to `out` the messages that bring an empty model to `model`'s
/// state (see the module doc), ending with [`Control::Synced`].
pub fn rebuild(model: &Model, out: &mut Vec<u8>) {
    Rebuild::of(model).encode(out);
}

/// What a late viewer gets, taken from the model (under its lock) apart
/// from encoding it (after the lock is released).
pub struct Rebuild {
    /// Per process: its snapshot and its detector episodes in progress.
    processes: Vec<(ProcessSnapshot, Vec<Control>)>,
    /// The server's findings, with their keys.
    findings: Vec<(String, Finding)>,
    /// What is settled of those showing open occurrences
    /// ([`Control::Unsettled`]), then the open occurrences
    /// ([`Control::Open`]), oldest first.
    open: Vec<Control>,
}

impl Rebuild {
    /// Takes the state of `model`.
    pub fn of(model: &Model) -> Rebuild {
        Rebuild {
            processes: model
                .processes()
                .map(|p| (ProcessSnapshot::of(p), episodes(model, p)))
                .collect(),
            findings: model
                .findings()
                .keyed()
                .into_iter()
                .map(|(k, f)| (k.to_string(), f.clone()))
                .collect(),
            open: open_findings(model),
        }
    }

    /// Processes in it.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Appends the messages to `out`, ending with [`Control::Synced`].
    pub fn encode(self, out: &mut Vec<u8>) {
        for (snapshot, episodes) in &self.processes {
            encode_snapshot(snapshot, out);
            for c in episodes {
                encode_control(c, out);
            }
        }
        // Whatever findings the viewer's model had are replaced by the
        // server's.
        encode_control(&Control::ResetFindings, out);
        let findings = self
            .findings
            .into_iter()
            .map(|(key, finding)| Control::Finding { key, finding });
        for mut c in findings.chain(self.open) {
            if control_len(&c) > MAX_CONTROL_LEN {
                // Long traces or task lists: keep their start.
                shorten(&mut c);
            }
            if control_len(&c) <= MAX_CONTROL_LEN {
                encode_control(&c, out);
            }
        }
        encode_control(&Control::Synced, out);
    }
}

/// The open occurrences of `model`'s findings and what is settled of the
/// findings showing them, as the controls that bring them to a viewer.
fn open_findings(model: &Model) -> Vec<Control> {
    let findings = model.findings();
    let unsettled = findings
        .unsettled()
        .into_iter()
        .map(|(key, kind, process, settled)| Control::Unsettled {
            key: key.to_string(),
            kind,
            process,
            settled: settled.cloned(),
        });
    let open = findings.open().map(|(occurrence, o)| Control::Open {
        occurrence,
        observation: o.clone(),
    });
    unsettled.chain(open).collect()
}

/// Shortens a finding control over [`MAX_CONTROL_LEN`]: the start of its
/// traces and task lists (and of an observation's message) kept.
fn shorten(c: &mut Control) {
    let finding = match c {
        Control::Finding { finding, .. } => Some(finding),
        Control::Unsettled { settled, .. } => settled.as_mut(),
        Control::Open { observation, .. } => {
            observation.trace.truncate(16);
            observation.tasks.truncate(8);
            if observation.message.len() > 4096 {
                let mut end = 4096;
                while !observation.message.is_char_boundary(end) {
                    end -= 1;
                }
                observation.message.truncate(end);
            }
            None
        }
        _ => None,
    };
    if let Some(f) = finding {
        f.trace.truncate(16);
        f.tasks.truncate(8);
    }
}

/// Appends `s` as a message to `out`, within [`MAX_SNAPSHOT_LEN`] (see
/// [`ProcessSnapshot::encode_capped`]). A process whose snapshot cannot be
/// brought under the cap is sent as a note saying so.
pub fn encode_snapshot(s: &ProcessSnapshot, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(KIND_SNAPSHOT);
    out.extend_from_slice(&[0; 4]);
    s.encode_capped(MAX_SNAPSHOT_LEN, out);
    let len = out.len() - start - 5;
    if len > MAX_SNAPSHOT_LEN {
        out.truncate(start);
        encode_control(
            &Control::Note {
                process: s.key(),
                text: format!(
                    "the state of this process exceeds the viewer's snapshot cap of \
                     {MAX_SNAPSHOT_LEN} bytes: not shown here"
                ),
            },
            out,
        );
        return;
    }
    out[start + 1..start + 5].copy_from_slice(&(len as u32).to_le_bytes());
}

/// The detector episodes in progress in `p` (detector memory, not part of
/// the snapshot), so that the viewer's detectors continue them rather than
/// count them again.
fn episodes(model: &Model, p: &Process) -> Vec<Control> {
    let mut out = Vec::new();
    let mut tasks: Vec<&Task> = p.tasks.values().collect();
    tasks.sort_by_key(|t| t.id);
    for t in tasks {
        let kinds: Vec<FindingKind> = model.episodes(&p.key, t.id);
        if !kinds.is_empty() {
            out.push(Control::Ongoing {
                process: p.key,
                task: t.id,
                kinds,
            });
        }
    }
    let memory = model.recollections(&p.key);
    if memory.is_empty() {
        return out;
    }
    let mut c = Control::OngoingInProcess {
        process: p.key,
        memory,
    };
    // Deadlock keys are short: only a process with thousands of deadlocks
    // at once loses some (which the viewer then counts again).
    while control_len(&c) > MAX_CONTROL_LEN {
        let Control::OngoingInProcess { memory, .. } = &mut c else {
            break;
        };
        let mut shrunk = false;
        for r in memory.iter_mut() {
            if let Recollection::Deadlocks(keys) = r {
                shrunk |= !keys.is_empty();
                keys.truncate(keys.len() / 2);
            }
        }
        if !shrunk {
            // Nothing left to shorten: send no memory rather than too much.
            memory.clear();
            break;
        }
    }
    out.push(c);
    out
}
