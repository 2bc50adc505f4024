//! The stream to a collector over TCP: connected lazily, reconnected with
//! backoff, written without ever blocking the exporter thread.
//!
//! Writes are non-blocking: what the collector does not take at once waits
//! in a bounded queue of whole frames, sent as the collector reads. A
//! collector that stops reading costs the exporter nothing (before, a
//! blocking write stalled the exporter for up to 2 s, the program's rings
//! filled, and every destination lost events): a collector that falls more
//! than [`MAX_QUEUED`] bytes behind, or takes nothing for [`WRITE_TIMEOUT`],
//! is disconnected, what waited for it counted, and reconnected with
//! backoff. The drop counts it was told of are those of the last `Dropped`
//! frame written whole to it.
//!
//! Until the first connection, the stream is kept from its start (its
//! `Hello`, then every frame), for [`FIRST_CONNECT_WAIT`] and up to
//! [`FIRST_CONNECT_BYTES`]: a collector started a moment after the program
//! (a script that starts both, a loaded machine), or a first attempt that
//! failed, then gets the whole stream, nothing lost. Past either bound the
//! kept frames are counted as dropped, and a later connection starts with
//! the handshake (the live state) as after a reconnect.
//!
//! Hand-written: the exporter is a plain thread with one socket per
//! collector, and an async runtime or a poller crate would bring more than
//! the few lines below.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use awaitscope_wire::DropCounts;

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// A collector that takes nothing for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most bytes waiting for a collector that reads slowly; past it, the
/// connection is dropped (and made again), what waited counted as
/// `write_failed`.
const MAX_QUEUED: usize = 4 << 20;
/// How long the stream is kept from its start for a first connection (see
/// the module doc): the first three attempts (0, 0.1 and 0.3 s, with the
/// backoff), not a collector started much later, which gets the live state.
const FIRST_CONNECT_WAIT: Duration = Duration::from_millis(500);
/// Most bytes of the stream kept for a first connection: half the queue,
/// so that the frames after it fit too while the collector reads it.
const FIRST_CONNECT_BYTES: usize = MAX_QUEUED / 2;

/// The stream from its start, kept until the first connection.
struct Start {
    /// The `Hello` and every frame written since, encoded.
    bytes: Vec<u8>,
    /// The events those frames hold.
    events: u64,
    /// Frames stop being kept then.
    until: Instant,
}

/// A frame not yet fully written: its bytes, how many are written, and the
/// events it holds (counted as lost if it never goes out).
struct Pending {
    bytes: Vec<u8>,
    sent: usize,
    events: u64,
    /// The drop counts it carries, if it is a `Dropped` frame.
    report: Option<DropCounts>,
}

/// A TCP destination: the connection, its backoff, and what waits to be sent.
pub(crate) struct Tcp {
    addr: String,
    stream: Option<TcpStream>,
    next_attempt: Instant,
    backoff: Duration,
    /// A `Hello` was already sent on an earlier connection.
    connected_before: bool,
    queue: VecDeque<Pending>,
    queued: usize,
    /// When the collector last took bytes (or the queue became non-empty).
    progress: Instant,
    /// The drop counts of the last `Dropped` frame written whole to the
    /// connection (the collector told as far as the program can know).
    told: DropCounts,
    /// The stream from its start, until the first connection (see the
    /// module doc); `None` once connected or past its bounds.
    start: Option<Start>,
}

impl Tcp {
    /// A destination for the collector at `addr` (host:port), not connected.
    pub fn new(addr: String) -> Self {
        Self {
            addr,
            stream: None,
            next_attempt: Instant::now(),
            backoff: BACKOFF_MIN,
            connected_before: false,
            queue: VecDeque::new(),
            queued: 0,
            progress: Instant::now(),
            told: DropCounts::default(),
            start: Some(Start {
                bytes: Vec::new(),
                events: 0,
                until: Instant::now() + FIRST_CONNECT_WAIT,
            }),
        }
    }

