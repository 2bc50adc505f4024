//! The JSON report of `awaitscope report` (schema: `docs/report-json.md`).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::detect::Finding;
use crate::model::await_tree::AwaitTree;
use crate::model::span::{self, Location};
use crate::model::task::{level_str, Histograms, Task};
use crate::model::Process;
use crate::Model;
use awaitscope_wire::SpanClass;

/// Version of the report schema.
pub const REPORT_VERSION: u32 = 1;

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Schema version ([`REPORT_VERSION`]).
    pub version: u32,
    /// The awaitscope version that wrote the report.
    pub generator: String,
    /// Input files, when the report was made from recordings.
    pub inputs: Vec<InputReport>,
    /// Problems with the input (truncation, malformed frames...).
    pub warnings: Vec<String>,
    /// Every process seen, connected or not, ordered by pid and start time.
    pub processes: Vec<ProcessReport>,
    /// Live tasks and retained completed tasks of every process.
    pub tasks: Vec<TaskReport>,
    /// Findings, in order of first occurrence.
    pub findings: Vec<Finding>,
    /// Dropped events, all processes together.
    pub dropped: DroppedReport,
}

/// One input file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InputReport {
    /// Path as given.
    pub path: String,
    /// Frames read.
    pub frames: u64,
    /// Bytes of complete frames read (after the preamble).
    pub bytes: u64,
    /// The file ends inside a frame (the producer was killed mid-write).
    pub truncated: bool,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
    /// The processes whose frames the file holds.
    #[serde(skip)]
    pub processes: Vec<awaitscope_wire::ProcessKey>,
    /// When the file was last written (ns since the Unix epoch), when known.
    #[serde(skip)]
    pub written_unix_ns: Option<u64>,
}

impl InputReport {
    /// Whether reading stopped on bytes that are not a frame (junk, a
    /// corrupted frame, a length past the cap), rather than at the end of
    /// the file, or stopped before a single frame: the rest of the file was
    /// not read. A file cut inside a frame after good ones (a killed
    /// writer) is `truncated`, not damaged.
    pub fn damaged(&self) -> bool {
        self.error.is_some() && (!self.truncated || self.frames == 0)
    }
}

/// Dropped events.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DroppedReport {
    /// By producers, thread buffer full.
    pub producer_buffer_full: u64,
    /// By producers, no collector connected.
    pub producer_disconnected: u64,
    /// By producers, writing failed.
    pub producer_write_failed: u64,
    /// By the collector (ingest queue full).
    pub collector: u64,
    /// All of the above.
    pub total: u64,
    /// Findings not kept because the findings cap was reached.
    pub findings_suppressed: u64,
}

/// What a report keeps of a process evicted from the model: its summary
/// and its drops.
#[derive(Clone, Debug)]
pub struct EvictedProcess {
    /// Its summary as it was when evicted (`evicted` set).
    pub process: ProcessReport,
    /// Its dropped events (`findings_suppressed` unused).
    pub dropped: DroppedReport,
}

impl EvictedProcess {
    /// What is kept of `p`.
    pub fn of(p: &Process) -> EvictedProcess {
        let mut process = process_report(p);
        process.evicted = true;
        let producer = p
            .dropped
            .buffer_full
            .saturating_add(p.dropped.disconnected)
            .saturating_add(p.dropped.write_failed);
        EvictedProcess {
            process,
            dropped: DroppedReport {
                producer_buffer_full: p.dropped.buffer_full,
                producer_disconnected: p.dropped.disconnected,
                producer_write_failed: p.dropped.write_failed,
                collector: p.collector_dropped,
                total: producer.saturating_add(p.collector_dropped),
                findings_suppressed: 0,
            },
        }
    }
}

