//! Viewers: UIs (`awaitscope --connect ADDR`) watching a running
//! `awaitscope serve` over TCP, on the same port as the producers.
//!
//! # Protocol
//!
//! The server tells producers and viewers apart by the first bytes a peer
//! sends: producers open with the wire [`MAGIC`](awaitscope_wire::MAGIC)
//! (`AWSCOPE\0`), viewers with [`VIEWER_MAGIC`] (`AWSVIEW\0`). The two
//! differ at the fourth byte, so at most four bytes are read before the
//! connection is routed.
//!
//! ```text
//! viewer → serve:  greeting = VIEWER_MAGIC (8) version (u16 LE) token_len (u16 LE) token (token_len bytes, UTF-8)
//!                  and nothing after it (any further byte closes the connection)
//! serve → viewer:  reply    = VIEWER_MAGIC (8) version (u16 LE) status (u8)
//!                  status 0 (accepted): message*
//!                  status 1 (refused):  reason_len (u16 LE) reason (UTF-8), then close
//! message          = kind (u8) body
//!   kind 0, frame:   a wire frame exactly as producers send it: length (u32 LE) postcard `Frame`
//!   kind 1, control: length (u32 LE) JSON of a [`Control`] (at most MAX_CONTROL_LEN bytes)
//!   kind 2, snapshot: length (u32 LE) postcard [`ProcessSnapshot`], starting with its format
//!                    version (at most MAX_SNAPSHOT_LEN bytes)
//! ```
//!
//! The token rules are the producers' (`--token` / `AWAITSCOPE_TOKEN`,
//! required with `--allow-remote`): a viewer must present the token when the
//! server has one. An empty token field means none.
//!
//! # Late join
//!
//! A viewer that connects while producers already run first gets, per
//! process, a snapshot of the server's model of it (a
//! [`ProcessSnapshot`], installed with [`Model::restore_process`]): its
//! `Hello` (without the token), callsites, threads and their entered spans,
//! live spans, live and retained tasks with their whole history (poll
//! counts, busy and scheduled times, histograms, wakes and wakers, poll
//! state, await tree, logs), the summaries of the completed tasks no longer
//! kept in detail, resources with their holders and state, the producer's
//! and the server's drop counts, notes, counters, and whether it is still
//! connected. Each snapshot is followed by the detector episodes in
//! progress in that process ([`Control::Ongoing`] per task,
//! [`Control::OngoingInProcess`] for what detectors remember of the
//! process as a whole: deadlocks in progress, drops reported), which
//! are detector memory rather than model state; then come the server's
//! findings ([`Control::Finding`], with their deduplication keys so that the
//! viewer's own detectors add to them rather than repeat them), the
//! occurrences still open in them with what is settled of their findings
//! ([`Control::Unsettled`], [`Control::Open`]: a `long_poll` later found
//! `descheduled` is then taken back by the viewer too, as by a viewer that
//! was there from the start) and [`Control::Synced`]. From then on the viewer gets every frame the server
//! applies, in the order it applies them.
//!
//! The snapshots are taken from the server's [`Model`] rather than from a
//! log of the frames seen: the model already holds exactly the state,
//! bounded by its own retention, so a late join costs no memory and no work
//! on the ingest path until a viewer actually connects. They are taken and
//! the viewer registered under the model lock, so no frame is missed or
//! seen twice between the two.
//!
//! A snapshot message is at most [`MAX_SNAPSHOT_LEN`] bytes: a process
//! whose snapshot would be larger is sent without its completed tasks, then
//! without the live tasks, resources and spans that do not fit, with a note
//! saying so (at a few hundred bytes per task, the cap holds well over
//! 100,000 live tasks). A viewer refuses a longer snapshot message, or one
//! that does not decode, as bad data from the server, before touching its
//! model.
//!
//! # Slow viewers
//!
//! Each viewer has its own queue, bounded in bytes
//! ([`ServerConfig::viewer_queue_bytes`](super::server::ServerConfig)). The
//! task applying frames only ever appends to it; when it is full, event
//! batches for that viewer are dropped and counted (per process), while
//! their callsites and thread names are kept and sent ahead of the next
//! batch that fits, with a [`Control::Dropped`] the viewer adds to the
//! process's dropped-events count. Frames other than event batches (hello,
//! drop counts, goodbye) and control messages are small and never dropped.
//! A slow viewer therefore never slows ingest or other viewers.
//!
//! What every viewer holds (queued, or taken and being written) is also
//! held against the viewers' share of the server's memory budget, and one
//! viewer may hold at most its part of that share (the share divided by the
//! viewers connected), so that many viewers that do not read stay within
//! the budget together.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use awaitscope_wire::{
    decode_frame, encode_frame, limits, Body, DecodeError, EncodeError, Event, Frame, ProcessKey,
    SpanId,
};
use serde::{Deserialize, Serialize};

