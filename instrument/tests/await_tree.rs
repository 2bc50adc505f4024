//! Await trees of parked tasks, from `Guard::dump()`, with no annotation
//! beyond `.instrument(span)`.

mod support;

use std::time::Duration;

use awaitscope::{Dump, TaskDump};
use support::{run, Flavor};
use tracing::Instrument;

fn task<'a>(dump: &'a Dump, name: &'a str) -> &'a TaskDump {
    let found: Vec<_> = dump.named(name).collect();
    assert_eq!(found.len(), 1, "one task named {name} in\n{dump}");
    found[0]
}

/// Waits (in real time, generously) until every named task is idle and has
/// been polled, then dumps.
async fn settled_dump(guard: &awaitscope::Guard, names: &[&str]) -> Dump {
    for _ in 0..500 {
        let dump = guard.dump();
        let ready = names.iter().all(|n| {
            dump.named(n)
                .next()
                .is_some_and(|t| t.polls > 0 && !t.running && !t.tree.is_empty())
        });
        if ready {
            return dump;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("tasks never settled:\n{}", guard.dump());
}

#[test]
fn join_handle_and_join_branches() {
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        let dump = run(flavor, awaitscope::Builder::new(), |guard| async move {
            let (_never_tx, never_rx) = tokio::sync::oneshot::channel::<()>();
            let (_left_tx, left_rx) = tokio::sync::oneshot::channel::<()>();
            let (_right_tx, right_rx) = tokio::sync::oneshot::channel::<()>();
            let never = awaitscope::spawn_named(
                "never",
                async move {
                    let _ = never_rx.await;
                }
                .instrument(tracing::info_span!("idle_forever")),
            );
            let _joiner = awaitscope::spawn_named(
                "joiner",
                async move {
                    let _ = never.await;
                }
                .instrument(tracing::info_span!("wait_for_never")),
            );
            let (_label_tx, label_rx) = tokio::sync::oneshot::channel::<()>();
            let _labelled = awaitscope::spawn_named("labelled", async move {
                use awaitscope::AwaitPoint;
                let _ = label_rx.await_point("fetch inventory").await;
            });
            let _both = awaitscope::spawn_named("both", async move {
                let _ = tokio::join!(
                    left_rx.instrument(tracing::info_span!("left", side = "l")),
                    right_rx.instrument(tracing::info_span!("right", side = "r")),
                );
            });
            settled_dump(&guard, &["never", "joiner", "both", "labelled"]).await
        });
        let never = task(&dump, "never");
        let joiner = task(&dump, "joiner");
        assert_eq!(joiner.tree.len(), 1, "{flavor:?}:\n{dump}");
        assert!(joiner.tree[0].label.ends_with("wait_for_never"), "{dump}");
        assert_eq!(
            joiner.tree[0].children[0].label,
            format!("awaiting task {} \"never\"", never.id),
            "{flavor:?}:\n{dump}"
        );
        assert_eq!(
            task(&dump, "labelled").tree[0].label,
            "fetch inventory",
            "{dump}"
        );
        // join! branches are siblings.
        let both = task(&dump, "both");
        let labels: Vec<&str> = both.tree.iter().map(|n| n.label.as_str()).collect();
        assert_eq!(
            labels,
            ["await_tree::left{side=l}", "await_tree::right{side=r}"],
            "{flavor:?}:\n{dump}"
        );
        // Spawned from the main future: no parent task, or tokio's
        // `block_on` pseudo-task when tokio instruments it.
        assert!(joiner.spawned_by.is_none_or(|p| dump
            .tasks
            .iter()
            .any(|t| t.id == p && t.kind.as_deref() == Some("block_on"))));
        assert!(dump.to_string().contains("└─ awaiting task"), "{dump}");
    }
}

#[cfg(tokio_unstable)]
#[test]
fn resources_at_the_leaves() {
    use std::sync::Arc;
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        let dump = run(flavor, awaitscope::Builder::new(), |guard| async move {
            let mutex = Arc::new(tokio::sync::Mutex::new(()));
            let (held_tx, held_rx) = tokio::sync::oneshot::channel();
            let (_release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
            let m = mutex.clone();
            let _holder = awaitscope::spawn_named("holder", async move {
                let _g = m.lock().await;
                held_tx.send(()).unwrap();
                let _ = release_rx.await;
            });
            held_rx.await.unwrap();
            let m = mutex.clone();
            let _waiter = awaitscope::spawn_named(
                "waiter",
                async move {
                    let _g = m.lock().await;
                }
                .instrument(tracing::info_span!("update_stock")),
            );
            let _sleeper = awaitscope::spawn_named(
                "sleeper",
                tokio::time::sleep(Duration::from_secs(3600))
                    .instrument(tracing::info_span!("nap")),
            );
            settled_dump(&guard, &["holder", "waiter", "sleeper"]).await
        });
        let holder = task(&dump, "holder");
        let waiter = task(&dump, "waiter");
        let labels = waiter.labels();
        assert_eq!(labels[0], "await_tree::update_stock", "{dump}");
        let leaf = labels[1];
        assert!(
            leaf.starts_with(
                "Mutex::lock: waiting on Mutex created at instrument/tests/await_tree.rs:"
            ),
            "{flavor:?}: {leaf}"
        );
        assert!(
            leaf.ends_with(&format!(", held by task {} \"holder\"", holder.id)),
            "{flavor:?}: {leaf}"
        );
        // The holder waits on its oneshot receiver.
        assert!(
            holder
                .labels()
                .iter()
                .any(|l| l.contains("waiting on Sender|Receiver")),
            "{flavor:?}:\n{dump}"
        );
        let sleeper = task(&dump, "sleeper");
        assert_eq!(sleeper.labels()[0], "await_tree::nap");
        assert!(sleeper.labels()[1].contains("waiting on Sleep"), "{dump}");
    }
}
