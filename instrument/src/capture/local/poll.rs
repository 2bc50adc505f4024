//! Entering and exiting spans: a task span's poll starts and ends, the
//! spans entered inside it extend its await tree, and its end pushes one
//! record (or two, when something else was recorded during it) and the
//! tree when it changed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use awaitscope_wire::SpanClass;

use super::*;
use crate::capture::record::Raw;
use crate::capture::Capture;
use crate::span_node::SpanNode;

/// Two polls of one task closer than this (in ns) with nothing recorded in
/// between on the thread are the poll that completed and the drop of its
/// future. The drop follows within microseconds unless the thread is
/// preempted; an aborted task is dropped when the abort is handled, which on
/// a worker that ran nothing else since that task's last poll is the one
/// case mistaken for completion (only within this window).
pub(super) const ADJACENT_NS: u64 = 10_000_000;

impl Local {
    /// The span with registry id `reg` was entered.
    #[inline]
    pub fn enter_reg(
        &mut self,
        shared: &Capture,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) {
        if !self.enter_known_in_poll(reg) {
            self.enter_reg_slow(shared, reg, lookup);
        }
    }

    /// The common case, a few times per poll: inside a task's poll, the
    /// `k`-th span entered is the one the task's last poll entered `k`-th
    /// (its poll cache knows it). Kept small and inlined, apart from the
    /// other cases, so that this path costs a few dozen instructions.
    /// Returns false, having changed nothing, when it is not that case.
    #[inline(always)]
    pub(super) fn enter_known_in_poll(&mut self, reg: u64) -> bool {
        let len = self.frames.len;
        if self.task == 0 || len >= STACK {
            return false;
        }
        let Some(t) = self.polls.last_mut() else {
            return false;
        };
        let Some(node) = &t.node else {
            return false;
        };
        if t.blocking {
            return false;
        }
        if self.recent.0 == reg {
            // The span just created or exited in this poll, again.
            t.entered += 1;
            let (tree_base, sid) = (t.tree_base, self.recent.1);
            self.push_in_poll(reg, sid, tree_base);
            return true;
        }
        let owns = match t.owns_cache {
            Some(owns) => owns,
            None => {
                let owns = node.poll_cache.acquire();
                t.owns_cache = Some(owns);
                owns
            }
        };
        if !owns {
            return false;
        }
        // SAFETY: this thread acquired the cache (just above or earlier in
        // this poll) and releases it at the task's exit.
        let Some(sid) = (unsafe { node.poll_cache.get(t.entered, reg) }) else {
            return false;
        };
        t.entered += 1;
        let tree_base = t.tree_base;
        self.push_in_poll(reg, sid, tree_base);
        true
    }

    /// Pushes the frame of a span entered inside the poll in progress and
    /// adds it to the poll's await tree. `frames` has room.
    #[inline(always)]
    pub(super) fn push_in_poll(&mut self, reg: u64, sid: u64, tree_base: usize) {
        let len = self.frames.len;
        let depth = (len - self.task) as u16;
        let repeat = self.tree_len > tree_base && self.tree[self.tree_len - 1] == (sid, depth);
        if repeat {
            // Entered again right after its exit (a future polled then
            // dropped, a loop): one node.
        } else if self.tree_len < TREE {
            self.sig = sig_step(self.sig, sid, depth);
            self.tree[self.tree_len] = (sid, depth);
            self.tree_len += 1;
        } else {
            self.tree_cut = true;
        }
        let f = &mut self.frames.items[len];
        f.reg = reg;
        f.sid = sid;
        f.kind = Kind::InPoll;
        self.frames.len = len + 1;
        self.slot.push_span(depth as usize, sid);
    }

