//! Findings: what detectors observe, deduplicated by kind, process and a
//! kind-specific key (usually the task's spawn location and name), so that
//! a task blocking 10,000 times is one finding with a count and the worst
//! duration.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use awaitscope_wire::{ProcessKey, SpanId};
use serde::{Deserialize, Serialize};

use super::{FindingKind, Severity};
use crate::model::hash::FastMap;
use crate::model::span::Location;
use crate::model::Task;

/// A task named by a finding: a copy of what identifies it, taken when the
/// finding is observed, so the finding outlives the task in the model.
/// (Not to be confused with `awaitscope::TaskRef`, a task in a causal trace
/// on the producer's side.) In the JSON report, the objects of a finding's
/// `tasks` array.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingTask {
    /// The id of the task's span within its process (unique there, unlike
    /// tokio ids, which a process may reuse).
    pub id: u64,
    /// tokio's task id (the `task.id` field of the task's span); `None` when
    /// the span carried none.
    pub tokio_id: Option<u64>,
    /// The name the task was spawned with; `None` for unnamed tasks.
    pub name: Option<String>,
    /// Where the task was spawned; `None` when the spawn span carried no
    /// location.
    pub spawned_at: Option<Location>,
}

impl FindingTask {
    /// A reference to `t` for findings.
    pub fn of(t: &Task) -> FindingTask {
        FindingTask {
            id: t.id.0,
            tokio_id: t.tokio_id,
            name: t.name.clone(),
            spawned_at: t.location.clone(),
        }
    }
}
/// A deduplicated finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What was found; with the process and the detector's key, what the
    /// finding is deduplicated by.
    pub kind: FindingKind,
    /// How serious the kind is: always [`FindingKind::severity`] of `kind`.
    pub severity: Severity,
    /// Process (pid).
    pub pid: u32,
    /// Process start (Unix ns), with `pid` the process key.
    pub process_start_unix_ns: u64,
    /// Tasks involved (first few occurrences; a deadlock's cycle in order).
    pub tasks: Vec<FindingTask>,
    /// Culprit source location (await point, span, event or panic site).
    pub location: Option<Location>,
    /// Human-readable description of the occurrence described: the worst,
    /// unless the worst had no native stack and an earlier one did (then
    /// that one; `location` and `trace` are always of the same occurrence).
    pub message: String,
    /// Where the occurrence described was, innermost first like a backtrace
    /// (for the poll-time kinds: native stack, async stack, task; see
    /// `docs/report-json.md`).
    pub trace: Vec<String>,
    /// Occurrences merged into this finding: new occurrences count, updates
    /// of one still in progress (a poll that goes on blocking) do not.
    pub count: u64,
    /// Worst duration among occurrences, when the kind has one.
    pub worst_ns: Option<u64>,
    /// First occurrence (ns since the process's start).
    pub first_seen: u64,
    /// Last occurrence (ns since the process's start).
    pub last_seen: u64,
}

/// One observation by a detector, merged into findings. (Serialised only
/// between a server and its viewers: an open occurrence's latest
/// observation, see [`Findings::open`].)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// What the detector found.
    pub kind: FindingKind,
    /// The process it was found in.
    pub process: ProcessKey,
    /// Deduplication key within kind and process.
    pub key: String,
    /// Tasks involved.
    pub tasks: Vec<FindingTask>,
    /// Culprit location.
    pub location: Option<Location>,
    /// Human-readable description of this occurrence; becomes the finding's
    /// message if the occurrence is the worst so far.
    pub message: String,
    /// Where this occurrence was, innermost first.
    pub trace: Vec<String>,
    /// Duration of this occurrence.
    pub duration_ns: Option<u64>,
    /// When it was observed, ns since the process's start.
    pub ts: u64,
    /// A new occurrence (count it) or the continuation of one (update only).
    pub new_occurrence: bool,
}

/// Whether a finding of `kind` with `trace` waits to be joined across
/// processes: only errors and panics carry the producer's causal trace.
fn joins_processes(kind: FindingKind, trace: &[String]) -> bool {
    matches!(kind, FindingKind::Error | FindingKind::Panic) && crate::stitch::needs_stitching(trace)
}

/// What [`Findings::tally`] did with an occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    /// Counted in its finding, which it does not describe.
    Counted,
    /// Not counted: it would not describe its finding, but is to be
    /// observed (without message or trace).
    Observe,
    /// Not counted: it may describe its finding; to be observed, described.
    Describe,
}

/// Most tasks listed on one finding.
pub const MAX_TASKS_PER_FINDING: usize = 8;

/// One occurrence a detector may judge again once more is known (a task's
/// poll, by its start): see [`Findings::observe_occurrence`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Occurrence {
    /// The task it happened to.
    pub task: SpanId,
    /// When it started (a poll's start), ns since the process's start.
    pub at: u64,
}

