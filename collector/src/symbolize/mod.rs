//! Symbolising the native stacks that programs sample
//! ([`awaitscope_wire::NativeStack`]): addresses in the program's modules
//! become functions (inlined calls as frames of their own), files as users
//! read them, lines, and whose code each frame is.
//!
//! The program sends only addresses, its modules' paths and their build
//! ids: loading the debug info is this side's cost, not the program's. The
//! files are read here (with `addr2line` and `object`), so the binary must
//! be on this machine and unchanged: a module whose file is missing or was
//! rebuilt since (its build id differs) is not symbolised, and the stack
//! says why. A live process's executable is also found as
//! `/proc/<pid>/exe`, which stays the file that ran even after a rebuild.
//!
//! Loaded modules and the frames of each address are cached for the whole
//! collector process (a replay that rebuilds its model does not load the
//! debug info again), within caps.

mod files;
mod origin;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use awaitscope_wire::{limits, Event, FrameOrigin, NativeFrame, NativeStack};

use files::Files;

/// Most modules kept loaded; the least recently used goes first.
const MAX_MODULES: usize = 8;
/// Most addresses whose frames are kept per module; past it that cache
/// starts again.
const MAX_ADDRESSES: usize = 1 << 16;

/// A symbolised stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Symbolized {
    /// The frames, innermost first (inlined functions as frames of their
    /// own), the sampler's own frames dropped, at most
    /// [`limits::MAX_STACK`].
    pub frames: Vec<NativeFrame>,
    /// Why some frames could not be symbolised (the program's file missing
    /// or rebuilt since it ran), for the user to read; `None` if all were.
    pub unresolved: Option<String>,
}

/// The symboliser every caller shares: its loaded modules and their
/// frames.
static SYMBOLIZER: Mutex<Option<Symbolizer>> = Mutex::new(None);

/// Modules loaded by [`load_ahead`], and by [`symbolize`] itself (see
/// [`loads`]).
static LOADED_AHEAD: AtomicU64 = AtomicU64::new(0);
static LOADED_IN_PLACE: AtomicU64 = AtomicU64::new(0);

fn symbolizer() -> MutexGuard<'static, Option<Symbolizer>> {
    SYMBOLIZER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Symbolises `stack`, of the process with id `pid` (when known: its
/// executable may still be readable as `/proc/<pid>/exe`). A module not
/// loaded yet is loaded here, the symboliser held meanwhile: see
/// [`load_ahead`].
pub fn symbolize(stack: &NativeStack, pid: Option<u32>) -> Symbolized {
    symbolizer()
        .get_or_insert_with(Symbolizer::default)
        .stack(stack, pid)
}

/// Loads the debug info of the modules `stack` names that are not loaded
/// yet, reading the files without holding the symboliser: a live
/// collector's connection calls it when a native stack arrives, before the
/// model gets it. The model symbolises the stack holding its own lock,
/// which viewers' snapshots and every producer's frames wait for; loading a
/// large program's debug info there (a tenth of a second and more, once per
/// program) held them all. Another caller loading the same module
/// meanwhile loads it too, and one of the two is kept. Returns how many
/// modules it loaded.
pub fn load_ahead(stack: &NativeStack, pid: Option<u32>) -> usize {
    let missing: Vec<(String, Vec<u8>)> = {
        let mut guard = symbolizer();
        let s = guard.get_or_insert_with(Symbolizer::default);
        let mut missing: Vec<(String, Vec<u8>)> = Vec::new();
        for m in stack_modules(stack) {
            let key = (m.path.clone(), m.build_id.clone());
            if s.find(&m.path, &m.build_id).is_none() && !missing.contains(&key) {
                missing.push(key);
            }
        }
        missing
    };
    let mut loaded = 0;
    for (path, build_id) in missing {
        let loader = load(&path, &build_id, pid);
        let mut guard = symbolizer();
        let s = guard.get_or_insert_with(Symbolizer::default);
        if s.find(&path, &build_id).is_none() {
            s.insert(path, build_id, loader);
            LOADED_AHEAD.fetch_add(1, Ordering::Relaxed);
            loaded += 1;
        }
    }
    loaded
}

/// Whether every module `stack` names is loaded already (nothing for
/// [`load_ahead`] to do).
pub fn all_loaded(stack: &NativeStack) -> bool {
    let mut guard = symbolizer();
    let s = guard.get_or_insert_with(Symbolizer::default);
    stack_modules(stack).all(|m| s.find(&m.path, &m.build_id).is_some())
}

/// The modules `stack`'s frames are in.
fn stack_modules(stack: &NativeStack) -> impl Iterator<Item = &awaitscope_wire::Module> {
    stack
        .frames
        .iter()
        .filter_map(|f| f.module.and_then(|m| stack.modules.get(m as usize)))
}

/// How many modules' debug info this process has loaded, and where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loads {
    /// By [`load_ahead`], the symboliser not held.
    pub ahead: u64,
    /// By [`symbolize`], the symboliser (and the model, when the model
    /// called it) held while the files were read.
    pub in_place: u64,
}

