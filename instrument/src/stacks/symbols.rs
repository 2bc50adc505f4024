//! Turning sampled return addresses into [`NativeFrame`]s: function names
//! (inlined calls as frames of their own, from debug info), files as users
//! read them, and whose code each frame is.
//!
//! Symbolising runs on a thread of its own (`awaitscope-symbols`), started
//! on the first sample: the first lookup loads and parses the program's
//! debug info, which takes from tens of milliseconds to seconds for a large
//! binary. Done on the exporter thread it would stop the draining of the
//! rings meanwhile, and a busy program's rings would overflow; later
//! lookups are cheap but are done there too, so that stalls stay in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

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

/// The directory of this crate's sources as it was built: frames in it
/// are awaitscope's (the panic hook, the capture), never the program's,
/// even when awaitscope is a path dependency whose files look local.
const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

/// A function name without the legacy mangling's `::h<hash>` suffix.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

/// Symbolises addresses, with caches of files shown and of frames by
/// address.
#[derive(Default)]
pub(crate) struct Symbolizer {
    /// Address (as looked up) -> its frames, innermost first.
    frames: HashMap<usize, Vec<NativeFrame>>,
    /// File as recorded -> as shown.
    files: HashMap<PathBuf, String>,
    /// Directory -> the outermost directory above it with a `Cargo.toml`.
    roots: HashMap<PathBuf, Option<PathBuf>>,
}

impl Symbolizer {
    /// The frames of a sampled stack, innermost first: inlined functions
    /// as frames of their own, our own sampler's frames dropped, at most
    /// `limits::MAX_STACK`. `exact_first`: `addrs[0]` is an instruction,
    /// not a return address.
    pub fn frames(&mut self, addrs: &[usize], exact_first: bool) -> Vec<NativeFrame> {
        let mut out = Vec::new();
        for (i, &a) in addrs.iter().enumerate() {
            // `resolve` looks up `a - 1` (inside the call of a return
            // address): an interrupted instruction is looked up as itself.
            let key = if i == 0 && exact_first { a + 1 } else { a };
            if !self.frames.contains_key(&key) {
                let f = self.resolve(key);
                self.frames.insert(key, f);
            }
            out.extend(self.frames[&key].iter().cloned());
            if out.len() >= awaitscope_wire::limits::MAX_STACK {
                out.truncate(awaitscope_wire::limits::MAX_STACK);
                break;
            }
        }
        // Frames of the handler, should the walk not have found the
        // interrupted one (then everything up to the trampoline is ours).
        if let Some(i) = out
            .iter()
            .rposition(|f| f.function.contains("awaitscope::stacks::signal"))
        {
            out.drain(..=i);
            if out.first().is_some_and(|f| f.file.is_none()) {
                out.remove(0); // the trampoline
            }
        }
        out
    }

    fn resolve(&mut self, addr: usize) -> Vec<NativeFrame> {
        let mut found: Vec<(String, Option<PathBuf>, Option<u32>)> = Vec::new();
        backtrace::resolve(addr as *mut std::ffi::c_void, |sym| {
            let name = sym
                .name()
                .map(|n| strip_hash(&format!("{n:#}")).to_owned())
                .unwrap_or_else(|| "??".to_owned());
            found.push((name, sym.filename().map(Path::to_path_buf), sym.lineno()));
        });
        if found.is_empty() {
            found.push(("??".to_owned(), None, None));
        }
        found
            .into_iter()
            .map(|(function, file, line)| {
                // awaitscope's own code, wherever it was built from (a path
                // dependency's files look like the program's own).
                let ours = file.as_deref().is_some_and(|f| f.starts_with(OWN_SOURCES));
                let file = file.map(|f| self.show(&f));
                let origin = if ours {
                    FrameOrigin::Runtime
                } else {
                    classify(&function, file.as_deref())
                };
                NativeFrame {
                    function,
                    file,
                    line,
                    origin,
                }
            })
            .collect()
    }

    /// `file` as users read it: [`paths::display`], and a local absolute
    /// path relative to its workspace (the outermost directory above it
    /// with a `Cargo.toml`).
    fn show(&mut self, file: &Path) -> String {
        if let Some(s) = self.files.get(file) {
            return s.clone();
        }
        let raw = file.to_string_lossy();
        let shown = paths::display(&raw).into_owned();
        let shown = if file.is_absolute() && paths::origin(&raw) == PathOrigin::Local {
            match file.parent().and_then(|d| self.root(d)) {
                Some(root) => file
                    .strip_prefix(&root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or(shown),
                None => shown,
            }
        } else {
            shown
        };
        self.files.insert(file.to_path_buf(), shown.clone());
        shown
    }

    /// The outermost directory at or above `dir` holding a `Cargo.toml`.
    fn root(&mut self, dir: &Path) -> Option<PathBuf> {
        if let Some(r) = self.roots.get(dir) {
            return r.clone();
        }
        let found = dir
            .ancestors()
            .filter(|d| d.join("Cargo.toml").is_file())
            .last()
            .map(Path::to_path_buf);
        self.roots.insert(dir.to_path_buf(), found.clone());
        found
    }
}

/// Work for the symbols thread: a stall whose stack is to be symbolised
/// (or none, to keep stalls in order), and who to hand it back to.
pub(crate) struct Job<T> {
    /// The sampled stack, if any.
    pub sample: Option<super::Sample>,
    /// Carried through untouched.
    pub payload: T,
}

/// The symbols thread's two ends as the exporter holds them.
pub(crate) struct SymbolsThread<T> {
    jobs: mpsc::Sender<Job<T>>,
    done: mpsc::Receiver<(T, Vec<NativeFrame>)>,
    /// Jobs sent and not handed back yet.
    pub pending: usize,
}

impl<T: Send + 'static> SymbolsThread<T> {
    /// Starts the thread.
    pub fn start() -> Option<Self> {
        let (jobs, rx) = mpsc::channel::<Job<T>>();
        let (tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("awaitscope-symbols".into())
            .spawn(move || {
                let mut sym = Symbolizer::default();
                for job in rx {
                    let frames = job
                        .sample
                        .map(|s| sym.frames(&s.addrs, s.exact_first))
                        .unwrap_or_default();
                    if tx.send((job.payload, frames)).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Self {
            jobs,
            done,
            pending: 0,
        })
    }

    /// Queues a job.
    pub fn send(&mut self, job: Job<T>) -> bool {
        let ok = self.jobs.send(job).is_ok();
        self.pending += ok as usize;
        ok
    }

    /// A finished job, waiting at most `wait` for one.
    pub fn recv(&mut self, wait: std::time::Duration) -> Option<(T, Vec<NativeFrame>)> {
        let r = if wait.is_zero() {
            self.done.try_recv().ok()
        } else {
            self.done.recv_timeout(wait).ok()
        };
        if r.is_some() {
            self.pending -= 1;
        }
        r
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
    fn strips_the_hash() {
        assert_eq!(strip_hash("app::f::h0123456789abcdef"), "app::f");
        assert_eq!(strip_hash("app::hello"), "app::hello");
    }

    #[test]
    fn local_paths_relative_to_the_workspace() {
        let mut s = Symbolizer::default();
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/stacks/symbols.rs");
        assert_eq!(s.show(&here), "instrument/src/stacks/symbols.rs");
        assert_eq!(
            s.show(Path::new("/rustc/abc/library/std/src/thread/mod.rs")),
            "std/src/thread/mod.rs"
        );
    }
}
