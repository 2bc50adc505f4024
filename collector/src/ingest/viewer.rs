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
//! ```
//!
//! The token rules are the producers' (`--token` / `AWAITSCOPE_TOKEN`,
//! required with `--allow-remote`): a viewer must present the token when the
//! server has one. An empty token field means none.
//!
//! # Late join
//!
//! A viewer that connects while producers already run first gets, per
//! process, the frames that rebuild the server's model of it
//! ([`rebuild`]): its `Hello`, callsites, thread names, the completed tasks
//! still kept in detail (how and when they ended), live spans and tasks with
//! their fields, each live task's poll state and await tree, the producer's
//! and the server's drop counts, notes, and whether it is still connected;
//! then the server's findings and [`Control::Synced`]. From then on it gets every frame the
//! server applies, in the order it applies them.
//!
//! The rebuild is synthesized from the server's [`Model`] rather than from
//! a log of the frames seen: the model already holds exactly the live
//! state, bounded by its own retention, so a late join costs no memory and
//! no work on the ingest path until a viewer actually connects. (Keeping
//! per-producer copies of the live spans, as the producer's own reconnect
//! handshake does, would duplicate the model's largest maps for every
//! producer, all the time.) It is built and the viewer registered under the
//! model lock, so no frame is missed or seen twice between the two.
//!
//! What a rebuild cannot carry, because the wire format has no event for
//! it: history. Poll counts, busy and scheduled times and histograms of a
//! late viewer count from its join (each polled task shows its last poll,
//! after a zero-length first poll at its spawn that keeps detectors from
//! reading the spawn-to-now gap as starvation); the summaries of completed
//! tasks no longer kept in detail and the holders of resources are not
//! re-sent. The server's findings are, as control messages
//! ([`Control::Finding`]), with their deduplication keys so that the
//! viewer's own detectors add to them rather than repeat them.
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

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use awaitscope_wire::{
    decode_frame, encode_frame, limits, Body, CloseKind, DecodeError, EncodeError, Event, Frame,
    ProcessKey, SpanId, TreeNode, WakeOp,
};
use serde::{Deserialize, Serialize};

use crate::model::await_tree::AwaitTree;
use crate::model::{Process, Task, TaskState};
use crate::{Finding, FindingKind, Model};

/// First eight bytes a viewer sends (and the server answers with).
pub const VIEWER_MAGIC: [u8; 8] = *b"AWSVIEW\0";

/// Version of the viewer protocol.
pub const VIEWER_VERSION: u16 = 1;

/// Largest control message, in bytes.
pub const MAX_CONTROL_LEN: usize = 64 * 1024;

/// Longest token a viewer may present, in bytes (the wire's string cap).
pub const MAX_TOKEN_LEN: usize = limits::MAX_STR_LEN;

/// Length of the greeting before the token.
pub const GREETING_HEAD: usize = 12;

const STATUS_ACCEPTED: u8 = 0;
const STATUS_REFUSED: u8 = 1;
const KIND_FRAME: u8 = 0;
const KIND_CONTROL: u8 = 1;

/// The thread the rebuilt poll states are replayed on: one no producer uses
/// (producers number threads from 0; the model folds overflow into
/// `u32::MAX`).
const REBUILD_THREAD: u32 = u32::MAX - 1;

/// Most `Wake { op: Clone }` events sent to restore a task's live wakers.
const MAX_WAKER_CLONES: u64 = 1024;

/// A message of the server that is not a wire frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// The initial state has been sent: the viewer's model now matches the
    /// server's (as far as frames can rebuild it).
    Synced,
    /// A producer's connection ended (`clean`: after its `Goodbye`, or the
    /// note was already sent).
    Disconnected {
        /// The process.
        process: ProcessKey,
        /// Ended cleanly.
        clean: bool,
    },
    /// Events of `process` this viewer will not see: dropped by the
    /// server's ingest queue or by this viewer's queue. Not cumulative.
    Dropped {
        /// The process.
        process: ProcessKey,
        /// How many.
        events: u64,
    },
    /// A note about a process's stream (truncated, lost...).
    Note {
        /// The process.
        process: ProcessKey,
        /// The note.
        text: String,
    },
    /// Forget the findings made so far (of the rebuilt history): the
    /// server's follow.
    ResetFindings,
    /// A finding of the server's model, with its deduplication key (sent
    /// in the rebuild: the events it was found in are history).
    Finding {
        /// Deduplication key within kind and process.
        key: String,
        /// The finding.
        finding: Finding,
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
}

