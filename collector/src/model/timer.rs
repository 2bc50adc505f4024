//! Late timers: a task woken by its tokio timer (`Sleep`) later than the
//! starvation threshold past the timer's deadline, with what was known at
//! the wake (its await path, and who held the thread meanwhile).

use awaitscope_wire::SpanId;

use super::late_wake::{Hog, LateWake, MAX_HOGS, MAX_LATE_WAKES};
use super::process::{Process, RECENT_POLLS};

/// Slots of the table [`Process::held_the_thread`] finds a task's hog by:
/// twice the hogs of the polls kept on the two threads a late wake looks at.
const HOG_SLOTS: usize = 4 * RECENT_POLLS;

/// Where the table of [`HOG_SLOTS`] looks for `task` first.
fn hog_slot(task: SpanId) -> usize {
    // The high bits of a multiply by an odd constant (golden ratio): ids
    // count up, and their low bits alone would crowd.
    (task.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57) as usize % HOG_SLOTS
}

impl Process {
    /// `task` was woken at `ts` from outside any task (as the timer wheel
    /// wakes): when it waits on a timer whose deadline passed more than
    /// `threshold` ago, keeps a [`LateWake`].
    pub(super) fn timer_woken(&mut self, task: SpanId, ts: u64, threshold: u64) {
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        let due = t.waiting_on.iter().find_map(|r| {
            let res = self.resources.get(r).filter(|r| r.is_timer())?;
            Some((*r, res.deadline?))
        });
        let Some((timer, deadline)) = due else {
            return;
        };
        if ts.saturating_sub(deadline) <= threshold {
            return;
        }
        let tree = &t.await_tree;
        let node = (0..tree.nodes.len())
            .filter(|&i| self.resource_of(tree.nodes[i].span) == Some(timer))
            .max_by_key(|&i| tree.depth(i))
            // Not in the tree (it filled up before the wait): where the
            // task waits, not a span that closed or a lock it released.
            .or_else(|| self.await_point(tree));
        let frames = node.map_or_else(Vec::new, |i| self.await_frames(tree, i));
        // The frame the finding names: the innermost with a location.
        let named = frames.iter().position(|f| f.location.is_some());
        // Who held the thread: long polls on the task's thread (and the
        // waking thread) overlapping [deadline, wake].
        let hogs = self
            .held_the_thread(
                &[t.last_thread, Some(self.cur_thread)],
                deadline,
                ts,
                task,
                MAX_HOGS,
            )
            .into_iter()
            .map(|h| (h.task, h.held_ns))
            .collect();
        let late = LateWake {
            task,
            deadline,
            woken: ts,
            location: named.and_then(|i| frames[i].location.clone()),
            named: named.unwrap_or(0),
            path: frames.iter().map(ToString::to_string).collect(),
            hogs,
        };
        if self.late_wakes.len() >= MAX_LATE_WAKES {
            self.late_wakes.pop_front();
        }
        self.late_wakes.push_back(late);
    }

    /// The tasks other than `except` whose polls (of a millisecond or
    /// more, see `ThreadState::recent_polls`) held any of `threads` between
    /// `from` and `to`, longest held first: the first `most` of them.
    pub fn held_the_thread(
        &self,
        threads: &[Option<u32>],
        from: u64,
        to: u64,
        except: SpanId,
        most: usize,
    ) -> Vec<Hog> {
        // Room for a hog per poll kept, made once: on a starved runtime
        // most polls kept are of different tasks.
        let mut hogs: Vec<Hog> = Vec::with_capacity(RECENT_POLLS * threads.len());
        // Each task's hog found by a small table (its index in `hogs`, plus
        // one) rather than by a search of the hogs so far, while it stays
        // at most half full.
        let mut slots = [0u8; HOG_SLOTS];
        for (k, th) in threads.iter().enumerate() {
            if threads[..k].contains(th) {
                continue;
            }
            let Some(th) = th.and_then(|th| self.threads.get(&th)) else {
                continue;
            };
            for &(h, start, end) in &th.recent_polls {
                let overlap = end.min(to).saturating_sub(start.max(from));
                if h == except || overlap == 0 {
                    continue;
                }
                let found = if hogs.len() < HOG_SLOTS / 2 {
                    let mut s = hog_slot(h);
                    loop {
                        match usize::from(slots[s]) {
                            0 => {
                                slots[s] = (hogs.len() + 1) as u8;
                                break None;
                            }
                            n if hogs[n - 1].task == h => break hogs.get_mut(n - 1),
                            _ => s = (s + 1) % HOG_SLOTS,
                        }
                    }
                } else {
                    hogs.iter_mut().find(|x| x.task == h)
                };
                match found {
                    Some(x) => {
                        // Saturating: times off the wire may be anything.
                        x.held_ns = x.held_ns.saturating_add(overlap);
                        if end.saturating_sub(start) > x.poll.1.saturating_sub(x.poll.0) {
                            x.poll = (start, end);
                        }
                    }
                    None => hogs.push(Hog {
                        task: h,
                        held_ns: overlap,
                        poll: (start, end),
                    }),
                }
            }
        }
        // Longest held first, then by task: a total order (a task is one
        // hog), so the first `most` are picked before they are sorted.
        let order = |a: &Hog, b: &Hog| b.held_ns.cmp(&a.held_ns).then(a.task.cmp(&b.task));
        if hogs.len() > most {
            if most == 0 {
                hogs.clear();
            } else {
                hogs.select_nth_unstable_by(most - 1, order);
                hogs.truncate(most);
            }
        }
        hogs.sort_unstable_by(order);
        hogs
    }
}

