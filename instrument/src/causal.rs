//! Causal traces: the chain of spans from where you are back to the request
//! that caused it, across `spawn`s and queues.
//!
//! `tracing-error`'s `SpanTrace` stops at the task boundary: tokio task spans
//! are roots. awaitscope links every task span to the span that was current
//! when the task was spawned, so [`CausalTrace::capture`] can keep walking:
//! through the current task's spans, across into the spawning task, and on to
//! the root. Capturing costs one reference-count increment; the chain is
//! walked and formatted only when displayed.
//!
//! This module reads span nodes; it does not know the span store or the
//! capture. It finds where the current thread is through the [`SpanFinder`]
//! the default subscriber lends it, and the capture, which sits above it,
//! takes the link a [`Context`] leaves for the span about to be created
//! ([`take_pending_link`]) and walks traces of ERROR events with
//! [`CausalTrace::of`].

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use awaitscope_wire::{SpanClass, Value};

use crate::names;
use crate::span_node::{render_value, SpanNode};

thread_local! {
    /// The context a span about to be created on this thread links to.
    static PENDING_LINK: RefCell<Option<Arc<SpanNode>>> = const { RefCell::new(None) };
}

/// The [`Context`] a span about to be created on this thread continues, if
/// [`Context::span`] is creating it: the capture links the new span to it.
pub(crate) fn take_pending_link() -> Option<Arc<SpanNode>> {
    PENDING_LINK
        .try_with(|l| l.borrow_mut().take())
        .ok()
        .flatten()
}

/// Where the current thread is, as a subscriber that keeps span nodes
/// knows it.
#[derive(Default)]
pub(crate) struct Here {
    /// The current span's node.
    pub span: Option<Arc<SpanNode>>,
    /// The node of the task being polled (by the capture that made `span`).
    pub task: Option<Arc<SpanNode>>,
}

/// How causal traces find [`Here`] in the default subscriber without
/// knowing which subscriber it is: awaitscope's span store, and its layer
/// in a `tracing_subscriber` stack, return their `SpanFinder` from
/// `downcast_raw` when asked for this type (as `tracing-error` finds its
/// layer). A dispatcher without one has no span nodes: traces are empty.
pub(crate) struct SpanFinder(pub fn(&tracing::Dispatch) -> Here);

/// Where the current thread is, in the default subscriber.
fn here() -> Here {
    tracing::dispatcher::get_default(|d| d.downcast_ref::<SpanFinder>().map(|f| (f.0)(d)))
        .unwrap_or_default()
}

/// A causal trace: the current span chain, continued across task spawns and
/// queue hand-offs back to the root. Cheap to capture (one pointer), walked
/// and formatted lazily; it keeps what it needs alive, so it stays complete
/// after its spans close.
///
/// ```no_run
/// let trace = awaitscope::CausalTrace::capture();
/// eprintln!("failed here:\n{trace}");
/// ```
#[derive(Clone, Default)]
pub struct CausalTrace {
    leaf: Option<Arc<SpanNode>>,
    /// The task being polled at capture.
    task: Option<Arc<SpanNode>>,
}

/// A task as a causal trace names it: awaitscope's id, which reports and
/// the collector use too, and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRef {
    /// awaitscope's id of the task (the id of its task span).
    pub id: u64,
    /// The task's name, if it has one.
    pub name: Option<String>,
}

/// One step of a causal trace.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceItem {
    /// A span of the chain, with what it recorded and the task it was
    /// created in.
    Span {
        /// Target (module path) of the span.
        target: &'static str,
        /// Span name (for `#[instrument]`, the function name).
        name: &'static str,
        /// The span's fields as recorded so far, each rendered as text.
        fields: Vec<(&'static str, String)>,
        /// Source file of the span's callsite.
        file: Option<&'static str>,
        /// Source line of the span's callsite.
        line: Option<u32>,
        /// The task being polled when the span was created, if any.
        task: Option<TaskRef>,
    },
    /// A task boundary: the spans above ran in `task`, spawned at `at` by
    /// `by` (or from outside any task).
    Spawn {
        /// The spawned task.
        task: TaskRef,
        /// Where it was spawned (file, line).
        at: Option<(String, u32)>,
        /// The task that spawned it.
        by: Option<TaskRef>,
    },
    /// A queue hand-off: the spans above continue a [`Context`] taken in the
    /// spans below.
    Handoff {
        /// The task that took the context ([`Context::current`]), if it was
        /// taken inside one.
        from: Option<TaskRef>,
    },
    /// A hand-off from another process: the spans above continue a
    /// [`Context`] read with [`Context::from_traceparent`]; the chain goes on
    /// in the process that sent it (which a collector seeing both joins).
    Remote {
        /// The `traceparent` the context was read from (version `00`).
        traceparent: String,
    },
}

