//! `--format perfetto`: Perfetto's native protobuf trace (TrackEvent), which
//! ui.perfetto.dev opens.
//!
//! The file is a `Trace` message: a sequence of `TracePacket`s (field 1),
//! written one by one as the walk goes. Only the following fields of
//! Perfetto's protos (`protos/perfetto/trace/...`) are used; their numbers
//! are Perfetto's:
//!
//! | message | fields used |
//! | --- | --- |
//! | `Trace` | `packet` = 1 |
//! | `TracePacket` | `timestamp` = 8, `trusted_packet_sequence_id` = 10, `track_event` = 11, `sequence_flags` = 13, `track_descriptor` = 60 |
//! | `TrackDescriptor` | `uuid` = 1, `name` = 2, `process` = 3, `parent_uuid` = 5 |
//! | `ProcessDescriptor` | `pid` = 1, `cmdline` = 2, `process_name` = 6 |
//! | `TrackEvent` | `debug_annotations` = 4, `type` = 9, `track_uuid` = 11, `categories` = 22, `name` = 23, `flow_ids` = 47, `terminating_flow_ids` = 48 |
//! | `DebugAnnotation` | `uint_value` = 3, `string_value` = 6, `name` = 10 |
//!
//! Timestamps are wall-clock nanoseconds (process start + event time), on
//! the default clock, so several processes line up. One packet sequence
//! (id 1) carries everything; its first packet clears incremental state
//! (nothing is interned). Polls are BEGIN/END pairs on the task's track,
//! await nodes BEGIN/END pairs on the task's "awaits" lanes, wakes, spawns,
//! errors, panics and findings instants; flows start on an instant
//! (`flow_ids`) and end on the first poll that follows
//! (`terminating_flow_ids`). The size policy is stated on a track named
//! `awaitscope` (an instant `size policy: ...`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};

use awaitscope_wire::ProcessKey;
use prost::Message;

use super::timeline::{Arg, Args, Ev, TimelineSink, TrackKind};
use super::PolicyNote;

/// Default event budget: about 30 bytes per event, ~60 MB.
pub const DEFAULT_MAX_EVENTS: u64 = 2_000_000;

/// `Trace`.
#[derive(Clone, PartialEq, Message)]
pub struct Trace {
    /// Packets.
    #[prost(message, repeated, tag = "1")]
    pub packet: Vec<TracePacket>,
}

/// `TracePacket` (the fields used).
#[derive(Clone, PartialEq, Message)]
pub struct TracePacket {
    /// Timestamp, ns.
    #[prost(uint64, optional, tag = "8")]
    pub timestamp: Option<u64>,
    /// Packet sequence.
    #[prost(uint32, optional, tag = "10")]
    pub trusted_packet_sequence_id: Option<u32>,
    /// A track event.
    #[prost(message, optional, tag = "11")]
    pub track_event: Option<TrackEvent>,
    /// `SEQ_INCREMENTAL_STATE_CLEARED` = 1.
    #[prost(uint32, optional, tag = "13")]
    pub sequence_flags: Option<u32>,
    /// A track descriptor.
    #[prost(message, optional, tag = "60")]
    pub track_descriptor: Option<TrackDescriptor>,
}

/// `TrackDescriptor` (the fields used).
#[derive(Clone, PartialEq, Message)]
pub struct TrackDescriptor {
    /// Track id.
    #[prost(uint64, optional, tag = "1")]
    pub uuid: Option<u64>,
    /// Name.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// Process of a process track.
    #[prost(message, optional, tag = "3")]
    pub process: Option<ProcessDescriptor>,
    /// Parent track.
    #[prost(uint64, optional, tag = "5")]
    pub parent_uuid: Option<u64>,
}

/// `ProcessDescriptor` (the fields used).
#[derive(Clone, PartialEq, Message)]
pub struct ProcessDescriptor {
    /// pid.
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    /// Command line.
    #[prost(string, repeated, tag = "2")]
    pub cmdline: Vec<String>,
    /// Name.
    #[prost(string, optional, tag = "6")]
    pub process_name: Option<String>,
}

/// `TrackEvent.Type`.
pub mod event_type {
    /// `TYPE_SLICE_BEGIN`.
    pub const SLICE_BEGIN: i32 = 1;
    /// `TYPE_SLICE_END`.
    pub const SLICE_END: i32 = 2;
    /// `TYPE_INSTANT`.
    pub const INSTANT: i32 = 3;
}

