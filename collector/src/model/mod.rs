//! The model: processes, their task trees, spans, resources and await trees,
//! and how events change them.
//!
//! The model applies events and reports what changed ([`Change`]) to an
//! [`Observer`]; it knows nothing of detectors, which observe it
//! (`crate::detect`). [`crate::Model`] puts the two together.
//!
//! * [`process`]: a producer process and the lookups in it.
//! * [`apply`]: how each event changes a process (and `task_apply`, the
//!   task it is about).
//! * [`merge`]: the merge of a batch's per-thread runs in time order.
//! * [`labels`]: how tasks, spans and await points are named.
//! * [`stall`]: what the producer saw of a poll that ran too long.
//! * [`handover`]: contexts a process sent to others as `traceparent`s.
//! * [`completed`]: the completed tasks kept in detail, indexed by id.
//! * [`task`], [`span`], [`resource`], [`await_tree`]: what a process holds.
//!
//! Time: waits and polls that ended are judged by their own events'
//! timestamps; what is still going on, at [`Process::judged_now`] (the
//! process clock held back to threads whose events may still be on their
//! way). State a producer sends again at a handshake (between a `Hello`
//! and its first `Thread`) starts no wait: how long a task has waited is
//! then unknown, not measured from its spawn.

pub mod apply;
pub mod await_tree;
pub mod change;
pub mod completed;
pub mod file_memo;
pub mod handover;
pub mod hash;
pub mod labels;
pub mod late_wake;
pub mod merge;
pub mod process;
pub mod resource;
pub mod snapshot;
pub mod span;
pub mod stall;
pub mod task;
mod task_apply;
pub mod timer;
mod warm;
pub mod woken_by;

pub use change::{Change, ChangeKind};
pub use labels::{shown, task_label};
pub use process::{Observer, Process};
pub use snapshot::ProcessSnapshot;
pub use task::{Task, TaskState};
