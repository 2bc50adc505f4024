//! A worker's native stack as a finding shows it: the program's frames
//! and its dependencies' as `function @ file:line`, innermost first, each
//! run of runtime frames folded into one line, the stack cut at the task's
//! poll, and the anonymous frames of line-tables-only builds (an inlined
//! `{async_fn#0}`, `{async_block#0}`) named by the function they belong
//! to. What the poll-time findings' traces ([`super::poll_trace`]) put
//! first.

use awaitscope_wire::paths;
use awaitscope_wire::{FrameOrigin, NativeFrame};

use crate::model::span::Location;

/// A native stack as trace lines, innermost first: the program's and its
/// dependencies' frames as `function @ file:line` (function names short:
/// `hash_password`, `Cart::total`, an async fn's body as the fn), each run
/// of runtime frames (std, tokio, awaitscope, libc) folded into one line
/// that names where the program entered it (`… 4 runtime frames in
/// std::thread::sleep`). The stack stops at the poll: what is below the
/// task's poll (the scheduler, the thread's start, and on a current-thread
/// runtime the `block_on` caller) is not where the task was.
pub fn fold_frames(frames: &[NativeFrame]) -> Vec<String> {
    let frames = &frames[..poll_boundary(frames)];
    let mut out = Vec::new();
    let mut run: Vec<&NativeFrame> = Vec::new();
    let flush = |run: &mut Vec<&NativeFrame>, out: &mut Vec<String>| {
        // The run's outermost frame is the call the program made.
        let Some(entry) = run.last() else {
            return;
        };
        let n = run.len();
        let noun = if n == 1 { "frame" } else { "frames" };
        let what = what_the_runtime_did(run);
        out.push(match runtime_entry(&entry.function) {
            Some(f) => format!("… {n} runtime {noun} in {f}{what}"),
            None => format!("… {n} runtime {noun}{what}"),
        });
        run.clear();
    };
    let mut last: Option<String> = None;
    for (i, f) in frames.iter().enumerate() {
        if f.origin == FrameOrigin::Runtime {
            run.push(f);
            continue;
        }
        let name = match f.origin {
            FrameOrigin::User if is_anonymous(&f.function) => {
                fn_of_body(frames, i, anonymous_name(f, &frames[..i], &frames[i + 1..]))
            }
            FrameOrigin::User => short_fn(&f.function),
            _ => dependency_fn(&f.function),
        };
        // An async fn is two frames of one function (its body, and the
        // future `#[instrument]` wraps it in, at the fn's line) with the
        // poll plumbing between them: one line, the body's (an optimised
        // build's inlined body is named after the fn: see [`fn_of_body`]).
        if last.as_deref() == Some(name.as_str()) && run.iter().all(|r| is_plumbing(&r.function)) {
            run.clear();
            continue;
        }
        flush(&mut run, &mut out);
        out.push(line(&name, frame_location(f).as_ref()));
        last = Some(name);
    }
    // A trailing run (between the program's outermost frame and the poll)
    // is the poll's machinery: told, not named.
    if !run.is_empty() {
        let n = run.len();
        out.push(format!(
            "… {n} runtime frame{}",
            if n == 1 { "" } else { "s" }
        ));
    }
    out
}

/// Frames that run a task's poll from the scheduler: the stack is cut at
/// the innermost of them (innermost first, everything from it on is the
/// runtime's, not the task's).
const POLL_BOUNDARIES: [&str; 4] = [
    "tokio::runtime::task::core::Core",
    "tokio::runtime::task::harness::",
    "tokio::runtime::task::raw::poll",
    "tokio::runtime::scheduler::",
];

/// The same frames told by their files (tokio's, as shown): what an
/// inlined frame has when only line tables name it (`poll`, `block_on<..>`).
const POLL_BOUNDARY_FILES: [&str; 4] = [
    "/src/runtime/task/core.rs",
    "/src/runtime/task/harness.rs",
    "/src/runtime/task/raw.rs",
    "/src/runtime/scheduler/",
];

/// How a poll trace without a native stack starts (then why there is none).
pub const NO_STACK: &str = "no native stack: ";

/// Whether `trace` is a poll trace whose native stack was sampled.
pub fn has_native_stack(trace: &[String]) -> bool {
    trace.first().is_some_and(|l| !l.starts_with(NO_STACK))
}

