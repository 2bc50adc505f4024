//! How things are named: the labels of tasks, spans and await-tree nodes,
//! their source locations, and the queries built on them (await paths,
//! culprits, causal traces, who awaits whom). The model, the detectors,
//! the reports, the exports and the TUI all name things through here.

use std::borrow::Cow;
use std::collections::HashMap;

use awaitscope_wire::{names, Callsite, Field, SpanClass, SpanId};

use super::await_tree::{AwaitNode, AwaitTree};
use super::process::Process;
use super::resource::Resource;
use super::span::{self, Location};
use super::task::Task;

/// `task NAME#ID @ LOCATION`.
pub fn task_label(t: &Task) -> String {
    let mut s = format!("task {}#{}", t.name.as_deref().unwrap_or(""), t.id.0);
    if let Some(l) = &t.location {
        s.push_str(&format!(" @ {l}"));
    }
    s
}

/// Whether `cs` is the callsite of the await of an `awaitscope::JoinHandle`
/// ([`names::JOIN_SPAN`] of target [`names::JOIN_TARGET`]).
pub fn is_join(cs: &Callsite) -> bool {
    cs.name == names::JOIN_SPAN && cs.target == names::JOIN_TARGET
}

/// The tokio id of the task that a join span (see [`is_join`]) awaits;
/// `None` for other spans.
pub fn join_task_id(cs: Option<&Callsite>, fields: &[Field]) -> Option<u64> {
    let cs = cs.filter(|c| is_join(c))?;
    span::field_u64(Some(cs), fields, names::TASK_ID)
}

/// The label a span gives itself through its fields, the rule every view
/// of spans follows: a resource is its type (`Mutex`), an async op (and
/// its polls) its operation (`Mutex::lock`), the await of a `JoinHandle`
/// `join task.id=N`. `None` for other spans, or when the field is missing:
/// each caller falls back in its own way (the callsite's name, ...).
pub fn span_own_label<'a>(
    class: SpanClass,
    cs: Option<&Callsite>,
    fields: &'a [Field],
) -> Option<Cow<'a, str>> {
    match class {
        SpanClass::Resource => span::field_str(cs, fields, names::CONCRETE_TYPE).map(Cow::Borrowed),
        SpanClass::AsyncOp | SpanClass::AsyncOpPoll => {
            span::field_str(cs, fields, names::SOURCE).map(Cow::Borrowed)
        }
        _ => join_task_id(cs, fields).map(|id| Cow::Owned(format!("join task.id={id}"))),
    }
}

impl Process {
    /// Human-readable label of a span: resource type, async-op source, or
    /// span name.
    pub fn span_label(&self, id: SpanId, callsite: u32) -> String {
        let cs = self.callsites.get(&callsite);
        if let Some(r) = self.resources.get(&id) {
            return r.concrete_type.clone();
        }
        if let Some(s) = self.spans.get(&id) {
            if s.class == SpanClass::AsyncOp {
                if let Some(src) = span::field_str(cs, &s.fields, names::SOURCE) {
                    return src.to_string();
                }
            }
        }
        cs.map_or_else(|| format!("span#{}", id.0), |c| c.name.clone())
    }

    /// Source location of a span: a resource's creation site, an async op's
    /// resource, or the span's callsite.
    pub fn span_location(&self, id: SpanId, callsite: u32) -> Option<Location> {
        if let Some(r) = self.resource_of(id).and_then(|r| self.resources.get(&r)) {
            if let Some(l) = &r.location {
                return Some(l.clone());
            }
        }
        span::callsite_location(self.callsites.get(&callsite))
    }

    /// Label of an await-tree node.
    pub fn node_label(&self, node: &AwaitNode) -> String {
        match &node.label {
            Some(l) => l.to_string(),
            None => self.span_label(node.span, node.callsite),
        }
    }

    /// Labels of the await-tree path down to node `i` (`label @ location`).
    pub fn await_path(&self, tree: &AwaitTree, i: usize) -> Vec<String> {
        tree.path(i)
            .into_iter()
            .map(|n| {
                let node = &tree.nodes[n];
                let label = self.node_label(node);
                match self.span_location(node.span, node.callsite) {
                    Some(l) => format!("{label} @ {l}"),
                    None => label,
                }
            })
            .collect()
    }

    /// The node that best names what leaf `i` waits on: the leaf, or the
    /// nearest ancestor outside resources internal to another (a Mutex's
    /// `Mutex::lock` rather than its inner semaphore's `Acquire`).
    pub fn culprit(&self, tree: &AwaitTree, i: usize) -> usize {
        let internal = |n: usize| {
            self.resource_of(tree.nodes[n].span)
                .and_then(|r| self.resources.get(&r))
                .is_some_and(|r| r.internal)
        };
        let mut cur = i;
        while internal(cur) {
            match tree.nodes[cur].parent {
                Some(p) => cur = p as usize,
                None => return i,
            }
        }
        cur
    }

    /// Whether node `i` of `tree` is a timer (Sleep/Interval resource or an
    /// async op on one).
    pub fn node_is_timer(&self, tree: &AwaitTree, i: usize) -> bool {
        self.resource_of(tree.nodes[i].span)
            .and_then(|r| self.resources.get(&r))
            .is_some_and(Resource::is_timer)
    }

    /// The span chain from `s` up through its parents, outermost first,
    /// then the chain of spawning tasks from `task`.
    pub fn trace(&self, s: Option<SpanId>, task: Option<SpanId>) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = s;
        let mut n = 0;
        while let Some(id) = cur {
            n += 1;
            if n > 32 {
                break;
            }
            if let Some(sp) = self.spans.get(&id) {
                let label = self.span_label(id, sp.callsite);
                out.push(match self.span_location(id, sp.callsite) {
                    Some(l) => format!("span {label} @ {l}"),
                    None => format!("span {label}"),
                });
                cur = sp.parent;
            } else {
                break;
            }
        }
        out.reverse();
        let mut tasks = Vec::new();
        let mut cur = task;
        while let Some(id) = cur {
            if tasks.len() >= 16 {
                break;
            }
            match self.task(id) {
                Some(t) => {
                    tasks.push(task_label(t));
                    cur = t.parent;
                }
                None => break,
            }
        }
        tasks.reverse();
        tasks.extend(out);
        tasks
    }

    /// The tokio task id a `runtime.join` span (an `awaitscope::JoinHandle`
    /// being awaited) names, if `span` is one.
    pub fn join_target(&self, span: SpanId, callsite: u32) -> Option<u64> {
        join_task_id(
            self.callsites.get(&callsite),
            &self.spans.get(&span)?.fields,
        )
    }

    /// "Awaited by" edges: for each live task, the live tasks whose await
    /// tree shows them awaiting its `JoinHandle` (`awaitscope::spawn`).
    pub fn awaited_by(&self) -> HashMap<SpanId, Vec<SpanId>> {
        let by_tokio: HashMap<u64, SpanId> = self
            .tasks
            .values()
            .filter_map(|t| Some((t.tokio_id?, t.id)))
            .collect();
        let mut out: HashMap<SpanId, Vec<SpanId>> = HashMap::new();
        for t in self.tasks.values() {
            for n in &t.await_tree.nodes {
                let Some(target) = self.join_target(n.span, n.callsite) else {
                    continue;
                };
                if let Some(&awaited) = by_tokio.get(&target) {
                    let v = out.entry(awaited).or_default();
                    if !v.contains(&t.id) {
                        v.push(t.id);
                    }
                }
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }
}
