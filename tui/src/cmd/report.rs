//! `awaitscope report FILE... [--format F]... [--out PATH | --out-dir DIR]
//! [--fail-on KINDS] [--from T] [--to T] [--max-trace-events N]`
//!
//! Formats: `json` (docs/report-json.md), `text`, `perfetto`, `chrome`,
//! `junit`, `markdown`, `folded`, `svg`, `github` (docs/ci.md), and `otlp`,
//! which writes no file but sends OTLP/HTTP to the OpenTelemetry endpoint
//! of the environment (`cmd::otlp`). One format
//! goes to `--out` or standard output; several `--format` at once each go to
//! their own file in `--out-dir` (names in [`Format::file_names`]).
//!
//! Exit codes: 0 ok, 1 a finding of a `--fail-on` kind exists, 2 bad input
//! (unreadable, not a recording, newer version, bad arguments; the reason on
//! stderr). A truncated recording is reported, with a warning. A recording
//! unreadable past its header (junk, a corrupted frame) is reported up to
//! the damage, with a warning, and exits 2 under `--fail-on`: damaged input
//! is never a pass.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use awaitscope_collector::export::{
    chrome, flame, github, junit, markdown, perfetto, timeline, PolicyNote,
};
use awaitscope_collector::ingest::recording;
use awaitscope_collector::units::{parse_duration, Bare};
use awaitscope_collector::{Model, Report};

use super::{parse_fail_on, FailOn, EXIT_BAD_INPUT, EXIT_FINDINGS};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Format {
    /// The JSON document of docs/report-json.md.
    Json,
    /// A short human-readable summary.
    Text,
    /// Perfetto protobuf trace (ui.perfetto.dev).
    Perfetto,
    /// Chrome JSON trace events.
    Chrome,
    /// JUnit XML (docs/junit.xsd).
    Junit,
    /// Markdown summary for a CI page.
    Markdown,
    /// Folded stacks (time pending; and time busy in a second file).
    Folded,
    /// SVG flame graphs (time pending; and time busy in a second file).
    Svg,
    /// GitHub Actions `::error` annotations (at most 10).
    Github,
    /// OTLP/HTTP to an OpenTelemetry backend (`OTEL_EXPORTER_OTLP_ENDPOINT`):
    /// tasks and spans as spans, findings as span events; no file.
    Otlp,
}

impl Format {
    /// File names in `--out-dir` (two for the flame graphs: pending, busy).
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            Format::Json => &["report.json"],
            Format::Text => &["report.txt"],
            Format::Perfetto => &["trace.perfetto-trace"],
            Format::Chrome => &["trace.chrome.json"],
            Format::Junit => &["junit.xml"],
            Format::Markdown => &["summary.md"],
            Format::Folded => &["flame-pending.folded", "flame-busy.folded"],
            Format::Svg => &["flame-pending.svg", "flame-busy.svg"],
            Format::Github => &["annotations.txt"],
            Format::Otlp => &[],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Format::Json => "JSON report",
            Format::Text => "text summary",
            Format::Perfetto => "Perfetto trace (open in ui.perfetto.dev)",
            Format::Chrome => "Chrome trace",
            Format::Junit => "JUnit",
            Format::Markdown => "summary",
            Format::Folded => "folded stacks",
            Format::Svg => "flame graph",
            Format::Github => "GitHub annotations",
            Format::Otlp => "OTLP export",
        }
    }
}

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recordings to read (several processes or runs at once).
    #[arg(required_unless_present = "verify_perfetto")]
    pub files: Vec<PathBuf>,
    /// Output format; repeat (or comma-separate) for several, with --out-dir.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "json")]
    pub format: Vec<Format>,
    /// Write the report here instead of standard output (one format).
    #[arg(long, short = 'o', conflicts_with = "out_dir")]
    pub out: Option<PathBuf>,
    /// Write each format to its own file in this directory.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Exit 1 if a finding of these kinds exists (comma list, or `any`).
    #[arg(long, value_parser = parse_fail_on)]
    pub fail_on: Option<FailOn>,
    /// Timelines (perfetto, chrome): leave out what happens before this time
    /// since each process's start (`1.5s`, `200ms`, `30us`, ns).
    #[arg(long, value_parser = |s: &str| parse_duration(s, Bare::Nanos))]
    pub from: Option<u64>,
    /// Timelines: leave out what happens after this time.
    #[arg(long, value_parser = |s: &str| parse_duration(s, Bare::Nanos))]
    pub to: Option<u64>,
    /// Timelines: most trace events written (default 2,000,000 for
    /// perfetto, 500,000 for chrome); past it the trace is cut, and says so.
    #[arg(long)]
    pub max_trace_events: Option<u64>,
    /// github: paths are made relative to this directory (default: the
    /// current directory).
    #[arg(long)]
    pub source_root: Option<PathBuf>,
    /// Decode a Perfetto trace written by `--format perfetto`, check it and
    /// print what it holds (exit 2 if invalid). For CI.
    #[arg(long, hide = true)]
    pub verify_perfetto: Option<PathBuf>,
}

