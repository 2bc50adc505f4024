//! Two processes joined by a queue, in one model: the consumer's error
//! finding's trace continues in the producer's task (whichever process's
//! frames come first), and the producer's task detail shows the finding
//! its hand-over led to: the link both ways.

mod common;

use awaitscope_collector::config::MS;
use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::Model;
use awaitscope_tui::snapshot::{Snapshot, TaskKey};
use awaitscope_tui::ui::app::{Action, App, View};
use awaitscope_wire::{Frame, SpanId};
use common::draw;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const IDS: ([u8; 16], [u8; 8]) = (
    [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ],
    [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
);

/// The producer: task `handle_signup` sends a context from its request span.
fn producer() -> (Vec<Frame>, SpanId) {
    let mut b = StreamBuilder::new(100, 1_000);
    b.hello("queue_api", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("handle_signup"), None, 0);
    let req = b.user_span("handle_signup", None, MS);
    b.enter(t, MS);
    b.handover(
        req,
        t,
        IDS,
        &[
            &format!("0: queue_api::handle_signup{{user=3}} at examples/examples/queue_api.rs:53 (task {} \"handle_signup\")", t.0),
            &format!("-- task {} \"handle_signup\" spawned at examples/examples/queue_api.rs:44 --", t.0),
        ],
        2 * MS,
    );
    b.exit(t, 3 * MS);
    b.goodbye();
    (b.take_frames(), t)
}

/// The consumer: its job fails inside a context read from the producer.
fn consumer() -> Vec<Frame> {
    let mut b = StreamBuilder::new(200, 2_000);
    b.hello("queue_worker", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("welcome_email_job"), None, 0);
    let s = b.user_span("send_welcome_email", None, MS);
    b.enter(t, MS);
    b.error_traced(
        Some(t),
        Some(s),
        "welcome email failed",
        &[
            &format!("0: queue_worker::send_welcome_email{{user=3}} at examples/examples/queue_worker.rs:57 (task {} \"welcome_email_job\")", t.0),
            &format!("-- handed over through a queue from traceparent {TP} --"),
        ],
        2 * MS,
    );
    b.exit(t, 3 * MS);
    b.goodbye();
    b.take_frames()
}

fn model(consumer_first: bool) -> (Model, SpanId) {
    let (p, t) = producer();
    let c = consumer();
    let mut m = Model::default();
    let order = if consumer_first { [c, p] } else { [p, c] };
    for f in order.iter().flatten() {
        m.apply(f);
    }
    m.finish();
    (m, t)
}

#[test]
fn the_consumers_trace_continues_in_the_producer_whatever_comes_first() {
    for consumer_first in [false, true] {
        let (m, t) = model(consumer_first);
        let f = m
            .findings()
            .list()
            .iter()
            .find(|f| f.kind == awaitscope_collector::FindingKind::Error)
            .expect("the error finding");
        assert_eq!(
            f.trace[1],
            format!(
                "-- handed over through a queue from process queue_api (pid 100), task {} \"handle_signup\" --",
                t.0
            ),
            "{:#?}",
            f.trace
        );
        assert!(
            f.trace[2].starts_with("1: queue_api::handle_signup{user=3}"),
            "{:#?}",
            f.trace
        );
        assert_eq!(f.trace.len(), 4, "{:#?}", f.trace);
    }
}

#[test]
fn the_producers_task_shows_where_its_hand_over_failed() {
    let (m, t) = model(false);
    let snap = Snapshot::build(&m, None);
    let proc = snap.processes.iter().position(|p| p.pid == 100).unwrap() as u16;
    let key = TaskKey { proc, id: t.0 };
    let snap = Snapshot::build(&m, Some(key));
    let (_, d) = snap.detail.as_ref().expect("detail");
    assert_eq!(d.handed_over_to.len(), 1, "{:?}", d.handed_over_to);
    assert!(
        d.handed_over_to[0].starts_with("error in queue_worker (pid 200): "),
        "{}",
        d.handed_over_to[0]
    );
    // Drawn in the task's detail view.
    let mut a = App::new(Snapshot::build(&m, None));
    a.selected = Some(key);
    a.rebuild();
    a.apply(Action::Enter);
    assert_eq!(a.view, View::Detail);
    common::refresh(&mut a, &m);
    let out = draw(&a, 160, 40, false);
    assert!(out.contains("Handed over to other processes"), "{out}");
    assert!(out.contains("error in queue_worker (pid 200)"), "{out}");
    // A task of the consumer shows no such link.
    let other = Snapshot::build(&m, None);
    let ck = other
        .tasks
        .iter()
        .find(|r| r.name == "welcome_email_job")
        .unwrap()
        .key;
    let snap = Snapshot::build(&m, Some(ck));
    assert!(snap.detail.unwrap().1.handed_over_to.is_empty());
}