/// `TrackEvent` (the fields used).
#[derive(Clone, PartialEq, Message)]
pub struct TrackEvent {
    /// Arguments.
    #[prost(message, repeated, tag = "4")]
    pub debug_annotations: Vec<DebugAnnotation>,
    /// [`event_type`].
    #[prost(int32, optional, tag = "9")]
    pub r#type: Option<i32>,
    /// Track.
    #[prost(uint64, optional, tag = "11")]
    pub track_uuid: Option<u64>,
    /// Categories.
    #[prost(string, repeated, tag = "22")]
    pub categories: Vec<String>,
    /// Name.
    #[prost(string, optional, tag = "23")]
    pub name: Option<String>,
    /// Flows starting or passing here.
    #[prost(fixed64, repeated, packed = "false", tag = "47")]
    pub flow_ids: Vec<u64>,
    /// Flows ending here.
    #[prost(fixed64, repeated, packed = "false", tag = "48")]
    pub terminating_flow_ids: Vec<u64>,
}

/// `DebugAnnotation` (the fields used).
#[derive(Clone, PartialEq, Message)]
pub struct DebugAnnotation {
    /// Unsigned value.
    #[prost(uint64, optional, tag = "3")]
    pub uint_value: Option<u64>,
    /// String value.
    #[prost(string, optional, tag = "6")]
    pub string_value: Option<String>,
    /// Name.
    #[prost(string, optional, tag = "10")]
    pub name: Option<String>,
}

const SEQ: u32 = 1;

/// Writes a Perfetto trace as it receives timeline events.
pub struct PerfettoSink<W: Write> {
    out: W,
    buf: Vec<u8>,
    first: bool,
    max_events: u64,
    written: u64,
    dropped: u64,
    truncated_at: Option<u64>,
    /// Open (written) slices per track.
    open: HashMap<u64, u32>,
    /// Tracks written.
    tracks: HashSet<u64>,
    from: Option<u64>,
    to: Option<u64>,
    /// Flows whose start was written and that have not ended.
    flows: HashSet<u64>,
    last_abs: u64,
}

fn annotations(args: &Args) -> Vec<DebugAnnotation> {
    args.iter()
        .map(|(n, v)| DebugAnnotation {
            name: Some((*n).to_string()),
            uint_value: match v {
                Arg::U(u) => Some(*u),
                Arg::S(_) => None,
            },
            string_value: match v {
                Arg::S(s) => Some(s.clone()),
                Arg::U(_) => None,
            },
        })
        .collect()
}