/// Reads `files` into a report.
pub fn build(files: &[PathBuf]) -> Result<Report, recording::LoadError> {
    let mut model = Model::default();
    let inputs = recording::load_files(&mut model, files)?;
    let mut report = Report::from_model(&model);
    report.inputs = inputs;
    Ok(report)
}

/// Where one output goes.
enum Dest {
    Stdout,
    File(PathBuf),
}

impl Dest {
    fn writer(&self) -> Result<Box<dyn Write>, String> {
        Ok(match self {
            Dest::Stdout => Box::new(BufWriter::new(std::io::stdout())),
            Dest::File(p) => Box::new(BufWriter::new(
                File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
            )),
        })
    }
}

/// `flame.svg` -> `flame-busy.svg`.
fn busy_path(p: &Path) -> PathBuf {
    let stem = p
        .file_stem()
        .map_or_else(|| "flame".to_string(), |s| s.to_string_lossy().into_owned());
    let name = match p.extension() {
        Some(e) => format!("{stem}-busy.{}", e.to_string_lossy()),
        None => format!("{stem}-busy"),
    };
    p.with_file_name(name)
}

fn verify(path: &Path) -> u8 {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("awaitscope report: {}: {e}", path.display());
            return EXIT_BAD_INPUT;
        }
    };
    match perfetto::verify(&bytes) {
        Ok(st) => {
            println!(
                "perfetto trace ok: {} packets, {} tracks ({} process, {} nested), {} slices, {} instants, {} flows ({} ended)",
                st.packets,
                st.tracks,
                st.process_tracks,
                st.nested_tracks,
                st.slices,
                st.instants,
                st.flows,
                st.flows_terminated
            );
            if let Some(p) = st.policy {
                println!("{p}");
            }
            0
        }
        Err(e) => {
            eprintln!(
                "awaitscope report: {}: invalid perfetto trace: {e}",
                path.display()
            );
            EXIT_BAD_INPUT
        }
    }
}

/// Runs `report`.
pub fn run(args: Args) -> u8 {
    if let Some(p) = &args.verify_perfetto {
        return verify(p);
    }
    let mut formats = args.format.clone();
    formats.sort();
    formats.dedup();
    if formats.len() > 1 && args.out_dir.is_none() {
        eprintln!("awaitscope report: several formats need --out-dir DIR");
        return EXIT_BAD_INPUT;
    }
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
    if let Err(e) = write_all(&args, &formats, &report) {
        eprintln!("awaitscope report: {e}");
        return EXIT_BAD_INPUT;
    }
    let damaged: Vec<&str> = report.damaged_inputs().map(|i| i.path.as_str()).collect();
    if args.fail_on.is_some() && !damaged.is_empty() {
        eprintln!(
            "awaitscope report: {} damaged, unreadable past some point (see the warning \
             above): the report holds what was read before the damage; failing (exit 2)",
            damaged.join(", ")
        );
        return EXIT_BAD_INPUT;
    }
    match args.fail_on {
        Some(FailOn(kinds)) if report.has_finding(&kinds) => EXIT_FINDINGS,
        _ => 0,
    }
}

