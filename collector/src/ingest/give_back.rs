//! The way back of a live connection's applied frames: the task applying
//! frames gives each one back to the connection that decoded it, whose next
//! frames are decoded into its memory (`awaitscope_wire::recycle`), as a
//! recording's reader does on its decoding thread. Memory allocated by a
//! connection is reused by it, not freed by the applying thread while the
//! connection allocates anew.

use std::sync::Arc;

use awaitscope_wire::Frame;

use super::budget::Reservation;

/// Where the task applying frames gives an applied frame back to the
/// connection that decoded it.
///
/// A frame given back keeps its memory held against the budget until the
/// connection takes it, which it does as soon as it is told, even while
/// it waits for its socket (a quiet connection holds nothing); at most
/// [`GIVEN_BACK`] wait for it (past them, a frame is dropped where it was
/// applied, as is the frame of a connection gone).
#[derive(Clone)]
pub(crate) struct GiveBack {
    frames: std::sync::mpsc::SyncSender<(Frame, Reservation)>,
    told: Arc<tokio::sync::Notify>,
}

/// A connection's end of its [`GiveBack`].
pub(crate) struct GivenBack {
    frames: std::sync::mpsc::Receiver<(Frame, Reservation)>,
    told: Arc<tokio::sync::Notify>,
}

/// Most applied frames waiting for their connection to take them back.
const GIVEN_BACK: usize = 64;

/// The two ends of a connection's way back for its applied frames.
pub(crate) fn give_back() -> (GiveBack, GivenBack) {
    let (tx, rx) = std::sync::mpsc::sync_channel(GIVEN_BACK);
    let told = Arc::new(tokio::sync::Notify::new());
    (
        GiveBack {
            frames: tx,
            told: told.clone(),
        },
        GivenBack { frames: rx, told },
    )
}

impl GiveBack {
    /// Gives `frame` (and what it holds of the budget) back to its
    /// connection; dropped here if the connection is gone or has
    /// [`GIVEN_BACK`] frames still to take.
    pub(crate) fn give(&self, frame: Frame, held: Reservation) {
        if self.frames.try_send((frame, held)).is_ok() {
            self.told.notify_one();
        }
    }
}

impl GivenBack {
    /// Takes the frames given back so far: the frames decoded next reuse
    /// their memory, and their budget is free again.
    pub(crate) fn take(&self) {
        while let Ok((frame, _held)) = self.frames.try_recv() {
            awaitscope_wire::recycle(frame);
        }
    }

    /// What tells the connection that frames were given back (wait on
    /// its `notified()`).
    pub(crate) fn told(&self) -> Arc<tokio::sync::Notify> {
        self.told.clone()
    }
}
