//! Events about a span reach the model after the span's creation when the
//! producer sent them so, whatever thread each came from: a healthy
//! program's stream counts no `unknown_span_events` and loses nothing.

use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::{Model, Report};
use awaitscope_wire::{Event, TreeNode};

const MS: u64 = 1_000_000;

/// A task spawned on one thread (say the runtime's `block_on` thread) and
/// first polled on a worker, in one batch, as the exporter sends it: the
/// spawner's run first, then the worker's, whose poll of an older task
/// ended before the spawn. The new task's first poll entered a span: its
/// tree (which says no time) goes just before the poll's own event. The
/// tree is about the poll that follows it, after the spawn, not about the
/// worker's previous event, before it: the model knows the task when the
/// tree arrives, counts nothing unknown and keeps the tree.
#[test]
fn a_first_polls_tree_after_a_spawn_on_another_thread_names_a_known_task() {
    let mut b = StreamBuilder::new(21, 1_000);
    b.hello("spawner", None, false);
    // Earlier batch: a worker's task and a span it will wait in.
    b.thread(1);
    let older = b.spawn(&TaskOpts::named("older"), None, MS);
    let outer = b.user_span("outer", None, MS);
    b.flush();
    // One batch: the spawner thread's run, then the worker's.
    b.thread(0);
    let task = b.spawn(&TaskOpts::named("new"), None, 4 * MS);
    b.thread(1);
    b.poll(older, 2 * MS, 3 * MS);
    b.push(Event::PollTree {
        task,
        spans: vec![TreeNode {
            span: outer,
            depth: 0,
        }],
    });
    b.poll_whole(task, 5 * MS, 6 * MS, 1);
    let mut m = Model::default();
    for f in b.take_frames() {
        m.apply(&f);
    }
    let r = Report::from_model(&m);
    assert_eq!(
        r.processes[0].unknown_span_events,
        0,
        "{}",
        r.summary_text()
    );
    let t = r.tasks.iter().find(|t| t.id == task.0).expect("the task");
    assert_eq!(t.polls, 1, "{t:?}");
    assert_eq!(t.await_tree.len(), 1, "{t:?}");
    assert_eq!(t.await_tree[0].name, "outer");
}