use super::budget::Reservation;
use crate::detect::{Observation, Occurrence, Recollection};
use crate::model::{Process, ProcessSnapshot, Task};
use crate::{Finding, FindingKind, Model};

/// First eight bytes a viewer sends (and the server answers with).
pub const VIEWER_MAGIC: [u8; 8] = *b"AWSVIEW\0";

/// Version of the viewer protocol (2: late joins get snapshots; 4: and
/// the findings' open occurrences).
pub const VIEWER_VERSION: u16 = 4;

/// Largest control message, in bytes.
pub const MAX_CONTROL_LEN: usize = 64 * 1024;

/// Largest snapshot message (one process), in bytes.
pub const MAX_SNAPSHOT_LEN: usize = 64 << 20;

/// Longest token a viewer may present, in bytes (the wire's string cap).
pub const MAX_TOKEN_LEN: usize = limits::MAX_STR_LEN;

/// Length of the greeting before the token.
pub const GREETING_HEAD: usize = 12;
/// Longest greeting a server reads (with a token over the cap, refused).
pub const GREETING_MAX: usize = GREETING_HEAD + MAX_TOKEN_LEN + 1;

const STATUS_ACCEPTED: u8 = 0;
const STATUS_REFUSED: u8 = 1;
const KIND_FRAME: u8 = 0;
const KIND_CONTROL: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;

/// A message of the server that is not a wire frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// The initial state has been sent: the viewer's model now matches the
    /// server's.
    Synced,
    /// A producer's connection ended (`clean`: after its `Goodbye`, or the
    /// note was already sent).
    Disconnected {
        /// The process.
        process: ProcessKey,
        /// True when the producer said `Goodbye` (or the note was already sent).
        clean: bool,
    },
    /// Events of `process` this viewer will not see: dropped by the
    /// server's ingest queue or by this viewer's queue. Not cumulative.
    Dropped {
        /// The process.
        process: ProcessKey,
        /// Events lost since the last `Dropped` for the process (not cumulative).
        events: u64,
    },
    /// A note about a process's stream (truncated, lost...).
    Note {
        /// The process.
        process: ProcessKey,
        /// The note.
        text: String,
    },
    /// Forget the findings made so far: the server's follow.
    ResetFindings,
    /// The server evicted this ended process from its model after its
    /// retention: the viewer forgets it too (its findings stay).
    Evicted {
        /// The process.
        process: ProcessKey,
    },
    /// A finding of the server's model, with its deduplication key (sent
    /// on joining: the events it was found in are history).
    Finding {
        /// Deduplication key within kind and process.
        key: String,
        /// The finding.
        finding: Finding,
    },
    /// What is settled of a finding of the server's model that shows
    /// occurrences still open (sent on joining, after the `Finding`s): the
    /// finding without them, `None` when it has only those.
    Unsettled {
        /// Deduplication key within kind and process.
        key: String,
        /// The finding's kind.
        kind: FindingKind,
        /// The finding's process.
        process: ProcessKey,
        /// The finding without its open occurrences.
        settled: Option<Finding>,
    },
    /// An occurrence still open in the server's findings (its verdict may
    /// change: a `long_poll` later found `descheduled`), with its latest
    /// observation; sent on joining after the `Unsettled`s, oldest first,
    /// so that the viewer's detectors take it back as the server's do.
    Open {
        /// The occurrence.
        occurrence: Occurrence,
        /// Its latest observation.
        observation: Observation,
    },
    /// Detector episodes in progress on a task (continued, not counted
    /// again, by the viewer's detectors).
    Ongoing {
        /// The process.
        process: ProcessKey,
        /// The task.
        task: SpanId,
        /// The kinds of finding.
        kinds: Vec<FindingKind>,
    },
    /// Detector episodes in progress in a process as a whole (continued,
    /// not counted again, by the viewer's detectors).
    OngoingInProcess {
        /// The process.
        process: ProcessKey,
        /// What its detectors remember of it (the deadlocks in progress,
        /// the drops already reported as findings).
        memory: Vec<Recollection>,
    },
}

