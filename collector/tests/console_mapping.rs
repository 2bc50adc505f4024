//! Console's updates, made by hand, through the mapping into the model and
//! the detectors: what the aggregates say is found, and their coarseness
//! makes up nothing (an average of polls hides a long one rather than
//! inventing one; a waker count console lost is not a lost waker; a
//! blocking task's closure is no long poll). Updates with missing fields
//! map without a panic.

#![cfg(feature = "console")]

use std::collections::HashMap;

use awaitscope_collector::console::Mapper;
use awaitscope_collector::{FindingKind, Model};
use console_api::instrument::Update;
use console_api::tasks::{Stats, Task, TaskUpdate};
use console_api::{field, Field, Id, Location, PollStats};

const MS: u64 = 1_000_000;
/// The programs' clock: some time in 2026.
const T0: u64 = 1_780_000_000_000_000_000;

fn ts(ns: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

fn dur(ns: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

fn task(id: u64, name: &str, kind: &str) -> Task {
    let f = |n: &str, v: field::Value| Field {
        metadata_id: None,
        name: Some(field::Name::StrName(n.into())),
        value: Some(v),
    };
    Task {
        id: Some(Id { id }),
        metadata: None,
        kind: 0,
        fields: vec![
            f("kind", field::Value::StrVal(kind.into())),
            f("task.name", field::Value::DebugVal(name.into())),
            f("task.id", field::Value::U64Val(id)),
        ],
        parents: Vec::new(),
        location: Some(Location {
            file: Some("src/main.rs".into()),
            module_path: None,
            line: Some(10 + id as u32),
            column: Some(5),
        }),
    }
}

/// Statistics of a task created at `T0`: `polls` polls taking `busy` in
/// all, the last from `last.0` to `last.1` (ms after `T0`), with wakes and
/// waker counts.
struct S {
    polls: u64,
    busy: u64,
    last: (u64, u64),
    wakes: u64,
    last_wake: Option<u64>,
    clones: u64,
    drops: u64,
}

impl S {
    fn stats(&self) -> Stats {
        Stats {
            created_at: Some(ts(T0)),
            dropped_at: None,
            wakes: self.wakes,
            waker_clones: self.clones,
            waker_drops: self.drops,
            last_wake: self.last_wake.map(|w| ts(T0 + w * MS)),
            poll_stats: Some(PollStats {
                polls: self.polls,
                first_poll: Some(ts(T0 + MS)),
                last_poll_started: Some(ts(T0 + self.last.0 * MS)),
                last_poll_ended: Some(ts(T0 + self.last.1 * MS)),
                busy_time: Some(dur(self.busy * MS)),
            }),
            self_wakes: 0,
            scheduled_time: None,
        }
    }
}

fn update(at_ms: u64, new: Vec<Task>, stats: Vec<(u64, Stats)>) -> Update {
    Update {
        now: Some(ts(T0 + at_ms * MS)),
        task_update: Some(TaskUpdate {
            new_tasks: new,
            stats_update: stats.into_iter().collect::<HashMap<_, _>>(),
            dropped_events: 0,
        }),
        resource_update: None,
        async_op_update: None,
        new_metadata: None,
    }
}

/// The model after `updates`, the input ended.
fn model(updates: &[Update]) -> Model {
    let mut mapper = Mapper::new("http://127.0.0.1:6669");
    let mut m = Model::default();
    for u in updates {
        for f in mapper.update(u) {
            m.apply(&f);
        }
    }
    m.finish();
    m
}

fn kinds(m: &Model) -> Vec<FindingKind> {
    m.findings().list().iter().map(|f| f.kind).collect()
}

/// One idle second after a burst: a hundred polls of a millisecond between
/// two updates, then their last, exact.
fn burst(last_ms: u64) -> Vec<Update> {
    let s0 = S {
        polls: 1,
        busy: 1,
        last: (1, 2),
        wakes: 0,
        last_wake: None,
        clones: 1,
        drops: 0,
    };
    let s1 = S {
        polls: 101,
        busy: 100 + last_ms,
        last: (1500, 1500 + last_ms),
        wakes: 100,
        last_wake: Some(1499),
        clones: 101,
        drops: 100,
    };
    vec![
        update(1000, vec![task(1, "busy", "task")], vec![(1, s0.stats())]),
        update(2000, vec![], vec![(1, s1.stats())]),
        update(3000, vec![], vec![]),
    ]
}

#[test]
fn a_hundred_short_polls_between_two_updates_are_no_long_poll() {
    let m = model(&burst(1));
    assert!(kinds(&m).is_empty(), "{:?}", m.findings().list());
    let p = m.processes().next().unwrap();
    assert!(p.is_console());
    let t = p.tasks.values().next().unwrap();
    assert_eq!(t.name.as_deref(), Some("busy"));
}

#[test]
fn the_last_poll_is_exact_and_a_long_one_is_found() {
    let m = model(&burst(30));
    let f: Vec<_> = m.findings().of_kind(FindingKind::LongPoll).collect();
    assert_eq!(f.len(), 1, "{:?}", m.findings().list());
    assert_eq!(f[0].tasks[0].name.as_deref(), Some("busy"));
    assert_eq!(f[0].tasks[0].spawned_at.as_ref().unwrap().line, 11);
    assert!(f[0].message.contains("30.0ms"), "{}", f[0].message);
}

/// Pending with no waker left (console counts clones and drops), not woken
/// since: lost. With more drops than clones console lost count: not known,
/// not lost.
#[test]
fn wakers_counted_by_console_tell_a_lost_waker() {
    let lost = |clones, drops| {
        let s = S {
            polls: 1,
            busy: 1,
            last: (1, 2),
            wakes: 0,
            last_wake: None,
            clones,
            drops,
        };
        let m = model(&[
            update(1000, vec![task(1, "orphan", "task")], vec![(1, s.stats())]),
            update(2000, vec![], vec![]),
        ]);
        m.findings().of_kind(FindingKind::LostWaker).count()
    };
    assert_eq!(lost(0, 0), 1);
    assert_eq!(lost(2, 2), 1);
    assert_eq!(lost(1, 0), 0, "a waker alive");
    assert_eq!(lost(0, 1), 0, "console lost count");
}

/// A `spawn_blocking` task: console sees its span entered only after the
/// closure ran, a second later; no long poll, no starvation, no lost waker.
#[test]
fn a_blocking_task_is_judged_as_none() {
    let s = S {
        polls: 1,
        busy: 0,
        last: (1000, 1000),
        wakes: 0,
        last_wake: None,
        clones: 0,
        drops: 0,
    };
    let running = Stats {
        poll_stats: None,
        ..s.stats()
    };
    let m = model(&[
        update(500, vec![task(1, "", "blocking")], vec![(1, running)]),
        update(1500, vec![], vec![(1, s.stats())]),
        update(2500, vec![], vec![]),
    ]);
    assert!(kinds(&m).is_empty(), "{:?}", m.findings().list());
}

/// Updates with parts missing (no ids, no statistics, no time) map
/// without a panic.
#[test]
fn updates_with_missing_parts_map_without_a_panic() {
    let mut mapper = Mapper::new("http://127.0.0.1:6669");
    let mut m = Model::default();
    let bare = Task {
        id: None,
        metadata: None,
        kind: 7,
        fields: vec![Field {
            metadata_id: None,
            name: Some(field::Name::NameIdx(99)),
            value: None,
        }],
        parents: Vec::new(),
        location: None,
    };
    let updates = [
        Update::default(),
        update(0, vec![bare.clone(), bare], vec![(0, Stats::default())]),
        update(5, vec![], vec![(42, Stats::default())]),
    ];
    for u in &updates {
        for f in mapper.update(u) {
            m.apply(&f);
        }
    }
    m.finish();
    assert_eq!(m.processes().count(), 1);
}
