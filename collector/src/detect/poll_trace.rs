//! Where a poll was, in the user's code: the trace, location and wording
//! shared by the poll-time findings (`long_poll`, `descheduled`,
//! `never_yielded`, and the await path of `self_wake` and `starvation`).
//!
//! A trace is innermost first, like a backtrace: the native stack of the
//! worker when the poll crossed the stall threshold (runs of runtime frames
//! folded into one line: [`super::native_frames`]), then the async stack at that moment (one line per
//! span), then the task. Without a stall from the producer, the async stack
//! is the poll's await tree (with the spans that closed during the poll),
//! and a line says why no native stack is shown.

use awaitscope_wire::paths::PathOrigin;
use awaitscope_wire::{FrameOrigin, NativeFrame, Sched, SpanId, StackState};

use crate::model::await_tree::AwaitTree;
use crate::model::file_memo::{file_origin, shown_file};
use crate::model::labels::{is_resource_class, push_task_label};
use crate::model::span::Location;
use crate::model::stall::{PollStall, StallSpan};
use crate::model::{shown, Process, Task};
use crate::units::push_ns_brief;

use super::native_frames::{
    anonymous_name, fn_of_body, frame_location, is_anonymous, line, push_file_line, short_fn,
};
// Where they were first: the collector's users name them here.
pub use super::native_frames::{fold_frames, has_native_stack, NO_STACK};

/// What a poll-time finding says of where the poll was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollTrace {
    /// The trace, innermost first.
    pub trace: Vec<String>,
    /// The line that blocked: the innermost user frame with a line, else
    /// the innermost span of the program's own (an instrumented fn; else
    /// the innermost span in the program's files, else the innermost
    /// span), else the task's spawn site.
    pub location: Option<Location>,
    /// The innermost user function (or span) and where it is, for the
    /// message: `hash_password (src/auth.rs:12)`.
    pub culprit: Option<String>,
}

/// `t`'s stall of the poll that started at `start`, if the producer sent
/// the crossing's half of it.
pub fn crossed_stall(t: &Task, start: u64) -> Option<&PollStall> {
    t.stall(start).filter(|s| s.crossed)
}

/// `t`'s stall of the poll that started at `start`, either half.
pub fn stall_of(t: &Task, start: u64) -> Option<&PollStall> {
    t.stall(start)
}

/// The trace of `t`'s poll that started at `start` and ended (or was seen
/// running) at `end` (see the module doc). Its await tree stands for the
/// async stack when no stall crossed: the path to the span where the poll
/// spent its time, as far as the tree tells (see [`busiest_leaf`]).
pub fn of_poll(p: &Process, t: &Task, start: u64, end: u64) -> PollTrace {
    describe(p, t, start, end, true)
}

/// The culprit of [`of_poll`] alone, without making its trace: what a line
/// about another task's poll names (`held the thread ..., in culprit`).
pub fn culprit_of_poll(p: &Process, t: &Task, start: u64, end: u64) -> Option<String> {
    if crossed_stall(t, start).is_none() {
        // As `describe` finds it without a stall (`named_span`), from the
        // parts of plain spans when every span on the path is one.
        let leaf = busiest_leaf(p, t, start, end);
        if let Some(culprit) = plain_culprit(p, &t.await_tree, leaf) {
            return culprit;
        }
    }
    describe(p, t, start, end, false).culprit
}

/// Whether the path from `leaf` up holds a resource or an async op
/// (whose frames [`await_stack`] folds into the call the user made).
fn resource_on_path(tree: &AwaitTree, leaf: usize) -> bool {
    up_from(tree, leaf).any(|n| is_resource_class(tree.nodes[n].class))
}

/// The culprit [`named_span`] names (as [`describe`] writes it), from the
/// parts of the path's frames ([`Process::plain_frame`]) rather than
/// frames made; `None` when a node of the path is not a plain span.
fn plain_culprit(p: &Process, tree: &AwaitTree, leaf: Option<usize>) -> Option<Option<String>> {
    use crate::model::labels::PlainFrame;
    let Some(leaf) = leaf else {
        return Some(None);
    };
    // A resource or an async op on the path: `describe` makes the path.
    if resource_on_path(tree, leaf) {
        return None;
    }
    let (mut local, mut first): (Option<PlainFrame<'_>>, Option<PlainFrame<'_>>) = (None, None);
    for n in up_from(tree, leaf) {
        let f = p.plain_frame(&tree.nodes[n])?;
        let is_local =
            f.at.as_ref()
                .is_some_and(|(file, _)| file_origin(file) == PathOrigin::Local);
        // As `named_span` judges a frame the program's own.
        if is_local && !f.label.starts_with("tokio::") {
            return Some(Some(plain_named(&f)));
        }
        if is_local {
            local.get_or_insert(f);
        } else {
            first.get_or_insert(f);
        }
    }
    Some(local.or(first).map(|f| plain_named(&f)))
}

