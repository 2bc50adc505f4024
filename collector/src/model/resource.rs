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
    /// Of an internal resource: the resource it is inside, when that one
    /// was the current span at its creation (tokio makes a Semaphore's,
    /// Mutex's or RwLock's semaphore inside the outer one's span). A
    /// Semaphore's permits and holders are kept on its inner semaphore.
    pub outer: Option<SpanId>,
    /// When the resource's span was created, ns since the process's start.
    pub created: u64,
    /// Tasks holding it (lock owner, readers, permit holders), with a count.
    pub holders: Vec<(SpanId, u32)>,
    /// Latest state-update fields (e.g. `locked`, `permits`), by name.
    pub state: Vec<(String, Value)>,
    /// Where its holders took it, each holder's await path (innermost
    /// first, at most [`HELD_AT_FRAMES`] lines) at the end of the poll
    /// that took it (a lock, a reader's hold, permits), for at most
    /// [`HELD_AT_HOLDERS`] holders. A Semaphore's are on it, not on its
    /// inner semaphore where its holders are counted.
    pub held_at: Vec<(SpanId, Vec<String>)>,
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

/// Most holders whose taking of a resource is kept ([`Resource::held_at`]):
/// past it, the oldest is forgotten.
pub const HELD_AT_HOLDERS: usize = 16;

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

    /// Adds `n` holds by `task` (a lock, a reader, permits).
    pub fn add_holder(&mut self, task: SpanId, n: u32) {
        if let Some(i) = self.holders.iter().position(|(t, _)| *t == task) {
            self.holders[i].1 = self.holders[i].1.saturating_add(n);
        } else if self.holders.len() < 1024 && n > 0 {
            self.holders.push((task, n));
        }
    }

    /// Removes up to `n` holds by `task`.
    pub fn remove_holder(&mut self, task: SpanId, n: u32) {
        if let Some(i) = self.holders.iter().position(|(t, _)| *t == task) {
            self.holders[i].1 = self.holders[i].1.saturating_sub(n);
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

    /// Applies state field `name`'s `value` as its `name.op` says:
    /// [`names::OP_ADD`] and [`names::OP_SUB`] change the value known
    /// (tokio sends a semaphore's permits and an RwLock's readers as
    /// changes); [`names::OP_OVERRIDE`], or no op, sets it. A change to a
    /// value never set (its resource made before the stream began) leaves
    /// it unknown rather than showing the change as the value.
    pub fn apply_state(&mut self, name: &str, value: &Value, op: Option<&str>) {
        let add = match op {
            Some(names::OP_ADD) => true,
            Some(names::OP_SUB) => false,
            _ => return self.set_state(name, value),
        };
        let change = |old: u64, by: u64| {
            if add {
                old.saturating_add(by)
            } else {
                old.saturating_sub(by)
            }
        };
        let known = self.state.iter_mut().find(|(n, _)| n == name);
        match (known, value) {
            (Some((_, Value::U64(old))), Value::U64(by)) => *old = change(*old, *by),
            (Some((_, Value::I64(old))), Value::I64(by)) if *old >= 0 && *by >= 0 => {
                let v = change(*old as u64, *by as u64);
                *old = i64::try_from(v).unwrap_or(i64::MAX);
            }
            // A change of a kind the value does not have: no longer known.
            (Some(_), _) => self.state.retain(|(n, _)| n != name),
            (None, _) => {}
        }
    }

    /// Whether `task` holds this resource.
    pub fn held_by(&self, task: SpanId) -> bool {
        self.holders.iter().any(|(t, _)| *t == task)
    }

    /// Where `task` took this resource, if that was seen.
    pub fn taken_by(&self, task: SpanId) -> Option<&[String]> {
        self.held_at
            .iter()
            .find(|(t, _)| *t == task)
            .map(|(_, p)| p.as_slice())
    }

    /// Keeps where `task` took this resource (its latest taking).
    pub fn set_taken(&mut self, task: SpanId, path: Vec<String>) {
        self.held_at.retain(|(t, _)| *t != task);
        if self.held_at.len() >= HELD_AT_HOLDERS {
            self.held_at.remove(0);
        }
        self.held_at.push((task, path));
    }
}
