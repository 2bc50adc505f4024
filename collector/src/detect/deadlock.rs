//! `deadlock`: a cycle of tasks, each waiting on a lock (Mutex, RwLock,
//! Semaphore) held by the next. Every task of the cycle must be idle for
//! longer than [`Thresholds::deadlock_grace_ns`].

use std::collections::{HashMap, HashSet};

use awaitscope_wire::{ProcessKey, SpanId};

use super::{Cx, Detector, FindingKind, FindingTask, Hooks, Observation, Recollection};
use crate::config::Thresholds;
use crate::model::{labels, task_label, Process, Task, TaskState};

/// The `deadlock` detector: looks for cycles at each scan, remembering the
/// cycles of each process's last scan (a deadlock lasting many scans is
/// one occurrence).
#[derive(Debug, Default)]
pub struct Deadlock {
    /// Keys of the cycles found at the last scan, per process.
    active: HashMap<ProcessKey, HashSet<String>>,
}

impl Detector for Deadlock {
    fn kind(&self) -> FindingKind {
        FindingKind::Deadlock
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            scan: true,
            ..Hooks::default()
        }
    }

    fn on_scan(&mut self, p: &Process, now: u64, cx: &mut Cx<'_>) {
        let active = self.active.entry(p.key).or_default();
        *active = scan(p, now, cx, active);
    }

    fn recall(&self, key: &ProcessKey) -> Option<Recollection> {
        let active = self.active.get(key).filter(|a| !a.is_empty())?;
        let mut keys: Vec<String> = active.iter().cloned().collect();
        keys.sort();
        Some(Recollection::Deadlocks(keys))
    }

    fn resume(&mut self, key: ProcessKey, r: &Recollection) {
        if let Recollection::Deadlocks(keys) = r {
            self.active
                .entry(key)
                .or_default()
                .extend(keys.iter().cloned());
        }
    }
}

/// Most cycles reported per scan.
const MAX_CYCLES: usize = 16;

/// Edges `waiter -> (holder, resource)` between idle tasks.
fn wait_graph(p: &Process, now: u64, th: &Thresholds) -> HashMap<SpanId, Vec<(SpanId, SpanId)>> {
    let idle = |id: &SpanId| {
        p.tasks.get(id).is_some_and(|t| {
            t.state == TaskState::Idle
                && t.poll_start.is_none()
                && t.last_poll_end
                    .is_some_and(|e| now.saturating_sub(e) > th.deadlock_grace_ns)
        })
    };
    let mut g: HashMap<SpanId, Vec<(SpanId, SpanId)>> = HashMap::new();
    for t in p.tasks.values() {
        if t.waiting_on.is_empty() || !idle(&t.id) {
            continue;
        }
        let locks = || {
            t.waiting_on
                .iter()
                .filter_map(|r| Some((*r, p.resources.get(r)?)))
                .filter(|(_, res)| res.is_lock())
        };
        // A Mutex or an RwLock knows its holders; a Semaphore's are on the
        // semaphore inside it (tokio's `is_internal`), which the task
        // waits on too. An inner semaphore counts only when no lock the
        // task waits on knows its holders, and stands for its outer lock.
        let outer_known = locks().any(|(_, res)| !res.internal && !res.holders.is_empty());
        for (r, res) in locks() {
            let stands_for = if !res.internal {
                r
            } else if outer_known {
                continue;
            } else {
                locks()
                    .find(|(_, o)| !o.internal && o.concrete_type == res.concrete_type)
                    .map_or(r, |(o, _)| o)
            };
            for (h, _) in &res.holders {
                if *h != t.id && idle(h) {
                    g.entry(t.id).or_default().push((*h, stands_for));
                }
            }
        }
    }
    g
}

/// The await path of `t` down to its wait on `res` (the deepest node on
/// that resource), innermost first; down to where it waits
/// ([`Process::await_point`]) when the lock is not in its tree (the tree
/// filled up before the wait): not a span that closed in the poll, nor a
/// lock it only released. Empty when nothing is one.
fn waiting_path(p: &Process, t: &Task, res: SpanId) -> Vec<labels::Frame> {
    let tree = &t.await_tree;
    let node = (0..tree.nodes.len())
        .filter(|&i| p.resource_of(tree.nodes[i].span) == Some(res))
        .max_by_key(|&i| tree.depth(i))
        .or_else(|| p.await_point(tree));
    node.map_or_else(Vec::new, |i| p.await_frames(tree, i))
}

