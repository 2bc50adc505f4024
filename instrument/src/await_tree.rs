//! Await trees of live tasks, kept in-process by the exporter thread.
//!
//! The await tree of a pending task is derived from what the layer already
//! records: the spans entered during the task's last poll, nested as they
//! were entered (the branches of a `join!` or `select!` become siblings),
//! with the tokio resource or joined task at the leaves. No annotations
//! beyond `#[instrument]` / `.instrument(span)` are needed; for a label on
//! an un-instrumented await, see [`crate::AwaitPoint`].
//!
//! [`crate::dump`] shows every live task like a goroutine dump.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use awaitscope_wire::SpanClass;
use rustc_hash::FxHashMap;

use crate::names;
use crate::span_node::{render_value, SpanNode};

/// A live span as the exporter knows it.
pub(crate) struct LiveSpan {
    pub node: Arc<SpanNode>,
    /// Nanoseconds (since origin) of its creation.
    created: u64,
    /// The thread that created it (whose ring its creation came in).
    home: u32,
}

/// One span of a poll's await tree: its id and its depth below the task.
#[derive(Clone, Copy, PartialEq, Eq)]
struct TreeSpan {
    span: u64,
    depth: u16,
}

/// What the exporter keeps of a live task. Its poll count, whether it is
/// running and when its last poll ended are kept on its node by the threads
/// that poll it (see `PollState`): the exporter touches a task only when its
/// await tree changes.
#[derive(Default)]
struct LiveTask {
    /// Spans entered during the last poll that entered any, as its tree
    /// nodes were read (a span entered again may repeat: see
    /// [`LiveTask::tree`]).
    nodes: Vec<(u64, u16)>,
}

impl LiveTask {
    /// The task's await tree: its nodes in entry order, a span entered
    /// again in the same poll (a loop, a select! polling the same branch)
    /// as one node. Worked out when asked for (a dump, a reconnect), not
    /// at every poll that changes it.
    fn tree(&self) -> Vec<TreeSpan> {
        let mut tree: Vec<TreeSpan> = Vec::with_capacity(self.nodes.len());
        for &(span, depth) in &self.nodes {
            let e = TreeSpan { span, depth };
            if !tree.contains(&e) {
                tree.push(e);
            }
        }
        tree
    }
}

/// The exporter's model of live spans, tasks and their await trees.
#[derive(Default)]
pub(crate) struct AwaitModel {
    pub spans: FxHashMap<u64, LiveSpan>,
    tasks: FxHashMap<u64, LiveTask>,
    /// Resource (Mutex, RwLock) -> task holding it.
    holders: FxHashMap<u64, u64>,
}

impl AwaitModel {
    /// A span was created, by thread `home`.
    pub fn on_span(&mut self, node: Arc<SpanNode>, created: u64, home: u32) {
        if node.class == SpanClass::Task {
            self.tasks.insert(node.id, LiveTask::default());
        }
        self.spans.insert(
            node.id,
            LiveSpan {
                node,
                created,
                home,
            },
        );
    }

    /// A poll of `task` ended with a new await tree: its tree nodes as
    /// read, `nodes`, are taken (swapped in, not copied), and `nodes` is
    /// left with the buffer of the task's previous ones (contents
    /// unspecified; unchanged if the task is not live).
    pub fn on_tree(&mut self, task: u64, nodes: &mut Vec<(u64, u16)>) {
        if let Some(t) = self.tasks.get_mut(&task) {
            std::mem::swap(&mut t.nodes, nodes);
        }
    }

