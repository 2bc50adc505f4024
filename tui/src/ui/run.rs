//! The terminal loop: input answered within a frame, snapshots at a steady
//! rate when data changes, the terminal restored on exit, panic and
//! Ctrl-C (SIGINT/SIGTERM from outside too).

use std::io::{self, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::app::App;
use super::input::map_event;
use super::render;
use super::theme::Theme;
use crate::feed::Feed;

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

/// Runs the UI over `feed` until the user quits.
pub fn run(feed: &mut dyn Feed, opts: UiOptions) -> io::Result<()> {
    let theme = Theme::detect(opts.ascii);
    let quit = Arc::new(AtomicBool::new(false));
    watch_signals(quit.clone());
    let mut term = setup()?;
    let _restore = Restore;
    let mut app = App::default();
    let frame = Duration::from_millis(1000 / u64::from(opts.fps.clamp(1, 60)));
    let mut last_events = (Instant::now(), 0u64);
    let mut dirty = true;
    let mut last_detail = None;
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
        if let Some(c) = app.pending_replay.take() {
            feed.control(c);
        }
        if Instant::now() >= next_frame {
            next_frame = Instant::now() + frame;
            let changed = feed.poll();
            let detail = app.wants_detail();
            if (changed && !app.paused) || detail != last_detail {
                last_detail = detail;
                let snap = feed.snapshot(detail);
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
            let (source, ok) = feed.status();
            if source != app.source || ok != app.source_ok || feed.replay() != app.replay {
                app.source = source;
                app.source_ok = ok;
                app.replay = feed.replay();
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
/// before anything that chains its own hook (awaitscope's).
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), "panic: {info}");
    }));
}

/// Sends the UI's own logs to `path` (never to the screen).
pub fn log_to_file(path: &std::path::Path) {
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
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
