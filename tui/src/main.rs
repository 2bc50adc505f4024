//! `awaitscope`: the command-line interface. Each subcommand lives in its
//! own module under `cmd/`; this file only dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Async-aware tracing for tokio: collect, record and report.
#[derive(Debug, Parser)]
#[command(name = "awaitscope", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collector: accept instrumented programs over TCP.
    Serve(cmd::serve::Args),
    /// Report on recordings (JSON), optionally failing on findings.
    Report(cmd::report::Args),
    /// Run a command with recording on, then summarise its findings.
    Record(cmd::record::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(a) => cmd::serve::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Record(a) => cmd::record::run(a),
    };
    ExitCode::from(code)
}