/// One message from the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A frame, to apply to the model.
    Frame(Frame),
    /// A control message.
    Control(Control),
    /// The state of one process, to install in the model.
    Snapshot(Box<ProcessSnapshot>),
}

/// Why the server's byte stream could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Unknown message kind.
    #[error("unknown message kind {kind} at offset {offset}")]
    Kind {
        /// The kind byte.
        kind: u8,
        /// Byte offset of the message in the server's stream.
        offset: u64,
    },
    /// A frame did not decode.
    #[error("{0}")]
    Frame(DecodeError),
    /// A control message was too long or not valid.
    #[error("bad control message at offset {offset}: {reason}")]
    Control {
        /// Byte offset of the message in the server's stream.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// A snapshot message was too long or not valid.
    #[error("bad snapshot message at offset {offset}: {reason}")]
    Snapshot {
        /// Byte offset of the message in the server's stream.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
}

/// The greeting a viewer sends, with `token` (empty or `None`: none).
/// Tokens over [`MAX_TOKEN_LEN`] bytes are sent whole, and refused.
pub fn greeting(token: Option<&str>) -> Vec<u8> {
    let token = token.unwrap_or("").as_bytes();
    let len = token.len().min(u16::MAX as usize);
    let mut out = Vec::with_capacity(GREETING_HEAD + len);
    out.extend_from_slice(&VIEWER_MAGIC);
    out.extend_from_slice(&VIEWER_VERSION.to_le_bytes());
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&token[..len]);
    out
}

/// Whether `buf` (the first bytes of a connection) may be a viewer's
/// greeting: a prefix of [`VIEWER_MAGIC`], or starting with it.
pub fn is_viewer_prefix(buf: &[u8]) -> bool {
    let n = buf.len().min(VIEWER_MAGIC.len());
    buf[..n] == VIEWER_MAGIC[..n]
}

/// A parsed greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    /// The token, if any.
    pub token: Option<String>,
    /// Bytes the greeting used.
    pub len: usize,
}

/// Why a greeting is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GreetingError {
    /// Not the viewer magic.
    #[error("not an awaitscope viewer (bad magic)")]
    BadMagic,
    /// Another protocol version.
    #[error("unsupported viewer protocol version {found} (this serve speaks version {VIEWER_VERSION}); use the same awaitscope version for serve and UI")]
    Version {
        /// The version sent.
        found: u16,
    },
    /// A token over the cap.
    #[error("token of {0} bytes exceeds the cap of {MAX_TOKEN_LEN} bytes")]
    TokenTooLong(usize),
    /// A token that is not UTF-8.
    #[error("token is not UTF-8")]
    TokenNotUtf8,
}

