//! The shortcuts of the ingest path change nothing that can be seen: random
//! workloads (several worker threads with a run each in every frame, spawns,
//! polls of every style, wakes of every kind, mutexes, timers, user spans,
//! WARN/ERROR events, panics, long polls, starvation, lost wakers, retention
//! of completed tasks) give the same report whether each poll is sent whole
//! (`Event::Poll`) or as its `Enter` and `PollEnd`.
//!
//! (Only while no other thread records anything during the poll: the merge
//! of the threads' runs orders a `PollEnd` by its end, a whole poll by its
//! start. These workloads keep the threads' runs apart in time for that.)
//!
//! The same workloads compare two builds of the collector: see
//! [`write_reports_for_comparison`].

use awaitscope_collector::ingest::recording;
use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_collector::{Config, Model, Report};
use awaitscope_wire::{names, CloseKind, DropCounts, Event, Level, SpanId, WakeOp};
use serde_json::Value;

const MS: u64 = 1_000_000;

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How the workload's whole polls are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// Whole polls as `Event::Poll` (version 2).
    Whole,
    /// The same polls as `Enter` + `PollEnd`.
    Expanded,
}

struct Gen {
    b: StreamBuilder,
    rng: Rng,
    style: Style,
    /// Live tasks.
    live: Vec<SpanId>,
    mutexes: Vec<SpanId>,
    timers: Vec<SpanId>,
    opts: Vec<TaskOpts>,
}

impl Gen {
    fn whole_poll(&mut self, t: SpanId, start: u64, end: u64, wakers: u32) {
        match self.style {
            Style::Whole => {
                self.b.poll_whole(t, start, end, wakers);
            }
            Style::Expanded => {
                self.b.push(Event::Enter { span: t, ts: start });
                self.b.push(Event::PollEnd {
                    task: t,
                    ts: end,
                    wakers,
                });
            }
        }
    }

    /// One operation at `ts`, lasting less than `step` (or a long poll,
    /// when `long` allows).
    fn op(&mut self, ts: u64, step: u64, long: bool) {
        let r = self.rng.below(100);
        let pick = |g: &mut Gen| {
            let n = g.live.len() as u64;
            (n > 0).then(|| g.live[g.rng.below(n) as usize])
        };
        match r {
            0..=14 => {
                let parent = if self.rng.chance(30) {
                    pick(self)
                } else {
                    None
                };
                let o = self.opts[self.rng.below(self.opts.len() as u64) as usize].clone();
                let t = self.b.spawn(&o, parent, ts);
                self.live.push(t);
            }
            15..=44 => {
                let Some(t) = pick(self) else { return };
                // Mostly short polls; some long ones (long_poll).
                // (Distinct durations: which of two equally long polls a
                // finding shows depends on the order a scan visits them.)
                let d = if self.rng.chance(3) && long {
                    15 * MS + self.rng.below(MS)
                } else {
                    1 + self.rng.below(step / 2)
                };
                let wakers = self.rng.below(3) as u32;
                self.whole_poll(t, ts, ts + d, wakers);
            }
            45..=59 => {
                let Some(t) = pick(self) else { return };
                // A poll with things recorded inside it.
                self.b.enter(t, ts);
                let mut at = ts + 1;
                for _ in 0..1 + self.rng.below(3) {
                    match self.rng.below(7) {
                        0 if !self.mutexes.is_empty() => {
                            let m =
                                self.mutexes[self.rng.below(self.mutexes.len() as u64) as usize];
                            let ready = self.rng.chance(70);
                            self.b.lock(t, m, ready, at);
                            if ready && self.rng.chance(80) {
                                self.b.unlock(t, m, at + 1);
                            }
                        }
                        1 if !self.timers.is_empty() => {
                            let tm = self.timers[self.rng.below(self.timers.len() as u64) as usize];
                            self.b.sleep(t, tm, at);
                        }
                        2 => {
                            let name = ["handler", "query", "parse"][self.rng.below(3) as usize];
                            let s = self.b.user_span(name, None, at);
                            self.b.enter(s, at);
                            self.b.exit(s, at + 1);
                            if self.rng.chance(50) {
                                self.b.close(s, CloseKind::Span, at + 1);
                            }
                        }
                        3 => {
                            let level = if self.rng.chance(50) {
                                Level::Warn
                            } else {
                                Level::Error
                            };
                            self.b.event(level, Some(t), None, "something odd", at);
                        }
                        4 => {
                            // Wakes itself (yield_now) or another task.
                            let other = pick(self).unwrap_or(t);
                            let op = if self.rng.chance(50) {
                                WakeOp::WakeByRef
                            } else {
                                WakeOp::Wake
                            };
                            self.b.waker(other, op, Some(t), at);
                        }
                        5 => {
                            self.b.waker(t, WakeOp::Clone, Some(t), at);
                        }
                        _ => {}
                    }
                    at += 2;
                }
                let end = at + self.rng.below(step / 4);
                match self.rng.below(3) {
                    0 => {
                        self.b.exit(t, end);
                    }
                    _ => {
                        let wakers = self.rng.below(3) as u32;
                        self.b.poll_end(t, end, wakers);
                    }
                }
            }
            60..=79 => {
                let Some(t) = pick(self) else { return };
                let op = match self.rng.below(10) {
                    0..=3 => WakeOp::Wake,
                    4..=6 => WakeOp::WakeByRef,
                    7 => WakeOp::Clone,
                    8 => WakeOp::Drop,
                    _ => WakeOp::LastDrop,
                };
                let by = if self.rng.chance(50) {
                    pick(self)
                } else {
                    None
                };
                self.b.waker(t, op, by, ts);
            }
            80..=91 => {
                let Some(t) = pick(self) else { return };
                self.live.retain(|x| *x != t);
                let kind = match self.rng.below(10) {
                    0 => CloseKind::Cancelled,
                    1 => {
                        self.b.panic(Some(t), "boom", ts);
                        CloseKind::Panicked
                    }
                    _ => CloseKind::Completed,
                };
                // The drop of the future, then the close.
                if self.rng.chance(50) {
                    self.whole_poll(t, ts, ts + 1, 0);
                } else {
                    self.b.enter(t, ts).exit(t, ts + 1);
                }
                self.b.close(t, kind, ts + 2);
            }
            92..=94 => {
                let m = self
                    .b
                    .resource("Mutex", "Sync", 20 + self.rng.below(3) as u32, ts);
                self.mutexes.push(m);
            }
            95..=96 => {
                let tm = self.b.resource("Sleep", "timer", 30, ts);
                self.timers.push(tm);
            }
            _ => {
                if self.rng.chance(30) {
                    self.b.panic(None, "outside any task", ts);
                }
            }
        }
    }
}