    /// Each live task's last await tree, for a collector that reconnects
    /// (trees are otherwise only sent when they change).
    pub fn trees(&self) -> Vec<(u64, Vec<(u64, u16)>)> {
        let mut out: Vec<_> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.nodes.is_empty())
            .map(|(id, t)| (*id, t.tree().iter().map(|e| (e.span, e.depth)).collect()))
            .collect();
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }

    /// Returns its node and the thread that created it if it was live
    /// (its close not seen before).
    pub fn on_close(&mut self, span: u64) -> Option<(Arc<SpanNode>, u32)> {
        let live = self.spans.remove(&span);
        if live
            .as_ref()
            .is_none_or(|l| l.node.class == SpanClass::Task)
        {
            self.tasks.remove(&span);
        }
        if !self.holders.is_empty() {
            self.holders.retain(|r, t| *r != span && *t != span);
        }
        live.map(|l| (l.node, l.home))
    }

    /// A `runtime::resource::state_update` event on `resource` by `task`.
    pub fn on_state_update(&mut self, resource: u64, task: u64, locked: Option<bool>) {
        match locked {
            Some(true) if task != 0 => {
                self.holders.insert(resource, task);
            }
            Some(false) => {
                self.holders.remove(&resource);
            }
            _ => {}
        }
    }

    /// A snapshot of every live task at `now` (ns since origin); `ns`
    /// turns a raw clock reading into ns since origin.
    pub fn snapshot(&self, now: u64, ns: impl Fn(u64) -> u64) -> Dump {
        let mut ids: Vec<u64> = self.tasks.keys().copied().collect();
        ids.sort_unstable();
        Dump {
            tasks: ids
                .into_iter()
                .filter_map(|id| self.task_dump(id, now, &ns))
                .collect(),
        }
    }

    fn task_ref(&self, id: u64) -> Option<(u64, Option<String>)> {
        let s = self.spans.get(&id)?;
        Some((id, s.node.task_name()))
    }

    fn task_dump(&self, id: u64, now: u64, ns: &impl Fn(u64) -> u64) -> Option<TaskDump> {
        let live = self.spans.get(&id)?;
        let state = self.tasks.get(&id)?;
        let node = &live.node;
        let running = node.polls.running.load(Ordering::Relaxed);
        let spawned_at = node.location();
        let mut roots: Vec<AwaitNode> = Vec::new();
        // Build the nested tree from (span, depth) in entry order.
        let mut path: Vec<usize> = Vec::new();
        let tree = state.tree();
        let mut i = 0;
        while i < tree.len() {
            let e = tree[i];
            i += 1;
            let Some(s) = self.spans.get(&e.span) else {
                continue;
            };
            let label = self.label(&s.node, &tree[i..]);
            // The async op spans inside a resource are folded into its label.
            if s.node.class == SpanClass::Resource {
                while i < tree.len() && self.is_resource_inner(tree[i].span) {
                    i += 1;
                }
            }
            let n = AwaitNode {
                label,
                // Recorded `loc.*` (the caller of an await point or a
                // spawn) before the callsite, which for those is ours.
                location: s.node.location().or_else(|| {
                    s.node
                        .meta
                        .file()
                        .zip(s.node.meta.line())
                        .map(|(f, l)| (f.to_owned(), l))
                }),
                pending: Duration::from_nanos(now.saturating_sub(s.created)),
                children: Vec::new(),
            };
            let depth = (e.depth as usize).min(path.len());
            path.truncate(depth);
            let siblings = path
                .iter()
                .fold(&mut roots, |level, &ix| &mut level[ix].children);
            siblings.push(n);
            path.push(siblings.len() - 1);
        }
        Some(TaskDump {
            id,
            tokio_id: node.u64_field(names::TASK_ID),
            name: node.task_name(),
            kind: node.str_field(names::KIND),
            spawned_at,
            spawned_by: (node.ctx_task != 0).then_some(node.ctx_task),
            running,
            polls: node.polls.count.load(Ordering::Relaxed),
            idle: match (running, node.polls.last_end.load(Ordering::Relaxed)) {
                (false, end) if end != 0 => Some(Duration::from_nanos(now.saturating_sub(ns(end)))),
                _ => None,
            },
            tree: roots,
        })
    }

    fn is_resource_inner(&self, span: u64) -> bool {
        self.spans
            .get(&span)
            .is_some_and(|s| matches!(s.node.class, SpanClass::AsyncOp | SpanClass::AsyncOpPoll))
    }

    /// What a node says: the span with its fields, or for a resource what
    /// is awaited on it and who holds it.
    fn label(&self, node: &SpanNode, after: &[TreeSpan]) -> String {
        match node.class {
            SpanClass::Resource => {
                let ty = node
                    .str_field(names::CONCRETE_TYPE)
                    .unwrap_or_else(|| "resource".into());
                let op = after
                    .iter()
                    .take(2)
                    .filter_map(|e| self.spans.get(&e.span))
                    .find(|s| s.node.class == SpanClass::AsyncOp)
                    .and_then(|s| s.node.str_field(names::SOURCE));
                let mut l = match op {
                    Some(op) => format!("{op}: waiting on {ty}"),
                    None => format!("waiting on {ty}"),
                };
                if let Some((f, line)) = node.location() {
                    l.push_str(&format!(" created at {f}:{line}"));
                }
                if let Some((holder, name)) =
                    self.holders.get(&node.id).and_then(|t| self.task_ref(*t))
                {
                    l.push_str(&format!(", held by task {holder}"));
                    if let Some(n) = name {
                        l.push_str(&format!(" {n:?}"));
                    }
                }
                l
            }
            _ if node.meta.target() == names::AWAIT_POINT_TARGET => node
                .str_field(names::LABEL)
                .unwrap_or_else(|| "await".into()),
            _ if node.meta.target() == names::JOIN_TARGET => {
                let tokio_id = node.u64_field(names::TASK_ID).unwrap_or(0);
                let awaited = self.spans.values().find(|s| {
                    s.node.class == SpanClass::Task
                        && s.node.u64_field(names::TASK_ID) == Some(tokio_id)
                });
                match awaited.and_then(|s| self.task_ref(s.node.id)) {
                    Some((id, Some(name))) => format!("awaiting task {id} {name:?}"),
                    Some((id, None)) => format!("awaiting task {id}"),
                    None => format!("awaiting tokio task {tokio_id}"),
                }
            }
            _ => {
                let fields: Vec<String> = node
                    .named_fields()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={}", render_value(&v)))
                    .collect();
                if fields.is_empty() {
                    format!("{}::{}", node.meta.target(), node.meta.name())
                } else {
                    format!(
                        "{}::{}{{{}}}",
                        node.meta.target(),
                        node.meta.name(),
                        fields.join(" ")
                    )
                }
            }
        }
    }
}

