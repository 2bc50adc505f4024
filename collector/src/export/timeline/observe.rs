//! The walk observing the model of one process: each [`Change`] it
//! reports becomes timeline events (tracks, poll slices, instants, flows)
//! and updates the timeline's own state.

use std::io;
use std::sync::Arc;

use awaitscope_wire::{names, CloseKind, Field, Level, Log, ProcessKey, SpanClass, SpanId};

use super::awaits::{advance, end_awaits, tree_sent};
use super::state::{
    clean_frame, emit, split, PState, Sinks, SpanW, TaskW, WalkState, CLOSED_MEMORY, MAX_FLOWS_IN,
};
use super::{Arg, Args, Ev, RootGroup, Track, TrackKind, WalkOptions};
use crate::model::span::{self, Location};
use crate::model::{labels, Change, Observer, Process, Task};

/// The walk observing the model of one process: turns the changes it
/// reports into timeline events.
pub(super) struct Observe<'a, 'b> {
    pub(super) sh: &'a mut WalkState,
    pub(super) p: &'a mut PState,
    pub(super) sinks: Sinks<'a, 'b>,
    /// The first error of a sink (an observer cannot return it): the walk
    /// stops at the end of the frame.
    pub(super) err: Option<io::Error>,
}

impl Observer for Observe<'_, '_> {
    const STEPS: bool = true;

    fn change(&mut self, m: &Process, change: &Change<'_>) {
        if self.err.is_some() {
            return;
        }
        if let Err(e) = self.on_change(m, change) {
            self.err = Some(e);
        }
    }
}