/// Cycles of the wait graph, each as `(task, resource it waits on)` steps,
/// rotated to start at its smallest task id.
pub fn cycles(p: &Process, now: u64, th: &Thresholds) -> Vec<Vec<(SpanId, SpanId)>> {
    let g = wait_graph(p, now, th);
    let mut found: Vec<Vec<(SpanId, SpanId)>> = Vec::new();
    let mut seen: HashSet<Vec<SpanId>> = HashSet::new();
    let mut starts: Vec<_> = g.keys().copied().collect();
    starts.sort();
    for start in starts {
        // Iterative DFS from `start`, looking for paths back to it through
        // nodes larger than `start` (each cycle found once, from its minimum).
        let mut stack: Vec<(SpanId, usize)> = vec![(start, 0)];
        let mut path: Vec<(SpanId, SpanId)> = Vec::new();
        let mut on_path: HashSet<SpanId> = HashSet::from([start]);
        let mut steps = 0;
        while let Some((node, i)) = stack.pop() {
            steps += 1;
            if steps > 10_000 || found.len() >= MAX_CYCLES {
                break;
            }
            let edges = g.get(&node).map_or(&[][..], |v| v.as_slice());
            if i >= edges.len() {
                on_path.remove(&node);
                path.pop();
                continue;
            }
            stack.push((node, i + 1));
            let (next, res) = edges[i];
            if next == start {
                let mut cycle = path.clone();
                cycle.push((node, res));
                let key: Vec<SpanId> = cycle.iter().map(|c| c.0).collect();
                if seen.insert(key) {
                    found.push(cycle);
                }
            } else if next > start && !on_path.contains(&next) {
                on_path.insert(next);
                path.push((node, res));
                stack.push((next, 0));
            }
        }
    }
    found
}

/// Reports the deadlocks of `p` at `now`, given the keys of the cycles
/// found at the last scan; returns the keys of those found now.
fn scan(p: &Process, now: u64, cx: &mut Cx<'_>, was_active: &HashSet<String>) -> HashSet<String> {
    let cycles = cycles(p, now, cx.thresholds);
    let mut active = HashSet::new();
    for cycle in cycles {
        let mut ids: Vec<u64> = cycle.iter().map(|c| c.0 .0).collect();
        ids.sort_unstable();
        let key = format!("{ids:?}");
        let mut trace = Vec::new();
        let mut tasks = Vec::new();
        let mut first_wait = None;
        for (i, (task, res)) in cycle.iter().enumerate() {
            let (holder, _) = cycle[(i + 1) % cycle.len()];
            let t = &p.tasks[task];
            let h = &p.tasks[&holder];
            let r = &p.resources[res];
            let loc = r.location.as_ref().map_or(String::new(), |l| {
                format!(" @ {}", labels::shown(l.clone()))
            });
            trace.push(format!(
                "{} waits on {}{} held by {}",
                task_label(t),
                r.concrete_type,
                loc,
                task_label(h)
            ));
            // Where it waits: its await path down to the lock, innermost
            // first. The first task's wait is where the finding points.
            let frames = waiting_path(p, t, *res);
            if i == 0 {
                first_wait = frames.first().and_then(|f| f.location.clone());
            }
            for frame in frames {
                trace.push(format!("  waiting in {frame}"));
            }
            // What it holds: the lock the previous task waits on, and
            // where it took it.
            let (_, held) = cycle[(i + cycle.len() - 1) % cycle.len()];
            if let Some(hr) = p.resources.get(&held) {
                let hloc = hr.location.as_ref().map_or(String::new(), |l| {
                    format!(" @ {}", labels::shown(l.clone()))
                });
                // Where this task took it (of a semaphore's holders, its
                // own taking).
                let taken = hr.taken_by(*task).unwrap_or_default();
                if taken.is_empty() {
                    trace.push(format!("  holds {}{hloc}", hr.concrete_type));
                } else {
                    trace.push(format!("  holds {}{hloc}, taken in:", hr.concrete_type));
                }
                for line in taken {
                    trace.push(format!("    {line}"));
                }
            }
            tasks.push(FindingTask::of(t));
        }
        let since = cycle
            .iter()
            .filter_map(|(t, _)| p.tasks[t].last_poll_end)
            .max()
            .unwrap_or(now);
        let first_res = &p.resources[&cycle[0].1];
        let new = !was_active.contains(&key);
        cx.observe(Observation {
            kind: FindingKind::Deadlock,
            process: p.key,
            key: key.clone(),
            tasks,
            // The line the first task waits at, else its lock's creation.
            location: first_wait.or_else(|| first_res.location.clone()),
            message: format!(
                "deadlock: {} tasks wait on each other in a cycle",
                cycle.len()
            ),
            trace,
            duration_ns: Some(now.saturating_sub(since)),
            ts: now,
            new_occurrence: new,
        });
        active.insert(key);
    }
    active
}

#[cfg(test)]
mod tests {
    use crate::config::SEC;
    use crate::testing::{Scenario, TaskOpts};
    use crate::FindingKind;
    use awaitscope_wire::WakeOp;