/// A snapshot of every live task and what it awaits: [`crate::dump`].
#[derive(Clone, Debug, Default)]
pub struct Dump {
    /// Live tasks, oldest first.
    pub tasks: Vec<TaskDump>,
}

/// One live task of a [`Dump`]: who it is, where it was spawned, how busy
/// it has been and what it awaits.
#[derive(Clone, Debug)]
pub struct TaskDump {
    /// awaitscope's id of the task.
    pub id: u64,
    /// tokio's task id, when known.
    pub tokio_id: Option<u64>,
    /// The task's name (`tokio::task::Builder::name`,
    /// [`spawn_named`](crate::spawn_named)), if it has one.
    pub name: Option<String>,
    /// tokio's task kind (`task`, `blocking`, `block_on`, `local`).
    pub kind: Option<String>,
    /// Source file and line of the spawn, when tokio or
    /// [`spawn`](crate::spawn()) recorded them.
    pub spawned_at: Option<(String, u32)>,
    /// awaitscope id of the task that spawned it.
    pub spawned_by: Option<u64>,
    /// Whether a thread is polling it right now (the tree shown is then
    /// from an earlier poll).
    pub running: bool,
    /// How many times it has been polled so far.
    pub polls: u64,
    /// Time since its last poll ended, when idle.
    pub idle: Option<Duration>,
    /// What it awaits: the spans of its last poll.
    pub tree: Vec<AwaitNode>,
}

/// One node of an await tree: a span the task is inside of, or at a leaf
/// what it waits on (a resource, a joined task, a labelled await point).
#[derive(Clone, Debug)]
pub struct AwaitNode {
    /// The span (`target::name{fields}`), or what is awaited at a leaf.
    pub label: String,
    /// Source location of the span's callsite.
    pub location: Option<(String, u32)>,
    /// Time since the span was created (for `#[instrument]` async fns: since
    /// the call).
    pub pending: Duration,
    /// The awaits inside this one: spans entered under it in the last
    /// poll, and at a leaf the resource or task it waits on.
    pub children: Vec<AwaitNode>,
}

impl AwaitNode {
    /// Depth-first iterator over the labels (for searching a tree).
    pub fn labels(&self) -> Vec<&str> {
        let mut out = vec![self.label.as_str()];
        for c in &self.children {
            out.extend(c.labels());
        }
        out
    }
}

impl TaskDump {
    /// Every label in the tree, depth first.
    pub fn labels(&self) -> Vec<&str> {
        self.tree.iter().flat_map(AwaitNode::labels).collect()
    }
}

impl Dump {
    /// The live task whose tokio id (`tokio::task::Id`, as a number) is
    /// `id`, if there is one.
    pub fn by_tokio_id(&self, id: u64) -> Option<&TaskDump> {
        self.tasks.iter().find(|t| t.tokio_id == Some(id))
    }

    /// The live tasks named `name` (several tasks can share a name).
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a TaskDump> + 'a {
        self.tasks
            .iter()
            .filter(move |t| t.name.as_deref() == Some(name))
    }
}

fn fmt_dur(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2}s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}µs", d.as_micros())
    }
}