/// A culprit as [`describe`] writes it: `label (file:line)`, or the label.
fn plain_named(f: &crate::model::labels::PlainFrame<'_>) -> String {
    match &f.at {
        Some((file, line)) => {
            let mut s = String::with_capacity(f.label.len() + file.len() + 14);
            s.push_str(f.label);
            s.push_str(" (");
            push_file_line(&mut s, file, *line);
            s.push(')');
            s
        }
        None => f.label.to_string(),
    }
}

/// [`of_poll`]; its trace left empty unless `trace`.
fn describe(p: &Process, t: &Task, start: u64, end: u64, trace: bool) -> PollTrace {
    let mut out = PollTrace::default();
    let stall = crossed_stall(t, start);
    let stack = stall.and_then(|s| s.stack);
    // The native stack, or why there is none.
    // A stack whose program frames could not be symbolised (the binary
    // missing or rebuilt since) is no stack to show: say why.
    let symbolised = |s: &PollStall| {
        s.unresolved.is_none() || s.frames.iter().any(|f| f.origin == FrameOrigin::User)
    };
    match stall {
        Some(s) if stack == Some(StackState::Sampled) && !s.frames.is_empty() && !symbolised(s) => {
            if trace {
                out.trace.push(format!(
                    "{NO_STACK}not symbolised: {}",
                    s.unresolved.as_deref().unwrap_or_default()
                ));
            }
        }
        Some(s) if stack == Some(StackState::Sampled) && !s.frames.is_empty() => {
            if trace {
                out.trace.extend(fold_frames(&s.frames));
                if let Some(why) = &s.unresolved {
                    out.trace
                        .push(format!("(some frames not symbolised: {why})"));
                }
            }
            let user = |f: &&NativeFrame| f.origin == FrameOrigin::User;
            if let Some((i, f)) = s
                .frames
                .iter()
                .enumerate()
                .find(|(_, f)| user(f) && f.file.is_some() && f.line.is_some())
            {
                if let Some(l) = frame_location(f) {
                    // An anonymous frame (an inlined async block or closure,
                    // `{async_block#0}`) is told by the function it is in:
                    // the next named frame of the program's, else its span.
                    let named = if is_anonymous(&f.function) {
                        anonymous_name(f, &s.frames[..i], &s.frames[i + 1..])
                    } else {
                        short_fn(&f.function)
                    };
                    // An `#[instrument]`ed fn's inlined body is named after
                    // the fn, as the trace names it (see `fold_frames`).
                    let named = fn_of_body(&s.frames, i, named);
                    let name = if !is_anonymous(&named) {
                        Some(named)
                    } else if is_anonymous(&f.function) {
                        s.frames
                            .iter()
                            .filter(user)
                            .map(|f| short_fn(&f.function))
                            .find(|n| !is_anonymous(n))
                            .or_else(|| {
                                s.spans.iter().find(|sp| sp.user).map(|sp| sp.label.clone())
                            })
                    } else {
                        Some(short_fn(&f.function))
                    };
                    out.culprit = Some(match name {
                        Some(n) => named_at(&n, &l),
                        None => file_line(&l),
                    });
                    out.location = Some(l);
                }
            }
        }
        _ if !trace => {}
        // A program read from console-subscriber: its data has none.
        _ if p.is_console() => out.trace.push(format!(
            "{NO_STACK}not known from console-subscriber's data"
        )),
        _ => out
            .trace
            .push(format!("{NO_STACK}{}", no_stack_reason(stack))),
    }
    if !trace && out.location.is_some() {
        // The culprit is a native frame: the async stack has nothing to add.
        return out;
    }
    if !trace && stall.is_none() {
        // The culprit alone, of spans only: found without making the path.
        if let Some(named) = named_span(p, &t.await_tree, busiest_leaf(p, t, start, end)) {
            if let Some(f) = named {
                out.culprit = Some(match &f.location {
                    Some(l) => named_at(&f.label, l),
                    None => f.label.clone(),
                });
                out.location = f.location;
            }
            return out;
        }
    }
    // The async stack.
    let spans: Vec<StallSpan> = match stall {
        Some(s) => s.spans.clone(),
        None => await_stack(p, t, busiest_leaf(p, t, start, end)),
    };
    // Spans the native stack already named (an instrumented async fn is a
    // frame there too) are not told twice: the names of its lines, as
    // `fold_frames` wrote them (an optimised build's inlined body of an
    // async fn named after the fn).
    let told: Vec<String> = match stall {
        Some(_) if trace && stack == Some(StackState::Sampled) => out
            .trace
            .iter()
            .map(|l| {
                l.split_once(" @ ")
                    .map_or(l.as_str(), |(name, _)| name)
                    .to_owned()
            })
            .collect(),
        _ => Vec::new(),
    };
    for s in spans.iter().filter(|s| trace && !told.contains(&s.label)) {
        let l = line(&s.label, s.location.as_ref());
        // Told already by a native frame named after it.
        if !out.trace.contains(&l) {
            out.trace.push(l);
        }
    }
    // Without a user frame: the innermost span of the program's own, else
    // the innermost in its files, else the innermost.
    let local = |s: &&StallSpan| {
        s.location
            .as_ref()
            .is_some_and(|l| file_origin(&l.file) == PathOrigin::Local)
    };
    let named = spans
        .iter()
        .find(|s| s.user)
        .or_else(|| spans.iter().find(local))
        .or_else(|| spans.first());
    if let (Some(s), None) = (named, &out.location) {
        out.location = s.location.clone();
        out.culprit = Some(match &s.location {
            Some(l) => named_at(&s.label, l),
            None => s.label.clone(),
        });
    }
    if !trace {
        return out;
    }
    out.trace.push(task_line(t));
    if out.location.is_none() {
        out.location = t.location.clone().map(shown);
    }
    out
}

