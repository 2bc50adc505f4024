//! How things are named: the labels of tasks, spans and await-tree nodes,
//! their source locations, and the queries built on them (await paths,
//! culprits, causal traces, who awaits whom). The model, the detectors,
//! the reports, the exports and the TUI all name things through here.

use std::borrow::Cow;
use std::collections::HashMap;

use awaitscope_wire::paths::PathOrigin;
use awaitscope_wire::{names, Callsite, Field, SpanClass, SpanId};

use super::await_tree::{AwaitNode, AwaitTree};
use super::file_memo::{file_origin, shown_file};
use super::process::Process;
use super::resource::Resource;
use super::span::{self, Location};
use super::task::Task;

/// `task NAME#ID @ LOCATION`.
pub fn task_label(t: &Task) -> String {
    // Written in one go: findings name tasks often.
    let name = t.name.as_deref().unwrap_or("");
    let file = t.location.as_ref().map_or(0, |l| l.file.len());
    let mut s = String::with_capacity(name.len() + file + 40);
    push_task_label(&mut s, t);
    s
}

/// Appends [`task_label`]'s text of `t` to `s`.
pub fn push_task_label(s: &mut String, t: &Task) {
    s.push_str("task ");
    s.push_str(t.name.as_deref().unwrap_or(""));
    s.push('#');
    crate::units::push_decimal(s, t.id.0);
    if let Some(l) = &t.location {
        s.push_str(" @ ");
        l.push_to(s);
    }
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
/// `join task.id=N`, a labelled await point (`AwaitPoint`) its label. `None` for other spans, or when the field is missing:
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
        _ if cs.is_some_and(|c| c.target == names::AWAIT_POINT_TARGET) => {
            span::field_str(cs, fields, names::LABEL).map(Cow::Borrowed)
        }
        _ => join_task_id(cs, fields).map(|id| Cow::Owned(format!("join task.id={id}"))),
    }
}

/// One line of a trace: what a task is in or waits on (a function's span,
/// a tokio operation, a labelled await) and where in the user's code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What: `transfer_a_to_b`, `tokio::sync::Mutex::lock`, ...
    pub label: String,
    /// Where, as [`awaitscope_wire::paths::display`] shows it; never a
    /// file of awaitscope's own.
    pub location: Option<Location>,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(l) => write!(f, "{} @ {l}", self.label),
            None => f.write_str(&self.label),
        }
    }
}

/// Whether `cs` is a span awaitscope itself creates (task, join, await
/// point, context): its callsite is in awaitscope's files, not the user's.
pub fn is_own_callsite(cs: &Callsite) -> bool {
    [
        names::TASK_TARGET,
        names::JOIN_TARGET,
        names::AWAIT_POINT_TARGET,
        names::CONTEXT_TARGET,
    ]
    .contains(&cs.target.as_str())
}

/// `l` with its file as [`awaitscope_wire::paths::display`] shows it (registry and std
/// paths shortened, never absolute into them).
pub fn shown(mut l: Location) -> Location {
    if let Some(f) = shown_file(&l.file) {
        l.file = f;
    }
    l
}

/// Where a span says it is, for the user: its recorded `loc.*` fields (a
/// resource's creation site, the caller of an awaitscope span), else its
/// callsite unless that is in awaitscope's own files. Paths shown short.
pub fn span_site(cs: Option<&Callsite>, fields: &[Field]) -> Option<Location> {
    if let Some(l) = span::loc_fields(cs, fields) {
        return Some(shown(l));
    }
    if cs.is_some_and(is_own_callsite) {
        return None;
    }
    span::callsite_location(cs).map(shown)
}

/// Whether `l` is in the program's own code (not std, not a dependency).
fn is_user(l: &Location) -> bool {
    file_origin(&l.file) == PathOrigin::Local
}

/// A frame of an await path as [`Process::await_frames`] makes it, told by
/// borrowed parts (see [`Process::plain_frame`]).
#[derive(Debug, PartialEq, Eq)]
pub struct PlainFrame<'a> {
    /// The label: the callsite's name.
    pub label: &'a str,
    /// The callsite's file as shown, and its line.
    pub at: Option<(Cow<'a, str>, u32)>,
}

