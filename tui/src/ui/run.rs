//! The terminal loop: input answered within a frame, snapshots at a steady
//! rate when data changes, the terminal restored on exit, panic and
//! Ctrl-C (SIGINT/SIGTERM from outside too).

use std::io::{self, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::app::App;
use super::app::ReplayCmd;
use super::input::map_event;
use super::render;
use super::theme::Theme;
use crate::feed::Feed;
use crate::snapshot::{Snapshot, TaskKey};

/// Options of the UI.
#[derive(Clone, Copy, Debug)]
pub struct UiOptions {
    /// Plain ASCII glyphs.
    pub ascii: bool,
    /// Frames per second when data changes.
    pub fps: u32,
}

impl Default for UiOptions {
    fn default() -> Self {
        Self {
            ascii: false,
            fps: 20,
        }
    }
}

/// Restores the terminal: raw mode off, alternate screen left, mouse off,
/// cursor shown. Safe to call more than once.
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        io::stdout(),
        DisableMouseCapture,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        restore();
    }
}

fn setup() -> io::Result<Terminal<CrosstermBackend<Stdout>>> {
    // Only a panic of the UI thread ends the UI; others (an instrumented
    // workload in the same process) go through the previous hook.
    let ui_thread = std::thread::current().id();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == ui_thread {
            restore();
        }
        prev(info);
    }));
    enable_raw_mode()?;
    execute!(io::stdout(), EnterAlternateScreen, EnableMouseCapture)?;
    let mut t = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    t.hide_cursor()?;
    t.clear()?;
    Ok(t)
}

/// Sets `flag` on SIGINT or SIGTERM (a Ctrl-C that does not come through
/// the terminal, e.g. `kill -INT`).
fn watch_signals(flag: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{signal, SignalKind};
                    let (Ok(mut a), Ok(mut b)) = (
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::terminate()),
                    ) else {
                        return;
                    };
                    tokio::select! { _ = a.recv() => {}, _ = b.recv() => {} }
                }
                #[cfg(not(unix))]
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, Ordering::Relaxed);
        });
}

/// What the UI thread and the snapshot thread share.
#[derive(Default)]
struct Exchange {
    /// The task whose detail the UI shows (set by the UI).
    want_detail: Option<TaskKey>,
    /// Replay commands for the feed (set by the UI).
    controls: Vec<ReplayCmd>,
    /// The latest snapshot not yet taken by the UI.
    latest: Option<Snapshot>,
    /// The feed's status and replay position.
    status: (String, bool),
    replay: Option<(u64, u64, bool)>,
    stop: bool,
}

fn lock(x: &Mutex<Exchange>) -> std::sync::MutexGuard<'_, Exchange> {
    x.lock().unwrap_or_else(|e| e.into_inner())
}

/// The snapshot thread: polls the feed and builds snapshots of the model,
/// so that the UI thread never waits for the model (a snapshot of 100,000
/// tasks takes tens of milliseconds).
fn snapshots(feed: &mut (dyn Feed + Send), x: &Mutex<Exchange>, period: Duration) {
    let mut last_detail = None;
    let mut first = true;
    loop {
        let (want, controls) = {
            let mut g = lock(x);
            if g.stop {
                return;
            }
            (g.want_detail, std::mem::take(&mut g.controls))
        };
        for c in controls {
            feed.control(c);
        }
        let changed = feed.poll();
        if changed || want != last_detail || first {
            first = false;
            last_detail = want;
            let snap = feed.snapshot(want);
            lock(x).latest = Some(snap);
        }
        let (status, replay) = (feed.status(), feed.replay());
        {
            let mut g = lock(x);
            g.status = status;
            g.replay = replay;
        }
        std::thread::sleep(period);
    }
}