/// One message from the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A frame, to apply to the model.
    Frame(Frame),
    /// A control message.
    Control(Control),
}

/// Why the server's byte stream could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Unknown message kind.
    #[error("unknown message kind {kind} at offset {offset}")]
    Kind {
        /// The kind byte.
        kind: u8,
        /// Offset.
        offset: u64,
    },
    /// A frame did not decode.
    #[error("{0}")]
    Frame(DecodeError),
    /// A control message was too long or not valid.
    #[error("bad control message at offset {offset}: {reason}")]
    Control {
        /// Offset.
        offset: u64,
        /// Why.
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
        kind => Err(MessageError::Kind { kind, offset }),
    }
}

/// Applies a message to a viewer's model; `wall_unix_ns` is the arrival
/// time (see [`Model::apply_live`]).
pub fn apply(model: &mut Model, msg: &Message, wall_unix_ns: u64) {
    match msg {
        Message::Frame(f) => model.apply_live(f, wall_unix_ns),
        Message::Control(Control::Synced) => {}
        Message::Control(Control::Disconnected { process, clean }) => {
            model.disconnected(*process, *clean)
        }
        Message::Control(Control::Dropped { process, events }) => {
            model.note_collector_drops(*process, *events)
        }
        Message::Control(Control::Note { process, text }) => model.note(*process, text.clone()),
        Message::Control(Control::ResetFindings) => model.clear_findings(),
        Message::Control(Control::Finding { key, finding }) => {
            model.restore_finding(key.clone(), finding.clone())
        }
        Message::Control(Control::Ongoing {
            process,
            task,
            kinds,
        }) => {
            model.resume_episodes(*process, *task, kinds);
        }
    }
}

// ---------------------------------------------------------------------------
// The rebuild: frames that bring an empty model to the server's state.

/// Appends to `out` the messages that rebuild `model` in an empty one (see
/// the module doc), ending with [`Control::Synced`].
pub fn rebuild(model: &Model, out: &mut Vec<u8>) {
    for p in model.processes() {
        rebuild_process(model, p, out);
    }
    // The findings the viewer's model made of the rebuilt history are
    // replaced by the server's.
    encode_control(&Control::ResetFindings, out);
    for (key, f) in model.findings().keyed() {
        let mut c = Control::Finding {
            key: key.to_string(),
            finding: f.clone(),
        };
        if control_len(&c) > MAX_CONTROL_LEN {
            // Long traces or task lists: keep their start.
            if let Control::Finding { finding, .. } = &mut c {
                finding.trace.truncate(16);
                finding.tasks.truncate(8);
            }
        }
        if control_len(&c) <= MAX_CONTROL_LEN {
            encode_control(&c, out);
        }
    }
    encode_control(&Control::Synced, out);
}

fn frame(p: &Process, body: Body) -> Frame {
    // Sequence 0 never counts as a gap in the viewer's model.
    Frame {
        process: p.key,
        seq: 0,
        body,
    }
}

/// Encodes `events` as frames of at most [`limits::MAX_BATCH`] events,
/// splitting any that exceed the size cap.
fn encode_events(p: &Process, events: Vec<Event>, out: &mut Vec<u8>) {
    for chunk in events.chunks(limits::MAX_BATCH) {
        encode_split(p, chunk, out);
    }
}

fn encode_split(p: &Process, events: &[Event], out: &mut Vec<u8>) {
    if events.is_empty() {
        return;
    }
    match encode_frame_msg(&frame(p, Body::Events(events.to_vec())), out) {
        Err(EncodeError::FrameTooLarge(_)) if events.len() > 1 => {
            let (a, b) = events.split_at(events.len() / 2);
            encode_split(p, a, out);
            encode_split(p, b, out);
        }
        // One capped event always fits; nothing else can fail.
        _ => {}
    }
}

