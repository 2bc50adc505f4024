//! `awaitscope record [--out FILE] [--fail-on KINDS] -- CMD ARGS...`
//!
//! Runs CMD with `AWAITSCOPE_RECORD=FILE`, then prints a summary of the
//! findings on stderr. Exit code: the command's (128 + signal if it was
//! killed); with `--fail-on`, 1 if a finding of those kinds exists.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{parse_fail_on, FailOn, EXIT_BAD_INPUT, EXIT_FINDINGS};

/// Arguments of `record`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recording to write (default `awaitscope-<unix time>.rec`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit 1 if a finding of these kinds exists (comma list, or `any`).
    #[arg(long, value_parser = parse_fail_on)]
    pub fail_on: Option<FailOn>,
    /// Also write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The command to run, after `--`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    if let Some(c) = status.code() {
        return c.clamp(0, 255) as u8;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return (128 + sig).clamp(0, 255) as u8;
        }
    }
    1
}

/// Runs `record`.
pub fn run(args: Args) -> u8 {
    let out = args.out.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("awaitscope-{t}.rec"))
    });
    let (prog, rest) = args.command.split_first().expect("clap requires a command");
    let status = match Command::new(prog)
        .args(rest)
        .env("AWAITSCOPE_RECORD", &out)
        .status()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "awaitscope record: cannot run {}: {e}",
                prog.to_string_lossy()
            );
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                EXIT_BAD_INPUT
            };
        }
    };
    let code = exit_code(status);
    if !out.exists() {
        eprintln!(
            "awaitscope record: no recording was written to {} (is the program instrumented with awaitscope?)",
            out.display()
        );
        return code;
    }
    let report = match super::report::build(std::slice::from_ref(&out)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("awaitscope record: {e}");
            return if code == 0 { EXIT_BAD_INPUT } else { code };
        }
    };
    eprint!("{}", report.summary_text());
    eprintln!("awaitscope record: recording in {}", out.display());
    if let Some(p) = &args.report {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(p, json + "\n") {
            eprintln!("awaitscope record: cannot write {}: {e}", p.display());
        }
    }
    match args.fail_on {
        Some(FailOn(kinds)) if report.has_finding(&kinds) => EXIT_FINDINGS,
        _ => code,
    }
}
