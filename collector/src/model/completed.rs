//! The completed tasks a process keeps in detail, oldest first, and an
//! index of them by id.
//!
//! Findings name the tasks that held a thread or woke another long after
//! those completed, and a wake of a completed task asks whether the task is
//! known: looking a task up by walking the queue (thousands of tasks of
//! ~600 bytes each) cost more than the rest of describing a starvation. The
//! index answers in one hash lookup, with the queue's answers: the oldest
//! task of an id ([`CompletedTasks::first`]) or the newest
//! ([`CompletedTasks::last_mut`]) when an id was used again.

use std::collections::VecDeque;
use std::ops::Deref;

use awaitscope_wire::SpanId;

use super::hash::FastMap;
use super::task::{Task, TaskAllocs};

/// Where the tasks of one id are in the queue, by sequence number (the
/// queue's first task has [`CompletedTasks::base`]).
#[derive(Clone, Copy, Debug)]
struct Slots {
    /// The oldest task of the id.
    first: u64,
    /// The newest.
    last: u64,
    /// How many tasks of the id are in the queue.
    count: u32,
}

/// The completed tasks kept in detail, oldest first (read as a
/// `VecDeque<Task>`), indexed by id.
#[derive(Clone, Debug, Default)]
pub struct CompletedTasks {
    queue: VecDeque<Task>,
    index: FastMap<SpanId, Slots>,
    /// Sequence number of the queue's first task.
    base: u64,
}

impl Deref for CompletedTasks {
    type Target = VecDeque<Task>;

    fn deref(&self) -> &VecDeque<Task> {
        &self.queue
    }
}

impl FromIterator<Task> for CompletedTasks {
    fn from_iter<I: IntoIterator<Item = Task>>(iter: I) -> Self {
        let mut c = Self::default();
        for t in iter {
            c.push_back(t);
        }
        c
    }
}

impl CompletedTasks {
    /// Adds the newest completed task.
    // Inlined: a task is large, and moved into the queue from where its
    // close takes it rather than copied once more through the call.
    #[inline]
    pub fn push_back(&mut self, t: Task) {
        let seq = self.base + self.queue.len() as u64;
        self.index
            .entry(t.id)
            .and_modify(|s| {
                s.last = seq;
                s.count += 1;
            })
            .or_insert(Slots {
                first: seq,
                last: seq,
                count: 1,
            });
        self.queue.push_back(t);
    }

    /// Drops the `n` oldest tasks (in place: a task is large).
    pub fn drop_front(&mut self, n: usize) {
        let n = n.min(self.queue.len());
        for k in 0..n {
            let (id, seq) = (self.queue[k].id, self.base + k as u64);
            let Some(s) = self.index.get_mut(&id) else {
                continue;
            };
            s.count -= 1;
            if s.count == 0 {
                self.index.remove(&id);
            } else if s.first == seq {
                // An id used again: its next task is further on (rare).
                let next = self.queue.iter().skip(k + 1).position(|q| q.id == id);
                s.first = seq + 1 + next.unwrap_or(0) as u64;
            }
        }
        self.queue.drain(..n);
        self.base += n as u64;
    }

    /// [`CompletedTasks::drop_front`], the allocations of the tasks dropped
    /// taken out of them first onto `spares`, for new tasks to reuse (while
    /// it holds fewer than `max`).
    pub(crate) fn drop_front_reusing(
        &mut self,
        n: usize,
        spares: &mut Vec<TaskAllocs>,
        max: usize,
    ) {
        let n = n.min(self.queue.len());
        for t in self.queue.range_mut(..n) {
            if spares.len() >= max {
                break;
            }
            spares.push(TaskAllocs::take(t));
        }
        self.drop_front(n);
    }

    /// Whether a task of id `id` is kept.
    pub fn contains(&self, id: SpanId) -> bool {
        self.index.contains_key(&id)
    }

    /// The oldest kept task of id `id`.
    pub fn first(&self, id: SpanId) -> Option<&Task> {
        let s = self.index.get(&id)?;
        self.queue.get((s.first - self.base) as usize)
    }

    /// The newest kept task of id `id`.
    pub fn last_mut(&mut self, id: SpanId) -> Option<&mut Task> {
        let s = self.index.get(&id)?;
        self.queue.get_mut((s.last - self.base) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, polls: u64) -> Task {
        let mut t = Task::new(SpanId(id), 0, 0);
        t.polls = polls;
        t
    }

    /// The index answers as walking the queue does, through pushes, drops
    /// and ids used again.
    #[test]
    fn lookups_match_the_queue() {
        let mut c = CompletedTasks::default();
        let ids = [1, 2, 3, 2, 4, 2, 5, 1, 6, 3];
        for (i, &id) in ids.iter().enumerate() {
            c.push_back(task(id, i as u64));
        }
        for drop in 0..=ids.len() {
            let mut c = c.clone();
            c.drop_front(drop);
            for id in 0..8 {
                let id = SpanId(id);
                let first = c.iter().find(|t| t.id == id).map(|t| t.polls);
                let last = c.iter().rev().find(|t| t.id == id).map(|t| t.polls);
                assert_eq!(c.first(id).map(|t| t.polls), first, "{id:?} after {drop}");
                assert_eq!(c.contains(id), first.is_some());
                assert_eq!(c.last_mut(id).map(|t| t.polls), last, "{id:?} after {drop}");
            }
            // Pushing after the drop keeps the index in step.
            c.push_back(task(2, 99));
            assert_eq!(c.last_mut(SpanId(2)).map(|t| t.polls), Some(99));
            let first = c.iter().find(|t| t.id == SpanId(2)).map(|t| t.polls);
            assert_eq!(c.first(SpanId(2)).map(|t| t.polls), first);
        }
    }
}