/// Parses a greeting from the start of `buf`; `Ok(None)`: more bytes needed.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<Greeting>, GreetingError> {
    if !is_viewer_prefix(buf) {
        return Err(GreetingError::BadMagic);
    }
    if buf.len() < 10 {
        return Ok(None);
    }
    let version = u16::from_le_bytes([buf[8], buf[9]]);
    if version != VIEWER_VERSION {
        return Err(GreetingError::Version { found: version });
    }
    if buf.len() < GREETING_HEAD {
        return Ok(None);
    }
    let len = u16::from_le_bytes([buf[10], buf[11]]) as usize;
    if len > MAX_TOKEN_LEN {
        return Err(GreetingError::TokenTooLong(len));
    }
    if buf.len() < GREETING_HEAD + len {
        return Ok(None);
    }
    let token = std::str::from_utf8(&buf[GREETING_HEAD..GREETING_HEAD + len])
        .map_err(|_| GreetingError::TokenNotUtf8)?;
    Ok(Some(Greeting {
        token: (!token.is_empty()).then(|| token.to_string()),
        len: GREETING_HEAD + len,
    }))
}

/// The server's reply: accepted (`refused: None`) or refused with a reason.
pub fn reply(refused: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&VIEWER_MAGIC);
    out.extend_from_slice(&VIEWER_VERSION.to_le_bytes());
    match refused {
        None => out.push(STATUS_ACCEPTED),
        Some(reason) => {
            out.push(STATUS_REFUSED);
            let r = &reason.as_bytes()[..reason.len().min(limits::MAX_STR_LEN)];
            out.extend_from_slice(&(r.len() as u16).to_le_bytes());
            out.extend_from_slice(r);
        }
    }
    out
}

/// Appends `frame` as a message to `out` (unchanged on error).
pub fn encode_frame_msg(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.push(KIND_FRAME);
    encode_frame(frame, out).inspect_err(|_| out.truncate(start))
}

fn control_len(c: &Control) -> usize {
    serde_json::to_vec(c).map_or(usize::MAX, |v| v.len())
}

/// Appends `c` as a message to `out`.
pub fn encode_control(c: &Control, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(c).expect("control messages serialize");
    out.push(KIND_CONTROL);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
}

/// Decodes one message from the start of `buf`: the message and the bytes
/// it used, or `Ok(None)` when `buf` does not hold a whole one yet.
/// `offset` (of `buf` in the stream) is only used in errors.
pub fn decode_message(buf: &[u8], offset: u64) -> Result<Option<(Message, usize)>, MessageError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    match kind {
        KIND_FRAME => Ok(decode_frame(&buf[1..], offset + 1)
            .map_err(MessageError::Frame)?
            .map(|(f, used)| (Message::Frame(f), used + 1))),
        KIND_CONTROL => {
            if buf.len() < 5 {
                return Ok(None);
            }
            let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > MAX_CONTROL_LEN {
                return Err(MessageError::Control {
                    offset,
                    reason: format!("{len} bytes exceed the cap of {MAX_CONTROL_LEN}"),
                });
            }
            if buf.len() < 5 + len {
                return Ok(None);
            }
            let c =
                serde_json::from_slice(&buf[5..5 + len]).map_err(|e| MessageError::Control {
                    offset,
                    reason: e.to_string(),
                })?;
            Ok(Some((Message::Control(c), 5 + len)))
        }
        KIND_SNAPSHOT => {
            if buf.len() < 5 {
                return Ok(None);
            }
            let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > MAX_SNAPSHOT_LEN {
                return Err(MessageError::Snapshot {
                    offset,
                    reason: format!("{len} bytes exceed the cap of {MAX_SNAPSHOT_LEN}"),
                });
            }
            if buf.len() < 5 + len {
                return Ok(None);
            }
            let s =
                ProcessSnapshot::decode(&buf[5..5 + len]).map_err(|e| MessageError::Snapshot {
                    offset,
                    reason: e.to_string(),
                })?;
            Ok(Some((Message::Snapshot(Box::new(s)), 5 + len)))
        }
        kind => Err(MessageError::Kind { kind, offset }),
    }
}

