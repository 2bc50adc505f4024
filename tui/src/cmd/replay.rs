//! `awaitscope replay FILE [--speed X] [--paused] [--ascii]`: the UI over a
//! recording, with play/pause, step and seek through time.

use std::path::PathBuf;

use awaitscope_tui::feed::ReplayFeed;
use awaitscope_tui::ui::run::{log_to_file, run as run_ui, UiOptions};

use super::EXIT_BAD_INPUT;

/// Arguments of `replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recording.
    pub file: PathBuf,
    /// Playback speed (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Start paused at the beginning.
    #[arg(long)]
    pub paused: bool,
    /// Start at the end (the whole recording applied).
    #[arg(long, conflicts_with = "paused")]
    pub at_end: bool,
    /// Plain ASCII glyphs.
    #[arg(long)]
    pub ascii: bool,
    /// Where the UI's own logs go.
    #[arg(long, default_value_os_t = super::tui::default_log())]
    pub log: PathBuf,
}

/// Runs `replay`.
pub fn run(args: Args) -> u8 {
    log_to_file(&args.log);
    let mut feed = match ReplayFeed::open(&args.file, args.speed) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("awaitscope replay: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    if args.paused {
        feed.set_playing(false);
    }
    if args.at_end {
        feed.seek(u64::MAX);
    }
    match run_ui(
        &mut feed,
        UiOptions {
            ascii: args.ascii,
            ..UiOptions::default()
        },
    ) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("awaitscope replay: terminal error: {e}");
            EXIT_BAD_INPUT
        }
    }
}
