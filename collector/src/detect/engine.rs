//! The engine: the detectors, what they remember, and their findings.
//!
//! Like tokio-console's state, which is handed its task linters, the
//! engine is handed [`Detector`]s and calls the hooks each asks for. It
//! owns their memory: the time of each process's last scan, and the
//! detector episodes in progress on each task (a task stuck for an hour is
//! one occurrence, not one per scan), forgotten when the task closes.

use std::collections::HashMap;

use awaitscope_wire::{ProcessKey, SpanId};

use super::{Detector, FindingKind, Findings, Observation, Occurrence, Recollection, Tally};
use crate::config::Thresholds;
use crate::model::hash::FastMap;
use crate::model::{Change, ChangeKind, Observer, Process, Task};

/// The detector episodes in progress on the tasks of one process: a bit
/// per finding kind, for the tasks that have any.
#[derive(Debug, Default)]
pub struct Episodes {
    tasks: FastMap<SpanId, u16>,
}

fn bit(kind: FindingKind) -> u16 {
    1 << (kind as u16)
}

impl Episodes {
    /// Whether an episode of `kind` is in progress on `task`.
    #[inline]
    pub fn active(&self, kind: FindingKind, task: SpanId) -> bool {
        !self.tasks.is_empty() && self.tasks.get(&task).is_some_and(|b| b & bit(kind) != 0)
    }

    /// Starts (or continues) an episode of `kind` on `task`.
    pub fn start(&mut self, kind: FindingKind, task: SpanId) {
        *self.tasks.entry(task).or_default() |= bit(kind);
    }

    /// Ends the episode of `kind` on `task`, if any.
    #[inline]
    pub fn end(&mut self, kind: FindingKind, task: SpanId) {
        if self.tasks.is_empty() {
            return;
        }
        if let Some(b) = self.tasks.get_mut(&task) {
            *b &= !bit(kind);
            if *b == 0 {
                self.tasks.remove(&task);
            }
        }
    }

    /// Whether any episode is in progress on `task`.
    #[inline]
    pub fn any(&self, task: SpanId) -> bool {
        !self.tasks.is_empty() && self.tasks.contains_key(&task)
    }

    /// The kinds with an episode in progress on `task`.
    pub fn of(&self, task: SpanId) -> Vec<FindingKind> {
        let b = self.tasks.get(&task).copied().unwrap_or(0);
        FindingKind::ALL
            .into_iter()
            .filter(|k| b & bit(*k) != 0)
            .collect()
    }

    /// Forgets `task` (it closed).
    #[inline]
    fn forget(&mut self, task: SpanId) {
        if !self.tasks.is_empty() {
            self.tasks.remove(&task);
        }
    }

    /// Tasks with an episode in progress.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task has an episode in progress.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// What a detector's hook is given besides the process: the thresholds,
/// the findings to add to, and the episodes of the process's tasks.
#[derive(Debug)]
pub struct Cx<'a> {
    /// The thresholds to judge by.
    pub thresholds: &'a Thresholds,
    findings: &'a mut Findings,
    episodes: &'a mut Episodes,
}

impl Cx<'_> {
    /// Adds an observation to the findings.
    pub fn observe(&mut self, o: Observation) {
        self.findings.observe(o);
    }

    /// Adds an observation of `occurrence` whose verdict may change as more
    /// is known, replacing the occurrence's previous one if that was
    /// `open` (see [`Findings::observe_occurrence`]).
    pub fn observe_occurrence(&mut self, occurrence: Occurrence, o: Observation, open: bool) {
        self.findings.observe_occurrence(occurrence, o, open);
    }

    /// The latest observation of `occurrence` in `process` while its
    /// verdict may still change (see [`Findings::open_observation`]).
    pub fn open_observation(
        &self,
        occurrence: Occurrence,
        process: ProcessKey,
    ) -> Option<&Observation> {
        self.findings.open_observation(occurrence, process)
    }

    /// Whether an observation would be described in its finding (see
    /// [`Findings::describes`]).
    pub fn describes(
        &self,
        kind: FindingKind,
        process: ProcessKey,
        key: &str,
        duration_ns: Option<u64>,
    ) -> bool {
        self.findings.describes(kind, process, key, duration_ns)
    }

    /// Counts an occurrence in its finding when it would not describe it
    /// (see [`Findings::tally`]).
    #[allow(clippy::too_many_arguments)]
    pub fn tally(
        &mut self,
        kind: FindingKind,
        process: ProcessKey,
        key: &str,
        task: &Task,
        duration_ns: Option<u64>,
        ts: u64,
        new_occurrence: bool,
    ) -> Tally {
        self.findings
            .tally(kind, process, key, task, duration_ns, ts, new_occurrence)
    }

    /// The episodes of the process's tasks.
    pub fn episodes(&mut self) -> &mut Episodes {
        self.episodes
    }

    /// Adds `o` as part of an episode of its kind on `task`: a new
    /// occurrence only if no episode was in progress.
    pub fn observe_episode(&mut self, task: SpanId, mut o: Observation) {
        o.new_occurrence = !self.episodes.active(o.kind, task);
        self.episodes.start(o.kind, task);
        self.findings.observe(o);
    }

    /// A state check of `task` for `kind`: an observation continues (or
    /// starts) an episode; none ends it.
    pub fn episode(&mut self, kind: FindingKind, task: SpanId, o: Option<Observation>) {
        match o {
            Some(o) => self.observe_episode(task, o),
            None => self.episodes.end(kind, task),
        }
    }
}