impl CausalTrace {
    /// The trace of `leaf` and its causes.
    pub(crate) fn of(leaf: Option<Arc<SpanNode>>, task: Option<Arc<SpanNode>>) -> Self {
        Self { leaf, task }
    }

    /// The trace as capped lines, for the wire (`Log` and `Panic` events).
    pub(crate) fn wire_lines(&self) -> Vec<String> {
        if self.leaf.is_none() {
            return Vec::new();
        }
        self.to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "(no spans)")
            .take(awaitscope_wire::limits::MAX_TRACE)
            .map(|l| {
                let mut l = l.to_owned();
                awaitscope_wire::limits::truncate(&mut l);
                l
            })
            .collect()
    }

    /// Captures the trace of the current span.
    pub fn capture() -> Self {
        let Here { span, task } = here();
        Self { leaf: span, task }
    }

    /// Stable id of the innermost span, or 0.
    pub(crate) fn leaf_id(&self) -> u64 {
        self.leaf.as_ref().map_or(0, |n| n.id)
    }

    /// Whether there is no span to show (captured outside any span, or
    /// without the awaitscope layer).
    pub fn is_empty(&self) -> bool {
        self.leaf.is_none() || self.items().is_empty()
    }

    /// Walks the chain: innermost span first, task boundaries and queue
    /// hand-offs in between, the root last.
    pub fn items(&self) -> Vec<TraceItem> {
        let mut items = Vec::new();
        // The task the spans being walked ran in: at first the task that
        // was polled when the trace was captured.
        let mut running = self.task.clone();
        let mut cur = self.leaf.clone();
        // Guards against a (malformed) cycle of links.
        let mut budget = 10_000;
        while let Some(node) = cur {
            budget -= 1;
            if budget == 0 {
                break;
            }
            match node.class {
                // `Runtime::block_on` is the root of the program, not a task
                // anyone spawned.
                SpanClass::Task if is_root(&node) => break,
                // The task's own span, reached through the parents of spans
                // created inside it: its spawn boundary.
                SpanClass::Task => {
                    items.push(spawn_item(&node));
                    running = node.ctx_task_node.clone();
                    cur = node.link.clone();
                }
                SpanClass::User if node.meta.target() == names::CONTEXT_TARGET => {
                    if let Some(remote) = crate::traceparent::remote_of(&node) {
                        items.push(TraceItem::Remote {
                            traceparent: remote.to_string(),
                        });
                        break;
                    }
                    let from = node.link.as_ref().and_then(|l| l.ctx_task_node.clone());
                    items.push(TraceItem::Handoff {
                        from: from.as_deref().and_then(task_ref),
                    });
                    running = from;
                    cur = node.link.clone().or_else(|| node.parent.clone());
                }
                SpanClass::User => {
                    let ran_in = running.clone().or_else(|| node.ctx_task_node.clone());
                    items.push(TraceItem::Span {
                        target: node.meta.target(),
                        name: node.meta.name(),
                        fields: node
                            .named_fields()
                            .into_iter()
                            .map(|(n, v)| (n, render_value(&v)))
                            .collect(),
                        file: node.meta.file(),
                        line: node.meta.line(),
                        task: ran_in.as_deref().and_then(task_ref),
                    });
                    // A span created in another task than the one it ran in
                    // instruments that task's future (`spawn(f.instrument(s))`):
                    // the task was spawned from where the span was created.
                    if let Some(r) = &ran_in {
                        if node.ctx_task != r.id && r.class == SpanClass::Task && !is_root(r) {
                            items.push(spawn_item_by(r, node.ctx_task_node.as_deref()));
                            running = node.ctx_task_node.clone();
                        }
                    }
                    cur = node.parent.clone();
                }
                // tokio's resource spans are not part of the program's chain.
                SpanClass::Resource | SpanClass::AsyncOp | SpanClass::AsyncOpPoll => {
                    cur = node.parent.clone();
                }
            }
        }
        items
    }
}

