//! `awaitscope::spawn`: task tracking and spawn links on any tokio.
//!
//! With `--cfg tokio_unstable`, tokio instruments its own tasks and these
//! functions simply spawn (naming the task). On stable tokio they wrap the
//! future in a task span of their own, so awaitscope still sees the task,
//! its polls, the task that spawned it and the span it was spawned in.
//! What stable tokio cannot give: wakes (so no scheduled time, lost-waker or
//! starvation findings), tokio resources (Mutex holders and waiters, timers),
//! and tasks spawned with plain `tokio::spawn`.

use std::future::Future;

use tokio::task::JoinHandle;

/// Spawns `future` on the current tokio runtime as a task awaitscope tracks.
///
/// Panics, like `tokio::spawn`, when called outside a runtime.
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_task("", future)
}

/// Like [`spawn`], with a task name shown in reports and the UI.
#[track_caller]
pub fn spawn_named<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_task(name, future)
}

#[cfg(tokio_unstable)]
#[track_caller]
fn spawn_task<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if name.is_empty() {
        return tokio::spawn(future);
    }
    match tokio::task::Builder::new().name(name).spawn(future) {
        Ok(handle) => handle,
        Err(e) => panic!("awaitscope::spawn_named: {e}"),
    }
}

#[cfg(not(tokio_unstable))]
#[track_caller]
fn spawn_task<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    let loc = std::panic::Location::caller();
    let span = tracing::trace_span!(
        target: "awaitscope::task",
        parent: None,
        "runtime.spawn",
        kind = "task",
        task.name = name,
        loc.file = loc.file(),
        loc.line = loc.line(),
        loc.col = loc.column(),
    );
    tokio::spawn(future.instrument(span))
}
