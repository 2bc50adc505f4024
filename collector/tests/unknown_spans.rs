//! Events about a span reach the model after the span's creation when the
//! producer sent them so, whatever thread each came from: a healthy
//! program's stream counts no `unknown_span_events` and loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use awaitscope_collector::ingest::recording;
use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::{Model, Report};
use awaitscope_wire::{Event, SpanId, TreeNode, WakeOp};
use tracing_subscriber::layer::SubscriberExt;

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

/// Tasks spawned one after the other from a plain thread onto a runtime
/// whose thread polls another task all along: each new task's first poll
/// (which sends its tree) comes right after that thread's poll of the other
/// task, from before the spawn, in the same drain. A real recording of
/// this healthy program names no span the collector never saw created.
#[test]
fn tasks_spawned_from_one_thread_and_polled_on_another_are_all_known() {
    const TASKS: usize = 300;
    let memory = awaitscope::MemoryRecording::new();
    let (layer, guard) = awaitscope::Builder::new()
        .no_stream()
        .record_in_memory(&memory)
        .build();
    let dispatch = awaitscope::scoped_dispatch(tracing_subscriber::registry().with(layer));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (d, stop) = (dispatch.clone(), stop.clone());
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&d, || {
                rt.block_on(async {
                    // Polled all along: the worker's records keep coming.
                    while !stop.load(Ordering::Relaxed) {
                        let busy = Instant::now();
                        while busy.elapsed() < Duration::from_micros(20) {
                            std::hint::spin_loop();
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
        })
    };
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        let _rt = handle.enter();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..TASKS {
            let tx = tx.clone();
            awaitscope::spawn_named("job", async move {
                tx.send(i).unwrap();
            });
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the worker polls the task");
        }
    });
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    drop(guard);
    let mut m = Model::default();
    recording::load_reader(&mut m, "memory", &memory.bytes()[..]).expect("a recording");
    m.finish();
    let r = Report::from_model(&m);
    assert_eq!(r.dropped.total, 0, "{:?}", r.dropped);
    let jobs = r.tasks.iter().filter(|t| t.name.as_deref() == Some("job"));
    assert_eq!(jobs.count(), TASKS, "{}", r.summary_text());
    assert_eq!(
        r.processes[0].unknown_span_events,
        0,
        "{}",
        r.summary_text()
    );
}

/// The first event about a span the model never saw created is logged
/// once, at debug, with its kind and span (what tells a creation lost by
/// the capture from a batch merged out of order); the later ones are only
/// counted.
#[test]
fn the_first_unknown_event_is_logged_once_with_its_kind_and_span() {
    use std::sync::Mutex;
    use tracing::field::{Field, Visit};

    /// Each event's fields, as `name=value` text.
    struct Lines(Arc<Mutex<Vec<String>>>);
    struct Text(String);
    impl Visit for Text {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={v:?} ", f.name()));
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let mut t = Text(String::new());
            e.record(&mut t);
            self.0.lock().unwrap().push(t.0);
        }
    }

    let mut b = StreamBuilder::new(21, 1_000);
    b.hello("p", None, false);
    b.thread(0);
    let known = b.spawn(&TaskOpts::named("known"), None, MS);
    b.poll(known, 2 * MS, 3 * MS);
    b.push(Event::Wake {
        task: SpanId(777),
        op: WakeOp::Wake,
        by: None,
        ts: 4 * MS,
    });
    b.push(Event::Enter {
        span: SpanId(778),
        ts: 5 * MS,
    });
    b.flush();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Lines(lines.clone()));
    let mut m = Model::default();
    tracing::subscriber::with_default(subscriber, || {
        for f in b.take_frames() {
            m.apply(&f);
        }
    });
    assert_eq!(Report::from_model(&m).processes[0].unknown_span_events, 2);
    let lines = lines.lock().unwrap();
    let logged: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("unknown_span_events"))
        .collect();
    assert_eq!(logged.len(), 1, "{lines:?}");
    assert!(
        logged[0].contains("span=777") && logged[0].contains("event=\"Wake\""),
        "{}",
        logged[0]
    );
}
