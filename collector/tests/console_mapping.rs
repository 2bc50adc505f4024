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

/// The spans the mapping makes for `updates`: (callsite, fields' first
/// value) of each `SpanNew`, in order.
fn spans_made(updates: &[Update]) -> Vec<(u32, String)> {
    use awaitscope_wire::{Body, Event, Value};
    let mut mapper = Mapper::new("http://127.0.0.1:6669");
    let mut made = Vec::new();
    for u in updates {
        for f in mapper.update(u) {
            let Body::Events(evs) = f.body else { continue };
            for e in evs {
                if let Event::SpanNew(s) = e {
                    let first = match s.fields.first().map(|f| &f.value) {
                        Some(Value::Str(v)) => v.clone(),
                        _ => String::new(),
                    };
                    made.push((s.callsite, first));
                }
            }
        }
    }
    made
}

/// A resource of console's: `ty` (`Sleep`, `Mutex`...), of `kind`, inside
/// resource `parent` if any (then internal).
fn resource(
    id: u64,
    ty: &str,
    kind: &str,
    parent: Option<u64>,
) -> console_api::resources::Resource {
    use console_api::resources::resource;
    console_api::resources::Resource {
        id: Some(Id { id }),
        kind: Some(resource::Kind {
            kind: Some(resource::kind::Kind::Other(kind.into())),
        }),
        metadata: None,
        concrete_type: ty.into(),
        location: None,
        is_internal: parent.is_some(),
        parent_resource_id: parent.map(|id| Id { id }),
    }
}

/// An async op of console's: `source` on `resource`.
fn async_op(id: u64, source: &str, resource: u64) -> console_api::async_ops::AsyncOp {
    console_api::async_ops::AsyncOp {
        id: Some(Id { id }),
        metadata: None,
        source: source.into(),
        parent_async_op_id: None,
        resource_id: Some(Id { id: resource }),
    }
}

/// Statistics of a task created at `T0`, polled once for a millisecond,
/// that ended `end_ms` after `T0`.
fn ended_at(end_ms: u64) -> Stats {
    Stats {
        dropped_at: Some(ts(T0 + end_ms * MS)),
        ..S {
            polls: 1,
            busy: 1,
            last: (1, 2),
            wakes: 0,
            last_wake: None,
            clones: 0,
            drops: 0,
        }
        .stats()
    }
}

/// What console sends a new subscriber of a program that ran before it
/// connected: its first update has everything console retains (a task
/// and a timer that closed already included), and its next update has
/// them all again (console never sent them in an update of its own). Each
/// is made once, and the model has one task.
#[test]
fn what_console_sends_again_after_connecting_is_made_once() {
    use console_api::async_ops::{AsyncOpUpdate, Stats as OpStats};
    use console_api::resources::{ResourceUpdate, Stats as ResStats};
    let done = ended_at(5);
    let timer = resource(30, "Sleep", "timer", None);
    let timer_stats = ResStats {
        created_at: Some(ts(T0 + MS)),
        dropped_at: Some(ts(T0 + 4 * MS)),
        attributes: Vec::new(),
    };
    let op = async_op(40, "Sleep::new_timeout", 30);
    let op_stats = OpStats {
        created_at: Some(ts(T0 + MS)),
        dropped_at: Some(ts(T0 + 4 * MS)),
        task_id: Some(Id { id: 1 }),
        poll_stats: None,
        attributes: Vec::new(),
    };
    let listed = |at_ms: u64| {
        let mut u = update(at_ms, vec![task(1, "early", "task")], vec![(1, done)]);
        u.resource_update = Some(ResourceUpdate {
            new_resources: vec![timer.clone()],
            stats_update: HashMap::from([(30, timer_stats.clone())]),
            new_poll_ops: Vec::new(),
            dropped_events: 0,
        });
        u.async_op_update = Some(AsyncOpUpdate {
            new_async_ops: vec![op.clone()],
            stats_update: HashMap::from([(40, op_stats.clone())]),
            dropped_events: 0,
        });
        u
    };
    let updates = [listed(100), listed(1100), update(2100, vec![], vec![])];
    let made = spans_made(&updates);
    let count = |cs: u32| made.iter().filter(|m| m.0 == cs).count();
    assert_eq!(count(1), 1, "the task: {made:?}");
    assert_eq!(count(2), 1, "the timer: {made:?}");
    assert_eq!(count(3), 1, "its async op: {made:?}");
    let m = model(&updates);
    let p = m.processes().next().expect("the process");
    assert_eq!(p.tasks.len() + p.completed.len(), 1);
    // A later span reusing the task's id (created later) is another task.
    let mut again = task(1, "later", "task");
    again.fields.truncate(2);
    let later = Stats {
        created_at: Some(ts(T0 + 3000 * MS)),
        dropped_at: None,
        ..done
    };
    let mut with_later = updates.to_vec();
    with_later.push(update(3100, vec![again], vec![(1, later)]));
    assert_eq!(
        spans_made(&with_later).iter().filter(|m| m.0 == 1).count(),
        2
    );
}

