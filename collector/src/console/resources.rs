//! Console's resources, async ops and resource polls as awaitscope events:
//! resource and async-op spans, the resource polls (a task now waits on a
//! resource, or got it), the lock state updates (who holds a Mutex or an
//! RwLock), and each task's await tree made of the operations it awaits.
//!
//! A resource internal to another (the semaphore inside a Mutex) stands
//! for its outer resource: its polls are sent as polls of the outer one,
//! as the lock the user called. The holder of a lock is the task whose
//! poll of it was ready last in the update that says it is locked; when
//! no such poll is in that update, the lock is sent held by no one known.
//! Semaphores' permit holders are not known from console (it sends the
//! permits left, not who took them).

use std::collections::HashMap;

use awaitscope_wire::{names, CloseKind, Event, Field, SpanId, SpanNew, TreeNode, Value};
use console_api::instrument::Update;
use console_api::resources::{resource, ResourceUpdate, Stats as ResStats};

use super::emit::{
    field_name, id_of, loc_fields, poll_op, truncated, unix_ns, Spans, Timed, CS_ASYNC_OP,
    CS_RESOURCE, CS_STATE, MAX_LIVE, THREAD,
};
use super::gone::Gone;

/// Most async ops a task's await tree shows (two nodes each, within the
/// wire's cap on a tree).
const MAX_TREE_OPS: usize = 16;

#[derive(Debug)]
struct Res {
    span: SpanId,
    /// When console says it was created (unix ns).
    created: u64,
    /// The outer resource, for an internal one.
    parent: Option<u64>,
    internal: bool,
    /// Its `locked` (or `write_locked`) state as last sent.
    locked: Option<bool>,
    /// The holder last sent with it (console task id), while locked.
    holder: Option<u64>,
    /// Its `locked` (index 0) or `write_locked` (1) state as console last
    /// told it.
    told: Option<(u16, bool)>,
    /// A Mutex: held whenever the semaphore inside it has no permit left.
    mutex: bool,
    /// The permits left, as last told, of the semaphore inside it (a
    /// Mutex's, an RwLock's).
    inner_permits: Option<u64>,
}

#[derive(Debug)]
struct Op {
    span: SpanId,
    /// When console says it was created (unix ns).
    created: u64,
    resource: u64,
    /// Another op this one is part of (`Semaphore::acquire` in
    /// `Mutex::lock`).
    nested: bool,
    /// The task awaiting it, once polled.
    task: Option<u64>,
    polled: bool,
}

/// The live resources and async ops of a program.
#[derive(Debug, Default)]
pub(super) struct Resources {
    res: HashMap<u64, Res>,
    ops: HashMap<u64, Op>,
    /// Resources and async ops that closed: console sends them again
    /// (see [`Gone`]).
    gone_res: Gone,
    /// With each op, its resource: a closed op's statistics sent again
    /// still tell who obtained the lock it was for.
    gone_ops: Gone<u64>,
}

/// What an update's resources do to tasks.
#[derive(Default)]
pub(super) struct Effects {
    /// Resource polls and lock updates, by console task id: sent within the
    /// task's last poll.
    per_task: HashMap<u64, Vec<Event>>,
    /// Await trees that changed, by console task id.
    trees: HashMap<u64, Vec<TreeNode>>,
    /// Everything else, at its own time (closes, updates of no known task).
    pub(super) rest: Vec<Timed>,
}

impl Effects {
    /// The resource events of console task `id`'s polls.
    pub(super) fn ops_of(&mut self, id: u64) -> Vec<Event> {
        self.per_task.remove(&id).unwrap_or_default()
    }

    /// The resource events of tasks that sent no statistics in the update
    /// (their polls are counted in a later one): at the update's time.
    pub(super) fn leftover(&mut self, now: u64) -> Vec<Timed> {
        let mut ids: Vec<u64> = self.per_task.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .flat_map(|id| self.per_task.remove(&id).unwrap_or_default())
            .map(|event| Timed::on(THREAD, now, event))
            .collect()
    }

    /// The await tree of console task `id`, if it changed.
    pub(super) fn tree_of(&mut self, id: u64) -> Option<Vec<TreeNode>> {
        self.trees.remove(&id)
    }
}