#[cfg(test)]
mod tests {
    use awaitscope_wire::{ProcessKey, SpanId};

    use super::super::late_wake::Hog;
    use super::super::process::{Process, ThreadState, RECENT_POLLS};

    /// The hogs as first written: each task's found by a search of those
    /// so far, all sorted, the first `most` kept.
    fn reference(
        p: &Process,
        threads: &[Option<u32>],
        (from, to): (u64, u64),
        except: SpanId,
        most: usize,
    ) -> Vec<Hog> {
        let mut hogs: Vec<Hog> = Vec::new();
        for (k, th) in threads.iter().enumerate() {
            if threads[..k].contains(th) {
                continue;
            }
            let Some(th) = th.and_then(|th| p.threads.get(&th)) else {
                continue;
            };
            for &(h, start, end) in &th.recent_polls {
                let overlap = end.min(to).saturating_sub(start.max(from));
                if h == except || overlap == 0 {
                    continue;
                }
                match hogs.iter_mut().find(|x| x.task == h) {
                    Some(x) => {
                        x.held_ns = x.held_ns.saturating_add(overlap);
                        if end.saturating_sub(start) > x.poll.1.saturating_sub(x.poll.0) {
                            x.poll = (start, end);
                        }
                    }
                    None => hogs.push(Hog {
                        task: h,
                        held_ns: overlap,
                        poll: (start, end),
                    }),
                }
            }
        }
        hogs.sort_by(|a, b| b.held_ns.cmp(&a.held_ns).then(a.task.cmp(&b.task)));
        hogs.truncate(most);
        hogs
    }

    /// Hogs found by the table are the hogs a search finds, whatever the
    /// tasks (repeated, distinct, ids that share a slot), on one thread or
    /// two, for any number asked.
    #[test]
    fn hogs_are_the_reference_hogs() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Ids that share their first slot.
        let crowded: Vec<u64> = (0..)
            .filter(|&k| super::hog_slot(SpanId(k)) == 5)
            .take(40)
            .collect();
        for round in 0..200 {
            let mut p = Process::new(ProcessKey {
                pid: 1,
                start_unix_ns: 0,
            });
            for th in 0..2u32 {
                let mut t = ThreadState::default();
                let mut at = next() % 1_000;
                for _ in 0..RECENT_POLLS {
                    let task = match round % 3 {
                        // Few tasks: repeats.
                        0 => next() % 5,
                        1 => crowded[(next() % 40) as usize],
                        _ => next() % 1_000_000,
                    };
                    let len = 1 + next() % 50;
                    t.recent_polls.push_back((SpanId(task), at, at + len));
                    at += len + next() % 10;
                }
                p.threads.insert(th, t);
            }
            let window = (next() % 300, 300 + next() % 1_500);
            let except = SpanId(next() % 5);
            for threads in [
                &[Some(0)][..],
                &[Some(0), Some(1)],
                &[Some(1), Some(1), None],
            ] {
                for most in [0, 1, 4, 100] {
                    let got = p.held_the_thread(threads, window.0, window.1, except, most);
                    let want = reference(&p, threads, window, except, most);
                    assert_eq!(got.len(), want.len(), "round {round}");
                    for (a, b) in got.iter().zip(&want) {
                        assert_eq!((a.task, a.held_ns, a.poll), (b.task, b.held_ns, b.poll));
                    }
                }
            }
        }
    }
}
