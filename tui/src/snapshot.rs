//! A snapshot of the model: everything the views draw, copied out of the
//! model in one short pass, so rendering never touches (or locks) it.
//! Times are the processes' own clocks: snapshots of a recording are
//! deterministic.

use std::collections::HashMap;

use awaitscope_collector::model::labels::task_label;
use awaitscope_collector::model::resource::Resource;
use awaitscope_collector::model::span::value_string;
use awaitscope_collector::model::task::{level_str, Task};
use awaitscope_collector::model::{Process, TaskState};
use awaitscope_collector::{FindingKind, Model, Severity};
use awaitscope_wire::{names, ProcessKey, SpanId};
use hdrhistogram::Histogram;

/// A task across processes: (process index in the snapshot, task id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    /// Index of the process in [`Snapshot::processes`].
    pub proc: u16,
    /// Task (span) id within the process.
    pub id: u64,
}

/// One connected or recorded process.
#[derive(Clone, Debug, Default)]
pub struct ProcSummary {
    /// Operating-system process id.
    pub pid: u32,
    /// Executable name from the producer's `Hello`; `?` before it.
    pub name: String,
    /// Connected (live) or still streaming.
    pub connected: bool,
    /// The producer said `Goodbye`: its stream ended cleanly.
    pub ended: bool,
    /// Live tasks.
    pub tasks: usize,
    /// Events applied.
    pub events: u64,
    /// Events dropped (producer and collector).
    pub dropped: u64,
    /// The process clock.
    pub now: u64,
    /// Notes about its stream.
    pub notes: Vec<String>,
    /// Read from console-subscriber's gRPC API (no spans of the program,
    /// causal traces or wake edges: see its notes).
    pub console: bool,
}

/// A row of the task table.
#[derive(Clone, Debug)]
pub struct TaskRow {
    /// Which task of which process: what the selection follows.
    pub key: TaskKey,
    /// tokio task id.
    pub tokio_id: Option<u64>,
    /// Name ("" when unnamed).
    pub name: String,
    /// `kind` field.
    pub kind: String,
    /// Where the task is in its life: live states, then how it ended.
    pub state: TaskState,
    /// Time being polled, ns, up to the process clock (a running poll
    /// included).
    pub busy: u64,
    /// Time woken and waiting for a poll, ns, up to the process clock.
    pub sched: u64,
    /// Time waiting to be woken, ns, up to the process clock.
    pub idle: u64,
    /// Polls so far, counting a poll not yet committed.
    pub polls: u64,
    /// Spawn location as `file:line:col`; empty when unknown.
    pub location: String,
    /// Findings naming this task, plus its WARN/ERROR events.
    pub warnings: u32,
    /// The worst finding kind naming it, if any.
    pub worst: Option<FindingKind>,
    /// The spawning task's id in the same process; `None` for a task spawned
    /// outside any task.
    pub parent: Option<u64>,
    /// What it waits on now (the label of its await point, see
    /// `Process::await_point`, and the line it awaits at when known), for
    /// idle tasks.
    pub waiting: String,
}

/// A finding, flattened for display.
#[derive(Clone, Debug)]
pub struct FindingRow {
    /// What the detector found.
    pub kind: FindingKind,
    /// How serious the finding's kind is (its glyph and colour).
    pub severity: Severity,
    /// Index of the finding's process in [`Snapshot::processes`].
    pub proc: u16,
    /// Description of the occurrence the finding describes (see
    /// `Finding::message`; its location and trace are of the same one).
    pub message: String,
    /// Culprit location as `file:line:col`; empty when the finding has none.
    pub location: String,
    /// Tasks involved, with labels.
    pub tasks: Vec<(TaskKey, String)>,
    /// Trace (await path, span chain, or a deadlock's cycle steps).
    pub trace: Vec<String>,
    /// Occurrences merged into the finding.
    pub count: u64,
    /// Worst duration among occurrences, ns; `None` for kinds without a
    /// duration.
    pub worst_ns: Option<u64>,
    /// First occurrence (process clock).
    pub first_seen: u64,
    /// Last occurrence (process clock).
    pub last_seen: u64,
    /// What identifies the finding across snapshots (its place in the
    /// list does not: findings are sorted newest first, and one may be
    /// taken back).
    pub id: FindingId,
}