    /// The stream's `Hello` (encoded): kept, for a first connection, with
    /// the frames that follow it.
    pub fn start(&mut self, hello: &[u8]) {
        if let Some(s) = &mut self.start {
            s.bytes.clear();
            s.bytes.extend_from_slice(hello);
        }
    }

    /// Whether frames are still kept for a first connection (within the
    /// bounds: a frame written now would be kept).
    pub fn keeps_start(&self) -> bool {
        self.start
            .as_ref()
            .is_some_and(|s| s.bytes.len() < FIRST_CONNECT_BYTES && Instant::now() < s.until)
    }

    /// Keeps a frame of `events` events written before the first
    /// connection; false (and the frames kept so far counted as
    /// `disconnected`, and no longer kept) past the bounds.
    fn keep_for_start(&mut self, bytes: &[u8], events: u64, drops: &mut DropCounts) -> bool {
        let Some(s) = &mut self.start else {
            return false;
        };
        if s.bytes.len() + bytes.len() <= FIRST_CONNECT_BYTES && Instant::now() < s.until {
            s.bytes.extend_from_slice(bytes);
            s.events += events;
            return true;
        }
        drops.disconnected += s.events;
        self.start = None;
        false
    }

    /// On the first connection, just made: sends the preamble (`preamble`)
    /// and the stream kept from its start, and returns true; false when it
    /// was not kept (then the handshake follows, see [`Tcp::handshake`]).
    pub fn send_start(&mut self, preamble: &[u8], drops: &mut DropCounts) -> bool {
        let Some(s) = self.start.take() else {
            return false;
        };
        if self.stream.is_none() {
            drops.disconnected += s.events;
            return false;
        }
        let mut bytes = Vec::with_capacity(preamble.len() + s.bytes.len());
        bytes.extend_from_slice(preamble);
        bytes.extend_from_slice(&s.bytes);
        self.connected_before = true;
        self.queue_frame(bytes, s.events, None);
        self.pump(drops);
        true
    }

    /// The drop counts last written whole to a collector (see `told`).
    pub fn told(&self) -> DropCounts {
        self.told
    }

    /// The collector's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Down and due for a connection attempt.
    pub fn wants_connect(&self) -> bool {
        self.stream.is_none() && Instant::now() >= self.next_attempt
    }

    /// Whether a `Hello` was sent on an earlier connection.
    pub fn connected_before(&self) -> bool {
        self.connected_before
    }

    /// Connected.
    pub fn is_up(&self) -> bool {
        self.stream.is_some()
    }

    /// Tries to connect; returns whether it did. The stream kept from its
    /// start ([`Tcp::send_start`]) or the handshake ([`Tcp::handshake`])
    /// goes first.
    pub fn connect(&mut self, drops: &mut DropCounts) -> bool {
        match try_connect(&self.addr) {
            Ok(stream) => {
                self.stream = Some(stream);
                self.backoff = BACKOFF_MIN;
                true
            }
            Err(_) => {
                self.fail(drops);
                false
            }
        }
    }

    /// Sends `bytes` (preamble and handshake, ending with the drop counts
    /// `counts`) on the connection just made.
    pub fn handshake(&mut self, bytes: Vec<u8>, counts: DropCounts, drops: &mut DropCounts) {
        self.connected_before = true;
        self.queue_frame(bytes, 0, Some(counts));
        self.pump(drops);
    }

    /// Sends `bytes`, a frame of `events` events, or queues it; counts it as
    /// dropped when down (`disconnected`) or when the queue is full
    /// (`write_failed`).
    pub fn write(&mut self, bytes: &[u8], events: u64, drops: &mut DropCounts) {
        self.send(bytes, events, None, drops);
    }

    /// Sends a `Dropped` frame carrying `counts`: the collector is told
    /// them once it is written whole.
    pub fn write_report(&mut self, bytes: &[u8], counts: DropCounts, drops: &mut DropCounts) {
        self.send(bytes, 0, Some(counts), drops);
    }

