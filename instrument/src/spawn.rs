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
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinError;

use crate::names;

/// A tokio `JoinHandle` that tells awaitscope who awaits the task: while it
/// is polled, it enters a `runtime.join` span naming the awaited task
/// (`task.id`, tokio's task id), so the awaiting task's await tree shows it
/// and the collector records the "awaited by" edge.
#[derive(Debug)]
pub struct JoinHandle<T> {
    inner: tokio::task::JoinHandle<T>,
    span: Option<tracing::Span>,
    /// Where the task was spawned, in the user's code: the join span's
    /// location in traces (its own callsite is in this file).
    spawned_at: &'static std::panic::Location<'static>,
}

impl<T> JoinHandle<T> {
    /// Aborts the task, as `tokio::task::JoinHandle::abort` does: awaiting
    /// the handle then gives a cancelled `JoinError` (unless the task had
    /// finished).
    pub fn abort(&self) {
        self.inner.abort();
    }

    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }

    /// tokio's id of the task, the one [`crate::await_tree()`] and
    /// [`crate::Dump::by_tokio_id`] take.
    pub fn id(&self) -> tokio::task::Id {
        self.inner.id()
    }

    /// The underlying tokio handle. Awaiting it instead of this handle
    /// works the same, but awaitscope no longer sees who awaits the task.
    pub fn into_inner(self) -> tokio::task::JoinHandle<T> {
        self.inner
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let span = this.span.get_or_insert_with(|| {
            let id: u64 = this.inner.id().to_string().parse().unwrap_or(0);
            let loc = this.spawned_at;
            tracing::trace_span!(
                target: names::JOIN_TARGET,
                names::JOIN_SPAN,
                task.id = id,
                loc.file = loc.file(),
                loc.line = loc.line(),
                loc.col = loc.column(),
            )
        });
        let _entered = span.enter();
        Pin::new(&mut this.inner).poll(cx)
    }
}

/// Spawns `future` on the current tokio runtime as a task awaitscope tracks.
///
/// Panics, like `tokio::spawn`, when called outside a runtime.
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    JoinHandle {
        inner: spawn_task("", future),
        span: None,
        spawned_at: std::panic::Location::caller(),
    }
}

/// Like [`spawn`], with a task name shown in reports and the UI.
#[track_caller]
pub fn spawn_named<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    JoinHandle {
        inner: spawn_task(name, future),
        span: None,
        spawned_at: std::panic::Location::caller(),
    }
}

#[cfg(tokio_unstable)]
#[track_caller]
fn spawn_task<F>(name: &str, future: F) -> tokio::task::JoinHandle<F::Output>
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
fn spawn_task<F>(name: &str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    let loc = std::panic::Location::caller();
    let span = tracing::trace_span!(
        target: names::TASK_TARGET,
        parent: None,
        names::SPAWN_SPAN,
        kind = names::KIND_TASK,
        task.name = name,
        loc.file = loc.file(),
        loc.line = loc.line(),
        loc.col = loc.column(),
        task.id = tracing::field::Empty,
    );
    let handle = tokio::spawn(future.instrument(span.clone()));
    let id: u64 = handle.id().to_string().parse().unwrap_or(0);
    span.record(names::TASK_ID, id);
    handle
}