/// What identifies a finding: its kind, process and deduplication key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FindingId {
    /// The finding's kind.
    pub kind: FindingKind,
    /// Its process.
    pub process: ProcessKey,
    /// Its deduplication key within kind and process.
    pub key: String,
}

/// A resource with holders and waiters.
#[derive(Clone, Debug)]
pub struct ResourceRow {
    /// Index of the resource's process in [`Snapshot::processes`].
    pub proc: u16,
    /// The resource's span id within its process.
    pub id: u64,
    /// `Mutex`, `Semaphore`, `Sleep`...
    pub concrete_type: String,
    /// `kind` (`Sync`, `timer`).
    pub kind: String,
    /// Creation site as `file:line:col`; empty when unknown.
    pub location: String,
    /// Holders, as task labels with counts.
    pub holders: Vec<(TaskKey, String)>,
    /// Tasks waiting on it.
    pub waiters: Vec<(TaskKey, String)>,
    /// State fields (`locked=true permits=0`).
    pub state: String,
    /// Time since the resource was created, ns, up to the process clock.
    pub age: u64,
}

/// One node of a task's await tree.
#[derive(Clone, Debug)]
pub struct AwaitLine {
    /// Depth (0: awaited by the task itself).
    pub depth: usize,
    /// The label of a resource or async op (`Mutex::lock`), else the span's
    /// name.
    pub label: String,
    /// Source location.
    pub location: String,
    /// Since when it has been awaited (duration up to the process clock).
    pub for_ns: u64,
    /// The resource it is, with its holders (`Mutex held by task b#3`).
    pub resource: Option<String>,
    /// An await point a leaf waits at: what the task waits on now.
    pub leaf: bool,
}

/// Percentiles of a histogram (µs).
#[derive(Clone, Debug, Default)]
pub struct HistSummary {
    /// Samples recorded; the percentiles are meaningless when 0.
    pub count: u64,
    /// Median, µs.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest sample, µs.
    pub max: u64,
    /// Counts per power-of-two bucket of µs (1, 2, 4...).
    pub buckets: Vec<u64>,
}

/// Everything about one task.
#[derive(Clone, Debug, Default)]
pub struct TaskDetail {
    /// Label (`task name#id @ loc`).
    pub title: String,
    /// The task's state; `None` only in an empty (default) detail.
    pub state: Option<TaskState>,
    /// Fields of the task span (`name = value`).
    pub fields: Vec<(String, String)>,
    /// Spawn chain, root first (task labels).
    pub spawn_chain: Vec<String>,
    /// Await tree of the current or last poll.
    pub await_tree: Vec<AwaitLine>,
    /// Percentiles and buckets of its poll durations.
    pub poll: HistSummary,
    /// Scheduled (wake to poll) durations.
    pub scheduled: HistSummary,
    /// Busy, scheduled, idle, lifetime.
    pub times: [u64; 4],
    /// Polls so far, counting a poll not yet committed.
    pub polls: u64,
    /// Wakes of the task (`wake` and `wake_by_ref`), by anyone.
    pub wakes: u64,
    /// Wakes of the task by itself, during its own poll.
    pub self_wakes: u64,
    /// Waker clones not yet dropped or consumed by a wake: 0 for a pending
    /// task means nothing can wake it.
    pub wakers_alive: u64,
    /// Who woke it, most frequent first: (task label, or "outside any
    /// task"; count).
    pub woken_by: Vec<(String, u64)>,
    /// Tasks awaiting this one's JoinHandle.
    pub awaited_by: Vec<String>,
    /// Findings of other processes whose causal trace continues in this
    /// task (it sent them a context through a queue): `kind in process
    /// (pid): task: message`. The other way, a consumer's findings show
    /// the producer's task in their trace.
    pub handed_over_to: Vec<String>,
    /// The task's process was read from console-subscriber: its await tree
    /// holds only the resources it waits on, and who woke it is not known.
    pub console: bool,
    /// WARN/ERROR events (level, message, location).
    pub logs: Vec<(String, String, String)>,
    /// Findings naming the task, each with its location and trace.
    pub findings: Vec<FindingRow>,
    /// Causal trace: span chain, then spawning tasks, innermost first.
    pub causal: Vec<String>,
    /// The message of the panic caught while it was being polled; `None` if
    /// none was.
    pub panic: Option<String>,
}

