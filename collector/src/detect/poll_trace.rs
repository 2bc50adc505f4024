//! Where a poll was, in the user's code: the trace, location and wording
//! shared by the poll-time findings (`long_poll`, `descheduled`,
//! `never_yielded`, and the await path of `self_wake` and `starvation`).
//!
//! A trace is innermost first, like a backtrace: the native stack of the
//! worker when the poll crossed the stall threshold (runs of runtime frames
//! folded into one line), then the async stack at that moment (one line per
//! span), then the task. Without a stall from the producer, the async stack
//! is the poll's await tree (with the spans that closed during the poll),
//! and a line says why no native stack is shown.

use awaitscope_wire::paths::{self, PathOrigin};
use awaitscope_wire::{FrameOrigin, NativeFrame, Sched, StackState};

use crate::model::span::Location;
use crate::model::stall::{display_location, is_user_span, PollStall, StallSpan};
use crate::model::{Process, Task};

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
    t.stall.as_deref().filter(|s| s.start == start && s.crossed)
}

/// `t`'s stall of the poll that started at `start`, either half.
pub fn stall_of(t: &Task, start: u64) -> Option<&PollStall> {
    t.stall.as_deref().filter(|s| s.start == start)
}

/// The trace of `t`'s poll that started at `start` and ended (or was seen
/// running) at `end` (see the module doc). Its await tree stands for the
/// async stack when no stall crossed: the path to the span where the poll
/// spent its time, as far as the tree tells (see [`busiest_leaf`]).
pub fn of_poll(p: &Process, t: &Task, start: u64, end: u64) -> PollTrace {
    let mut out = PollTrace::default();
    let stall = crossed_stall(t, start);
    let stack = stall.and_then(|s| s.stack);
    // The native stack, or why there is none.
    match stall {
        Some(s) if stack == Some(StackState::Sampled) && !s.frames.is_empty() => {
            out.trace.extend(fold_frames(&s.frames));
            if let Some(f) = s
                .frames
                .iter()
                .find(|f| f.origin == FrameOrigin::User && f.file.is_some() && f.line.is_some())
            {
                if let Some(l) = frame_location(f) {
                    out.culprit = Some(format!("{} ({l})", short_fn(&f.function)));
                    out.location = Some(l);
                }
            }
        }
        _ => out
            .trace
            .push(format!("no native stack: {}", no_stack_reason(stack))),
    }
    // The async stack.
    let spans: Vec<StallSpan> = match stall {
        Some(s) => s.spans.clone(),
        None => await_stack(p, t, busiest_leaf(p, t, start, end)),
    };
    for s in &spans {
        out.trace.push(line(&s.label, s.location.as_ref()));
    }
    // Without a user frame: the innermost span of the program's own, else
    // the innermost in its files, else the innermost.
    let local = |s: &&StallSpan| {
        s.location
            .as_ref()
            .is_some_and(|l| paths::origin(&l.file) == PathOrigin::Local)
    };
    let named = spans
        .iter()
        .find(|s| s.user)
        .or_else(|| spans.iter().find(local))
        .or_else(|| spans.first());
    if let (Some(s), None) = (named, &out.location) {
        out.location = s.location.clone();
        out.culprit = Some(match &s.location {
            Some(l) => format!("{} ({})", s.label, file_line(l)),
            None => s.label.clone(),
        });
    }
    out.trace.push(task_line(t));
    if out.location.is_none() {
        out.location = t.location.as_ref().map(display_location);
    }
    out
}

/// The await path of `t`'s last poll, innermost first, then the task: the
/// trace of findings about a task between polls (`self_wake`,
/// `starvation`).
pub fn of_task(p: &Process, t: &Task) -> Vec<String> {
    let mut out: Vec<String> = await_stack(p, t, t.await_tree.deepest_leaf())
        .iter()
        .map(|s| line(&s.label, s.location.as_ref()))
        .collect();
    out.push(task_line(t));
    out
}

/// The leaf of `t`'s await tree (of its poll from `start` to `end`) where
/// the poll spent its time, as far as the tree tells: a leaf span opened and
/// closed within the poll (an instrumented fn that blocked, then returned)
/// that lasted more than half of it, the longest such; else the deepest
/// leaf (what the poll ended waiting on).
pub fn busiest_leaf(p: &Process, t: &Task, start: u64, end: u64) -> Option<usize> {
    let tree = &t.await_tree;
    let poll = end.saturating_sub(start);
    tree.leaves()
        .filter_map(|i| {
            let c = p.closed_spans.get(tree.nodes[i].span)?;
            let inside = c.closed.min(end).saturating_sub(c.created.max(start));
            (inside.saturating_mul(2) > poll).then_some((inside, i))
        })
        .max()
        .map(|(_, i)| i)
        .or_else(|| tree.deepest_leaf())
}

/// The path of `t`'s await tree down to `leaf`, innermost first (closed
/// spans included: the tree keeps them), each span named and located (the
/// path shortened for display).
pub fn await_stack(p: &Process, t: &Task, leaf: Option<usize>) -> Vec<StallSpan> {
    let tree = &t.await_tree;
    let Some(leaf) = leaf else {
        return Vec::new();
    };
    let mut path = tree.path(leaf);
    path.reverse();
    path.into_iter()
        .map(|i| {
            let n = &tree.nodes[i];
            let location = p
                .span_location(n.span, n.callsite)
                .map(|l| display_location(&l));
            let cs = p.callsites.get(&n.callsite);
            StallSpan {
                label: p.node_label(n),
                user: is_user_span(n.class, cs, location.as_ref()),
                location,
            }
        })
        .collect()
}

