//! Where the UI's model comes from: the embedded collector ([`LiveFeed`]),
//! a running `awaitscope serve` over TCP ([`ConnectFeed`]), the recordings
//! of a running `awaitscope serve --record-dir DIR` ([`FollowFeed`]), or a
//! recording replayed through time ([`ReplayFeed`]). The UI only ever takes
//! snapshots; ingest runs on other threads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use awaitscope_collector::ingest::server::{Server, ServerConfig, ServerHandle};
use awaitscope_collector::ingest::viewer::{self, Client, ClientError, Control, Message};
use awaitscope_collector::Model;
use awaitscope_wire::{decode_frame, Body, Event, Frame, FrameReader, Preamble};

use crate::snapshot::{Snapshot, TaskKey};
use crate::ui::app::ReplayCmd;

/// A source of model snapshots.
pub trait Feed {
    /// Advances (replay) and tells whether the model changed since the
    /// last snapshot.
    fn poll(&mut self) -> bool;
    /// A snapshot with the detail of `detail`.
    fn snapshot(&mut self, detail: Option<TaskKey>) -> Snapshot;
    /// Description for the header, and whether all is well.
    fn status(&self) -> (String, bool);
    /// Replay position, end and playing, for a replay.
    fn replay(&self) -> Option<(u64, u64, bool)> {
        None
    }
    /// Replay control.
    fn control(&mut self, _c: ReplayCmd) {}
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The embedded collector: a TCP server on its own runtime thread.
pub struct LiveFeed {
    handle: ServerHandle,
    addr: SocketAddr,
    label: String,
    last_frames: u64,
    last_snap: Instant,
    _rt: tokio::runtime::Runtime,
}

impl LiveFeed {
    /// Binds the collector on `listen` (port 0: any free port) and serves.
    pub fn start(listen: SocketAddr, label: &str) -> Result<LiveFeed, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("collector")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let cfg = ServerConfig {
            listen,
            scan_interval: Duration::from_millis(500),
            ..ServerConfig::default()
        };
        let server = rt.block_on(Server::bind(cfg)).map_err(|e| e.to_string())?;
        let addr = server.local_addr();
        let handle = server.handle();
        rt.spawn(server.run_until(std::future::pending()));
        Ok(LiveFeed {
            handle,
            addr,
            label: label.replace("{addr}", &addr.to_string()),
            last_frames: u64::MAX,
            last_snap: Instant::now(),
            _rt: rt,
        })
    }

    /// The address the collector listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server handle (reports, counters).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }
}

impl Feed for LiveFeed {
    fn poll(&mut self) -> bool {
        let frames = self.handle.stats().frames.load(Ordering::Relaxed);
        // New frames, or time passed (durations grow, the scanner finds
        // stalls without new frames).
        frames != self.last_frames || self.last_snap.elapsed() >= Duration::from_millis(500)
    }

    fn snapshot(&mut self, detail: Option<TaskKey>) -> Snapshot {
        self.last_frames = self.handle.stats().frames.load(Ordering::Relaxed);
        self.last_snap = Instant::now();
        self.handle.with_model(|m| Snapshot::build(m, detail))
    }

    fn status(&self) -> (String, bool) {
        (self.label.clone(), true)
    }
}

/// What `--connect TARGET` names: a running serve's address, or the record
/// directory of one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectTarget {
    /// `host:port` (a socket address, or a host name and a port).
    Addr(String),
    /// A record directory.
    Dir(PathBuf),
}

impl ConnectTarget {
    /// A socket address, or `host:port` that is not an existing directory,
    /// is an address; anything else a directory.
    pub fn parse(s: &str) -> ConnectTarget {
        if s.parse::<SocketAddr>().is_ok() {
            return ConnectTarget::Addr(s.to_string());
        }
        let host_port = s.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(['/', '\\'])
                && !port.is_empty()
                && port.parse::<u16>().is_ok()
        });
        if host_port && !Path::new(s).is_dir() {
            ConnectTarget::Addr(s.to_string())
        } else {
            ConnectTarget::Dir(PathBuf::from(s))
        }
    }
}

