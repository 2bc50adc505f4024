//! The await tree of a task: the spans entered during its last poll, nested
//! as they were entered (siblings for `join!`/`select!` branches).

use std::sync::Arc;

use awaitscope_wire::{SpanClass, SpanId};

/// One node of an await tree.
#[derive(Clone, Debug, PartialEq)]
pub struct AwaitNode {
    /// The span.
    pub span: SpanId,
    /// Its callsite.
    pub callsite: u32,
    /// Its class (user span, resource or async op).
    pub class: SpanClass,
    /// Index of the parent node; `None` for a child of the task itself.
    pub parent: Option<u16>,
    /// When the span was first entered (ever, not only in this poll).
    pub first_entered: u64,
    /// Label of resources and async ops (kept after the span closes).
    pub label: Option<Arc<str>>,
}

/// The await tree of one poll, as a flat list of nodes in entry order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AwaitTree {
    /// Nodes; a node's parent always comes before it.
    pub nodes: Vec<AwaitNode>,
}

impl AwaitTree {
    /// Forgets the tree (a new poll starts).
    pub fn clear(&mut self) {
        self.nodes.clear();
    }

    /// Adds `span` under `parent` (or finds it there) and returns its index,
    /// `None` when the tree is full. Async-op polls are not nodes: they are
    /// new spans on every poll; their async op stands for them.
    #[allow(clippy::too_many_arguments)]
    pub fn enter(
        &mut self,
        span: SpanId,
        callsite: u32,
        class: SpanClass,
        parent: Option<u16>,
        first_entered: u64,
        label: Option<Arc<str>>,
        max_nodes: usize,
    ) -> Option<u16> {
        // A stale parent (from before the tree was cleared) is no parent.
        let parent = parent.filter(|&p| (p as usize) < self.nodes.len());
        if let Some(i) = self
            .nodes
            .iter()
            .position(|n| n.span == span && n.parent == parent)
        {
            return Some(i as u16);
        }
        if self.nodes.len() >= max_nodes.min(u16::MAX as usize) {
            return None;
        }
        self.nodes.push(AwaitNode {
            span,
            callsite,
            class,
            parent,
            first_entered,
            label,
        });
        Some((self.nodes.len() - 1) as u16)
    }

    /// The node a task waits at, from the deepest leaf up (see
    /// [`AwaitTree::await_point_from`]); `None` when nothing in the tree is
    /// one.
    pub fn await_point(&self, live: impl Fn(SpanId) -> bool) -> Option<usize> {
        self.await_point_from(self.deepest_leaf()?, live)
    }

    /// The node leaf `leaf` waits at: the leaf, or its nearest ancestor,
    /// that is an await point. A span that closed (`live` says which are
    /// still open) is none: a set-up call that returned before the task
    /// parked elsewhere, un-instrumented. Nor is a resource itself: a
    /// Mutex outlives the calls made on it, and tokio enters its span for
    /// a synchronous state change (a guard dropped); a task waits on a
    /// resource only through a call on it still live, an async op below
    /// it. `None` when no node up to the root is one (a harness parked on
    /// a shutdown signal after some set-up: nothing to name).
    pub fn await_point_from(&self, leaf: usize, live: impl Fn(SpanId) -> bool) -> Option<usize> {
        let mut i = leaf;
        // Bounded: a malformed tree's parents may form a cycle.
        for _ in 0..=self.nodes.len() {
            let n = self.nodes.get(i)?;
            if n.class != SpanClass::Resource && live(n.span) {
                return Some(i);
            }
            i = usize::from(n.parent?);
        }
        None
    }