impl Resources {
    /// The outermost resource of `id` (itself, or what it is internal to).
    fn outer(&self, id: u64) -> u64 {
        outer_of(&self.res, id)
    }

    /// Spans of the resources and async ops `u` creates, into `out`.
    pub(super) fn new_spans(&mut self, m: &mut impl Spans, u: &Update, out: &mut Vec<Event>) {
        let now = u.now.as_ref().map_or(0, unix_ns);
        if let Some(ru) = &u.resource_update {
            for r in &ru.new_resources {
                let id = id_of(&r.id);
                let created = ru
                    .stats_update
                    .get(&id)
                    .and_then(|s| s.created_at.as_ref())
                    .map_or(now, unix_ns);
                if self.res.contains_key(&id)
                    || self.gone_res.closed(id, created)
                    || self.res.len() >= MAX_LIVE
                {
                    continue;
                }
                let kind = match r.kind.as_ref().and_then(|k| k.kind.as_ref()) {
                    Some(resource::kind::Kind::Known(_)) => names::KIND_TIMER.to_string(),
                    Some(resource::kind::Kind::Other(s)) => s.clone(),
                    None => String::new(),
                };
                let parent = r.parent_resource_id.as_ref().map(|p| p.id);
                let span = m.new_span();
                let mut fields = vec![
                    Field {
                        index: 0,
                        value: Value::Str(truncated(r.concrete_type.clone())),
                    },
                    Field {
                        index: 1,
                        value: Value::Str(truncated(kind)),
                    },
                    Field {
                        index: 2,
                        value: Value::Bool(r.is_internal),
                    },
                ];
                fields.extend(loc_fields(r.location.as_ref(), 3));
                out.push(Event::SpanNew(Box::new(SpanNew {
                    id: span,
                    callsite: CS_RESOURCE,
                    parent: parent.and_then(|p| self.res.get(&p)).map(|p| p.span),
                    ctx_task: None,
                    ctx_span: None,
                    ts: m.rel(created),
                    fields,
                })));
                self.res.insert(
                    id,
                    Res {
                        span,
                        created,
                        parent,
                        internal: r.is_internal,
                        locked: None,
                        holder: None,
                        told: None,
                        mutex: r.concrete_type == names::TYPE_MUTEX,
                        inner_permits: None,
                    },
                );
            }
        }
        if let Some(au) = &u.async_op_update {
            for o in &au.new_async_ops {
                let id = id_of(&o.id);
                let resource = id_of(&o.resource_id);
                let Some(r) = self.res.get(&resource) else {
                    continue;
                };
                let created = au
                    .stats_update
                    .get(&id)
                    .and_then(|s| s.created_at.as_ref())
                    .map_or(now, unix_ns);
                if self.ops.contains_key(&id)
                    || self.gone_ops.closed(id, created)
                    || self.ops.len() >= MAX_LIVE
                {
                    continue;
                }
                let span = m.new_span();
                out.push(Event::SpanNew(Box::new(SpanNew {
                    id: span,
                    callsite: CS_ASYNC_OP,
                    parent: Some(r.span),
                    ctx_task: None,
                    ctx_span: None,
                    ts: m.rel(created),
                    fields: vec![Field {
                        index: 0,
                        value: Value::Str(truncated(o.source.clone())),
                    }],
                })));
                self.ops.insert(
                    id,
                    Op {
                        span,
                        created,
                        resource,
                        nested: o.parent_async_op_id.is_some(),
                        task: None,
                        polled: false,
                    },
                );
            }
        }
    }