    /// [`Local::enter_reg`] apart from [`Local::enter_known_in_poll`]: task
    /// spans (once per poll), spans outside polls, cache misses.
    #[inline]
    pub(super) fn enter_reg_slow(
        &mut self,
        shared: &Capture,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) {
        let in_poll = self.task != 0
            && self.frames.len() < STACK
            && self.polls.last().is_some_and(|t| !t.blocking);
        let found = if in_poll {
            self.find_in_poll(reg, lookup)
        } else {
            // Outside polls, and in a worker's (or `spawn_blocking`
            // closure's) blocking task: no await tree to follow there.
            self.find(reg, lookup)
        };
        if let Some((sid, class, node)) = found {
            self.enter(shared, reg, sid, class, node);
        }
    }

    /// The span with registry id `reg` entered inside a poll that its
    /// task's poll cache does not know ([`Local::enter_known_in_poll`] asked
    /// it first, and took the cache if it could): found in this thread's
    /// cache, and remembered in the poll cache for the task's next poll.
    #[inline(always)]
    pub(super) fn find_in_poll(
        &mut self,
        reg: u64,
        lookup: impl FnOnce() -> Option<Arc<SpanNode>>,
    ) -> Option<(u64, SpanClass, Option<Arc<SpanNode>>)> {
        let t = self.polls.last_mut()?;
        let k = t.entered;
        t.entered += 1;
        let owns = t.owns_cache == Some(true);
        let i = self.cached(reg, lookup)?;
        if owns {
            if let (Some(n), Some(tn)) = (
                &self.cache[i].node,
                self.polls.last().and_then(|t| t.node.as_ref()),
            ) {
                // SAFETY: this thread took the cache in this poll and gives
                // it back at the task's exit.
                unsafe { tn.poll_cache.set(k, reg, n, tn) };
            }
        }
        self.found(i)
    }

    /// A span was entered. `ts` reads the clock; it is only called when the
    /// enter is recorded.
    #[inline]
    pub(super) fn enter(
        &mut self,
        shared: &Capture,
        reg: u64,
        sid: u64,
        class: SpanClass,
        node: Option<Arc<SpanNode>>,
    ) {
        if self.frames.len() >= STACK {
            self.overflow += 1;
            return;
        }
        if class == SpanClass::Task {
            let ts = shared.raw();
            let blocking = node.as_ref().is_some_and(|n| n.blocking);
            if let Some(n) = &node {
                n.polls.running.store(true, Ordering::Relaxed);
            }
            let adjacent = self.last_exit_task == sid
                && self.last_exit_seq == self.seq
                && shared.delta_nanos(self.last_exit_ts, ts) < ADJACENT_NS;
            self.frames.push_with(|f| {
                f.reg = reg;
                f.sid = sid;
                f.kind = Kind::Task;
            });
            let (saved_sig, saved_task, tree_base) = (self.sig, self.task, self.tree_len);
            self.polls.push_with(|p| {
                p.node = node;
                p.adjacent = adjacent;
                p.start = ts;
                p.saved_sig = saved_sig;
                p.saved_task = saved_task;
                p.tree_base = tree_base;
                p.owns_cache = None;
                p.entered = 0;
                p.blocking = blocking;
            });
            self.task = self.frames.len();
            self.sig = EMPTY_SIG;
            self.recent = (0, 0);
            if blocking {
                // Its poll runs the whole closure (a worker thread's: as long
                // as the runtime): recorded as it starts, and the polls
                // inside it are each one record, as below.
                self.push(Raw::Enter {
                    span: sid,
                    task: true,
                    ts,
                });
            } else {
                // Its start goes out with its end, unless something is
                // recorded in between (see `PollSlot`). A poll inside
                // another one (a worker's inside its blocking task,
                // `block_in_place`, a runtime inside a task) first sends the
                // enclosing poll's start, if that is still held.
                if self.pending_enter.0 != 0 {
                    self.flush_enter();
                }
                self.pending_enter = (sid, ts);
                self.slot.publish(sid, ts);
                shared.poll_started();
            }
        } else if self.task != 0 {
            let tree_base = self.polls.last().map_or(0, |p| p.tree_base);
            self.push_in_poll(reg, sid, tree_base);
        } else {
            self.frames.push_with(|f| {
                f.reg = reg;
                f.sid = sid;
                f.kind = Kind::Outside;
            });
            let ts = shared.raw();
            self.push(Raw::Enter {
                span: sid,
                task: false,
                ts,
            });
        }
    }