/// Whether `class` is a resource's or an async op's (folded, labelled and
/// located by [`Process::await_frames`] in their own ways).
pub(crate) fn is_resource_class(class: SpanClass) -> bool {
    matches!(
        class,
        SpanClass::Resource | SpanClass::AsyncOp | SpanClass::AsyncOpPoll
    )
}

impl Process {
    /// The frame [`Process::await_frames`] makes of `node` when it is a
    /// plain span of the program, told by borrowed parts rather than made
    /// (a description names a few of them each time): the node has no
    /// label of its own and is no resource nor async op, nor on one
    /// ([`Process::resource_of`]), its callsite is known and not one of
    /// awaitscope's own, and its span (if still open) is no resource nor
    /// async op and has no `loc.file` field. Its frame is then
    /// its callsite's name at its callsite's file (as shown) and line.
    /// `None` when `node` is not such a span.
    pub fn plain_frame(&self, node: &AwaitNode) -> Option<PlainFrame<'_>> {
        if node.label.is_some() || is_resource_class(node.class) {
            return None;
        }
        let cs = self.callsites.get(&node.callsite)?;
        if is_own_callsite(cs) {
            return None;
        }
        if let Some(s) = self.spans.get(&node.span) {
            if is_resource_class(s.class)
                || span::field(Some(cs), &s.fields, names::LOC_FILE).is_some()
            {
                return None;
            }
        }
        if self.resource_of(node.span).is_some() {
            return None;
        }
        let at = match (&cs.file, cs.line) {
            (Some(file), Some(line)) => {
                let shown = match shown_file(file) {
                    Some(f) => Cow::Owned(f),
                    None => Cow::Borrowed(file.as_str()),
                };
                Some((shown, line))
            }
            _ => None,
        };
        Some(PlainFrame {
            label: &cs.name,
            at,
        })
    }

    /// Human-readable label of a span: resource type, async-op source, or
    /// span name.
    pub fn span_label(&self, id: SpanId, callsite: u32) -> String {
        let cs = self.callsites.get(&callsite);
        if let Some(r) = self.resources.get(&id) {
            return r.concrete_type.clone();
        }
        if let Some(s) = self.spans.get(&id) {
            if let Some(l) = span_own_label(s.class, cs, &s.fields) {
                return l.into_owned();
            }
        }
        cs.map_or_else(|| format!("span#{}", id.0), |c| c.name.clone())
    }

    /// Source location of a span for the user: a resource's creation site,
    /// an async op's resource's, the `loc.*` an awaitscope span recorded
    /// (its caller), or the span's callsite; never in awaitscope's files,
    /// paths shown short.
    pub fn span_location(&self, id: SpanId, callsite: u32) -> Option<Location> {
        if let Some(r) = self.resource_of(id).and_then(|r| self.resources.get(&r)) {
            if let Some(l) = &r.location {
                return Some(shown(l.clone()));
            }
        }
        let cs = self.callsites.get(&callsite);
        match self.spans.get(&id) {
            Some(s) => span_site(cs, &s.fields),
            None => span_site(cs, &[]),
        }
    }

    /// Label of an await-tree node.
    pub fn node_label(&self, node: &AwaitNode) -> String {
        match &node.label {
            Some(l) => l.to_string(),
            None => self.span_label(node.span, node.callsite),
        }
    }

    /// What a task waiting at node `i` of `tree` waits on, in a word, as
    /// its `stuck` finding names it: the operation the user called for a
    /// tokio resource (`tokio::time::sleep`, `tokio::sync::Mutex::lock`,
    /// not tokio's own `Sleep::new_timeout` or a semaphore's `Acquire`),
    /// else the span's label. The cheap half of [`Process::await_frames`],
    /// for views that name every waiting task.
    pub fn waiting_label(&self, tree: &AwaitTree, i: usize) -> String {
        let node = &tree.nodes[self.culprit(tree, i)];
        match self
            .resource_of(node.span)
            .and_then(|r| self.resources.get(&r))
        {
            Some(r) if !r.internal => {
                let source = (node.class != SpanClass::Resource)
                    .then_some(node.label.as_deref())
                    .flatten();
                self.operation(r, source)
            }
            _ => self.node_label(node),
        }
    }

    /// The user-visible operation a tokio resource (or an async op on it,
    /// `source`) stands for: `tokio::sync::Mutex::lock`,
    /// `tokio::time::sleep`.
    fn operation(&self, r: &Resource, source: Option<&str>) -> String {
        match r.concrete_type.as_str() {
            names::TYPE_SLEEP => return "tokio::time::sleep".into(),
            names::TYPE_INTERVAL => return "tokio::time::Interval::tick".into(),
            _ => {}
        }
        // tokio's spans have their module as target: `tokio::sync::mutex`,
        // whose types tokio exports from `tokio::sync`.
        let target = self
            .callsites
            .get(&r.callsite)
            .map(|cs| cs.target.as_str())
            .filter(|t| t.starts_with("tokio::"));
        let module = target.map_or_else(String::new, |t| {
            let m = t.split("::").nth(1).unwrap_or("");
            format!("tokio::{m}::")
        });
        match source {
            Some(s) if s.starts_with(r.concrete_type.as_str()) => format!("{module}{s}"),
            // `Receiver::await` on a oneshot's `Sender|Receiver`: the
            // operation belongs to the module's own types.
            Some(s) if s.contains("::") => match target {
                Some(t) => format!("{t}::{s}"),
                None => s.to_string(),
            },
            Some(s) => format!("{module}{}::{s}", r.concrete_type),
            None => format!("{module}{}", r.concrete_type),
        }
    }

    /// The frames of the await-tree path down to node `i`, innermost
    /// first. tokio's internals are folded into the operation the user
    /// called (a Mutex's inner semaphore and its `Acquire` become
    /// `tokio::sync::Mutex::lock`), shown at the user's line: the line the
    /// task awaits the operation at when the producer sent its stack
    /// ([`Process::wait_lines`]), else the resource's creation site when
    /// that is the user's code, else the innermost enclosing frame's.
    pub fn await_frames(&self, tree: &AwaitTree, i: usize) -> Vec<Frame> {
        let mut buf = [0usize; 32];
        let long;
        let path = match tree.path_in(i, &mut buf) {
            Some(p) => p,
            None => {
                long = tree.path(i);
                &long[..]
            }
        };
        let mut out: Vec<Frame> = Vec::with_capacity(path.len());
        let mut user_loc: Option<Location> = None;
        // Index in `out` of the innermost operation's frame.
        let mut last_op: Option<usize> = None;
        for (k, &n) in path.iter().enumerate() {
            let node = &tree.nodes[n];
            let mut res = self
                .resource_of(node.span)
                .and_then(|r| self.resources.get(&r));
            if res.is_none() && node.class != SpanClass::Resource && k > 0 {
                // An async op that closed (the lock was taken): the
                // resource above it still names it.
                let prev = &tree.nodes[path[k - 1]];
                if prev.class == SpanClass::Resource {
                    res = self.resources.get(&prev.span);
                }
            }
            let frame = match (node.class, res) {
                (SpanClass::Resource | SpanClass::AsyncOp | SpanClass::AsyncOpPoll, Some(r)) => {
                    if r.internal {
                        continue;
                    }
                    if node.class == SpanClass::Resource {
                        // The async op on it that comes next names it.
                        let op_next = path.get(k + 1).is_some_and(|&c| {
                            let c = &tree.nodes[c];
                            c.class != SpanClass::Resource
                                && self.resource_of(c.span).is_none_or(|cr| cr == r.id)
                        });
                        if op_next {
                            continue;
                        }
                    }
                    let source = (node.class != SpanClass::Resource)
                        .then_some(node.label.as_deref())
                        .flatten();
                    let location = r
                        .location
                        .clone()
                        .map(shown)
                        .filter(is_user)
                        .or_else(|| user_loc.clone());
                    last_op = Some(out.len());
                    Frame {
                        label: self.operation(r, source),
                        location,
                    }
                }
                (SpanClass::Resource | SpanClass::AsyncOp | SpanClass::AsyncOpPoll, None) => {
                    Frame {
                        label: self.node_label(node),
                        location: user_loc.clone(),
                    }
                }
                _ => {
                    let location = self.span_location(node.span, node.callsite);
                    if let Some(l) = location.as_ref().filter(|l| is_user(l)) {
                        user_loc = Some(l.clone());
                    }
                    Frame {
                        label: self.node_label(node),
                        location,
                    }
                }
            };
            // A resource left after its op was folded shows once.
            if out.last() != Some(&frame) {
                out.push(frame);
            } else if last_op == Some(out.len()) {
                last_op = Some(out.len() - 1);
            }
        }
        // The innermost operation is where the task waits: at the line of
        // its `.await` when a stack of the wait named it.
        let wait_line = self.wait_line(tree, path, i);
        if let (Some(i), Some(line)) = (last_op, wait_line) {
            if let Some(f) = out.get_mut(i) {
                f.location = Some(line.clone());
            }
        }
        out.reverse();
        out
    }

    /// Where node `i` of `tree` is, as an await tree shows it: for an
    /// async op the task waits in, the line of its `.await` when a stack
    /// of the wait named it ([`Process::wait_lines`]); else the span's
    /// location (a resource's or an async op's: where the resource was
    /// made).
    pub fn node_location(&self, tree: &AwaitTree, i: usize) -> Option<Location> {
        let n = &tree.nodes[i];
        if matches!(n.class, SpanClass::AsyncOp | SpanClass::AsyncOpPoll) {
            if let Some(l) = self.wait_line(tree, &[i], i) {
                return Some(l.clone());
            }
        }
        self.span_location(n.span, n.callsite)
    }

    /// The line the task of `tree` awaits at from node `i` (its await
    /// point) down, when the program sent the wait's stack
    /// ([`Process::wait_lines`]).
    pub fn awaits_at(&self, tree: &AwaitTree, i: usize) -> Option<&Location> {
        self.wait_line(tree, &[i], i)
    }

    /// The line the task of `tree` awaits at, down the path `path` to node
    /// `i` ([`Process::wait_lines`]): kept on the async op the wait was
    /// reported in, which may be the path's or one under its end (tokio's
    /// own, a semaphore's acquire inside a Mutex's lock).
    fn wait_line(&self, tree: &AwaitTree, path: &[usize], i: usize) -> Option<&Location> {
        if self.wait_lines.is_empty() {
            return None;
        }
        let on = |n: usize| self.wait_lines.get(&tree.nodes[n].span);
        let under = |j: usize| {
            let mut p = tree.nodes[j].parent;
            for _ in 0..tree.nodes.len() {
                match p {
                    Some(p) if usize::from(p) == i => return true,
                    Some(q) => p = tree.nodes[usize::from(q)].parent,
                    None => return false,
                }
            }
            false
        };
        path.iter()
            .rev()
            .find_map(|&n| on(n))
            .or_else(|| (i + 1..tree.nodes.len()).filter(|&j| under(j)).find_map(on))
    }

    /// The node of `tree` its task waits at now: from the deepest leaf up,
    /// the first span still open that is no resource itself (see
    /// [`AwaitTree::await_point_from`]). What the `stuck` detector and the
    /// views name as what a task waits on.
    pub fn await_point(&self, tree: &AwaitTree) -> Option<usize> {
        tree.await_point(|s| self.spans.contains_key(&s))
    }

    /// [`Process::await_point`] from leaf `leaf` of `tree` (a `join!` or
    /// `select!` waits at several).
    pub fn await_point_from(&self, tree: &AwaitTree, leaf: usize) -> Option<usize> {
        tree.await_point_from(leaf, |s| self.spans.contains_key(&s))
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

    /// The span chain from `s` up through its parents, then the chain of
    /// spawning tasks from `task` up: innermost first, like a backtrace.
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
        let mut cur = task;
        let mut tasks = 0;
        while let Some(id) = cur {
            if tasks >= 16 {
                break;
            }
            match self.task(id) {
                Some(t) => {
                    out.push(task_label(t));
                    tasks += 1;
                    cur = t.parent;
                }
                None => break,
            }
        }
        out
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