/// The frame of the await path down to `leaf` that [`describe`] names when
/// the poll had no stall (the first of the program's own, innermost first,
/// else the first in its files, else the innermost), when no node on the
/// path is a resource or an async op: each frame is then a node's span as
/// it is (its label and location, see [`Process::await_frames`]), and the
/// spans are judged innermost first, up to the first of the program's own,
/// without making the whole path. `Some(None)`: no leaf. `None` when a
/// node is a resource or an async op (their frames are folded by
/// [`await_stack`]).
fn named_span(
    p: &Process,
    tree: &AwaitTree,
    leaf: Option<usize>,
) -> Option<Option<crate::model::labels::Frame>> {
    let Some(leaf) = leaf else {
        return Some(None);
    };
    if resource_on_path(tree, leaf) {
        return None;
    }
    let (mut local, mut first) = (None, None);
    for n in up_from(tree, leaf) {
        let node = &tree.nodes[n];
        let location = p.span_location(node.span, node.callsite);
        let label = p.node_label(node);
        let is_local = location
            .as_ref()
            .is_some_and(|l| file_origin(&l.file) == PathOrigin::Local);
        let frame = crate::model::labels::Frame { label, location };
        // As `await_stack` judges a frame the program's own.
        if is_local && !frame.label.starts_with("tokio::") {
            return Some(Some(frame));
        }
        if is_local {
            local.get_or_insert(frame);
        } else {
            first.get_or_insert(frame);
        }
    }
    Some(local.or(first))
}

/// The nodes of [`AwaitTree::path`] down to `leaf`, innermost first (as
/// many at most as it gives).
fn up_from(tree: &AwaitTree, leaf: usize) -> impl Iterator<Item = usize> + '_ {
    let mut next = Some(leaf);
    let mut left = tree.nodes.len() + 1;
    std::iter::from_fn(move || {
        let cur = next?;
        left -= 1;
        next = tree.nodes[cur].parent.map(usize::from).filter(|_| left > 0);
        Some(cur)
    })
}

/// Who held thread `thread` between `from` and `to` (ns), other than
/// `task`: its polls of a millisecond or more overlapping that window, as
/// trace lines, longest first (at most four), each naming where the hog
/// was when its own poll was sampled: `held the thread 70.0ms: task
/// cpu-hog#7 @ src/main.rs:9:5, in burn_cpu (src/main.rs:88)`.
pub fn held_the_thread(p: &Process, thread: u32, from: u64, to: u64, task: SpanId) -> Vec<String> {
    let hogs = p.held_the_thread(&[Some(thread)], from, to, task, 4);
    let mut out = Vec::with_capacity(hogs.len());
    for h in hogs {
        let Some(t) = p.task(h.task) else {
            continue;
        };
        let culprit = culprit_of_poll(p, t, h.poll.0, h.poll.1);
        // Written in one go, sized once (room for the time and the task's
        // id): a starved runtime names the polls that held its threads in
        // nearly every description.
        let name = t.name.as_deref().map_or(0, str::len);
        let file = t.location.as_ref().map_or(0, |l| l.file.len());
        let len = 80 + name + file + culprit.as_ref().map_or(0, |c| 5 + c.len());
        let mut line = String::with_capacity(len);
        line.push_str("held the thread ");
        push_ns_brief(&mut line, h.held_ns);
        line.push_str(": ");
        push_task_label(&mut line, t);
        if let Some(c) = culprit {
            line.push_str(", in ");
            line.push_str(&c);
        }
        out.push(line);
    }
    out
}

