//! Whose code a symbolised frame is ([`FrameOrigin`]): the program's, a
//! dependency's, or the runtime's (the standard library, tokio, tracing,
//! futures, awaitscope, the C library), which traces fold.

use awaitscope_wire::paths::{self, PathOrigin};
use awaitscope_wire::{FrameOrigin, NativeFrame};

/// Crates whose frames are the runtime's (folded when shown), by the first
/// segment of a function's path.
fn runtime_crate(krate: &str) -> bool {
    matches!(
        krate,
        "std"
            | "core"
            | "alloc"
            | "__rustc"
            | "tokio"
            | "libc"
            | "backtrace"
            | "panic_unwind"
            | "rtrb"
            // awaitscope's own crates in the program, not the crates of a
            // program whose name starts with it (the demo's awaitscope_tui).
            | "awaitscope"
            | "awaitscope_wire"
    ) || krate.starts_with("tracing")
        || krate.starts_with("futures")
}

/// The crate a demangled function name belongs to (`<` of a trait impl
/// skipped): `tokio` of `<tokio::task::JoinHandle<T> as ...>::poll`. `None`
/// for a name that does not start with a path (a C function; the short
/// names of inlined frames without full debug info, `{async_fn#0}`,
/// `poll<app::Job>`).
fn crate_of(function: &str) -> Option<&str> {
    let f = function.trim_start_matches('<').trim_start_matches('&');
    let f = f.strip_prefix("mut ").unwrap_or(f);
    let (k, _) = f.split_once("::")?;
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(k)
}

/// Whether a frame is C code (the C library, the thread start, the signal
/// trampoline): a C source file, or no file and a name that is no path.
fn is_c(function: &str, file: Option<&str>) -> bool {
    match file {
        None => !function.contains("::"),
        Some(f) => [".c", ".h", ".S", ".s", ".cc", ".cpp"]
            .iter()
            .any(|e| f.ends_with(e)),
    }
}

/// Crates the standard library is built with (its backtraces, its
/// collections): runtime when a frame of theirs has no file to tell by.
const STD_DEPS: [&str; 9] = [
    "gimli",
    "addr2line",
    "object",
    "miniz_oxide",
    "rustc_demangle",
    "hashbrown",
    "std_detect",
    "compiler_builtins",
    "memchr",
];

/// Whose code a frame is, from its function's name and its file as
/// [`paths::display`] shows it.
pub(crate) fn classify(function: &str, file: Option<&str>) -> FrameOrigin {
    if crate_of(function).is_some_and(runtime_crate) || is_c(function, file) {
        return FrameOrigin::Runtime;
    }
    let Some(file) = file else {
        // Without a file, the standard library's own dependencies (whose
        // frames have no line tables) are told by their crate.
        if crate_of(function).is_some_and(|k| STD_DEPS.contains(&k)) {
            return FrameOrigin::Runtime;
        }
        return FrameOrigin::User;
    };
    match paths::origin(file) {
        PathOrigin::Std => FrameOrigin::Runtime,
        PathOrigin::Dependency => {
            // `tokio-1.47.1/src/...`: the crate name before the version.
            let dir = file.split('/').next().unwrap_or("");
            let name = dir
                .rsplit_once('-')
                .map_or(dir, |(n, _)| n)
                .replace('-', "_");
            if runtime_crate(&name) {
                FrameOrigin::Runtime
            } else {
                FrameOrigin::Dependency
            }
        }
        PathOrigin::Local => FrameOrigin::User,
    }
}

/// Marks as runtime the frames of the standard library's own dependencies
/// (`gimli`, `addr2line`, ...: a panic's backtrace being symbolised) that
/// the runtime called: their files look like any dependency's, but the
/// program did not call them. `frames` innermost first.
pub(crate) fn fold_std_deps(frames: &mut [NativeFrame]) {
    let mut caller_is_runtime = false;
    for f in frames.iter_mut().rev() {
        let std_dep = crate_of(&f.function).is_some_and(|k| STD_DEPS.contains(&k));
        if std_dep && caller_is_runtime {
            f.origin = FrameOrigin::Runtime;
        } else if !std_dep {
            caller_is_runtime = f.origin == FrameOrigin::Runtime;
        }
    }
}

/// A function name without the legacy mangling's `::h<hash>` suffix.
pub(crate) fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_crate_then_path() {
        use FrameOrigin::*;
        assert_eq!(
            classify("std::thread::sleep", Some("std/src/thread/mod.rs")),
            Runtime
        );
        assert_eq!(
            classify(
                "<tokio::task::JoinHandle<T> as core::future::future::Future>::poll",
                None
            ),
            Runtime
        );
        assert_eq!(classify("clock_nanosleep", None), Runtime);
        assert_eq!(
            classify("<gimli::read::abbrev::Abbreviation>::new", None),
            Runtime
        );
        assert_eq!(
            classify(
                "<gimli::read::abbrev::Abbreviation>::new",
                Some("gimli-0.32.3/src/read/abbrev.rs")
            ),
            Dependency
        );
        assert_eq!(
            classify("awaitscope::capture::x", Some("instrument/src/x.rs")),
            Runtime
        );
        assert_eq!(classify("tracing_core::dispatcher::get", None), Runtime);
        assert_eq!(classify("app::hash_password", Some("src/main.rs")), User);
        assert_eq!(classify("app::hash_password", None), User);
        assert_eq!(
            classify(
                "__GI___clock_nanosleep",
                Some("./time/../sysdeps/unix/sysv/linux/clock_nanosleep.c")
            ),
            Runtime
        );
        assert_eq!(
            classify(
                "serde_json::de::from_str",
                Some("serde_json-1.0.1/src/de.rs")
            ),
            Dependency
        );
        assert_eq!(
            classify(
                "<F as core::future::future::Future>::poll",
                Some("core/src/future/future.rs")
            ),
            Runtime
        );
        assert_eq!(
            classify(
                "<T as x>::poll",
                Some("tokio-1.47.1/src/runtime/task/core.rs")
            ),
            Runtime
        );
    }

    #[test]
    fn the_std_deps_that_std_calls_are_runtime() {
        let f = |function: &str, file: &str| NativeFrame {
            function: function.into(),
            file: Some(file.into()),
            line: Some(1),
            origin: classify(function, Some(file)),
        };
        let mut frames = vec![
            f(
                "<gimli::read::abbrev::Abbreviations>::insert",
                "gimli-0.32.3/src/read/abbrev.rs",
            ),
            f(
                "<addr2line::Context<R>>::from_dwarf",
                "addr2line-0.25.1/src/lib.rs",
            ),
            f("std::panicking::default_hook", "std/src/panicking.rs"),
            f("app::main", "src/main.rs"),
            // The program's own use of gimli stays the program's.
            f("gimli::read::Dwarf::load", "gimli-0.32.3/src/read/dwarf.rs"),
            f("app::debugger", "src/main.rs"),
        ];
        fold_std_deps(&mut frames);
        let origins: Vec<_> = frames.iter().map(|f| f.origin).collect();
        use FrameOrigin::*;
        assert_eq!(origins, [Runtime, Runtime, Runtime, User, Dependency, User]);
    }

    #[test]
    fn strips_the_hash() {
        assert_eq!(strip_hash("app::f::h0123456789abcdef"), "app::f");
        assert_eq!(strip_hash("app::hello"), "app::hello");
    }
}
