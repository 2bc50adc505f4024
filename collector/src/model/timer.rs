//! Late timers: a task woken by its tokio timer (`Sleep`) later than the
//! starvation threshold past the timer's deadline, with what was known at
//! the wake (its await path, and who held the thread meanwhile).

use awaitscope_wire::SpanId;

use super::late_wake::{LateWake, MAX_HOGS, MAX_LATE_WAKES};
use super::process::Process;

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
            .or_else(|| tree.deepest_leaf());
        let frames = node.map_or_else(Vec::new, |i| self.await_frames(tree, i));
        // Who held the thread: long polls on the task's thread (and the
        // waking thread) overlapping [deadline, wake].
        let mut hogs: Vec<(SpanId, u64)> = Vec::new();
        let threads = [t.last_thread, Some(self.cur_thread)];
        for (k, th) in threads.iter().enumerate() {
            if threads[..k].contains(th) {
                continue;
            }
            let Some(th) = th.and_then(|th| self.threads.get(&th)) else {
                continue;
            };
            for &(h, start, end) in &th.recent_polls {
                let overlap = end.min(ts).saturating_sub(start.max(deadline));
                if h == task || overlap == 0 {
                    continue;
                }
                match hogs.iter_mut().find(|(id, _)| *id == h) {
                    Some(e) => e.1 += overlap,
                    None => hogs.push((h, overlap)),
                }
            }
        }
        hogs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        hogs.truncate(MAX_HOGS);
        let late = LateWake {
            task,
            deadline,
            woken: ts,
            location: frames.iter().find_map(|f| f.location.clone()),
            path: frames.iter().map(ToString::to_string).collect(),
            hogs,
        };
        if self.late_wakes.len() >= MAX_LATE_WAKES {
            self.late_wakes.pop_front();
        }
        self.late_wakes.push_back(late);
    }
}
