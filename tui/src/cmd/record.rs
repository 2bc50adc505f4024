//! `awaitscope record [--out FILE] [--fail-on KINDS] -- CMD ARGS...`
//!
//! Runs CMD with `AWAITSCOPE_RECORD` set (and `AWAITSCOPE_ADDR=off` unless
//! the environment sets an address), then prints a summary of the
//! findings on stderr. Every instrumented process CMD starts (`cargo test`
//! runs one per test binary, nextest one per test) records to its own part
//! (`FILE.parts/{pid}.rec`); the parts are then merged into FILE, which
//! the wire format allows since every frame names its process. Exit code:
//! the command's (128 + signal if it was killed); with `--fail-on`, 1 if a
//! finding of those kinds exists, 2 if the recording is damaged (unreadable
//! past some point).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use awaitscope_collector::units::{parse_duration, Bare};

use super::{parse_fail_on, FailOn, EXIT_BAD_INPUT, EXIT_FINDINGS};

/// Arguments of `record`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recording to write (default `awaitscope-<unix time>.rec`).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Exit 1 if a finding of these kinds exists (comma list, or `any`).
    #[arg(long, value_parser = parse_fail_on)]
    pub fail_on: Option<FailOn>,
    /// Also write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Record the program that runs console-subscriber at this URL
    /// (`http://127.0.0.1:6669`) instead of running a command.
    #[arg(long, value_name = "URL", conflicts_with = "command")]
    pub console: Option<String>,
    /// With --console: stop after this long (`30s`, `2m`; default: at
    /// Ctrl-C).
    #[arg(long, requires = "console", value_parser = |s: &str| parse_duration(s, Bare::Secs).map(Duration::from_nanos))]
    pub duration: Option<Duration>,
    /// The command to run, after `--`.
    #[arg(
        required_unless_present = "console",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
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
    if let Some(url) = &args.console {
        let code = match super::record_console::record(url, args.duration, &out) {
            Ok(()) => 0,
            Err(code) => return code,
        };
        return summarise(&out, code, args.fail_on, args.report.as_deref());
    }
    let Some((prog, rest)) = args.command.split_first() else {
        eprintln!("awaitscope record: no command to run (give one after --, or --console URL)");
        return EXIT_BAD_INPUT;
    };
    if prog.to_string_lossy().starts_with('-') {
        // An option `record` does not know, taken for the command: the
        // command is everything from the first word that is not one of
        // `record`'s options, so that the command's own options pass
        // through untouched. Said as what it is, not as a program that
        // could not be found.
        eprintln!(
            "awaitscope record: unknown option {} (see `awaitscope record --help`; \
             the command goes after `--`: awaitscope record [OPTIONS] -- COMMAND...)",
            prog.to_string_lossy()
        );
        return EXIT_BAD_INPUT;
    }
    let parts = parts_dir(&out);
    if let Err(e) = std::fs::create_dir_all(&parts) {
        eprintln!("awaitscope record: cannot create {}: {e}", parts.display());
        return EXIT_BAD_INPUT;
    }
    let mut command = Command::new(prog);
    command
        .args(rest)
        .env("AWAITSCOPE_RECORD", parts.join("{pid}.rec"));
    if std::env::var_os("AWAITSCOPE_ADDR").is_none() {
        // The recording is what was asked for: without this, every
        // process would also stream to the default collector address,
        // where usually nobody listens, paying for the attempt and
        // saying at exit that its events "were not delivered" (they are
        // all in the recording). An address the user set is kept, to
        // watch the run live as well.
        command.env("AWAITSCOPE_ADDR", "off");
    }
    let status = match command.status() {
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
    match merge_parts(&parts, &out) {
        Ok(0) => {}
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&parts);
        }
        Err(e) => {
            eprintln!(
                "awaitscope record: merging the recordings into {}: {e}",
                out.display()
            );
            return if code == 0 { EXIT_BAD_INPUT } else { code };
        }
    }
    if !out.exists() {
        eprintln!(
            "awaitscope record: no recording was written to {} (is the program instrumented with awaitscope?)",
            out.display()
        );
        return code;
    }
    summarise(&out, code, args.fail_on, args.report.as_deref())
}

/// Prints the summary of the recording at `out` (and writes its JSON
/// report to `report`); returns the exit code: `code` (the command's), or
/// the `--fail-on` verdict.
fn summarise(
    out: &std::path::Path,
    code: u8,
    fail_on: Option<FailOn>,
    report_path: Option<&std::path::Path>,
) -> u8 {
    let report = match super::report::build(&[out.to_path_buf()]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("awaitscope record: {e}");
            return if code == 0 { EXIT_BAD_INPUT } else { code };
        }
    };
    eprint!("{}", report.summary_text());
    eprintln!("awaitscope record: recording in {}", out.display());
    if let Some(p) = report_path {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(p, json + "\n") {
            eprintln!("awaitscope record: cannot write {}: {e}", p.display());
        }
    }
    if fail_on.is_some() && report.damaged_inputs().next().is_some() {
        // Damaged input is never a pass (as `report --fail-on`).
        eprintln!(
            "awaitscope record: the recording is unreadable past some point (see the warning \
             above); failing"
        );
        return if code == 0 { EXIT_BAD_INPUT } else { code };
    }
    match fail_on {
        Some(FailOn(kinds)) if report.has_finding(&kinds) => EXIT_FINDINGS,
        _ => code,
    }
}

/// Where the processes of one `record` run write their recordings.
fn parts_dir(out: &std::path::Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    out.with_file_name(name)
}

/// Merges every recording in `parts` into one stream at `out` (frames carry
/// their process, so one stream holds many processes). A part cut short (a
/// process killed) contributes its complete frames. Returns the number of
/// parts; with none, `parts` is removed and `out` left alone.
fn merge_parts(parts: &std::path::Path, out: &std::path::Path) -> std::io::Result<usize> {
    use awaitscope_wire::{FrameReader, FrameWriter};
    let mut files: Vec<PathBuf> = std::fs::read_dir(parts)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rec"))
        .collect();
    files.sort();
    if files.is_empty() {
        let _ = std::fs::remove_dir(parts);
        return Ok(0);
    }
    let mut writer = FrameWriter::new(std::io::BufWriter::new(std::fs::File::create(out)?))?;
    for f in &files {
        let reader = match std::fs::File::open(f).map(std::io::BufReader::new) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("awaitscope record: skipping {}: {e}", f.display());
                continue;
            }
        };
        let mut frames = match FrameReader::new(reader) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("awaitscope record: skipping {}: {e}", f.display());
                continue;
            }
        };
        loop {
            match frames.next_frame() {
                Ok(Some(mut frame)) => {
                    // A token never reaches the recording (an older
                    // producer wrote its own into its file).
                    if let awaitscope_wire::Body::Hello(info) = &mut frame.body {
                        info.token = None;
                    }
                    // The program's binary is still here: symbolise its
                    // native stacks now, so the recording reads anywhere.
                    if let awaitscope_wire::Body::Events(events) = &mut frame.body {
                        awaitscope_collector::symbolize::inline_native_stacks(
                            events,
                            Some(frame.process.pid),
                        );
                    }
                    writer
                        .write_frame(&frame)
                        .map_err(|e| std::io::Error::other(e.to_string()))?
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!(
                        "awaitscope record: {}: {e}; kept what came before",
                        f.display()
                    );
                    break;
                }
            }
        }
    }
    writer.flush()?;
    Ok(files.len())
}