    /// What `u` says of the resources: polls, lock states, closes, and the
    /// await trees that changed. `tasks`: console task id to span. In
    /// steps: who obtained each lock ([`Resources::obtained`]), the
    /// resource polls ([`Resources::polls`]), the locks' states and the
    /// resources that closed ([`Resources::lock_states`]), the async ops
    /// that closed ([`Resources::op_closes`]), and what each task awaits
    /// ([`Resources::trees`]).
    pub(super) fn update(
        &mut self,
        m: &impl Spans,
        u: &Update,
        tasks: &HashMap<u64, SpanId>,
        now: u64,
    ) -> Effects {
        let mut fx = Effects::default();
        let mut ready_by = self.obtained(u, now);
        let no_update = ResourceUpdate::default();
        let ru = u.resource_update.as_ref().unwrap_or(&no_update);
        self.polls(m, ru, tasks, now, &mut ready_by, &mut fx);
        let res_closed = self.lock_states(m, ru, tasks, now, &ready_by, &mut fx);
        let mut closes: Vec<(u64, SpanId)> = res_closed.values().copied().collect();
        closes.extend(self.op_closes(u, &res_closed, now));
        // In time order, and in the order they were made (their span ids)
        // at the same time: the maps they come from have none.
        closes.sort_unstable();
        self.trees(m, tasks, now, &mut fx);
        for (d, span) in closes {
            fx.rest.push(Timed::on(
                THREAD,
                d,
                Event::Close {
                    span,
                    kind: CloseKind::Span,
                    ts: m.rel(d),
                },
            ));
        }
        fx
    }

    /// Who got each lock last in `u`, and when, by the outer resource: the
    /// task of an acquire that obtained the permits it asked for (the
    /// semaphore inside a Mutex or RwLock). Notes each op's task and
    /// whether it was polled.
    fn obtained(&mut self, u: &Update, now: u64) -> HashMap<u64, (u64, u64)> {
        let mut ready_by: HashMap<u64, (u64, u64)> = HashMap::new();
        let Some(au) = &u.async_op_update else {
            return ready_by;
        };
        for (id, s) in &au.stats_update {
            let task = s.task_id.as_ref().map(|t| t.id);
            let (resource, task) = match self.ops.get_mut(id) {
                Some(op) => {
                    if task.is_some() {
                        op.task = task;
                    }
                    if s.poll_stats.as_ref().is_some_and(|p| p.polls > 0) {
                        op.polled = true;
                    }
                    (op.resource, op.task)
                }
                // Closed already, and sent again (see `Gone`).
                None => match self.gone_ops.kept(*id) {
                    Some(resource) => (resource, task),
                    None => continue,
                },
            };
            let attr = |name| u64_attribute(&s.attributes, name);
            let obtained = matches!(
                (attr(names::PERMITS_OBTAINED), attr(names::PERMITS_REQUESTED)),
                (Some(o), Some(r)) if r > 0 && o >= r
            );
            if let (true, Some(t)) = (obtained, task) {
                let when = s
                    .poll_stats
                    .as_ref()
                    .and_then(|p| p.last_poll_ended.as_ref())
                    .map_or(now, unix_ns);
                let outer = outer_of(&self.res, resource);
                if ready_by.get(&outer).is_none_or(|&(_, w)| w <= when) {
                    ready_by.insert(outer, (t, when));
                }
            }
        }
        ready_by
    }

    /// The resource polls of `ru`, each within its task's last poll (on
    /// the outer resource); a ready one makes its task the lock's latest
    /// holder in `ready_by`.
    fn polls(
        &self,
        m: &impl Spans,
        ru: &ResourceUpdate,
        tasks: &HashMap<u64, SpanId>,
        now: u64,
        ready_by: &mut HashMap<u64, (u64, u64)>,
        fx: &mut Effects,
    ) {
        for p in &ru.new_poll_ops {
            let task = id_of(&p.task_id);
            let Some(&task_span) = tasks.get(&task) else {
                continue;
            };
            let op = p.async_op_id.as_ref().and_then(|o| self.ops.get(&o.id));
            let resource = op.map_or(id_of(&p.resource_id), |o| o.resource);
            let outer = self.outer(resource);
            let Some(r) = self.res.get(&outer) else {
                continue;
            };
            // An op on an internal resource is sent on its outer one.
            let span = match op {
                Some(o) if outer == o.resource => o.span,
                _ => r.span,
            };
            if p.is_ready {
                ready_by.insert(outer, (task, now));
            }
            fx.per_task.entry(task).or_default().push(poll_op(
                span,
                task_span,
                m.rel(now),
                p.name.clone(),
                p.is_ready,
            ));
        }
    }

