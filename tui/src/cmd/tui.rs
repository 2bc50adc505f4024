//! `awaitscope [tui] [--listen ADDR | --connect ADDR | --connect DIR]
//! [--token T] [--ascii]`: the terminal UI over the embedded collector
//! (listening on 127.0.0.1:6670 by default), or over a running collector:
//!
//! * `--connect ADDR` (`127.0.0.1:6670`, `host:port`): connects to
//!   `awaitscope serve` over TCP, on the port its producers use. The UI gets
//!   serve's current state first, then every frame it receives; when serve
//!   goes away it reconnects with backoff and rebuilds. With a serve that has
//!   a token, pass it (`--token` or `AWAITSCOPE_TOKEN`).
//! * `--connect DIR`: follows the recordings of a running
//!   `awaitscope serve --record-dir DIR`.
//!
//! * `--console URL`: a program that runs console-subscriber, read over
//!   its gRPC API (`awaitscope_tui::console_feed`).
//!
//! An argument that parses as a socket address, or as `host:port` and is
//! not an existing directory, is an address; anything else a directory.

use std::net::SocketAddr;
use std::path::PathBuf;

use awaitscope_collector::ingest::server::DEFAULT_LISTEN;
use awaitscope_tui::console_feed::ConsoleFeed;
use awaitscope_tui::feed::{ConnectFeed, ConnectTarget, Feed, FollowFeed, LiveFeed};
use awaitscope_tui::ui::run::{log_to_file, run as run_ui, UiOptions};

use super::EXIT_BAD_INPUT;

/// Arguments of the UI.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address the embedded collector listens on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Watch a running collector instead of embedding one: ADDR
    /// (`127.0.0.1:6670`, `host:port`) connects to `awaitscope serve` over
    /// TCP; DIR follows the recordings of `awaitscope serve --record-dir DIR`.
    #[arg(long, value_name = "ADDR|DIR", conflicts_with = "listen")]
    pub connect: Option<String>,
    /// Watch a program that runs console-subscriber, at this URL
    /// (`http://127.0.0.1:6669`), read over its gRPC API: no change to it.
    #[arg(long, value_name = "URL", conflicts_with_all = ["listen", "connect"])]
    pub console: Option<String>,
    /// Token of the serve given to --connect ADDR (its --token).
    #[arg(long, env = "AWAITSCOPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Plain ASCII glyphs.
    #[arg(long)]
    pub ascii: bool,
    /// Where the UI's own logs go.
    #[arg(long, default_value_os_t = default_log())]
    pub log: PathBuf,
}

/// `$XDG_STATE_HOME/awaitscope/tui.log`, else
/// `~/.local/state/awaitscope/tui.log`: the user's own state directory,
/// not the shared temporary one. Without a home, `$TMPDIR` (where the log
/// is opened without following links, readable by its owner only).
pub fn default_log() -> PathBuf {
    log_path(
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
        std::env::temp_dir(),
    )
}

/// [`default_log`] from the environment it reads (relative paths in
/// `XDG_STATE_HOME` or `HOME` are ignored, as the XDG spec says).
fn log_path(
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
    tmp: PathBuf,
) -> PathBuf {
    let state = xdg_state_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local").join("state"))
        });
    match state {
        Some(dir) => dir.join("awaitscope").join("tui.log"),
        None => tmp.join("awaitscope-tui.log"),
    }
}

/// Runs the UI.
pub fn run(args: Args) -> u8 {
    log_to_file(&args.log);
    if let Some(url) = &args.console {
        if let Err(e) = awaitscope_collector::console::client::endpoint(url) {
            eprintln!("awaitscope: {e}");
            return EXIT_BAD_INPUT;
        }
    }
    let mut feed: Box<dyn Feed + Send> = match (&args.console, &args.connect) {
        (Some(url), _) => match ConsoleFeed::start(url) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("awaitscope: {e}");
                return EXIT_BAD_INPUT;
            }
        },
        (None, connect) => match connect {
            Some(target) => match ConnectTarget::parse(target) {
                ConnectTarget::Addr(addr) => Box::new(ConnectFeed::start(
                    addr,
                    args.token.clone().filter(|t| !t.is_empty()),
                )),
                ConnectTarget::Dir(dir) => Box::new(FollowFeed::start(dir)),
            },
            None => match LiveFeed::start(args.listen, "collector listening on {addr}") {
                Ok(f) => Box::new(f),
                Err(e) => {
                    eprintln!("awaitscope: {e}");
                    eprintln!("awaitscope: is another collector running? try --listen 127.0.0.1:0, or --connect ADDR to watch it");
                    return EXIT_BAD_INPUT;
                }
            },
        },
    };
    let opts = UiOptions {
        ascii: args.ascii,
        ..UiOptions::default()
    };
    match run_ui(feed.as_mut(), opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("awaitscope: terminal error: {e}");
            EXIT_BAD_INPUT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_goes_to_the_users_state_directory() {
        let tmp = PathBuf::from("/tmp");
        assert_eq!(
            log_path(Some("/x/state".into()), Some("/home/u".into()), tmp.clone()),
            PathBuf::from("/x/state/awaitscope/tui.log")
        );
        assert_eq!(
            log_path(None, Some("/home/u".into()), tmp.clone()),
            PathBuf::from("/home/u/.local/state/awaitscope/tui.log")
        );
        // Relative values are ignored; with nothing else, the temporary
        // directory.
        assert_eq!(
            log_path(Some("rel".into()), Some("/home/u".into()), tmp.clone()),
            PathBuf::from("/home/u/.local/state/awaitscope/tui.log")
        );
        assert_eq!(
            log_path(None, None, tmp),
            PathBuf::from("/tmp/awaitscope-tui.log")
        );
    }
}