/// The modules loaded so far by this process (see [`Loads`]).
pub fn loads() -> Loads {
    Loads {
        ahead: LOADED_AHEAD.load(Ordering::Relaxed),
        in_place: LOADED_IN_PLACE.load(Ordering::Relaxed),
    }
}

/// The frame a wait's stack ([`awaitscope_wire::WaitStack`]) awaits at:
/// its innermost of the program's own code, if the stack symbolises to
/// one.
pub fn awaited_at(stack: &NativeStack, pid: Option<u32>) -> Option<NativeFrame> {
    symbolize(stack, pid)
        .frames
        .into_iter()
        .find(|f| f.origin == FrameOrigin::User)
}

/// Symbolises the native stacks of a batch of events from process `pid`
/// into the stalls they follow (the `Stall` of the same poll, earlier in
/// the batch, with no frames yet), and drops them; a wait's stack
/// ([`Event::WaitStack`]) becomes the one frame it awaits at. A recording
/// written so reads on any machine, without the program's binary. A stack
/// that cannot be symbolised whole here is left as it is, for a reader
/// that can. Returns how many stacks were symbolised.
pub fn inline_native_stacks(events: &mut Vec<Event>, pid: Option<u32>) -> usize {
    let mut done = 0;
    let mut i = 0;
    while i < events.len() {
        if let Event::WaitStack(w) = &mut events[i] {
            // A wait keeps the one frame it awaits at.
            if w.at.is_none() && !w.stack.frames.is_empty() {
                if let Some(at) = awaited_at(&w.stack, pid) {
                    w.at = Some(at);
                    w.stack.frames.clear();
                    w.stack.modules.clear();
                    done += 1;
                }
            }
            i += 1;
            continue;
        }
        let Event::NativeStack(ns) = &events[i] else {
            i += 1;
            continue;
        };
        let stall = events[..i].iter().rposition(|e| {
            matches!(e, Event::Stall(st)
                if !st.ended && st.task == ns.task && st.start == ns.start && st.frames.is_empty())
        });
        let Some(j) = stall else {
            i += 1;
            continue;
        };
        let s = symbolize(ns, pid);
        if s.unresolved.is_some() || s.frames.is_empty() {
            i += 1;
            continue;
        }
        if let Event::Stall(st) = &mut events[j] {
            st.frames = s.frames;
        }
        events.remove(i);
        done += 1;
    }
    done
}

/// One module as loaded (or not).
struct Loaded {
    /// Path and build id as the program named it.
    path: String,
    build_id: Vec<u8>,
    /// The debug info, or why there is none.
    loader: Result<addr2line::Loader, String>,
    /// Address -> its frames, innermost first.
    frames: HashMap<u64, Vec<NativeFrame>>,
    /// For the least-recently-used choice.
    used: u64,
}

#[derive(Default)]
struct Symbolizer {
    modules: Vec<Loaded>,
    files: Files,
    /// A clock for `Loaded::used`.
    tick: u64,
}

impl Symbolizer {
    fn stack(&mut self, stack: &NativeStack, pid: Option<u32>) -> Symbolized {
        let mut out = Vec::new();
        let mut unresolved: Vec<String> = Vec::new();
        for f in &stack.frames {
            let Some(m) = f.module.and_then(|m| stack.modules.get(m as usize)) else {
                out.push(unknown(None, f.address));
                continue;
            };
            let i = self.module(&m.path, &m.build_id, pid);
            let loaded = &mut self.modules[i];
            let loader = match &loaded.loader {
                Ok(l) => l,
                Err(why) => {
                    if !unresolved.contains(why) {
                        unresolved.push(why.clone());
                    }
                    out.push(unknown(Some(&m.path), f.address));
                    continue;
                }
            };
            if !loaded.frames.contains_key(&f.address) {
                if loaded.frames.len() >= MAX_ADDRESSES {
                    loaded.frames.clear();
                }
                let found = resolve(loader, f.address, &mut self.files);
                loaded.frames.insert(f.address, found);
            }
            out.extend(loaded.frames[&f.address].iter().cloned());
            if out.len() >= limits::MAX_STACK {
                break;
            }
        }
        out.truncate(limits::MAX_STACK);
        drop_sampler_frames(&mut out);
        origin::fold_std_deps(&mut out);
        Symbolized {
            frames: out,
            unresolved: (!unresolved.is_empty()).then(|| unresolved.join("; ")),
        }
    }