    #[test]
    fn two_tasks_two_mutexes() {
        let mut s = Scenario::new();
        let a = s.mutex(0);
        let b = s.mutex(0);
        let t1 = s.spawn(TaskOpts::named("one"), 0);
        let t2 = s.spawn(TaskOpts::named("two"), 0);
        s.begin_poll(t1, 10);
        s.lock(t1, a, true, 11);
        s.end_poll(t1, 12);
        s.begin_poll(t2, 20);
        s.lock(t2, b, true, 21);
        s.end_poll(t2, 22);
        s.wake(t1, None, 30);
        s.begin_poll(t1, 40);
        s.lock(t1, b, false, 41);
        s.end_poll(t1, 42);
        s.waker(t1, WakeOp::Clone, 41);
        s.wake(t2, None, 50);
        s.begin_poll(t2, 60);
        s.lock(t2, a, false, 61);
        s.end_poll(t2, 62);
        s.waker(t2, WakeOp::Clone, 61);
        s.tick(5 * SEC);
        s.tick(6 * SEC);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Deadlock).collect();
        assert_eq!(f.len(), 1, "{:?}", m.findings().list());
        assert_eq!(f[0].count, 1, "one episode across scans");
        assert_eq!(f[0].tasks.len(), 2);
        // One line per task of the cycle, then indented lines of where
        // it waits and what it holds.
        let heads: Vec<_> = f[0].trace.iter().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(heads.len(), 2, "{:?}", f[0].trace);
        assert!(heads[0].contains("waits on Mutex"), "{:?}", f[0].trace);
        assert!(
            f[0].trace
                .iter()
                .any(|l| l.starts_with("  holds Mutex @ src/main.rs")),
            "{:?}",
            f[0].trace
        );
    }

    /// `one`'s poll fills its await tree (two nodes here) with a lock it
    /// takes and releases, then waits on `b`, which is not in the tree: its
    /// path names nothing rather than the released lock.
    #[test]
    fn a_wait_not_in_the_tree_is_not_told_by_a_lock_released() {
        let cfg = crate::Config {
            retention: crate::config::Retention {
                max_await_nodes: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut s = Scenario::with_model(crate::Model::new(cfg));
        let a = s.mutex(0);
        let b = s.mutex(0);
        let released = s.mutex(0);
        let t1 = s.spawn(TaskOpts::named("one"), 0);
        let t2 = s.spawn(TaskOpts::named("two"), 0);
        s.begin_poll(t1, 10);
        s.lock(t1, a, true, 11);
        s.end_poll(t1, 12);
        s.begin_poll(t2, 20);
        s.lock(t2, b, true, 21);
        s.end_poll(t2, 22);
        s.wake(t1, None, 30);
        s.begin_poll(t1, 40);
        s.lock_and_release(t1, released, 41);
        s.lock(t1, b, false, 200);
        s.end_poll(t1, 300);
        s.waker(t1, WakeOp::Clone, 200);
        s.wake(t2, None, 350);
        s.begin_poll(t2, 360);
        s.lock(t2, a, false, 361);
        s.end_poll(t2, 362);
        s.waker(t2, WakeOp::Clone, 361);
        s.tick(5 * SEC);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::Deadlock).collect();
        assert_eq!(f.len(), 1, "{:?}", m.findings().list());
        let trace = &f[0].trace;
        let one = trace
            .iter()
            .position(|l| l.starts_with("task one#") && l.contains(" waits on "))
            .expect("one's line");
        let two = trace
            .iter()
            .position(|l| l.starts_with("task two#") && l.contains(" waits on "))
            .expect("two's line");
        let waiting = |from: usize| {
            trace[from + 1..]
                .iter()
                .take_while(|l| l.starts_with(' '))
                .filter(|l| l.starts_with("  waiting in"))
                .count()
        };
        assert_eq!(waiting(one), 0, "{trace:#?}");
        // Its partner's wait is in its tree: told.
        assert!(waiting(two) > 0, "{trace:#?}");
    }

    #[test]
    fn waiting_on_a_free_or_foreign_lock_is_no_deadlock() {
        let mut s = Scenario::new();
        let a = s.mutex(0);
        let t1 = s.spawn(TaskOpts::named("holder"), 0);
        let t2 = s.spawn(TaskOpts::named("waiter"), 0);
        s.begin_poll(t1, 10);
        s.lock(t1, a, true, 11);
        s.end_poll(t1, 12);
        s.waker(t1, WakeOp::Clone, 12);
        s.begin_poll(t2, 20);
        s.lock(t2, a, false, 21);
        s.end_poll(t2, 22);
        s.waker(t2, WakeOp::Clone, 21);
        s.tick(5 * SEC);
        assert_eq!(
            s.model().findings().of_kind(FindingKind::Deadlock).count(),
            0
        );
    }
}
