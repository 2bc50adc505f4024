//! OTLP (OpenTelemetry protocol) traces of recordings, for a team's
//! OpenTelemetry backend (Jaeger, Tempo, an OpenTelemetry Collector):
//! `awaitscope report FILE... --format otlp`.
//!
//! Built by streaming over the recordings' frames ([`OtlpTraces::add_frame`]):
//! every task and span of the program (not tokio's resource spans) becomes
//! an OTLP span with its parent (a span's parent span; a task's, the span it
//! was spawned from; a context taken up from another process, the remote
//! span its `traceparent` named), and every finding a span event on its
//! task's span (kind, severity, message, location and causal trace as
//! attributes), which also marks that span's status as an error for the
//! error-severity kinds.
//!
//! Ids are W3C's: a context that left a process (`Handover`) keeps the ids
//! its `traceparent` carried, so the backend shows the consumer's spans, and
//! its findings, under the producer's request; a span inside a context from
//! another process is in the remote trace. Other spans get ids derived from
//! their process and awaitscope id, one trace per root of a causal chain.
//!
//! Bounded: at most [`MAX_SPANS`] spans are kept per export (later ones are
//! counted in [`OtlpTraces::dropped_spans`]), and requests carry at most
//! `batch` spans each.

use std::collections::HashMap;