impl<W: Write> PerfettoSink<W> {
    /// A sink writing to `out`, with an event budget and the window (to
    /// state it in the trace).
    pub fn new(out: W, max_events: u64, from: Option<u64>, to: Option<u64>) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(256),
            first: true,
            max_events,
            written: 0,
            dropped: 0,
            truncated_at: None,
            open: HashMap::new(),
            tracks: HashSet::new(),
            from,
            to,
            flows: HashSet::new(),
            last_abs: 0,
        }
    }

    fn packet(&mut self, mut p: TracePacket) -> io::Result<()> {
        p.trusted_packet_sequence_id = Some(SEQ);
        if self.first {
            p.sequence_flags = Some(1);
            self.first = false;
        }
        self.buf.clear();
        // Field 1 of `Trace`, length-delimited.
        self.buf.push(0x0A);
        prost::encoding::encode_varint(p.encoded_len() as u64, &mut self.buf);
        p.encode(&mut self.buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.out.write_all(&self.buf)
    }

    fn budget(&mut self, ts: u64) -> bool {
        if self.written < self.max_events {
            self.written += 1;
            return true;
        }
        if self.truncated_at.is_none() {
            self.truncated_at = Some(ts);
        }
        self.dropped += 1;
        false
    }

    fn event_packet(&mut self, abs: u64, ev: TrackEvent) -> io::Result<()> {
        self.last_abs = self.last_abs.max(abs);
        self.packet(TracePacket {
            timestamp: Some(abs),
            track_event: Some(ev),
            ..TracePacket::default()
        })
    }

    /// The flows of `ids` whose start was written (the others are left out).
    fn end_flows(&mut self, ids: &[u64]) -> Vec<u64> {
        ids.iter()
            .copied()
            .filter(|f| self.flows.remove(f))
            .collect()
    }

    /// The inner writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

fn abs(p: ProcessKey, ts: u64) -> u64 {
    p.start_unix_ns.saturating_add(ts)
}

impl<W: Write> TimelineSink for PerfettoSink<W> {
    fn event(&mut self, p: ProcessKey, ev: &Ev<'_>) -> io::Result<()> {
        match ev {
            Ev::Track(t) => {
                if let Some(parent) = t.parent {
                    if !self.tracks.contains(&parent) {
                        return Ok(());
                    }
                }
                let is_proc = matches!(t.kind, TrackKind::Process { .. });
                if !is_proc && !self.budget(0) {
                    return Ok(());
                }
                self.tracks.insert(t.id);
                let process = match &t.kind {
                    TrackKind::Process { pid, cmdline } => Some(ProcessDescriptor {
                        pid: Some(*pid as i32),
                        cmdline: cmdline.clone(),
                        process_name: Some(t.name.clone()),
                    }),
                    _ => None,
                };
                self.packet(TracePacket {
                    track_descriptor: Some(TrackDescriptor {
                        uuid: Some(t.id),
                        name: Some(t.name.clone()),
                        process,
                        parent_uuid: t.parent,
                    }),
                    ..TracePacket::default()
                })
            }
            Ev::Begin {
                track,
                ts,
                name,
                cat,
                args,
            } => {
                if !self.tracks.contains(track) || !self.budget(*ts) {
                    return Ok(());
                }
                *self.open.entry(*track).or_default() += 1;
                self.event_packet(
                    abs(p, *ts),
                    TrackEvent {
                        r#type: Some(event_type::SLICE_BEGIN),
                        track_uuid: Some(*track),
                        name: Some((*name).to_string()),
                        categories: vec![(*cat).to_string()],
                        debug_annotations: annotations(args),
                        ..TrackEvent::default()
                    },
                )
            }
            Ev::End { track, ts } => {
                match self.open.get_mut(track) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => return Ok(()),
                }
                self.written += 1;
                self.event_packet(
                    abs(p, *ts),
                    TrackEvent {
                        r#type: Some(event_type::SLICE_END),
                        track_uuid: Some(*track),
                        ..TrackEvent::default()
                    },
                )
            }
            Ev::Complete {
                track,
                start,
                end,
                name,
                cat,
                args,
                flows_in,
            } => {
                if !self.tracks.contains(track) || !self.budget(*start) {
                    return Ok(());
                }
                self.written += 1;
                let terminating_flow_ids = self.end_flows(flows_in);
                self.event_packet(
                    abs(p, *start),
                    TrackEvent {
                        r#type: Some(event_type::SLICE_BEGIN),
                        track_uuid: Some(*track),
                        name: Some((*name).to_string()),
                        categories: vec![(*cat).to_string()],
                        debug_annotations: annotations(args),
                        terminating_flow_ids,
                        ..TrackEvent::default()
                    },
                )?;
                self.event_packet(
                    abs(p, *end),
                    TrackEvent {
                        r#type: Some(event_type::SLICE_END),
                        track_uuid: Some(*track),
                        ..TrackEvent::default()
                    },
                )
            }
            Ev::Instant {
                track,
                ts,
                name,
                cat,
                args,
                flows_out,
                flows_in,
            } => {
                if !self.tracks.contains(track) || !self.budget(*ts) {
                    return Ok(());
                }
                self.flows.extend(flows_out.iter().copied());
                let terminating_flow_ids = self.end_flows(flows_in);
                self.event_packet(
                    abs(p, *ts),
                    TrackEvent {
                        r#type: Some(event_type::INSTANT),
                        track_uuid: Some(*track),
                        name: Some((*name).to_string()),
                        categories: vec![(*cat).to_string()],
                        debug_annotations: annotations(args),
                        flow_ids: flows_out.to_vec(),
                        terminating_flow_ids,
                    },
                )
            }
        }
    }

    fn finish(&mut self) -> io::Result<PolicyNote> {
        let note = PolicyNote {
            from_ns: self.from,
            to_ns: self.to,
            max_events: self.max_events,
            written: self.written,
            dropped: self.dropped,
            truncated_at_ns: self.truncated_at,
        };
        // A root track stating the policy (ids from the top, away from the
        // walk's counter).
        let id = u64::MAX - 1;
        self.packet(TracePacket {
            track_descriptor: Some(TrackDescriptor {
                uuid: Some(id),
                name: Some("awaitscope".into()),
                ..TrackDescriptor::default()
            }),
            ..TracePacket::default()
        })?;
        let at = self.last_abs;
        self.event_packet(
            at,
            TrackEvent {
                r#type: Some(event_type::INSTANT),
                track_uuid: Some(id),
                name: Some(note.describe()),
                categories: vec!["awaitscope".into()],
                debug_annotations: annotations(&vec![
                    ("max_events", Arg::U(note.max_events)),
                    ("written", Arg::U(note.written)),
                    ("dropped", Arg::U(note.dropped)),
                ]),
                ..TrackEvent::default()
            },
        )?;
        self.out.flush()?;
        Ok(note)
    }
}