/// An occurrence whose verdict may still change, with its latest
/// observation (see [`Findings::observe_occurrence`]).
#[derive(Debug)]
struct Open {
    occurrence: Occurrence,
    /// Index of the finding it is shown in.
    finding: usize,
    /// Its latest observation; `new_occurrence` says whether it is counted.
    o: Observation,
}

/// Most occurrences kept open at once; beyond, the oldest is settled (its
/// verdict final, as if observed with [`Findings::observe`]).
pub const MAX_OPEN: usize = 256;

/// Most findings waiting for the process that sent their context (see
/// [`Findings::defer_join`]).
pub const MAX_DEFERRED: usize = 1024;

/// A finding's place in [`Findings`]' index: its kind, process and
/// deduplication key.
type IndexKey = (FindingKind, ProcessKey, String);

/// An index key, owned or borrowed: the index is searched with the key's
/// parts as they are (`&str`), without making an [`IndexKey`].
trait KeyRef {
    /// The kind, process and deduplication key.
    fn parts(&self) -> (FindingKind, ProcessKey, &str);
}

impl KeyRef for IndexKey {
    fn parts(&self) -> (FindingKind, ProcessKey, &str) {
        (self.0, self.1, &self.2)
    }
}

impl KeyRef for (FindingKind, ProcessKey, &str) {
    fn parts(&self) -> (FindingKind, ProcessKey, &str) {
        *self
    }
}

impl<'a> Borrow<dyn KeyRef + 'a> for IndexKey {
    fn borrow(&self) -> &(dyn KeyRef + 'a) {
        self
    }
}

// Hashed as the tuple `IndexKey` hashes (each part in turn, the `String` as
// its `str`), as `Borrow` requires.
impl Hash for dyn KeyRef + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (kind, process, key) = self.parts();
        kind.hash(state);
        process.hash(state);
        key.hash(state);
    }
}

impl PartialEq for dyn KeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyRef + '_ {}

/// The deduplicated findings.
#[derive(Debug, Default)]
pub struct Findings {
    index: FastMap<IndexKey, usize>,
    list: Vec<Finding>,
    /// Observations not kept because `max` distinct findings existed.
    pub suppressed: u64,
    max: usize,
    /// Findings whose trace was just set and has a hand-over from another
    /// process to join ([`crate::stitch`]), by index (kept in step when a
    /// finding is removed, as every index below).
    unjoined: Vec<usize>,
    /// Findings whose join waits for the process that sent their context,
    /// by index (at most [`MAX_DEFERRED`]).
    deferred: Vec<usize>,
    /// Findings added since [`Findings::take_added`] was last called, by
    /// index.
    added: Vec<usize>,
    /// Occurrences whose verdict may still change, oldest first.
    open: VecDeque<Open>,
    /// For each finding showing open occurrences (by index): the finding
    /// without them (`None`: nothing settled in it yet). What is shown is
    /// this with the open occurrences merged in, so that one can be taken
    /// back exactly.
    settled: HashMap<usize, Option<Finding>>,
}

/// Merges `o` into `f`, an occurrence of the same kind, process and key.
/// Returns whether `f`'s trace was replaced.
fn merge(f: &mut Finding, o: Observation) -> bool {
    if o.new_occurrence {
        f.count += 1;
    }
    f.first_seen = f.first_seen.min(o.ts);
    f.last_seen = f.last_seen.max(o.ts);
    let worse = match (o.duration_ns, f.worst_ns) {
        (Some(d), Some(w)) => d >= w,
        (Some(_), None) | (None, _) => true,
    };
    if o.duration_ns.is_some() {
        f.worst_ns = f.worst_ns.max(o.duration_ns);
    }
    // Message, location and trace describe one occurrence, together: the
    // worst, unless it says less of where the code blocks than the one
    // described (a poll's native stack is sampled once a poll crosses the
    // producer's threshold, and a longer poll the watchdog did not catch
    // would otherwise erase it): then that one stays described whole, its
    // message with its stack, and `worst_ns` alone tells of the worse.
    // (Its stack under the other's message sent readers to code another
    // task ran.)
    let keeps = super::native_frames::has_native_stack(&f.trace)
        && !super::native_frames::has_native_stack(&o.trace)
        && !o.trace.is_empty();
    let traced = worse && !keeps;
    if traced {
        f.message = o.message;
        f.trace = o.trace;
        f.location = o.location;
    }
    for t in o.tasks {
        if f.tasks.len() >= MAX_TASKS_PER_FINDING {
            break;
        }
        if !f.tasks.iter().any(|x| x.id == t.id) {
            f.tasks.push(t);
        }
    }
    traced
}