use awaitscope_wire::names;
use awaitscope_wire::{
    Body, Callsite, CallsiteKind, Event, Field, Frame, ProcessKey, SpanClass, SpanId, Value,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

use crate::detect::{Finding, FindingKind, Severity};

/// Most spans one export keeps.
pub const MAX_SPANS: usize = 1_000_000;

/// Most findings sent live ([`OtlpTraces::take_findings`]): each is
/// remembered so that it is sent once; later ones are not sent, and are
/// counted in [`OtlpTraces::unsent_findings`].
pub const MAX_SENT_FINDINGS: usize = 65_536;

/// Spans per request by default (OTLP receivers commonly refuse requests
/// over 4 MiB).
pub const DEFAULT_BATCH: usize = 2_000;

/// A span as read from the recording.
#[derive(Debug)]
struct SpanRec {
    callsite: u32,
    class: SpanClass,
    parent: Option<SpanId>,
    ctx_task: Option<SpanId>,
    ctx_span: Option<SpanId>,
    /// A local context span: the span its context was taken in.
    follows: Option<SpanId>,
    /// A task whose future runs inside a context from another process
    /// (`fut.instrument(cx.span())` spawned): that context span, the task's
    /// causal parent.
    adopted: Option<SpanId>,
    start: u64,
    end: Option<u64>,
    fields: Vec<Field>,
    /// Already sent ([`OtlpTraces::take_finished`]).
    sent: bool,
}

/// What one process's recording holds for OTLP.
#[derive(Debug, Default)]
struct Proc {
    name: String,
    callsites: HashMap<u32, Callsite>,
    spans: HashMap<SpanId, SpanRec>,
    /// Spans whose context left the process: the ids it carried.
    handed: HashMap<SpanId, ([u8; 16], [u8; 8])>,
    /// The latest time seen (ends the spans still open).
    now: u64,
    /// The process said goodbye: nothing more will close.
    ended: bool,
}

/// The spans, tasks and hand-overs of recordings, turned into OTLP.
#[derive(Debug, Default)]
pub struct OtlpTraces {
    procs: HashMap<ProcessKey, Proc>,
    spans: usize,
    /// Spans sent live, oldest first: forgotten first past the cap.
    sent: std::collections::VecDeque<(ProcessKey, SpanId)>,
    /// Findings sent live, by identity (kind, process, deduplication
    /// key): a finding is sent once, whatever becomes of its message.
    sent_findings: std::collections::HashSet<(FindingKind, ProcessKey, String)>,
    /// Spans left out past [`MAX_SPANS`].
    pub dropped_spans: u64,
    /// Findings not sent live, each counted once (by a fingerprint of its
    /// kind, process and key, see [`OtlpTraces::unsent_findings`]).
    unsent: std::collections::HashSet<u64>,
    /// Findings not sent live, each counted once: new ones past
    /// [`MAX_SENT_FINDINGS`], and at the last flush those of a process
    /// whose frames never reached the export (serve's queue to the
    /// forwarder was full when its `Hello` came).
    pub unsent_findings: u64,
}

impl OtlpTraces {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one frame of a recording.
    pub fn add_frame(&mut self, frame: &Frame) {
        let p = self.procs.entry(frame.process).or_default();
        let events = match &frame.body {
            Body::Hello(info) => {
                p.name = info.name.clone();
                return;
            }
            Body::Events(e) => e,
            Body::Goodbye => {
                p.ended = true;
                return;
            }
            Body::Dropped(_) => return,
        };
        for e in events {
            if let Some(ts) = e.ts() {
                p.now = p.now.max(ts);
            }
            match e {
                Event::Callsite(c) => {
                    p.callsites.insert(c.id, (**c).clone());
                }
                Event::SpanNew(n) => {
                    let class = match p.callsites.get(&n.callsite) {
                        // Who awaits a task's handle is not part of a trace.
                        Some(c) if c.target == names::JOIN_TARGET => continue,
                        Some(c) => match c.kind {
                            CallsiteKind::Span(k @ (SpanClass::User | SpanClass::Task)) => k,
                            _ => continue,
                        },
                        None => continue,
                    };
                    if p.spans.contains_key(&n.id) {
                        // Sent again after a reconnect.
                        continue;
                    }
                    if self.spans >= MAX_SPANS
                        && !forget_oldest_sent(&mut self.sent, p, frame.process)
                    {
                        self.dropped_spans += 1;
                        continue;
                    }
                    self.spans += 1;
                    p.spans.insert(
                        n.id,
                        SpanRec {
                            callsite: n.callsite,
                            class,
                            parent: n.parent,
                            ctx_task: n.ctx_task,
                            ctx_span: n.ctx_span,
                            follows: None,
                            adopted: None,
                            start: n.ts,
                            end: None,
                            fields: n.fields.clone(),
                            sent: false,
                        },
                    );
                }
                Event::Record { span, fields } => {
                    if let Some(s) = p.spans.get_mut(span) {
                        for f in fields {
                            match s.fields.iter_mut().find(|x| x.index == f.index) {
                                Some(x) => x.value = f.value.clone(),
                                None => s.fields.push(f.clone()),
                            }
                        }
                    }
                }
                Event::FollowsFrom { span, follows } => {
                    if let Some(s) = p.spans.get_mut(span) {
                        s.follows = Some(*follows);
                    }
                }
                Event::Close { span, ts, .. } => {
                    if let Some(s) = p.spans.get_mut(span) {
                        s.end = Some(*ts);
                    }
                }
                Event::Handover(h) => {
                    if let Some(s) = h.span {
                        p.handed.insert(s, (h.trace_id, h.span_id));
                    }
                }
                _ => {}
            }
        }
    }

    /// How many spans were read.
    pub fn span_count(&self) -> usize {
        self.spans
    }

    /// The OTLP export requests: every span read, `findings` as events on
    /// their tasks' spans, at most `batch` spans a request.
    pub fn requests(
        &mut self,
        findings: &[Finding],
        batch: usize,
    ) -> Vec<ExportTraceServiceRequest> {
        for p in self.procs.values_mut() {
            p.adopt();
        }
        let batch = batch.max(1);
        let mut out = Vec::new();
        let mut keys: Vec<&ProcessKey> = self.procs.keys().collect();
        keys.sort();
        for key in keys {
            let p = &self.procs[key];
            let mut spans = p.otlp_spans_of(key, None);
            let mut orphans = Vec::new();
            for f in findings
                .iter()
                .filter(|f| f.pid == key.pid && f.process_start_unix_ns == key.start_unix_ns)
            {
                let event = finding_event(f, key);
                let target = f.tasks.first().and_then(|t| {
                    spans
                        .iter_mut()
                        .find(|s| s.span_id == p.span_id(key, SpanId(t.id)))
                });
                match target {
                    Some(s) => {
                        if f.severity == Severity::Error {
                            s.status = Some(Status {
                                message: f.message.clone(),
                                code: status::StatusCode::Error as i32,
                            });
                        }
                        s.events.push(event);
                    }
                    None => orphans.push(orphan_span(f, key, event)),
                }
            }
            spans.extend(orphans);
            out.extend(p.wrap(key, spans, batch));
        }
        out
    }
}

impl OtlpTraces {
    /// Live: the spans whose trace is settled and that ended since the last
    /// call, as requests of at most `batch` spans. A span's trace is
    /// settled when it is in a context from another process, when the root
    /// of its causal chain ended (a context it sends later could still name
    /// the trace), or when its process ended. Sent spans are kept (their
    /// ids are their children's parents) until the cap, then forgotten
    /// oldest first.
    pub fn take_finished(&mut self, batch: usize) -> Vec<ExportTraceServiceRequest> {
        let mut out = Vec::new();
        let mut keys: Vec<ProcessKey> = self.procs.keys().copied().collect();
        keys.sort();
        for key in keys {
            let p = self.procs.get_mut(&key).expect("listed");
            p.adopt();
            let mut memo = HashMap::new();
            let ready: Vec<SpanId> = p
                .spans
                .iter()
                .filter(|(_, s)| !s.sent && (s.end.is_some() || p.ended))
                .filter(|(&id, _)| {
                    p.ended
                        || match p.top(id, &mut memo) {
                            Top::Remote(_) => true,
                            Top::Root(r) => p.spans.get(&r).is_none_or(|r| r.end.is_some()),
                        }
                })
                .map(|(&id, _)| id)
                .collect();
            if ready.is_empty() {
                continue;
            }
            let spans = p.otlp_spans_of(&key, Some(&ready));
            for id in &ready {
                if let Some(s) = p.spans.get_mut(id) {
                    s.sent = true;
                }
                self.sent.push_back((key, *id));
            }
            out.extend(p.wrap(&key, spans, batch));
        }
        out
    }

    /// Live: the findings (with their deduplication keys, as
    /// [`live_findings`] gives them) not sent before, each as a span of its
    /// own under its task's span (already sent, or to come), in the task's
    /// trace. A finding is identified by its kind, process and key: sent
    /// once, as it stands then (a later, worse occurrence changing its
    /// message does not send it again; a backend keeps what it was sent).
    /// A finding whose trace still waits for the process that sent its
    /// context ([`crate::stitch`]) waits too, unless `last`.
    pub fn take_findings(
        &mut self,
        findings: &[(String, Finding)],
        last: bool,
    ) -> Vec<ExportTraceServiceRequest> {
        let mut out = Vec::new();
        for (dedup, f) in findings {
            if !last && crate::stitch::needs_stitching(&f.trace) {
                continue;
            }
            let key = ProcessKey {
                pid: f.pid,
                start_unix_ns: f.process_start_unix_ns,
            };
            let id = (f.kind, key, dedup.clone());
            if self.sent_findings.contains(&id) {
                continue;
            }
            let salt = finding_salt(f.kind, dedup);
            if self.sent_findings.len() >= MAX_SENT_FINDINGS {
                self.not_sent(salt, &key);
                continue;
            }
            let Some(p) = self.procs.get_mut(&key) else {
                // Its process may still come (its frames queued); at the
                // last flush it will not.
                if last {
                    self.not_sent(salt, &key);
                }
                continue;
            };
            self.sent_findings.insert(id);
            p.adopt();
            let event = finding_event(f, &key);
            let mut span = orphan_span(f, &key, event);
            // One span id per finding, whatever its first occurrence.
            span.span_id = derived_span_id(&key, SpanId(salt)).to_vec();
            span.trace_id = derived_trace_id(&key, SpanId(!salt)).to_vec();
            if let Some(t) = f.tasks.first().map(|t| SpanId(t.id)) {
                if p.spans.contains_key(&t) {
                    let mut memo = HashMap::new();
                    span.trace_id = p.trace_of(&key, t, &mut memo).to_vec();
                    span.parent_span_id = p.span_id(&key, t);
                }
            }
            out.extend(p.wrap(&key, vec![span], 1));
        }
        out
    }
}

impl OtlpTraces {
    /// Counts the finding of identity `salt` ([`finding_salt`]) in process
    /// `key` as not sent, once.
    fn not_sent(&mut self, salt: u64, key: &ProcessKey) {
        if self.unsent.insert(mix(salt ^ process_salt(key))) {
            self.unsent_findings += 1;
        }
    }
}

/// How long, in its process's time, an occurrence whose verdict may still
/// change (see [`crate::detect::Findings::observe_occurrence`]) stays out of
/// the live export after it ended: a poll's stall statistics come in the
/// producer's next drains, milliseconds later, so one still open past this
/// will not be judged again (its stall was never sent: the poll ended
/// before the producer's watchdog saw it).
pub const LIVE_SETTLE_NS: u64 = 10_000_000_000;

/// Live: the findings of `m` as they stand with only what is final in them,
/// with their deduplication keys, for [`OtlpTraces::take_findings`]: an
/// occurrence that may still be taken back (a `long_poll` its statistics,
/// yet to come, may find `descheduled`) is left out until it is final,
/// its process ended, or [`LIVE_SETTLE_NS`] of its process's time passed
/// since it ended; with `last` (nothing more will be applied), the
/// findings as they stand.
pub fn live_findings(m: &crate::Model, last: bool) -> Vec<(String, Finding)> {
    let findings = m.findings();
    let keyed: Vec<(&str, Finding)> = if last {
        findings
            .keyed()
            .into_iter()
            .map(|(k, f)| (k, f.clone()))
            .collect()
    } else {
        findings.settled_keyed(|o| match m.process(&o.process) {
            Some(p) if !p.ended => {
                let end = o.ts.saturating_add(o.duration_ns.unwrap_or(0));
                end.saturating_add(LIVE_SETTLE_NS) <= p.now
            }
            // Ended or gone: nothing more will judge it.
            _ => true,
        })
    };
    keyed.into_iter().map(|(k, f)| (k.to_owned(), f)).collect()
}

/// A finding's identity (kind and deduplication key) as a number, for the
/// ids of its span.
fn finding_salt(kind: FindingKind, key: &str) -> u64 {
    // FNV-1a: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (kind as u64).rotate_left(40);
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// Forgets the oldest span sent live, to make room; whether there was one.
fn forget_oldest_sent(
    sent: &mut std::collections::VecDeque<(ProcessKey, SpanId)>,
    p: &mut Proc,
    key: ProcessKey,
) -> bool {
    // Only this process's spans can be reached here (`p` is borrowed).
    let Some(i) = sent.iter().position(|(k, _)| *k == key) else {
        return false;
    };
    let (_, id) = sent.remove(i).expect("found");
    p.spans.remove(&id);
    p.handed.remove(&id);
    true
}

impl Proc {
    /// Finds the tasks whose future runs inside a context from another
    /// process: a span made in the task whose parent is such a context.
    fn adopt(&mut self) {
        let mut adopted: Vec<(SpanId, SpanId)> = Vec::new();
        for s in self.spans.values() {
            let (Some(c), Some(t)) = (s.parent, s.ctx_task) else {
                continue;
            };
            if self.spans.get(&c).is_some_and(|c| self.remote(c).is_some()) {
                adopted.push((t, c));
            }
        }
        // The earliest context wins (a task taking up several).
        adopted.sort_by_key(|(_, c)| self.spans[c].start);
        for (t, c) in adopted {
            if let Some(task) = self.spans.get_mut(&t) {
                if task.class == SpanClass::Task && task.adopted.is_none() {
                    task.adopted = Some(c);
                }
            }
        }
    }

    fn field<'a>(&'a self, s: &'a SpanRec, name: &str) -> Option<&'a Value> {
        let names = &self.callsites.get(&s.callsite)?.fields;
        s.fields
            .iter()
            .find(|f| names.get(f.index as usize).is_some_and(|n| n == name))
            .map(|f| &f.value)
    }

    fn str_field(&self, s: &SpanRec, name: &str) -> Option<String> {
        match self.field(s, name)? {
            Value::Str(v) => Some(v.clone()),
            _ => None,
        }
    }

    fn is_context(&self, s: &SpanRec) -> bool {
        self.callsites
            .get(&s.callsite)
            .is_some_and(|c| c.target == names::CONTEXT_TARGET)
    }

    /// The remote parent a context span taken up from another process
    /// continues.
    fn remote(&self, s: &SpanRec) -> Option<([u8; 16], [u8; 8])> {
        if !self.is_context(s) {
            return None;
        }
        parse_traceparent(&self.str_field(s, names::TRACEPARENT)?)
    }

    fn is_block_on(&self, s: &SpanRec) -> bool {
        s.class == SpanClass::Task
            && matches!(self.field(s, names::KIND), Some(Value::Str(k)) if k == names::KIND_BLOCK_ON)
    }

    /// The causal parent of `s` in this process: a task's spawn context (or
    /// the context from another process its future runs in), a local
    /// context span's origin, else the span's parent.
    fn up(&self, s: &SpanRec) -> Option<SpanId> {
        match s.class {
            SpanClass::Task => s.adopted.or(s.ctx_span),
            _ => s.follows.or(s.parent),
        }
    }

    /// The OTLP span id of `id`.
    fn span_id(&self, key: &ProcessKey, id: SpanId) -> Vec<u8> {
        match self.handed.get(&id) {
            Some((_, s)) => s.to_vec(),
            None => derived_span_id(key, id).to_vec(),
        }
    }

    /// `spans` of this process as requests of at most `batch` spans.
    fn wrap(
        &self,
        key: &ProcessKey,
        spans: Vec<Span>,
        batch: usize,
    ) -> Vec<ExportTraceServiceRequest> {
        let resource = Resource {
            attributes: vec![
                kv("service.name", str_value(&self.name)),
                kv("process.pid", int_value(i64::from(key.pid))),
                kv(
                    "awaitscope.process.start_unix_ns",
                    int_value(key.start_unix_ns as i64),
                ),
            ],
            dropped_attributes_count: 0,
        };
        spans
            .chunks(batch.max(1))
            .map(|chunk| ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "awaitscope".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans: chunk.to_vec(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            })
            .collect()
    }

    /// The trace of span `id`: the remote one its chain continues, a
    /// hand-over's of its root's tree, or one derived from its root.
    fn trace_of(&self, key: &ProcessKey, id: SpanId, memo: &mut HashMap<SpanId, Top>) -> [u8; 16] {
        match self.top(id, memo) {
            Top::Remote(t) => t,
            Top::Root(r) => self
                .handed
                .iter()
                .find(|(&h, _)| matches!(self.top(h, memo), Top::Root(hr) if hr == r))
                .map_or_else(|| derived_trace_id(key, r), |(_, (t, _))| *t),
        }
    }

    /// The spans as OTLP (those of `only`, else all), with trace ids
    /// resolved.
    fn otlp_spans_of(&self, key: &ProcessKey, only: Option<&[SpanId]>) -> Vec<Span> {
        // The trace of each root: a hand-over's, when one of the root's
        // spans sent its context; else derived from the root.
        let mut root_trace: HashMap<SpanId, [u8; 16]> = HashMap::new();
        let mut memo: HashMap<SpanId, Top> = HashMap::new();
        for (&id, &(trace, _)) in &self.handed {
            if let Top::Root(r) = self.top(id, &mut memo) {
                root_trace.insert(r, trace);
            }
        }
        let mut ids: Vec<SpanId> = match only {
            Some(only) => only.to_vec(),
            None => self.spans.keys().copied().collect(),
        };
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let s = &self.spans[&id];
                let trace_id = match self.top(id, &mut memo) {
                    Top::Remote(t) => t,
                    Top::Root(r) => *root_trace
                        .entry(r)
                        .or_insert_with(|| derived_trace_id(key, r)),
                };
                let parent_span_id = match (self.remote(s), self.up(s)) {
                    (Some((_, remote)), _) => remote.to_vec(),
                    (None, Some(up))
                        if self.spans.get(&up).is_some_and(|u| !self.is_block_on(u)) =>
                    {
                        self.span_id(key, up)
                    }
                    _ => Vec::new(),
                };
                self.otlp_span(key, id, s, trace_id, parent_span_id)
            })
            .collect()
    }

    fn otlp_span(
        &self,
        key: &ProcessKey,
        id: SpanId,
        s: &SpanRec,
        trace_id: [u8; 16],
        parent_span_id: Vec<u8>,
    ) -> Span {
        let cs = self.callsites.get(&s.callsite);
        let mut attributes = Vec::new();
        let name = match s.class {
            SpanClass::Task => {
                attributes.push(kv("awaitscope.task.id", int_value(id.0 as i64)));
                self.str_field(s, names::TASK_NAME)
                    .filter(|n| !n.is_empty())
                    .map_or_else(|| "task".to_string(), |n| format!("task {n}"))
            }
            _ => cs.map_or_else(|| "span".into(), |c| c.name.clone()),
        };
        if let Some(c) = cs {
            if !c.target.is_empty() {
                attributes.push(kv("code.namespace", str_value(&c.target)));
            }
            if let Some(f) = &c.file {
                attributes.push(kv("code.filepath", str_value(f)));
            }
            if let Some(l) = c.line {
                attributes.push(kv("code.lineno", int_value(i64::from(l))));
            }
            for f in &s.fields {
                if let Some(n) = c.fields.get(f.index as usize) {
                    attributes.push(kv(n, value(&f.value)));
                }
            }
        }
        let end = s.end.unwrap_or(self.now).max(s.start);
        Span {
            trace_id: trace_id.to_vec(),
            span_id: self.span_id(key, id),
            parent_span_id,
            name,
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: key.start_unix_ns.saturating_add(s.start),
            end_time_unix_nano: key.start_unix_ns.saturating_add(end),
            attributes,
            ..Default::default()
        }
    }

    /// Where `id`'s causal chain leads: a remote trace, or a root here.
    fn top(&self, id: SpanId, memo: &mut HashMap<SpanId, Top>) -> Top {
        let mut path = Vec::new();
        let mut cur = id;
        let mut budget = 10_000;
        let top = loop {
            if let Some(t) = memo.get(&cur) {
                break *t;
            }
            budget -= 1;
            let Some(s) = self.spans.get(&cur) else {
                break Top::Root(cur);
            };
            if let Some((t, _)) = self.remote(s) {
                break Top::Remote(t);
            }
            path.push(cur);
            match self.up(s) {
                Some(up)
                    if budget > 0 && self.spans.get(&up).is_some_and(|u| !self.is_block_on(u)) =>
                {
                    cur = up
                }
                _ => break Top::Root(cur),
            }
        };
        for p in path {
            memo.insert(p, top);
        }
        top
    }
}