    /// A span was exited. Returns false when this thread never saw it
    /// entered.
    #[inline]
    pub fn exit(&mut self, shared: &Capture, reg: u64) -> bool {
        // The common case: the innermost frame, a span inside a poll.
        let len = self.frames.len;
        if len > 0 {
            let f = &self.frames.items[len - 1];
            if f.reg == reg && f.kind == Kind::InPoll {
                self.recent = (reg, f.sid);
                self.frames.len = len - 1;
                self.slot.set_depth(len - 1 - self.task);
                return true;
            }
        }
        self.exit_slow(shared, reg)
    }

    /// [`Local::exit`] of a task span (a poll's end), a span outside polls,
    /// or a span exited out of order. In three steps: find and remove the
    /// span's frame ([`Local::exit_untracked`] if there is none), repair the
    /// stack if the frame was not the innermost
    /// ([`Local::repair_after_out_of_order_exit`]), and record the exit by
    /// what the frame was: nothing for a span inside a poll (its await tree
    /// node was recorded at its enter), an `Exit` for a span outside polls,
    /// the end of a poll for a task ([`Local::end_poll`]).
    #[inline]
    pub(super) fn exit_slow(&mut self, shared: &Capture, reg: u64) -> bool {
        let Some(pos) = self.frames.as_slice().iter().rposition(|f| f.reg == reg) else {
            return self.exit_untracked();
        };
        // Nearly always the innermost frame (`remove` then moves nothing).
        let Some(&mut frame) = self.frames.remove(pos) else {
            return false;
        };
        let in_order = pos == self.frames.len();
        if !in_order {
            self.repair_after_out_of_order_exit(pos);
        }
        match frame.kind {
            Kind::InPoll => {
                if self.task != 0 {
                    self.slot.set_depth(self.frames.len() - self.task);
                }
            }
            Kind::Outside => {
                let ts = shared.raw();
                self.push(Raw::Exit {
                    span: frame.sid,
                    task: false,
                    tree: false,
                    wakers: 0,
                    ts,
                });
            }
            Kind::Task => self.end_poll(shared, frame, pos, in_order),
        }
        true
    }

    /// The exit of a span no frame holds: one entered past [`STACK`] (true:
    /// one fewer of those), or one this thread never saw entered (false).
    #[inline]
    pub(super) fn exit_untracked(&mut self) -> bool {
        if self.overflow > 0 {
            self.overflow -= 1;
            return true;
        }
        false
    }

    /// Stack repair after the frame at `pos` was removed from under others
    /// (rare: a span exited out of order), which moved the frames above it
    /// down one. Guarantees afterwards: `task` is again 1 + the index of the
    /// innermost task frame (or 0), and every poll's `saved_task` still
    /// names its enclosing task's frame.
    #[cold]
    pub(super) fn repair_after_out_of_order_exit(&mut self, pos: usize) {
        self.task = self
            .frames
            .as_slice()
            .iter()
            .rposition(|f| f.kind == Kind::Task)
            .map_or(0, |i| i + 1);
        for i in 0..self.polls.len() {
            let p = &mut self.polls.items[i];
            if p.saved_task > pos + 1 {
                p.saved_task -= 1;
            }
        }
    }

