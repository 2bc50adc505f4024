//! Causal traces across spawns and queues, asserted frame by frame, on
//! tokio's own task spans (tokio_unstable) and on `awaitscope::spawn`
//! (stable tokio) alike.

mod support;

use awaitscope::{CausalTrace, Context, TraceItem, Traced, WithCausalTrace};
use support::{run, Flavor};
use tracing::{instrument, Instrument};

/// A compact, comparable form of a trace: `span name{fields} @task` per
/// span, `spawn task by task` per boundary, `handoff` per queue.
fn shape(trace: &CausalTrace) -> Vec<String> {
    trace
        .items()
        .into_iter()
        .map(|i| match i {
            TraceItem::Span {
                name, fields, task, ..
            } => {
                let f: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let task = task.and_then(|t| t.name).unwrap_or_else(|| "-".into());
                format!("{name}{{{}}} @{task}", f.join(" "))
            }
            TraceItem::Spawn { task, by, .. } => format!(
                "spawn {} by {}",
                task.name.unwrap_or_default(),
                by.and_then(|b| b.name).unwrap_or_else(|| "-".into())
            ),
            TraceItem::Handoff { from } => format!(
                "handoff from {}",
                from.and_then(|b| b.name).unwrap_or_else(|| "-".into())
            ),
            TraceItem::Remote { traceparent } => format!("remote {traceparent}"),
        })
        .collect()
}

fn builder() -> awaitscope::Builder {
    awaitscope::Builder::new()
}

// --- the waterfall: each step depends on the previous, one step spawned ---

#[instrument]
async fn fetch_inventory(sku: u32) -> CausalTrace {
    CausalTrace::capture()
}

#[instrument]
async fn reserve(order: u32) -> CausalTrace {
    fetch_inventory(42).await
}

#[instrument]
async fn checkout(order: u32) -> CausalTrace {
    awaitscope::spawn_named("inventory-worker", reserve(order))
        .await
        .unwrap()
}

#[test]
fn waterfall_trace_crosses_the_spawn() {
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        let trace = run(flavor, builder(), |_| async {
            awaitscope::spawn_named("http-conn", async {
                checkout(7)
                    .instrument(tracing::info_span!(
                        "request",
                        method = "POST",
                        path = "/checkout"
                    ))
                    .await
            })
            .await
            .unwrap()
        });
        assert_eq!(
            shape(&trace),
            [
                "fetch_inventory{sku=42} @inventory-worker",
                "reserve{order=7} @inventory-worker",
                "spawn inventory-worker by http-conn",
                "checkout{order=7} @http-conn",
                "request{method=POST path=/checkout} @http-conn",
                "spawn http-conn by -",
            ],
            "{flavor:?}"
        );
        // The human form, as documented.
        let text = trace.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0]
            .starts_with("  0: causal::fetch_inventory{sku=42} at instrument/tests/causal.rs:"));
        assert!(lines[0].ends_with("\"inventory-worker\")"), "{text}");
        assert!(
            lines[1].starts_with("  1: causal::reserve{order=7} at "),
            "{text}"
        );
        assert!(
            lines[2].starts_with("  -- task ")
                && lines[2].contains("\"inventory-worker\" spawned at instrument/tests/causal.rs:"),
            "{text}"
        );
        assert!(
            lines[2].contains("by task ") && lines[2].ends_with("\"http-conn\" --"),
            "{text}"
        );
    }
}

// --- parallel fan-out: the failing branch names its branch and the parent ---

#[instrument]
async fn call_service(name: &'static str) -> Result<u32, Traced<String>> {
    tokio::task::yield_now().await;
    if name == "pricing" {
        return Err(format!("{name} unavailable")).with_causal_trace();
    }
    Ok(1)
}

#[instrument]
async fn product_page(id: u32) -> Vec<Result<u32, Traced<String>>> {
    futures::future::join_all([
        call_service("inventory"),
        call_service("pricing"),
        call_service("reviews"),
    ])
    .await
}

#[test]
fn fan_out_failure_names_its_branch_and_common_parent() {
    let results = run(Flavor::MultiThread, builder(), |_| async {
        awaitscope::spawn_named("page", product_page(3))
            .await
            .unwrap()
    });
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.to_string(), "pricing unavailable");
    assert_eq!(
        shape(err.trace()),
        [
            "call_service{name=pricing} @page",
            "product_page{id=3} @page",
            "spawn page by -",
        ]
    );
    assert!(results[0].is_ok() && results[2].is_ok());
    // `{:#}` prints the error with its trace.
    assert!(format!("{err:#}").contains("call_service{name=pricing}"));
}

// --- background job queue: the worker's error names the enqueuing request ---

#[instrument(skip(tx))]
async fn enqueue_email(user: u32, tx: tokio::sync::mpsc::Sender<(u32, Context)>) {
    tx.send((user, Context::current())).await.unwrap();
}

#[instrument]
async fn send_email(user: u32) -> CausalTrace {
    CausalTrace::capture()
}

