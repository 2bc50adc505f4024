//! The timeline's own state: what the walk keeps besides the model (the
//! names of spans for await points, each task's track, flows, lanes and
//! flame stacks, each process's window), and the helpers that write it out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;

use awaitscope_wire::{ProcessKey, SpanClass, SpanId};
use hdrhistogram::Histogram;

use super::{AwaitPoint, Ev, RootGroup, TimelineSink, WalkOptions, WalkSummary};

/// A span as the timeline names it: its label and await point, fixed at
/// its creation (the label of an async op falls back on its resource's).
pub(super) struct SpanW {
    pub(super) class: SpanClass,
    pub(super) ctx_task: Option<SpanId>,
    pub(super) created: u64,
    pub(super) label: Arc<str>,
    /// `label @ location`.
    pub(super) point: Arc<str>,
    /// Location (of a resource: its creation site).
    pub(super) loc: Option<Arc<str>>,
    /// tokio-internal (a resource inside another, or an op on one): not a
    /// node of await trees, as in the model's traces.
    pub(super) folded: bool,
}

/// A node of a task's await tree as last sent: its span, its parent node
/// (an index in the tree), its name and await point.
#[derive(Clone)]
pub(super) struct NodeW {
    pub(super) span: SpanId,
    pub(super) parent: Option<usize>,
    pub(super) label: Arc<str>,
    pub(super) point: Arc<str>,
}

/// An await slice open on a lane: the node's span, since when, and
/// whether its begin was written (it is not outside the window).
pub(super) struct LaneEntry {
    pub(super) span: SpanId,
    pub(super) start: u64,
    pub(super) begun: bool,
}

/// An "awaits" lane of a task: its track (written before its first
/// slice) and the await slices open on it, outermost first.
pub(super) struct Lane {
    pub(super) track: u64,
    pub(super) emitted: bool,
    pub(super) stack: Vec<LaneEntry>,
}

/// What the timeline keeps of a live task besides the model's state of it
/// (its polls, its last poll's end, its creation): its track, names,
/// flows, await-tree lanes and flame stacks.
pub(super) struct TaskW {
    pub(super) track: Option<u64>,
    pub(super) label: String,
    pub(super) group: Arc<str>,
    pub(super) root: Arc<str>,
    /// End of the last poll committed.
    pub(super) real_end: Option<u64>,
    /// Start of the latest poll (its spawn before its first poll).
    pub(super) last_poll_start: u64,
    /// Flows waiting for the next poll.
    pub(super) flows_in: Vec<u64>,
    /// Flows ending at the start of the current poll.
    pub(super) cur_flows: Vec<u64>,
    /// Flows ending at the start of the pending poll.
    pub(super) pending_flows: Vec<u64>,
    pub(super) tree: Vec<NodeW>,
    pub(super) leaf_stacks: Vec<u32>,
    pub(super) lanes: Vec<Lane>,
    pub(super) open: Vec<(SpanId, u64, Arc<str>)>,
}

/// The timeline's state of one process (the model's is in its
/// [`Process`](crate::model::Process)).
pub(super) struct PState {
    pub(super) key: ProcessKey,
    pub(super) track: u64,
    pub(super) name: String,
    pub(super) spans: HashMap<SpanId, SpanW>,
    /// Recently closed spans: a poll's await tree is sent at its end, after
    /// the spans of awaits completed in the poll have closed.
    pub(super) closed: HashMap<SpanId, SpanW>,
    pub(super) closed_order: VecDeque<SpanId>,
    pub(super) tasks: HashMap<SpanId, TaskW>,
    pub(super) win_open: bool,
    pub(super) win_closed: bool,
}

/// Most closed spans remembered (to find the task of a `FollowsFrom` source).
pub(super) const CLOSED_MEMORY: usize = 1 << 16;
/// Most flows waiting on one task's next poll.
pub(super) const MAX_FLOWS_IN: usize = 8;

/// What the walk keeps across processes: ids, flame stacks, the summary.
pub(super) struct WalkState {
    pub(super) opts: WalkOptions,
    pub(super) next_track: u64,
    pub(super) next_flow: u64,
    pub(super) stack_ids: HashMap<String, u32>,
    pub(super) stack_names: Vec<String>,
    pub(super) pending_w: Vec<u64>,
    pub(super) busy_w: Vec<u64>,
    pub(super) finding_tasks: HashSet<(ProcessKey, u64)>,
    pub(super) finding_tracks: HashMap<(ProcessKey, u64), u64>,
    pub(super) summary: WalkSummary,
    /// Root groups during the walk, looked up by the tasks' own `Arc<str>`
    /// (the summary's map is keyed by `String`: a lookup there allocated a
    /// key per task); moved into the summary at the end.
    pub(super) root_groups: HashMap<ProcessKey, HashMap<Arc<str>, RootGroup>>,
}

pub(super) type Sinks<'a, 'b> = &'a mut [&'b mut dyn TimelineSink];

pub(super) fn emit(sinks: Sinks<'_, '_>, key: ProcessKey, ev: &Ev<'_>) -> io::Result<()> {
    for s in sinks.iter_mut() {
        s.event(key, ev)?;
    }
    Ok(())
}

pub(super) fn clean_frame(s: &str) -> String {
    s.replace([';', '\n', '\r'], " ")
}

pub(super) fn in_window(opts: &WalkOptions, ts: u64) -> bool {
    opts.from_ns.is_none_or(|f| ts >= f) && opts.to_ns.is_none_or(|t| ts <= t)
}

impl WalkState {
    pub(super) fn track_id(&mut self) -> u64 {
        let id = self.next_track;
        self.next_track += 1;
        id
    }

    pub(super) fn flow_id(&mut self) -> u64 {
        let id = self.next_flow;
        self.next_flow += 1;
        id
    }

    pub(super) fn intern(&mut self, s: String) -> u32 {
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

    pub(super) fn in_window(&self, ts: u64) -> bool {
        in_window(&self.opts, ts)
    }
}

/// Adds `w` to the weights of `stacks`, split evenly (the remainder to the
/// first).
pub(super) fn split(weights: &mut [u64], stacks: &[u32], w: u64) {
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

pub(super) fn record_await(points: &mut BTreeMap<String, AwaitPoint>, point: &str, d: u64) {
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
