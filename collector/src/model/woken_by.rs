//! Who woke a task, and how often.

use awaitscope_wire::SpanId;

/// Most wakers remembered per task in [`WokenBy`].
pub const WOKEN_BY: usize = 8;

/// A waker of a task: the task that woke it (`None`: outside any task)
/// and how many times.
pub type Waker = (Option<SpanId>, u64);

/// Who woke a task and how often, most frequent first, at most
/// [`WOKEN_BY`] wakers: when full, the rarest gives way to the newest.
///
/// The most frequent sits in the task itself, the others on the heap:
/// nearly every wake of a task is by the same waker (itself, or the one
/// task it waits on), and with thousands of live tasks a wake that looked
/// on the heap first waited for a cache line the task's own did not need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WokenBy {
    /// The most frequent waker; its count is 0 when there is none.
    first: Waker,
    /// The others, most frequent first (empty while `first` is none).
    rest: Vec<Waker>,
}

impl WokenBy {
    /// Counts a wake by `by` (one step towards the front per wake keeps the
    /// most frequent first).
    #[inline]
    pub fn note(&mut self, by: Option<SpanId>) {
        if self.first.0 == by && self.first.1 > 0 {
            self.first.1 += 1;
        } else if self.first.1 == 0 {
            self.first = (by, 1);
        } else {
            self.note_rest(by);
        }
    }

    /// [`Self::note`] of a waker other than the first.
    #[inline(never)]
    fn note_rest(&mut self, by: Option<SpanId>) {
        if let Some(i) = self.rest.iter().position(|(w, _)| *w == by) {
            self.rest[i].1 += 1;
            if i > 0 && self.rest[i].1 > self.rest[i - 1].1 {
                self.rest.swap(i, i - 1);
            } else if i == 0 && self.rest[0].1 > self.first.1 {
                std::mem::swap(&mut self.rest[0], &mut self.first);
            }
        } else if self.rest.len() + 1 < WOKEN_BY {
            self.rest.push((by, 1));
        } else if let Some(last) = self.rest.last_mut() {
            *last = (by, 1);
        }
    }

    /// The wakers, most frequent first.
    pub fn iter(&self) -> impl Iterator<Item = &Waker> + '_ {
        let first = (self.first.1 > 0).then_some(&self.first);
        first.into_iter().chain(self.rest.iter())
    }

    /// How many wakers are remembered.
    pub fn len(&self) -> usize {
        usize::from(self.first.1 > 0) + self.rest.len()
    }

    /// Whether no wake was counted.
    pub fn is_empty(&self) -> bool {
        self.first.1 == 0
    }

    /// Forgets every waker, keeping the heap's memory for the next task.
    pub fn clear(&mut self) {
        self.first = (None, 0);
        self.rest.clear();
    }

    /// The wakers as a list, most frequent first.
    pub fn to_vec(&self) -> Vec<Waker> {
        self.iter().copied().collect()
    }
}

impl From<Vec<Waker>> for WokenBy {
    /// Wakers listed most frequent first (as [`WokenBy::to_vec`] gives
    /// them); those counted 0 and any past [`WOKEN_BY`] are left out.
    fn from(mut v: Vec<Waker>) -> Self {
        v.retain(|w| w.1 > 0);
        v.truncate(WOKEN_BY);
        let mut rest = v.into_iter();
        match rest.next() {
            Some(first) => Self {
                first,
                rest: rest.collect(),
            },
            None => Self::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The list every wake used to update, one `Vec` most frequent first:
    /// what [`WokenBy`] keeps, the first apart.
    fn reference(v: &mut Vec<Waker>, by: Option<SpanId>) {
        if let Some(i) = v.iter().position(|(w, _)| *w == by) {
            v[i].1 += 1;
            if i > 0 && v[i].1 > v[i - 1].1 {
                v.swap(i, i - 1);
            }
        } else if v.len() < WOKEN_BY {
            v.push((by, 1));
        } else if let Some(last) = v.last_mut() {
            *last = (by, 1);
        }
    }

    proptest! {
        /// Any run of wakes, from up to twelve wakers (more than are
        /// kept), leaves the same wakers in the same order with the same
        /// counts as the one list; a list made from it reads back equal.
        #[test]
        fn keeps_what_one_list_kept(wakes in prop::collection::vec(0u64..12, 0..400)) {
            let mut w = WokenBy::default();
            let mut v = Vec::new();
            for by in wakes {
                let by = (by > 0).then_some(SpanId(by));
                w.note(by);
                reference(&mut v, by);
                prop_assert_eq!(w.to_vec(), v.clone());
                prop_assert_eq!(w.len(), v.len());
                prop_assert_eq!(w.is_empty(), v.is_empty());
            }
            prop_assert_eq!(WokenBy::from(w.to_vec()), w);
        }
    }

    /// A waker that comes to outnumber the first takes its place.
    #[test]
    fn the_most_frequent_moves_to_the_front() {
        let mut w = WokenBy::default();
        let (a, b) = (Some(SpanId(1)), Some(SpanId(2)));
        w.note(a);
        w.note(b);
        w.note(b);
        assert_eq!(w.to_vec(), vec![(b, 2), (a, 1)]);
        w.clear();
        assert!(w.is_empty());
        assert_eq!(w.iter().count(), 0);
    }
}