/// A random workload of `rounds` frames on `threads` worker threads, whose
/// runs in each frame overlap in time (`overlap`) or follow each other.
fn workload(seed: u64, threads: u32, rounds: u64, style: Style, overlap: bool) -> Vec<u8> {
    let mut g = Gen {
        b: StreamBuilder::new(4242, 7),
        rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        style,
        live: Vec::new(),
        mutexes: Vec::new(),
        timers: Vec::new(),
        opts: (0..6)
            .map(|i| {
                let mut o = match i {
                    0 => TaskOpts::blocking(),
                    1 => TaskOpts::kind(names::KIND_BLOCK_ON),
                    _ => TaskOpts::named(["worker", "conn", "tick", "job"][i % 4]),
                };
                o.line = 10 + i as u32;
                o
            })
            .collect(),
    };
    g.b.hello("equivalence", None, false);
    for th in 0..threads {
        g.b.thread(th);
    }
    let mut base = 1_000;
    for round in 0..rounds {
        let window = 200_000;
        let ops = 8 + g.rng.below(24);
        let step = window / ops;
        for th in 0..threads {
            g.b.push(Event::Thread { id: th, name: None });
            for k in 0..ops {
                let n = u64::from(threads);
                let ts = if overlap {
                    base + k * step + u64::from(th) * step / n
                } else {
                    base + (u64::from(th) * ops + k) * step / n
                };
                // Long polls would overlap the other threads' runs.
                g.op(ts, step / n, overlap || threads == 1);
            }
        }
        g.b.flush();
        base += window;
        // Quiet stretches: scans, lost wakers, starvation, stuck tasks.
        match g.rng.below(40) {
            0 => base += 200 * MS,
            1 => base += 2_000 * MS,
            2 => base += 12_000 * MS,
            _ => {}
        }
        if round % 97 == 96 {
            g.b.dropped(DropCounts {
                buffer_full: round,
                disconnected: 0,
                write_failed: 1,
            });
        }
    }
    g.b.recording()
}