/// A console attribute `name` of value `v`.
fn attr(name: &str, v: field::Value) -> console_api::Attribute {
    console_api::Attribute {
        field: Some(Field {
            metadata_id: None,
            name: Some(field::Name::StrName(name.into())),
            value: Some(v),
        }),
        unit: None,
    }
}

/// Statistics of a resource created at `T0`, with attribute `a`.
fn res_stats(a: console_api::Attribute) -> console_api::resources::Stats {
    console_api::resources::Stats {
        created_at: Some(ts(T0)),
        dropped_at: None,
        attributes: vec![a],
    }
}

/// Two tasks each holding a Mutex and waiting for the other's, as
/// console-subscriber sent them in a recording where the deadlock went
/// unseen: the first update says one Mutex is not locked (`locked` false)
/// while the semaphore inside it has no permit left, and the async op that
/// took it obtained its permit (with `permits_late`, the acquires' permits
/// come only in the next update).
fn opposite_locks(permits_late: bool) -> Vec<Update> {
    use console_api::async_ops::{AsyncOpUpdate, Stats as OpStats};
    use console_api::resources::{PollOp, ResourceUpdate};
    let res = |id: u64, ty: &str, parent: Option<u64>| resource(id, ty, "Sync", parent);
    let op = async_op;
    // An op of `task`, polled twice; an `Acquire::new` asked for one
    // permit and `got` it.
    let op_stats = |task: u64, dropped: Option<u64>, got: Option<u64>| OpStats {
        created_at: Some(ts(T0 + MS)),
        dropped_at: dropped.map(|d| ts(T0 + d * MS)),
        task_id: Some(Id { id: task }),
        poll_stats: Some(PollStats {
            polls: 2,
            first_poll: Some(ts(T0 + MS)),
            last_poll_started: Some(ts(T0 + MS)),
            last_poll_ended: Some(ts(T0 + 2 * MS)),
            busy_time: Some(dur(MS)),
        }),
        attributes: got.map_or_else(Vec::new, |g| {
            vec![
                attr("permits_requested", field::Value::U64Val(1)),
                attr("permits_obtained", field::Value::U64Val(g)),
            ]
        }),
    };
    let waiting = S {
        polls: 2,
        busy: 1,
        last: (102, 103),
        wakes: 1,
        last_wake: Some(102),
        clones: 2,
        drops: 1,
    };
    // Mutex 4 (semaphore 5) taken by task 8, Mutex 6 (semaphore 7) by
    // task 9; console says 6 is free. Which task obtained each
    // semaphore's permit: in this update, or (`permits_late`) only in the
    // next.
    let first = |task: u64| match permits_late {
        false => op_stats(task, Some(2), Some(1)),
        true => op_stats(task, None, None),
    };
    let locks = ResourceUpdate {
        new_resources: vec![
            res(4, "Mutex", None),
            res(5, "Semaphore", Some(4)),
            res(6, "Mutex", None),
            res(7, "Semaphore", Some(6)),
        ],
        stats_update: HashMap::from([
            (4, res_stats(attr("locked", field::Value::BoolVal(true)))),
            (5, res_stats(attr("permits", field::Value::U64Val(0)))),
            (6, res_stats(attr("locked", field::Value::BoolVal(false)))),
            (7, res_stats(attr("permits", field::Value::U64Val(0)))),
        ]),
        new_poll_ops: Vec::new(),
        dropped_events: 0,
    };
    let mut u1 = update(
        180,
        vec![
            task(8, "transfer-ab", "task"),
            task(9, "transfer-ba", "task"),
        ],
        vec![(8, waiting.stats()), (9, waiting.stats())],
    );
    u1.resource_update = Some(locks);
    u1.async_op_update = Some(AsyncOpUpdate {
        new_async_ops: vec![
            op(10, "Mutex::lock", 4),
            op(11, "Acquire::new", 5),
            op(12, "Mutex::lock", 6),
            op(13, "Acquire::new", 7),
        ],
        stats_update: HashMap::from([
            (10, op_stats(8, Some(2), None)),
            (11, first(8)),
            (12, op_stats(9, Some(2), None)),
            (13, first(9)),
        ]),
        dropped_events: 0,
    });
    // Each task now waits for the other's Mutex.
    let poll = |task: u64, resource: u64, op: u64, name: &str| PollOp {
        metadata: None,
        resource_id: Some(Id { id: resource }),
        name: name.into(),
        task_id: Some(Id { id: task }),
        async_op_id: Some(Id { id: op }),
        is_ready: false,
    };
    let mut u2 = update(1000, vec![], vec![]);
    u2.resource_update = Some(ResourceUpdate {
        new_resources: Vec::new(),
        stats_update: HashMap::new(),
        new_poll_ops: vec![
            poll(8, 7, 21, "poll_acquire"),
            poll(8, 6, 20, "poll"),
            poll(9, 5, 23, "poll_acquire"),
            poll(9, 4, 22, "poll"),
        ],
        dropped_events: 0,
    });
    u2.async_op_update = Some(AsyncOpUpdate {
        new_async_ops: vec![
            op(20, "Mutex::lock", 6),
            op(21, "Acquire::new", 7),
            op(22, "Mutex::lock", 4),
            op(23, "Acquire::new", 5),
        ],
        stats_update: {
            let mut s = HashMap::from([
                (20, op_stats(8, None, None)),
                (21, op_stats(8, None, Some(0))),
                (22, op_stats(9, None, None)),
                (23, op_stats(9, None, Some(0))),
            ]);
            if permits_late {
                s.insert(11, op_stats(8, Some(2), Some(1)));
                s.insert(13, op_stats(9, Some(2), Some(1)));
            }
            s
        },
        dropped_events: 0,
    });
    vec![
        u1,
        u2,
        update(2000, vec![], vec![]),
        update(3000, vec![], vec![]),
    ]
}