/// What the views draw.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every process of the model, in its order (pid, start time);
    /// [`TaskKey::proc`] indexes this.
    pub processes: Vec<ProcSummary>,
    /// Tasks (live, then retained completed).
    pub tasks: Vec<TaskRow>,
    /// Findings, newest first.
    pub findings: Vec<FindingRow>,
    /// Resources (not internal ones).
    pub resources: Vec<ResourceRow>,
    /// Detail of the requested task.
    pub detail: Option<(TaskKey, TaskDetail)>,
    /// Total events applied.
    pub events: u64,
    /// Total events dropped.
    pub dropped: u64,
    /// The model's warnings about its inputs (truncated recordings, refused
    /// frames...).
    pub warnings: Vec<String>,
}

impl Snapshot {
    /// Copies what the views need out of `model`, with the detail of task
    /// `detail` (when it exists).
    pub fn build(model: &Model, detail: Option<TaskKey>) -> Snapshot {
        let procs: Vec<&Process> = model.processes().collect();
        let proc_index: HashMap<(u32, u64), u16> = procs
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.key.pid, p.key.start_unix_ns), i as u16))
            .collect();
        // Findings per task.
        let mut per_task: HashMap<TaskKey, (u32, FindingKind)> = HashMap::new();
        let mut findings = Vec::with_capacity(model.findings().list().len());
        for (key, f) in model.findings().keyed() {
            let proc = proc_index
                .get(&(f.pid, f.process_start_unix_ns))
                .copied()
                .unwrap_or(0);
            let p = procs.get(proc as usize);
            let mut tasks = Vec::new();
            for t in &f.tasks {
                let key = TaskKey { proc, id: t.id };
                let e = per_task.entry(key).or_insert((0, f.kind));
                e.0 += 1;
                if f.kind.severity() > e.1.severity() {
                    e.1 = f.kind;
                }
                let label = p
                    .and_then(|p| p.task(SpanId(t.id)))
                    .map(task_label)
                    .unwrap_or_else(|| {
                        format!("task {}#{}", t.name.as_deref().unwrap_or(""), t.id)
                    });
                tasks.push((key, label));
            }
            findings.push(FindingRow {
                kind: f.kind,
                severity: f.severity,
                proc,
                message: f.message.clone(),
                location: f
                    .location
                    .as_ref()
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
                tasks,
                trace: f.trace.clone(),
                count: f.count,
                worst_ns: f.worst_ns,
                first_seen: f.first_seen,
                last_seen: f.last_seen,
                id: FindingId {
                    kind: f.kind,
                    process: ProcessKey {
                        pid: f.pid,
                        start_unix_ns: f.process_start_unix_ns,
                    },
                    key: key.to_string(),
                },
            });
        }
        // Newest first; ties (a scan observes several at once) in a stable
        // order of their own, not the model's hash order.
        findings.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then(b.severity.cmp(&a.severity))
                .then_with(|| a.kind.as_str().cmp(b.kind.as_str()))
                .then_with(|| a.message.cmp(&b.message))
                .then_with(|| {
                    let first = |f: &FindingRow| f.tasks.first().map(|t| t.1.clone());
                    first(a).cmp(&first(b))
                })
        });

        let mut snap = Snapshot {
            findings,
            warnings: model.warnings.clone(),
            ..Snapshot::default()
        };
        let live: usize = procs
            .iter()
            .map(|p| p.tasks.len() + p.completed.len())
            .sum();
        snap.tasks.reserve(live);
        for (pi, p) in procs.iter().enumerate() {
            let pi = pi as u16;
            let dropped = p.dropped.buffer_full
                + p.dropped.disconnected
                + p.dropped.write_failed
                + p.collector_dropped;
            snap.events += p.events;
            snap.dropped += dropped;
            snap.processes.push(ProcSummary {
                pid: p.key.pid,
                name: p.name().to_string(),
                connected: p.connected,
                ended: p.ended,
                tasks: p.tasks.len(),
                events: p.events,
                dropped,
                now: p.now,
                notes: p.notes.clone(),
                console: p.is_console(),
            });
            let mut ids: Vec<&Task> = p.tasks.values().collect();
            ids.sort_unstable_by_key(|t| t.id);
            for t in ids.into_iter().chain(p.completed.iter()) {
                let key = TaskKey {
                    proc: pi,
                    id: t.id.0,
                };
                let (nf, worst) = per_task
                    .get(&key)
                    .map_or((0, None), |(n, k)| (*n, Some(*k)));
                snap.tasks.push(task_row(p, t, key, nf, worst));
            }
            let mut waiters: HashMap<SpanId, Vec<(TaskKey, String)>> = HashMap::new();
            for t in p.tasks.values() {
                for r in &t.waiting_on {
                    waiters.entry(*r).or_default().push((
                        TaskKey {
                            proc: pi,
                            id: t.id.0,
                        },
                        task_label(t),
                    ));
                }
            }
            let mut res: Vec<_> = p.resources.values().filter(|r| !r.internal).collect();
            res.sort_unstable_by_key(|r| r.id);
            // tokio keeps a Semaphore's permits and holders on the semaphore
            // inside it: shown on the program's Semaphore, where they are
            // not known otherwise.
            let inner: HashMap<SpanId, &Resource> = p
                .resources
                .values()
                .filter_map(|r| Some((r.outer?, r)))
                .collect();
            for r in res {
                let inner = inner.get(&r.id).copied();
                let holders_of = match inner {
                    Some(i) if r.holders.is_empty() => &i.holders,
                    _ => &r.holders,
                };
                let inner_state = inner
                    .into_iter()
                    .flat_map(|i| &i.state)
                    .filter(|(n, _)| !r.state.iter().any(|(m, _)| m == n));
                let label = |id: SpanId| {
                    p.task(id)
                        .map(task_label)
                        .unwrap_or_else(|| format!("task #{}", id.0))
                };
                let mut w = waiters.remove(&r.id).unwrap_or_default();
                // A Mutex's waiters wait on its inner semaphore too.
                w.sort();
                w.dedup();
                snap.resources.push(ResourceRow {
                    proc: pi,
                    id: r.id.0,
                    concrete_type: r.concrete_type.clone(),
                    kind: r.kind.clone(),
                    location: r
                        .location
                        .as_ref()
                        .map(|l| l.to_string())
                        .unwrap_or_default(),
                    holders: holders_of
                        .iter()
                        .map(|(t, n)| {
                            let l = label(*t);
                            (
                                TaskKey { proc: pi, id: t.0 },
                                if *n > 1 { format!("{l} ×{n}") } else { l },
                            )
                        })
                        .collect(),
                    waiters: w,
                    state: r
                        .state
                        .iter()
                        .chain(inner_state)
                        .filter(|(n, _)| !n.ends_with(names::OP_SUFFIX))
                        .map(|(n, v)| format!("{n}={}", value_string(v)))
                        .collect::<Vec<_>>()
                        .join(" "),
                    age: p.now.saturating_sub(r.created),
                });
            }
        }
        if let Some(k) = detail {
            if let Some(p) = procs.get(k.proc as usize) {
                if let Some(t) = p.task(SpanId(k.id)) {
                    let mut d = task_detail(p, t, &snap.findings, k);
                    d.handed_over_to = handed_over_to(p, t, &snap.findings, &snap.processes);
                    snap.detail = Some((k, d));
                }
            }
        }
        snap
    }

    /// The row of task `key`.
    pub fn task(&self, key: TaskKey) -> Option<&TaskRow> {
        self.tasks.iter().find(|t| t.key == key)
    }

    /// Live tasks per state: running, scheduled, idle, closed (retained).
    pub fn counts(&self) -> [usize; 4] {
        let mut c = [0; 4];
        for t in &self.tasks {
            let i = match t.state {
                TaskState::Running => 0,
                TaskState::Scheduled => 1,
                TaskState::Idle => 2,
                _ => 3,
            };
            c[i] += 1;
        }
        c
    }
}