    /// The index of module `(path, build_id)`, loading it if it is not.
    fn module(&mut self, path: &str, build_id: &[u8], pid: Option<u32>) -> usize {
        if let Some(i) = self.find(path, build_id) {
            return i;
        }
        LOADED_IN_PLACE.fetch_add(1, Ordering::Relaxed);
        let loader = load(path, build_id, pid);
        self.insert(path.to_owned(), build_id.to_vec(), loader)
    }

    /// The index of module `(path, build_id)` if it is loaded (marked
    /// used).
    fn find(&mut self, path: &str, build_id: &[u8]) -> Option<usize> {
        self.tick += 1;
        let i = self
            .modules
            .iter()
            .position(|m| m.path == path && m.build_id == build_id)?;
        self.modules[i].used = self.tick;
        Some(i)
    }

    /// Keeps a module just loaded (the least recently used one goes past
    /// [`MAX_MODULES`]); its index.
    fn insert(
        &mut self,
        path: String,
        build_id: Vec<u8>,
        loader: Result<addr2line::Loader, String>,
    ) -> usize {
        self.tick += 1;
        if self.modules.len() >= MAX_MODULES {
            let oldest = (0..self.modules.len())
                .min_by_key(|&i| self.modules[i].used)
                .unwrap_or(0);
            self.modules.swap_remove(oldest);
        }
        self.modules.push(Loaded {
            path,
            build_id,
            loader,
            frames: HashMap::new(),
            used: self.tick,
        });
        self.modules.len() - 1
    }
}

/// The debug info of the module the program loaded from `path` with
/// `build_id`: from `path` if that file is still the one (same build id),
/// else from `/proc/<pid>/exe` if that is.
fn load(path: &str, build_id: &[u8], pid: Option<u32>) -> Result<addr2line::Loader, String> {
    let same = |p: &Path| -> Result<(), String> {
        let found = read_build_id(p)?;
        if build_id.is_empty() || found.as_deref() == Some(build_id) {
            Ok(())
        } else {
            Err(format!(
                "{path} was rebuilt since the program ran (build id {} there, {} when it ran)",
                hex(found.as_deref().unwrap_or_default()),
                hex(build_id)
            ))
        }
    };
    let file = match same(Path::new(path)) {
        Ok(()) => path.to_owned(),
        Err(why) => {
            let exe = pid.map(|p| format!("/proc/{p}/exe"));
            match exe.filter(|e| same(Path::new(e)).is_ok()) {
                Some(e) => e,
                None => return Err(why),
            }
        }
    };
    addr2line::Loader::new(&file).map_err(|e| format!("{path}: {e}"))
}

/// A file's GNU build id (`None`: it has none), reading only its headers
/// and notes. Only a regular file is opened: the path comes from the
/// program's stream, and a FIFO or a device named there would block the
/// reader or never end.
fn read_build_id(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use object::{Object, ReadCache};
    let not_found = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} is not on this machine", path.display()),
        _ => format!("{}: {e}", path.display()),
    };
    if !std::fs::metadata(path).map_err(not_found)?.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let file = std::fs::File::open(path).map_err(not_found)?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| format!("{}: {e}", path.display()))?;
    let id = obj
        .build_id()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(id.map(<[u8]>::to_vec))
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "none".into();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A frame that could not be symbolised: its module's file name and the
/// address in it.
fn unknown(path: Option<&str>, address: u64) -> NativeFrame {
    let name = path
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    NativeFrame {
        function: match name {
            Some(n) => format!("?? ({n}+{address:#x})"),
            None => format!("?? ({address:#x})"),
        },
        file: None,
        line: None,
        origin: FrameOrigin::Runtime,
    }
}