/// `label @ file:line` (no column: a trace line names a line), or the
/// label alone.
fn line(label: &str, loc: Option<&Location>) -> String {
    match loc {
        Some(l) => format!("{label} @ {}", file_line(l)),
        None => label.to_string(),
    }
}

/// `file:line` of `l`.
fn file_line(l: &Location) -> String {
    format!("{}:{}", l.file, l.line)
}

/// `task #7 "name" spawned @ file:line`.
pub fn task_line(t: &Task) -> String {
    let mut s = format!("task #{}", t.id.0);
    if let Some(n) = &t.name {
        s.push_str(&format!(" {n:?}"));
    }
    if let Some(l) = &t.location {
        s.push_str(&format!(" spawned @ {}", file_line(&display_location(l))));
    }
    s
}

/// Why a trace has no native stack.
fn no_stack_reason(stack: Option<StackState>) -> &'static str {
    match stack {
        Some(StackState::Off) => "sampling is off (AWAITSCOPE_STACKS=off)",
        Some(StackState::Unsupported) => "sampling is not supported on this platform",
        Some(StackState::Missed) | Some(StackState::Sampled) => {
            "the worker did not answer the sampling signal in time"
        }
        None => "no stall was reported for this poll (it ended before the watchdog saw it, or the producer is older)",
    }
}

/// The native frames as trace lines, innermost first: user and dependency
/// frames as `function @ file:line`, each run of runtime frames folded
/// into `… N runtime frames`.
pub fn fold_frames(frames: &[NativeFrame]) -> Vec<String> {
    let mut out = Vec::new();
    let mut run = 0usize;
    let flush = |run: &mut usize, out: &mut Vec<String>| {
        match *run {
            0 => {}
            1 => out.push("… 1 runtime frame".to_string()),
            n => out.push(format!("… {n} runtime frames")),
        }
        *run = 0;
    };
    for f in frames {
        if f.origin == FrameOrigin::Runtime {
            run += 1;
            continue;
        }
        flush(&mut run, &mut out);
        out.push(line(&f.function, frame_location(f).as_ref()));
    }
    flush(&mut run, &mut out);
    out
}

/// Where a native frame is, its path shortened for display.
fn frame_location(f: &NativeFrame) -> Option<Location> {
    Some(Location {
        file: paths::display(f.file.as_deref()?).into_owned(),
        line: f.line?,
        col: None,
    })
}

/// The function's own name: `app::auth::hash_password` is
/// `hash_password`, a closure in it `hash_password::{{closure}}`.
fn short_fn(function: &str) -> &str {
    let mut end = function.len();
    loop {
        let start = function[..end].rfind("::").map_or(0, |i| i + 2);
        let seg = &function[start..end];
        let named = !seg.starts_with('{') && !seg.starts_with('<');
        if named {
            return &function[start..];
        }
        if start == 0 {
            return function;
        }
        end = start - 2;
    }
}

/// Whether the poll was mostly waiting for a CPU (more than half of the
/// window the statistics cover): the machine was busy, not the code.
pub fn is_descheduled(s: &Sched) -> bool {
    s.window_ns > 0 && s.waiting_ns.saturating_mul(2) > s.window_ns
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

    fn frame(function: &str, line: u32, origin: FrameOrigin) -> NativeFrame {
        NativeFrame {
            function: function.into(),
            file: Some(format!("src/{line}.rs")),
            line: Some(line),
            origin,
        }
    }

    #[test]
    fn runtime_runs_fold_into_one_line() {
        let frames = [
            frame("std::thread::sleep", 1, FrameOrigin::Runtime),
            frame(
                "std::sys::pal::unix::thread::Thread::sleep",
                2,
                FrameOrigin::Runtime,
            ),
            frame("app::hash_password", 12, FrameOrigin::User),
            frame("argon2::hash", 40, FrameOrigin::Dependency),
            frame("tokio::runtime::task::poll", 3, FrameOrigin::Runtime),
            frame("app::checkout::{{closure}}", 30, FrameOrigin::User),
            frame("tokio::a", 4, FrameOrigin::Runtime),
            frame("tokio::b", 5, FrameOrigin::Runtime),
            frame("std::c", 6, FrameOrigin::Runtime),
        ];
        assert_eq!(
            fold_frames(&frames),
            [
                "… 2 runtime frames",
                "app::hash_password @ src/12.rs:12",
                "argon2::hash @ src/40.rs:40",
                "… 1 runtime frame",
                "app::checkout::{{closure}} @ src/30.rs:30",
                "… 3 runtime frames",
            ]
        );
    }

    #[test]
    fn short_function_names() {
        assert_eq!(short_fn("app::auth::hash_password"), "hash_password");
        assert_eq!(
            short_fn("app::checkout::{{closure}}"),
            "checkout::{{closure}}"
        );
        assert_eq!(short_fn("main"), "main");
        assert_eq!(short_fn("{{closure}}"), "{{closure}}");
    }

    #[test]
    fn sched_split_and_descheduled() {
        let busy = Sched {
            window_ns: 100,
            on_cpu_ns: 20,
            kernel_ns: 5,
            waiting_ns: 70,
        };
        assert!(is_descheduled(&busy));
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
        assert!(!is_descheduled(&blocked));
        assert!(!is_descheduled(&Sched::default()));
    }
}
