//! Resources (tokio's Mutex, Semaphore, RwLock, Sleep...) with their holders
//! and waiters.

use awaitscope_wire::{names, SpanId, Value};

use super::span::Location;

/// A live resource span.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Span id.
    pub id: SpanId,
    /// Callsite of the resource span.
    pub callsite: u32,
    /// `concrete_type`, e.g. `Mutex`.
    pub concrete_type: String,
    /// `kind`, e.g. `Sync` or `timer`.
    pub kind: String,
    /// Where it was created.
    pub location: Option<Location>,
    /// tokio's `is_internal`: a resource inside another (the semaphore of
    /// a Mutex).
    pub internal: bool,
    /// When the resource's span was created, ns since the process's start.
    pub created: u64,
    /// Tasks holding it (lock owner, readers, permit holders), with a count.
    pub holders: Vec<(SpanId, u32)>,
    /// Latest state-update fields (e.g. `locked`, `permits`), by name.
    pub state: Vec<(String, Value)>,
    /// Where the latest lock holder took it: its await path (innermost
    /// first, at most [`HELD_AT_FRAMES`] lines) at the end of the poll in
    /// which the state update said `locked`.
    pub held_at: Vec<String>,
    /// A timer's deadline, ns since the process's start: when its state
    /// update (the duration left) was sent, plus that duration.
    pub deadline: Option<u64>,
}

/// The field of a timer's state update with the time left until its
/// deadline (tokio's `Sleep`).
pub const DURATION: &str = "duration";
/// The unit of [`DURATION`] (`ms`).
pub const DURATION_UNIT: &str = "duration.unit";

/// Most frames kept of where a lock was taken ([`Resource::held_at`]).
pub const HELD_AT_FRAMES: usize = 12;

impl Resource {
    /// Whether waiting on this resource can take part in a deadlock.
    pub fn is_lock(&self) -> bool {
        matches!(
            self.concrete_type.as_str(),
            names::TYPE_MUTEX | names::TYPE_RWLOCK | names::TYPE_SEMAPHORE
        )
    }

    /// Whether this resource is a timer.
    pub fn is_timer(&self) -> bool {
        matches!(
            self.concrete_type.as_str(),
            names::TYPE_SLEEP | names::TYPE_INTERVAL
        ) || self.kind == names::KIND_TIMER
    }

    /// Adds a hold by `task`.
    pub fn add_holder(&mut self, task: SpanId) {
        if let Some(i) = self.holders.iter().position(|(t, _)| *t == task) {
            self.holders[i].1 = self.holders[i].1.saturating_add(1);
        } else if self.holders.len() < 1024 {
            self.holders.push((task, 1));
        }
    }

    /// Removes one hold by `task`.
    pub fn remove_holder(&mut self, task: SpanId) {
        if let Some(i) = self.holders.iter().position(|(t, _)| *t == task) {
            self.holders[i].1 -= 1;
            if self.holders[i].1 == 0 {
                self.holders.swap_remove(i);
            }
        }
    }

    /// Sets state field `name` to `value`.
    pub fn set_state(&mut self, name: &str, value: &Value) {
        if let Some(i) = self.state.iter().position(|(n, _)| n == name) {
            self.state[i].1 = value.clone();
        } else if self.state.len() < 32 {
            self.state.push((name.to_string(), value.clone()));
        }
    }

    /// Whether `task` holds this resource.
    pub fn held_by(&self, task: SpanId) -> bool {
        self.holders.iter().any(|(t, _)| *t == task)
    }
}