/// The frames at `address` (in the module's own address space),
/// innermost first: the inlined calls from the debug info, or the
/// symbol table's name where there is none.
fn resolve(loader: &addr2line::Loader, address: u64, files: &mut Files) -> Vec<NativeFrame> {
    let symbol = || {
        loader
            .find_symbol(address)
            .map(|s| addr2line::demangle_auto(s.into(), None).into_owned())
    };
    let mut found: Vec<(Option<String>, Option<String>, Option<u32>)> = Vec::new();
    if let Ok(mut it) = loader.find_frames(address) {
        while let Ok(Some(f)) = it.next() {
            let name = f
                .function
                .as_ref()
                .and_then(|n| n.demangle().ok())
                .map(|n| origin::strip_hash(&n).to_owned());
            let (file, line) = f
                .location
                .map_or((None, None), |l| (l.file.map(str::to_owned), l.line));
            if name.is_none() && file.is_none() {
                continue;
            }
            found.push((name, file, line));
        }
    }
    // Debug info with line tables only (`debug = "line-tables-only"`, the
    // release profile users are told to set) may give a location without
    // the function's name: the outermost frame is the symbol's, whose name
    // the symbol table has.
    if let Some(last) = found.last_mut() {
        if last.0.is_none() {
            last.0 = symbol().map(|n| origin::strip_hash(&n).to_owned());
        }
    }
    if found.is_empty() {
        found.push((symbol(), None, None));
    }
    let found = found.into_iter().map(|(name, file, line)| {
        let name = name.map_or_else(|| "??".to_owned(), |n| origin::strip_hash(&n).to_owned());
        (name, file, line)
    });
    found
        .map(|(function, file, line)| {
            let shown = file.map(|f| files.show(Path::new(&f)));
            let origin = match &shown {
                // awaitscope's own code, wherever it was built from.
                Some(s) if s.ours => FrameOrigin::Runtime,
                _ => origin::classify(&function, shown.as_ref().map(|s| s.path.as_str())),
            };
            NativeFrame {
                function,
                file: shown.map(|s| s.path),
                line,
                origin,
            }
        })
        .collect()
}