/// How many frames (innermost first) are inside the task's poll.
fn poll_boundary(frames: &[NativeFrame]) -> usize {
    frames
        .iter()
        .position(|f| {
            f.origin == FrameOrigin::Runtime
                && (POLL_BOUNDARIES
                    .iter()
                    .any(|b| f.function.trim_start_matches('<').starts_with(b))
                    || f.file.as_deref().is_some_and(|file| {
                        file.starts_with("tokio-")
                            && POLL_BOUNDARY_FILES.iter().any(|b| file.contains(b))
                    }))
        })
        .unwrap_or(frames.len())
}

/// The runtime function the program called, as a path users know
/// (`std::thread::sleep`); `None` for what names nothing useful (C frames,
/// closures of the runtime, unknown symbols, the plumbing of polls).
fn runtime_entry(function: &str) -> Option<String> {
    let f = strip_closures(function);
    if f.is_empty() || f == "??" || !f.contains("::") || is_plumbing(f) {
        return None;
    }
    Some(f.to_string())
}

/// What a run of runtime frames (innermost first) was doing, when the
/// call that entered it does not say: a panic's default hook printing a
/// backtrace (`RUST_BACKTRACE` set) symbolises the whole stack, which
/// takes a poll tens to hundreds of milliseconds, and the run is entered
/// at `panic_fmt`: without this, a long poll at the line of a panic reads
/// as if the program's code there were slow. Empty otherwise.
fn what_the_runtime_did(run: &[&NativeFrame]) -> &'static str {
    let has = |needle: &str| run.iter().any(|f| f.function.contains(needle));
    if !has("std::panicking::default_hook") {
        ""
    } else if has("backtrace_rs::") || has("BacktraceLock") {
        " (the panic hook printing a backtrace: RUST_BACKTRACE is set)"
    } else {
        " (the panic hook)"
    }
}

/// Whether a runtime frame only passes a poll on (`Future::poll` of a
/// wrapper: `Instrumented`, `Pin`, a `join!`): how async code nests, not a
/// call the program made.
fn is_plumbing(function: &str) -> bool {
    let f = strip_closures(function);
    f.ends_with("::poll")
        || f.ends_with(">::poll")
        || f.contains("Future>::poll")
        // Line tables name an inlined frame without its path: `poll<F>`.
        || f == "poll"
        || f.starts_with("poll<")
}

/// The name of frame `i` of `frames` (innermost first), `named` as
/// [`anonymous_name`] or [`short_fn`] made it, as the trace tells it: an
/// inlined async block (`checkout (async block)`) polled, through poll
/// plumbing only, by a frame of the fn of that name is that fn's body (the
/// block `#[instrument]` wraps an async fn's body in), named `checkout`.
pub(super) fn fn_of_body(frames: &[NativeFrame], i: usize, named: String) -> String {
    let Some(fun) = named.strip_suffix(ASYNC_BLOCK) else {
        return named;
    };
    let frames = &frames[..poll_boundary(frames)];
    let outer = frames
        .iter()
        .enumerate()
        .skip(i + 1)
        .find(|(_, f)| f.origin != FrameOrigin::Runtime || !is_plumbing(&f.function));
    match outer {
        Some((k, f)) if f.origin == FrameOrigin::User => {
            let name = if is_anonymous(&f.function) {
                anonymous_name(f, &frames[..k], &frames[k + 1..])
            } else {
                short_fn(&f.function)
            };
            if name == fun {
                name
            } else {
                named
            }
        }
        _ => named,
    }
}

/// What [`anonymous_name`] appends to the name of an inlined async block.
const ASYNC_BLOCK: &str = " (async block)";

