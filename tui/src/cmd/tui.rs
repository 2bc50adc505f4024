//! `awaitscope [tui] [--listen ADDR | --connect DIR] [--ascii]`: the
//! terminal UI over the embedded collector (listening on 127.0.0.1:6670 by
//! default), or over a running `awaitscope serve --record-dir DIR`.

use std::net::SocketAddr;
use std::path::PathBuf;

use awaitscope_collector::ingest::server::DEFAULT_LISTEN;
use awaitscope_tui::feed::{Feed, FollowFeed, LiveFeed};
use awaitscope_tui::ui::run::{log_to_file, run as run_ui, UiOptions};

use super::EXIT_BAD_INPUT;

/// Arguments of the UI.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address the embedded collector listens on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Follow a running `awaitscope serve --record-dir DIR` instead of
    /// embedding a collector: DIR is its record directory.
    #[arg(long, value_name = "DIR", conflicts_with = "listen")]
    pub connect: Option<String>,
    /// Plain ASCII glyphs.
    #[arg(long)]
    pub ascii: bool,
    /// Where the UI's own logs go.
    #[arg(long, default_value_os_t = default_log())]
    pub log: PathBuf,
}

/// `$TMPDIR/awaitscope-tui.log`.
pub fn default_log() -> PathBuf {
    std::env::temp_dir().join("awaitscope-tui.log")
}

/// Runs the UI.
pub fn run(args: Args) -> u8 {
    log_to_file(&args.log);
    let mut feed: Box<dyn Feed + Send> = match &args.connect {
        Some(target) => {
            if target.parse::<SocketAddr>().is_ok() {
                eprintln!(
                    "awaitscope: --connect takes the record directory of a running collector: \
                     start it with `awaitscope serve --record-dir DIR` and run `awaitscope --connect DIR` \
                     (`serve` streams to the UI through its recordings)"
                );
                return EXIT_BAD_INPUT;
            }
            Box::new(FollowFeed::start(PathBuf::from(target)))
        }
        None => match LiveFeed::start(args.listen, "collector listening on {addr}") {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("awaitscope: {e}");
                eprintln!("awaitscope: is another collector running? try --listen 127.0.0.1:0 or --connect DIR");
                return EXIT_BAD_INPUT;
            }
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
