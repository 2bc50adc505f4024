//! What the hot path pushes into a thread's ring: compact records with raw
//! clock readings. The exporter turns them into wire events.
//!
//! Frequent records (enter, exit, wake, close) are stored inline; rare ones
//! with variable-size payloads are boxed to keep ring slots small.

use std::sync::Arc;

use awaitscope_wire::{CloseKind, Field, WakeOp};

use crate::span_node::SpanNode;

/// An event the exporter sends as a log event (a user event at `WARN` or
/// above, a resource's poll-op or state update), with its fields and, for
/// errors, its causal trace.
pub(crate) struct RawLog {
    pub meta: &'static tracing_core::Metadata<'static>,
    pub class: awaitscope_wire::EventClass,
    pub callsite: u32,
    pub span: u64,
    pub task: u64,
    pub ts: u64,
    pub fields: Vec<Field>,
    /// ERROR events: the causal trace.
    pub trace: Vec<String>,
    /// A poll op that made its task wait: the thread's return addresses
    /// there, innermost first (see `capture::wait_stack`); empty otherwise.
    pub stack: Vec<usize>,
}

/// `value` in `spare`'s allocation (a record or event given back for
/// reuse: its old contents dropped here), or in a new one.
#[inline]
pub(crate) fn in_box<T>(value: T, spare: Option<Box<T>>) -> Box<T> {
    match spare {
        Some(mut b) => {
            *b = value;
            b
        }
        None => Box::new(value),
    }
}

/// A task's wake of itself in its own poll, with the thread's return
/// addresses there, innermost first.
pub(crate) struct RawWakeStack {
    /// The span current there (the task's when none is inside it).
    pub span: u64,
    pub task: u64,
    pub ts: u64,
    pub stack: Vec<usize>,
}

/// A panic seen by the panic hook.
pub(crate) struct RawPanic {
    pub task: u64,
    pub span: u64,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub ts: u64,
    pub trace: Vec<String>,
}

/// A context that left the process as a `traceparent`.
pub(crate) struct RawHandover {
    pub span: u64,
    pub task: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub ts: u64,
    pub trace: Vec<String>,
}

/// One ring slot. Ids are stable span ids; 0 means none. `ts` are raw clock
/// readings.
pub(crate) enum Raw {
    Span(Arc<SpanNode>),
    /// A compact span's creation (see `Capture::new_compact`): sent as
    /// a `SpanNew`, its task inferred by the exporter from its parent.
    SpanCompact {
        id: u64,
        parent: u64,
        ts: u64,
        callsite: u32,
    },
    /// A span was entered (for a task span: a poll starts).
    Enter {
        span: u64,
        /// The span is a task span: a poll starts.
        task: bool,
        ts: u64,
    },
    Exit {
        span: u64,
        /// The span is a task span: a poll ends.
        task: bool,
        /// The `TreeNode`s just before are the poll's new await tree.
        tree: bool,
        /// Task spans: the task's live wakers at the end of the poll.
        wakers: u32,
        ts: u64,
    },
    /// A whole poll of a task during which nothing else was recorded on its
    /// thread (else it is an `Enter` and an `Exit`).
    Poll {
        span: u64,
        start: u64,
        end: u64,
        /// As in `Exit`.
        tree: bool,
        wakers: u32,
    },
    /// One span of the await tree of the poll that ends with the next
    /// task `Exit` or `Poll` on this thread.
    TreeNode {
        task: u64,
        span: u64,
        depth: u16,
    },
    Close {
        span: u64,
        kind: CloseKind,
        ts: u64,
        /// A compact span's: the exporter's model has it only if a node
        /// was made for it.
        compact: bool,
    },
    Record(Box<(u64, Vec<Field>)>),
    FollowsFrom {
        span: u64,
        follows: u64,
    },
    /// A wake, or the drop of a task's last waker outside its poll (clones
    /// and other drops only update the count on the task's node).
    Wake {
        task: u64,
        by: u64,
        op: WakeOp,
        ts: u64,
    },
    Log(Box<RawLog>),
    /// The fields of the [`Raw::SmallLog`] right after it, packed (see
    /// `SmallFields::pack`: the head's bytes sit beside the tag); the two
    /// are pushed together.
    LogFields {
        head: [u8; 4],
        bits: [u64; 3],
    },
    /// A tokio resource event (a poll op or a state update) whose fields
    /// fit inline: they are in the [`Raw::LogFields`] just before it.
    SmallLog {
        callsite: u32,
        class: awaitscope_wire::EventClass,
        /// A state update's `locked` field, for the exporter's model of
        /// held locks.
        locked: Option<bool>,
        span: u64,
        task: u64,
        ts: u64,
    },
    Panic(Box<RawPanic>),
    Handover(Box<RawHandover>),
    /// Where a task woke itself in its own poll (see
    /// `capture::wait_stack::SELF_WAKE_STACK_AT`): sent as a `WakeStack`.
    WakeStack(Box<RawWakeStack>),
}

impl Raw {
    /// When it happened (a raw clock reading), for the records that say:
    /// a whole poll at its end, when it was pushed. Tree nodes, field
    /// records, follows-from links and a small log's fields say nothing:
    /// they go with the record before them.
    #[inline(always)]
    pub fn ts(&self) -> Option<u64> {
        match self {
            Raw::Span(node) => Some(node.ts),
            Raw::SpanCompact { ts, .. } => Some(*ts),
            Raw::Enter { ts, .. }
            | Raw::Exit { ts, .. }
            | Raw::Close { ts, .. }
            | Raw::Wake { ts, .. }
            | Raw::SmallLog { ts, .. } => Some(*ts),
            Raw::Poll { end, .. } => Some(*end),
            Raw::Log(l) => Some(l.ts),
            Raw::Panic(p) => Some(p.ts),
            Raw::Handover(h) => Some(h.ts),
            Raw::WakeStack(w) => Some(w.ts),
            Raw::TreeNode { .. }
            | Raw::Record(_)
            | Raw::FollowsFrom { .. }
            | Raw::LogFields { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ring_slots_stay_small() {
        assert!(
            std::mem::size_of::<super::Raw>() <= 32,
            "{}",
            std::mem::size_of::<super::Raw>()
        );
    }
}
