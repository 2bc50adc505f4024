//! The collector's whole state: the model of every process, watched by the
//! detectors. [`Model::apply`] is the single entry point for frames,
//! whether they come from a live connection or a recording.
//!
//! This is where the model ([`crate::model`]) and the detectors
//! ([`crate::detect`]) meet: the model applies a frame's events and tells
//! the detector [`Engine`] what changed; the engine scans each process on
//! its clock.

use std::collections::BTreeMap;

use awaitscope_wire::{Body, Frame, ProcessKey, SpanId};

use crate::config::Config;
use crate::detect::{
    Engine, Finding, FindingKind, Findings, Observation, Occurrence, Recollection,
};
use crate::model::{Process, ProcessSnapshot};

/// Sizes of the model, to check that memory stays bounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Processes known (connected or not).
    pub processes: usize,
    /// Live tasks.
    pub live_tasks: usize,
    /// Completed tasks kept in detail.
    pub retained_tasks: usize,
    /// Summary groups.
    pub summary_groups: usize,
    /// Tasks folded into summaries.
    pub summarised_tasks: u64,
    /// Live spans (non-task).
    pub spans: usize,
    /// Live resources.
    pub resources: usize,
    /// Distinct findings.
    pub findings: usize,
    /// Tasks with a detector episode in progress.
    pub episodes: usize,
}