#[test]
fn job_queue_trace_names_the_request_that_enqueued() {
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        let trace = run(flavor, builder(), |_| async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let worker = awaitscope::spawn_named("email-worker", async move {
                let (user, cx): (u32, Context) = rx.recv().await.unwrap();
                send_email(user).instrument(cx.span()).await
            });
            awaitscope::spawn_named("http-conn", async move {
                enqueue_email(5, tx)
                    .instrument(tracing::info_span!("signup", user = 5))
                    .await
            })
            .await
            .unwrap();
            worker.await.unwrap()
        });
        assert_eq!(
            shape(&trace),
            [
                "send_email{user=5} @email-worker",
                "handoff from http-conn",
                "enqueue_email{user=5} @http-conn",
                "signup{user=5} @http-conn",
                "spawn http-conn by -",
            ],
            "{flavor:?}"
        );
    }
}

// --- three levels of spawns; the middle task and its span end first ---

#[test]
fn trace_survives_the_spawning_span_closing() {
    let trace = run(Flavor::MultiThread, builder(), |_| async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        awaitscope::spawn_named("a", async move {
            async move {
                let b = awaitscope::spawn_named("b", async move {
                    async move {
                        // c outlives b and b's span.
                        awaitscope::spawn_named("c", async move {
                            go_rx.await.unwrap();
                            let trace = async { CausalTrace::capture() }
                                .instrument(tracing::info_span!("c_work"))
                                .await;
                            tx.send(trace).unwrap();
                        });
                    }
                    .instrument(tracing::info_span!("b_span", level = 2))
                    .await
                });
                b.await.unwrap();
            }
            .instrument(tracing::info_span!("a_span", level = 1))
            .await
        })
        .await
        .unwrap();
        // a and b are done, their spans closed: only then does c go on.
        go_tx.send(()).unwrap();
        rx.await.unwrap()
    });
    assert_eq!(
        shape(&trace),
        [
            "c_work{} @c",
            "spawn c by b",
            "b_span{level=2} @b",
            "spawn b by a",
            "a_span{level=1} @a",
            "spawn a by -",
        ]
    );
}

#[test]
fn outside_any_span_the_trace_is_empty() {
    let trace = run(Flavor::CurrentThread, builder(), |_| async {
        CausalTrace::capture()
    });
    assert!(trace.is_empty());
    assert_eq!(trace.to_string(), "  (no spans)\n");
    // Without awaitscope at all, capture is empty too.
    assert!(CausalTrace::capture().is_empty());
}

#[test]
fn traces_and_contexts_cross_threads() {
    // What anyhow/eyre context and queued messages need.
    fn context_value<T: std::fmt::Display + Send + Sync + 'static>() {}
    fn message_value<T: Send + Sync + Clone + 'static>() {}
    context_value::<CausalTrace>();
    message_value::<CausalTrace>();
    message_value::<Context>();
    fn error_value<E: std::error::Error + Send + Sync + 'static>() {}
    error_value::<Traced<std::io::Error>>();
}

#[test]
fn instrumented_spawns_show_each_task_boundary() {
    // The common pattern: the span is created by the spawner and
    // instruments the spawned future.
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        let trace = run(flavor, builder(), |_| async {
            awaitscope::spawn_named(
                "conn",
                async {
                    awaitscope::spawn_named(
                        "worker",
                        async { CausalTrace::capture() }
                            .instrument(tracing::info_span!("job", id = 1)),
                    )
                    .await
                    .unwrap()
                }
                .instrument(tracing::info_span!("request", id = 2)),
            )
            .await
            .unwrap()
        });
        assert_eq!(
            shape(&trace),
            [
                "job{id=1} @worker",
                "spawn worker by conn",
                "request{id=2} @conn",
                "spawn conn by -",
            ],
            "{flavor:?}"
        );
    }
}

#[instrument(err)]
async fn load_profile(user: u32) -> Result<(), String> {
    Err(format!("profile {user} not found"))
}

#[test]
fn instrument_err_errors_are_captured_with_their_trace() {
    let memory = awaitscope::MemoryRecording::new();
    let builder = awaitscope::Builder::new().record_in_memory(&memory);
    run(Flavor::CurrentThread, builder, |_| async {
        awaitscope::spawn_named("profile-page", async { load_profile(9).await })
            .await
            .unwrap()
            .unwrap_err();
    });
    let traces: Vec<Vec<String>> = memory
        .frames()
        .unwrap()
        .into_iter()
        .filter_map(|f| match f.body {
            awaitscope_wire::Body::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .filter_map(|e| match e {
            awaitscope_wire::Event::Log(l) if !l.trace.is_empty() => Some(l.trace),
            _ => None,
        })
        .collect();
    assert_eq!(traces.len(), 1, "the #[instrument(err)] error event");
    assert!(
        traces[0][0].starts_with("0: causal::load_profile{user=9} at "),
        "{:?}",
        traces[0]
    );
    assert!(
        traces[0][0].contains("\"profile-page\")"),
        "{:?}",
        traces[0]
    );
}

#[test]
fn works_as_anyhow_context() {
    let err = run(Flavor::CurrentThread, builder(), |_| async {
        awaitscope::spawn_named("importer", async {
            async {
                use anyhow::Context as _;
                std::fs::read("/nonexistent/awaitscope")
                    .map_err(anyhow::Error::from)
                    .context(CausalTrace::capture())
                    .unwrap_err()
            }
            .instrument(tracing::info_span!("import", batch = 3))
            .await
        })
        .await
        .unwrap()
    });
    // anyhow shows the context (the trace) above the cause.
    let text = format!("{err:#}");
    assert!(text.contains("causal::import{batch=3}"), "{text}");
    assert!(text.contains("\"importer\" spawned at"), "{text}");
    assert!(text.contains("No such file"), "{text}");
}
