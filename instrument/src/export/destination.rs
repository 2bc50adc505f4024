//! Where frames go: a collector over TCP, a recording file, or memory.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use awaitscope_wire::{preamble, DropCounts};

use super::tcp::Tcp;

/// One place the exporter writes the stream to: a collector over TCP
/// (see [`Tcp`]), a recording file, or memory; with the events it could not
/// deliver, counted for the next `Dropped` frame.
pub(crate) struct Destination {
    kind: Kind,
    drops: DropCounts,
    reported: DropCounts,
    /// Sequence number of this stream's next frame. Each destination numbers
    /// its own frames: a handshake or `Dropped` frame goes to one
    /// destination only, and a shared number would leave gaps in the
    /// others' streams. A frame lost on the way (destination down or
    /// failed) still takes its number, so the collector sees the gap.
    seq: u64,
}

enum Kind {
    Tcp(Tcp),
    File(Option<BufWriter<File>>, PathBuf),
    Memory(Arc<Mutex<Vec<u8>>>),
}

impl Destination {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            drops: DropCounts::default(),
            reported: DropCounts::default(),
            seq: 0,
        }
    }

    /// Whether this destination is a collector (the only one the token is
    /// for: a recording or a memory buffer never gets it).
    pub fn is_collector(&self) -> bool {
        matches!(self.kind, Kind::Tcp(_))
    }

    /// Takes the sequence number of this stream's next frame.
    pub fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }

    /// Streams to a collector at `addr` (host:port), connecting lazily and
    /// reconnecting with backoff.
    pub fn tcp(addr: String) -> Self {
        Self::new(Kind::Tcp(Tcp::new(addr)))
    }

    /// Writes a recording at `path`.
    pub fn file(path: PathBuf) -> io::Result<Self> {
        let f = File::create(&path)?;
        Ok(Self::new(Kind::File(
            Some(BufWriter::with_capacity(256 * 1024, f)),
            path,
        )))
    }

    /// Appends the stream to a shared buffer.
    pub fn memory(buf: Arc<Mutex<Vec<u8>>>) -> Self {
        Self::new(Kind::Memory(buf))
    }

    /// Opens the stream: preamble and `hello` for files and memory. A TCP
    /// destination keeps `hello` for its first connection (see
    /// [`Destination::send_start`]), else sends its own handshake when it
    /// connects.
    pub fn start(&mut self, hello: &[u8]) {
        let mut bytes = preamble().to_vec();
        bytes.extend_from_slice(hello);
        match &mut self.kind {
            Kind::Tcp(t) => t.start(hello),
            Kind::File(..) | Kind::Memory(_) => self.write(&bytes, 0),
        }
    }

    /// A TCP destination that is down and due for a reconnection attempt.
    pub fn wants_connect(&self) -> bool {
        matches!(&self.kind, Kind::Tcp(t) if t.wants_connect())
    }

    /// Tries to connect a TCP destination; returns whether it did (then
    /// the stream from its start, [`Destination::send_start`], or its
    /// handshake, [`Destination::handshake`], must follow).
    pub fn connect(&mut self) -> bool {
        match &mut self.kind {
            Kind::Tcp(t) => t.connect(&mut self.drops),
            _ => false,
        }
    }

    /// On a TCP destination's first connection, just made: sends the
    /// stream from its start (the `Hello` given to [`Destination::start`]
    /// and every frame since), when it was kept whole; returns whether it
    /// did. Otherwise the handshake must follow.
    pub fn send_start(&mut self) -> bool {
        match &mut self.kind {
            Kind::Tcp(t) => t.send_start(&preamble(), &mut self.drops),
            _ => false,
        }
    }

    /// Sends the preamble and `handshake` (hello, callsites and live
    /// spans, and the drop counts last set with
    /// [`Destination::set_reported`]) on a connection just made.
    pub fn handshake(&mut self, handshake: &[u8]) {
        let Kind::Tcp(t) = &mut self.kind else {
            return;
        };
        let mut bytes = preamble().to_vec();
        bytes.extend_from_slice(handshake);
        t.handshake(bytes, self.reported, &mut self.drops);
    }

    /// Whether this TCP destination was connected before (its next `Hello`
    /// is a reconnect).
    pub fn connected_before(&self) -> bool {
        matches!(&self.kind, Kind::Tcp(t) if t.connected_before())
    }

    /// Whether frames written now would be delivered.
    pub fn is_up(&self) -> bool {
        match &self.kind {
            Kind::Tcp(t) => t.is_up(),
            Kind::File(w, _) => w.is_some(),
            Kind::Memory(_) => true,
        }
    }

    /// Whether frames written now are delivered or kept: up, or a TCP
    /// destination still keeping the stream for its first connection.
    /// When no destination takes frames, the exporter only counts events.
    pub fn takes_frames(&self) -> bool {
        match &self.kind {
            Kind::Tcp(t) => t.is_up() || t.keeps_start(),
            _ => self.is_up(),
        }
    }

    /// Writes encoded frames holding `events` events; counts them as dropped
    /// when the destination is down or fails.
    pub fn write(&mut self, bytes: &[u8], events: u64) {
        match &mut self.kind {
            Kind::Tcp(t) => t.write(bytes, events, &mut self.drops),
            Kind::File(w, path) => match w {
                Some(f) => {
                    if let Err(e) = f.write_all(bytes) {
                        eprintln!(
                            "awaitscope: writing recording {} failed: {e}; recording stopped",
                            path.display()
                        );
                        self.drops.write_failed += events;
                        *w = None;
                    }
                }
                None => self.drops.write_failed += events,
            },
            Kind::Memory(m) => m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(bytes),
        }
    }

    /// Sends what a collector takes now of what waits for it (see
    /// [`Tcp::pump`]); nothing for other destinations.
    pub fn pump(&mut self) {
        if let Kind::Tcp(t) = &mut self.kind {
            t.pump(&mut self.drops);
        }
    }

    /// The last writes at exit: a collector gets until `deadline` to take
    /// what waits for it, the rest is counted as dropped.
    pub fn finish(&mut self, deadline: Instant) {
        if let Kind::Tcp(t) = &mut self.kind {
            t.finish(deadline, &mut self.drops);
        }
    }

    /// Pushes buffered bytes out (a collector's: as far as it takes them).
    pub fn flush(&mut self) {
        match &mut self.kind {
            Kind::Tcp(t) => t.pump(&mut self.drops),
            Kind::File(w, _) => {
                if let Some(f) = w {
                    if f.flush().is_err() {
                        *w = None;
                    }
                }
            }
            Kind::Memory(_) => {}
        }
    }

    /// This destination's own drop counts (buffer drops are added by the
    /// caller).
    pub fn drops(&self) -> DropCounts {
        self.drops
    }

    /// Counts last sent on this destination.
    pub fn last_reported(&self) -> DropCounts {
        self.reported
    }

    /// At exit: says on stderr how many events a collector did not get and
    /// was not told about (it was down, or did not read), the one place
    /// left to count them.
    pub fn warn_undelivered(&self) {
        let Kind::Tcp(t) = &self.kind else {
            return;
        };
        let told = t.told();
        let lost = self.drops.disconnected + self.drops.write_failed;
        let told = told.disconnected + told.write_failed;
        if lost > told {
            eprintln!(
                "awaitscope: {} events were not delivered to the collector at {}",
                lost - told,
                t.addr()
            );
        }
    }

    /// Writes a `Dropped` frame carrying `counts` (a collector knows when
    /// it was written whole), and remembers them as sent.
    pub fn write_report(&mut self, bytes: &[u8], counts: DropCounts) {
        match &mut self.kind {
            Kind::Tcp(t) => t.write_report(bytes, counts, &mut self.drops),
            _ => self.write(bytes, 0),
        }
        self.reported = counts;
    }

    /// Remembers the counts just sent.
    pub fn set_reported(&mut self, counts: DropCounts) {
        self.reported = counts;
    }
}