/// Applies a message to a viewer's model; `wall_unix_ns` is the arrival
/// time (see [`Model::apply_live`]).
pub fn apply(model: &mut Model, msg: &Message, wall_unix_ns: u64) {
    match msg {
        Message::Frame(f) => model.apply_live(f, wall_unix_ns),
        Message::Snapshot(s) => model.restore_process_live(s, wall_unix_ns),
        Message::Control(Control::Synced) => {}
        Message::Control(Control::Disconnected { process, clean }) => {
            model.disconnected(*process, *clean)
        }
        Message::Control(Control::Dropped { process, events }) => {
            model.note_collector_drops(*process, *events)
        }
        Message::Control(Control::Note { process, text }) => model.note(*process, text.clone()),
        Message::Control(Control::ResetFindings) => model.clear_findings(),
        Message::Control(Control::Evicted { process }) => {
            model.evict(process);
        }
        Message::Control(Control::Finding { key, finding }) => {
            model.restore_finding(key.clone(), finding.clone())
        }
        Message::Control(Control::Unsettled {
            key,
            kind,
            process,
            settled,
        }) => model.restore_unsettled(key.clone(), *kind, *process, settled.clone()),
        Message::Control(Control::Open {
            occurrence,
            observation,
        }) => model.restore_open(*occurrence, observation.clone()),
        Message::Control(Control::Ongoing {
            process,
            task,
            kinds,
        }) => {
            model.resume_episodes(*process, *task, kinds);
        }
        Message::Control(Control::OngoingInProcess { process, memory }) => {
            model.resume_recollections(*process, memory);
        }
    }
}

// ---------------------------------------------------------------------------
// The rebuild: the server's state, as snapshots and control messages.

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

// ---------------------------------------------------------------------------
// The server side: viewers' queues.

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frame applied by the server, encoded once for all viewers.
pub(crate) struct Outgoing {
    bytes: Arc<[u8]>,
    process: ProcessKey,
    /// Events in it, when it is an event batch (the only droppable kind).
    events: Option<u64>,
    /// Its callsites and named threads, kept when it is dropped.
    sticky: Vec<Event>,
}

impl Outgoing {
    /// Encodes a frame the server applied (a `Hello` without its token).
    pub(crate) fn frame(f: &Frame) -> Option<Outgoing> {
        let mut bytes = Vec::new();
        match &f.body {
            Body::Hello(info) if info.token.is_some() => {
                let mut info = info.clone();
                info.token = None;
                let hello = Frame {
                    body: Body::Hello(info),
                    ..f.clone()
                };
                encode_frame_msg(&hello, &mut bytes).ok()?;
            }
            _ => encode_frame_msg(f, &mut bytes).ok()?,
        }
        let (events, sticky) = match &f.body {
            Body::Events(ev) => (
                Some(ev.len() as u64),
                ev.iter()
                    .filter(|e| {
                        matches!(e, Event::Callsite(_) | Event::Thread { name: Some(_), .. })
                    })
                    .cloned()
                    .collect(),
            ),
            _ => (None, Vec::new()),
        };
        Some(Outgoing {
            bytes: bytes.into(),
            process: f.process,
            events,
            sticky,
        })
    }

    /// A control message (never dropped).
    pub(crate) fn control(c: &Control, process: ProcessKey) -> Outgoing {
        let mut bytes = Vec::new();
        encode_control(c, &mut bytes);
        Outgoing {
            bytes: bytes.into(),
            process,
            events: None,
            sticky: Vec::new(),
        }
    }
}

/// Most callsites and thread names kept per viewer from dropped batches;
/// beyond it they are dropped too (and later events of theirs misread).
const MAX_STICKY: usize = limits::MAX_BATCH;

struct Queue {
    items: VecDeque<Arc<[u8]>>,
    bytes: usize,
    /// Taken by the viewer's task and not yet written.
    inflight: usize,
    /// `bytes + inflight`, held against the viewers' share of the budget.
    held: Reservation,
    closed: bool,
    /// Dropped events not yet told to the viewer, per process.
    untold: BTreeMap<ProcessKey, u64>,
    /// Callsites and thread names of dropped batches, per process.
    sticky: BTreeMap<ProcessKey, Vec<Event>>,
    sticky_len: usize,
    dropped_frames: u64,
    dropped_events: u64,
}

