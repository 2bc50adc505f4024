//! A streaming walk over recordings: turns frames into timeline events
//! (tracks, poll slices, await-tree slices, instants, flows) for
//! [`TimelineSink`]s, and gathers what the aggregated model does not keep:
//! the await-tree stacks weighted by pending and busy time (flame graphs),
//! the durations of every await (per await point), and the root task
//! groups.
//!
//! The walk does not read events itself: it applies each process's frames
//! to a model [`Process`] (the model's rules, thread merge and all) and
//! observes it ([`Observer`], asking for the steps): the timeline is built
//! from the [`Change`]s the model reports. What the walk keeps is the
//! timeline's own: tracks, lanes, flows, names of spans for the await
//! points, flame stacks and summaries.
//!
//! Memory: the model of each process (bounded by its retention), the
//! timeline state of live tasks and live spans (and of a bounded number of
//! recently closed spans), the distinct flame stacks and await points;
//! never the polls themselves.
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

use std::collections::btree_map::{Entry, VacantEntry};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;

use awaitscope_wire::{
    names, Body, CloseKind, Field, Frame, Level, Log, ProcessKey, SpanClass, SpanId, TreeNode,
};
use hdrhistogram::Histogram;

use super::PolicyNote;
use crate::config::Config;
use crate::model::span::{self, Location};
use crate::model::{Change, Observer, Process, Task};

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
pub trait TimelineSink {
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

/// A span as the timeline names it: its label and await point, fixed at
/// its creation (the label of an async op falls back on its resource's).
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

/// What the timeline keeps of a live task besides the model's state of it
/// (its polls, its last poll's end, its creation): its track, names,
/// flows, await-tree lanes and flame stacks.
struct TaskW {
    track: Option<u64>,
    label: String,
    group: Arc<str>,
    root: Arc<str>,
    /// End of the last poll committed.
    real_end: Option<u64>,
    /// Start of the latest poll (its spawn before its first poll).
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

/// The timeline's state of one process (the model's is in its
/// [`Process`]).
struct PState {
    key: ProcessKey,
    track: u64,
    name: String,
    spans: HashMap<SpanId, SpanW>,
    /// Recently closed spans: a poll's await tree is sent at its end, after
    /// the spans of awaits completed in the poll have closed.
    closed: HashMap<SpanId, SpanW>,
    closed_order: VecDeque<SpanId>,
    tasks: HashMap<SpanId, TaskW>,
    win_open: bool,
    win_closed: bool,
}

/// A process: the model applying its events, and the timeline observing
/// it.
struct Proc {
    model: Process,
    tl: PState,
}

/// Most closed spans remembered (to find the task of a `FollowsFrom` source).
const CLOSED_MEMORY: usize = 1 << 16;
/// Most flows waiting on one task's next poll.
const MAX_FLOWS_IN: usize = 8;

/// What the walk keeps across processes: ids, flame stacks, the summary.
struct Shared {
    opts: WalkOptions,
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

/// The streaming walker: applies each process's frames to a model
/// [`Process`] (the model's rules, merge of threads and all) and builds the
/// timeline from the [`Change`]s the model reports.
pub struct Walker {
    cfg: Config,
    procs: BTreeMap<ProcessKey, Proc>,
    sh: Shared,
}

type Sinks<'a, 'b> = &'a mut [&'b mut dyn TimelineSink];

fn emit(sinks: Sinks<'_, '_>, key: ProcessKey, ev: &Ev<'_>) -> io::Result<()> {
    for s in sinks.iter_mut() {
        s.event(key, ev)?;
    }
    Ok(())
}

fn clean_frame(s: &str) -> String {
    s.replace([';', '\n', '\r'], " ")
}

fn in_window(opts: &WalkOptions, ts: u64) -> bool {
    opts.from_ns.is_none_or(|f| ts >= f) && opts.to_ns.is_none_or(|t| ts <= t)
}

impl Shared {
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
        in_window(&self.opts, ts)
    }
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
            cfg: Config::default(),
            procs: BTreeMap::new(),
            sh: Shared {
                opts,
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
            },
        }
    }

    /// Walks one frame.
    pub fn frame(&mut self, f: &Frame, sinks: Sinks<'_, '_>) -> io::Result<()> {
        let Self { cfg, procs, sh } = self;
        sh.summary.frames += 1;
        let proc = match procs.entry(f.process) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => Self::new_process(sh, f, e, &mut *sinks)?,
        };
        if let Body::Events(events) = &f.body {
            sh.summary.events += events.len() as u64;
        }
        let mut obs = Observe {
            sh,
            p: &mut proc.tl,
            sinks,
            err: None,
        };
        match &f.body {
            Body::Hello(info) => proc.model.hello_observed(info, &mut obs),
            Body::Events(events) => {
                proc.model.apply_events(events, cfg, &mut obs);
                // The window moves with the clock, changes or not.
                if obs.err.is_none() {
                    obs.advance(proc.model.now)?;
                }
            }
            Body::Dropped(_) | Body::Goodbye => {}
        }
        obs.result()
    }

    /// The first frame of process `f.process`: its track, its model.
    fn new_process<'a>(
        sh: &mut Shared,
        f: &Frame,
        slot: VacantEntry<'a, ProcessKey, Proc>,
        sinks: Sinks<'_, '_>,
    ) -> io::Result<&'a mut Proc> {
        let name = match &f.body {
            Body::Hello(i) => i.name.clone(),
            _ => format!("pid {}", f.process.pid),
        };
        let cmdline = match &f.body {
            Body::Hello(i) => i.cmdline.clone(),
            _ => Vec::new(),
        };
        let id = sh.track_id();
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
        Ok(slot.insert(Proc {
            model: Process::new(f.process),
            tl: PState {
                key: f.process,
                track: id,
                name,
                spans: HashMap::new(),
                closed: HashMap::new(),
                closed_order: VecDeque::new(),
                tasks: HashMap::new(),
                win_open: sh.opts.from_ns.is_none_or(|f| f == 0),
                win_closed: false,
            },
        }))
    }

    /// End of input: closes what is open, marks findings, and returns what
    /// was gathered. Call [`TimelineSink::finish`] on the sinks afterwards.
    pub fn finish(mut self, sinks: Sinks<'_, '_>) -> io::Result<WalkSummary> {
        let Self { procs, sh, .. } = &mut self;
        for (&key, proc) in procs.iter_mut() {
            let m = &mut proc.model;
            let now = m.now;
            let mut obs = Observe {
                sh,
                p: &mut proc.tl,
                sinks: &mut *sinks,
                err: None,
            };
            for id in m.task_ids() {
                // Open tasks: the last poll was a real poll.
                if m.tasks[&id].poll_start.is_none() {
                    m.commit_pending_poll(id, &mut obs);
                    if let Some(e) = obs.err.take() {
                        return Err(e);
                    }
                }
                let mt = &m.tasks[&id];
                let since = match mt.poll_start {
                    Some(s) => {
                        // A poll still running ends with the input.
                        obs.poll_ended(id);
                        obs.poll_done(id, s, now)?;
                        now
                    }
                    None => mt.last_poll_end.unwrap_or(mt.created),
                };
                let Some(t) = obs.p.tasks.get_mut(&id) else {
                    continue;
                };
                split(
                    &mut obs.sh.pending_w,
                    &t.leaf_stacks,
                    now.saturating_sub(since),
                );
                let to = obs.sh.opts.to_ns.unwrap_or(u64::MAX);
                end_awaits(&mut obs.sh.summary, key, t, now.min(to), obs.sinks)?;
                if let Some(rg) = obs
                    .sh
                    .root_groups
                    .get_mut(&key)
                    .and_then(|g| g.get_mut(&*t.root))
                {
                    rg.last_ns = rg.last_ns.max(now);
                }
            }
            let marks: Vec<FindingMark> = obs
                .sh
                .opts
                .findings
                .iter()
                .filter(|m| m.process == key)
                .cloned()
                .collect();
            for m in marks {
                if !obs.sh.in_window(m.ts) {
                    continue;
                }
                let track = m
                    .task
                    .and_then(|t| obs.sh.finding_tracks.get(&(key, t)).copied())
                    .unwrap_or(obs.p.track);
                emit(
                    obs.sinks,
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
        for (i, name) in sh.stack_names.iter().enumerate() {
            if sh.pending_w[i] > 0 {
                sh.summary.pending.insert(name.clone(), sh.pending_w[i]);
            }
            if sh.busy_w[i] > 0 {
                sh.summary.busy.insert(name.clone(), sh.busy_w[i]);
            }
        }
        for (key, groups) in std::mem::take(&mut sh.root_groups) {
            for (root, rg) in groups {
                sh.summary.root_groups.insert((key, root.to_string()), rg);
            }
        }
        Ok(std::mem::take(&mut sh.summary))
    }
}

/// The walk observing the model of one process: turns the changes it
/// reports into timeline events.
struct Observe<'a, 'b> {
    sh: &'a mut Shared,
    p: &'a mut PState,
    sinks: Sinks<'a, 'b>,
    /// The first error of a sink (an observer cannot return it): the walk
    /// stops at the end of the frame.
    err: Option<io::Error>,
}

impl Observer for Observe<'_, '_> {
    const STEPS: bool = true;

    fn change(&mut self, m: &Process, change: &Change<'_>) {
        if self.err.is_some() {
            return;
        }
        if let Err(e) = self.on_change(m, change) {
            self.err = Some(e);
        }
    }
}

impl Observe<'_, '_> {
    fn result(&mut self) -> io::Result<()> {
        match self.err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn on_change(&mut self, m: &Process, change: &Change<'_>) -> io::Result<()> {
        // The window opens or closes with the clock (the event that moved
        // it may have changed nothing).
        self.advance(m.now)?;
        match *change {
            Change::SpanCreated { span, .. } => {
                self.span_created(m, span);
                Ok(())
            }
            Change::SpanClosing { span, .. } => {
                self.span_closing(span);
                Ok(())
            }
            Change::TaskSpawned { task, ts } => self.task_spawned(m, task, ts),
            Change::PollCommitted {
                task,
                start,
                duration,
            } => self.poll_done(task, start, start.saturating_add(duration)),
            Change::PollStarted { task, ts } => {
                self.poll_started(m, task, ts);
                Ok(())
            }
            Change::PollEnded { task, .. } => {
                self.poll_ended(task);
                Ok(())
            }
            Change::TreeSent { task, spans } => self.tree_sent(m, task, spans),
            Change::TaskClosing { task, kind, ts } => self.task_closing(task, kind, ts),
            Change::Woken { task, by, ts } => self.woken(task, by, ts),
            Change::FollowsFrom { span, follows } => self.follows(m, span, follows),
            Change::Logged {
                log,
                level,
                message,
                location,
            } => self.logged(m, log, level, message, location),
            Change::Panic {
                task,
                message,
                location,
                ts,
                ..
            } => {
                let mut args: Args = Vec::new();
                if let Some(l) = location {
                    args.push(("location", Arg::S(l.to_string())));
                }
                let name = format!("panic: {message}");
                self.instant(task, ts, &name, "panic", &args, &[], &[])
            }
            Change::WaitEnded { .. } | Change::Error { .. } => Ok(()),
        }
    }

    /// Opens or closes the window as the process clock reaches `now`.
    fn advance(&mut self, now: u64) -> io::Result<()> {
        let from = self.sh.opts.from_ns;
        let to = self.sh.opts.to_ns;
        let p = &mut *self.p;
        let key = p.key;
        if !p.win_open && from.is_none_or(|f| now >= f) {
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
                                emit(self.sinks, key, &Ev::Track(&tr))?;
                            }
                            emit(
                                self.sinks,
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
        if !p.win_closed && to.is_some_and(|t| now > t) {
            p.win_closed = true;
            let at = to.unwrap_or(now);
            let mut ids: Vec<SpanId> = p.tasks.keys().copied().collect();
            ids.sort();
            for id in ids {
                let t = p.tasks.get_mut(&id).expect("task");
                for lane in &mut t.lanes {
                    for e in lane.stack.iter_mut().rev() {
                        if e.begun {
                            emit(
                                self.sinks,
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

    #[allow(clippy::too_many_arguments)]
    fn instant(
        &mut self,
        task: Option<SpanId>,
        ts: u64,
        name: &str,
        cat: &'static str,
        args: &Args,
        flows_out: &[u64],
        flows_in: &[u64],
    ) -> io::Result<()> {
        if !self.sh.in_window(ts) {
            return Ok(());
        }
        let p = &*self.p;
        let track = task
            .and_then(|t| p.tasks.get(&t))
            .and_then(|t| t.track)
            .unwrap_or(p.track);
        emit(
            self.sinks,
            p.key,
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

    /// A span (not a task) was created: its label and await point.
    fn span_created(&mut self, m: &Process, id: SpanId) {
        let Some(s) = m.spans.get(&id) else {
            return;
        };
        let p = &mut *self.p;
        let cs = m.callsites.get(&s.callsite);
        let (class, parent, fields) = (s.class, s.parent, &s.fields);
        let own_loc = span::loc_fields(cs, fields)
            .or_else(|| span::callsite_location(cs))
            .map(|l| Arc::<str>::from(l.to_string()));
        // The span's own label (the model's), else a fallback per class.
        let own = s.label.as_deref().map(String::from);
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
                ctx_task: s.ctx_task,
                created: s.created,
                label: label.into(),
                point,
                loc,
            },
        );
    }

    /// A span (not a task) closes: remembered a while among the closed.
    fn span_closing(&mut self, id: SpanId) {
        let p = &mut *self.p;
        let Some(s) = p.spans.remove(&id) else {
            return;
        };
        if p.closed_order.len() >= CLOSED_MEMORY {
            if let Some(old) = p.closed_order.pop_front() {
                p.closed.remove(&old);
            }
        }
        p.closed.insert(id, s);
        p.closed_order.push_back(id);
    }

    /// Task `id` was spawned at `ts`: its track, root group, flame stack,
    /// and the spawn flow from its parent.
    fn task_spawned(&mut self, m: &Process, id: SpanId, ts: u64) -> io::Result<()> {
        let Some(mt) = m.tasks.get(&id) else {
            return Ok(());
        };
        let key = self.p.key;
        let name = mt.name.as_deref();
        let locs = mt
            .location
            .as_ref()
            .map_or_else(|| "?".to_string(), |l| l.to_string());
        let group: Arc<str> = match name {
            Some(n) => format!("{n}@{locs}").into(),
            None => locs.clone().into(),
        };
        let label = format!("{} #{}", name.unwrap_or("task"), id.0);
        let ctx_task = mt.parent;
        let parent_task = ctx_task.and_then(|c| self.p.tasks.get(&c));
        let root = parent_task.map_or_else(|| group.clone(), |t| t.root.clone());
        let parent_track = parent_task.and_then(|t| t.track).unwrap_or(self.p.track);
        let is_root = parent_task.is_none();
        let rg = self
            .sh
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
        let named = self.sh.finding_tasks.contains(&(key, id.0));
        if named {
            self.sh
                .summary
                .finding_roots
                .insert((key, id.0), root.to_string());
        }
        let track = if self.p.win_closed {
            None
        } else {
            let tid = self.sh.track_id();
            let tr = Track {
                id: tid,
                parent: Some(parent_track),
                name: label.clone(),
                kind: TrackKind::Task { task: id.0 },
            };
            emit(self.sinks, key, &Ev::Track(&tr))?;
            if named {
                self.sh.finding_tracks.insert((key, id.0), tid);
            }
            Some(tid)
        };
        let mut flows_in = Vec::new();
        // Spawn flow: from the spawning task's poll to the child's first poll.
        let live_parent = ctx_task.filter(|c| self.p.tasks.contains_key(c));
        if let Some(parent) = live_parent {
            if track.is_some() && self.sh.in_window(ts) {
                let f = self.sh.flow_id();
                let mut args: Args = vec![("task", Arg::U(id.0))];
                if let Some(k) = &mt.kind {
                    args.push(("kind", Arg::S(k.clone())));
                }
                args.push(("spawned_at", Arg::S(locs.clone())));
                let n = format!("spawn {label}");
                self.instant(Some(parent), ts, &n, "spawn", &args, &[f], &[])?;
                flows_in.push(f);
            }
        }
        let sid = {
            let pname = clean_frame(&self.p.name);
            self.sh.intern(format!("{pname};{}", clean_frame(&group)))
        };
        self.p.tasks.insert(
            id,
            TaskW {
                track,
                label,
                group,
                root,
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

    /// A poll of `id` from `s` to `e` was a real poll: its slice, with the
    /// flows ending at its start.
    fn poll_done(&mut self, id: SpanId, s: u64, e: u64) -> io::Result<()> {
        let Some(t) = self.p.tasks.get_mut(&id) else {
            return Ok(());
        };
        t.real_end = Some(e);
        split(&mut self.sh.busy_w, &t.leaf_stacks, e.saturating_sub(s));
        let flows = std::mem::take(&mut t.pending_flows);
        let track = t.track;
        poll_slice(
            &self.sh.opts,
            self.sinks,
            self.p.key,
            track,
            (s, e),
            "poll",
            &flows,
        )
    }

    /// A poll of `id` started at `ts`: the wait since the last one is
    /// pending time; the flows waiting for it end at its start.
    fn poll_started(&mut self, m: &Process, id: SpanId, ts: u64) {
        let (Some(t), Some(mt)) = (self.p.tasks.get_mut(&id), m.tasks.get(&id)) else {
            return;
        };
        let since = mt.last_poll_end.unwrap_or(mt.created);
        split(
            &mut self.sh.pending_w,
            &t.leaf_stacks,
            ts.saturating_sub(since),
        );
        t.last_poll_start = ts;
        t.cur_flows = std::mem::take(&mut t.flows_in);
    }

    /// The poll of `id` ended: its flows wait for it to be committed.
    fn poll_ended(&mut self, id: SpanId) {
        if let Some(t) = self.p.tasks.get_mut(&id) {
            t.pending_flows = std::mem::take(&mut t.cur_flows);
        }
    }

    /// The producer sent the await tree of `task`'s poll: its flame stacks,
    /// await times and lanes.
    fn tree_sent(&mut self, m: &Process, task: SpanId, nodes: &[TreeNode]) -> io::Result<()> {
        let key = self.p.key;
        let (Some(t), Some(mt)) = (self.p.tasks.get(&task), m.tasks.get(&task)) else {
            return Ok(());
        };
        let p = &*self.p;
        let start = mt.poll_start.unwrap_or(m.now);
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
        let leaf_stacks: Vec<u32> = stacks.into_iter().map(|s| self.sh.intern(s)).collect();
        let in_win = self.sh.in_window(start);
        let gone_at = mt.last_poll_end.unwrap_or(start);
        let p = &mut *self.p;
        let win_closed = p.win_closed;
        let win_open = p.win_open;
        let Some(t) = p.tasks.get_mut(&task) else {
            return Ok(());
        };
        t.leaf_stacks = leaf_stacks;
        // Await stats: nodes that left the tree ended with the last poll.
        let new_spans: HashSet<SpanId> = tree.iter().map(|n| n.span).collect();
        let mut still = Vec::with_capacity(t.open.len());
        for (s, st, point) in t.open.drain(..) {
            if new_spans.contains(&s) {
                still.push((s, st, point));
            } else {
                record_await(
                    &mut self.sh.summary.await_points,
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
                let id = self.sh.track_id();
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
                        self.sinks,
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
                        emit(self.sinks, key, &Ev::Track(&tr))?;
                    }
                    let args: Args = vec![("at", Arg::S(tree[i].point.to_string()))];
                    emit(
                        self.sinks,
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
                        self.sinks,
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

    /// Task `task` closes at `ts` (`kind`: how): its last poll pending was
    /// the drop of its future, its awaits end, its root group counts it.
    fn task_closing(&mut self, task: &Task, kind: CloseKind, ts: u64) -> io::Result<()> {
        let key = self.p.key;
        let Some(mut t) = self.p.tasks.remove(&task.id) else {
            return Ok(());
        };
        // The last enter/exit pair was the drop of the future.
        let drop = task.pending_poll;
        if drop.is_none() {
            let since = task.last_poll_end.unwrap_or(task.created);
            split(
                &mut self.sh.pending_w,
                &t.leaf_stacks,
                ts.saturating_sub(since),
            );
        }
        let end = t.real_end.unwrap_or(ts);
        let to = self.sh.opts.to_ns.unwrap_or(u64::MAX);
        end_awaits(&mut self.sh.summary, key, &mut t, end.min(to), self.sinks)?;
        if let Some(d) = drop {
            poll_slice(
                &self.sh.opts,
                self.sinks,
                key,
                t.track,
                (d.start, d.end),
                "drop",
                &[],
            )?;
        }
        let state = match kind {
            CloseKind::Cancelled => "cancelled",
            CloseKind::Panicked => "panicked",
            _ => "completed",
        };
        if let Some(rg) = self
            .sh
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
        if kind != CloseKind::Completed && self.sh.in_window(ts) {
            if let Some(track) = t.track {
                let args: Args = vec![("task", Arg::S(t.label.clone()))];
                let name = format!("task {state}");
                emit(
                    self.sinks,
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

    /// `task` was woken at `ts` by `by`: a wake instant, and a flow from
    /// the waker's track to the woken task's next poll.
    fn woken(&mut self, task: SpanId, by: Option<SpanId>, ts: u64) -> io::Result<()> {
        let p = &*self.p;
        let Some(t) = p.tasks.get(&task) else {
            return Ok(());
        };
        if t.track.is_none() || !self.sh.in_window(ts) {
            return Ok(());
        }
        let label = t.label.clone();
        match by.filter(|b| *b != task && p.tasks.get(b).is_some_and(|w| w.track.is_some())) {
            Some(waker) => {
                let f = self.sh.flow_id();
                let args: Args = vec![("woken", Arg::S(label.clone()))];
                let name = format!("wake {label}");
                self.instant(Some(waker), ts, &name, "wake", &args, &[f], &[])?;
                if let Some(t) = self.p.tasks.get_mut(&task) {
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
                self.instant(Some(task), ts, name, "wake", &Vec::new(), &[], &[])
            }
        }
    }

    /// `span` follows from `follows`: a hand-off flow between their tasks.
    fn follows(&mut self, m: &Process, span: SpanId, follows: SpanId) -> io::Result<()> {
        let p = &*self.p;
        let task_of = |s: SpanId| -> Option<SpanId> {
            if m.tasks.contains_key(&s) {
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
        let now = m.now;
        let src_ts = ft
            .last_poll_start
            .max(p.spans.get(&follows).map_or(0, |s| s.created))
            .min(now);
        if !self.sh.in_window(src_ts) || !self.sh.in_window(now) {
            return Ok(());
        }
        let (tl, fl) = (tt.label.clone(), ft.label.clone());
        let f = self.sh.flow_id();
        let args: Args = vec![("to", Arg::S(tl))];
        self.instant(Some(from), src_ts, "hand-off", "handoff", &args, &[f], &[])?;
        let args: Args = vec![("from", Arg::S(fl))];
        self.instant(
            Some(to),
            now,
            "hand-off received",
            "handoff",
            &args,
            &[],
            &[f],
        )
    }

    /// A WARN or ERROR event: an instant on the task it names.
    fn logged(
        &mut self,
        m: &Process,
        log: &Log,
        level: Level,
        message: &str,
        location: Option<&Location>,
    ) -> io::Result<()> {
        let lvl = if level == Level::Error {
            "error"
        } else {
            "warn"
        };
        let mut args: Args = vec![("level", Arg::S(lvl.into()))];
        if let Some(l) = location {
            args.push(("location", Arg::S(l.to_string())));
        }
        if let Some(cs) = m.callsites.get(&log.callsite) {
            for f in &log.fields {
                if let Some(n) = cs.fields.get(f.index as usize) {
                    if n != names::MESSAGE {
                        args.push(("field", Arg::S(format!("{n}={}", value(f)))));
                    }
                }
            }
        }
        let name = format!("{lvl}: {message}");
        self.instant(log.task, log.ts, &name, "log", &args, &[], &[])
    }
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

/// A poll slice (`name`: `poll` or `drop`) from `s` to `e` on `track`,
/// clipped to the window.
fn poll_slice(
    opts: &WalkOptions,
    sinks: Sinks<'_, '_>,
    key: ProcessKey,
    track: Option<u64>,
    (s, e): (u64, u64),
    name: &str,
    flows: &[u64],
) -> io::Result<()> {
    let Some(track) = track else { return Ok(()) };
    let from = opts.from_ns.unwrap_or(0);
    let to = opts.to_ns.unwrap_or(u64::MAX);
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