/// The detectors, and which hook of which detector to call.
#[derive(Debug, Default)]
struct Registry {
    detectors: Vec<Box<dyn Detector>>,
    /// Detectors to tell of each kind of change (index: `ChangeKind`).
    by_change: [Vec<usize>; ChangeKind::ALL.len()],
    /// Detectors to call per task on a scan.
    on_task: Vec<usize>,
    /// Detectors to call per process on a scan.
    on_scan: Vec<usize>,
}

/// What the engine remembers of one process.
#[derive(Debug, Default)]
struct Memory {
    /// Process clock at the last scan.
    last_scan: u64,
    episodes: Episodes,
}

/// The detectors at work, their memory and their findings.
#[derive(Debug)]
pub struct Engine {
    registry: Registry,
    memory: HashMap<ProcessKey, Memory>,
    findings: Findings,
}

impl Engine {
    /// An engine without detectors keeping at most `max_findings` distinct
    /// findings.
    pub fn new(max_findings: usize) -> Self {
        Self {
            registry: Registry::default(),
            memory: HashMap::new(),
            findings: Findings::new(max_findings),
        }
    }

    /// The engine with the [`standard`](super::standard) detectors.
    pub fn standard(max_findings: usize) -> Self {
        Self::new(max_findings).with_detectors(super::standard())
    }

    /// Adds `detectors`, called after those already there.
    pub fn with_detectors(
        mut self,
        detectors: impl IntoIterator<Item = Box<dyn Detector>>,
    ) -> Self {
        let r = &mut self.registry;
        for d in detectors {
            let i = r.detectors.len();
            let hooks = d.hooks();
            for k in hooks.changes {
                // The engine's observer does not ask for steps.
                assert!(!k.is_step(), "a detector cannot watch step {k:?}");
                r.by_change[*k as usize].push(i);
            }
            if hooks.tasks {
                r.on_task.push(i);
            }
            if hooks.scan {
                r.on_scan.push(i);
            }
            r.detectors.push(d);
        }
        self
    }

    /// The observer of process `key`'s changes (to pass to the model).
    pub fn watch<'a>(&'a mut self, key: ProcessKey, thresholds: &'a Thresholds) -> Watch<'a> {
        let mem = self.memory.entry(key).or_default();
        // Per kind of change: the duration at or under which no detector
        // wants a timed change (of a task without episodes).
        let mut quiet = [None; ChangeKind::ALL.len()];
        for kind in ChangeKind::ALL {
            let mut q = None;
            for (n, &i) in self.registry.by_change[kind as usize].iter().enumerate() {
                let d = self.registry.detectors[i].quiet_up_to(kind, thresholds);
                q = match (n, q, d) {
                    (0, _, d) => d,
                    (_, Some(a), Some(b)) => Some(u64::min(a, b)),
                    _ => None,
                };
                if q.is_none() {
                    break;
                }
            }
            quiet[kind as usize] = q;
        }
        Watch {
            quiet,
            registry: &mut self.registry,
            cx: Cx {
                thresholds,
                findings: &mut self.findings,
                episodes: &mut mem.episodes,
            },
        }
    }

    /// Forgets what the detectors remember of `key` (its findings stay).
    pub fn forget_process(&mut self, key: &ProcessKey) {
        self.memory.remove(key);
    }

    /// The process clock of `key` at its last scan (0: never scanned).
    pub fn last_scan(&self, key: &ProcessKey) -> u64 {
        self.memory.get(key).map_or(0, |m| m.last_scan)
    }