fn config() -> Config {
    let mut c = Config::default();
    c.retention.completed_max_count = 40;
    c.retention.max_summary_groups = 4;
    c
}

fn model_of(bytes: &[u8]) -> Model {
    let mut m = Model::new(config());
    recording::load_reader(&mut m, "equivalence", bytes).unwrap();
    m.finish();
    m
}

/// The report, without what depends on the order in which a scan visits
/// the tasks (a hash map's order, which differs from one model to the
/// next). Of each finding it keeps what every order gives: kind, severity,
/// process, first and last seen, worst duration; not which occurrence's
/// message, trace and location it shows (on equal durations, the last one
/// seen), which tasks it lists (the first few seen) or, rarely, its count
/// (a task whose episode goes on under another key, its await point having
/// changed between two scans, opens that key's finding without counting).
fn report_json(m: &Model) -> Value {
    let mut v = serde_json::to_value(Report::from_model(m)).unwrap();
    if let Some(findings) = v["findings"].as_array_mut() {
        for f in findings.iter_mut() {
            let keep = [
                "kind",
                "severity",
                "pid",
                "process_start_unix_ns",
                "first_seen",
                "last_seen",
                "worst_ns",
            ];
            f.as_object_mut()
                .unwrap()
                .retain(|k, _| keep.contains(&k.as_str()));
        }
        findings.sort_by_key(|f| f.to_string());
    }
    v
}

/// The whole report (for [`write_reports_for_comparison`]).
fn full_report_json(m: &Model) -> Value {
    serde_json::to_value(Report::from_model(m)).unwrap()
}

/// Events applied per process: a whole poll is one event, its `Enter` and
/// `PollEnd` two.
fn without_event_counts(mut v: Value) -> Value {
    for p in v["processes"].as_array_mut().unwrap() {
        p["events"] = Value::Null;
    }
    v
}

/// Asserts `a == b`, showing the first lines that differ.
fn assert_same(a: &Value, b: &Value, what: &str) {
    if a == b {
        return;
    }
    let (a, b) = (
        serde_json::to_string_pretty(a).unwrap(),
        serde_json::to_string_pretty(b).unwrap(),
    );
    let (a, b): (Vec<_>, Vec<_>) = (a.lines().collect(), b.lines().collect());
    let first = (0..a.len().min(b.len()))
        .find(|&i| a[i] != b[i])
        .unwrap_or(a.len().min(b.len()));
    let from = first.saturating_sub(12);
    panic!(
        "{what}: reports differ at line {first}:\n--- left\n{}\n--- right\n{}",
        a[from..(first + 6).min(a.len())].join("\n"),
        b[from..(first + 6).min(b.len())].join("\n")
    );
}

#[test]
fn whole_polls_apply_as_their_enter_and_poll_end() {
    for seed in 0..12 {
        let threads = 1 + (seed % 3) as u32;
        let whole = model_of(&workload(seed, threads, 300, Style::Whole, false));
        let expanded = model_of(&workload(seed, threads, 300, Style::Expanded, false));
        let (a, b) = (report_json(&whole), report_json(&expanded));
        assert!(
            a["processes"][0]["events"].as_u64() < b["processes"][0]["events"].as_u64(),
            "seed {seed}: the workload has whole polls"
        );
        assert_same(
            &without_event_counts(a),
            &without_event_counts(b),
            &format!("seed {seed}, {threads} threads"),
        );
        assert_eq!(whole.stats(), expanded.stats(), "seed {seed}");
    }
}

/// Writes the canonical report of each workload to `$AWAITSCOPE_EQUIV_DIR`
/// (when set), to compare two builds of the collector:
/// `AWAITSCOPE_EQUIV_DIR=/tmp/a cargo test --test ingest_equivalence -- --ignored`.
#[test]
#[ignore]
fn write_reports_for_comparison() {
    let Ok(dir) = std::env::var("AWAITSCOPE_EQUIV_DIR") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    for seed in 0..40 {
        let threads = 1 + (seed % 4) as u32;
        for style in [Style::Whole, Style::Expanded] {
            let m = model_of(&workload(seed, threads, 400, style, true));
            let mut v = full_report_json(&m);
            v["generator"] = Value::Null;
            let path = format!("{dir}/seed{seed}-{style:?}.json");
            std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        }
    }
}
