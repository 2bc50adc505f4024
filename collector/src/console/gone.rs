//! Console's tasks, resources and async ops that closed, remembered so
//! that one console sends again is not made again.
//!
//! console-subscriber sends a new subscriber everything it retains (closed
//! entities included, for an hour by default), and then, in its next
//! update, everything it never sent in an update of its own: on the first
//! connection, every entity that was created before it, closed or not.
//! The mapping forgets an entity when it closes; without this memory a
//! task that completed before the recording started would be made, and
//! completed, twice (and the report count two tasks), and so would each
//! closed resource and async op. The tasks remembered also tell, at a
//! reconnect, the same program (whose closed tasks console sends again)
//! from another one started on its address (`Mapper::same_program`).

use std::collections::{HashMap, VecDeque};

/// Closed entities remembered, per kind. A reconnect to a busy program
/// may be sent more closed entities than this (console retains every
/// one of the last hour): the oldest are forgotten first, and one of
/// those sent again is made again, closed where it was.
pub(super) const MAX_GONE: usize = 1 << 17;

/// The closed entities of one kind: console id, creation time (unix ns)
/// and what else the mapping still needs of each (`V`: an async op's
/// resource), oldest first.
#[derive(Debug)]
pub(super) struct Gone<V = ()> {
    created: HashMap<u64, (u64, V)>,
    order: VecDeque<u64>,
}

impl<V> Default for Gone<V> {
    fn default() -> Self {
        Self {
            created: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V: Copy> Gone<V> {
    /// Entity `id`, created at `created`, closed; `v` is kept with it.
    pub(super) fn remember(&mut self, id: u64, created: u64, v: V) {
        if self.created.insert(id, (created, v)).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_GONE {
            if let Some(old) = self.order.pop_front() {
                self.created.remove(&old);
            }
        }
    }

    /// Whether entity `id`, created at `created` (as console sends it now),
    /// is one that closed already. Console's ids are the program's span
    /// ids, which a later span may reuse: another creation time is
    /// another entity.
    pub(super) fn closed(&self, id: u64, created: u64) -> bool {
        self.created.get(&id).is_some_and(|c| c.0 == created)
    }

    /// Whether none is remembered.
    pub(super) fn is_empty(&self) -> bool {
        self.created.is_empty()
    }

    /// What was kept with entity `id`, if it closed.
    pub(super) fn kept(&self, id: u64) -> Option<V> {
        self.created.get(&id).map(|c| c.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_entity_is_told_by_its_id_and_creation() {
        let mut g = Gone::default();
        g.remember(7, 100, 3u64);
        assert!(g.closed(7, 100));
        assert_eq!(g.kept(7), Some(3));
        assert_eq!(g.kept(8), None);
        assert!(!g.closed(7, 200), "the id reused by a later span");
        assert!(!g.closed(8, 100));
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_cap() {
        let mut g = Gone::default();
        for id in 0..=MAX_GONE as u64 {
            g.remember(id, 1, ());
        }
        assert!(!g.closed(0, 1), "the oldest went");
        assert!(g.closed(1, 1) && g.closed(MAX_GONE as u64, 1));
        assert_eq!(g.created.len(), MAX_GONE);
    }
}
