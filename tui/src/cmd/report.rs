//! `awaitscope report FILE... [--format json|text] [--out PATH] [--fail-on KINDS]`
//!
//! Exit codes: 0 ok, 1 a finding of a `--fail-on` kind exists, 2 bad input
//! (unreadable, not a recording, newer version; the reason on stderr). A
//! truncated recording is reported, with a warning.

use std::io::Write;
use std::path::PathBuf;

use awaitscope_collector::ingest::recording;
use awaitscope_collector::{Model, Report};

use super::{parse_fail_on, FailOn, EXIT_BAD_INPUT, EXIT_FINDINGS};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The JSON document of docs/report-json.md.
    Json,
    /// A short human-readable summary.
    Text,
}

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recordings to read (several processes or runs at once).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Write the report here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit 1 if a finding of these kinds exists (comma list, or `any`).
    #[arg(long, value_parser = parse_fail_on)]
    pub fail_on: Option<FailOn>,
}

/// Reads `files` into a report.
pub fn build(files: &[PathBuf]) -> Result<Report, recording::LoadError> {
    let mut model = Model::default();
    let inputs = recording::load_files(&mut model, files)?;
    let mut report = Report::from_model(&model);
    report.inputs = inputs;
    Ok(report)
}

/// Runs `report`.
pub fn run(args: Args) -> u8 {
    let report = match build(&args.files) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("awaitscope report: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    for w in &report.warnings {
        eprintln!("awaitscope report: warning: {w}");
    }
    let text = match args.format {
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("awaitscope report: cannot encode the report: {e}");
                return EXIT_BAD_INPUT;
            }
        },
        Format::Text => report.summary_text(),
    };
    let written = match &args.out {
        Some(p) => std::fs::write(p, text.as_bytes()).map_err(|e| format!("{}: {e}", p.display())),
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = written {
        eprintln!("awaitscope report: cannot write the report: {e}");
        return EXIT_BAD_INPUT;
    }
    match args.fail_on {
        Some(FailOn(kinds)) if report.has_finding(&kinds) => EXIT_FINDINGS,
        _ => 0,
    }
}