/// Shortest and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Connection state shown in the header.
struct ConnState {
    status: String,
    ok: bool,
    connected: bool,
    /// Bumped when the model changes.
    generation: u64,
}

/// A running `awaitscope serve`, over TCP: its model is installed here from
/// the snapshots of its processes it sends on connect (history included),
/// then follows every frame it applies. On a lost connection the last model
/// stays on screen (frozen) while a thread of its own reconnects with
/// backoff; a new connection rebuilds the model from scratch. The UI thread
/// never touches the network.
pub struct ConnectFeed {
    model: Arc<Mutex<Model>>,
    state: Arc<Mutex<ConnState>>,
    stop: Arc<AtomicBool>,
    last_gen: u64,
    last_snap: Instant,
}

impl ConnectFeed {
    /// Starts connecting to `addr` (`host:port`) with `token`.
    pub fn start(addr: String, token: Option<String>) -> ConnectFeed {
        let model = Arc::new(Mutex::new(Model::default()));
        let state = Arc::new(Mutex::new(ConnState {
            status: format!("connecting to serve at {addr}"),
            ok: true,
            connected: false,
            generation: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, st) = (model.clone(), state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("connect".into())
            .spawn(move || connect_loop(&addr, token.as_deref(), &m, &s, &st))
            .expect("thread");
        ConnectFeed {
            model,
            state,
            stop,
            last_gen: u64::MAX,
            last_snap: Instant::now(),
        }
    }

    /// Runs `f` on the model (tests; the UI takes snapshots).
    pub fn with_model<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.model.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the model is synced with a connected serve.
    pub fn connected(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connected
    }
}

impl Drop for ConnectFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn set_state(state: &Mutex<ConnState>, status: String, ok: bool, connected: bool) {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.status = status;
    s.ok = ok;
    s.connected = connected;
    s.generation += 1;
}

/// Sleeps `d` in short steps; false when stopped meanwhile.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

fn connect_loop(
    addr: &str,
    token: Option<&str>,
    model: &Mutex<Model>,
    state: &Mutex<ConnState>,
    stop: &AtomicBool,
) {
    let mut backoff = BACKOFF_MIN;
    let mut ever = false;
    while !stop.load(Ordering::Relaxed) {
        let (why, unreachable) = match Client::connect(addr, token, Duration::from_secs(5)) {
            Ok(client) => {
                let Some(why) = follow(addr, client, model, state, stop) else {
                    return;
                };
                ever = true;
                backoff = BACKOFF_MIN;
                (why, false)
            }
            Err(e @ (ClientError::Resolve(_) | ClientError::Connect(_))) => (e.to_string(), true),
            Err(e) => (e.to_string(), false),
        };
        let status = if ever {
            format!("serve at {addr} gone ({why}), reconnecting in {backoff:.1?}")
        } else if unreachable {
            format!("serve at {addr}: {why}; retrying in {backoff:.1?} (is `awaitscope serve` running?)")
        } else {
            format!("serve at {addr}: {why}; retrying in {backoff:.1?}")
        };
        set_state(state, status, false, false);
        if !nap(backoff, stop) {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reads from a connected serve until the connection ends (`Some(why)`) or
/// the feed is dropped (`None`). The model is replaced once the serve's
/// state is complete (its snapshots, episodes and findings, then `Synced`);
/// until then the previous one stays on screen, and stays there if what
/// arrives does not decode (a snapshot over the cap, or corrupt).
fn follow(
    addr: &str,
    mut client: Client,
    model: &Mutex<Model>,
    state: &Mutex<ConnState>,
    stop: &AtomicBool,
) -> Option<String> {
    set_state(
        state,
        format!("connected to serve at {addr}, receiving its state"),
        true,
        false,
    );
    let mut staging = Some(Model::default());
    let mut msgs: Vec<Message> = Vec::new();
    let mut last_scan = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Err(e) = client.read(&mut msgs, Duration::from_millis(100)) {
            return Some(match e {
                ClientError::Closed => "connection closed".into(),
                e => e.to_string(),
            });
        }
        let wall = unix_now();
        if !msgs.is_empty() {
            let mut synced = false;
            match &mut staging {
                Some(m) => {
                    for msg in msgs.drain(..) {
                        viewer::apply(m, &msg, wall);
                        synced |= matches!(msg, Message::Control(Control::Synced));
                    }
                }
                None => {
                    let mut m = model.lock().unwrap_or_else(|e| e.into_inner());
                    for msg in msgs.drain(..) {
                        viewer::apply(&mut m, &msg, wall);
                    }
                }
            }
            if synced {
                let mut m = staging.take().expect("staging until synced");
                m.scan_wall(wall);
                *model.lock().unwrap_or_else(|e| e.into_inner()) = m;
                set_state(state, format!("connected to serve at {addr}"), true, true);
            } else {
                state.lock().unwrap_or_else(|e| e.into_inner()).generation += 1;
            }
        }
        if staging.is_none() && last_scan.elapsed() >= Duration::from_millis(500) {
            last_scan = Instant::now();
            model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .scan_wall(unix_now());
            state.lock().unwrap_or_else(|e| e.into_inner()).generation += 1;
        }
    }
}

impl Feed for ConnectFeed {
    fn poll(&mut self) -> bool {
        let g = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation;
        g != self.last_gen || self.last_snap.elapsed() >= Duration::from_secs(1)
    }

    fn snapshot(&mut self, detail: Option<TaskKey>) -> Snapshot {
        self.last_gen = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation;
        self.last_snap = Instant::now();
        let m = self.model.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot::build(&m, detail)
    }

    fn status(&self) -> (String, bool) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.status.clone(), s.ok)
    }
}

/// Follows the recordings `awaitscope serve --record-dir DIR` writes (one
/// file per connection), applying frames as they are appended.
pub struct FollowFeed {
    model: Arc<Mutex<Model>>,
    state: Arc<Mutex<(String, bool, u64)>>,
    stop: Arc<AtomicBool>,
    last_gen: u64,
    last_snap: Instant,
}

struct Tail {
    offset: u64,
    buf: Vec<u8>,
    header: bool,
    dead: bool,
}

impl FollowFeed {
    /// Starts following `dir`.
    pub fn start(dir: PathBuf) -> FollowFeed {
        let model = Arc::new(Mutex::new(Model::default()));
        let state = Arc::new(Mutex::new((
            format!("following {}", dir.display()),
            true,
            0,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, st) = (model.clone(), state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("follow".into())
            .spawn(move || follow_loop(&dir, &m, &s, &st))
            .expect("thread");
        FollowFeed {
            model,
            state,
            stop,
            last_gen: u64::MAX,
            last_snap: Instant::now(),
        }
    }
}

impl Drop for FollowFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn follow_loop(
    dir: &Path,
    model: &Mutex<Model>,
    state: &Mutex<(String, bool, u64)>,
    stop: &AtomicBool,
) {
    let mut tails: HashMap<PathBuf, Tail> = HashMap::new();
    let mut last_scan = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let entries = std::fs::read_dir(dir);
        let mut changed = false;
        match entries {
            Err(e) => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.0 = format!(
                    "{}: {e} (is `awaitscope serve --record-dir` running?) retrying",
                    dir.display()
                );
                s.1 = false;
            }
            Ok(entries) => {
                {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.0 = format!("following {} ({} recordings)", dir.display(), tails.len());
                    s.1 = true;
                }
                for e in entries.flatten() {
                    let p = e.path();
                    if p.extension().is_none_or(|x| x != "rec") {
                        continue;
                    }
                    let tail = tails.entry(p.clone()).or_insert(Tail {
                        offset: 0,
                        buf: Vec::new(),
                        header: false,
                        dead: false,
                    });
                    if tail.dead {
                        continue;
                    }
                    let mut frames = Vec::new();
                    if let Ok(mut f) = File::open(&p) {
                        if f.seek(SeekFrom::Start(tail.offset)).is_ok() {
                            let mut new = Vec::new();
                            if let Ok(n) = f.read_to_end(&mut new) {
                                tail.offset += n as u64;
                                tail.buf.extend_from_slice(&new);
                            }
                        }
                    }
                    if !tail.header {
                        match Preamble::parse(&tail.buf) {
                            Ok(Some(_)) => {
                                tail.buf.drain(..Preamble::LEN);
                                tail.header = true;
                            }
                            Ok(None) => continue,
                            Err(_) => {
                                tail.dead = true;
                                continue;
                            }
                        }
                    }
                    let mut used = 0;
                    loop {
                        match decode_frame(&tail.buf[used..], 0) {
                            Ok(Some((f, n))) => {
                                used += n;
                                frames.push(f);
                            }
                            Ok(None) => break,
                            Err(_) => {
                                tail.dead = true;
                                break;
                            }
                        }
                    }
                    tail.buf.drain(..used);
                    if !frames.is_empty() {
                        changed = true;
                        let wall = unix_now();
                        let mut m = model.lock().unwrap_or_else(|e| e.into_inner());
                        for f in &frames {
                            m.apply_live(f, wall);
                        }
                    }
                }
            }
        }
        if last_scan.elapsed() >= Duration::from_millis(500) {
            last_scan = Instant::now();
            model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .scan_wall(unix_now());
            changed = true;
        }
        if changed {
            state.lock().unwrap_or_else(|e| e.into_inner()).2 += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Feed for FollowFeed {
    fn poll(&mut self) -> bool {
        let g = self.state.lock().unwrap_or_else(|e| e.into_inner()).2;
        g != self.last_gen || self.last_snap.elapsed() >= Duration::from_secs(1)
    }

    fn snapshot(&mut self, detail: Option<TaskKey>) -> Snapshot {
        self.last_gen = self.state.lock().unwrap_or_else(|e| e.into_inner()).2;
        self.last_snap = Instant::now();
        let m = self.model.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot::build(&m, detail)
    }

    fn status(&self) -> (String, bool) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.0.clone(), s.1)
    }
}

/// A recording replayed through time: play, pause, step, seek.
pub struct ReplayFeed {
    name: String,
    frames: Vec<Frame>,
    /// Process time at each frame (running maximum).
    times: Vec<u64>,
    model: Model,
    applied: usize,
    pos: u64,
    playing: bool,
    speed: f64,
    last_tick: Instant,
    dirty: bool,
    warning: Option<String>,
}

fn frame_time(f: &Frame) -> Option<u64> {
    let Body::Events(evs) = &f.body else {
        return None;
    };
    evs.iter().filter_map(Event::ts).max()
}

impl ReplayFeed {
    /// Loads the recording at `path` (a truncated one up to its last good
    /// frame).
    pub fn open(path: &Path, speed: f64) -> Result<ReplayFeed, String> {
        let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r =
            FrameReader::new(BufReader::new(f)).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut frames = Vec::new();
        let mut warning = None;
        loop {
            match r.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    warning = Some(format!("read up to the last good frame: {e}"));
                    break;
                }
            }
        }
        // A process without its goodbye was killed (or still running): what
        // followed its last frame is missing, and the header says so.
        let seen: std::collections::BTreeSet<_> = frames.iter().map(|f| f.process).collect();
        let ended: std::collections::BTreeSet<_> = frames
            .iter()
            .filter(|f| matches!(f.body, Body::Goodbye))
            .map(|f| f.process)
            .collect();
        if let Some(k) = seen.difference(&ended).next() {
            let w = format!(
                "pid {} did not end: no goodbye, what followed its last frame is missing",
                k.pid
            );
            warning = Some(match warning {
                Some(x) => format!("{x}; {w}"),
                None => w,
            });
        }
        Ok(Self::from_frames(
            path.display().to_string(),
            frames,
            speed,
            warning,
        ))
    }

    /// A replay of `frames`.
    pub fn from_frames(
        name: String,
        frames: Vec<Frame>,
        speed: f64,
        warning: Option<String>,
    ) -> ReplayFeed {
        let mut t = 0;
        let times = frames
            .iter()
            .map(|f| {
                t = t.max(frame_time(f).unwrap_or(t));
                t
            })
            .collect();
        ReplayFeed {
            name,
            frames,
            times,
            model: Model::default(),
            applied: 0,
            pos: 0,
            playing: true,
            speed: speed.max(0.01),
            last_tick: Instant::now(),
            dirty: true,
            warning,
        }
    }

    /// The end time.
    pub fn end(&self) -> u64 {
        self.times.last().copied().unwrap_or(0)
    }

    /// Applies frames up to process time `t` (rebuilding when going back).
    pub fn seek(&mut self, t: u64) {
        if t < self.pos || (self.applied > 0 && t < self.times[self.applied - 1]) {
            self.model = Model::default();
            self.applied = 0;
        }
        while self.applied < self.frames.len() && self.times[self.applied] <= t {
            self.model.apply(&self.frames[self.applied]);
            self.applied += 1;
        }
        self.pos = t.min(self.end());
        if self.applied == self.frames.len() {
            self.model.finish();
            self.playing = false;
        } else {
            self.model.scan();
        }
        self.dirty = true;
    }

    /// Applies exactly `n` frames from the start.
    pub fn seek_frames(&mut self, n: usize) {
        let n = n.min(self.frames.len());
        if n < self.applied {
            self.model = Model::default();
            self.applied = 0;
        }
        while self.applied < n {
            self.model.apply(&self.frames[self.applied]);
            self.applied += 1;
        }
        self.pos = if n == 0 { 0 } else { self.times[n - 1] };
        if self.applied == self.frames.len() {
            self.model.finish();
        } else {
            self.model.scan();
        }
        self.dirty = true;
    }

    /// Frames applied so far.
    pub fn applied(&self) -> usize {
        self.applied
    }

    /// Plays or pauses.
    pub fn set_playing(&mut self, p: bool) {
        self.playing = p;
        self.last_tick = Instant::now();
        self.dirty = true;
    }
}

impl Feed for ReplayFeed {
    fn poll(&mut self) -> bool {
        if self.playing {
            let dt = self.last_tick.elapsed();
            self.last_tick = Instant::now();
            let adv = (dt.as_nanos() as f64 * self.speed) as u64;
            if adv > 0 {
                self.seek(self.pos.saturating_add(adv));
            }
        }
        self.dirty
    }

    fn snapshot(&mut self, detail: Option<TaskKey>) -> Snapshot {
        self.dirty = false;
        Snapshot::build(&self.model, detail)
    }

    fn status(&self) -> (String, bool) {
        let mut s = format!(
            "replay {} frame {}/{}",
            self.name,
            self.applied,
            self.frames.len()
        );
        if let Some(w) = &self.warning {
            s.push_str(&format!(" ({w})"));
        }
        (s, self.warning.is_none())
    }

    fn replay(&self) -> Option<(u64, u64, bool)> {
        Some((self.pos, self.end(), self.playing))
    }

    fn control(&mut self, c: ReplayCmd) {
        match c {
            ReplayCmd::Toggle => {
                if !self.playing && self.applied == self.frames.len() {
                    self.seek(0);
                }
                let p = !self.playing;
                self.set_playing(p);
            }
            ReplayCmd::StepForward => {
                self.set_playing(false);
                self.seek_frames(self.applied + 1);
            }
            ReplayCmd::StepBack => {
                self.set_playing(false);
                self.seek_frames(self.applied.saturating_sub(1));
            }
            ReplayCmd::Seek(s) => {
                let d = (s.unsigned_abs() as u64) * 1_000_000_000;
                let t = if s < 0 {
                    self.pos.saturating_sub(d)
                } else {
                    self.pos.saturating_add(d)
                };
                self.seek(t);
            }
            ReplayCmd::Start => self.seek(0),
            ReplayCmd::End => self.seek(u64::MAX),
        }
    }
}