/// The number of holders of each Mutex of the model's process, in the order
/// their spans were made.
fn mutex_holders(m: &Model) -> Vec<usize> {
    let p = m.processes().next().expect("the process");
    let mut held: Vec<_> = p
        .resources
        .iter()
        .filter(|(_, r)| r.concrete_type == "Mutex")
        .map(|(id, r)| (*id, r.holders.len()))
        .collect();
    held.sort_unstable();
    held.into_iter().map(|h| h.1).collect()
}

/// The Mutex whose semaphore has no permit left is held, by the task of
/// the op that took it, and the deadlock of [`opposite_locks`] is found.
#[test]
fn a_mutex_whose_semaphore_has_no_permit_left_is_held() {
    let updates = opposite_locks(false);
    let m = model(&updates);
    assert!(
        kinds(&m).contains(&FindingKind::Deadlock),
        "{:?}",
        kinds(&m)
    );
    assert_eq!(mutex_holders(&m), vec![1, 1], "each Mutex held by its task");
    // The semaphore of Mutex 6 gets its permit back (its guard dropped):
    // console says nothing new of the Mutex, which it told free already,
    // and the Mutex is free again.
    let mut released = update(3500, vec![], vec![]);
    released.resource_update = Some(console_api::resources::ResourceUpdate {
        new_resources: Vec::new(),
        stats_update: HashMap::from([(7, res_stats(attr("permits", field::Value::U64Val(1))))]),
        new_poll_ops: Vec::new(),
        dropped_events: 0,
    });
    let mut more = updates;
    more.push(released);
    assert_eq!(mutex_holders(&model(&more)), vec![1, 0]);
}