/// One process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    /// Operating-system process id; with `start_unix_ns`, the process key.
    pub pid: u32,
    /// Start, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// Executable name.
    pub name: String,
    /// Command line.
    pub cmdline: Vec<String>,
    /// Producer's awaitscope version (for a program read from
    /// console-subscriber: `console-subscriber (console-api V)`).
    pub producer_version: Option<String>,
    /// Where the events came from: `awaitscope` (an instrumented program)
    /// or `console` (console-subscriber's gRPC API: coarser, and without
    /// await trees of spans, causal traces or wake edges; its `notes` say
    /// what is not known).
    pub source: &'static str,
    /// tokio's instrumentation was on.
    pub tokio_unstable: bool,
    /// Still connected (live) / stream not ended.
    pub connected: bool,
    /// Ended with a goodbye.
    pub ended: bool,
    /// Ended, and removed from a long-running serve's model after its
    /// retention: this summary, its counts and its findings are what is
    /// kept; its tasks are no longer listed.
    pub evicted: bool,
    /// Reconnects seen.
    pub reconnects: u32,
    /// Latest timestamp (ns since the process's start).
    pub now_ns: u64,
    /// Frames applied.
    pub frames: u64,
    /// Events applied.
    pub events: u64,
    /// Frames out of sequence.
    pub seq_gaps: u64,
    /// Events about a span the collector never saw created (a first poll,
    /// a wake or an await tree sent before the span's creation): applied as
    /// nothing, so what they say is missing from the report.
    pub unknown_span_events: u64,
    /// Live tasks.
    pub tasks_live: usize,
    /// Completed tasks kept in detail.
    pub tasks_retained: usize,
    /// Completed tasks summarised (no longer in `tasks`).
    pub tasks_summarised: u64,
    /// Summaries of completed tasks, by spawn location and name.
    pub summary: Vec<crate::model::task::TaskSummary>,
    /// Live resources.
    pub resources: Vec<ResourceReport>,
    /// WARN events.
    pub warn_events: u64,
    /// ERROR events.
    pub error_events: u64,
    /// Notes (lost connection, truncation).
    pub notes: Vec<String>,
}

/// A resource.
#[derive(Clone, Debug, Serialize)]
pub struct ResourceReport {
    /// Span id.
    pub id: u64,
    /// `concrete_type`.
    pub concrete_type: String,
    /// `kind`.
    pub kind: String,
    /// Creation site.
    pub location: Option<Location>,
    /// Internal to another resource (e.g. the semaphore inside a Mutex).
    pub internal: bool,
    /// Of an internal resource, the id of the one it is inside, when
    /// known (a tokio Semaphore's permits and holders are on its inner
    /// semaphore).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer: Option<u64>,
    /// Tasks holding it.
    pub holders: Vec<u64>,
    /// Tasks waiting on it.
    pub waiters: Vec<u64>,
    /// Latest state fields.
    pub state: BTreeMap<String, serde_json::Value>,
}

/// Percentiles of a histogram, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct HistReport {
    /// Samples recorded (polls, or wake-to-poll delays).
    pub count: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest sample, µs.
    pub max_us: u64,
}

impl HistReport {
    fn of(h: &Histogram<u32>) -> Option<Self> {
        (!h.is_empty()).then(|| HistReport {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        })
    }
}

/// A node of an await tree.
#[derive(Clone, Debug, Serialize)]
pub struct AwaitNodeReport {
    /// Span name, async op source (`Mutex::lock`) or resource type.
    pub name: String,
    /// `span`, `resource` or `async_op`.
    pub kind: &'static str,
    /// Source location.
    pub location: Option<Location>,
    /// Time since the span was first entered (ns).
    pub elapsed_ns: u64,
    /// Nested spans.
    pub children: Vec<AwaitNodeReport>,
}

/// A WARN/ERROR event of a task.
#[derive(Clone, Debug, Serialize)]
pub struct LogReport {
    /// `warn` or `error`.
    pub level: &'static str,
    /// The event's `message` field (or, without one, its name).
    pub message: String,
    /// Where the event was emitted; `None` when its callsite has no file
    /// and line.
    pub location: Option<Location>,
    /// When (ns since the process's start).
    pub ts: u64,
}