/// An anonymous frame (line tables name an inlined async fn body
/// `{async_fn#0}`, an async block `{async_block#0}`, a closure
/// `{closure#0}`) told by the function it belongs to, when a frame around
/// it names it in a type (`poll<app::checkout::{async_fn#0}::..>`):
/// `checkout (async block)`. Else the name as it is.
///
/// `inner` are the frames inside it, innermost first; `outer` those
/// around it. A wrapper's poll just outside names the body it polls. Past
/// another anonymous frame the types name that frame's body, not this
/// one's: an async fn awaited directly (`charge_card(order).await`) is
/// polled with no wrapper between it and its caller's body. Then what it
/// polls tells: a future made in fn `f`'s body (`..::f::{async_fn#0}::..`)
/// is polled by that body.
pub(super) fn anonymous_name(
    f: &NativeFrame,
    inner: &[NativeFrame],
    outer: &[NativeFrame],
) -> String {
    let what = if f.function.starts_with("{async_fn") {
        "async fn"
    } else if f.function.starts_with("{async_block") {
        "async block"
    } else if f.function.starts_with("{closure") {
        "closure"
    } else {
        return f.function.clone();
    };
    // The path's last segment, past any generic opening before it.
    let last_segment = |path: &str| {
        let seg = path.rsplit(['<', ' ', ':']).next()?;
        (!seg.is_empty()).then(|| seg.to_string())
    };
    let named = |frames: &mut dyn Iterator<Item = &NativeFrame>,
                 find: &dyn Fn(&str) -> Option<usize>| {
        frames
            .take(4)
            .take_while(|o| !is_anonymous(&o.function))
            .find_map(|o| last_segment(&o.function[..find(&o.function)?]))
    };
    let owner = named(&mut outer.iter(), &|n| n.find("::{")).or_else(|| {
        named(&mut inner.iter().rev(), &|n| {
            // Something made in an async fn's body, not the fn's own
            // future (`{async_fn_env#0}`, which its caller polls).
            n.find("::{async_fn#")
                .filter(|&i| n[i + 3..].contains("}::"))
        })
    });
    match owner {
        // An async fn's body is the fn itself.
        Some(o) if what == "async fn" => o,
        Some(o) => format!("{o} ({what})"),
        None => f.function.clone(),
    }
}

/// Whether a function name names nothing: an inlined async block, async
/// fn body or closure as line tables name it (`{async_block#0}`).
pub(super) fn is_anonymous(function: &str) -> bool {
    function.starts_with('{')
}

/// `f` without trailing `::{{closure}}` segments (an async fn's body and
/// the closures in a function are told by their line).
fn strip_closures(mut f: &str) -> &str {
    while let Some(rest) = f.strip_suffix("::{{closure}}") {
        f = rest;
    }
    f
}

/// A dependency's function with its crate: `argon2::hash`,
/// `argon2::Argon2::hash_password` stays whole (it is short enough and the
/// crate tells whose code it is).
fn dependency_fn(function: &str) -> String {
    strip_closures(function).to_string()
}

/// Where a native frame is, its path shortened for display.
pub(super) fn frame_location(f: &NativeFrame) -> Option<Location> {
    Some(Location {
        file: paths::display(f.file.as_deref()?).into_owned(),
        line: f.line?,
        col: None,
    })
}

/// The function's own name: `app::auth::hash_password` is
/// `hash_password`, a method `Cart::total`, an async fn's body
/// (`app::checkout::{{closure}}`) `checkout`.
pub(super) fn short_fn(function: &str) -> String {
    let f = strip_closures(function);
    // A qualified path (`<app::Cart>::total`, `<T as Trait>::f`): the type
    // named by its own last segment.
    let unqualified;
    let f = match f.strip_prefix('<').and_then(|r| r.split_once(">::")) {
        Some((ty, rest)) => {
            let ty = ty.split(" as ").next().unwrap_or(ty);
            let ty = ty.rsplit("::").next().unwrap_or(ty);
            unqualified = format!("{ty}::{rest}");
            unqualified.as_str()
        }
        None => f,
    };
    let segs: Vec<&str> = f.split("::").collect();
    match segs.as_slice() {
        [] => function.to_string(),
        [.., ty, name]
            if ty.starts_with(|c: char| c.is_ascii_uppercase()) || ty.starts_with('<') =>
        {
            format!("{ty}::{name}")
        }
        [.., name] if !name.is_empty() => (*name).to_string(),
        _ => function.to_string(),
    }
}

/// `label @ file:line` (no column: a trace line names a line), or the
/// label alone.
pub(super) fn line(label: &str, loc: Option<&Location>) -> String {
    match loc {
        Some(l) => {
            // Written in one go (one allocation, no intermediate string):
            // a trace line is made for each frame of each description.
            let mut s = String::with_capacity(label.len() + l.file.len() + 16);
            s.push_str(label);
            s.push_str(" @ ");
            push_file_line(&mut s, &l.file, l.line);
            s
        }
        None => label.to_string(),
    }
}