/// What a decoded trace holds (see [`verify`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Packets.
    pub packets: u64,
    /// Track descriptors.
    pub tracks: u64,
    /// Process tracks.
    pub process_tracks: u64,
    /// Tracks nested under a track that is not a process track.
    pub nested_tracks: u64,
    /// Complete slices (BEGIN/END pairs).
    pub slices: u64,
    /// Slices by name (`poll`, `drop`, await labels...), counted.
    pub slice_names: BTreeMap<String, u64>,
    /// Instants.
    pub instants: u64,
    /// Flows started (ids on instants).
    pub flows: u64,
    /// Flows that end on an event.
    pub flows_terminated: u64,
    /// The size-policy statement.
    pub policy: Option<String>,
}

/// Decodes a Perfetto trace written by [`PerfettoSink`] and checks it:
/// every event is on a described track, parents are described, slices on
/// each track nest (BEGIN/END balanced in time order), each flow that ends
/// has a start, and the size policy is stated.
pub fn verify(bytes: &[u8]) -> Result<TraceStats, String> {
    let trace = Trace::decode(bytes).map_err(|e| format!("not a protobuf Trace: {e}"))?;
    let mut st = TraceStats {
        packets: trace.packet.len() as u64,
        ..TraceStats::default()
    };
    let mut tracks: HashMap<u64, (Option<u64>, bool)> = HashMap::new();
    for p in &trace.packet {
        if p.trusted_packet_sequence_id.is_none() {
            return Err("a packet has no trusted_packet_sequence_id".into());
        }
        if let Some(t) = &p.track_descriptor {
            let id = t.uuid.ok_or("a track descriptor has no uuid")?;
            if tracks
                .insert(id, (t.parent_uuid, t.process.is_some()))
                .is_some()
            {
                return Err(format!("track {id} described twice"));
            }
            st.tracks += 1;
            if t.process.is_some() {
                st.process_tracks += 1;
            }
        }
    }
    for (id, (parent, _)) in &tracks {
        if let Some(pa) = parent {
            match tracks.get(pa) {
                None => return Err(format!("track {id} has an undescribed parent {pa}")),
                Some((_, false)) => st.nested_tracks += 1,
                Some(_) => {}
            }
        }
    }
    let mut events: Vec<(u64, usize, &TrackEvent)> = trace
        .packet
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((p.timestamp?, i, p.track_event.as_ref()?)))
        .collect();
    events.sort_by_key(|(ts, i, _)| (*ts, *i));
    let mut stacks: HashMap<u64, Vec<String>> = HashMap::new();
    let mut started: HashSet<u64> = HashSet::new();
    for (ts, _, e) in &events {
        let track = e.track_uuid.ok_or("an event has no track")?;
        if !tracks.contains_key(&track) {
            return Err(format!("event at {ts} on undescribed track {track}"));
        }
        for f in &e.terminating_flow_ids {
            if !started.contains(f) {
                return Err(format!("flow {f} ends at {ts} before it starts"));
            }
            st.flows_terminated += 1;
        }
        for f in &e.flow_ids {
            if started.insert(*f) {
                st.flows += 1;
            }
        }
        match e.r#type {
            Some(event_type::SLICE_BEGIN) => {
                let name = e.name.clone().ok_or("a slice has no name")?;
                stacks.entry(track).or_default().push(name);
            }
            Some(event_type::SLICE_END) => {
                let name = stacks
                    .get_mut(&track)
                    .and_then(|s| s.pop())
                    .ok_or_else(|| format!("slice end at {ts} on track {track} without a begin"))?;
                st.slices += 1;
                *st.slice_names.entry(name).or_default() += 1;
            }
            Some(event_type::INSTANT) => {
                st.instants += 1;
                let name = e.name.as_deref().unwrap_or("");
                if name.starts_with("size policy:") {
                    st.policy = Some(name.to_string());
                }
            }
            t => return Err(format!("unexpected event type {t:?}")),
        }
    }
    if let Some((t, s)) = stacks.iter().find(|(_, s)| !s.is_empty()) {
        return Err(format!("{} slice(s) left open on track {t}", s.len()));
    }
    if st.policy.is_none() {
        return Err("the size policy is not stated".into());
    }
    Ok(st)
}