/// One task.
#[derive(Clone, Debug, Serialize)]
pub struct TaskReport {
    /// The pid of the task's process (tasks of all processes share the list).
    pub pid: u32,
    /// Task (span) id, unique within the process.
    pub id: u64,
    /// tokio task id.
    pub tokio_id: Option<u64>,
    /// The name it was spawned with (`task.name`); `None` when unnamed.
    pub name: Option<String>,
    /// `kind` field (`task`, `blocking`, `block_on`, `local`).
    pub kind: Option<String>,
    /// Spawning task's id.
    pub parent: Option<u64>,
    /// Tasks awaiting this task's `JoinHandle` (tasks spawned with
    /// `awaitscope::spawn`; live tasks only).
    pub awaited_by: Vec<u64>,
    /// Spawn location.
    pub spawned_at: Option<Location>,
    /// `running`, `scheduled`, `idle` (live) or `completed`, `cancelled`,
    /// `panicked` (ended): [`TaskState::as_str`](crate::model::task::TaskState::as_str).
    pub state: &'static str,
    /// Committed polls (the drop of the future at the end is not a poll).
    pub polls: u64,
    /// Time being polled.
    pub busy_ns: u64,
    /// Time woken and waiting for a poll.
    pub scheduled_ns: u64,
    /// The rest of its life.
    pub idle_ns: u64,
    /// Spawn time (ns since the process's start).
    pub created_ns: u64,
    /// When the task ended, ns since the process's start; `None` while it
    /// lives.
    pub closed_ns: Option<u64>,
    /// Wakes of the task (`wake` and `wake_by_ref`), by anyone.
    pub wakes: u64,
    /// Wakes of the task by itself, during its own poll.
    pub self_wakes: u64,
    /// Waker clones not yet dropped or consumed by a wake: 0 for a pending
    /// task means nothing can wake it.
    pub wakers_alive: u64,
    /// Percentiles of the durations of its polls; `None` before its first
    /// committed poll.
    pub poll_time: Option<HistReport>,
    /// Percentiles of its wake-to-poll delays; `None` before the first.
    pub scheduled_time: Option<HistReport>,
    /// Resources it waits on.
    pub waiting_on: Vec<u64>,
    /// Await tree of its last poll (pending tasks).
    pub await_tree: Vec<AwaitNodeReport>,
    /// Task span fields.
    pub fields: BTreeMap<String, serde_json::Value>,
    /// WARN events.
    pub warn_count: u64,
    /// ERROR events.
    pub error_count: u64,
    /// Recent WARN/ERROR events.
    pub logs: Vec<LogReport>,
    /// The message of the panic caught while it was being polled; `None` if
    /// none was.
    pub panic: Option<String>,
}

impl Report {
    /// Builds the report of `model`.
    pub fn from_model(model: &Model) -> Report {
        let mut r = Report {
            version: REPORT_VERSION,
            generator: format!("awaitscope {}", env!("CARGO_PKG_VERSION")),
            inputs: Vec::new(),
            warnings: model.warnings.clone(),
            processes: Vec::new(),
            tasks: Vec::new(),
            findings: model.findings().list().to_vec(),
            dropped: DroppedReport {
                findings_suppressed: model.findings().suppressed,
                ..DroppedReport::default()
            },
        };
        for p in model.processes() {
            r.processes.push(process_report(p));
            let d = &mut r.dropped;
            d.producer_buffer_full = d.producer_buffer_full.saturating_add(p.dropped.buffer_full);
            d.producer_disconnected = d
                .producer_disconnected
                .saturating_add(p.dropped.disconnected);
            d.producer_write_failed = d
                .producer_write_failed
                .saturating_add(p.dropped.write_failed);
            d.collector = d.collector.saturating_add(p.collector_dropped);
            let mut tasks: Vec<&Task> = p.tasks.values().chain(p.completed.iter()).collect();
            tasks.sort_by_key(|t| t.id);
            let awaited_by = p.awaited_by();
            for t in tasks {
                let mut tr = task_report(p, t);
                if let Some(by) = awaited_by.get(&t.id) {
                    tr.awaited_by = by.iter().map(|s| s.0).collect();
                }
                r.tasks.push(tr);
            }
        }
        let d = &mut r.dropped;
        d.total = d
            .producer_buffer_full
            .saturating_add(d.producer_disconnected)
            .saturating_add(d.producer_write_failed)
            .saturating_add(d.collector);
        r
    }