    /// Indices of the leaves (nodes without children).
    pub fn leaves(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len())
            .filter(move |&i| !self.nodes.iter().any(|n| n.parent == Some(i as u16)))
    }

    /// The deepest leaf (last entered among the deepest), if any.
    pub fn deepest_leaf(&self) -> Option<usize> {
        // Every poll end asks: one pass over a small tree whose parents
        // come before their children (as `enter` builds it), else the walk
        // of every leaf up to the root.
        const SMALL: usize = 64;
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        if n <= SMALL {
            let mut depth = [0u16; SMALL];
            let mut has_child = [false; SMALL];
            let mut ordered = true;
            for (i, node) in self.nodes.iter().enumerate() {
                if let Some(p) = node.parent {
                    let p = usize::from(p);
                    if p >= i {
                        ordered = false;
                        break;
                    }
                    depth[i] = depth[p] + 1;
                    has_child[p] = true;
                }
            }
            if ordered {
                let mut best: Option<(usize, u16)> = None;
                for i in 0..n {
                    if !has_child[i] && best.is_none_or(|(_, bd)| depth[i] >= bd) {
                        best = Some((i, depth[i]));
                    }
                }
                return best.map(|(i, _)| i);
            }
        }
        self.deepest_leaf_walk()
    }

    /// [`AwaitTree::deepest_leaf`] by walking up from every leaf.
    fn deepest_leaf_walk(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for i in self.leaves() {
            let d = self.depth(i);
            if best.is_none_or(|(_, bd)| d >= bd) {
                best = Some((i, d));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Depth of node `i` (0 for a child of the task).
    pub fn depth(&self, mut i: usize) -> usize {
        let mut d = 0;
        while let Some(p) = self.nodes[i].parent {
            i = p as usize;
            d += 1;
            if d > self.nodes.len() {
                break;
            }
        }
        d
    }

    /// The path from the root down to node `i`.
    pub fn path(&self, i: usize) -> Vec<usize> {
        let mut p = vec![i];
        let mut cur = i;
        while let Some(parent) = self.nodes[cur].parent {
            cur = parent as usize;
            p.push(cur);
            if p.len() > self.nodes.len() {
                break;
            }
        }
        p.reverse();
        p
    }

    /// [`AwaitTree::path`] written into the end of `buf`, without
    /// allocating (await paths are made for every description of a
    /// finding); `None` when it does not fit.
    pub fn path_in<'b>(&self, i: usize, buf: &'b mut [usize]) -> Option<&'b [usize]> {
        let mut k = buf.len().checked_sub(1)?;
        buf[k] = i;
        let mut cur = i;
        while let Some(parent) = self.nodes[cur].parent {
            cur = parent as usize;
            k = k.checked_sub(1)?;
            buf[k] = cur;
            if buf.len() - k > self.nodes.len() {
                break;
            }
        }
        Some(&buf[k..])
    }

    /// Children of node `parent` (`None`: top-level nodes).
    pub fn children(&self, parent: Option<u16>) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(move |&i| self.nodes[i].parent == parent)
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests_and_dedups() {
        let mut t = AwaitTree::default();
        let a = t
            .enter(SpanId(1), 1, SpanClass::User, None, 0, None, 8)
            .unwrap();
        let b = t
            .enter(SpanId(2), 1, SpanClass::User, Some(a), 0, None, 8)
            .unwrap();
        let c = t
            .enter(SpanId(3), 1, SpanClass::User, Some(a), 0, None, 8)
            .unwrap();
        assert_eq!(
            t.enter(SpanId(2), 1, SpanClass::User, Some(a), 5, None, 8),
            Some(b)
        );
        assert_eq!(t.nodes.len(), 3);
        assert_eq!(t.leaves().collect::<Vec<_>>(), vec![b as usize, c as usize]);
        assert_eq!(t.deepest_leaf(), Some(c as usize));
        assert_eq!(t.path(c as usize), vec![0, 2]);
        assert_eq!(
            t.enter(SpanId(9), 1, SpanClass::User, None, 0, None, 3),
            None
        );
    }

    proptest::proptest! {
        /// The one-pass deepest leaf is the walk's, for trees built with
        /// `enter` and for hand-made node lists (parents after children,
        /// cycles, out of range), small and large.
        #[test]
        fn deepest_leaf_is_the_walks(
            parents in proptest::collection::vec(proptest::option::of(0u16..80), 0..80),
            built in proptest::bool::ANY,
        ) {
            let mut t = AwaitTree::default();
            for (i, p) in parents.iter().enumerate() {
                if built {
                    let p = p.filter(|&p| usize::from(p) < t.nodes.len());
                    t.enter(SpanId(i as u64), 0, SpanClass::User, p, 0, None, 100);
                } else {
                    t.nodes.push(AwaitNode {
                        span: SpanId(i as u64),
                        callsite: 0,
                        class: SpanClass::User,
                        parent: *p,
                        first_entered: 0,
                        label: None,
                    });
                }
            }
            let parent_in_range = t.nodes.iter().all(|n| n.parent.is_none_or(|p| usize::from(p) < t.nodes.len()));
            proptest::prop_assume!(parent_in_range);
            proptest::prop_assert_eq!(t.deepest_leaf(), t.deepest_leaf_walk());
        }

        /// The path written into a buffer is `path`'s, for every node of
        /// trees with cycles and long chains, whenever it fits (and it
        /// fits whenever the buffer is as long as `path`'s).
        #[test]
        fn path_in_is_paths(
            parents in proptest::collection::vec(proptest::option::of(0u16..80), 1..80),
            len in 0usize..40,
        ) {
            let t = AwaitTree {
                nodes: parents
                    .iter()
                    .enumerate()
                    .map(|(i, p)| AwaitNode {
                        span: SpanId(i as u64),
                        callsite: 0,
                        class: SpanClass::User,
                        parent: p.filter(|&p| usize::from(p) < parents.len()),
                        first_entered: 0,
                        label: None,
                    })
                    .collect(),
            };
            for i in 0..t.nodes.len() {
                let want = t.path(i);
                let mut buf = vec![0usize; len];
                match t.path_in(i, &mut buf) {
                    Some(p) => proptest::prop_assert_eq!(p, &want[..]),
                    None => proptest::prop_assert!(want.len() > len),
                }
            }
        }
    }
}