    /// The end of a poll: the task frame `frame`, which was at `pos` in the
    /// stack (the innermost frame if `in_order`), was exited. In order:
    /// take the poll's state out of `polls`; send its await tree if it
    /// changed ([`Local::send_tree`]), then the poll itself
    /// ([`Local::send_poll`]), so the exporter reads the tree before the
    /// poll's end; count the poll on the task's node
    /// ([`Local::count_poll`]); give the task's node back to the cache; and
    /// restore the state of the enclosing poll ([`Local::leave_poll`]).
    #[inline(always)]
    pub(super) fn end_poll(
        &mut self,
        shared: &Capture,
        frame: StackFrame,
        pos: usize,
        in_order: bool,
    ) {
        // Its poll: the innermost one unless exits came out of order.
        let at = if in_order {
            self.polls.len().saturating_sub(1)
        } else {
            self.frames.as_slice()[..pos]
                .iter()
                .filter(|f| f.kind == Kind::Task)
                .count()
        };
        let innermost = at + 1 == self.polls.len();
        // Taken from in place (the entry stays in the array).
        let Some(p) = self.polls.remove(at) else {
            return;
        };
        let node = p.node.take();
        let poll = PollInProgress { node: None, ..*p };
        let ts = shared.raw();
        let long = || shared.delta_nanos(poll.start, ts) >= shared.whole_tree_ns;
        let tree = self.send_tree(frame.sid, &poll, node.as_deref(), long);
        self.send_poll(frame.sid, node.as_deref(), tree, ts);
        if let Some(n) = node {
            Self::count_poll(&n, &poll, ts);
            self.uncache_task(frame.reg, n);
        }
        self.leave_poll(frame.sid, &poll, at, pos, innermost, ts);
    }

    /// Await-tree output of the poll `poll` of task `task` ending: pushes its
    /// `TreeNode`s if the tree differs from the one last sent for the task
    /// (by signature; a tree cut at [`TREE`] nodes is always sent), and
    /// remembers the new signature on the node. Returns whether it sent
    /// the tree, which the poll's record says.
    ///
    /// A short poll (`long()` false, asked only when a span closed in the
    /// tree) leaves out the spans that closed during it: they are not what
    /// the task waits at, and their creation and close (sent anyway, with
    /// the task and times) already say they ran in it. A server's
    /// per-request span is new in every poll; left in, it would make every
    /// poll's tree a new one, sent again each time.
    #[inline(always)]
    pub(super) fn send_tree(
        &mut self,
        task: u64,
        poll: &PollInProgress,
        node: Option<&SpanNode>,
        long: impl FnOnce() -> bool,
    ) -> bool {
        let open = self.tree_closed > 0 && !self.tree_cut && !long();
        let open_sig = if open {
            self.open_tree_sig(poll.tree_base)
        } else {
            None
        };
        let sig = open_sig.unwrap_or(self.sig);
        let changed =
            self.tree_cut || node.is_none_or(|n| n.last_tree_sig.load(Ordering::Relaxed) != sig);
        if changed {
            // The tree goes with the poll's end: it does not need the
            // poll's start before it, which stays held.
            let whole = self.pending_enter.0 == task;
            // What the signature was made of: every node, or (short) the
            // nodes `OpenWalk` keeps.
            let mut walk = open_sig.map(|_| OpenWalk::default());
            for i in poll.tree_base..self.tree_len {
                let (span, marked) = self.tree[i];
                let depth = match &mut walk {
                    None => marked & !CLOSED,
                    Some(w) => match w.step(span, marked) {
                        Step::Keep(depth) => depth,
                        // `Whole` cannot come: `open_tree_sig` said so.
                        Step::Skip | Step::Whole => continue,
                    },
                };
                let raw = Raw::TreeNode { task, span, depth };
                if whole {
                    self.push_now(raw);
                } else {
                    self.push(raw);
                }
            }
            if let Some(n) = node {
                // A cut tree is sent every time.
                let sig = if self.tree_cut { 0 } else { sig };
                n.last_tree_sig.store(sig, Ordering::Relaxed);
            }
        }
        changed
    }

    /// The signature of the poll's tree (from `base`) without its nodes
    /// [`CLOSED`] (and repeats left next to each other by their going), as
    /// [`Local::push_in_poll`] would have made it for that tree; `None`
    /// when a node still open was entered inside a closed one (leaving the
    /// closed one out would cut the open one from its place: the tree goes
    /// whole).
    #[cold]
    pub(super) fn open_tree_sig(&self, base: usize) -> Option<u64> {
        let mut sig = EMPTY_SIG;
        let mut walk = OpenWalk::default();
        for &(span, marked) in &self.tree[base..self.tree_len] {
            match walk.step(span, marked) {
                Step::Keep(depth) => sig = sig_step(sig, span, depth),
                Step::Skip => {}
                Step::Whole => return None,
            }
        }
        Some(sig)
    }