/// `Runtime::block_on`'s pseudo-task: the root, shown as no task.
fn is_root(node: &SpanNode) -> bool {
    node.class == SpanClass::Task
        && node.field(names::KIND) == Some(Value::Str(names::KIND_BLOCK_ON.into()))
}

/// A task as shown in a trace (none for the root).
fn task_ref(node: &SpanNode) -> Option<TaskRef> {
    (node.class == SpanClass::Task && !is_root(node)).then(|| TaskRef {
        id: node.id,
        name: node.task_name(),
    })
}

/// The spawn boundary of `task`, spawned by the task polled when its span
/// was created.
fn spawn_item(task: &SpanNode) -> TraceItem {
    spawn_item_by(task, task.ctx_task_node.as_deref())
}

fn spawn_item_by(task: &SpanNode, by: Option<&SpanNode>) -> TraceItem {
    TraceItem::Spawn {
        task: TaskRef {
            id: task.id,
            name: task.task_name(),
        },
        at: task.location(),
        by: by.and_then(task_ref),
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}", self.id)?;
        if let Some(n) = &self.name {
            write!(f, " {n:?}")?;
        }
        Ok(())
    }
}

impl fmt::Display for CausalTrace {
    /// One line per span, numbered from the innermost, with a line at each
    /// task boundary:
    ///
    /// ```text
    ///   0: shop::fetch_inventory{sku=42} at examples/shop.rs:31 (task 12 "inventory-worker")
    ///   1: shop::reserve{order=7} at examples/shop.rs:25 (task 12)
    ///   -- task 12 "inventory-worker" spawned at examples/shop.rs:52 by task 3 "http-conn" --
    ///   2: shop::checkout{order=7} at examples/shop.rs:50 (task 3 "http-conn")
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items = self.items();
        if items.is_empty() {
            return writeln!(f, "  (no spans)");
        }
        let mut n = 0;
        let mut last_task = None;
        for item in items {
            match item {
                TraceItem::Span {
                    target,
                    name,
                    fields,
                    file,
                    line,
                    task,
                } => {
                    write!(f, "  {n}: {target}::{name}")?;
                    if !fields.is_empty() {
                        let joined: Vec<String> =
                            fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        write!(f, "{{{}}}", joined.join(" "))?;
                    }
                    if let (Some(file), Some(line)) = (file, line) {
                        write!(f, " at {file}:{line}")?;
                    }
                    if let Some(t) = task {
                        // Name a task on its first frame only.
                        if last_task == Some(t.id) {
                            write!(f, " (task {})", t.id)?;
                        } else {
                            write!(f, " ({t})")?;
                        }
                        last_task = Some(t.id);
                    }
                    writeln!(f)?;
                    n += 1;
                }
                TraceItem::Spawn { task, at, by } => {
                    write!(f, "  -- {task} spawned")?;
                    if let Some((file, line)) = at {
                        write!(f, " at {file}:{line}")?;
                    }
                    if let Some(by) = by {
                        write!(f, " by {by}")?;
                    }
                    writeln!(f, " --")?;
                }
                TraceItem::Handoff { from } => {
                    write!(f, "  -- handed over through a queue")?;
                    if let Some(from) = from {
                        write!(f, " from {from}")?;
                    }
                    writeln!(f, " --")?;
                }
                TraceItem::Remote { traceparent } => {
                    writeln!(
                        f,
                        "  {}{traceparent} --",
                        awaitscope_wire::names::REMOTE_HANDOFF_PREFIX
                    )?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CausalTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An error with the causal trace of where it was made.
///
/// ```no_run
/// use awaitscope::WithCausalTrace;
/// fn parse(s: &str) -> Result<u32, awaitscope::Traced<std::num::ParseIntError>> {
///     s.parse::<u32>().with_causal_trace()
/// }
/// ```
pub struct Traced<E> {
    error: E,
    trace: CausalTrace,
}

impl<E> Traced<E> {
    /// Wraps `error` with the trace of the current span.
    pub fn new(error: E) -> Self {
        Self {
            error,
            trace: CausalTrace::capture(),
        }
    }

    /// The error the trace is attached to.
    pub fn error(&self) -> &E {
        &self.error
    }

    /// The causal trace of where the error was wrapped: the span chain
    /// then, continued across spawns and queue hand-offs.
    pub fn trace(&self) -> &CausalTrace {
        &self.trace
    }

    /// The error, without its trace.
    pub fn into_inner(self) -> E {
        self.error
    }
}

impl<E: fmt::Display> fmt::Display for Traced<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)?;
        if f.alternate() && !self.trace.is_empty() {
            write!(f, "\n{}", self.trace)?;
        }
        Ok(())
    }
}

impl<E: fmt::Debug> fmt::Debug for Traced<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?}", self.error)?;
        write!(f, "{}", self.trace)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Traced<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Attaches a [`CausalTrace`] to errors.