    /// Adds what was kept of processes evicted from the model (a
    /// long-running serve's), their drops counted in the totals.
    pub fn add_evicted<'a>(&mut self, evicted: impl IntoIterator<Item = &'a EvictedProcess>) {
        for e in evicted {
            self.processes.push(e.process.clone());
            let (d, e) = (&mut self.dropped, &e.dropped);
            d.producer_buffer_full = d
                .producer_buffer_full
                .saturating_add(e.producer_buffer_full);
            d.producer_disconnected = d
                .producer_disconnected
                .saturating_add(e.producer_disconnected);
            d.producer_write_failed = d
                .producer_write_failed
                .saturating_add(e.producer_write_failed);
            d.collector = d.collector.saturating_add(e.collector);
            d.total = d.total.saturating_add(e.total);
        }
        self.processes
            .sort_by_key(|p| (p.pid, p.start_unix_ns, p.evicted));
    }

    /// The inputs that are unreadable past some point ([`InputReport::damaged`]).
    pub fn damaged_inputs(&self) -> impl Iterator<Item = &InputReport> {
        self.inputs.iter().filter(|i| i.damaged())
    }

    /// Whether a finding of one of `kinds` exists.
    pub fn has_finding(&self, kinds: &[crate::FindingKind]) -> bool {
        self.findings.iter().any(|f| kinds.contains(&f.kind))
    }

    /// A short human-readable summary: a line per finding, with its trace
    /// (innermost first) under it.
    pub fn summary_text(&self) -> String {
        let mut s = String::new();
        let live = self.tasks.iter().filter(|t| t.closed_ns.is_none()).count();
        s.push_str(&format!(
            "awaitscope: {} process(es), {} task(s) ({} live), {} finding(s)\n",
            self.processes.len(),
            self.tasks.len() as u64
                + self
                    .processes
                    .iter()
                    .map(|p| p.tasks_summarised)
                    .sum::<u64>(),
            live,
            self.findings.len()
        ));
        for p in &self.processes {
            if p.source == crate::model::process::SOURCE_CONSOLE {
                s.push_str(&format!(
                    "  {}: read from console-subscriber's gRPC API (not known from it: await \
                     trees of spans, causal traces, wake edges, the task tree, native stacks, \
                     errors and panics)\n",
                    p.name
                ));
                if p.notes.iter().any(|n| n == CONSOLE_NO_TASKS) {
                    s.push_str(&format!("  {}: {CONSOLE_NO_TASKS}\n", p.name));
                }
            }
        }
        for f in &self.findings {
            let loc = f
                .location
                .as_ref()
                .map_or(String::new(), |l| format!(" at {l}"));
            let count = if f.count > 1 {
                format!(" (x{})", f.count)
            } else {
                String::new()
            };
            s.push_str(&format!(
                "  [{}] {}{}{}: {}\n",
                f.kind,
                severity_str(f),
                count,
                loc,
                f.message
            ));
            crate::trace::write_block(&mut s, &f.trace, 6);
        }
        if self.dropped.total > 0 {
            s.push_str(&format!("  {} event(s) dropped\n", self.dropped.total));
        }
        for p in self.processes.iter().filter(|p| p.unknown_span_events > 0) {
            s.push_str(&format!(
                "  {} event(s) of pid {} about spans never seen created (ignored)\n",
                p.unknown_span_events, p.pid
            ));
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        s
    }
}

fn severity_str(f: &Finding) -> &'static str {
    match f.severity {
        crate::Severity::Info => "info",
        crate::Severity::Warning => "warning",
        crate::Severity::Error => "error",
    }
}

fn process_report(p: &Process) -> ProcessReport {
    let mut summary: Vec<_> = p.summary.values().cloned().collect();
    summary.sort_by(|a, b| a.group.cmp(&b.group));
    let mut resources: Vec<ResourceReport> = p
        .resources
        .values()
        .map(|r| {
            let mut waiters: Vec<u64> = p
                .tasks
                .values()
                .filter(|t| t.waiting_on.contains(&r.id))
                .map(|t| t.id.0)
                .collect();
            waiters.sort_unstable();
            ResourceReport {
                id: r.id.0,
                concrete_type: r.concrete_type.clone(),
                kind: r.kind.clone(),
                location: r.location.clone(),
                internal: r.internal,
                outer: r.outer.map(|o| o.0),
                holders: r.holders.iter().map(|h| h.0 .0).collect(),
                waiters,
                state: r
                    .state
                    .iter()
                    .map(|(n, v)| (n.clone(), span::value_json(v)))
                    .collect(),
            }
        })
        .collect();
    resources.sort_by_key(|r| r.id);
    let info = p.info.as_ref();
    let tasks_summarised = summary
        .iter()
        .map(|s| s.completed + s.cancelled + s.panicked)
        .sum();
    let mut notes = p.notes.clone();
    if p.source() == crate::model::process::SOURCE_CONSOLE
        && p.tasks.is_empty()
        && p.completed.is_empty()
        && tasks_summarised == 0
    {
        notes.push(CONSOLE_NO_TASKS.to_string());
    }
    ProcessReport {
        pid: p.key.pid,
        start_unix_ns: p.key.start_unix_ns,
        name: p.name().to_string(),
        cmdline: info.map(|i| i.cmdline.clone()).unwrap_or_default(),
        producer_version: info.map(|i| i.producer_version.clone()),
        source: p.source(),
        tokio_unstable: info.is_some_and(|i| i.tokio_unstable),
        connected: p.connected,
        ended: p.ended,
        evicted: false,
        reconnects: p.hellos.saturating_sub(1),
        now_ns: p.now,
        frames: p.frames,
        events: p.events,
        seq_gaps: p.seq_gaps,
        unknown_span_events: p.unknown_span_events,
        tasks_live: p.tasks.len(),
        tasks_retained: p.completed.len(),
        tasks_summarised,
        summary,
        resources,
        warn_events: p.warn_count,
        error_events: p.error_count,
        notes,
    }
}