fn task_row(p: &Process, t: &Task, key: TaskKey, nf: u32, worst: Option<FindingKind>) -> TaskRow {
    let now = p.now;
    let waiting = if t.state == TaskState::Idle {
        // Where it waits: not a resource it only touched (a guard
        // dropped), nor a span that closed. The deepest leaf's await point
        // (where `stuck` looks); when that path is all closed spans (a lock
        // taken, then a wait elsewhere), the last other leaf's that has
        // one, as the detail marks them.
        let tree = &t.await_tree;
        p.await_point(tree)
            .or_else(|| {
                tree.leaves()
                    .filter_map(|l| p.await_point_from(tree, l))
                    .last()
            })
            .map(|i| match p.awaits_at(tree, i) {
                // The line of its `.await`, when the wait's stack named it.
                Some(at) => format!("{} @ {at}", p.waiting_label(tree, i)),
                None => p.waiting_label(tree, i),
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    TaskRow {
        key,
        tokio_id: t.tokio_id,
        name: t.name.clone().unwrap_or_default(),
        kind: t.kind.clone().unwrap_or_default(),
        state: t.state,
        busy: t.busy_view(now),
        sched: t.scheduled_view(now),
        idle: t.idle_view(now),
        polls: t.polls_view(),
        location: t
            .location
            .as_ref()
            .map(|l| l.to_string())
            .unwrap_or_default(),
        warnings: nf + (t.warn_count + t.error_count).min(u64::from(u32::MAX / 2)) as u32,
        worst,
        parent: t.parent.map(|p| p.0),
        waiting,
    }
}

fn hist_summary(h: Option<&Histogram<u32>>) -> HistSummary {
    let Some(h) = h.filter(|h| !h.is_empty()) else {
        return HistSummary::default();
    };
    let mut buckets = vec![0u64; 24];
    for v in h.iter_recorded() {
        let us = v.value_iterated_to().max(1);
        let b = (63 - us.leading_zeros()) as usize;
        buckets[b.min(23)] += u64::from(v.count_at_value());
    }
    while buckets.len() > 1 && buckets.last() == Some(&0) {
        buckets.pop();
    }
    HistSummary {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
        buckets,
    }
}

/// Findings of other processes whose traces were joined to task `t` of `p`
/// (`awaitscope_collector::stitch`).
fn handed_over_to(
    p: &Process,
    t: &Task,
    findings: &[FindingRow],
    procs: &[ProcSummary],
) -> Vec<String> {
    findings
        .iter()
        .filter(|f| {
            procs
                .get(f.proc as usize)
                .is_some_and(|q| q.pid != p.key.pid)
        })
        .filter(|f| {
            f.trace.iter().any(|l| {
                awaitscope_collector::stitch::sent_from(l) == Some((p.key.pid, Some(t.id.0)))
            })
        })
        .map(|f| {
            let q = &procs[f.proc as usize];
            let task = f.tasks.first().map_or("", |t| t.1.as_str());
            format!(
                "{} in {} (pid {}): {task}: {}",
                f.kind.as_str(),
                q.name,
                q.pid,
                f.message
            )
        })
        .collect()
}

fn task_detail(p: &Process, t: &Task, findings: &[FindingRow], key: TaskKey) -> TaskDetail {
    let now = p.now;
    let cs = p.callsites.get(&t.callsite);
    let fields = t
        .fields
        .iter()
        .map(|f| {
            let name = cs
                .and_then(|c| c.fields.get(f.index as usize))
                .cloned()
                .unwrap_or_else(|| format!("field{}", f.index));
            (name, value_string(&f.value))
        })
        .collect();
    let mut chain = Vec::new();
    let mut cur = t.parent;
    while let Some(id) = cur {
        if chain.len() >= 32 {
            break;
        }
        match p.task(id) {
            Some(pt) => {
                chain.push(task_label(pt));
                cur = pt.parent;
            }
            None => {
                chain.push(format!("task #{} (gone)", id.0));
                break;
            }
        }
    }
    chain.reverse();
    let tree = &t.await_tree;
    // Resources internal to another (a Mutex's semaphore) are folded into
    // the resource that owns them: the wait shows on the Mutex.
    let internal = |i: usize| {
        p.resource_of(tree.nodes[i].span)
            .and_then(|r| p.resources.get(&r))
            .is_some_and(|r| r.internal)
    };
    let leaves: Vec<usize> = tree
        .leaves()
        .filter_map(|l| p.await_point_from(tree, l))
        .map(|i| p.culprit(tree, i))
        .collect();
    let await_tree = (0..tree.nodes.len())
        .filter(|&i| !internal(i))
        .map(|i| {
            let n = &tree.nodes[i];
            let resource = p
                .resource_of(n.span)
                .and_then(|r| p.resources.get(&r))
                .map(|r| {
                    if r.holders.is_empty() {
                        r.concrete_type.clone()
                    } else {
                        let hs: Vec<String> = r
                            .holders
                            .iter()
                            .map(|(h, _)| {
                                p.task(*h)
                                    .map(task_label)
                                    .unwrap_or_else(|| format!("task #{}", h.0))
                            })
                            .collect();
                        format!("{} held by {}", r.concrete_type, hs.join(", "))
                    }
                });
            AwaitLine {
                depth: tree.depth(i),
                label: p.node_label(n),
                location: p
                    .node_location(tree, i)
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
                for_ns: t.closed.unwrap_or(now).saturating_sub(n.first_entered),
                resource,
                leaf: leaves.contains(&i),
            }
        })
        .collect();
    let awaited_by = p
        .awaited_by()
        .remove(&t.id)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| p.task(id).map(task_label))
        .collect();
    let end = t.closed.unwrap_or(now);
    let hist = t.histograms();
    TaskDetail {
        console: p.is_console(),
        title: task_label(t),
        state: Some(t.state),
        fields,
        spawn_chain: chain,
        await_tree,
        poll: hist_summary(hist.as_ref().map(|h| &h.poll_us)),
        scheduled: hist_summary(hist.as_ref().map(|h| &h.scheduled_us)),
        times: [
            t.busy_view(now),
            t.scheduled_view(now),
            t.idle_view(now),
            end.saturating_sub(t.created),
        ],
        polls: t.polls_view(),
        wakes: t.wakes,
        self_wakes: t.self_wakes,
        wakers_alive: t.wakers_alive,
        woken_by: t
            .woken_by
            .iter()
            .map(|(by, n)| {
                let who = match by {
                    Some(id) if *id == t.id => "itself".to_string(),
                    Some(id) => p
                        .task(*id)
                        .map(task_label)
                        .unwrap_or_else(|| format!("task #{}", id.0)),
                    None => "outside any task".to_string(),
                };
                (who, *n)
            })
            .collect(),
        awaited_by,
        handed_over_to: Vec::new(),
        logs: t
            .logs
            .iter()
            .map(|l| {
                (
                    level_str(l.level).to_string(),
                    l.message.clone(),
                    l.location
                        .as_ref()
                        .map(|l| l.to_string())
                        .unwrap_or_default(),
                )
            })
            .collect(),
        findings: findings
            .iter()
            .filter(|f| f.tasks.iter().any(|(k, _)| *k == key))
            .cloned()
            .collect(),
        causal: p.trace(t.spawn_span, Some(t.id)),
        panic: t.panic.clone(),
    }
}