    fn send(
        &mut self,
        bytes: &[u8],
        events: u64,
        report: Option<DropCounts>,
        drops: &mut DropCounts,
    ) {
        if self.stream.is_none() {
            if !self.keep_for_start(bytes, events, drops) {
                drops.disconnected += events;
            }
            return;
        }
        if self.queue.is_empty() {
            let Some(s) = &mut self.stream else {
                return;
            };
            match write_some(s, bytes) {
                Ok(n) if n == bytes.len() => {
                    if let Some(r) = report {
                        self.told = r;
                    }
                    return;
                }
                Ok(n) => {
                    self.queue_frame(bytes.to_vec(), events, report);
                    if let Some(p) = self.queue.front_mut() {
                        p.sent = n;
                    }
                }
                Err(_) => {
                    drops.write_failed += events;
                    self.fail(drops);
                }
            }
            return;
        }
        if self.queued + bytes.len() > MAX_QUEUED {
            // The collector falls behind by more than the queue holds: this
            // frame and the queued ones are lost, and the connection with
            // them. A stream with frames missing in the middle would leave
            // the collector's model wrong for good (a task whose close was
            // lost stays live, and looks stuck); the reconnect's handshake
            // gives it the live state again.
            drops.write_failed += events;
            self.fail(drops);
            return;
        }
        self.queue_frame(bytes.to_vec(), events, report);
        self.pump(drops);
    }

    fn queue_frame(&mut self, bytes: Vec<u8>, events: u64, report: Option<DropCounts>) {
        if self.queue.is_empty() {
            self.progress = Instant::now();
        }
        self.queued += bytes.len();
        self.queue.push_back(Pending {
            bytes,
            sent: 0,
            events,
            report,
        });
    }

    /// Sends what the collector takes now of the queue; disconnects a
    /// collector that took nothing for [`WRITE_TIMEOUT`].
    pub fn pump(&mut self, drops: &mut DropCounts) {
        let Some(s) = &mut self.stream else {
            return;
        };
        while let Some(p) = self.queue.front_mut() {
            match write_some(s, &p.bytes[p.sent..]) {
                Ok(0) => break,
                Ok(n) => {
                    p.sent += n;
                    self.progress = Instant::now();
                    if p.sent < p.bytes.len() {
                        break;
                    }
                    self.queued -= p.bytes.len();
                    if let Some(r) = p.report {
                        self.told = r;
                    }
                    self.queue.pop_front();
                }
                Err(_) => {
                    self.fail(drops);
                    return;
                }
            }
        }
        if !self.queue.is_empty() && self.progress.elapsed() >= WRITE_TIMEOUT {
            self.fail(drops);
        }
    }

    /// The last writes, at exit: blocks until the queue is sent or
    /// `deadline`; what is left then is counted as dropped.
    pub fn finish(&mut self, deadline: Instant, drops: &mut DropCounts) {
        if let Some(s) = self.start.take() {
            // Never connected: what was kept for it is lost.
            drops.disconnected += s.events;
        }
        while self.stream.is_some() && !self.queue.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                self.fail(drops);
                return;
            }
            let Some(s) = &mut self.stream else {
                return;
            };
            if s.set_nonblocking(false).is_err()
                || s.set_write_timeout(Some(deadline - now)).is_err()
            {
                self.fail(drops);
                return;
            }
            self.progress = now;
            self.pump(drops);
        }
    }

    /// Drops the connection; what was queued is counted as dropped.
    fn fail(&mut self, drops: &mut DropCounts) {
        for p in self.queue.drain(..) {
            drops.write_failed += p.events;
        }
        self.queued = 0;
        self.stream = None;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// One write: the bytes taken, 0 when the collector takes nothing now (a
/// non-blocking socket whose buffer is full, or a blocking one that timed
/// out); an error when the connection failed.
fn write_some(s: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    match s.write(bytes) {
        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(0)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

fn try_connect(addr: &str) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