/// console-subscriber publishes what it drained so far: a lock's state
/// (its semaphore's permits) and the acquire that took the permit are
/// separate events, and may come in two updates. The holder told an
/// update after the lock's state is the lock's holder all the same.
#[test]
fn a_lock_whose_holder_console_tells_an_update_later_is_held_by_it() {
    let m = model(&opposite_locks(true));
    assert!(
        kinds(&m).contains(&FindingKind::Deadlock),
        "{:?}",
        kinds(&m)
    );
    assert_eq!(mutex_holders(&m), vec![1, 1], "each Mutex held by its task");
}

/// An async op whose resource closed while console said nothing of the
/// op's own end is closed with it: no span of the made-up process stays
/// open for ever.
#[test]
fn an_op_whose_resource_closed_is_closed() {
    use awaitscope_wire::{Body, Event, SpanId};
    use console_api::async_ops::{AsyncOpUpdate, Stats as OpStats};
    use console_api::resources::{ResourceUpdate, Stats as ResStats};
    let timer = |dropped: Option<u64>| ResStats {
        created_at: Some(ts(T0 + MS)),
        dropped_at: dropped.map(|d| ts(T0 + d * MS)),
        attributes: Vec::new(),
    };
    let mut u1 = update(100, vec![task(1, "sleeper", "task")], vec![]);
    u1.resource_update = Some(ResourceUpdate {
        new_resources: vec![resource(30, "Sleep", "timer", None)],
        stats_update: HashMap::from([(30, timer(None))]),
        new_poll_ops: Vec::new(),
        dropped_events: 0,
    });
    u1.async_op_update = Some(AsyncOpUpdate {
        new_async_ops: vec![async_op(40, "Sleep::new_timeout", 30)],
        stats_update: HashMap::from([(
            40,
            OpStats {
                created_at: Some(ts(T0 + MS)),
                dropped_at: None,
                task_id: Some(Id { id: 1 }),
                poll_stats: None,
                attributes: Vec::new(),
            },
        )]),
        dropped_events: 0,
    });
    let mut u2 = update(1100, vec![], vec![]);
    u2.resource_update = Some(ResourceUpdate {
        new_resources: Vec::new(),
        stats_update: HashMap::from([(30, timer(Some(500)))]),
        new_poll_ops: Vec::new(),
        dropped_events: 0,
    });
    let mut mapper = Mapper::new("http://127.0.0.1:6669");
    let (mut made, mut closed) = (Vec::new(), Vec::new());
    for u in [u1, u2] {
        for f in mapper.update(&u) {
            let Body::Events(evs) = f.body else { continue };
            for e in evs {
                match e {
                    Event::SpanNew(s) if s.callsite != 1 => made.push(s.id),
                    Event::Close { span, ts, .. } => closed.push((span, ts)),
                    _ => {}
                }
            }
        }
    }
    assert_eq!(made.len(), 2, "the timer and its op");
    let when = |s: SpanId| closed.iter().find(|c| c.0 == s).map(|c| c.1);
    for s in &made {
        assert!(when(*s).is_some(), "{s:?} never closed: {closed:?}");
    }
    assert_eq!(when(made[0]), when(made[1]), "closed with its timer");
}

/// A program whose tasks have all ended, connected to again: console
/// sends the tasks it retains, and the program is the same. Another
/// program on the same address (restarted), whose task has the same id
/// but another creation time, is a new one.
#[test]
fn a_program_whose_tasks_all_ended_is_told_from_a_restarted_one() {
    let done = ended_at(5);
    let mut mapper = Mapper::new("http://127.0.0.1:6669");
    mapper.update(&update(100, vec![task(1, "once", "task")], vec![(1, done)]));
    assert_eq!(mapper.live_tasks(), 0);
    // The same program: its task as console retains it.
    let again = update(5000, vec![task(1, "once", "task")], vec![(1, done)]);
    assert!(mapper.same_program(&again));
    // A program started later on the same address: its first task has
    // the same id, created 4 s after the first program's.
    let restarted = Stats {
        created_at: Some(ts(T0 + 4000 * MS)),
        dropped_at: None,
        ..done
    };
    let other = update(5000, vec![task(1, "first", "task")], vec![(1, restarted)]);
    assert!(!mapper.same_program(&other));
}