/// The innermost frame of the program's own with a line in a symbolised
/// stack (innermost first): its index, where it is, and its function
/// named as the folded trace names it ([`fold_frames`]); `None` when no
/// frame of the program's has a line.
pub fn user_frame(frames: &[NativeFrame]) -> Option<(usize, Location, String)> {
    let (i, f) = frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.origin == FrameOrigin::User && f.file.is_some() && f.line.is_some())?;
    let l = frame_location(f)?;
    let named = if is_anonymous(&f.function) {
        anonymous_name(f, &frames[..i], &frames[i + 1..])
    } else {
        short_fn(&f.function)
    };
    Some((i, l, fn_of_body(frames, i, named)))
}

/// The line of the poll that held `thread` longest between `from` and
/// `to` (ns), of a task other than `task`: where that poll was
/// ([`PollTrace::location`]) when it names a function or span of the
/// program's own, `None` when no poll held the thread or the one that did
/// names only its task's spawn site. Where a finding about a task kept
/// from its thread points when the task's own wait names no line.
pub fn holder_line(p: &Process, thread: u32, from: u64, to: u64, task: SpanId) -> Option<Location> {
    let hog = p
        .held_the_thread(&[Some(thread)], from, to, task, 1)
        .into_iter()
        .next()?;
    let t = p.task(hog.task)?;
    let pt = of_poll(p, t, hog.poll.0, hog.poll.1);
    pt.culprit.as_ref()?;
    pt.location
}

/// The await path of `t`'s last poll down to where it waits
/// ([`Process::await_point`]: not a span that closed in the poll, nor a
/// lock it only released), innermost first, then the task: the trace of
/// findings about a task between polls (`self_wake`, `starvation`).
pub fn of_task(p: &Process, t: &Task) -> Vec<String> {
    if let Some(out) = plain_of_task(p, t) {
        return out;
    }
    of_task_made(p, t)
}

/// [`of_task`] from the parts of the path's frames
/// ([`Process::plain_frame`]) rather than frames made; `None` when a node
/// of the path is not a plain span (or the path is too long to hold).
fn plain_of_task(p: &Process, t: &Task) -> Option<Vec<String>> {
    use crate::model::labels::PlainFrame;
    let tree = &t.await_tree;
    let Some(leaf) = p.await_point(tree) else {
        return Some(vec![task_line(t)]);
    };
    let mut buf = [0usize; 32];
    let path = tree.path_in(leaf, &mut buf)?;
    // Outermost first, a frame equal to the one before it left out, as
    // `Process::await_frames` makes them.
    let mut frames: Vec<PlainFrame<'_>> = Vec::with_capacity(path.len());
    for &n in path {
        let f = p.plain_frame(&tree.nodes[n])?;
        if frames.last() != Some(&f) {
            frames.push(f);
        }
    }
    let mut out = Vec::with_capacity(frames.len() + 1);
    out.extend(frames.iter().rev().map(|f| match &f.at {
        Some((file, line)) => {
            let mut s = String::with_capacity(f.label.len() + file.len() + 16);
            s.push_str(f.label);
            s.push_str(" @ ");
            push_file_line(&mut s, file, *line);
            s
        }
        None => f.label.to_string(),
    }));
    out.push(task_line(t));
    Some(out)
}

/// [`of_task`] from the frames [`Process::await_frames`] makes.
fn of_task_made(p: &Process, t: &Task) -> Vec<String> {
    // The frames as `await_stack` gives them, without judging whose code
    // each is (a trace line does not say).
    let frames = match p.await_point(&t.await_tree) {
        Some(leaf) => p.await_frames(&t.await_tree, leaf),
        None => Vec::new(),
    };
    // With room for the task's line (and no second allocation for it).
    let mut out = Vec::with_capacity(frames.len() + 1);
    out.extend(frames.iter().map(|f| line(&f.label, f.location.as_ref())));
    out.push(task_line(t));
    out
}

