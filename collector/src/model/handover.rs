//! Contexts a process sent to other processes ([`Event::Handover`]: the
//! program took a W3C `traceparent` of one of its spans to send with a
//! message), kept by their ids so that a consumer's causal trace, which
//! ends at that `traceparent`, can continue here (see [`crate::stitch`]).
//!
//! [`Event::Handover`]: awaitscope_wire::Event::Handover

use std::collections::{HashMap, VecDeque};

use awaitscope_wire::{Handover, SpanId};

/// Most contexts kept per process; past it the oldest are forgotten (a
/// consumer's trace then ends at the `traceparent`, as it would without
/// the producer).
pub const MAX_HANDOVERS: usize = 8192;

/// A trace id and a span id, as sent in a `traceparent`.
pub type W3cIds = ([u8; 16], [u8; 8]);

/// A context the process sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentContext {
    /// The span whose context it is.
    pub span: Option<SpanId>,
    /// The task polled where it was taken.
    pub task: Option<SpanId>,
    /// That task's name, when the process named it.
    pub task_name: Option<String>,
    /// When it was taken (latest time), ns since the process started.
    pub ts: u64,
    /// The context's causal trace in this process, innermost first.
    pub trace: Vec<String>,
}

/// The contexts a process sent, by their W3C ids (bounded, oldest out).
#[derive(Clone, Debug, Default)]
pub struct Handovers {
    by_ids: HashMap<W3cIds, SentContext>,
    order: VecDeque<W3cIds>,
    /// Handover events applied so far (a context sent twice counts twice).
    pub received: u64,
}

impl Handovers {
    /// Keeps the context of `h`; `task_name` is its task's name.
    pub fn insert(&mut self, h: &Handover, task_name: Option<String>) {
        self.received += 1;
        let ids = (h.trace_id, h.span_id);
        let sent = SentContext {
            span: h.span,
            task: h.task,
            task_name,
            ts: h.ts,
            trace: h.trace.clone(),
        };
        if self.by_ids.insert(ids, sent).is_none() {
            self.order.push_back(ids);
            while self.order.len() > MAX_HANDOVERS {
                if let Some(old) = self.order.pop_front() {
                    self.by_ids.remove(&old);
                }
            }
        }
    }

    /// The context sent with these ids, if this process sent it.
    pub fn get(&self, ids: &W3cIds) -> Option<&SentContext> {
        self.by_ids.get(ids)
    }

    /// The contexts kept, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&W3cIds, &SentContext)> {
        self.by_ids.iter()
    }

    /// How many contexts are kept.
    pub fn len(&self) -> usize {
        self.by_ids.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Handover {
        Handover {
            span: Some(SpanId(n.into())),
            task: None,
            trace_id: [n | 1; 16],
            span_id: [n | 1; 8],
            ts: n.into(),
            trace: vec![format!("0: app::f{n}")],
        }
    }

    #[test]
    fn keeps_the_latest_and_forgets_the_oldest_past_the_cap() {
        let mut hs = Handovers::default();
        hs.insert(&h(2), Some("api".into()));
        hs.insert(&h(2), None);
        assert_eq!(hs.len(), 1);
        assert_eq!(hs.received, 2);
        assert_eq!(hs.get(&([3; 16], [3; 8])).unwrap().task_name, None);
        for i in 0..MAX_HANDOVERS + 10 {
            let mut e = h(4);
            e.trace_id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            hs.insert(&e, None);
        }
        assert_eq!(hs.len(), MAX_HANDOVERS);
        assert!(
            hs.get(&([3; 16], [3; 8])).is_none(),
            "the oldest went first"
        );
    }
}