    /// Scans `p` at `now` (its clock): commits each task's settled poll
    /// and runs the task and process hooks, tasks in id order (a finding
    /// keeps the first tasks and the worst message it is given, so the
    /// order must not be the task map's, seeded per map and so per run).
    pub fn scan(&mut self, p: &mut Process, now: u64, thresholds: &Thresholds) {
        self.memory.entry(p.key).or_default().last_scan = now;
        let mut w = self.watch(p.key, thresholds);
        for id in p.task_ids() {
            p.commit_settled_poll(id, now, thresholds.lost_waker_grace_ns, &mut w);
            w.task(p, id, now);
        }
        w.process(p, now);
    }

    /// End of input for `p`: commits the last polls of its open tasks.
    pub fn finish(&mut self, p: &mut Process, thresholds: &Thresholds) {
        p.finish(&mut self.watch(p.key, thresholds));
    }

    /// The findings.
    pub fn findings(&self) -> &Findings {
        &self.findings
    }

    /// The findings, to restore or replace.
    pub fn findings_mut(&mut self) -> &mut Findings {
        &mut self.findings
    }

    /// The episodes in progress on the tasks of process `key`.
    pub fn episodes(&self, key: &ProcessKey) -> Option<&Episodes> {
        self.memory.get(key).map(|m| &m.episodes)
    }

    /// What the detectors remember of process `key` as a whole (see
    /// [`Recollection`]), in the order of the detectors.
    pub fn recall(&self, key: &ProcessKey) -> Vec<Recollection> {
        self.registry
            .detectors
            .iter()
            .filter_map(|d| d.recall(key))
            .collect()
    }

    /// Hands another engine's recollections of process `key` to the
    /// detectors, each taking its own.
    pub fn resume(&mut self, key: ProcessKey, recollections: &[Recollection]) {
        for d in &mut self.registry.detectors {
            for r in recollections {
                d.resume(key, r);
            }
        }
    }

    /// The episodes of process `key`, to resume another engine's.
    pub fn episodes_mut(&mut self, key: ProcessKey) -> &mut Episodes {
        &mut self.memory.entry(key).or_default().episodes
    }
}

/// The engine observing one process: what the model is handed while it
/// applies that process's events.
#[derive(Debug)]
pub struct Watch<'a> {
    /// Per kind of change: see [`Detector::quiet_up_to`].
    quiet: [Option<u64>; ChangeKind::ALL.len()],
    registry: &'a mut Registry,
    cx: Cx<'a>,
}

impl Watch<'_> {
    /// Calls the detectors that want `change`.
    #[inline(never)]
    fn dispatch(&mut self, p: &Process, change: &Change<'_>, kind: ChangeKind) {
        let Registry {
            detectors,
            by_change,
            ..
        } = &mut *self.registry;
        for &i in by_change[kind as usize].iter() {
            detectors[i].on_change(p, change, &mut self.cx);
        }
        if let Change::TaskClosing { task, .. } = change {
            // Its episodes end with it: the memory stays bounded.
            self.cx.episodes.forget(task.id);
        }
    }

    /// The task hooks, for live task `id` of `p`.
    fn task(&mut self, p: &Process, id: SpanId, now: u64) {
        let Some(t) = p.tasks.get(&id) else {
            return;
        };
        let Registry {
            detectors, on_task, ..
        } = &mut *self.registry;
        for &i in on_task.iter() {
            detectors[i].on_task(p, t, now, &mut self.cx);
        }
    }

    /// The process hooks, for `p`.
    fn process(&mut self, p: &Process, now: u64) {
        let Registry {
            detectors, on_scan, ..
        } = &mut *self.registry;
        for &i in on_scan.iter() {
            detectors[i].on_scan(p, now, &mut self.cx);
        }
    }
}

impl Observer for Watch<'_> {
    #[inline]
    fn change(&mut self, p: &Process, change: &Change<'_>) {
        let kind = change.kind();
        if let Some((task, d)) = change.timed() {
            if self.ignores(kind, task, d) {
                return;
            }
        }
        self.dispatch(p, change, kind);
    }

    /// No detector wants it ([`Detector::quiet_up_to`]) and `task` has no
    /// episode in progress.
    #[inline]
    fn ignores(&self, kind: ChangeKind, task: SpanId, d: u64) -> bool {
        let quiet = self.quiet[kind as usize].is_some_and(|q| d <= q);
        quiet && !self.cx.episodes.any(task)
    }
}