fn rebuild_process(model: &Model, p: &Process, out: &mut Vec<u8>) {
    if let Some(info) = &p.info {
        let mut info = info.clone();
        info.token = None;
        let _ = encode_frame_msg(&frame(p, Body::Hello(info)), out);
    }
    // Callsites first: everything else refers to them.
    let mut callsites: Vec<_> = p.callsites.values().collect();
    callsites.sort_by_key(|c| c.id);
    encode_events(
        p,
        callsites
            .into_iter()
            .cloned()
            .map(|c| Event::Callsite(Box::new(c)))
            .collect(),
        out,
    );
    // Thread names, in a frame of their own: a batch with several `Thread`
    // events is merged by timestamp across threads.
    let mut threads: Vec<_> = p
        .threads
        .iter()
        .filter_map(|(id, t)| Some((*id, t.name.clone()?)))
        .collect();
    threads.sort();
    for (id, name) in threads {
        let ev = vec![Event::Thread {
            id,
            name: Some(name),
        }];
        encode_events(p, ev, out);
    }
    // The process clock, in a frame of its own before anything that has a
    // time: the model scans (at most) once, here, on no tasks, and not
    // again while it is half rebuilt (no later event is newer). No span has
    // id 0: an exit of it changes nothing but the clock.
    let clock = vec![
        Event::Thread {
            id: REBUILD_THREAD,
            name: None,
        },
        Event::Exit {
            span: SpanId(0),
            ts: p.now,
        },
    ];
    encode_events(p, clock, out);
    // Then one run on that thread, applied in order: completed tasks,
    // spans, live tasks, their poll states and await trees.
    let mut events = Vec::new();
    // Completed tasks, oldest first: created and closed (their polls are
    // history: they show none).
    for t in &p.completed {
        let Some(closed) = t.closed else { continue };
        events.push(task_new(t));
        if t.polls > 0 {
            // A zero-length poll at the spawn: not scheduled all its life.
            events.push(Event::Enter {
                span: t.id,
                ts: t.created,
            });
            events.push(Event::Exit {
                span: t.id,
                ts: t.created,
            });
        }
        let kind = match t.state {
            TaskState::Cancelled => CloseKind::Cancelled,
            TaskState::Panicked => CloseKind::Panicked,
            _ => CloseKind::Completed,
        };
        if let (CloseKind::Panicked, Some(message)) = (kind, &t.panic) {
            events.push(Event::Panic(Box::new(awaitscope_wire::Panic {
                task: Some(t.id),
                span: None,
                message: message.clone(),
                file: None,
                line: None,
                ts: closed,
                trace: Vec::new(),
            })));
        }
        events.push(Event::Close {
            span: t.id,
            kind,
            ts: closed,
        });
    }
    let mut spans: Vec<_> = p.spans.iter().collect();
    spans.sort_by_key(|(id, _)| **id);
    events.extend(spans.into_iter().map(|(id, s)| {
        Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
            id: *id,
            callsite: s.callsite,
            parent: s.parent,
            ctx_task: s.ctx_task,
            ctx_span: None,
            ts: s.created,
            fields: s.fields.clone(),
        }))
    }));
    let mut tasks: Vec<&Task> = p.tasks.values().collect();
    tasks.sort_by_key(|t| t.id);
    events.extend(tasks.iter().map(|t| task_new(t)));
    for t in &tasks {
        task_state(t, p.now, &mut events);
    }
    encode_events(p, events, out);
    // Detector episodes in progress, so that the viewer continues them
    // rather than counting them again.
    for t in &tasks {
        let kinds: Vec<FindingKind> = model.episodes(&p.key, t.id);
        if !kinds.is_empty() {
            encode_control(
                &Control::Ongoing {
                    process: p.key,
                    task: t.id,
                    kinds,
                },
                out,
            );
        }
    }

    if p.dropped.total() > 0 {
        let _ = encode_frame_msg(&frame(p, Body::Dropped(p.dropped)), out);
    }
    if p.collector_dropped > 0 {
        encode_control(
            &Control::Dropped {
                process: p.key,
                events: p.collector_dropped,
            },
            out,
        );
    }
    for text in &p.notes {
        encode_control(
            &Control::Note {
                process: p.key,
                text: text.clone(),
            },
            out,
        );
    }
    if p.ended {
        let _ = encode_frame_msg(&frame(p, Body::Goodbye), out);
    } else if !p.connected {
        // Its note, if any, was sent above.
        encode_control(
            &Control::Disconnected {
                process: p.key,
                clean: true,
            },
            out,
        );
    }
}