/// Everything the collector knows: the processes, the detectors watching
/// them and their findings.
#[derive(Debug)]
pub struct Model {
    /// The retention limits, thresholds and caps the model was made with.
    pub config: Config,
    processes: BTreeMap<ProcessKey, Process>,
    engine: Engine,
    /// Warnings about inputs (truncated recordings, refused frames...).
    pub warnings: Vec<String>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Model {
    /// An empty model, watched by the standard detectors.
    pub fn new(config: Config) -> Self {
        let engine = Engine::standard(config.max_findings);
        Self {
            config,
            processes: BTreeMap::new(),
            engine,
            warnings: Vec::new(),
        }
    }

    /// Applies one frame from any source.
    pub fn apply(&mut self, frame: &Frame) {
        let cfg = &self.config;
        let p = self
            .processes
            .entry(frame.process)
            .or_insert_with(|| Process::new(frame.process));
        p.seq(frame.seq);
        let mut handed_over = false;
        match &frame.body {
            Body::Hello(info) => p.hello(info),
            Body::Events(events) => {
                let before = p.handovers.received;
                let mut watch = self.engine.watch(p.key, &cfg.thresholds);
                p.apply_events(events, cfg, &mut watch);
                handed_over = p.handovers.received != before;
            }
            Body::Dropped(d) => {
                p.dropped.buffer_full = p.dropped.buffer_full.max(d.buffer_full);
                p.dropped.disconnected = p.dropped.disconnected.max(d.disconnected);
                p.dropped.write_failed = p.dropped.write_failed.max(d.write_failed);
            }
            Body::Goodbye => {
                p.ended = true;
                p.connected = false;
            }
        }
        // The program ended: its findings say how it ended (the drop counts
        // of its last flush, ...) without waiting for another scan.
        let ended = matches!(frame.body, Body::Goodbye);
        let last_scan = self.engine.last_scan(&p.key);
        // What is still going on is judged up to where every thread's
        // events are known (`Process::judged_now`); after the goodbye,
        // every event is.
        let now = if ended { p.now } else { p.judged_now() };
        if ended || now >= last_scan.saturating_add(cfg.scan_interval_ns) {
            self.engine.scan(p, now, &cfg.thresholds);
        }
        self.join_processes(handed_over);
    }

    /// Continues findings' traces in the processes that sent their contexts
    /// ([`crate::stitch`]): those just made, and, when contexts arrived
    /// (`handed_over`), those that waited for their sender.
    fn join_processes(&mut self, handed_over: bool) {
        // By index in the list as it is now: the findings keep the indices
        // they give out in step when one is removed.
        let mut todo = self.engine.findings_mut().take_unjoined();
        if handed_over {
            todo.append(&mut self.engine.findings_mut().take_deferred());
        }
        if todo.is_empty() {
            return;
        }
        todo.sort_unstable();
        todo.dedup();
        for i in todo {
            let Some(f) = self.engine.findings().list().get(i) else {
                continue;
            };
            match crate::stitch::stitch(&f.trace, || self.processes.values()) {
                Some(joined) => self.engine.findings_mut().set_trace(i, joined),
                None => self.engine.findings_mut().defer_join(i),
            }
        }
    }

    /// Applies a frame received live at wall-clock time `wall_unix_ns`; the
    /// arrival time lets [`Model::scan_wall`] advance the process clock while
    /// the program is silent, without trusting its clock to match ours.
    pub fn apply_live(&mut self, frame: &Frame, wall_unix_ns: u64) {
        self.apply(frame);
        if let Some(p) = self.processes.get_mut(&frame.process) {
            // From the judged time, not the clock: a thread's events still
            // to come must not be taken as silence.
            p.last_wall = Some((wall_unix_ns, p.judged_now()));
        }
    }

    /// A live connection of `key` ended (`clean`: after a `Goodbye`).
    pub fn disconnected(&mut self, key: ProcessKey, clean: bool) {
        if let Some(p) = self.processes.get_mut(&key) {
            p.connected = false;
            if !clean && !p.ended {
                p.note("connection lost without goodbye".into());
            }
        }
    }

    /// The collector dropped `events` events of `key` (queue full).
    pub fn note_collector_drops(&mut self, key: ProcessKey, events: u64) {
        let p = self
            .processes
            .entry(key)
            .or_insert_with(|| Process::new(key));
        p.collector_dropped = p.collector_dropped.saturating_add(events);
    }

    /// Adds a note to process `key` (created if unknown).
    pub fn note(&mut self, key: ProcessKey, note: String) {
        self.processes
            .entry(key)
            .or_insert_with(|| Process::new(key))
            .note(note);
    }

    /// Adds a warning about the input (bounded).
    pub fn warn(&mut self, w: String) {
        if self.warnings.len() < 256 {
            self.warnings.push(w);
        }
    }

    /// Runs the state detectors of every process at its latest timestamp.
    pub fn scan(&mut self) {
        for p in self.processes.values_mut() {
            let now = p.now;
            self.engine.scan(p, now, &self.config.thresholds);
        }
    }

    /// Runs the state detectors of connected processes at wall-clock time
    /// `unix_ns` (live: a stalled program sends no events to advance its
    /// clock). The process clock advances by the wall time elapsed since its
    /// last live frame, or, for frames not applied with
    /// [`Model::apply_live`], to `unix_ns` minus the process start; except
    /// for a program read from console-subscriber, known up to its last
    /// update.
    pub fn scan_wall(&mut self, unix_ns: u64) {
        for p in self.processes.values_mut() {
            let mut now = if p.connected { p.judged_now() } else { p.now };
            // A program read from console-subscriber is known up to its
            // last update only (console sends one each publish interval,
            // whatever the program does): wall time past it would judge
            // what the next update settles.
            if p.connected && !p.is_console() {
                let wall_now = match p.last_wall {
                    Some((w, at)) => at.saturating_add(unix_ns.saturating_sub(w)),
                    None => unix_ns.saturating_sub(p.key.start_unix_ns),
                };
                now = now.max(wall_now);
                p.now = p.now.max(now);
            }
            self.engine.scan(p, now, &self.config.thresholds);
        }
    }

    /// End of input: commits the last polls of open tasks and scans.
    pub fn finish(&mut self) {
        for p in self.processes.values_mut() {
            self.engine.finish(p, &self.config.thresholds);
        }
        self.scan();
    }

    /// Processes, by key.
    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values()
    }

    /// Removes the process `key` (one that ended, kept long enough) with
    /// what the detectors remember of it; its findings stay.
    pub fn evict(&mut self, key: &ProcessKey) -> Option<Process> {
        self.engine.forget_process(key);
        self.processes.remove(key)
    }

    /// One process.
    pub fn process(&self, key: &ProcessKey) -> Option<&Process> {
        self.processes.get(key)
    }

    /// The findings.
    pub fn findings(&self) -> &Findings {
        self.engine.findings()
    }

    /// Adds a finding of another model (see [`Findings::restore`]).
    pub fn restore_finding(&mut self, key: String, f: Finding) {
        self.engine.findings_mut().restore(key, f);
    }

