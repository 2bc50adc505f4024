//! A streaming walk over recordings: turns frames into timeline events
//! (tracks, poll slices, await-tree slices, instants, flows) for
//! [`TimelineSink`]s, and gathers what the aggregated model does not keep:
//! the await-tree stacks weighted by pending and busy time (flame graphs),
//! the durations of every await (per await point), and the root task
//! groups.
//!
//! The walk does not read events itself: it applies each process's frames
//! to a model [`Process`](crate::model::Process) (the model's rules, thread
//! merge and all) and observes it ([`Observer`](crate::model::Observer),
//! asking for the steps): the timeline is built from the
//! [`Change`](crate::model::Change)s the model reports. What the walk keeps
//! is the timeline's own: tracks, lanes, flows, names of spans for the
//! await points, flame stacks and summaries (see the `state` module).
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

use std::collections::{BTreeMap, HashMap};
use std::io;

use awaitscope_wire::{Frame, ProcessKey};
use hdrhistogram::Histogram;

use super::PolicyNote;

mod awaits;
mod observe;
mod state;
mod walker;

use state::Sinks;
pub use walker::Walker;

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
