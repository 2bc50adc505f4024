//! Viewers: UIs (`awaitscope --connect ADDR`) watching a running
//! `awaitscope serve` over TCP, on the same port as the producers.
//!
//! # Protocol
//!
//! The server tells producers and viewers apart by the first bytes a peer
//! sends: producers open with the wire [`MAGIC`](awaitscope_wire::MAGIC)
//! (`AWSCOPE\0`), viewers with [`VIEWER_MAGIC`] (`AWSVIEW\0`). The two
//! differ at the fourth byte, so at most four bytes are read before the
//! connection is routed.
//!
//! ```text
//! viewer → serve:  greeting = VIEWER_MAGIC (8) version (u16 LE) token_len (u16 LE) token (token_len bytes, UTF-8)
//!                  and nothing after it (any further byte closes the connection)
//! serve → viewer:  reply    = VIEWER_MAGIC (8) version (u16 LE) status (u8)
//!                  status 0 (accepted): message*
//!                  status 1 (refused):  reason_len (u16 LE) reason (UTF-8), then close
//! message          = kind (u8) body
//!   kind 0, frame:   a wire frame exactly as producers send it: length (u32 LE) postcard `Frame`
//!   kind 1, control: length (u32 LE) JSON of a [`Control`] (at most MAX_CONTROL_LEN bytes)
//!   kind 2, snapshot: length (u32 LE) postcard [`ProcessSnapshot`], starting with its format
//!                    version (at most MAX_SNAPSHOT_LEN bytes)
//! ```
//!
//! The token rules are the producers' (`--token` / `AWAITSCOPE_TOKEN`,
//! required with `--allow-remote`): a viewer must present the token when the
//! server has one. An empty token field means none.
//!
//! # Late join
//!
//! A viewer that connects while producers already run first gets, per
//! process, a snapshot of the server's model of it (a
//! [`ProcessSnapshot`](crate::model::ProcessSnapshot), installed with
//! [`Model::restore_process`](crate::Model::restore_process)): its
//! `Hello` (without the token), callsites, threads and their entered spans,
//! live spans, live and retained tasks with their whole history (poll
//! counts, busy and scheduled times, histograms, wakes and wakers, poll
//! state, await tree, logs), the summaries of the completed tasks no longer
//! kept in detail, resources with their holders and state, the producer's
//! and the server's drop counts, notes, counters, and whether it is still
//! connected. Each snapshot is followed by the detector episodes in
//! progress in that process ([`Control::Ongoing`] per task,
//! [`Control::OngoingInProcess`] for what detectors remember of the
//! process as a whole: deadlocks in progress, drops reported), which
//! are detector memory rather than model state; then come the server's
//! findings ([`Control::Finding`], with their deduplication keys so that the
//! viewer's own detectors add to them rather than repeat them), the
//! occurrences still open in them with what is settled of their findings
//! ([`Control::Unsettled`], [`Control::Open`]: a `long_poll` later found
//! `descheduled` is then taken back by the viewer too, as by a viewer that
//! was there from the start) and [`Control::Synced`]. From then on the
//! viewer gets every frame the server applies, in the order it applies
//! them.
//!
//! The snapshots are taken from the server's [`Model`](crate::Model)
//! rather than from a log of the frames seen: the model already holds
//! exactly the state, bounded by its own retention, so a late join costs no
//! memory and no work on the ingest path until a viewer actually connects.
//! They are taken and the viewer registered under the model lock, so no
//! frame is missed or seen twice between the two.
//!
//! A snapshot message is at most [`MAX_SNAPSHOT_LEN`] bytes: a process
//! whose snapshot would be larger is sent without its completed tasks, then
//! without the live tasks, resources and spans that do not fit, with a note
//! saying so (at a few hundred bytes per task, the cap holds well over
//! 100,000 live tasks). A viewer refuses a longer snapshot message, or one
//! that does not decode, as bad data from the server, before touching its
//! model.
//!
//! # Slow viewers
//!
//! Each viewer has its own queue, bounded in bytes
//! ([`ServerConfig::viewer_queue_bytes`](super::server::ServerConfig)). The
//! task applying frames only ever appends to it; when it is full, event
//! batches for that viewer are dropped and counted (per process), while
//! their callsites and thread names are kept and sent ahead of the next
//! batch that fits, with a [`Control::Dropped`] the viewer adds to the
//! process's dropped-events count. Frames other than event batches (hello,
//! drop counts, goodbye) and control messages are small and never dropped.
//! A slow viewer therefore never slows ingest or other viewers.
//!
//! What every viewer holds (queued, or taken and being written) is also
//! held against the viewers' share of the server's memory budget, and one
//! viewer may hold at most its part of that share (the share divided by the
//! viewers connected), so that many viewers that do not read stay within
//! the budget together.
//!
//! # Where it is
//!
//! The messages and their encoding are in `protocol.rs`; a late join's
//! state (snapshots and controls) in `late_join.rs`; the server's queues
//! per viewer in `queue.rs`; the viewer's side, which connects and reads,
//! in `client.rs`.

mod client;
mod late_join;
mod protocol;
mod queue;

pub use client::{Client, ClientError};
pub use late_join::{encode_snapshot, rebuild, Rebuild};
pub use protocol::{
    apply, decode_message, encode_control, encode_frame_msg, greeting, is_viewer_prefix,
    parse_greeting, reply, Control, Greeting, GreetingError, Message, MessageError, GREETING_HEAD,
    GREETING_MAX, MAX_CONTROL_LEN, MAX_SNAPSHOT_LEN, MAX_TOKEN_LEN, VIEWER_MAGIC, VIEWER_VERSION,
};
pub(crate) use queue::{Outgoing, Pushed, ViewerQueue, Viewers};