/// The leaf of `t`'s await tree (of its poll from `start` to `end`) where
/// the poll spent its time, as far as the tree tells: a leaf span opened and
/// closed within the poll (an instrumented fn that blocked, then returned)
/// that lasted more than half of it, the longest such; else the deepest
/// node still open at the poll's end (what the poll ended in), else the
/// deepest leaf.
///
/// A span that opened and closed briefly inside the poll is not where it
/// ended: a server's per-request span, closed before the handler went back
/// to wait for the next request, would otherwise be named for a poll that
/// blocked after it.
pub fn busiest_leaf(p: &Process, t: &Task, start: u64, end: u64) -> Option<usize> {
    let tree = &t.await_tree;
    let poll = end.saturating_sub(start);
    let closed_by_end = |i: usize| {
        p.closed_spans
            .get(tree.nodes[i].span)
            .is_some_and(|c| c.closed <= end)
    };
    tree.leaves()
        .filter_map(|i| {
            let c = p.closed_spans.get(tree.nodes[i].span)?;
            let inside = c.closed.min(end).saturating_sub(c.created.max(start));
            (inside.saturating_mul(2) > poll).then_some((inside, i))
        })
        .max()
        .map(|(_, i)| i)
        .or_else(|| {
            (0..tree.nodes.len())
                .filter(|&i| !closed_by_end(i))
                .max_by_key(|&i| tree.depth(i))
                .or_else(|| tree.deepest_leaf())
        })
}

/// The path of `t`'s await tree down to `leaf`, innermost first (closed
/// spans included: the tree keeps them), as every await path is told
/// ([`Process::await_frames`]: tokio's internals folded into the call the
/// user made, at the user's line). A frame is the program's own when it is
/// in its files and not a tokio operation.
pub fn await_stack(p: &Process, t: &Task, leaf: Option<usize>) -> Vec<StallSpan> {
    let Some(leaf) = leaf else {
        return Vec::new();
    };
    p.await_frames(&t.await_tree, leaf)
        .into_iter()
        .map(|f| StallSpan {
            user: !f.label.starts_with("tokio::")
                && f.location
                    .as_ref()
                    .is_some_and(|l| file_origin(&l.file) == PathOrigin::Local),
            label: f.label,
            location: f.location,
        })
        .collect()
}

/// `file:line` of `l`.
fn file_line(l: &Location) -> String {
    let mut s = String::with_capacity(l.file.len() + 11);
    push_file_line(&mut s, &l.file, l.line);
    s
}

/// `name (file:line)`: a culprit and where it is, written in one go (the
/// culprit of every poll that held a starved task's thread is named).
fn named_at(name: &str, l: &Location) -> String {
    let mut s = String::with_capacity(name.len() + l.file.len() + 14);
    s.push_str(name);
    s.push_str(" (");
    push_file_line(&mut s, &l.file, l.line);
    s.push(')');
    s
}

/// `task #7 "name" spawned @ file:line`.
pub fn task_line(t: &Task) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(64);
    s.push_str("task #");
    crate::units::push_decimal(&mut s, t.id.0);
    if let Some(n) = &t.name {
        let _ = write!(s, " {n:?}");
    }
    if let Some(l) = &t.location {
        // As `shown`, without copying the location.
        s.push_str(" spawned @ ");
        let shown = shown_file(&l.file);
        push_file_line(&mut s, shown.as_deref().unwrap_or(&l.file), l.line);
    }
    s
}

/// Why a trace has no native stack.
fn no_stack_reason(stack: Option<StackState>) -> &'static str {
    match stack {
        Some(StackState::Off) => "sampling is off (AWAITSCOPE_STACKS=off)",
        Some(StackState::Unsupported) => "sampling is not supported on this platform",
        Some(StackState::Missed) => "the worker did not answer the sampling signal in time",
        Some(StackState::Sampled) => "the sampled stack did not reach the collector",
        None => "no stall was reported for this poll (it ended before the watchdog saw it, or the producer is older)",
    }
}

