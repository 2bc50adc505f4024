//! A streaming walk over recordings: turns frames into timeline events
//! (tracks, poll slices, await-tree slices, instants, flows) for
//! [`Sink`]s, and gathers what the aggregated model does not keep: the
//! await-tree stacks weighted by pending and busy time (flame graphs), the
//! durations of every await (per await point), and the root task groups.
//!
//! Memory: the state of live tasks and live spans of each process, the
//! distinct flame stacks and await points; never the polls themselves.
//!
//! Tracks: one per process; one per task, under its spawning task's track
//! when that task is alive at spawn time (else under its process); and, under
//! each task, one or more "awaits" lanes carrying the await-tree nodes as
//! slices (one lane per leaf of the tree, so that slices on a lane nest: the
//! first lane follows the first leaf's path, the second the second's...).
//! A poll is a slice on the task's track (`poll`; the drop of the future at
//! the end is a `drop` slice). An await node's slice runs from the start of
//! the first poll whose await tree holds it to the end of the last one.
//! Flows: spawn (an instant on the parent's track to the child's first
//! poll), wake (an instant on the waking task's track to the woken task's
//! next poll), and queue hand-offs (`FollowsFrom`, from the producing task's
//! latest poll to an instant on the consuming task).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;

use awaitscope_wire::{
    names, Body, Callsite, CallsiteKind, CloseKind, Event, EventClass, Field, Frame, Level,
    ProcessKey, SpanClass, SpanId, TreeNode, WakeOp,
};
use hdrhistogram::Histogram;

use super::PolicyNote;
use crate::model::{labels, span};

/// An argument value of a timeline event.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// Text.
    S(String),
    /// Number.
    U(u64),
}

