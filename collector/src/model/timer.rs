//! Late timers: a task woken by its tokio timer (`Sleep`) later than the
//! starvation threshold past the timer's deadline, with what was known at
//! the wake (its await path, and who held the thread meanwhile).

use awaitscope_wire::SpanId;

use super::late_wake::{Hog, LateWake, MAX_HOGS, MAX_LATE_WAKES};
use super::process::{Process, RECENT_POLLS};

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
                match hogs.iter_mut().find(|x| x.task == h) {
                    Some(x) => {
                        x.held_ns += overlap;
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