    /// The span `sid` (not a task) closed on this thread: its nodes in the
    /// await tree of the poll in progress are marked [`CLOSED`].
    #[inline]
    pub(crate) fn closed_in_poll(&mut self, sid: u64) {
        for i in 0..self.tree_len {
            let (span, depth) = &mut self.tree[i];
            if *span == sid && *depth & CLOSED == 0 {
                *depth |= CLOSED;
                self.tree_closed += 1;
            }
        }
    }

    /// The poll's own record: one `Poll` (start and end) if nothing else
    /// was recorded on this thread since it started (its start is still
    /// held in `pending_enter`), else an `Exit` after the `Enter` already
    /// pushed. Either carries whether a new tree precedes it and the
    /// task's live wakers.
    #[inline(always)]
    pub(super) fn send_poll(&mut self, task: u64, node: Option<&SpanNode>, tree: bool, ts: u64) {
        let wakers = node.map_or(0, |n| n.polls.wakers());
        if self.pending_enter.0 == task {
            // Nothing was recorded during the poll: one record.
            let (_, start) = std::mem::take(&mut self.pending_enter);
            self.push_now(Raw::Poll {
                span: task,
                start,
                end: ts,
                tree,
                wakers,
            });
        } else {
            self.push(Raw::Exit {
                span: task,
                task: true,
                tree,
                wakers,
                ts,
            });
        }
    }