/// Arguments of a timeline event.
pub type Args = Vec<(&'static str, Arg)>;

/// What a track stands for.
#[derive(Clone, Debug, PartialEq)]
pub enum TrackKind {
    /// A process.
    Process {
        /// pid.
        pid: u32,
        /// Command line.
        cmdline: Vec<String>,
    },
    /// A task.
    Task {
        /// Task (span) id.
        task: u64,
    },
    /// An await lane of a task (its index, from 0).
    Lane(usize),
}

/// A track (a row of the timeline).
#[derive(Clone, Debug, PartialEq)]
pub struct Track {
    /// Unique id within the walk (from 1).
    pub id: u64,
    /// Parent track.
    pub parent: Option<u64>,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: TrackKind,
}

/// A timeline event. Timestamps are ns since the process's start.
#[derive(Debug)]
pub enum Ev<'a> {
    /// A new track (before any event on it).
    Track(&'a Track),
    /// A slice begins (await node).
    Begin {
        /// Track.
        track: u64,
        /// When.
        ts: u64,
        /// Name.
        name: &'a str,
        /// Category.
        cat: &'static str,
        /// Arguments.
        args: &'a Args,
    },
    /// The innermost open slice of `track` ends.
    End {
        /// Track.
        track: u64,
        /// When.
        ts: u64,
    },
    /// A whole slice (a poll), possibly the end of flows.
    Complete {
        /// Track.
        track: u64,
        /// Start.
        start: u64,
        /// End.
        end: u64,
        /// Name.
        name: &'a str,
        /// Category.
        cat: &'static str,
        /// Arguments.
        args: &'a Args,
        /// Flows ending at its start.
        flows_in: &'a [u64],
    },
    /// An instant.
    Instant {
        /// Track.
        track: u64,
        /// When.
        ts: u64,
        /// Name.
        name: &'a str,
        /// Category.
        cat: &'static str,
        /// Arguments.
        args: &'a Args,
        /// Flows starting here.
        flows_out: &'a [u64],
        /// Flows ending here.
        flows_in: &'a [u64],
    },
}

/// A consumer of timeline events (a trace writer).
pub trait Sink {
    /// One event of process `process`.
    fn event(&mut self, process: ProcessKey, ev: &Ev<'_>) -> io::Result<()>;
    /// End of input: write the trailer; says what the size policy did.
    fn finish(&mut self) -> io::Result<PolicyNote>;
}

/// A finding to mark on the timeline (an instant on its task's track).
#[derive(Clone, Debug)]
pub struct FindingMark {
    /// Process.
    pub process: ProcessKey,
    /// Task (span id), if any.
    pub task: Option<u64>,
    /// When.
    pub ts: u64,
    /// Instant name.
    pub name: String,
    /// Arguments.
    pub args: Args,
}

impl FindingMark {
    /// Marks of the findings of `report`.
    pub fn of_report(report: &crate::Report) -> Vec<FindingMark> {
        report
            .findings
            .iter()
            .map(|f| {
                let mut args: Args = vec![
                    ("kind", Arg::S(f.kind.as_str().into())),
                    ("message", Arg::S(f.message.clone())),
                    ("count", Arg::U(f.count)),
                ];
                if let Some(l) = &f.location {
                    args.push(("location", Arg::S(l.to_string())));
                }
                if let Some(w) = f.worst_ns {
                    args.push(("worst_ns", Arg::U(w)));
                }
                if !f.trace.is_empty() {
                    args.push(("trace", Arg::S(f.trace.join("\n"))));
                }
                FindingMark {
                    process: ProcessKey {
                        pid: f.pid,
                        start_unix_ns: f.process_start_unix_ns,
                    },
                    task: f.tasks.first().map(|t| t.id),
                    ts: f.first_seen,
                    name: format!("finding: {}", f.kind),
                    args,
                }
            })
            .collect()
    }
}

/// Options of a walk.
#[derive(Clone, Debug, Default)]
pub struct WalkOptions {
    /// Window start (ns since each process's start).
    pub from_ns: Option<u64>,
    /// Window end.
    pub to_ns: Option<u64>,
    /// Findings to mark (and whose tasks' root groups to remember).
    pub findings: Vec<FindingMark>,
}

/// Times of one await point (await-tree node label and location), in ns.
#[derive(Clone, Debug)]
pub struct AwaitPoint {
    /// `label @ file:line`.
    pub point: String,
    /// Awaits seen.
    pub count: u64,
    /// Durations, ns (2 significant digits).
    pub hist: Histogram<u64>,
}

/// A group of root tasks (tasks spawned outside any task), by name and
/// spawn location: with the tasks spawned under them, one JUnit testcase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootGroup {
    /// Tasks of the group, root tasks and their descendants.
    pub tasks: u64,
    /// Root tasks.
    pub roots: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// First spawn (ns since process start).
    pub first_ns: u64,
    /// Last close, or the process's end for live tasks.
    pub last_ns: u64,
}

/// What a walk gathered besides the timeline.
#[derive(Debug, Default)]
pub struct WalkSummary {
    /// Frames walked.
    pub frames: u64,
    /// Events walked.
    pub events: u64,
    /// Folded stacks weighted by time pending (ns), sorted.
    pub pending: BTreeMap<String, u64>,
    /// Folded stacks weighted by time busy (ns), sorted.
    pub busy: BTreeMap<String, u64>,
    /// Await points, by point.
    pub await_points: BTreeMap<String, AwaitPoint>,
    /// Root groups, by process and group.
    pub root_groups: BTreeMap<(ProcessKey, String), RootGroup>,
    /// Root group of each task named by a finding.
    pub finding_roots: HashMap<(ProcessKey, u64), String>,
}

struct SpanW {
    class: SpanClass,
    ctx_task: Option<SpanId>,
    created: u64,
    label: Arc<str>,
    /// `label @ location`.
    point: Arc<str>,
    /// Location (of a resource: its creation site).
    loc: Option<Arc<str>>,
}

#[derive(Clone)]
struct NodeW {
    span: SpanId,
    parent: Option<usize>,
    label: Arc<str>,
    point: Arc<str>,
}

struct LaneEntry {
    span: SpanId,
    start: u64,
    begun: bool,
}

struct Lane {
    track: u64,
    emitted: bool,
    stack: Vec<LaneEntry>,
}

struct TaskW {
    track: Option<u64>,
    label: String,
    group: Arc<str>,
    root: Arc<str>,
    created: u64,
    poll_start: Option<u64>,
    pending: Option<(u64, u64)>,
    last_end: Option<u64>,
    real_end: Option<u64>,
    last_poll_start: u64,
    /// Flows waiting for the next poll.
    flows_in: Vec<u64>,
    /// Flows ending at the start of the current poll.
    cur_flows: Vec<u64>,
    /// Flows ending at the start of the pending poll.
    pending_flows: Vec<u64>,
    tree: Vec<NodeW>,
    leaf_stacks: Vec<u32>,
    lanes: Vec<Lane>,
    open: Vec<(SpanId, u64, Arc<str>)>,
}

struct PState {
    track: u64,
    name: String,
    now: u64,
    callsites: HashMap<u32, Callsite>,
    spans: HashMap<SpanId, SpanW>,
    /// Recently closed spans: a poll's await tree is sent at its end, after
    /// the spans of awaits completed in the poll have closed.
    closed: HashMap<SpanId, SpanW>,
    closed_order: VecDeque<SpanId>,
    tasks: HashMap<SpanId, TaskW>,
    win_open: bool,
    win_closed: bool,
}

/// Most closed spans remembered (to find the task of a `FollowsFrom` source).
const CLOSED_MEMORY: usize = 1 << 16;
/// Most flows waiting on one task's next poll.
const MAX_FLOWS_IN: usize = 8;

/// The streaming walker.
pub struct Walker {
    opts: WalkOptions,
    procs: BTreeMap<ProcessKey, PState>,
    next_track: u64,
    next_flow: u64,
    stack_ids: HashMap<String, u32>,
    stack_names: Vec<String>,
    pending_w: Vec<u64>,
    busy_w: Vec<u64>,
    finding_tasks: HashSet<(ProcessKey, u64)>,
    finding_tracks: HashMap<(ProcessKey, u64), u64>,
    summary: WalkSummary,
    /// Root groups during the walk, looked up by the tasks' own `Arc<str>`
    /// (the summary's map is keyed by `String`: a lookup there allocated a
    /// key per task); moved into the summary at the end.
    root_groups: HashMap<ProcessKey, HashMap<Arc<str>, RootGroup>>,
}

type Sinks<'a, 'b> = &'a mut [&'b mut dyn Sink];

fn emit(sinks: Sinks<'_, '_>, key: ProcessKey, ev: &Ev<'_>) -> io::Result<()> {
    for s in sinks.iter_mut() {
        s.event(key, ev)?;
    }
    Ok(())
}

fn clean_frame(s: &str) -> String {
    s.replace([';', '\n', '\r'], " ")
}

impl Walker {
    /// A walker.
    pub fn new(opts: WalkOptions) -> Self {
        let finding_tasks = opts
            .findings
            .iter()
            .filter_map(|f| Some((f.process, f.task?)))
            .collect();
        Self {
            opts,
            procs: BTreeMap::new(),
            next_track: 1,
            next_flow: 1,
            stack_ids: HashMap::new(),
            stack_names: Vec::new(),
            pending_w: Vec::new(),
            busy_w: Vec::new(),
            finding_tasks,
            finding_tracks: HashMap::new(),
            summary: WalkSummary::default(),
            root_groups: HashMap::new(),
        }
    }

    fn track_id(&mut self) -> u64 {
        let id = self.next_track;
        self.next_track += 1;
        id
    }

    fn flow_id(&mut self) -> u64 {
        let id = self.next_flow;
        self.next_flow += 1;
        id
    }