/// Runs the UI over `feed` until the user quits. Snapshots of the model are
/// built on a thread of their own; this thread only reads input and draws.
pub fn run(feed: &mut (dyn Feed + Send), opts: UiOptions) -> io::Result<()> {
    let frame = Duration::from_millis(1000 / u64::from(opts.fps.clamp(1, 60)));
    let exchange = Mutex::new(Exchange::default());
    std::thread::scope(|s| {
        let x = &exchange;
        std::thread::Builder::new()
            .name("ui-snapshots".into())
            .spawn_scoped(s, move || snapshots(feed, x, frame))?;
        let r = ui_loop(x, opts, frame);
        lock(x).stop = true;
        r
    })
}

fn ui_loop(x: &Mutex<Exchange>, opts: UiOptions, frame: Duration) -> io::Result<()> {
    let theme = Theme::detect(opts.ascii);
    let quit = Arc::new(AtomicBool::new(false));
    watch_signals(quit.clone());
    let mut term = setup()?;
    let _restore = Restore;
    let mut app = App::default();
    let mut last_events = (Instant::now(), 0u64);
    let mut dirty = true;
    let mut next_frame = Instant::now();
    tracing::info!("ui started");
    while !app.quit && !quit.load(Ordering::Relaxed) {
        // Input: everything pending, waiting at most until the next frame.
        let wait = next_frame.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            loop {
                let ev = event::read()?;
                if matches!(ev, event::Event::Resize(..)) {
                    term.autoresize()?;
                }
                for a in map_event(&mut app, &ev) {
                    app.apply(a);
                }
                dirty = true;
                if !event::poll(Duration::ZERO)? {
                    break;
                }
            }
        }
        if Instant::now() >= next_frame {
            next_frame = Instant::now() + frame;
            let detail = app.wants_detail();
            let (snap, status, replay) = {
                let mut g = lock(x);
                if let Some(c) = app.pending_replay.take() {
                    g.controls.push(c);
                }
                g.want_detail = detail;
                // Paused: keep the picture, but take the detail asked for.
                let key = |s: &Snapshot| s.detail.as_ref().map(|d| d.0);
                let shown = key(&app.snap);
                let take = g.latest.as_ref().is_some_and(|s| {
                    !app.paused || (detail.is_some() && key(s) == detail && shown != detail)
                });
                let snap = if take { g.latest.take() } else { None };
                (snap, g.status.clone(), g.replay)
            };
            if let Some(snap) = snap {
                let now = Instant::now();
                let dt = now.duration_since(last_events.0).as_secs_f64();
                if dt >= 0.5 {
                    let rate = snap.events.saturating_sub(last_events.1) as f64 / dt;
                    app.event_rate = if last_events.1 == 0 { 0.0 } else { rate };
                    last_events = (now, snap.events);
                }
                app.set_snapshot(snap);
                dirty = true;
            }
            let (source, ok) = status;
            if source != app.source || ok != app.source_ok || replay != app.replay {
                app.source = source;
                app.source_ok = ok;
                app.replay = replay;
                dirty = true;
            }
        }
        if dirty {
            term.draw(|f| render::draw(f, &app, &theme))?;
            dirty = false;
        }
    }
    tracing::info!("ui stopped");
    Ok(())
}

/// Makes panics of other threads quiet on the terminal: they are logged
/// (to the UI's log file) instead of printed over the screen. Install
/// before anything that chains its own hook (awaitscope's), and after
/// [`log_to_file`].
///
/// The line goes to the dispatcher current here (the UI's log), not to
/// the panicking thread's: a thread of the instrumented workload that
/// runs in the same process (the demo's) would otherwise record the UI's
/// own log line as an error of the program, beside its `panic` finding.
pub fn quiet_panics() {
    let ui_log = tracing::dispatcher::get_default(|d| d.clone());
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::dispatcher::with_default(&ui_log, || {
            tracing::error!(thread = thread.name().unwrap_or("?"), "panic: {info}");
        });
    }));
}

/// Sends the UI's own logs to `path` (never to the screen), creating its
/// directory (owner only) when missing.
pub fn log_to_file(path: &std::path::Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        let _ = b.create(dir);
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    // Never follow a symlink planted where the log goes (the fallback is
    // the shared temporary directory), and keep the log to its owner.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let Ok(file) = o.open(path) else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AWAITSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
}