/// The note of a process read from console-subscriber that named none of
/// its tasks (console-subscriber itself says nothing then).
pub const CONSOLE_NO_TASKS: &str = "console-subscriber named no task of this program: it had \
    spawned none, or tokio's task spans did not reach console's layer (a filter in front of it \
    must let `tokio=trace,runtime=trace` through)";

fn await_nodes(
    p: &Process,
    tree: &AwaitTree,
    parent: Option<u16>,
    now: u64,
) -> Vec<AwaitNodeReport> {
    tree.children(parent)
        .map(|i| {
            let n = &tree.nodes[i];
            AwaitNodeReport {
                name: p.node_label(n),
                kind: match n.class {
                    SpanClass::Resource => "resource",
                    SpanClass::AsyncOp | SpanClass::AsyncOpPoll => "async_op",
                    _ => "span",
                },
                location: p.node_location(tree, i),
                elapsed_ns: now.saturating_sub(n.first_entered),
                children: await_nodes(p, tree, Some(i as u16), now),
            }
        })
        .collect()
}

/// Poll times, including the last poll of an open task (not yet committed);
/// `hists` is `t.histograms()`.
fn poll_hist(t: &Task, hists: Option<&Histograms>) -> Option<HistReport> {
    match (t.pending_poll, t.closed) {
        (Some(pp), None) => {
            let mut h = hists.map_or_else(
                || Histogram::<u32>::new(1).expect("valid sigfig"),
                |h| h.poll_us.clone(),
            );
            crate::model::task::record_us(&mut h, pp.end.saturating_sub(pp.start));
            HistReport::of(&h)
        }
        _ => hists.and_then(|h| HistReport::of(&h.poll_us)),
    }
}

fn task_report(p: &Process, t: &Task) -> TaskReport {
    let now = p.now;
    // Once per task: a copy when it still keeps samples.
    let hists = t.histograms();
    let cs = p.callsites.get(&t.callsite);
    let fields = t
        .fields
        .iter()
        .filter_map(|f| {
            let name = cs?.fields.get(f.index as usize)?;
            Some((name.clone(), span::value_json(&f.value)))
        })
        .collect();
    TaskReport {
        pid: p.key.pid,
        id: t.id.0,
        tokio_id: t.tokio_id,
        name: t.name.clone(),
        kind: t.kind.clone(),
        parent: t.parent.map(|p| p.0),
        awaited_by: Vec::new(),
        spawned_at: t.location.clone(),
        state: t.state.as_str(),
        polls: t.polls_view(),
        busy_ns: t.busy_view(now),
        scheduled_ns: t.scheduled_view(now),
        idle_ns: t.idle_view(now),
        created_ns: t.created,
        closed_ns: t.closed,
        wakes: t.wakes,
        self_wakes: t.self_wakes,
        wakers_alive: t.wakers_alive,
        poll_time: poll_hist(t, hists.as_deref()),
        scheduled_time: hists
            .as_deref()
            .and_then(|h| HistReport::of(&h.scheduled_us)),
        waiting_on: t.waiting_on.iter().map(|r| r.0).collect(),
        await_tree: if t.closed.is_some() {
            Vec::new()
        } else {
            await_nodes(p, &t.await_tree, None, now)
        },
        fields,
        warn_count: t.warn_count,
        error_count: t.error_count,
        logs: t
            .logs
            .iter()
            .map(|l| LogReport {
                level: level_str(l.level),
                message: l.message.clone(),
                location: l.location.clone(),
                ts: l.ts,
            })
            .collect(),
        panic: t.panic.clone(),
    }
}