    fn intern(&mut self, s: String) -> u32 {
        if let Some(&i) = self.stack_ids.get(&s) {
            return i;
        }
        let i = self.stack_names.len() as u32;
        self.stack_ids.insert(s.clone(), i);
        self.stack_names.push(s);
        self.pending_w.push(0);
        self.busy_w.push(0);
        i
    }

    fn in_window(&self, ts: u64) -> bool {
        self.opts.from_ns.is_none_or(|f| ts >= f) && self.opts.to_ns.is_none_or(|t| ts <= t)
    }

    /// Walks one frame.
    pub fn frame(&mut self, f: &Frame, sinks: Sinks<'_, '_>) -> io::Result<()> {
        self.summary.frames += 1;
        if !self.procs.contains_key(&f.process) {
            let name = match &f.body {
                Body::Hello(i) => i.name.clone(),
                _ => format!("pid {}", f.process.pid),
            };
            let cmdline = match &f.body {
                Body::Hello(i) => i.cmdline.clone(),
                _ => Vec::new(),
            };
            let id = self.track_id();
            let track = Track {
                id,
                parent: None,
                name: format!("{name} (pid {})", f.process.pid),
                kind: TrackKind::Process {
                    pid: f.process.pid,
                    cmdline,
                },
            };
            emit(sinks, f.process, &Ev::Track(&track))?;
            self.procs.insert(
                f.process,
                PState {
                    track: id,
                    name,
                    now: 0,
                    callsites: HashMap::new(),
                    spans: HashMap::new(),
                    closed: HashMap::new(),
                    closed_order: VecDeque::new(),
                    tasks: HashMap::new(),
                    win_open: self.opts.from_ns.is_none_or(|f| f == 0),
                    win_closed: false,
                },
            );
        }
        if let Body::Events(events) = &f.body {
            let runs = events
                .iter()
                .filter(|e| matches!(e, Event::Thread { .. }))
                .count();
            if runs <= 1 {
                for e in events {
                    self.event(f.process, e, sinks)?;
                }
            } else {
                for (_, e) in crate::model::merge::merge_threads(events) {
                    self.event(f.process, e, sinks)?;
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, key: ProcessKey, ts: u64, sinks: Sinks<'_, '_>) -> io::Result<()> {
        let from = self.opts.from_ns;
        let to = self.opts.to_ns;
        let p = self.procs.get_mut(&key).expect("process exists");
        p.now = p.now.max(ts);
        if !p.win_open && from.is_none_or(|f| ts >= f) {
            p.win_open = true;
            let at = from.unwrap_or(0);
            let mut ids: Vec<SpanId> = p.tasks.keys().copied().collect();
            ids.sort();
            for id in ids {
                let t = p.tasks.get_mut(&id).expect("task");
                for lane in &mut t.lanes {
                    for e in &mut lane.stack {
                        if !e.begun && !p.win_closed {
                            // Clipped to the window.
                            let label = t
                                .tree
                                .iter()
                                .find(|n| n.span == e.span)
                                .map_or_else(|| "await".to_string(), |n| n.label.to_string());
                            if !lane.emitted {
                                lane.emitted = true;
                                let tr = Track {
                                    id: lane.track,
                                    parent: t.track,
                                    name: "awaits".into(),
                                    kind: TrackKind::Lane(0),
                                };
                                emit(sinks, key, &Ev::Track(&tr))?;
                            }
                            emit(
                                sinks,
                                key,
                                &Ev::Begin {
                                    track: lane.track,
                                    ts: at,
                                    name: &label,
                                    cat: "await",
                                    args: &vec![("clipped", Arg::S("window start".into()))],
                                },
                            )?;
                            e.begun = true;
                        }
                    }
                }
            }
        }
        if !p.win_closed && to.is_some_and(|t| ts > t) {
            p.win_closed = true;
            let at = to.unwrap_or(ts);
            let mut ids: Vec<SpanId> = p.tasks.keys().copied().collect();
            ids.sort();
            for id in ids {
                let t = p.tasks.get_mut(&id).expect("task");
                for lane in &mut t.lanes {
                    for e in lane.stack.iter_mut().rev() {
                        if e.begun {
                            emit(
                                sinks,
                                key,
                                &Ev::End {
                                    track: lane.track,
                                    ts: at,
                                },
                            )?;
                            e.begun = false;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn event(&mut self, key: ProcessKey, e: &Event, sinks: Sinks<'_, '_>) -> io::Result<()> {
        self.summary.events += 1;
        match e {
            Event::Callsite(c) => {
                let p = self.procs.get_mut(&key).expect("process");
                if p.callsites.len() < 65536 || p.callsites.contains_key(&c.id) {
                    p.callsites.insert(c.id, (**c).clone());
                }
            }
            Event::SpanNew(boxed) => {
                let awaitscope_wire::SpanNew {
                    id,
                    callsite,
                    parent,
                    ctx_task,
                    ts,
                    fields,
                    ..
                } = &**boxed;
                self.advance(key, *ts, sinks)?;
                self.span_new(key, *id, *callsite, *parent, *ctx_task, *ts, fields, sinks)?;
            }
            Event::Poll {
                task,
                start,
                duration,
                wakers,
            } => {
                let enter = Event::Enter {
                    span: *task,
                    ts: *start,
                };
                let end = Event::PollEnd {
                    task: *task,
                    ts: start.saturating_add(*duration),
                    wakers: *wakers,
                };
                self.event(key, &enter, &mut *sinks)?;
                self.event(key, &end, sinks)?;
            }
            Event::Enter { span, ts } => {
                self.advance(key, *ts, sinks)?;
                self.enter(key, *span, *ts, sinks)?;
            }
            Event::Exit { span, ts } | Event::PollEnd { task: span, ts, .. } => {
                self.advance(key, *ts, sinks)?;
                let p = self.procs.get_mut(&key).expect("process");
                if let Some(t) = p.tasks.get_mut(span) {
                    if let Some(s) = t.poll_start.take() {
                        t.pending = Some((s, *ts));
                        t.pending_flows = std::mem::take(&mut t.cur_flows);
                        t.last_end = Some(*ts);
                    }
                }
            }
            Event::PollTree { task, spans } => self.poll_tree(key, *task, spans, sinks)?,
            Event::Close { span, kind, ts } => {
                self.advance(key, *ts, sinks)?;
                self.close(key, *span, *kind, *ts, sinks)?;
            }
            Event::Wake { task, op, by, ts } => {
                self.advance(key, *ts, sinks)?;
                if matches!(op, WakeOp::Wake | WakeOp::WakeByRef) {
                    self.wake(key, *task, *by, *ts, sinks)?;
                }
            }
            Event::FollowsFrom { span, follows } => self.follows(key, *span, *follows, sinks)?,
            Event::Log(boxed) => {
                let awaitscope_wire::Log {
                    callsite,
                    task,
                    ts,
                    fields,
                    ..
                } = &**boxed;
                self.advance(key, *ts, sinks)?;
                let p = &self.procs[&key];
                let Some(cs) = p.callsites.get(callsite) else {
                    return Ok(());
                };
                if cs.kind != CallsiteKind::Event(EventClass::User)
                    || !matches!(cs.level, Level::Warn | Level::Error)
                {
                    return Ok(());
                }
                let msg = span::field_str(Some(cs), fields, names::MESSAGE)
                    .map(str::to_string)
                    .unwrap_or_else(|| cs.name.clone());
                let lvl = if cs.level == Level::Error {
                    "error"
                } else {
                    "warn"
                };
                let mut args: Args = vec![("level", Arg::S(lvl.into()))];
                if let Some(l) = span::callsite_location(Some(cs)) {
                    args.push(("location", Arg::S(l.to_string())));
                }
                for f in fields {
                    if let Some(n) = cs.fields.get(f.index as usize) {
                        if n != names::MESSAGE {
                            args.push(("field", Arg::S(format!("{n}={}", value(f)))));
                        }
                    }
                }
                let name = format!("{lvl}: {msg}");
                self.instant(key, *task, *ts, &name, "log", &args, &[], &[], sinks)?;
            }
            Event::Panic(boxed) => {
                let awaitscope_wire::Panic {
                    task,
                    message,
                    file,
                    line,
                    ts,
                    ..
                } = &**boxed;
                self.advance(key, *ts, sinks)?;
                let mut args: Args = Vec::new();
                if let (Some(f), Some(l)) = (file, line) {
                    args.push(("location", Arg::S(format!("{f}:{l}"))));
                }
                let name = format!("panic: {message}");
                self.instant(key, *task, *ts, &name, "panic", &args, &[], &[], sinks)?;
            }
            Event::Thread { .. } | Event::Record { .. } => {}
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn instant(
        &mut self,
        key: ProcessKey,
        task: Option<SpanId>,
        ts: u64,
        name: &str,
        cat: &'static str,
        args: &Args,
        flows_out: &[u64],
        flows_in: &[u64],
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        if !self.in_window(ts) {
            return Ok(());
        }
        let p = &self.procs[&key];
        let track = task
            .and_then(|t| p.tasks.get(&t))
            .and_then(|t| t.track)
            .unwrap_or(p.track);
        emit(
            sinks,
            key,
            &Ev::Instant {
                track,
                ts,
                name,
                cat,
                args,
                flows_out,
                flows_in,
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn span_new(
        &mut self,
        key: ProcessKey,
        id: SpanId,
        callsite: u32,
        parent: Option<SpanId>,
        ctx_task: Option<SpanId>,
        ts: u64,
        fields: &[Field],
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        let p = self.procs.get_mut(&key).expect("process");
        let cs = p.callsites.get(&callsite);
        let class = match cs.map(|c| c.kind) {
            Some(CallsiteKind::Span(c)) => c,
            _ => SpanClass::User,
        };
        if class != SpanClass::Task {
            if p.spans.contains_key(&id) {
                return Ok(());
            }
            let own_loc = span::loc_fields(cs, fields)
                .or_else(|| span::callsite_location(cs))
                .map(|l| Arc::<str>::from(l.to_string()));
            // The span's own label (the rule of `labels::span_own_label`),
            // else a fallback per class.
            let own = labels::span_own_label(class, cs, fields).map(String::from);
            let (label, loc): (String, Option<Arc<str>>) = match class {
                SpanClass::Resource => (own.unwrap_or_else(|| "resource".into()), own_loc),
                SpanClass::AsyncOp | SpanClass::AsyncOpPoll => {
                    let ploc = parent
                        .and_then(|pa| p.spans.get(&pa))
                        .and_then(|s| s.loc.clone());
                    (
                        own.or_else(|| {
                            parent
                                .and_then(|pa| p.spans.get(&pa))
                                .map(|s| s.label.to_string())
                        })
                        .unwrap_or_else(|| "async_op".into()),
                        ploc.or(own_loc),
                    )
                }
                _ => {
                    let label = own.unwrap_or_else(|| {
                        cs.map_or_else(|| format!("span#{}", id.0), |c| c.name.clone())
                    });
                    (label, own_loc)
                }
            };
            // Awaits of JoinHandles are one await point, whatever the task.
            let generic = if label.starts_with("join task.id=") {
                "join"
            } else {
                label.as_str()
            };
            let point: Arc<str> = match &loc {
                Some(l) => format!("{generic} @ {l}").into(),
                None => generic.to_string().into(),
            };
            p.spans.insert(
                id,
                SpanW {
                    class,
                    ctx_task,
                    created: ts,
                    label: label.into(),
                    point,
                    loc,
                },
            );
            return Ok(());
        }
        if p.tasks.contains_key(&id) {
            return Ok(());
        }
        let name = span::field_str(cs, fields, names::TASK_NAME)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let kind = span::field_str(cs, fields, names::KIND).map(str::to_string);
        let loc = span::loc_fields(cs, fields).or_else(|| span::callsite_location(cs));
        let locs = loc
            .as_ref()
            .map_or_else(|| "?".to_string(), |l| l.to_string());
        let group: Arc<str> = match &name {
            Some(n) => format!("{n}@{locs}").into(),
            None => locs.clone().into(),
        };
        let label = format!("{} #{}", name.as_deref().unwrap_or("task"), id.0);
        let parent_task = ctx_task.and_then(|c| p.tasks.get(&c));
        let root = parent_task.map_or_else(|| group.clone(), |t| t.root.clone());
        let parent_track = parent_task.and_then(|t| t.track).unwrap_or(p.track);
        let is_root = parent_task.is_none();
        let rg = self
            .root_groups
            .entry(key)
            .or_default()
            .entry(root.clone())
            .or_insert_with(|| RootGroup {
                first_ns: ts,
                ..RootGroup::default()
            });
        rg.tasks += 1;
        rg.roots += u64::from(is_root);
        rg.first_ns = rg.first_ns.min(ts);
        rg.last_ns = rg.last_ns.max(ts);
        if self.finding_tasks.contains(&(key, id.0)) {
            self.summary
                .finding_roots
                .insert((key, id.0), root.to_string());
        }
        let win_closed = self.procs[&key].win_closed;
        let track = if win_closed {
            None
        } else {
            let tid = self.track_id();
            let tr = Track {
                id: tid,
                parent: Some(parent_track),
                name: label.clone(),
                kind: TrackKind::Task { task: id.0 },
            };
            emit(sinks, key, &Ev::Track(&tr))?;
            if self.finding_tasks.contains(&(key, id.0)) {
                self.finding_tracks.insert((key, id.0), tid);
            }
            Some(tid)
        };
        let mut flows_in = Vec::new();
        // Spawn flow: from the spawning task's poll to the child's first poll.
        let live_parent = ctx_task.filter(|c| self.procs[&key].tasks.contains_key(c));
        if let Some(parent) = live_parent {
            if track.is_some() && self.in_window(ts) {
                let f = self.flow_id();
                let mut args: Args = vec![("task", Arg::U(id.0))];
                if let Some(k) = &kind {
                    args.push(("kind", Arg::S(k.clone())));
                }
                args.push(("spawned_at", Arg::S(locs.clone())));
                let n = format!("spawn {label}");
                self.instant(key, Some(parent), ts, &n, "spawn", &args, &[f], &[], sinks)?;
                flows_in.push(f);
            }
        }
        let sid = {
            let s = group.to_string();
            let pname = clean_frame(&self.procs[&key].name);
            self.intern(format!("{pname};{}", clean_frame(&s)))
        };
        let p = self.procs.get_mut(&key).expect("process");
        p.tasks.insert(
            id,
            TaskW {
                track,
                label,
                group,
                root,
                created: ts,
                poll_start: None,
                pending: None,
                last_end: None,
                real_end: None,
                last_poll_start: ts,
                flows_in,
                cur_flows: Vec::new(),
                pending_flows: Vec::new(),
                tree: Vec::new(),
                leaf_stacks: vec![sid],
                lanes: Vec::new(),
                open: Vec::new(),
            },
        );
        Ok(())
    }

    /// Commits the pending poll of `task` as a real poll.
    fn commit(&mut self, key: ProcessKey, id: SpanId, sinks: Sinks<'_, '_>) -> io::Result<()> {
        let p = self.procs.get_mut(&key).expect("process");
        let Some(t) = p.tasks.get_mut(&id) else {
            return Ok(());
        };
        let Some((s, e)) = t.pending.take() else {
            return Ok(());
        };
        t.real_end = Some(e);
        let d = e.saturating_sub(s);
        split(&mut self.busy_w, &t.leaf_stacks, d);
        let flows = std::mem::take(&mut t.pending_flows);
        let track = t.track;
        self.poll_slice(key, track, s, e, "poll", &flows, sinks)
    }

    #[allow(clippy::too_many_arguments)]
    fn poll_slice(
        &mut self,
        key: ProcessKey,
        track: Option<u64>,
        s: u64,
        e: u64,
        name: &str,
        flows: &[u64],
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        let Some(track) = track else { return Ok(()) };
        let from = self.opts.from_ns.unwrap_or(0);
        let to = self.opts.to_ns.unwrap_or(u64::MAX);
        if e < from || s > to {
            return Ok(());
        }
        let (cs, ce) = (s.max(from), e.min(to));
        let args: Args = vec![("duration_ns", Arg::U(e - s))];
        emit(
            sinks,
            key,
            &Ev::Complete {
                track,
                start: cs,
                end: ce,
                name,
                cat: name_cat(name),
                args: &args,
                flows_in: if cs == s { flows } else { &[] },
            },
        )
    }

    fn enter(
        &mut self,
        key: ProcessKey,
        id: SpanId,
        ts: u64,
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        if !self.procs[&key].tasks.contains_key(&id) {
            return Ok(());
        }
        self.commit(key, id, sinks)?;
        let p = self.procs.get_mut(&key).expect("process");
        let t = p.tasks.get_mut(&id).expect("task");
        let since = t.last_end.unwrap_or(t.created);
        split(
            &mut self.pending_w,
            &t.leaf_stacks,
            ts.saturating_sub(since),
        );
        t.poll_start = Some(ts);
        t.last_poll_start = ts;
        t.cur_flows = std::mem::take(&mut t.flows_in);
        Ok(())
    }

    fn poll_tree(
        &mut self,
        key: ProcessKey,
        task: SpanId,
        nodes: &[TreeNode],
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        let p = self.procs.get(&key).expect("process");
        let Some(t) = p.tasks.get(&task) else {
            return Ok(());
        };
        let start = t.poll_start.unwrap_or(p.now);
        // The new tree (async-op polls and unknown spans are transparent).
        let mut tree: Vec<NodeW> = Vec::new();
        let mut path: Vec<(u16, Option<usize>)> = Vec::new();
        for n in nodes {
            while path.last().is_some_and(|(d, _)| *d >= n.depth) {
                path.pop();
            }
            let parent = path.last().and_then(|(_, i)| *i);
            let node = match p.spans.get(&n.span).or_else(|| p.closed.get(&n.span)) {
                Some(s) if s.class != SpanClass::AsyncOpPoll => {
                    match tree
                        .iter()
                        .position(|x| x.span == n.span && x.parent == parent)
                    {
                        Some(i) => Some(i),
                        None => {
                            tree.push(NodeW {
                                span: n.span,
                                parent,
                                label: s.label.clone(),
                                point: s.point.clone(),
                            });
                            Some(tree.len() - 1)
                        }
                    }
                }
                _ => parent,
            };
            path.push((n.depth, node));
        }
        // Leaf paths.
        let leaves: Vec<usize> = (0..tree.len())
            .filter(|&i| !tree.iter().any(|n| n.parent == Some(i)))
            .collect();
        let paths: Vec<Vec<usize>> = leaves
            .iter()
            .map(|&l| {
                let mut v = vec![l];
                let mut c = l;
                while let Some(pa) = tree[c].parent {
                    v.push(pa);
                    c = pa;
                    if v.len() > tree.len() {
                        break;
                    }
                }
                v.reverse();
                v
            })
            .collect();
        let prefix = format!("{};{}", clean_frame(&p.name), clean_frame(&t.group));
        let stacks: Vec<String> = if paths.is_empty() {
            vec![prefix]
        } else {
            paths
                .iter()
                .map(|pa| {
                    let mut s = prefix.clone();
                    for &i in pa {
                        s.push(';');
                        s.push_str(&clean_frame(&tree[i].point));
                    }
                    s
                })
                .collect()
        };
        let leaf_stacks: Vec<u32> = stacks.into_iter().map(|s| self.intern(s)).collect();
        let in_win = self.in_window(start);
        let p = self.procs.get_mut(&key).expect("process");
        let win_closed = p.win_closed;
        let win_open = p.win_open;
        let Some(t) = p.tasks.get_mut(&task) else {
            return Ok(());
        };
        t.leaf_stacks = leaf_stacks;
        let gone_at = t.last_end.unwrap_or(start);
        // Await stats: nodes that left the tree ended with the last poll.
        let new_spans: HashSet<SpanId> = tree.iter().map(|n| n.span).collect();
        let mut still = Vec::with_capacity(t.open.len());
        for (s, st, point) in t.open.drain(..) {
            if new_spans.contains(&s) {
                still.push((s, st, point));
            } else {
                record_await(
                    &mut self.summary.await_points,
                    &point,
                    gone_at.saturating_sub(st),
                );
            }
        }
        for n in &tree {
            if !still.iter().any(|(s, _, _)| *s == n.span) {
                still.push((n.span, start, n.point.clone()));
            }
        }
        t.open = still;
        // Lanes.
        let task_track = t.track;
        for (li, pa) in paths.iter().enumerate() {
            if t.lanes.len() <= li {
                let id = self.next_track;
                self.next_track += 1;
                t.lanes.push(Lane {
                    track: id,
                    emitted: false,
                    stack: Vec::new(),
                });
            }
            let lane = &mut t.lanes[li];
            let common = lane
                .stack
                .iter()
                .zip(pa.iter())
                .take_while(|(e, &i)| e.span == tree[i].span)
                .count();
            while lane.stack.len() > common {
                let e = lane.stack.pop().expect("non-empty");
                if e.begun {
                    let at = if new_spans.contains(&e.span) {
                        start
                    } else {
                        gone_at.max(e.start)
                    };
                    emit(
                        sinks,
                        key,
                        &Ev::End {
                            track: lane.track,
                            ts: at,
                        },
                    )?;
                }
            }
            for &i in &pa[common..] {
                let begin = in_win && win_open && !win_closed && task_track.is_some();
                if begin {
                    if !lane.emitted {
                        lane.emitted = true;
                        let tr = Track {
                            id: lane.track,
                            parent: task_track,
                            name: if li == 0 {
                                "awaits".into()
                            } else {
                                format!("awaits {}", li + 1)
                            },
                            kind: TrackKind::Lane(li),
                        };
                        emit(sinks, key, &Ev::Track(&tr))?;
                    }
                    let args: Args = vec![("at", Arg::S(tree[i].point.to_string()))];
                    emit(
                        sinks,
                        key,
                        &Ev::Begin {
                            track: lane.track,
                            ts: start,
                            name: &tree[i].label,
                            cat: "await",
                            args: &args,
                        },
                    )?;
                }
                lane.stack.push(LaneEntry {
                    span: tree[i].span,
                    start,
                    begun: begin,
                });
            }
        }
        for lane in t.lanes.iter_mut().skip(paths.len()) {
            while let Some(e) = lane.stack.pop() {
                if e.begun {
                    let at = if new_spans.contains(&e.span) {
                        start
                    } else {
                        gone_at.max(e.start)
                    };
                    emit(
                        sinks,
                        key,
                        &Ev::End {
                            track: lane.track,
                            ts: at,
                        },
                    )?;
                }
            }
        }
        t.tree = tree;
        Ok(())
    }

    /// Ends every await slice of `t` at `at` (stats and lanes).
    fn end_awaits(
        summary: &mut WalkSummary,
        key: ProcessKey,
        t: &mut TaskW,
        at: u64,
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        for (_, st, point) in t.open.drain(..) {
            record_await(&mut summary.await_points, &point, at.saturating_sub(st));
        }
        for lane in &mut t.lanes {
            while let Some(e) = lane.stack.pop() {
                if e.begun {
                    emit(
                        sinks,
                        key,
                        &Ev::End {
                            track: lane.track,
                            ts: at.max(e.start),
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    fn close(
        &mut self,
        key: ProcessKey,
        id: SpanId,
        kind: CloseKind,
        ts: u64,
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        let p = self.procs.get_mut(&key).expect("process");
        if let Some(s) = p.spans.remove(&id) {
            if p.closed_order.len() >= CLOSED_MEMORY {
                if let Some(old) = p.closed_order.pop_front() {
                    p.closed.remove(&old);
                }
            }
            p.closed.insert(id, s);
            p.closed_order.push_back(id);
            return Ok(());
        }
        let Some(mut t) = p.tasks.remove(&id) else {
            return Ok(());
        };
        // The last enter/exit pair was the drop of the future.
        let drop = t.pending.take();
        if drop.is_none() {
            let since = t.last_end.unwrap_or(t.created);
            split(
                &mut self.pending_w,
                &t.leaf_stacks,
                ts.saturating_sub(since),
            );
        }
        let end = t.real_end.unwrap_or(ts);
        let to = self.opts.to_ns.unwrap_or(u64::MAX);
        Self::end_awaits(&mut self.summary, key, &mut t, end.min(to), sinks)?;
        if let Some((s, e)) = drop {
            self.poll_slice(key, t.track, s, e, "drop", &[], sinks)?;
        }
        let state = match kind {
            CloseKind::Cancelled => "cancelled",
            CloseKind::Panicked => "panicked",
            _ => "completed",
        };
        if let Some(rg) = self
            .root_groups
            .get_mut(&key)
            .and_then(|g| g.get_mut(&*t.root))
        {
            match kind {
                CloseKind::Cancelled => rg.cancelled += 1,
                CloseKind::Panicked => rg.panicked += 1,
                _ => rg.completed += 1,
            }
            rg.last_ns = rg.last_ns.max(ts);
        }
        if kind != CloseKind::Completed && self.in_window(ts) {
            if let Some(track) = t.track {
                let args: Args = vec![("task", Arg::S(t.label.clone()))];
                let name = format!("task {state}");
                emit(
                    sinks,
                    key,
                    &Ev::Instant {
                        track,
                        ts,
                        name: &name,
                        cat: "task",
                        args: &args,
                        flows_out: &[],
                        flows_in: &[],
                    },
                )?;
            }
        }
        Ok(())
    }

    fn wake(
        &mut self,
        key: ProcessKey,
        task: SpanId,
        by: Option<SpanId>,
        ts: u64,
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        let p = &self.procs[&key];
        let Some(t) = p.tasks.get(&task) else {
            return Ok(());
        };
        if t.track.is_none() || !self.in_window(ts) {
            return Ok(());
        }
        let label = t.label.clone();
        match by.filter(|b| *b != task && p.tasks.get(b).is_some_and(|w| w.track.is_some())) {
            Some(waker) => {
                let f = self.flow_id();
                let args: Args = vec![("woken", Arg::S(label.clone()))];
                let name = format!("wake {label}");
                self.instant(key, Some(waker), ts, &name, "wake", &args, &[f], &[], sinks)?;
                let p = self.procs.get_mut(&key).expect("process");
                if let Some(t) = p.tasks.get_mut(&task) {
                    if t.flows_in.len() < MAX_FLOWS_IN {
                        t.flows_in.push(f);
                    }
                }
                Ok(())
            }
            None => {
                let name = if by == Some(task) {
                    "self-wake"
                } else {
                    "woken"
                };
                self.instant(
                    key,
                    Some(task),
                    ts,
                    name,
                    "wake",
                    &Vec::new(),
                    &[],
                    &[],
                    sinks,
                )
            }
        }
    }

    fn follows(
        &mut self,
        key: ProcessKey,
        span: SpanId,
        follows: SpanId,
        sinks: Sinks<'_, '_>,
    ) -> io::Result<()> {
        let p = &self.procs[&key];
        let task_of = |s: SpanId| -> Option<SpanId> {
            if p.tasks.contains_key(&s) {
                return Some(s);
            }
            match p.spans.get(&s) {
                Some(sp) => sp.ctx_task,
                None => p.closed.get(&s).and_then(|c| c.ctx_task),
            }
        };
        let (Some(to), Some(from)) = (task_of(span), task_of(follows)) else {
            return Ok(());
        };
        if to == from {
            return Ok(());
        }
        let (Some(tt), Some(ft)) = (p.tasks.get(&to), p.tasks.get(&from)) else {
            return Ok(());
        };
        if tt.track.is_none() || ft.track.is_none() {
            return Ok(());
        }
        let now = p.now;
        let src_ts = ft
            .last_poll_start
            .max(p.spans.get(&follows).map_or(0, |s| s.created))
            .min(now);
        if !self.in_window(src_ts) || !self.in_window(now) {
            return Ok(());
        }
        let (tl, fl) = (tt.label.clone(), ft.label.clone());
        let f = self.flow_id();
        let args: Args = vec![("to", Arg::S(tl))];
        self.instant(
            key,
            Some(from),
            src_ts,
            "hand-off",
            "handoff",
            &args,
            &[f],
            &[],
            sinks,
        )?;
        let args: Args = vec![("from", Arg::S(fl))];
        self.instant(
            key,
            Some(to),
            now,
            "hand-off received",
            "handoff",
            &args,
            &[],
            &[f],
            sinks,
        )
    }

    /// End of input: closes what is open, marks findings, and returns what
    /// was gathered. Call [`Sink::finish`] on the sinks afterwards.
    pub fn finish(mut self, sinks: Sinks<'_, '_>) -> io::Result<WalkSummary> {
        let keys: Vec<ProcessKey> = self.procs.keys().copied().collect();
        for key in keys {
            let now = self.procs[&key].now;
            let mut ids: Vec<SpanId> = self.procs[&key].tasks.keys().copied().collect();
            ids.sort();
            for id in &ids {
                // Open tasks: the last poll was a real poll.
                self.commit(key, *id, sinks)?;
                let p = self.procs.get_mut(&key).expect("process");
                let t = p.tasks.get_mut(id).expect("task");
                if let Some(s) = t.poll_start.take() {
                    t.pending = Some((s, now));
                    t.pending_flows = std::mem::take(&mut t.cur_flows);
                    t.last_end = Some(now);
                }
                self.commit(key, *id, sinks)?;
                let p = self.procs.get_mut(&key).expect("process");
                let t = p.tasks.get_mut(id).expect("task");
                let since = t.last_end.unwrap_or(t.created);
                split(
                    &mut self.pending_w,
                    &t.leaf_stacks,
                    now.saturating_sub(since),
                );
                let to = self.opts.to_ns.unwrap_or(u64::MAX);
                Self::end_awaits(&mut self.summary, key, t, now.min(to), sinks)?;
                if let Some(rg) = self
                    .root_groups
                    .get_mut(&key)
                    .and_then(|g| g.get_mut(&*t.root))
                {
                    rg.last_ns = rg.last_ns.max(now);
                }
            }
            let marks: Vec<FindingMark> = self
                .opts
                .findings
                .iter()
                .filter(|m| m.process == key)
                .cloned()
                .collect();
            for m in marks {
                if !self.in_window(m.ts) {
                    continue;
                }
                let p = &self.procs[&key];
                let track = m
                    .task
                    .and_then(|t| self.finding_tracks.get(&(key, t)).copied())
                    .unwrap_or(p.track);
                emit(
                    sinks,
                    key,
                    &Ev::Instant {
                        track,
                        ts: m.ts,
                        name: &m.name,
                        cat: "finding",
                        args: &m.args,
                        flows_out: &[],
                        flows_in: &[],
                    },
                )?;
            }
        }
        for (i, name) in self.stack_names.iter().enumerate() {
            if self.pending_w[i] > 0 {
                self.summary.pending.insert(name.clone(), self.pending_w[i]);
            }
            if self.busy_w[i] > 0 {
                self.summary.busy.insert(name.clone(), self.busy_w[i]);
            }
        }
        for (key, groups) in std::mem::take(&mut self.root_groups) {
            for (root, rg) in groups {
                self.summary.root_groups.insert((key, root.to_string()), rg);
            }
        }
        Ok(self.summary)
    }
}

fn name_cat(name: &str) -> &'static str {
    if name == "drop" {
        "drop"
    } else {
        "poll"
    }
}

fn value(f: &Field) -> String {
    span::value_string(&f.value)
}

/// Adds `w` to the weights of `stacks`, split evenly (the remainder to the
/// first).
fn split(weights: &mut [u64], stacks: &[u32], w: u64) {
    if stacks.is_empty() || w == 0 {
        return;
    }
    let n = stacks.len() as u64;
    let each = w / n;
    let rem = w % n;
    for (i, s) in stacks.iter().enumerate() {
        let add = each + if i == 0 { rem } else { 0 };
        let slot = &mut weights[*s as usize];
        *slot = slot.saturating_add(add);
    }
}

fn record_await(points: &mut BTreeMap<String, AwaitPoint>, point: &str, d: u64) {
    let e = match points.get_mut(point) {
        Some(e) => e,
        None => points
            .entry(point.to_string())
            .or_insert_with(|| AwaitPoint {
                point: point.to_string(),
                count: 0,
                // 1ns to ~73 minutes, 2 significant digits.
                hist: Histogram::new_with_bounds(1, 1 << 42, 2).expect("valid bounds"),
            }),
    };
    e.count += 1;
    e.hist.saturating_record(d.max(1));
}

/// Walks recordings `paths` into `sinks`, then finishes the sinks.
pub fn walk_files<P: AsRef<std::path::Path>>(
    paths: &[P],
    opts: WalkOptions,
    sinks: Sinks<'_, '_>,
) -> io::Result<(WalkSummary, Vec<PolicyNote>)> {
    let mut w = Walker::new(opts);
    for path in paths {
        let file = std::fs::File::open(path.as_ref())?;
        let mut frames =
            awaitscope_wire::FrameReader::new(io::BufReader::with_capacity(1 << 16, file))
                .map_err(|e| io::Error::other(e.to_string()))?;
        // Errors after the header were reported by the model's pass: the
        // walk stops at the same frame.
        while let Ok(Some(f)) = frames.next_frame() {
            w.frame(&f, sinks)?;
            // Its vectors and boxes hold the next frame decoded.
            awaitscope_wire::recycle(f);
        }
    }
    let summary = w.finish(sinks)?;
    let mut notes = Vec::new();
    for s in sinks.iter_mut() {
        notes.push(s.finish()?);
    }
    Ok((summary, notes))
}

/// Walks frames already in memory (tests).
pub fn walk_frames(
    frames: &[Frame],
    opts: WalkOptions,
    sinks: Sinks<'_, '_>,
) -> io::Result<(WalkSummary, Vec<PolicyNote>)> {
    let mut w = Walker::new(opts);
    for f in frames {
        w.frame(f, sinks)?;
    }
    let summary = w.finish(sinks)?;
    let mut notes = Vec::new();
    for s in sinks.iter_mut() {
        notes.push(s.finish()?);
    }
    Ok((summary, notes))
}