impl Queue {
    fn push(&mut self, b: Arc<[u8]>) {
        self.bytes += b.len();
        // Control messages and what was kept of dropped batches are
        // small, and never dropped: held even past the share.
        if !self.held.resize(self.bytes + self.inflight) {
            self.held.force(self.bytes + self.inflight);
        }
        self.items.push_back(b);
    }

    /// Queues what was kept of dropped batches and tells the drops.
    fn tell_drops(&mut self) {
        for (process, events) in std::mem::take(&mut self.sticky) {
            let mut out = Vec::new();
            for chunk in events.chunks(limits::MAX_BATCH) {
                let f = Frame {
                    process,
                    seq: 0,
                    body: Body::Events(chunk.to_vec()),
                };
                if encode_frame_msg(&f, &mut out).is_err() {
                    // Split down to frames that fit.
                    for e in chunk {
                        let f = Frame {
                            process,
                            seq: 0,
                            body: Body::Events(vec![e.clone()]),
                        };
                        let _ = encode_frame_msg(&f, &mut out);
                    }
                }
            }
            self.push(out.into());
        }
        self.sticky_len = 0;
        for (process, events) in std::mem::take(&mut self.untold) {
            let mut out = Vec::new();
            encode_control(&Control::Dropped { process, events }, &mut out);
            self.push(out.into());
        }
    }
}

/// One viewer's queue: the applier appends, the viewer's task writes out.
pub(crate) struct ViewerQueue {
    q: Mutex<Queue>,
    notify: tokio::sync::Notify,
    cap: usize,
}

/// What happened to a push.
pub(crate) enum Pushed {
    Queued,
    Dropped { events: u64 },
    Closed,
}

