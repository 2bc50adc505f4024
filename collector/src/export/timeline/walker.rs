//! The walker: applies each process's frames to a model [`Process`] (the
//! model's rules, thread merge and all), with the timeline observing it,
//! and at the end of input closes what is still open.

use std::collections::btree_map::{Entry, VacantEntry};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;

use awaitscope_wire::{Body, Frame, ProcessKey};

use super::awaits::{advance, end_awaits};
use super::observe::Observe;
use super::state::{emit, split, PState, Sinks, WalkState};
use super::{Ev, FindingMark, Track, TrackKind, WalkOptions, WalkSummary};
use crate::config::Config;
use crate::model::Process;

/// A process: the model applying its events, and the timeline observing
/// it.
struct Proc {
    model: Process,
    tl: PState,
}

/// The streaming walker: applies each process's frames to a model
/// [`Process`] (the model's rules, merge of threads and all) and builds the
/// timeline from the [`Change`](crate::model::Change)s the model reports.
pub struct Walker {
    cfg: Config,
    procs: BTreeMap<ProcessKey, Proc>,
    sh: WalkState,
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
            sh: WalkState {
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
                    advance(obs.sh, obs.p, obs.sinks, proc.model.now)?;
                }
            }
            Body::Dropped(_) | Body::Goodbye => {}
        }
        obs.result()
    }

    /// The first frame of process `f.process`: its track, its model.
    fn new_process<'a>(
        sh: &mut WalkState,
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
    /// was gathered. Call [`TimelineSink::finish`](super::TimelineSink::finish) on the sinks afterwards.
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