    /// The lock states `ru` changes, sent with their holders (from
    /// `ready_by`), and the holders `ready_by` tells of locks whose state
    /// is not in `ru`: console publishes what it drained so far, and the
    /// acquire that took a lock's permit may come an update after the
    /// lock's state. Returns the resources that closed: console id to
    /// when, and span.
    fn lock_states(
        &mut self,
        m: &impl Spans,
        ru: &ResourceUpdate,
        tasks: &HashMap<u64, SpanId>,
        now: u64,
        ready_by: &HashMap<u64, (u64, u64)>,
        fx: &mut Effects,
    ) -> HashMap<u64, (u64, SpanId)> {
        let mut closed = HashMap::new();
        // The permits left of the semaphores inside locks, first: a Mutex
        // whose semaphore has none left is held, whether or not its own
        // stats are in this update.
        let mut ids: Vec<u64> = ru.stats_update.keys().copied().collect();
        for (id, s) in &ru.stats_update {
            let Some(p) = u64_attribute(&s.attributes, names::PERMITS) else {
                continue;
            };
            if let Some(Res {
                internal: true,
                parent: Some(outer),
                ..
            }) = self.res.get(id)
            {
                let outer = *outer;
                if let Some(o) = self.res.get_mut(&outer) {
                    o.inner_permits = Some(p);
                    ids.push(outer);
                }
            }
        }
        ids.extend(ready_by.keys().filter(|id| self.res.contains_key(id)));
        ids.sort_unstable();
        ids.dedup();
        let no_stats = ResStats::default();
        for id in &ids {
            let s = ru.stats_update.get(id).unwrap_or(&no_stats);
            let Some(r) = self.res.get_mut(id) else {
                continue;
            };
            for a in &s.attributes {
                let Some(f) = a.field.as_ref() else { continue };
                let (Some(n), Some(console_api::field::Value::BoolVal(b))) =
                    (field_name(f, None), f.value.as_ref())
                else {
                    continue;
                };
                if n == names::LOCKED {
                    r.told = Some((0, *b));
                } else if n == names::WRITE_LOCKED {
                    r.told = Some((1, *b));
                }
            }
            // console-subscriber sometimes leaves a Mutex's `locked` at
            // false while the semaphore inside it has no permit left (seen
            // with two tasks each taking a Mutex at once, at the program's
            // start): the semaphore is what decides whether another task
            // can take it. It goes to no permit before the Mutex says it is
            // held, and back to one before the Mutex says it is free, so it
            // is never wrong the other way.
            let locked = if r.mutex && r.inner_permits == Some(0) {
                Some((0, true))
            } else {
                r.told
            };
            // Sent when the state changed, or when another holder took it.
            let holder = ready_by.get(id).map(|h| h.0);
            let now_locked = locked.map(|l| l.1).or(r.locked);
            let changed = locked.is_some_and(|l| r.locked != Some(l.1));
            let retaken = now_locked == Some(true) && holder.is_some() && holder != r.holder;
            if let (Some((index, b)), true) =
                (locked.or(r.locked.map(|b| (0, b))), changed || retaken)
            {
                r.locked = Some(b);
                let holder = if b { holder } else { None };
                r.holder = holder;
                let e = Event::Log(Box::new(awaitscope_wire::Log {
                    callsite: CS_STATE,
                    span: Some(r.span),
                    task: holder.and_then(|t| tasks.get(&t).copied()),
                    ts: m.rel(now),
                    fields: vec![Field {
                        index,
                        value: Value::Bool(b),
                    }],
                    trace: Vec::new(),
                }));
                match holder {
                    Some(t) => fx.per_task.entry(t).or_default().push(e),
                    None => fx.rest.push(Timed::on(THREAD, now, e)),
                }
            }
            if let Some(d) = s.dropped_at.as_ref().map(unix_ns) {
                closed.insert(*id, (d, r.span));
                let created = r.created;
                self.res.remove(id);
                self.gone_res.remember(*id, created, ());
            }
        }
        closed
    }