/// Whether a poll of `d` ns, judged against a threshold of `threshold_ns`,
/// was long because its worker waited for a CPU: the statistics cover at
/// least half of the poll, say it mostly waited (more than half of the
/// window they cover), and without
/// that share of waiting the poll would have stayed under the threshold;
/// or they count more wait than their window, and that wait is most of the
/// poll and all but the threshold of it.
/// The machine was busy, not the code. A CPU loop on a loaded machine waits
/// too, but its own share alone is still over the threshold: that one is a
/// long poll.
pub fn is_descheduled(s: &Sched, d: u64, threshold_ns: u64) -> bool {
    // More wait than window: the wait for a CPU is counted when the thread
    // gets one back, so statistics whose first reading came late (the
    // watchdog waiting for a CPU too) count the whole wait that was under
    // way then, which began within the poll (its thread was running it).
    // That wait alone tells how much of the poll was spent waiting.
    if s.waiting_ns > s.window_ns {
        let waited = s.waiting_ns.min(d);
        return waited.saturating_mul(2) > d && d - waited <= threshold_ns;
    }
    // Statistics over a small part of the poll (read from its first
    // millisecond to the crossing, of a poll that then ran for seconds)
    // tell nothing of the rest: judged only when they cover half of it.
    if s.window_ns == 0
        || s.window_ns.saturating_mul(2) < d
        || s.waiting_ns.saturating_mul(2) <= s.window_ns
    {
        return false;
    }
    mostly_waiting(s, d, threshold_ns)
}

/// Whether the statistics `s` of a poll of `d` ns cover less than half of
/// it (the watchdog's first reading came late, or the statistics up to the
/// poll's end never came), and not more wait than their window.
pub fn covers_little(s: &Sched, d: u64) -> bool {
    s.waiting_ns <= s.window_ns && s.window_ns.saturating_mul(2) < d
}

/// Whether statistics `s` that cover too little of a poll of `d` ns to
/// judge all of it by ([`covers_little`]; a window of 1 ms or more) say, as
/// far as they go, that it was long because its worker waited for a CPU:
/// the part they cover mostly waited, and at that share of waiting, the
/// poll's own time would have stayed under the threshold. The rest of the
/// poll is not known: judged by the part that is (a finding says so), not
/// by its duration alone, which on a busy machine was mostly the wait.
pub fn is_descheduled_as_far_as_covered(s: &Sched, d: u64, threshold_ns: u64) -> bool {
    covers_little(s, d)
        && s.window_ns >= MIN_COVERED_NS
        && s.waiting_ns.saturating_mul(2) > s.window_ns
        && mostly_waiting(s, d, threshold_ns)
}

/// Shortest window of statistics that judges a poll by the part it covers:
/// a millisecond (a shorter one is a single reading's noise).
const MIN_COVERED_NS: u64 = 1_000_000;

/// Whether a poll of `d` ns, waiting for a CPU the share of the time `s`
/// says, would have run no longer than `threshold_ns` without that wait.
fn mostly_waiting(s: &Sched, d: u64, threshold_ns: u64) -> bool {
    if s.window_ns == 0 {
        return false;
    }
    let waiting = s.waiting_ns.min(s.window_ns) as f64 / s.window_ns as f64;
    d as f64 * (1.0 - waiting) <= threshold_ns as f64
}