/// Merges `f`, the same finding as made by another model, into `e`.
fn restore_into(e: &mut Finding, f: Finding) {
    e.count = e.count.max(f.count);
    e.first_seen = e.first_seen.min(f.first_seen);
    e.last_seen = e.last_seen.max(f.last_seen);
    e.worst_ns = e.worst_ns.max(f.worst_ns);
    for t in f.tasks {
        if e.tasks.len() >= MAX_TASKS_PER_FINDING {
            break;
        }
        if !e.tasks.iter().any(|x| x.id == t.id) {
            e.tasks.push(t);
        }
    }
}

/// Adds `o` to `f`, or makes it the finding's first occurrence when there
/// is none yet.
fn add(f: &mut Option<Finding>, o: Observation) {
    match f {
        Some(f) => {
            merge(f, o);
        }
        None => *f = Some(first(o)),
    }
}

/// The finding of a first occurrence, `o`.
fn first(o: Observation) -> Finding {
    let mut tasks = o.tasks;
    tasks.truncate(
        MAX_TASKS_PER_FINDING.max(if o.kind == FindingKind::Deadlock {
            64
        } else {
            0
        }),
    );
    Finding {
        kind: o.kind,
        severity: o.kind.severity(),
        pid: o.process.pid,
        process_start_unix_ns: o.process.start_unix_ns,
        tasks,
        location: o.location,
        message: o.message,
        trace: o.trace,
        count: 1,
        worst_ns: o.duration_ns,
        first_seen: o.ts,
        last_seen: o.ts,
    }
}