/// The top of a causal chain.
#[derive(Clone, Copy, Debug)]
enum Top {
    /// A context from another process, in this trace.
    Remote([u8; 16]),
    /// The outermost span of the chain here.
    Root(SpanId),
}

/// A finding as a span event.
fn finding_event(f: &Finding, key: &ProcessKey) -> span::Event {
    let mut attributes = vec![
        kv("awaitscope.finding.kind", str_value(f.kind.as_str())),
        kv(
            "awaitscope.finding.severity",
            str_value(severity(f.severity)),
        ),
        kv("awaitscope.finding.message", str_value(&f.message)),
        kv("awaitscope.finding.count", int_value(f.count as i64)),
        kv("awaitscope.finding.trace", str_value(&f.trace.join("\n"))),
    ];
    if let Some(l) = &f.location {
        attributes.push(kv("code.filepath", str_value(&l.file)));
        attributes.push(kv("code.lineno", int_value(i64::from(l.line))));
    }
    if let Some(w) = f.worst_ns {
        attributes.push(kv("awaitscope.finding.worst_ns", int_value(w as i64)));
    }
    span::Event {
        time_unix_nano: key.start_unix_ns.saturating_add(f.first_seen),
        name: format!("awaitscope.finding.{}", f.kind.as_str()),
        attributes,
        dropped_attributes_count: 0,
    }
}