/// How the worker's time split: `on CPU 1% (kernel 0%), waiting for a CPU
/// 0%, blocked/sleeping 99%`.
pub fn sched_split(s: &Sched) -> String {
    let pct = |ns: u64| {
        if s.window_ns == 0 {
            0
        } else {
            ((ns.min(s.window_ns) as f64 * 100.0 / s.window_ns as f64).round()) as u64
        }
    };
    format!(
        "on CPU {}% (kernel {}%), waiting for a CPU {}%, blocked/sleeping {}%",
        pct(s.on_cpu_ns),
        pct(s.kernel_ns),
        pct(s.waiting_ns),
        pct(s.off_cpu_ns())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use awaitscope_wire::SpanClass;

    #[test]
    fn sched_split_and_descheduled() {
        let busy = Sched {
            window_ns: 100,
            on_cpu_ns: 20,
            kernel_ns: 5,
            waiting_ns: 70,
        };
        // 70 of 100 ms waiting: 30 ms of its own, over a 10 ms threshold.
        assert!(!is_descheduled(&busy, 100, 10));
        // 15 ms of which 70 % waiting: 4.5 ms of its own.
        assert!(is_descheduled(&busy, 15, 10));
        let busy_15 = Sched {
            window_ns: 12,
            on_cpu_ns: 3,
            kernel_ns: 0,
            waiting_ns: 9,
        };
        assert!(is_descheduled(&busy_15, 15, 10));
        // The same share over a window too small for a 2.5 s poll.
        assert!(!is_descheduled(&busy_15, 2_500, 10));
        assert_eq!(
            sched_split(&busy),
            "on CPU 20% (kernel 5%), waiting for a CPU 70%, blocked/sleeping 10%"
        );
        let blocked = Sched {
            window_ns: 100,
            on_cpu_ns: 1,
            kernel_ns: 0,
            waiting_ns: 0,
        };
        assert!(!is_descheduled(&blocked, 15, 10));
        assert!(!is_descheduled(&Sched::default(), 15, 10));
        // A real one: the watchdog's first reading came 8 ms into a 12.3 ms
        // poll (the machine was busy), so the window is 4.2 ms but the wait
        // counted 12.0 ms, all in the poll: 0.3 ms of its own.
        let late = Sched {
            window_ns: 4_216_284,
            on_cpu_ns: 236_232,
            kernel_ns: 0,
            waiting_ns: 12_023_914,
        };
        assert!(is_descheduled(&late, 12_305_441, 10_000_000));
        // The same wait in a poll of 2.5 s: a long poll.
        assert!(!is_descheduled(&late, 2_500_000_000, 10_000_000));
        // Or in one of 30 ms: 18 ms of its own.
        assert!(!is_descheduled(&late, 30_000_000, 10_000_000));
        // More wait than window is judged by `is_descheduled` alone.
        assert!(!is_descheduled_as_far_as_covered(
            &late, 12_305_441, 10_000_000
        ));
    }

    #[test]
    fn a_poll_is_judged_by_the_part_its_statistics_cover() {
        const MS: u64 = 1_000_000;
        // 4.5 ms of a 25 ms poll, 82 % of it waiting: 4.5 ms of its own.
        let late = Sched {
            window_ns: 4_500_000,
            on_cpu_ns: 800_000,
            kernel_ns: 0,
            waiting_ns: 3_700_000,
        };
        assert!(covers_little(&late, 25 * MS));
        assert!(!is_descheduled(&late, 25 * MS, 10 * MS));
        assert!(is_descheduled_as_far_as_covered(&late, 25 * MS, 10 * MS));
        // At that share, 100 ms of a 120 ms poll would be its own.
        assert!(!is_descheduled_as_far_as_covered(&late, 120 * MS, 10 * MS));
        // Covering half of it: judged whole, not as a part.
        assert!(!covers_little(&late, 9 * MS));
        assert!(!is_descheduled_as_far_as_covered(&late, 9 * MS, 5 * MS));
        // A covered part mostly blocked, or one under a millisecond.
        let blocked = Sched {
            waiting_ns: 1_000_000,
            ..late
        };
        assert!(!is_descheduled_as_far_as_covered(
            &blocked,
            25 * MS,
            10 * MS
        ));
        let tiny = Sched {
            window_ns: 900_000,
            on_cpu_ns: 100_000,
            kernel_ns: 0,
            waiting_ns: 800_000,
        };
        assert!(!is_descheduled_as_far_as_covered(&tiny, 15 * MS, 10 * MS));
    }

    /// The culprit of another task's poll, found from its spans alone when
    /// no resource is on the path, is the one the whole await path names:
    /// the innermost span of the program's own (a span named like tokio's
    /// is not, even in the program's files), else the innermost in its
    /// files; with a lock on the path, the path is made and folded.
    #[test]
    fn a_polls_culprit_is_the_one_its_await_path_names() {
        use crate::config::MS;
        use crate::testing::{Scenario, TaskOpts};

        // Spans entered in the poll (a lock taken and released inside the
        // innermost, with `lock`), and the culprit expected.
        let cases: [(&[&str], bool, &str); 4] = [
            (
                &["serve", "tokio::fake_op"],
                false,
                "serve (src/main.rs:100)",
            ),
            (
                &["tokio::fake_op"],
                false,
                "tokio::fake_op (src/main.rs:100)",
            ),
            (&["serve", "handle"], false, "handle (src/main.rs:101)"),
            (&["serve"], true, "serve (src/main.rs:100)"),
        ];
        for (spans, lock, want) in cases {
            let mut s = Scenario::new();
            let t = s.spawn(TaskOpts::named("hog"), 0);
            let ids: Vec<_> = spans.iter().map(|n| s.user_span(n, 0)).collect();
            let m = lock.then(|| s.mutex(0));
            let (start, end) = (20 * MS, 50 * MS);
            s.begin_poll(t, start);
            for (k, &id) in ids.iter().enumerate() {
                s.enter(id, start + 100 + k as u64);
            }
            if let Some(m) = m {
                s.lock_and_release(t, m, start + 200);
            }
            for (k, &id) in ids.iter().enumerate().rev() {
                s.exit(id, end - 100 + k as u64);
            }
            s.end_poll(t, end);
            let model = s.model();
            let p = model.processes().next().expect("process");
            let task = &p.tasks[&t];
            // As `describe` names it from the whole path.
            let path = await_stack(p, task, busiest_leaf(p, task, start, end));
            let local = |s: &&StallSpan| {
                s.location
                    .as_ref()
                    .is_some_and(|l| awaitscope_wire::paths::origin(&l.file) == PathOrigin::Local)
            };
            let named = path
                .iter()
                .find(|s| s.user)
                .or_else(|| path.iter().find(local))
                .or_else(|| path.first());
            let whole = named.map(|s| match &s.location {
                Some(l) => format!("{} ({})", s.label, file_line(l)),
                None => s.label.clone(),
            });
            assert_eq!(culprit_of_poll(p, task, start, end), whole, "{spans:?}");
            assert_eq!(whole.as_deref(), Some(want), "{spans:?}");
        }
    }

    /// A trace or a culprit told from plain spans' parts is the one made
    /// from the frames, whatever the spans on the path are: plain, of one
    /// of awaitscope's own callsites, with `loc.*` fields, in a
    /// dependency's file, without a file, closed, repeated, named like
    /// tokio's, with a lock taken and released inside, or waiting on one.
    #[test]
    fn plain_frames_tell_what_made_frames_do() {
        use crate::config::MS;
        use crate::testing::{Scenario, TaskOpts};
        use awaitscope_wire::{
            names, Callsite, CallsiteKind, CloseKind, Event, Field, Level, Value,
        };

        // (case, whether the trace is told from plain parts)
        let cases = [
            ("plain", true),
            ("own callsite", false),
            ("loc fields", false),
            ("dependency file", true),
            ("no file", true),
            ("closed", true),
            ("repeated", true),
            ("tokio name", true),
            ("lock", true),
            ("waiting on a lock", false),
        ];
        for (case, plain) in cases {
            let mut s = Scenario::new();
            let t = s.spawn(TaskOpts::named("t"), 0);
            let outer = s.user_span(
                if case == "tokio name" {
                    "tokio::op"
                } else {
                    "outer"
                },
                0,
            );
            let mid = s.user_span("mid", 0);
            let inner = s.user_span(if case == "repeated" { "mid" } else { "inner" }, 0);
            let m = case.contains("lock").then(|| s.mutex(0));
            let cs = |s: &mut Scenario, span| {
                let model = s.model();
                let p = model.processes().next().expect("process");
                p.callsites[&p.spans[&span].callsite].clone()
            };
            // The callsite of `mid` or `inner`, changed.
            let changed = match case {
                "own callsite" => Some(Callsite {
                    target: names::TASK_TARGET.into(),
                    ..cs(&mut s, mid)
                }),
                "loc fields" => Some(Callsite {
                    fields: vec![names::LOC_FILE.into(), names::LOC_LINE.into()],
                    ..cs(&mut s, mid)
                }),
                "dependency file" => Some(Callsite {
                    file: Some("/root/.cargo/registry/src/idx/tokio-1.47.1/src/lib.rs".into()),
                    ..cs(&mut s, inner)
                }),
                "no file" => Some(Callsite {
                    file: None,
                    ..cs(&mut s, inner)
                }),
                _ => None,
            };
            if let Some(c) = changed {
                s.b.push(Event::Callsite(Box::new(Callsite {
                    level: Level::Info,
                    kind: CallsiteKind::Span(SpanClass::User),
                    ..c
                })));
            }
            if case == "loc fields" {
                s.b.push(Event::Record {
                    span: mid,
                    fields: vec![
                        Field {
                            index: 0,
                            value: Value::Str("src/caller.rs".into()),
                        },
                        Field {
                            index: 1,
                            value: Value::U64(7),
                        },
                    ],
                });
            }
            let (start, end) = (20 * MS, 50 * MS);
            s.begin_poll(t, start);
            for (k, id) in [outer, mid, inner].into_iter().enumerate() {
                s.enter(id, start + 100 + k as u64);
            }
            match m {
                Some(m) if case == "lock" => s.lock_and_release(t, m, start + 200),
                Some(m) => s.lock(t, m, false, start + 200),
                None => {}
            }
            for (k, id) in [outer, mid, inner].into_iter().enumerate().rev() {
                s.exit(id, end - 100 + k as u64);
            }
            s.end_poll(t, end);
            if case == "closed" {
                s.b.close(inner, CloseKind::Span, end + 1);
            }
            let model = s.model();
            let p = model.processes().next().expect("process");
            let task = &p.tasks[&t];
            assert_eq!(plain_of_task(p, task).is_some(), plain, "{case}");
            assert_eq!(of_task(p, task), of_task_made(p, task), "{case}");
            assert_eq!(
                culprit_of_poll(p, task, start, end),
                describe(p, task, start, end, false).culprit,
                "{case}"
            );
        }
    }
}
