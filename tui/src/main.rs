//! `awaitscope`: the command-line interface. Each subcommand lives in its
//! own module under `cmd/`; this file only dispatches. Without a
//! subcommand it opens the terminal UI.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Async-aware tracing for tokio: the terminal UI, collect, record, report.
#[derive(Debug, Parser)]
#[command(
    name = "awaitscope",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    tui: cmd::tui::Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The terminal UI with an embedded collector (the default), or over a
    /// running `serve` (--connect ADDR).
    Tui(cmd::tui::Args),
    /// Run an example workload in-process and open the UI on it.
    Demo(cmd::demo::Args),
    /// The terminal UI over a recording: play, pause, step, seek.
    Replay(cmd::replay::Args),
    /// Run the collector: accept instrumented programs (and UIs, with
    /// `awaitscope --connect ADDR`) over TCP.
    Serve(cmd::serve::Args),
    /// Report on recordings (JSON), optionally failing on findings.
    Report(cmd::report::Args),
    /// Run a command with recording on, then summarise its findings.
    Record(cmd::record::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        None => cmd::tui::run(cli.tui),
        Some(Command::Tui(a)) => cmd::tui::run(a),
        Some(Command::Demo(a)) => cmd::demo::run(a),
        Some(Command::Replay(a)) => cmd::replay::run(a),
        Some(Command::Serve(a)) => cmd::serve::run(a),
        Some(Command::Report(a)) => cmd::report::run(a),
        Some(Command::Record(a)) => cmd::record::run(a),
    };
    ExitCode::from(code)
}