/// Appends `file:line`.
pub(super) fn push_file_line(s: &mut String, file: &str, line: u32) {
    s.push_str(file);
    s.push(':');
    crate::units::push_decimal(s, u64::from(line));
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
            frame(
                "std::sys::pal::unix::thread::Thread::sleep",
                2,
                FrameOrigin::Runtime,
            ),
            frame("std::thread::sleep", 1, FrameOrigin::Runtime),
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
                "… 2 runtime frames in std::thread::sleep",
                "hash_password @ src/12.rs:12",
                "argon2::hash @ src/40.rs:40",
                // Poll plumbing names no call the program made.
                "… 1 runtime frame",
                "checkout @ src/30.rs:30",
                "… 3 runtime frames",
            ]
        );
    }

    /// A poll that spent its time in a panic's default hook printing a
    /// backtrace says so; a panic without it says only the hook.
    #[test]
    fn a_panic_hook_printing_a_backtrace_is_named() {
        let panic_run = |printing: bool| {
            let mut frames = Vec::new();
            if printing {
                frames.push(frame(
                    "std::backtrace_rs::symbolize::gimli::Cache::with_global",
                    9,
                    FrameOrigin::Runtime,
                ));
                frames.push(frame(
                    "std::sys::backtrace::BacktraceLock::print",
                    8,
                    FrameOrigin::Runtime,
                ));
            } else {
                frames.push(frame("std::io::Write::write_fmt", 8, FrameOrigin::Runtime));
            }
            for (f, l) in [
                ("std::panicking::default_hook::{{closure}}", 7),
                ("std::panicking::default_hook", 6),
                ("std::panicking::panic_with_hook", 5),
                ("std::sys::backtrace::__rust_end_short_backtrace", 4),
                ("core::panicking::panic_fmt", 3),
            ] {
                frames.push(frame(f, l, FrameOrigin::Runtime));
            }
            frames.push(frame("app::reload_config", 30, FrameOrigin::User));
            fold_frames(&frames)
        };
        assert_eq!(
            panic_run(true),
            [
                "… 7 runtime frames in core::panicking::panic_fmt (the panic hook printing a \
                 backtrace: RUST_BACKTRACE is set)",
                "reload_config @ src/30.rs:30",
            ]
        );
        assert_eq!(
            panic_run(false)[0],
            "… 6 runtime frames in core::panicking::panic_fmt (the panic hook)"
        );
        // Any other run is told as before: `__rust_end_short_backtrace`
        // alone is in every panic, and names no printing.
        let sleep = [
            frame("std::thread::sleep", 1, FrameOrigin::Runtime),
            frame("app::wait", 2, FrameOrigin::User),
        ];
        assert_eq!(
            fold_frames(&sleep)[0],
            "… 1 runtime frame in std::thread::sleep"
        );
    }

    #[test]
    fn the_stack_stops_at_the_tasks_poll() {
        let frames = [
            frame("app::load_config::{{closure}}", 12, FrameOrigin::User),
            frame(
                "tokio::runtime::task::core::Core<T,S>::poll",
                2,
                FrameOrigin::Runtime,
            ),
            frame("app::main::{{closure}}", 30, FrameOrigin::User),
        ];
        assert_eq!(fold_frames(&frames), ["load_config @ src/12.rs:12"]);
    }

    #[test]
    fn the_poll_is_found_by_tokios_files_when_names_are_short() {
        // Line tables only: inlined frames have short names.
        let mut poll = frame("poll", 2, FrameOrigin::Runtime);
        poll.file = Some("tokio-1.47.1/src/runtime/task/core.rs".into());
        let frames = [
            frame("{async_block#0}", 22, FrameOrigin::User),
            poll,
            frame("{closure#1}", 135, FrameOrigin::User),
        ];
        assert_eq!(fold_frames(&frames), ["{async_block#0} @ src/22.rs:22"]);
    }

    #[test]
    fn anonymous_frames_are_named_by_the_fn_they_belong_to() {
        let mut poll = frame(
            "poll<app::demo::blocking_in_async::{async_fn#0}::{async_block_env#0}>",
            5,
            FrameOrigin::Runtime,
        );
        poll.file = Some("core/src/future/future.rs".into());
        let frames = [
            frame("std::thread::sleep", 1, FrameOrigin::Runtime),
            frame("{async_block#0}", 22, FrameOrigin::User),
            poll,
            frame("{async_fn#0}", 19, FrameOrigin::User),
            frame(
                "poll<app::demo::blocking_in_async::{async_fn_env#0}>",
                6,
                FrameOrigin::Runtime,
            ),
        ];
        assert_eq!(
            fold_frames(&frames),
            [
                "… 1 runtime frame in std::thread::sleep",
                // The `#[instrument]`ed fn's body and its future: one line,
                // the body's, named as the user wrote it.
                "blocking_in_async @ src/22.rs:22",
                "… 1 runtime frame",
            ]
        );
        // The culprit of a long poll is named by the same rule.
        let named = anonymous_name(&frames[1], &frames[..1], &frames[2..]);
        assert_eq!(named, "blocking_in_async (async block)");
        assert_eq!(fn_of_body(&frames, 1, named), "blocking_in_async");
    }

    /// An `#[instrument]`ed async fn awaited directly by another one's
    /// body: its future is polled with no wrapper between the two bodies,
    /// so the wrappers further out name the caller, not it. What it polls
    /// (its own instrumented body) names it.
    #[test]
    fn an_async_fn_awaited_directly_is_named_by_what_it_polls() {
        let runtime = |name: &str| {
            let mut f = frame(name, 321, FrameOrigin::Runtime);
            f.file = Some("tracing-0.1.44/src/instrument.rs".into());
            f
        };
        let frames = [
            frame("app::hash_password", 20, FrameOrigin::User),
            frame("{async_block#0}", 29, FrameOrigin::User),
            runtime("poll<app::charge_card::{async_fn#0}::{async_block_env#0}>"),
            frame("{async_fn#0}", 26, FrameOrigin::User),
            frame("{async_block#0}", 35, FrameOrigin::User),
            runtime("poll<app::checkout::{async_fn#0}::{async_block_env#0}>"),
            frame("{async_fn#0}", 33, FrameOrigin::User),
            runtime("poll<app::checkout::{async_fn_env#0}>"),
        ];
        assert_eq!(
            fold_frames(&frames),
            [
                "hash_password @ src/20.rs:20",
                "charge_card @ src/29.rs:29",
                "checkout @ src/35.rs:35",
                "… 1 runtime frame",
            ]
        );
        // An async fn's own future (`{async_fn_env#0}`) is polled by its
        // caller: it does not name the frame that polls it.
        let frames = [
            frame("{async_fn#0}", 40, FrameOrigin::User),
            runtime("poll<app::lookup::{async_fn_env#0}>"),
            frame("{async_fn#0}", 50, FrameOrigin::User),
        ];
        assert_eq!(fold_frames(&frames)[2], "{async_fn#0} @ src/50.rs:50");
        // An async block the program wrote (a spawned `async move {}`),
        // polled by the task and not by a fn of the same name, keeps
        // saying what it is.
        let frames = [
            frame("{async_block#0}", 172, FrameOrigin::User),
            runtime("poll<app::spawn_panic::{async_block_env#0}>"),
        ];
        assert_eq!(
            fold_frames(&frames),
            [
                "spawn_panic (async block) @ src/172.rs:172",
                "… 1 runtime frame"
            ]
        );
    }

    #[test]
    fn short_function_names() {
        assert_eq!(short_fn("app::auth::hash_password"), "hash_password");
        assert_eq!(short_fn("app::checkout::{{closure}}"), "checkout");
        assert_eq!(
            short_fn("testing::load_config::{{closure}}::{{closure}}"),
            "load_config"
        );
        assert_eq!(short_fn("app::cart::Cart::total"), "Cart::total");
        assert_eq!(short_fn("<app::cart::Cart>::total"), "Cart::total");
        assert_eq!(
            short_fn("<app::cart::Cart as app::Priced>::price"),
            "Cart::price"
        );
        assert_eq!(short_fn("main"), "main");
        assert_eq!(short_fn("{{closure}}"), "{{closure}}");
    }
}