/// A span of its own for a finding with no task to attach to.
fn orphan_span(f: &Finding, key: &ProcessKey, event: span::Event) -> Span {
    let salt = f.first_seen ^ (f.kind as u64).rotate_left(40);
    Span {
        trace_id: derived_trace_id(key, SpanId(salt)).to_vec(),
        span_id: derived_span_id(key, SpanId(!salt)).to_vec(),
        name: format!("awaitscope finding {}", f.kind.as_str()),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: event.time_unix_nano,
        end_time_unix_nano: key.start_unix_ns.saturating_add(f.last_seen),
        events: vec![event],
        status: (f.severity == Severity::Error).then(|| Status {
            message: f.message.clone(),
            code: status::StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

/// As the JSON report names it.
fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
    }
}

fn str_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    }
}

fn int_value(v: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(v)),
    }
}

fn value(v: &Value) -> AnyValue {
    AnyValue {
        value: Some(match v {
            Value::I64(i) => any_value::Value::IntValue(*i),
            Value::U64(u) => match i64::try_from(*u) {
                Ok(i) => any_value::Value::IntValue(i),
                Err(_) => any_value::Value::StringValue(u.to_string()),
            },
            Value::F64(f) => any_value::Value::DoubleValue(*f),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
            Value::Str(s) => any_value::Value::StringValue(s.clone()),
        }),
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn process_salt(key: &ProcessKey) -> u64 {
    mix(u64::from(key.pid) ^ mix(key.start_unix_ns))
}

/// A span id for `id` of process `key` (never zero).
fn derived_span_id(key: &ProcessKey, id: SpanId) -> [u8; 8] {
    let v = mix(id.0 ^ process_salt(key));
    (if v == 0 { 1 } else { v }).to_be_bytes()
}

/// A trace id for the chain rooted at `root` in process `key` (never zero).
fn derived_trace_id(key: &ProcessKey, root: SpanId) -> [u8; 16] {
    let hi = mix(root.0 ^ process_salt(key).rotate_left(17));
    let lo = mix(hi ^ root.0 ^ 0x5bd1_e995);
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&hi.to_be_bytes());
    t[8..].copy_from_slice(&lo.to_be_bytes());
    if t == [0; 16] {
        t[15] = 1;
    }
    t
}

/// The ids of a `traceparent` field (as awaitscope recorded it).
fn parse_traceparent(tp: &str) -> Option<([u8; 16], [u8; 8])> {
    let line = format!("{}{tp} --", names::REMOTE_HANDOFF_PREFIX);
    crate::stitch::remote_ids(&line)
}

#[cfg(test)]
mod tests {
    use awaitscope_wire::{Callsite, Level, SpanNew};

    use super::*;
    use crate::detect::{FindingKind, FindingTask};
    use crate::testing::{StreamBuilder, TaskOpts};

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ids() -> ([u8; 16], [u8; 8]) {
        parse_traceparent(TP).unwrap()
    }

    /// A producer whose request span in task `handle_signup` sent `TP`, and
    /// an unrelated task; a consumer whose task `job` runs inside a context
    /// taken up from `TP`.
    fn traces() -> (OtlpTraces, SpanId, SpanId) {
        let mut t = OtlpTraces::new();
        let mut b = StreamBuilder::new(100, 1_000);
        b.hello("api", None, false);
        b.thread(0);
        let task = b.spawn(&TaskOpts::named("handle_signup"), None, 10);
        let req = b.user_span("handle_signup", Some(task), 20);
        let other = b.spawn(&TaskOpts::named("cron"), None, 30);
        b.user_span("tick", Some(other), 40);
        let (trace_id, span_id) = ids();
        b.push(Event::Handover(Box::new(awaitscope_wire::Handover {
            span: Some(req),
            task: Some(task),
            trace_id,
            span_id,
            ts: 50,
            trace: vec![],
        })));
        b.goodbye();
        for f in b.take_frames() {
            t.add_frame(&f);
        }
        let mut c = StreamBuilder::new(200, 2_000);
        c.hello("worker", None, false);
        c.thread(0);
        c.push(Event::Callsite(Box::new(Callsite {
            id: 50,
            name: names::CONTEXT_SPAN.into(),
            target: names::CONTEXT_TARGET.into(),
            level: Level::Info,
            file: None,
            line: None,
            kind: CallsiteKind::Span(SpanClass::User),
            fields: vec![names::TRACEPARENT.into()],
        })));
        c.push(Event::SpanNew(Box::new(SpanNew {
            id: SpanId(900),
            callsite: 50,
            parent: None,
            ctx_task: None,
            ctx_span: None,
            ts: 5,
            fields: vec![Field {
                index: 0,
                value: Value::Str(TP.into()),
            }],
        })));
        let job = c.spawn(&TaskOpts::named("job"), None, 6);
        let work = c.user_span("send_email", Some(SpanId(900)), 7);
        // The builder's user spans are made outside tasks; this one is
        // made in `job`.
        for f in c.take_frames() {
            let mut f = f;
            if let Body::Events(events) = &mut f.body {
                for e in events.iter_mut() {
                    if let Event::SpanNew(n) = e {
                        if n.id == work {
                            n.ctx_task = Some(job);
                        }
                    }
                }
            }
            t.add_frame(&f);
        }
        (t, job, work)
    }

    fn all(reqs: &[ExportTraceServiceRequest]) -> Vec<(String, Span)> {
        reqs.iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| {
                let svc = match rs.resource.as_ref().unwrap().attributes[0]
                    .value
                    .as_ref()
                    .and_then(|v| v.value.clone())
                {
                    Some(any_value::Value::StringValue(s)) => s,
                    _ => String::new(),
                };
                rs.scope_spans
                    .iter()
                    .flat_map(|s| s.spans.clone())
                    .map(move |s| (svc.clone(), s))
            })
            .collect()
    }

    fn finding(pid: u32, start: u64, task: SpanId) -> Finding {
        Finding {
            kind: FindingKind::Error,
            severity: Severity::Error,
            pid,
            process_start_unix_ns: start,
            tasks: vec![FindingTask {
                id: task.0,
                tokio_id: None,
                name: Some("job".into()),
                spawned_at: None,
            }],
            location: None,
            message: "email failed".into(),
            trace: vec!["0: worker::send_email".into()],
            count: 1,
            worst_ns: None,
            first_seen: 8,
            last_seen: 8,
        }
    }

    #[test]
    fn handed_over_ids_are_kept_and_the_consumer_joins_the_trace() {
        let (mut t, job, _) = traces();
        let f = finding(200, 2_000, job);
        let reqs = t.requests(std::slice::from_ref(&f), DEFAULT_BATCH);
        let spans = all(&reqs);
        let find = |svc: &str, name: &str| {
            spans
                .iter()
                .find(|(s, sp)| s == svc && sp.name == name)
                .map(|(_, sp)| sp.clone())
                .unwrap_or_else(|| panic!("{svc} {name}: {spans:#?}"))
        };
        let (trace, parent) = ids();
        let req = find("api", "handle_signup");
        assert_eq!(req.trace_id, trace);
        assert_eq!(req.span_id, parent);
        // The request's task is in the same trace, the request's parent.
        let task = find("api", "task handle_signup");
        assert_eq!(task.trace_id, trace);
        assert_eq!(req.parent_span_id, task.span_id);
        // An unrelated chain has a trace of its own.
        assert_ne!(find("api", "task cron").trace_id, trace);
        // The consumer: context under the remote span, the task adopted by
        // it, its span under it too, all in the producer's trace.
        let ctx = find("worker", names::CONTEXT_SPAN);
        assert_eq!(ctx.trace_id, trace);
        assert_eq!(ctx.parent_span_id, parent);
        let job = find("worker", "task job");
        assert_eq!(job.trace_id, trace);
        assert_eq!(job.parent_span_id, ctx.span_id);
        assert_eq!(find("worker", "send_email").trace_id, trace);
        // The finding: an event on the task's span, which it marks failed.
        assert_eq!(job.events.len(), 1);
        assert_eq!(job.events[0].name, "awaitscope.finding.error");
        assert_eq!(
            job.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
    }

    #[test]
    fn requests_hold_at_most_a_batch_and_orphan_findings_get_a_span() {
        let (mut t, _, _) = traces();
        let n = t.span_count();
        let orphan = Finding {
            tasks: vec![],
            ..finding(100, 1_000, SpanId(0))
        };
        let reqs = t.requests(&[orphan], 2);
        assert!(reqs
            .iter()
            .all(|r| r.resource_spans[0].scope_spans[0].spans.len() <= 2));
        let spans = all(&reqs);
        assert_eq!(spans.len(), n + 1);
        let o = spans
            .iter()
            .find(|(_, s)| s.name == "awaitscope finding error")
            .expect("a span for the finding without a task");
        assert_eq!(o.0, "api");
        assert_eq!(o.1.events.len(), 1);
        assert!(o.1.trace_id.iter().any(|b| *b != 0) && o.1.span_id.iter().any(|b| *b != 0));
    }

    /// The findings' spans sent live in `reqs`: (kind, message).
    fn finding_spans(reqs: &[ExportTraceServiceRequest]) -> Vec<(String, String)> {
        all(reqs)
            .into_iter()
            .flat_map(|(_, s)| s.events)
            .map(|e| {
                let msg = e
                    .attributes
                    .iter()
                    .find(|a| a.key == "awaitscope.finding.message")
                    .and_then(|a| a.value.as_ref()?.value.clone());
                let msg = match msg {
                    Some(any_value::Value::StringValue(m)) => m,
                    _ => String::new(),
                };
                (e.name, msg)
            })
            .collect()
    }

    /// The statistics of a `long_poll`, to come after its commit, may find
    /// it `descheduled`: the live export sends nothing of it until they
    /// come, then the `descheduled` finding alone; the same finding made
    /// worse (its message changed) is not sent again; a long poll whose
    /// stall never comes is sent once it is long past; and the last flush
    /// sends what is still open.
    #[test]
    fn live_findings_are_sent_once_final_and_once_each() {
        use crate::testing::stall;
        use awaitscope_wire::Sched;
        const MS: u64 = 1_000_000;
        let sched = |window_ns, on_cpu_ns, waiting_ns| {
            Some(Sched {
                window_ns,
                on_cpu_ns,
                kernel_ns: 0,
                waiting_ns,
            })
        };
        let mut m = crate::Model::default();
        let mut t = OtlpTraces::new();
        let mut b = StreamBuilder::new(7, 1_000);
        let apply = |b: &mut StreamBuilder, m: &mut crate::Model, t: &mut OtlpTraces| {
            for f in b.take_frames() {
                m.apply(&f);
                t.add_frame(&f);
            }
        };
        let live = |m: &crate::Model, t: &mut OtlpTraces, last: bool| {
            finding_spans(&t.take_findings(&live_findings(m, last), last))
        };
        b.hello("shop", None, false);
        b.thread(0);
        let report = b.spawn(&TaskOpts::named("report"), None, 0);
        // A 15.2ms poll, committed by the next; its crossing's statistics
        // (1ms of it) do not say it waited for a CPU.
        b.enter(report, MS);
        let mut crossing = stall(report, MS, 11 * MS, false);
        crossing.sched = sched(MS, MS, 0);
        b.stall(crossing);
        b.poll_end(report, MS + 15_200_000, 1);
        b.enter(report, 100 * MS).poll_end(report, 101 * MS, 1);
        b.flush();
        apply(&mut b, &mut m, &mut t);
        assert_eq!(m.findings().list()[0].kind, FindingKind::LongPoll);
        assert_eq!(live(&m, &mut t, false), []);
        // Its statistics up to its end: it waited for a CPU.
        let mut end = stall(report, MS, 17 * MS, true);
        end.sched = sched(15_200_000, 1_900_000, 13_300_000);
        b.stall(end);
        b.flush();
        apply(&mut b, &mut m, &mut t);
        let sent = live(&m, &mut t, false);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, "awaitscope.finding.descheduled");
        assert!(sent[0].1.contains("took 15.2ms"), "{sent:?}");
        // A worse poll of the same task, found descheduled at once: the
        // finding's message changes, it is not sent again.
        b.enter(report, 200 * MS);
        let mut crossing = stall(report, 200 * MS, 210 * MS, false);
        crossing.sched = sched(10 * MS, MS, 9 * MS);
        b.stall(crossing);
        b.poll_end(report, 230 * MS, 1);
        let mut end = stall(report, 200 * MS, 231 * MS, true);
        end.sched = sched(30 * MS, 2 * MS, 28 * MS);
        b.stall(end);
        b.enter(report, 300 * MS).poll_end(report, 301 * MS, 1);
        b.flush();
        apply(&mut b, &mut m, &mut t);
        assert!(m.findings().list()[0].message.contains("took 30.0ms"));
        assert_eq!(live(&m, &mut t, false), []);
        // Two long polls of other tasks whose stall never comes: sent once
        // long past, the first; the second still open at the last flush.
        let quiet = b.spawn(&TaskOpts::named("quiet"), None, 400 * MS);
        b.enter(quiet, 400 * MS).poll_end(quiet, 420 * MS, 1);
        b.enter(quiet, 500 * MS).poll_end(quiet, 501 * MS, 1);
        b.flush();
        apply(&mut b, &mut m, &mut t);
        assert_eq!(live(&m, &mut t, false), []);
        let late = b.spawn(&TaskOpts::named("late"), None, 12_000 * MS);
        b.enter(late, 12_000 * MS).poll_end(late, 12_020 * MS, 1);
        b.enter(late, 12_100 * MS).poll_end(late, 12_101 * MS, 1);
        b.flush();
        apply(&mut b, &mut m, &mut t);
        let sent = live(&m, &mut t, false);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, "awaitscope.finding.long_poll");
        assert!(sent[0].1.contains("quiet"), "{sent:?}");
        let sent = live(&m, &mut t, true);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(sent[0].1.contains("late"), "{sent:?}");
    }

    /// Past [`MAX_SENT_FINDINGS`] findings sent live, new ones are not sent
    /// and are counted, each once however many flushes see it; so are, at
    /// the last flush, those of a process the export never heard of.
    #[test]
    fn findings_not_sent_live_are_counted_once_each() {
        let mut t = OtlpTraces::new();
        let mut b = StreamBuilder::new(7, 1_000);
        b.hello("shop", None, false);
        for f in b.take_frames() {
            t.add_frame(&f);
        }
        let key = b.key();
        let of = |pid: u32, start: u64, n: usize| -> (String, Finding) {
            (
                format!("job|{n}"),
                Finding {
                    tasks: vec![],
                    ..finding(pid, start, SpanId(0))
                },
            )
        };
        let mut findings: Vec<(String, Finding)> = (0..MAX_SENT_FINDINGS + 3)
            .map(|n| of(key.pid, key.start_unix_ns, n))
            .collect();
        let sent = t.take_findings(&findings, false);
        assert_eq!(sent.len(), MAX_SENT_FINDINGS);
        assert_eq!(t.unsent_findings, 3);
        // Seen again by the next flush: neither sent nor counted again.
        assert!(t.take_findings(&findings, false).is_empty());
        assert_eq!(t.unsent_findings, 3);
        // Of a process whose frames never came: waited for, then counted
        // at the last flush (once).
        let mut t = OtlpTraces::new();
        findings.truncate(1);
        findings.push(of(999, 5, 0));
        assert_eq!(t.take_findings(&findings, false).len(), 0);
        assert_eq!(t.unsent_findings, 0);
        for f in b.hello("shop", None, true).take_frames() {
            t.add_frame(&f);
        }
        assert_eq!(t.take_findings(&findings, true).len(), 1);
        assert_eq!(t.unsent_findings, 1);
        assert!(t.take_findings(&findings, true).is_empty());
        assert_eq!(t.unsent_findings, 1);
    }
}