fn write_all(args: &Args, formats: &[Format], report: &Report) -> Result<(), String> {
    if let Some(d) = &args.out_dir {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let dests = |f: Format| -> Vec<Dest> {
        match (&args.out_dir, &args.out) {
            (Some(d), _) => f
                .file_names()
                .iter()
                .map(|n| Dest::File(d.join(n)))
                .collect(),
            (None, Some(p)) => {
                if matches!(f, Format::Folded | Format::Svg) {
                    vec![Dest::File(p.clone()), Dest::File(busy_path(p))]
                } else {
                    vec![Dest::File(p.clone())]
                }
            }
            (None, None) => vec![Dest::Stdout],
        }
    };
    let has = |f: Format| formats.contains(&f);
    if has(Format::Otlp) {
        let said = super::otlp::export(&args.files, report)?;
        eprintln!("awaitscope report: {said}");
    }
    let needs_walk = formats.iter().any(|f| {
        matches!(
            f,
            Format::Perfetto
                | Format::Chrome
                | Format::Junit
                | Format::Markdown
                | Format::Folded
                | Format::Svg
        )
    });
    let mut walk = timeline::WalkSummary::default();
    if needs_walk {
        let opts = timeline::WalkOptions {
            from_ns: args.from,
            to_ns: args.to,
            findings: timeline::FindingMark::of_report(report),
        };
        let mut pf = match has(Format::Perfetto) {
            true => Some(perfetto::PerfettoSink::new(
                dests(Format::Perfetto)[0].writer()?,
                args.max_trace_events
                    .unwrap_or(perfetto::DEFAULT_MAX_EVENTS),
                args.from,
                args.to,
            )),
            false => None,
        };
        let mut ch = match has(Format::Chrome) {
            true => Some(chrome::ChromeSink::new(
                dests(Format::Chrome)[0].writer()?,
                args.max_trace_events.unwrap_or(chrome::DEFAULT_MAX_EVENTS),
                args.from,
                args.to,
            )),
            false => None,
        };
        let mut sinks: Vec<&mut dyn timeline::TimelineSink> = Vec::new();
        if let Some(s) = pf.as_mut() {
            sinks.push(s);
        }
        if let Some(s) = ch.as_mut() {
            sinks.push(s);
        }
        let (w, notes): (_, Vec<PolicyNote>) = timeline::walk_files(&args.files, opts, &mut sinks)
            .map_err(|e| format!("cannot write the trace: {e}"))?;
        let names = [(pf.is_some(), "perfetto"), (ch.is_some(), "chrome")];
        for ((_, name), note) in names.iter().filter(|(on, _)| *on).zip(&notes) {
            eprintln!("awaitscope report: {name}: {}", note.describe());
        }
        walk = w;
    }
    let artifacts: Vec<(String, String)> = if args.out_dir.is_some() {
        formats
            .iter()
            .filter(|f| **f != Format::Markdown)
            .flat_map(|f| {
                f.file_names().iter().map(move |n| {
                    let label = if f.file_names().len() > 1 {
                        format!(
                            "{} ({})",
                            f.label(),
                            if n.contains("busy") {
                                "time busy"
                            } else {
                                "time pending"
                            }
                        )
                    } else {
                        f.label().to_string()
                    };
                    (label, (*n).to_string())
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    for &f in formats {
        let d = dests(f);
        match f {
            Format::Perfetto | Format::Chrome | Format::Otlp => {}
            Format::Json => {
                let s = serde_json::to_string_pretty(report)
                    .map_err(|e| format!("cannot encode the report: {e}"))?;
                put(&d[0], (s + "\n").as_bytes())?;
            }
            Format::Text => put(&d[0], report.summary_text().as_bytes())?,
            Format::Junit => put(&d[0], junit::render(report, &walk).as_bytes())?,
            Format::Markdown => {
                let opts = markdown::Options {
                    artifacts: artifacts.clone(),
                    ..markdown::Options::default()
                };
                put(&d[0], markdown::render(report, &walk, &opts).as_bytes())?;
            }
            Format::Github => {
                let root = args
                    .source_root
                    .clone()
                    .or_else(|| std::env::current_dir().ok());
                put(&d[0], github::render(report, root.as_deref()).as_bytes())?;
            }
            Format::Folded | Format::Svg => {
                let pairs = [
                    (flame::Weight::Pending, &walk.pending),
                    (flame::Weight::Busy, &walk.busy),
                ];
                for (dest, (w, stacks)) in d.iter().zip(pairs) {
                    let mut out = dest.writer()?;
                    let r = if f == Format::Folded {
                        flame::write_folded(stacks, &mut out)
                    } else {
                        flame::write_svg(stacks, w, &mut out)
                    };
                    r.and_then(|()| out.flush())
                        .map_err(|e| format!("cannot write the flame graph: {e}"))?;
                }
            }
        }
    }
    Ok(())
}

fn put(d: &Dest, bytes: &[u8]) -> Result<(), String> {
    let mut w = d.writer()?;
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(|e| format!("cannot write the report: {e}"))
}