impl fmt::Display for TaskDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}", self.id)?;
        if let Some(n) = &self.name {
            write!(f, " {n:?}")?;
        }
        if let Some(k) = self.kind.as_deref().filter(|k| *k != names::KIND_TASK) {
            write!(f, " [{k}]")?;
        }
        match (self.running, self.idle) {
            (true, _) => write!(f, " running")?,
            (false, Some(idle)) => write!(f, " idle {}", fmt_dur(idle))?,
            (false, None) => write!(f, " not yet polled")?,
        }
        write!(f, ", {} polls", self.polls)?;
        if let Some((file, line)) = &self.spawned_at {
            write!(f, ", spawned at {file}:{line}")?;
        }
        if let Some(by) = self.spawned_by {
            write!(f, " by task {by}")?;
        }
        writeln!(f)?;
        fn node(
            f: &mut fmt::Formatter<'_>,
            n: &AwaitNode,
            prefix: &str,
            last: bool,
        ) -> fmt::Result {
            let (branch, cont) = if last {
                ("└─ ", "   ")
            } else {
                ("├─ ", "│  ")
            };
            write!(f, "{prefix}{branch}{}", n.label)?;
            if let Some((file, line)) = &n.location {
                write!(f, " at {file}:{line}")?;
            }
            writeln!(f, " [{}]", fmt_dur(n.pending))?;
            let p = format!("{prefix}{cont}");
            for (i, c) in n.children.iter().enumerate() {
                node(f, c, &p, i + 1 == n.children.len())?;
            }
            Ok(())
        }
        for (i, n) in self.tree.iter().enumerate() {
            node(f, n, "  ", i + 1 == self.tree.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} live tasks", self.tasks.len())?;
        for t in &self.tasks {
            writeln!(f)?;
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

/// Labels an await that has no span of its own, so await trees name it.
///
/// ```no_run
/// use awaitscope::AwaitPoint;
/// # async fn f(inventory: impl std::future::Future<Output = ()>) {
/// inventory.await_point("fetch inventory").await;
/// # }
/// ```
pub trait AwaitPoint: std::future::Future + Sized {
    /// Wraps the future in an `await` span labelled `label` (a plain
    /// `tracing` span: other layers see it too).
    ///
    /// The span records the caller's line (`loc.file`, `loc.line`), which
    /// traces show rather than this file's.
    #[track_caller]
    fn await_point(self, label: &'static str) -> tracing::instrument::Instrumented<Self> {
        use tracing::Instrument;
        let loc = std::panic::Location::caller();
        self.instrument(tracing::info_span!(
            target: names::AWAIT_POINT_TARGET,
            names::AWAIT_POINT_SPAN,
            label,
            loc.file = loc.file(),
            loc.line = loc.line(),
            loc.col = loc.column(),
        ))
    }
}

impl<F: std::future::Future> AwaitPoint for F {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use awaitscope_wire::SpanClass;

    use super::AwaitModel;
    use crate::span_node::{NodeParts, SpanNode};

    fn node(id: u64, class: SpanClass) -> Arc<SpanNode> {
        let meta = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            tracing::info_span!("node").metadata().unwrap()
        });
        Arc::new(SpanNode::new(NodeParts {
            id,
            ts: 0,
            parent_id: 0,
            ctx_task: 0,
            ctx_span: 0,
            callsite: 0,
            class,
            blocking: false,
            meta,
            parent: None,
            instance: 0,
            ctx_task_node: None,
            link: None,
            fields: Vec::new(),
        }))
    }

    /// A task's tree nodes are kept as read, a span entered again in the
    /// same poll shown once; a new tree replaces the old one, and the
    /// buffer handed back is the old tree's.
    #[test]
    fn trees_are_taken_whole_and_shown_without_repeats() {
        let mut model = AwaitModel::default();
        for (id, class) in [
            (1, SpanClass::Task),
            (2, SpanClass::User),
            (3, SpanClass::User),
        ] {
            model.on_span(node(id, class), 0, 0);
        }
        let mut nodes = vec![(2, 0), (3, 1), (2, 0), (3, 1), (3, 2)];
        model.on_tree(1, &mut nodes);
        assert!(nodes.is_empty(), "the task's empty tree comes back");
        assert_eq!(model.trees(), vec![(1, vec![(2, 0), (3, 1), (3, 2)])]);
        let labels = model.snapshot(0, |t| t).tasks[0].labels().len();
        assert_eq!(labels, 3);
        let mut nodes = vec![(3, 0)];
        model.on_tree(1, &mut nodes);
        assert_eq!(nodes.len(), 5, "the old tree's buffer comes back");
        assert_eq!(model.trees(), vec![(1, vec![(3, 0)])]);
        // Not a live task: nothing taken.
        let mut nodes = vec![(2, 0)];
        model.on_tree(9, &mut nodes);
        assert_eq!(nodes, vec![(2, 0)]);
    }
}
