//! The program's normal exit ends every recording and stream cleanly, even
//! when the guard is never dropped (leaked, held in a static, or the
//! program calls `std::process::exit`): each exporter still running gets
//! its final drain, `Goodbye` and flush, as if its guard were dropped.
//!
//! Done with the C library's `atexit` (Linux only, where `libc` is a
//! dependency already): Rust has no exit hook of its own, and neither a
//! static's `Drop` nor the main thread's thread-local destructors run on
//! `std::process::exit`, while `atexit` handlers run both on it and after
//! `main` returns, with the exporter thread still alive. Elsewhere, drop the
//! guard. A `kill -9` runs nothing: a recording then ends at the exporter's
//! last flush (every 100 ms).

use std::sync::{Mutex, Once};

use crate::export::Source;

/// Exporters whose guards are alive, with the process that started them (a
/// forked child inherits the list but not the exporter threads).
static LIVE: Mutex<Vec<(u32, Source)>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Stops `source` at exit if its guard has not been dropped by then.
pub(crate) fn register(source: &Source) {
    HOOK.call_once(install);
    lock().push((std::process::id(), source.clone()));
}

/// The guard of `source` was dropped: nothing left to do at exit.
pub(crate) fn forget(source: &Source) {
    lock().retain(|(_, s)| !s.same(source));
}

fn lock() -> std::sync::MutexGuard<'static, Vec<(u32, Source)>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(target_os = "linux")]
fn install() {
    extern "C" fn hook() {
        // A panic cannot unwind out of a C callback: it would abort the
        // exit. Nothing below panics on purpose; make sure.
        let _ = std::panic::catch_unwind(stop_all);
    }
    // SAFETY: `hook` is a plain `extern "C" fn()` that lives for the whole
    // program, as `atexit` requires.
    unsafe {
        libc::atexit(hook);
    }
}

#[cfg(not(target_os = "linux"))]
fn install() {}

/// Stops every exporter of this process still running (each waits at most
/// 150 ms for a collector that does not read).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn stop_all() {
    let pid = std::process::id();
    let live = std::mem::take(&mut *lock());
    for (owner, source) in live {
        if owner == pid {
            source.stop();
        }
    }
}
