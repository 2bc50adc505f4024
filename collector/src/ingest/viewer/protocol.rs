//! The viewer protocol's messages (see the module doc of `viewer`): the
//! greeting and the reply, frames, controls and snapshots as bytes, and
//! how a viewer's model takes each message.

use awaitscope_wire::{
    decode_frame, encode_frame, limits, DecodeError, EncodeError, Frame, ProcessKey, SpanId,
};
use serde::{Deserialize, Serialize};

use crate::detect::{Observation, Occurrence, Recollection};
use crate::model::ProcessSnapshot;
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

pub(super) const STATUS_ACCEPTED: u8 = 0;
pub(super) const STATUS_REFUSED: u8 = 1;
pub(super) const KIND_FRAME: u8 = 0;
pub(super) const KIND_CONTROL: u8 = 1;
pub(super) const KIND_SNAPSHOT: u8 = 2;

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

pub(super) fn control_len(c: &Control) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use awaitscope_wire::{Body, MAX_FRAME_LEN};

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