    /// Restores what is settled of a finding of another model showing open
    /// occurrences (see [`Findings::restore_unsettled`]).
    pub fn restore_unsettled(
        &mut self,
        key: String,
        kind: FindingKind,
        process: ProcessKey,
        settled: Option<Finding>,
    ) {
        self.engine
            .findings_mut()
            .restore_unsettled(key, kind, process, settled);
    }

    /// Restores an open occurrence of another model (see
    /// [`Findings::restore_open`]).
    pub fn restore_open(&mut self, occurrence: Occurrence, o: Observation) {
        self.engine.findings_mut().restore_open(occurrence, o);
    }

    /// Forgets all findings (before restoring another model's).
    pub fn clear_findings(&mut self) {
        *self.engine.findings_mut() = Findings::new(self.config.max_findings);
    }

    /// The findings added since the last call (new findings, not further
    /// occurrences; see [`Findings::take_added`]): for a log that tells of
    /// each once.
    pub fn take_added_findings(&mut self) -> Vec<&Finding> {
        let added = self.engine.findings_mut().take_added();
        let list = self.engine.findings().list();
        added.iter().filter_map(|&i| list.get(i)).collect()
    }

    /// The detector episodes in progress on live task `task` of `key`
    /// (what another model needs to continue them rather than count them
    /// again; see [`Model::resume_episodes`]).
    pub fn episodes(&self, key: &ProcessKey, task: SpanId) -> Vec<FindingKind> {
        self.engine
            .episodes(key)
            .map_or_else(Vec::new, |e| e.of(task))
    }

    /// Continues episodes of another model on live task `task` of `key`
    /// (ignored for unknown tasks).
    pub fn resume_episodes(&mut self, key: ProcessKey, task: SpanId, kinds: &[FindingKind]) {
        let live = self
            .processes
            .get(&key)
            .is_some_and(|p| p.tasks.contains_key(&task));
        if !live {
            return;
        }
        let episodes = self.engine.episodes_mut(key);
        for k in kinds {
            episodes.start(*k, task);
        }
    }

    /// The snapshot of process `key`, if the model knows it.
    pub fn snapshot_process(&self, key: &ProcessKey) -> Option<ProcessSnapshot> {
        self.processes.get(key).map(ProcessSnapshot::of)
    }

    /// Installs a snapshot: the process it stands for replaces any process
    /// of the same key. Findings and what the detectors remember are not
    /// touched (a snapshot has neither).
    pub fn restore_process(&mut self, s: &ProcessSnapshot) {
        self.processes.insert(s.key(), s.to_process());
    }

    /// [`Model::restore_process`] for a snapshot that arrived live at
    /// wall-clock time `wall_unix_ns`, as [`Model::apply_live`] does for a
    /// frame.
    pub fn restore_process_live(&mut self, s: &ProcessSnapshot, wall_unix_ns: u64) {
        self.restore_process(s);
        if let Some(p) = self.processes.get_mut(&s.key()) {
            p.last_wall = Some((wall_unix_ns, p.now));
        }
    }

    /// What the detectors remember of process `key` as a whole (what another
    /// model needs to continue its deadlocks and drop counts rather than
    /// report them again; see [`Model::resume_recollections`]).
    pub fn recollections(&self, key: &ProcessKey) -> Vec<Recollection> {
        self.engine.recall(key)
    }

    /// Continues another model's detectors on process `key` (see
    /// [`Model::recollections`]).
    pub fn resume_recollections(&mut self, key: ProcessKey, recollections: &[Recollection]) {
        self.engine.resume(key, recollections);
    }

    /// Counts of what the model holds (processes, tasks, spans, findings...),
    /// to check that memory stays bounded.
    pub fn stats(&self) -> ModelStats {
        let mut s = ModelStats {
            processes: self.processes.len(),
            findings: self.findings().list().len(),
            ..ModelStats::default()
        };
        for p in self.processes.values() {
            s.live_tasks += p.tasks.len();
            s.retained_tasks += p.completed.len();
            s.summary_groups += p.summary.len();
            s.summarised_tasks += p
                .summary
                .values()
                .map(|g| g.completed + g.cancelled + g.panicked)
                .sum::<u64>();
            s.spans += p.spans.len();
            s.resources += p.resources.len();
            s.episodes += self.engine.episodes(&p.key).map_or(0, |e| e.len());
        }
        s
    }
}