/// Drops the signal handler's frames (and the trampoline), should the
/// program's walk not have found the interrupted frame: everything up to
/// the handler is the sampler's.
fn drop_sampler_frames(frames: &mut Vec<NativeFrame>) {
    if let Some(i) = frames
        .iter()
        .rposition(|f| f.function.contains("awaitscope::stacks::signal"))
    {
        frames.drain(..=i);
        if frames.first().is_some_and(|f| f.file.is_none()) {
            frames.remove(0); // the trampoline
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use awaitscope_wire::{Module, RawFrame, SpanId};

    #[inline(never)]
    fn a_function_to_find() -> usize {
        a_function_to_find as *const () as usize
    }

    #[cfg(target_os = "linux")]
    use crate::testing::this_executable;

    fn stack(path: &str, build_id: Vec<u8>, address: u64) -> NativeStack {
        NativeStack {
            task: SpanId(1),
            start: 0,
            ts: 0,
            modules: vec![Module {
                path: path.into(),
                build_id,
            }],
            frames: vec![
                RawFrame {
                    module: Some(0),
                    address,
                },
                RawFrame {
                    module: None,
                    address: 0x10,
                },
            ],
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn names_a_function_of_this_binary_with_its_file() {
        let (exe, base) = this_executable();
        let id = read_build_id(Path::new(&exe)).unwrap().unwrap_or_default();
        let at = a_function_to_find() as u64 - base;
        let s = symbolize(&stack(&exe, id, at), None);
        assert_eq!(s.unresolved, None);
        let f = &s.frames[0];
        assert!(f.function.ends_with("a_function_to_find"), "{:?}", s.frames);
        assert_eq!(f.file.as_deref(), Some("collector/src/symbolize/mod.rs"));
        assert_eq!(f.origin, FrameOrigin::User);
        assert_eq!(s.frames[1].function, "?? (0x10)");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_rebuilt_or_missing_binary_is_said_not_guessed() {
        let (exe, base) = this_executable();
        let at = a_function_to_find() as u64 - base;
        let s = symbolize(&stack(&exe, vec![1, 2, 3], at), None);
        let why = s.unresolved.unwrap();
        assert!(why.contains("was rebuilt since the program ran"), "{why}");
        assert!(why.contains("010203 when it ran"), "{why}");
        assert!(s.frames[0].function.starts_with("?? ("), "{:?}", s.frames);
        // The live process's executable is still the one that ran.
        let id = read_build_id(Path::new(&exe)).unwrap().unwrap_or_default();
        let s = symbolize(
            &stack("/nonexistent/bin/app", id, at),
            Some(std::process::id()),
        );
        assert_eq!(s.unresolved, None, "{:?}", s.frames);
        assert!(s.frames[0].function.ends_with("a_function_to_find"));
        let s = symbolize(&stack("/nonexistent/bin/app", vec![9], at), None);
        assert_eq!(
            s.unresolved.as_deref(),
            Some("/nonexistent/bin/app is not on this machine")
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_batch_gets_its_stacks_inlined_into_their_stalls() {
        use awaitscope_wire::{StackState, Stall};
        let (exe, base) = this_executable();
        let id = read_build_id(Path::new(&exe)).unwrap().unwrap_or_default();
        let at = a_function_to_find() as u64 - base;
        let stall = Event::Stall(Box::new(Stall {
            task: SpanId(1),
            start: 0,
            ts: 5,
            ended: false,
            spans: vec![],
            stack: StackState::Sampled,
            frames: vec![],
            sched: None,
        }));
        let mut batch = vec![
            stall.clone(),
            Event::NativeStack(Box::new(stack(&exe, id, at))),
            Event::NativeStack(Box::new(stack("/nonexistent/app", vec![1], at))),
        ];
        assert_eq!(inline_native_stacks(&mut batch, None), 1);
        assert_eq!(batch.len(), 2, "the unresolvable stack stays: {batch:?}");
        let Event::Stall(st) = &batch[0] else {
            panic!("{batch:?}")
        };
        assert!(st.frames[0].function.ends_with("a_function_to_find"));
        assert!(matches!(batch[1], Event::NativeStack(_)));
        // A stack without its stall in the batch stays too.
        let mut alone = vec![Event::NativeStack(Box::new(stack(&exe, vec![], at)))];
        assert_eq!(inline_native_stacks(&mut alone, None), 0);
        assert_eq!(alone.len(), 1);
    }

    /// A wait's stack in a batch becomes the one frame it awaits at (the
    /// innermost of the program's own code), its addresses dropped; one
    /// that cannot be symbolised here keeps them, for a reader that can.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_wait_keeps_the_frame_it_awaits_at() {
        use awaitscope_wire::WaitStack;
        let (exe, base) = this_executable();
        let id = read_build_id(Path::new(&exe)).unwrap().unwrap_or_default();
        let at = a_function_to_find() as u64 - base;
        let wait = |stack| {
            Event::WaitStack(Box::new(WaitStack {
                span: SpanId(4),
                stack,
                at: None,
            }))
        };
        let mut batch = vec![
            wait(stack(&exe, id, at)),
            wait(stack("/nonexistent/app", vec![1], at)),
        ];
        assert_eq!(inline_native_stacks(&mut batch, None), 1);
        let Event::WaitStack(w) = &batch[0] else {
            panic!("{batch:?}")
        };
        let f = w.at.as_ref().expect("the frame it awaits at");
        assert!(f.function.ends_with("a_function_to_find"), "{f:?}");
        assert_eq!(f.file.as_deref(), Some("collector/src/symbolize/mod.rs"));
        assert!(w.stack.frames.is_empty() && w.stack.modules.is_empty());
        let Event::WaitStack(w) = &batch[1] else {
            panic!("{batch:?}")
        };
        assert!(w.at.is_none() && w.stack.frames.len() == 2, "{w:?}");
    }

    /// A module path naming a FIFO (or a device) is refused without
    /// opening it: opening a FIFO waits for a writer, for ever.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_module_that_is_not_a_regular_file_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("app");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let path = fifo.to_string_lossy().into_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(symbolize(&stack(&p, vec![], 0x1000), None));
        });
        let s = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the FIFO was opened: symbolising it never ended");
        assert_eq!(
            s.unresolved,
            Some(format!("{path} is not a regular file")),
            "{s:?}"
        );
        let s = symbolize(&stack("/dev/zero", vec![], 0x1000), None);
        assert_eq!(
            s.unresolved.as_deref(),
            Some("/dev/zero is not a regular file")
        );
    }

    #[test]
    fn drops_the_samplers_frames() {
        let f = |function: &str, file: Option<&str>| NativeFrame {
            function: function.into(),
            file: file.map(Into::into),
            line: None,
            origin: FrameOrigin::Runtime,
        };
        let mut frames = vec![
            f("backtrace::trace", Some("backtrace-0.3.7/src/lib.rs")),
            f("awaitscope::stacks::signal::handler", Some("x.rs")),
            f("__restore_rt", None),
            f("app::work", Some("src/main.rs")),
        ];
        drop_sampler_frames(&mut frames);
        assert_eq!(frames, vec![f("app::work", Some("src/main.rs"))]);
    }
}