pub trait WithCausalTrace<T, E> {
    /// Maps the error to a [`Traced`] error carrying the current causal trace.
    fn with_causal_trace(self) -> Result<T, Traced<E>>;
}

impl<T, E> WithCausalTrace<T, E> for Result<T, E> {
    fn with_causal_trace(self) -> Result<T, Traced<E>> {
        self.map_err(Traced::new)
    }
}

/// The causal context of where it was taken, to carry in a message through a
/// channel or queue. The consumer enters it, so causal traces (and the
/// collector) see that the work continues the producer's request.
///
/// ```no_run
/// # async fn f(tx: tokio::sync::mpsc::Sender<(u32, awaitscope::Context)>,
/// #            mut rx: tokio::sync::mpsc::Receiver<(u32, awaitscope::Context)>) {
/// tx.send((7, awaitscope::Context::current())).await.unwrap();
/// // ... in the worker:
/// let (job, cx) = rx.recv().await.unwrap();
/// let _entered = cx.enter();
/// # }
/// ```
///
/// Across processes, the context travels as a W3C `traceparent` header
/// value: [`Context::traceparent`] on the producer's side,
/// [`Context::from_traceparent`] on the consumer's (see
/// `crate::traceparent`).
#[derive(Clone, Default)]
pub struct Context {
    pub(crate) node: Option<Arc<SpanNode>>,
    /// The task being polled where the context was taken.
    pub(crate) task: Option<Arc<SpanNode>>,
    /// The span in another process this context continues
    /// ([`Context::from_traceparent`]).
    pub(crate) remote: Option<crate::traceparent::TraceParent>,
    /// OpenTelemetry's ids of the span the context was taken in, when
    /// `tracing-opentelemetry` follows it.
    pub(crate) otel: Option<crate::traceparent::TraceParent>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("span", &self.node.as_ref().map(|n| n.id))
            .field("remote", &self.remote.map(|r| r.to_string()))
            .finish()
    }
}

impl Context {
    /// The context of the current span.
    pub fn current() -> Self {
        let Here { span, task } = here();
        Self {
            node: span,
            task,
            remote: None,
            #[cfg(feature = "opentelemetry")]
            otel: crate::traceparent::otel::current(),
            #[cfg(not(feature = "opentelemetry"))]
            otel: None,
        }
    }

    /// A span (`awaitscope.context`) that continues this context: spans
    /// created inside it have the context's chain as their causal parent.
    /// Instrument a future with it, or enter it.
    pub fn span(&self) -> tracing::Span {
        if let Some(remote) = &self.remote {
            let span = tracing::info_span!(
                target: names::CONTEXT_TARGET,
                names::CONTEXT_SPAN,
                traceparent = %remote
            );
            #[cfg(feature = "opentelemetry")]
            crate::traceparent::otel::set_parent(&span, remote);
            return span;
        }
        let _ = PENDING_LINK.try_with(|l| *l.borrow_mut() = self.node.clone());
        let span = tracing::info_span!(target: names::CONTEXT_TARGET, names::CONTEXT_SPAN);
        // Not consumed if the layer is absent or the span disabled.
        let _ = take_pending_link();
        span
    }

    /// Enters [`Context::span`] until the guard drops (in synchronous code;
    /// for async code use `fut.instrument(cx.span())`).
    pub fn enter(&self) -> tracing::span::EnteredSpan {
        self.span().entered()
    }
}