    /// The async ops that closed in `u` (when, and span): those console
    /// says ended, and those whose resource is gone (`res_closed`: closed
    /// in this update), closed with it, since console may never say when
    /// the op itself ended.
    fn op_closes(
        &mut self,
        u: &Update,
        res_closed: &HashMap<u64, (u64, SpanId)>,
        now: u64,
    ) -> Vec<(u64, SpanId)> {
        let mut closes = Vec::new();
        if let Some(au) = &u.async_op_update {
            for (id, s) in &au.stats_update {
                if let Some(d) = s.dropped_at.as_ref().map(unix_ns) {
                    if let Some(op) = self.ops.remove(id) {
                        closes.push((d, op.span));
                        self.gone_ops.remember(*id, op.created, op.resource);
                    }
                }
            }
        }
        let (res, gone) = (&self.res, &mut self.gone_ops);
        self.ops.retain(|id, o| {
            let live = res.contains_key(&o.resource);
            if !live {
                gone.remember(*id, o.created, o.resource);
                let d = res_closed.get(&o.resource).map_or(now, |c| c.0);
                closes.push((d, o.span));
            }
            live
        });
        closes
    }

    /// Each task's await tree: the outermost ops it awaits, on the outer
    /// resource, ordered by span (creation), sent when it changed, with
    /// the resources the task now waits on and no longer waits on.
    fn trees(&self, m: &impl Spans, tasks: &HashMap<u64, SpanId>, now: u64, fx: &mut Effects) {
        let mut by_task: HashMap<u64, Vec<(SpanId, SpanId)>> = HashMap::new();
        for o in self.ops.values() {
            let (Some(t), true, false) = (o.task, o.polled, o.nested) else {
                continue;
            };
            let outer = self.outer(o.resource);
            let Some(r) = self.res.get(&outer) else {
                continue;
            };
            if o.resource != outer {
                continue;
            }
            by_task.entry(t).or_default().push((r.span, o.span));
        }
        let mut candidates: Vec<u64> = by_task.keys().copied().collect();
        for id in tasks.keys() {
            if m.sent_tree(*id).is_some_and(|t| !t.is_empty()) && !by_task.contains_key(id) {
                candidates.push(*id);
            }
        }
        for t in candidates {
            let mut pairs = by_task.remove(&t).unwrap_or_default();
            pairs.sort_unstable_by_key(|p| p.1);
            pairs.truncate(MAX_TREE_OPS);
            let mut nodes = Vec::with_capacity(pairs.len() * 2);
            for (r, o) in pairs {
                nodes.push(TreeNode { span: r, depth: 0 });
                nodes.push(TreeNode { span: o, depth: 1 });
            }
            let sent = m.sent_tree(t).unwrap_or(&[]);
            if nodes.iter().map(|n| n.span).eq(sent.iter().copied()) {
                continue;
            }
            // The task now waits on the resources of the ops it awaits,
            // and no longer on those of the ops that are gone (console
            // sends the resource polls that happen after it was connected
            // to, not the ones that made the wait).
            if let Some(&task_span) = tasks.get(&t) {
                let was: Vec<SpanId> = sent.iter().step_by(2).copied().collect();
                let now_on: Vec<(SpanId, SpanId)> = nodes
                    .chunks(2)
                    .filter_map(|c| Some((c.first()?.span, c.get(1)?.span)))
                    .collect();
                let ev =
                    |span, ready| poll_op(span, task_span, m.rel(now), "awaited".into(), ready);
                let list = fx.per_task.entry(t).or_default();
                for r in was.iter().filter(|r| !now_on.iter().any(|(n, _)| n == *r)) {
                    list.push(ev(*r, true));
                }
                for (_, o) in now_on.iter().filter(|(r, _)| !was.contains(r)) {
                    list.push(ev(*o, false));
                }
            }
            fx.trees.insert(t, nodes);
        }
    }
}

/// The value of the `u64` attribute `name` among console's `attributes`
/// (a resource's or an async op's statistics).
fn u64_attribute(attributes: &[console_api::Attribute], name: &str) -> Option<u64> {
    attributes.iter().find_map(|a| {
        let f = a.field.as_ref()?;
        match (field_name(f, None), f.value.as_ref()) {
            (Some(n), Some(console_api::field::Value::U64Val(v))) if n == name => Some(*v),
            _ => None,
        }
    })
}

/// The outermost resource of `id` among `res` (itself, or what it is
/// internal to).
fn outer_of(res: &HashMap<u64, Res>, mut id: u64) -> u64 {
    for _ in 0..8 {
        match res.get(&id) {
            Some(Res {
                internal: true,
                parent: Some(p),
                ..
            }) if res.contains_key(p) => id = *p,
            _ => break,
        }
    }
    id
}