impl ViewerQueue {
    pub(crate) fn new(cap_bytes: usize, held: Reservation) -> ViewerQueue {
        ViewerQueue {
            q: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                inflight: 0,
                held,
                closed: false,
                untold: BTreeMap::new(),
                sticky: BTreeMap::new(),
                sticky_len: 0,
                dropped_frames: 0,
                dropped_events: 0,
            }),
            notify: tokio::sync::Notify::new(),
            cap: cap_bytes.max(1),
        }
    }

    /// Appends `o`, or drops it if it is an event batch and the queue is
    /// full: over its cap, over `fair` (its part of the viewers' share), or
    /// with no room left in the share (at least one item is always let in).
    pub(crate) fn push(&self, o: &Outgoing, fair: usize) -> Pushed {
        let mut q = lock(&self.q);
        if q.closed {
            return Pushed::Closed;
        }
        if let Some(events) = o.events {
            let after = q.bytes + q.inflight + o.bytes.len();
            let held = q.held.bytes();
            let full = !q.items.is_empty()
                && (after > self.cap.min(fair) || !q.held.resize(after.max(held)));
            if full {
                *q.untold.entry(o.process).or_default() += events;
                q.dropped_frames += 1;
                q.dropped_events += events;
                let room = MAX_STICKY.saturating_sub(q.sticky_len);
                let keep = o.sticky.len().min(room);
                if keep > 0 {
                    q.sticky_len += keep;
                    q.sticky
                        .entry(o.process)
                        .or_default()
                        .extend(o.sticky[..keep].iter().cloned());
                }
                return Pushed::Dropped { events };
            }
        }
        if !q.untold.is_empty() {
            q.tell_drops();
        }
        q.push(o.bytes.clone());
        drop(q);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Counts `events` of `process` the viewer will not get (dropped before
    /// they reached the server's model); told with the next write.
    pub(crate) fn note_drops(&self, process: ProcessKey, events: u64) {
        let mut q = lock(&self.q);
        *q.untold.entry(process).or_default() += events;
        drop(q);
        self.notify.notify_one();
    }

    /// Takes everything queued (telling pending drops first when nothing
    /// else is queued); empty when nothing is.
    pub(crate) fn take(&self, out: &mut Vec<Arc<[u8]>>) {
        let mut q = lock(&self.q);
        if q.items.is_empty() && !q.untold.is_empty() {
            q.tell_drops();
        }
        out.extend(q.items.drain(..));
        q.inflight += q.bytes;
        q.bytes = 0;
    }

    /// `bytes` taken with [`ViewerQueue::take`] were written out.
    pub(crate) fn written(&self, bytes: usize) {
        let mut q = lock(&self.q);
        q.inflight = q.inflight.saturating_sub(bytes);
        let held = q.bytes + q.inflight;
        q.held.resize(held);
    }

    /// Waits until something may be queued.
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Stops queueing (the viewer left).
    pub(crate) fn close(&self) {
        let mut q = lock(&self.q);
        q.closed = true;
        q.items.clear();
        q.bytes = 0;
        q.inflight = 0;
        q.held.resize(0);
    }

    /// Frames and events dropped so far.
    pub(crate) fn dropped(&self) -> (u64, u64) {
        let q = lock(&self.q);
        (q.dropped_frames, q.dropped_events)
    }
}

/// The viewers of a server. Lock order: the model, then this, then a
/// queue.
#[derive(Default)]
pub(crate) struct Viewers {
    list: Mutex<Vec<Arc<ViewerQueue>>>,
    count: AtomicUsize,
}

impl Viewers {
    /// Whether any viewer is connected (a hint: check again under the lock).
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn list(&self) -> MutexGuard<'_, Vec<Arc<ViewerQueue>>> {
        lock(&self.list)
    }

    /// Adds a viewer (call under the model lock, with its rebuild).
    pub(crate) fn add(&self, q: Arc<ViewerQueue>) {
        let mut l = lock(&self.list);
        l.push(q);
        self.count.store(l.len(), Ordering::Relaxed);
    }

    pub(crate) fn remove(&self, q: &Arc<ViewerQueue>) {
        q.close();
        let mut l = lock(&self.list);
        l.retain(|x| !Arc::ptr_eq(x, q));
        self.count.store(l.len(), Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// The client side (blocking; the UI runs it on a thread of its own).

/// Why a viewer could not connect or lost its connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The server refused the viewer.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer is not an awaitscope serve (or a different version).
    #[error("not an awaitscope serve: {0}")]
    NotServe(String),
    /// The server closed the connection.
    #[error("connection closed by serve")]
    Closed,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The server sent something undecodable.
    #[error("bad data from serve: {0}")]
    Decode(MessageError),
}

/// A viewer's connection to a server.
pub struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    chunk: Vec<u8>,
    offset: u64,
}

impl Client {
    /// Resolves `addr` (`host:port`), connects within `timeout`, greets
    /// with `token` and reads the reply.
    pub fn connect(
        addr: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|_| ClientError::Resolve(addr.to_string()))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => return Client::handshake(s, token, timeout),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => ClientError::Connect(e),
            None => ClientError::Resolve(addr.to_string()),
        })
    }

    /// Greets over an open `stream` and reads the reply (within `timeout`).
    pub fn handshake(
        mut stream: TcpStream,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let peer = stream.peer_addr().map_err(ClientError::Io)?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(timeout))
            .map_err(ClientError::Io)?;
        stream
            .write_all(&greeting(token))
            .map_err(ClientError::Io)?;
        let mut head = [0u8; 11];
        read_exact(&mut stream, &mut head)?;
        if head[..8] != VIEWER_MAGIC {
            return Err(ClientError::NotServe(
                "bad reply (is this an awaitscope serve, and of this version?)".into(),
            ));
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version != VIEWER_VERSION {
            return Err(ClientError::NotServe(format!(
                "viewer protocol version {version} (this UI speaks version {VIEWER_VERSION})"
            )));
        }
        match head[10] {
            STATUS_ACCEPTED => {}
            STATUS_REFUSED => {
                let mut len = [0u8; 2];
                read_exact(&mut stream, &mut len)?;
                let len = (u16::from_le_bytes(len) as usize).min(limits::MAX_STR_LEN);
                let mut reason = vec![0u8; len];
                read_exact(&mut stream, &mut reason)?;
                return Err(ClientError::Refused(
                    String::from_utf8_lossy(&reason).into_owned(),
                ));
            }
            s => return Err(ClientError::NotServe(format!("unknown reply status {s}"))),
        }
        Ok(Client {
            stream,
            peer,
            buf: Vec::with_capacity(64 * 1024),
            chunk: vec![0; 64 * 1024],
            offset: 0,
        })
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Reads what arrives within `wait` (at least one read) and appends the
    /// whole messages to `out`.
    pub fn read(&mut self, out: &mut Vec<Message>, wait: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(ClientError::Io)?;
            match self.stream.read(&mut self.chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.buf.extend_from_slice(&self.chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
            let before = out.len();
            let mut pos = 0;
            while let Some((m, used)) =
                decode_message(&self.buf[pos..], self.offset).map_err(ClientError::Decode)?
            {
                pos += used;
                self.offset += used as u64;
                out.push(m);
            }
            self.buf.drain(..pos);
            if out.len() > before || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8]) -> Result<(), ClientError> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ClientError::NotServe(
            "the connection closed during the handshake (an older serve, or not awaitscope?)"
                .into(),
        ),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::NotServe("no reply to the greeting in time".into())
        }
        _ => ClientError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use awaitscope_wire::MAX_FRAME_LEN;

    #[test]
    fn greeting_round_trips_and_refuses_bad_input() {
        let g = greeting(Some("s3cret"));
        for n in 0..g.len() {
            assert_eq!(parse_greeting(&g[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert_eq!(
            parse_greeting(&g),
            Ok(Some(Greeting {
                token: Some("s3cret".into()),
                len: g.len()
            }))
        );
        assert_eq!(
            parse_greeting(&greeting(None)).unwrap().unwrap().token,
            None
        );
        assert_eq!(parse_greeting(b"AWSCOPE\0"), Err(GreetingError::BadMagic));
        let mut v = greeting(None);
        v[8] = 9;
        assert_eq!(parse_greeting(&v), Err(GreetingError::Version { found: 9 }));
        let mut long = greeting(None);
        long[10..12].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            parse_greeting(&long),
            Err(GreetingError::TokenTooLong(u16::MAX as usize))
        );
        let mut bad = greeting(Some("ab"));
        bad[12] = 0xff;
        assert_eq!(parse_greeting(&bad), Err(GreetingError::TokenNotUtf8));
        // Producers and viewers part at the fourth byte.
        assert!(is_viewer_prefix(b"AWS"));
        assert!(!is_viewer_prefix(b"AWSC"));
    }

    #[test]
    fn messages_decode_whole_only_and_refuse_garbage() {
        let mut out = Vec::new();
        encode_control(&Control::Synced, &mut out);
        let f = Frame {
            process: ProcessKey {
                pid: 1,
                start_unix_ns: 2,
            },
            seq: 3,
            body: Body::Goodbye,
        };
        encode_frame_msg(&f, &mut out).unwrap();
        let mut pos = 0;
        let mut got = Vec::new();
        for end in 0..=out.len() {
            while let Some((m, used)) = decode_message(&out[pos..end], 0).unwrap() {
                pos += used;
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![Message::Control(Control::Synced), Message::Frame(f)]
        );
        assert!(matches!(
            decode_message(&[7, 0, 0], 0),
            Err(MessageError::Kind { kind: 7, .. })
        ));
        let mut huge = vec![KIND_CONTROL];
        huge.extend(((MAX_CONTROL_LEN + 1) as u32).to_le_bytes());
        assert!(matches!(
            decode_message(&huge, 0),
            Err(MessageError::Control { .. })
        ));
        let mut bad = vec![KIND_CONTROL];
        bad.extend(3u32.to_le_bytes());
        bad.extend(b"{x}");
        assert!(matches!(
            decode_message(&bad, 0),
            Err(MessageError::Control { .. })
        ));
        let mut oversized = vec![KIND_FRAME];
        oversized.extend(((MAX_FRAME_LEN + 1) as u32).to_le_bytes());
        assert!(matches!(
            decode_message(&oversized, 0),
            Err(MessageError::Frame(DecodeError::FrameTooLarge { .. }))
        ));
    }
}