impl Observe<'_, '_> {
    pub(super) fn result(&mut self) -> io::Result<()> {
        match self.err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn on_change(&mut self, m: &Process, change: &Change<'_>) -> io::Result<()> {
        // The window opens or closes with the clock (the event that moved
        // it may have changed nothing).
        advance(self.sh, self.p, self.sinks, m.now)?;
        match *change {
            Change::SpanCreated { span, .. } => {
                self.span_created(m, span);
                Ok(())
            }
            Change::SpanClosing { span, .. } => {
                self.span_closing(span);
                Ok(())
            }
            Change::TaskSpawned { task, ts } => self.task_spawned(m, task, ts),
            Change::PollCommitted {
                task,
                start,
                duration,
            } => self.poll_done(task, start, start.saturating_add(duration)),
            Change::PollStarted { task, ts } => {
                self.poll_started(m, task, ts);
                Ok(())
            }
            Change::PollEnded { task, .. } => {
                self.poll_ended(task);
                Ok(())
            }
            Change::TreeSent { task, spans } => {
                tree_sent(self.sh, self.p, self.sinks, m, task, spans)
            }
            Change::TaskClosing { task, kind, ts } => self.task_closing(task, kind, ts),
            Change::Woken { task, by, ts } => self.woken(task, by, ts),
            Change::FollowsFrom { span, follows } => self.follows(m, span, follows),
            Change::Logged {
                log,
                level,
                message,
                location,
            } => self.logged(m, log, level, message, location),
            Change::Panic {
                task,
                message,
                location,
                ts,
                ..
            } => {
                let mut args: Args = Vec::new();
                if let Some(l) = location {
                    args.push(("location", Arg::S(l.to_string())));
                }
                let name = format!("panic: {message}");
                self.instant(task, ts, &name, "panic", &args, &[], &[])
            }
            Change::WaitEnded { .. } | Change::Error { .. } | Change::Stalled { .. } => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn instant(
        &mut self,
        task: Option<SpanId>,
        ts: u64,
        name: &str,
        cat: &'static str,
        args: &Args,
        flows_out: &[u64],
        flows_in: &[u64],
    ) -> io::Result<()> {
        if !self.sh.in_window(ts) {
            return Ok(());
        }
        let p = &*self.p;
        let track = task
            .and_then(|t| p.tasks.get(&t))
            .and_then(|t| t.track)
            .unwrap_or(p.track);
        emit(
            self.sinks,
            p.key,
            &Ev::Instant {
                track,
                ts,
                name,
                cat,
                args,
                flows_out,
                flows_in,
            },
        )
    }

    /// A span (not a task) was created: its label and await point.
    fn span_created(&mut self, m: &Process, id: SpanId) {
        let Some(s) = m.spans.get(&id) else {
            return;
        };
        let p = &mut *self.p;
        let cs = m.callsites.get(&s.callsite);
        let (class, parent, fields) = (s.class, s.parent, &s.fields);
        // Where the user sees it: recorded loc.* first, never a callsite in
        // awaitscope's own files, registry paths short (as every trace).
        let own_loc = labels::span_site(cs, fields).map(|l| Arc::<str>::from(l.to_string()));
        // A resource internal to another (a Mutex's semaphore) and its ops
        // are folded into the operation the user called: no await point.
        let folded = m
            .resource_of(id)
            .and_then(|r| m.resources.get(&r))
            .is_some_and(|r| r.internal);
        // The span's own label (the model's), else a fallback per class.
        let own = s.label.as_deref().map(String::from);
        let (label, loc): (String, Option<Arc<str>>) = match class {
            SpanClass::Resource => (own.unwrap_or_else(|| "resource".into()), own_loc),
            SpanClass::AsyncOp | SpanClass::AsyncOpPoll => {
                let ploc = parent
                    .and_then(|pa| p.spans.get(&pa))
                    .and_then(|s| s.loc.clone());
                (
                    own.or_else(|| {
                        parent
                            .and_then(|pa| p.spans.get(&pa))
                            .map(|s| s.label.to_string())
                    })
                    .unwrap_or_else(|| "async_op".into()),
                    ploc.or(own_loc),
                )
            }
            _ => {
                let label = own.unwrap_or_else(|| {
                    cs.map_or_else(|| format!("span#{}", id.0), |c| c.name.clone())
                });
                (label, own_loc)
            }
        };
        // Awaits of JoinHandles are one await point, whatever the task.
        let generic = if label.starts_with("join task.id=") {
            "join"
        } else {
            label.as_str()
        };
        let point: Arc<str> = match &loc {
            Some(l) => format!("{generic} @ {l}").into(),
            None => generic.to_string().into(),
        };
        p.spans.insert(
            id,
            SpanW {
                class,
                ctx_task: s.ctx_task,
                created: s.created,
                label: label.into(),
                point,
                loc,
                folded,
            },
        );
    }

    /// A span (not a task) closes: remembered a while among the closed.
    fn span_closing(&mut self, id: SpanId) {
        let p = &mut *self.p;
        let Some(s) = p.spans.remove(&id) else {
            return;
        };
        if p.closed_order.len() >= CLOSED_MEMORY {
            if let Some(old) = p.closed_order.pop_front() {
                p.closed.remove(&old);
            }
        }
        p.closed.insert(id, s);
        p.closed_order.push_back(id);
    }

    /// Task `id` was spawned at `ts`: its track, root group, flame stack,
    /// and the spawn flow from its parent.
    fn task_spawned(&mut self, m: &Process, id: SpanId, ts: u64) -> io::Result<()> {
        let Some(mt) = m.tasks.get(&id) else {
            return Ok(());
        };
        let key = self.p.key;
        let name = mt.name.as_deref();
        let locs = mt
            .location
            .as_ref()
            .map_or_else(|| "?".to_string(), |l| l.to_string());
        let group: Arc<str> = match name {
            Some(n) => format!("{n}@{locs}").into(),
            None => locs.clone().into(),
        };
        let label = format!("{} #{}", name.unwrap_or("task"), id.0);
        let ctx_task = mt.parent;
        let parent_task = ctx_task.and_then(|c| self.p.tasks.get(&c));
        let root = parent_task.map_or_else(|| group.clone(), |t| t.root.clone());
        let parent_track = parent_task.and_then(|t| t.track).unwrap_or(self.p.track);
        let is_root = parent_task.is_none();
        let rg = self
            .sh
            .root_groups
            .entry(key)
            .or_default()
            .entry(root.clone())
            .or_insert_with(|| RootGroup {
                first_ns: ts,
                ..RootGroup::default()
            });
        rg.tasks += 1;
        rg.roots += u64::from(is_root);
        rg.first_ns = rg.first_ns.min(ts);
        rg.last_ns = rg.last_ns.max(ts);
        let named = self.sh.finding_tasks.contains(&(key, id.0));
        if named {
            self.sh
                .summary
                .finding_roots
                .insert((key, id.0), root.to_string());
        }
        let track = if self.p.win_closed {
            None
        } else {
            let tid = self.sh.track_id();
            let tr = Track {
                id: tid,
                parent: Some(parent_track),
                name: label.clone(),
                kind: TrackKind::Task { task: id.0 },
            };
            emit(self.sinks, key, &Ev::Track(&tr))?;
            if named {
                self.sh.finding_tracks.insert((key, id.0), tid);
            }
            Some(tid)
        };
        let mut flows_in = Vec::new();
        // Spawn flow: from the spawning task's poll to the child's first poll.
        let live_parent = ctx_task.filter(|c| self.p.tasks.contains_key(c));
        if let Some(parent) = live_parent {
            if track.is_some() && self.sh.in_window(ts) {
                let f = self.sh.flow_id();
                let mut args: Args = vec![("task", Arg::U(id.0))];
                if let Some(k) = &mt.kind {
                    args.push(("kind", Arg::S(k.clone())));
                }
                args.push(("spawned_at", Arg::S(locs.clone())));
                let n = format!("spawn {label}");
                self.instant(Some(parent), ts, &n, "spawn", &args, &[f], &[])?;
                flows_in.push(f);
            }
        }
        let sid = {
            let pname = clean_frame(&self.p.name);
            self.sh.intern(format!("{pname};{}", clean_frame(&group)))
        };
        self.p.tasks.insert(
            id,
            TaskW {
                track,
                label,
                group,
                root,
                real_end: None,
                last_poll_start: ts,
                flows_in,
                cur_flows: Vec::new(),
                pending_flows: Vec::new(),
                tree: Vec::new(),
                leaf_stacks: vec![sid],
                lanes: Vec::new(),
                open: Vec::new(),
            },
        );
        Ok(())
    }

    /// A poll of `id` from `s` to `e` was a real poll: its slice, with the
    /// flows ending at its start.
    pub(super) fn poll_done(&mut self, id: SpanId, s: u64, e: u64) -> io::Result<()> {
        let Some(t) = self.p.tasks.get_mut(&id) else {
            return Ok(());
        };
        t.real_end = Some(e);
        split(&mut self.sh.busy_w, &t.leaf_stacks, e.saturating_sub(s));
        let flows = std::mem::take(&mut t.pending_flows);
        let track = t.track;
        poll_slice(
            &self.sh.opts,
            self.sinks,
            self.p.key,
            track,
            (s, e),
            "poll",
            &flows,
        )
    }

    /// A poll of `id` started at `ts`: the wait since the last one is
    /// pending time; the flows waiting for it end at its start.
    fn poll_started(&mut self, m: &Process, id: SpanId, ts: u64) {
        let (Some(t), Some(mt)) = (self.p.tasks.get_mut(&id), m.tasks.get(&id)) else {
            return;
        };
        let since = mt.last_poll_end.unwrap_or(mt.created);
        split(
            &mut self.sh.pending_w,
            &t.leaf_stacks,
            ts.saturating_sub(since),
        );
        t.last_poll_start = ts;
        t.cur_flows = std::mem::take(&mut t.flows_in);
    }

    /// The poll of `id` ended: its flows wait for it to be committed.
    pub(super) fn poll_ended(&mut self, id: SpanId) {
        if let Some(t) = self.p.tasks.get_mut(&id) {
            t.pending_flows = std::mem::take(&mut t.cur_flows);
        }
    }

    /// Task `task` closes at `ts` (`kind`: how): its last poll pending was
    /// the drop of its future, its awaits end, its root group counts it.
    fn task_closing(&mut self, task: &Task, kind: CloseKind, ts: u64) -> io::Result<()> {
        let key = self.p.key;
        let Some(mut t) = self.p.tasks.remove(&task.id) else {
            return Ok(());
        };
        // The last enter/exit pair was the drop of the future.
        let drop = task.pending_poll;
        if drop.is_none() {
            let since = task.last_poll_end.unwrap_or(task.created);
            split(
                &mut self.sh.pending_w,
                &t.leaf_stacks,
                ts.saturating_sub(since),
            );
        }
        let end = t.real_end.unwrap_or(ts);
        let to = self.sh.opts.to_ns.unwrap_or(u64::MAX);
        end_awaits(&mut self.sh.summary, key, &mut t, end.min(to), self.sinks)?;
        if let Some(d) = drop {
            poll_slice(
                &self.sh.opts,
                self.sinks,
                key,
                t.track,
                (d.start, d.end),
                "drop",
                &[],
            )?;
        }
        let state = match kind {
            CloseKind::Cancelled => "cancelled",
            CloseKind::Panicked => "panicked",
            _ => "completed",
        };
        if let Some(rg) = self
            .sh
            .root_groups
            .get_mut(&key)
            .and_then(|g| g.get_mut(&*t.root))
        {
            match kind {
                CloseKind::Cancelled => rg.cancelled += 1,
                CloseKind::Panicked => rg.panicked += 1,
                _ => rg.completed += 1,
            }
            rg.last_ns = rg.last_ns.max(ts);
        }
        if kind != CloseKind::Completed && self.sh.in_window(ts) {
            if let Some(track) = t.track {
                let args: Args = vec![("task", Arg::S(t.label.clone()))];
                let name = format!("task {state}");
                emit(
                    self.sinks,
                    key,
                    &Ev::Instant {
                        track,
                        ts,
                        name: &name,
                        cat: "task",
                        args: &args,
                        flows_out: &[],
                        flows_in: &[],
                    },
                )?;
            }
        }
        Ok(())
    }

    /// `task` was woken at `ts` by `by`: a wake instant, and a flow from
    /// the waker's track to the woken task's next poll.
    fn woken(&mut self, task: SpanId, by: Option<SpanId>, ts: u64) -> io::Result<()> {
        let p = &*self.p;
        let Some(t) = p.tasks.get(&task) else {
            return Ok(());
        };
        if t.track.is_none() || !self.sh.in_window(ts) {
            return Ok(());
        }
        let label = t.label.clone();
        match by.filter(|b| *b != task && p.tasks.get(b).is_some_and(|w| w.track.is_some())) {
            Some(waker) => {
                let f = self.sh.flow_id();
                let args: Args = vec![("woken", Arg::S(label.clone()))];
                let name = format!("wake {label}");
                self.instant(Some(waker), ts, &name, "wake", &args, &[f], &[])?;
                if let Some(t) = self.p.tasks.get_mut(&task) {
                    if t.flows_in.len() < MAX_FLOWS_IN {
                        t.flows_in.push(f);
                    }
                }
                Ok(())
            }
            None => {
                let name = if by == Some(task) {
                    "self-wake"
                } else {
                    "woken"
                };
                self.instant(Some(task), ts, name, "wake", &Vec::new(), &[], &[])
            }
        }
    }

    /// `span` follows from `follows`: a hand-off flow between their tasks.
    fn follows(&mut self, m: &Process, span: SpanId, follows: SpanId) -> io::Result<()> {
        let p = &*self.p;
        let task_of = |s: SpanId| -> Option<SpanId> {
            if m.tasks.contains_key(&s) {
                return Some(s);
            }
            match p.spans.get(&s) {
                Some(sp) => sp.ctx_task,
                None => p.closed.get(&s).and_then(|c| c.ctx_task),
            }
        };
        let (Some(to), Some(from)) = (task_of(span), task_of(follows)) else {
            return Ok(());
        };
        if to == from {
            return Ok(());
        }
        let (Some(tt), Some(ft)) = (p.tasks.get(&to), p.tasks.get(&from)) else {
            return Ok(());
        };
        if tt.track.is_none() || ft.track.is_none() {
            return Ok(());
        }
        let now = m.now;
        let src_ts = ft
            .last_poll_start
            .max(p.spans.get(&follows).map_or(0, |s| s.created))
            .min(now);
        if !self.sh.in_window(src_ts) || !self.sh.in_window(now) {
            return Ok(());
        }
        let (tl, fl) = (tt.label.clone(), ft.label.clone());
        let f = self.sh.flow_id();
        let args: Args = vec![("to", Arg::S(tl))];
        self.instant(Some(from), src_ts, "hand-off", "handoff", &args, &[f], &[])?;
        let args: Args = vec![("from", Arg::S(fl))];
        self.instant(
            Some(to),
            now,
            "hand-off received",
            "handoff",
            &args,
            &[],
            &[f],
        )
    }

    /// A WARN or ERROR event: an instant on the task it names.
    fn logged(
        &mut self,
        m: &Process,
        log: &Log,
        level: Level,
        message: &str,
        location: Option<&Location>,
    ) -> io::Result<()> {
        let lvl = if level == Level::Error {
            "error"
        } else {
            "warn"
        };
        let mut args: Args = vec![("level", Arg::S(lvl.into()))];
        if let Some(l) = location {
            args.push(("location", Arg::S(l.to_string())));
        }
        if let Some(cs) = m.callsites.get(&log.callsite) {
            for f in &log.fields {
                if let Some(n) = cs.fields.get(f.index as usize) {
                    if n != names::MESSAGE {
                        args.push(("field", Arg::S(format!("{n}={}", value(f)))));
                    }
                }
            }
        }
        let name = format!("{lvl}: {message}");
        self.instant(log.task, log.ts, &name, "log", &args, &[], &[])
    }
}

/// A poll slice (`name`: `poll` or `drop`) from `s` to `e` on `track`,
/// clipped to the window.
pub(super) fn poll_slice(
    opts: &WalkOptions,
    sinks: Sinks<'_, '_>,
    key: ProcessKey,
    track: Option<u64>,
    (s, e): (u64, u64),
    name: &str,
    flows: &[u64],
) -> io::Result<()> {
    let Some(track) = track else { return Ok(()) };
    let from = opts.from_ns.unwrap_or(0);
    let to = opts.to_ns.unwrap_or(u64::MAX);
    if e < from || s > to {
        return Ok(());
    }
    let (cs, ce) = (s.max(from), e.min(to));
    let args: Args = vec![("duration_ns", Arg::U(e - s))];
    emit(
        sinks,
        key,
        &Ev::Complete {
            track,
            start: cs,
            end: ce,
            name,
            cat: name_cat(name),
            args: &args,
            flows_in: if cs == s { flows } else { &[] },
        },
    )
}

fn name_cat(name: &str) -> &'static str {
    if name == "drop" {
        "drop"
    } else {
        "poll"
    }
}
fn value(f: &Field) -> String {
    span::value_string(&f.value)
}