    /// Poll accounting on the task's node, which dumps and the close read:
    /// one more poll, ended at `ts`, not running; whether this poll
    /// directly followed the previous one (see [`ADJACENT_NS`]); and the
    /// task's poll cache given back if this poll took it. Only the thread
    /// polling the task writes these, so plain loads and stores suffice.
    #[inline(always)]
    pub(super) fn count_poll(node: &SpanNode, poll: &PollInProgress, ts: u64) {
        let polls = &node.polls;
        polls
            .count
            .store(polls.count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        polls.last_end.store(ts, Ordering::Relaxed);
        polls.running.store(false, Ordering::Relaxed);
        polls
            .last_pair_adjacent
            .store(poll.adjacent, Ordering::Relaxed);
        if poll.owns_cache == Some(true) {
            node.poll_cache.release();
        }
    }

    /// Leaves the poll `poll` (at `at` in `polls`, its frame was at `pos`)
    /// of task `task`, ended at `ts`. Guarantees afterwards: the tree, its
    /// signature and `task` are the enclosing poll's again (or, if an
    /// enclosing poll ended before one inside it, the polls inside now
    /// belong to its enclosing task); the poll slot no longer shows this
    /// poll; with no task polled the tree is empty; and the next enter
    /// can tell whether it directly follows this exit.
    #[inline(always)]
    pub(super) fn leave_poll(
        &mut self,
        task: u64,
        poll: &PollInProgress,
        at: usize,
        pos: usize,
        innermost: bool,
        ts: u64,
    ) {
        if innermost {
            self.tree_len = poll.tree_base;
            self.tree_cut = false;
            if self.tree_len == 0 {
                self.tree_closed = 0;
            }
            self.sig = poll.saved_sig;
            self.task = poll.saved_task;
        } else {
            self.relink_inner_polls(poll, at, pos);
        }
        if self.slot.shows(task) {
            self.slot.clear();
        }
        if self.task == 0 {
            self.tree_len = 0;
            self.tree_cut = false;
            self.tree_closed = 0;
        }
        self.last_exit_task = task;
        self.last_exit_seq = self.seq;
        self.last_exit_ts = ts;
        self.recent = (0, 0);
    }

    /// An enclosing poll (`poll`, at `at`, its frame at `pos`) ended
    /// before one inside it: that one goes on, and the polls that were
    /// inside the ended one are now inside its enclosing task. (Its await
    /// tree nodes stay in the buffer until the poll inside ends.)
    #[cold]
    pub(super) fn relink_inner_polls(&mut self, poll: &PollInProgress, at: usize, pos: usize) {
        for i in at..self.polls.len() {
            let p = &mut self.polls.items[i];
            if p.saved_task == pos + 1 {
                p.saved_task = poll.saved_task;
            }
        }
    }
}

/// The await tree's signature `sig` extended by a node (`span` at
/// `depth`): what [`Local::push_in_poll`] makes as spans are entered, and
/// [`Local::open_tree_sig`] remakes without the closed ones.
#[inline(always)]
fn sig_step(sig: u64, span: u64, depth: u16) -> u64 {
    (sig.rotate_left(7) ^ span).wrapping_mul(0x100_0000_01b3) ^ u64::from(depth)
}

/// What a short poll's tree keeps of its nodes, one at a time in their
/// order: the nodes marked [`CLOSED`] left out (with what was entered
/// inside them), and a node left next to its own repeat by their going
/// kept once, as [`Local::push_in_poll`] keeps a span entered again. The
/// one rule for the tree's signature ([`Local::open_tree_sig`]) and for
/// the nodes sent ([`Local::send_tree`]).
#[derive(Default)]
struct OpenWalk {
    /// The last node kept.
    last: Option<(u64, u16)>,
    /// Depth of the closed node whose subtree is being left out.
    closed_at: Option<u16>,
}

/// [`OpenWalk::step`]'s verdict on a node.
enum Step {
    /// Kept, at this depth (its mark taken off).
    Keep(u16),
    /// Left out.
    Skip,
    /// A node still open inside a closed one: leaving the closed one out
    /// would cut it from its place, so the tree goes whole.
    Whole,
}

impl OpenWalk {
    #[inline(always)]
    fn step(&mut self, span: u64, marked: u16) -> Step {
        let depth = marked & !CLOSED;
        if let Some(c) = self.closed_at {
            if depth > c {
                return if marked & CLOSED == 0 {
                    Step::Whole
                } else {
                    Step::Skip
                };
            }
            self.closed_at = None;
        }
        if marked & CLOSED != 0 {
            self.closed_at = Some(depth);
            return Step::Skip;
        }
        if self.last == Some((span, depth)) {
            return Step::Skip;
        }
        self.last = Some((span, depth));
        Step::Keep(depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes a short poll's tree keeps, or `None` when it goes whole.
    fn kept(tree: &[(u64, u16)]) -> Option<Vec<(u64, u16)>> {
        let mut walk = OpenWalk::default();
        let mut out = Vec::new();
        for &(span, marked) in tree {
            match walk.step(span, marked) {
                Step::Keep(depth) => out.push((span, depth)),
                Step::Skip => {}
                Step::Whole => return None,
            }
        }
        Some(out)
    }

    #[test]
    fn a_short_polls_tree_keeps_its_open_nodes() {
        // Nothing closed: every node, once where repeated side by side.
        assert_eq!(kept(&[(1, 0), (2, 1), (2, 1)]), Some(vec![(1, 0), (2, 1)]));
        // A closed call and what it entered go; the open wait stays, and
        // the outer span entered again on either side of it counts once.
        assert_eq!(
            kept(&[(1, 0), (2, 1 | CLOSED), (3, 2 | CLOSED), (1, 0), (4, 1)]),
            Some(vec![(1, 0), (4, 1)])
        );
        // An open node inside a closed one: the tree goes whole.
        assert_eq!(kept(&[(1, 0), (2, 1 | CLOSED), (3, 2)]), None);
        // Everything closed: nothing left.
        assert_eq!(kept(&[(1, CLOSED), (2, 1 | CLOSED)]), Some(vec![]));
    }
}