/// The `SpanNew` of a task span.
fn task_new(t: &Task) -> Event {
    Event::SpanNew(Box::new(awaitscope_wire::SpanNew {
        id: t.id,
        callsite: t.callsite,
        parent: None,
        ctx_task: t.parent,
        ctx_span: t.spawn_span,
        ts: t.created,
        fields: t.fields.clone(),
    }))
}

/// Events that bring a task just created from its `SpanNew` (scheduled
/// since its spawn, never polled) to `t`'s state: its last poll, with its
/// await tree, whether it was woken since, and its live wakers.
fn task_state(t: &Task, now: u64, out: &mut Vec<Event>) {
    let id = t.id;
    let last_end = t.pending_poll.map(|p| p.end).or(t.last_poll_end);
    let polled = t.poll_start.is_some() || last_end.is_some();
    if polled {
        // A zero-length poll at the spawn: the spawn-to-last-poll gap is
        // not a wait to be polled (that would read as starvation).
        out.push(Event::Enter {
            span: id,
            ts: t.created,
        });
        out.push(Event::Exit {
            span: id,
            ts: t.created,
        });
    }
    let tree = poll_tree(id, &t.await_tree);
    if let Some(start) = t.poll_start {
        // Being polled now, after a previous poll that ended at `end`.
        if let Some(end) = last_end {
            out.push(Event::Enter { span: id, ts: end });
            out.push(Event::Exit { span: id, ts: end });
        }
        out.push(Event::Enter {
            span: id,
            ts: start,
        });
        out.extend(tree);
        if t.woken_during_poll {
            out.push(wake(id, WakeOp::WakeByRef, start));
        }
    } else if let Some(end) = last_end {
        let start = t.pending_poll.map_or(end, |p| p.start);
        out.push(Event::Enter {
            span: id,
            ts: start,
        });
        // Sent just before the exit that ends the poll, as producers do.
        out.extend(tree);
        out.push(Event::Exit { span: id, ts: end });
        if t.state == TaskState::Scheduled {
            out.push(wake(
                id,
                WakeOp::WakeByRef,
                t.scheduled_since.unwrap_or(now),
            ));
        }
    } else {
        // Never polled: scheduled since its spawn, as the `SpanNew` made it.
        out.extend(tree);
    }
    for _ in 0..t.wakers_alive.min(MAX_WAKER_CLONES) {
        out.push(wake(id, WakeOp::Clone, last_end.unwrap_or(t.created)));
    }
}

fn wake(task: SpanId, op: WakeOp, ts: u64) -> Event {
    Event::Wake {
        task,
        op,
        by: None,
        ts,
    }
}

/// The `PollTree` event of an await tree (none for an empty tree), nodes
/// in depth-first order so that depths rebuild the same parents.
fn poll_tree(task: SpanId, tree: &AwaitTree) -> Option<Event> {
    if tree.nodes.is_empty() {
        return None;
    }
    let n = tree.nodes.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for (i, node) in tree.nodes.iter().enumerate() {
        match node.parent.map(usize::from).filter(|&p| p < i) {
            Some(p) => children[p].push(i),
            None => roots.push(i),
        }
    }
    let mut spans = Vec::with_capacity(n.min(limits::MAX_TREE));
    let mut stack: Vec<(usize, u16)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if spans.len() == limits::MAX_TREE {
            break;
        }
        spans.push(TreeNode {
            span: tree.nodes[i].span,
            depth,
        });
        stack.extend(
            children[i]
                .iter()
                .rev()
                .map(|&c| (c, depth.saturating_add(1))),
        );
    }
    Some(Event::PollTree { task, spans })
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

#[derive(Default)]
struct Queue {
    items: VecDeque<Arc<[u8]>>,
    bytes: usize,
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
    pub(crate) fn new(cap_bytes: usize) -> ViewerQueue {
        ViewerQueue {
            q: Mutex::new(Queue::default()),
            notify: tokio::sync::Notify::new(),
            cap: cap_bytes.max(1),
        }
    }

    /// Appends `o`, or drops it if it is an event batch and the queue is
    /// full (at least one item is always let in).
    pub(crate) fn push(&self, o: &Outgoing) -> Pushed {
        let mut q = lock(&self.q);
        if q.closed {
            return Pushed::Closed;
        }
        if let Some(events) = o.events {
            if !q.items.is_empty() && q.bytes + o.bytes.len() > self.cap {
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
        q.bytes = 0;
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