impl Findings {
    /// Empty set keeping at most `max` distinct findings.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            ..Self::default()
        }
    }

    /// The findings, in order of first occurrence.
    pub fn list(&self) -> &[Finding] {
        &self.list
    }

    /// Whether an observation of `kind` under `key` lasting `duration_ns`
    /// may give its finding a new message and trace: no such finding yet
    /// (or no room for it), or it lasts at least as long as the worst so
    /// far (it does unless it lacks the native stack the finding's has). A detector whose observations are frequent and costly to
    /// describe asks first, and sends the others without message or trace
    /// ([`Findings::observe`] would drop them unread).
    pub fn describes(
        &self,
        kind: FindingKind,
        process: ProcessKey,
        key: &str,
        duration_ns: Option<u64>,
    ) -> bool {
        // Looked up by the borrowed key: a starved runtime asks for nearly
        // every wait, and a copy of the key would be made and freed each time.
        match self.index.get(&(kind, process, key) as &dyn KeyRef) {
            None => true,
            Some(&i) => match (duration_ns, self.list[i].worst_ns) {
                (Some(d), Some(w)) => d >= w,
                _ => true,
            },
        }
    }

    /// An occurrence of `task` under `key` lasting `duration_ns`, counted
    /// in its finding without an [`Observation`] when it would not describe
    /// it ([`Findings::describes`] false): as [`Findings::observe`] merges
    /// an observation without message or trace that is not the worst (its
    /// count, times and tasks), with one lookup and nothing allocated but
    /// a task added to the finding's. A detector whose observations are
    /// frequent asks this first; unless [`Tally::Counted`], it observes the
    /// occurrence itself, described or not as the answer says.
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
        let Some(&i) = self.index.get(&(kind, process, key) as &dyn KeyRef) else {
            return Tally::Describe;
        };
        let f = &mut self.list[i];
        let d = match (duration_ns, f.worst_ns) {
            (Some(d), Some(w)) if d < w => d,
            _ => return Tally::Describe,
        };
        if !self.settled.is_empty() && self.settled.contains_key(&i) {
            // It shows open occurrences: `observe` merges into what is
            // settled.
            return Tally::Observe;
        }
        if new_occurrence {
            f.count += 1;
        }
        f.first_seen = f.first_seen.min(ts);
        f.last_seen = f.last_seen.max(ts);
        f.worst_ns = f.worst_ns.max(Some(d));
        if f.tasks.len() < MAX_TASKS_PER_FINDING && !f.tasks.iter().any(|x| x.id == task.id.0) {
            f.tasks.push(FindingTask::of(task));
        }
        Tally::Counted
    }

    /// Merges an observation.
    pub fn observe(&mut self, mut o: Observation) {
        let key = (o.kind, o.process, std::mem::take(&mut o.key));
        if let Some(&i) = self.index.get(&key) {
            match self.settled.get_mut(&i) {
                // It shows open occurrences: merged into what is settled,
                // shown with them.
                Some(base) => {
                    add(base, o);
                    self.show(i);
                }
                None => {
                    if merge(&mut self.list[i], o) {
                        self.note_trace(i);
                    }
                }
            }
            return;
        }
        if self.list.len() >= self.max {
            self.suppressed += 1;
            return;
        }
        let i = self.list.len();
        self.index.insert(key, i);
        self.list.push(first(o));
        self.added.push(i);
        self.note_trace(i);
    }

    /// Merges an observation of `occurrence` whose verdict may change: its
    /// kind (a `long_poll` later found `descheduled`), or what is told of
    /// it. The occurrence's previous observation, if it is still `open`,
    /// is taken back from its finding (of whatever kind; a finding left
    /// with no occurrence is removed), and `o` counts in its place (counted
    /// if the previous one was). With `open`, `o` may itself be taken back
    /// by a later observation of the occurrence; without, it is final.
    ///
    /// At most [`MAX_OPEN`] occurrences stay open: beyond, the oldest is
    /// final. A finding showing open occurrences is recomputed from the
    /// observations, so this is for kinds whose traces are not joined
    /// across processes ([`Findings::set_trace`]). A copy of the findings
    /// ([`Findings::restore`] in a viewer that joined late) holds them as
    /// final unless it is also given what is settled of them and the open
    /// occurrences ([`Findings::restore_unsettled`],
    /// [`Findings::restore_open`]).
    pub fn observe_occurrence(&mut self, occurrence: Occurrence, mut o: Observation, open: bool) {
        if let Some(n) = self
            .open
            .iter()
            .position(|e| e.occurrence == occurrence && e.o.process == o.process)
        {
            if let Some(prev) = self.open.remove(n) {
                o.new_occurrence = prev.o.new_occurrence;
                self.show(prev.finding);
            }
        }
        if !open {
            self.observe(o);
            return;
        }
        let key = (o.kind, o.process, o.key.clone());
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                if self.list.len() >= self.max {
                    self.suppressed += 1;
                    return;
                }
                let i = self.list.len();
                self.index.insert(key, i);
                // Shown below, from nothing settled and `o`.
                self.list.push(first(o.clone()));
                self.added.push(i);
                self.settled.insert(i, None);
                i
            }
        };
        if !self.settled.contains_key(&i) {
            self.settled.insert(i, Some(self.list[i].clone()));
        }
        self.open.push_back(Open {
            occurrence,
            finding: i,
            o,
        });
        self.show(i);
        if self.open.len() > MAX_OPEN {
            self.settle_oldest();
        }
    }

    /// Makes the oldest open occurrence final.
    fn settle_oldest(&mut self) {
        let Some(e) = self.open.pop_front() else {
            return;
        };
        if let Some(base) = self.settled.get_mut(&e.finding) {
            add(base, e.o);
            self.show(e.finding);
        }
    }

    /// Shows finding `i` as its settled part with its open occurrences
    /// merged in (in the order they came); removes it when it has neither.
    fn show(&mut self, i: usize) {
        let Some(base) = self.settled.get(&i) else {
            return;
        };
        let mut shown = base.clone();
        let mut any_open = false;
        for e in self.open.iter().filter(|e| e.finding == i) {
            any_open = true;
            add(&mut shown, e.o.clone());
        }
        match shown {
            Some(f) => {
                self.list[i] = f;
                if !any_open {
                    self.settled.remove(&i);
                }
                self.note_trace(i);
            }
            None => self.remove(i),
        }
    }

    /// Removes finding `i` (its only occurrences were taken back).
    fn remove(&mut self, i: usize) {
        if i >= self.list.len() {
            return;
        }
        self.list.remove(i);
        let shift = |j: usize| if j > i { j - 1 } else { j };
        self.index.retain(|_, j| *j != i);
        for j in self.index.values_mut() {
            *j = shift(*j);
        }
        self.settled = std::mem::take(&mut self.settled)
            .into_iter()
            .filter(|(j, _)| *j != i)
            .map(|(j, f)| (shift(j), f))
            .collect();
        for e in &mut self.open {
            e.finding = shift(e.finding);
        }
        for v in [&mut self.unjoined, &mut self.deferred, &mut self.added] {
            v.retain(|j| *j != i);
            for j in v.iter_mut() {
                *j = shift(*j);
            }
        }
    }

    /// Notes finding `i` as waiting to be joined across processes if its
    /// trace (just set) asks for it.
    fn note_trace(&mut self, i: usize) {
        let f = &self.list[i];
        if joins_processes(f.kind, &f.trace) && !self.unjoined.contains(&i) {
            self.unjoined.push(i);
        }
    }

    /// The findings whose trace has a hand-over from another process to
    /// join since the last call, by index in [`Findings::list`].
    pub fn take_unjoined(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.unjoined)
    }

    /// Keeps finding `i`, whose trace could not be joined yet, to be joined
    /// when the process that sent its context arrives
    /// ([`Findings::take_deferred`]); not beyond [`MAX_DEFERRED`] of them.
    pub fn defer_join(&mut self, i: usize) {
        if i < self.list.len() && self.deferred.len() < MAX_DEFERRED && !self.deferred.contains(&i)
        {
            self.deferred.push(i);
        }
    }

    /// The findings deferred with [`Findings::defer_join`], by index in
    /// [`Findings::list`] as it is now.
    pub fn take_deferred(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.deferred)
    }

    /// The findings added since the last call (a new finding, not another
    /// occurrence of one), by index in [`Findings::list`] as it is now; one
    /// taken back before the call is not among them. For a log that tells
    /// of each finding once (one caller only).
    pub fn take_added(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.added)
    }

    /// Replaces the trace of finding `i` (a trace joined across processes).
    pub fn set_trace(&mut self, i: usize, trace: Vec<String>) {
        if let Some(f) = self.list.get_mut(i) {
            f.trace = trace;
        }
    }

    /// The findings with their deduplication keys, in order of first
    /// occurrence (for [`Findings::restore`] elsewhere).
    pub fn keyed(&self) -> Vec<(&str, &Finding)> {
        let mut keys = vec![""; self.list.len()];
        for ((_, _, key), &i) in &self.index {
            keys[i] = key;
        }
        keys.into_iter().zip(&self.list).collect()
    }

    /// The findings with their deduplication keys, in list order, as they
    /// stand with only what is final in them: each finding's settled part
    /// with those of its open occurrences that `is_final` holds final
    /// merged in (in the order they came). A finding with nothing final is
    /// left out; one without open occurrences is as listed. For an output
    /// that cannot take back what it told (a live export).
    pub fn settled_keyed(&self, is_final: impl Fn(&Observation) -> bool) -> Vec<(&str, Finding)> {
        let mut keys = vec![""; self.list.len()];
        for ((_, _, key), &i) in &self.index {
            keys[i] = key;
        }
        let mut out = Vec::with_capacity(self.list.len());
        for (i, (key, f)) in keys.into_iter().zip(&self.list).enumerate() {
            let Some(base) = self.settled.get(&i) else {
                out.push((key, f.clone()));
                continue;
            };
            let mut shown = base.clone();
            for e in self
                .open
                .iter()
                .filter(|e| e.finding == i && is_final(&e.o))
            {
                add(&mut shown, e.o.clone());
            }
            if let Some(f) = shown {
                out.push((key, f));
            }
        }
        out
    }

    /// Adds a finding made by another model (a collector's, re-sent to a
    /// viewer that joined late), merged into the one of the same kind,
    /// process and key if there is one.
    pub fn restore(&mut self, key: String, mut f: Finding) {
        f.severity = f.kind.severity();
        f.tasks.truncate(64);
        let process = ProcessKey {
            pid: f.pid,
            start_unix_ns: f.process_start_unix_ns,
        };
        if let Some(&i) = self
            .index
            .get(&(f.kind, process, key.as_str()) as &dyn KeyRef)
        {
            if let Some(Some(base)) = self.settled.get_mut(&i) {
                // Kept when its open occurrences are shown again.
                restore_into(base, f.clone());
            }
            restore_into(&mut self.list[i], f);
            return;
        }
        if self.list.len() >= self.max {
            self.suppressed += 1;
            return;
        }
        self.index.insert((f.kind, process, key), self.list.len());
        self.added.push(self.list.len());
        self.list.push(f);
    }

    /// The findings showing open occurrences, in list order, each with its
    /// deduplication key and what is settled of it (the finding without its
    /// open occurrences; `None` when it has only those). With
    /// [`Findings::open`], what a copy needs to take an open occurrence back
    /// as this set would.
    pub fn unsettled(&self) -> Vec<(&str, FindingKind, ProcessKey, Option<&Finding>)> {
        let mut out: Vec<_> = self
            .index
            .iter()
            .filter_map(|((kind, process, key), i)| {
                let settled = self.settled.get(i)?;
                Some((*i, (key.as_str(), *kind, *process, settled.as_ref())))
            })
            .collect();
        out.sort_unstable_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, u)| u).collect()
    }

    /// The latest observation of `occurrence` in `process` while it is
    /// open (its verdict may still change); `None` once it is final, or if
    /// it was never observed.
    pub fn open_observation(
        &self,
        occurrence: Occurrence,
        process: ProcessKey,
    ) -> Option<&Observation> {
        self.open
            .iter()
            .find(|e| e.occurrence == occurrence && e.o.process == process)
            .map(|e| &e.o)
    }

    /// The open occurrences, oldest first, each with its latest observation
    /// (whose `key` is its finding's).
    pub fn open(&self) -> impl Iterator<Item = (Occurrence, &Observation)> {
        self.open.iter().map(|e| (e.occurrence, &e.o))
    }

    /// Restores, after the finding itself ([`Findings::restore`]), what is
    /// settled of a finding of another set that shows open occurrences
    /// ([`Findings::unsettled`]). Ignored when the finding is not here (it
    /// was not restored: no room).
    pub fn restore_unsettled(
        &mut self,
        key: String,
        kind: FindingKind,
        process: ProcessKey,
        settled: Option<Finding>,
    ) {
        if let Some(&i) = self.index.get(&(kind, process, key)) {
            self.settled.insert(i, settled);
        }
    }

    /// Restores an open occurrence of another set ([`Findings::open`],
    /// oldest first), after what is settled of its finding
    /// ([`Findings::restore_unsettled`]): a later observation of the
    /// occurrence here takes `o` back as that set would have. The finding
    /// is shown as restored, with `o` in it already. Without its settled
    /// part here, `o` stays merged in the finding as final.
    pub fn restore_open(&mut self, occurrence: Occurrence, o: Observation) {
        let Some(&i) = self
            .index
            .get(&(o.kind, o.process, o.key.as_str()) as &dyn KeyRef)
        else {
            return;
        };
        if !self.settled.contains_key(&i)
            || self
                .open
                .iter()
                .any(|e| e.occurrence == occurrence && e.o.process == o.process)
        {
            return;
        }
        self.open.push_back(Open {
            occurrence,
            finding: i,
            o,
        });
        if self.open.len() > MAX_OPEN {
            self.settle_oldest();
        }
    }

    /// Findings of `kind`.
    pub fn of_kind(&self, kind: FindingKind) -> impl Iterator<Item = &Finding> {
        self.list.iter().filter(move |f| f.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(key: &str, d: u64, ts: u64, new: bool) -> Observation {
        Observation {
            kind: FindingKind::LongPoll,
            process: ProcessKey {
                pid: 1,
                start_unix_ns: 0,
            },
            key: key.into(),
            tasks: vec![FindingTask {
                id: ts,
                tokio_id: None,
                name: None,
                spawned_at: None,
            }],
            location: None,
            message: format!("d={d}"),
            trace: vec![],
            duration_ns: Some(d),
            ts,
            new_occurrence: new,
        }
    }

    /// Only an observation at least as long as the worst is described; the
    /// others still count, and leave the worst's message alone.
    #[test]
    fn only_the_worst_so_far_needs_describing() {
        let mut f = Findings::new(10);
        let key = ProcessKey {
            pid: 1,
            start_unix_ns: 0,
        };
        assert!(f.describes(FindingKind::LongPoll, key, "a", Some(5)));
        f.observe(obs("a", 100, 1, true));
        assert!(!f.describes(FindingKind::LongPoll, key, "a", Some(99)));
        assert!(f.describes(FindingKind::LongPoll, key, "a", Some(100)));
        assert!(f.describes(FindingKind::LongPoll, key, "b", Some(1)));
        let mut light = obs("a", 50, 2, true);
        light.message.clear();
        f.observe(light);
        let found = &f.list()[0];
        assert_eq!((found.count, found.message.as_str()), (2, "d=100"));
    }

    /// An occurrence tallied in place changes its finding as observing it
    /// without message or trace does (count, times, tasks, the worst's
    /// message kept); one that may describe it, or has no finding yet, is
    /// left to the caller.
    #[test]
    fn a_tally_is_an_undescribed_observation() {
        let key = ProcessKey {
            pid: 1,
            start_unix_ns: 0,
        };
        let (mut tallied, mut observed) = (Findings::new(10), Findings::new(10));
        let kind = FindingKind::LongPoll;
        let task = |id: u64| Task::new(SpanId(id), 0, 0);
        assert_eq!(
            tallied.tally(kind, key, "a", &task(1), Some(5), 1, true),
            Tally::Describe
        );
        tallied.observe(obs("a", 100, 1, true));
        observed.observe(obs("a", 100, 1, true));
        // Longer, or as long: it may describe the finding.
        for d in [100, 150] {
            assert_eq!(
                tallied.tally(kind, key, "a", &task(2), Some(d), 2, true),
                Tally::Describe
            );
        }
        for (i, (d, ts, new)) in [(50, 0, true), (99, 7, false), (1, 3, true)]
            .into_iter()
            .enumerate()
        {
            let id = 10 + i as u64;
            let t = task(id);
            assert_eq!(
                tallied.tally(kind, key, "a", &t, Some(d), ts, new),
                Tally::Counted
            );
            let mut light = obs("a", d, ts, new);
            light.message.clear();
            light.tasks = vec![FindingTask::of(&t)];
            observed.observe(light);
        }
        assert_eq!(tallied.list(), observed.list());
        assert_eq!(tallied.list()[0].message, "d=100");
    }

    #[test]
    fn dedups_with_count_and_worst() {
        let mut f = Findings::new(10);
        for i in 0..10_000u64 {
            f.observe(obs("a", i % 100, i, true));
        }
        f.observe(obs("a", 5000, 20_000, false));
        assert_eq!(f.list().len(), 1);
        let x = &f.list()[0];
        assert_eq!(x.count, 10_000);
        assert_eq!(x.worst_ns, Some(5000));
        assert_eq!(x.message, "d=5000");
        assert_eq!((x.first_seen, x.last_seen), (0, 20_000));
        assert_eq!(x.tasks.len(), MAX_TASKS_PER_FINDING);
    }

    fn at(file: &str, line: u32) -> Option<Location> {
        Some(Location {
            file: file.into(),
            line,
            col: None,
        })
    }

    /// A worse occurrence without a native stack leaves the one that has
    /// one described whole: its message, location and trace together (not
    /// the worse one's message above the other's stack: a reader would fix
    /// code another task ran), while `worst_ns` tells of the worse. A worse
    /// occurrence with a stack is described whole in its turn, its lack of
    /// a location included.
    #[test]
    fn a_finding_describes_one_occurrence_whole() {
        let mut f = Findings::new(10);
        let mut sampled = obs("a", 50, 1, true);
        sampled.message = "in recv (shutdown.rs:40)".into();
        sampled.location = at("src/shutdown.rs", 40);
        sampled.trace = vec!["Shutdown::recv @ src/shutdown.rs:40".into()];
        f.observe(sampled);
        let mut missed = obs("a", 70, 2, true);
        missed.message = "in apply (get.rs:63)".into();
        missed.location = at("src/get.rs", 63);
        missed.trace = vec![
            format!(
                "{}no stall was reported",
                super::super::native_frames::NO_STACK
            ),
            "apply @ src/get.rs:63".into(),
            "task #2".into(),
        ];
        f.observe(missed);
        let x = &f.list()[0];
        assert_eq!((x.count, x.worst_ns), (2, Some(70)));
        assert_eq!(x.message, "in recv (shutdown.rs:40)");
        assert_eq!(x.location, at("src/shutdown.rs", 40));
        assert_eq!(x.trace, ["Shutdown::recv @ src/shutdown.rs:40"]);
        let mut worse = obs("a", 90, 3, true);
        worse.message = "in spin".into();
        worse.trace = vec!["spin @ ../lib.rs:7".into()];
        f.observe(worse);
        let x = &f.list()[0];
        assert_eq!((x.count, x.worst_ns), (3, Some(90)));
        assert_eq!(x.message, "in spin");
        assert_eq!(x.location, None);
        assert_eq!(x.trace, ["spin @ ../lib.rs:7"]);
    }

    fn occ(at: u64) -> Occurrence {
        Occurrence {
            task: SpanId(1),
            at,
        }
    }

    fn as_kind(kind: FindingKind, mut o: Observation) -> Observation {
        o.kind = kind;
        o
    }

    /// An open occurrence judged again as another kind leaves its first
    /// finding exactly as it was without it (removed when it was its only
    /// occurrence), and counts once in the other.
    #[test]
    fn an_open_occurrence_judged_again_moves_with_its_count() {
        let mut f = Findings::new(10);
        f.observe(obs("a", 30, 1, true));
        let alone = f.list()[0].clone();
        f.observe_occurrence(occ(5), obs("a", 50, 5, true), true);
        assert_eq!((f.list()[0].count, f.list()[0].worst_ns), (2, Some(50)));
        // Another occurrence, settled, while it is open.
        f.observe(obs("a", 20, 7, true));
        let mut later = alone.clone();
        later.count = 2;
        later.last_seen = 7;
        later.tasks.push(obs("a", 20, 7, true).tasks.remove(0));
        // Judged again, still open: the same kind, no new count.
        f.observe_occurrence(occ(5), obs("a", 50, 5, false), true);
        assert_eq!(f.list()[0].count, 3);
        // Judged again as another kind: taken back.
        let moved = as_kind(FindingKind::Descheduled, obs("a", 50, 5, false));
        f.observe_occurrence(occ(5), moved.clone(), true);
        assert_eq!(f.list()[0], later);
        assert_eq!(f.list()[1].kind, FindingKind::Descheduled);
        assert_eq!(f.list()[1].count, 1);
        // And back, final: the descheduled finding had only it.
        f.observe_occurrence(occ(5), obs("a", 50, 5, false), false);
        assert_eq!(f.list().len(), 1);
        assert_eq!((f.list()[0].count, f.list()[0].worst_ns), (3, Some(50)));
        // Final: a later observation does not take it back.
        f.observe_occurrence(occ(5), moved, false);
        assert_eq!(f.list()[0].count, 3);
    }

    /// A finding removed (its only occurrence taken back) leaves the others
    /// found by their keys, the open occurrences of the later ones with
    /// them.
    #[test]
    fn removing_a_finding_keeps_the_others_in_place() {
        let mut f = Findings::new(10);
        f.observe_occurrence(occ(1), obs("a", 50, 1, true), true);
        f.observe(obs("b", 10, 2, true));
        f.observe_occurrence(occ(3), obs("c", 40, 3, true), true);
        let d = |o| as_kind(FindingKind::Descheduled, o);
        f.observe_occurrence(occ(1), d(obs("a", 50, 1, false)), false);
        let keys: Vec<(&str, FindingKind)> = f.keyed().iter().map(|(k, x)| (*k, x.kind)).collect();
        assert_eq!(
            keys,
            [
                ("b", FindingKind::LongPoll),
                ("c", FindingKind::LongPoll),
                ("a", FindingKind::Descheduled)
            ]
        );
        f.observe(obs("b", 12, 4, true));
        f.observe_occurrence(occ(3), d(obs("c", 40, 3, false)), true);
        let counts: Vec<(&str, FindingKind, u64)> = f
            .keyed()
            .iter()
            .map(|(k, x)| (*k, x.kind, x.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("b", FindingKind::LongPoll, 2),
                ("a", FindingKind::Descheduled, 1),
                ("c", FindingKind::Descheduled, 1)
            ]
        );
        assert_eq!(f.list()[0].worst_ns, Some(12));
    }

    /// Beyond [`MAX_OPEN`] open occurrences the oldest is final: judged
    /// again, it is not taken back (it counts where it was).
    #[test]
    fn the_oldest_open_occurrence_is_settled_beyond_the_cap() {
        let mut f = Findings::new(10);
        for i in 0..=MAX_OPEN as u64 {
            f.observe_occurrence(occ(i), obs("a", 50, i, true), true);
        }
        assert_eq!(f.list()[0].count, MAX_OPEN as u64 + 1);
        let d = |o| as_kind(FindingKind::Descheduled, o);
        f.observe_occurrence(occ(0), d(obs("a", 50, 0, false)), true);
        assert_eq!(f.list()[0].count, MAX_OPEN as u64 + 1);
        // Opened again, it settled the next oldest; the one after is open.
        f.observe_occurrence(occ(1), d(obs("a", 50, 1, false)), true);
        assert_eq!(f.list()[0].count, MAX_OPEN as u64 + 1);
        f.observe_occurrence(occ(3), d(obs("a", 50, 3, false)), true);
        assert_eq!(f.list()[0].count, MAX_OPEN as u64);
    }

    /// The findings added since the last look are told by identity, not by
    /// how long the list has grown: a finding taken back (a `long_poll`
    /// found `descheduled`) and another added leave the list as long, and
    /// the new one is still told; one added and taken back in between is
    /// not told at all.
    #[test]
    fn added_findings_are_told_once_whatever_was_taken_back() {
        let mut f = Findings::new(10);
        f.observe_occurrence(occ(1), obs("a", 50, 1, true), true);
        f.observe(obs("b", 20, 2, true));
        assert_eq!(f.take_added(), [0, 1]);
        let d = |o| as_kind(FindingKind::Descheduled, o);
        f.observe_occurrence(occ(1), d(obs("a", 50, 1, false)), false);
        assert_eq!(f.list().len(), 2);
        let added = f.take_added();
        assert_eq!(added, [1]);
        assert_eq!(f.list()[added[0]].kind, FindingKind::Descheduled);
        // Another occurrence of a finding is no new finding.
        f.observe(obs("b", 30, 3, true));
        assert!(f.take_added().is_empty());
        // Added, then taken back before the next look: never told.
        f.observe_occurrence(occ(4), obs("c", 40, 4, true), true);
        f.observe_occurrence(occ(4), d(obs("c", 40, 4, false)), true);
        let added = f.take_added();
        assert_eq!(added.len(), 1);
        assert_eq!(f.list()[added[0]].kind, FindingKind::Descheduled);
        assert_eq!(f.list()[added[0]].worst_ns, Some(40));
    }

    /// A finding waiting to be joined stays identified when a finding
    /// before it is removed.
    #[test]
    fn deferred_joins_follow_their_findings() {
        let mut f = Findings::new(10);
        f.observe_occurrence(occ(1), obs("a", 50, 1, true), true);
        f.observe(as_kind(FindingKind::Error, obs("e", 1, 2, true)));
        f.defer_join(1);
        let d = |o| as_kind(FindingKind::Descheduled, o);
        f.observe_occurrence(occ(1), d(obs("a", 50, 1, false)), false);
        let deferred = f.take_deferred();
        assert_eq!(deferred.len(), 1);
        assert_eq!(f.list()[deferred[0]].kind, FindingKind::Error);
    }

    #[test]
    fn caps_distinct_findings() {
        let mut f = Findings::new(2);
        for k in ["a", "b", "c", "d"] {
            f.observe(obs(k, 1, 1, true));
        }
        assert_eq!(f.list().len(), 2);
        assert_eq!(f.suppressed, 2);
    }
}
