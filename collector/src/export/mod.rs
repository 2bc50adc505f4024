//! Report formats for CI (`awaitscope report --format ...`), beyond the JSON
//! report of [`crate::report`].
//!
//! Two kinds of formats:
//!
//! * Formats built from the aggregated [`Report`](crate::Report) (and the
//!   [`WalkSummary`] below): [`junit`], [`markdown`], [`github`].
//! * [`otlp`]: OpenTelemetry traces of the recordings' tasks and spans,
//!   with the findings as span events, read by streaming over the frames.
//! * Formats that need every poll: [`perfetto`], [`chrome`] (timelines) and
//!   [`flame`] (async flame graphs). They are built by streaming over the
//!   recording's frames with a [`timeline::Walker`], which applies them to
//!   a model of each process (bounded by its retention) and builds the
//!   timeline from what the model reports, never keeping every poll, and
//!   hands timeline events to [`timeline::TimelineSink`]s as it goes. Each
//!   timeline sink writes its file as it receives events.
//!
//! Timeline size policy (perfetto, chrome): events outside the window
//! `--from/--to` (nanoseconds since each process's start) are left out; slices
//! crossing the window edges are clipped to it. Within the window, each sink
//! writes at most `max_events` trace events (default
//! [`perfetto::DEFAULT_MAX_EVENTS`], [`chrome::DEFAULT_MAX_EVENTS`]); past the
//! budget, no new slice or instant is written (slices already begun still
//! end), and the trace says where it was cut. The policy applied is stated in
//! the output file itself and returned in [`PolicyNote`].

pub mod chrome;
#[cfg(any(test, feature = "test-support"))]
pub mod fixture;
pub mod flame;
pub mod github;
pub mod junit;
pub mod markdown;
pub mod otlp;
pub mod perfetto;
pub mod timeline;

use std::fmt::Write as _;

use crate::units::fmt_ns_precise;

pub use timeline::{TimelineSink, WalkOptions, WalkSummary, Walker};

/// What a timeline sink did with the size policy, for the file and stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyNote {
    /// Window start (ns since each process's start), if any.
    pub from_ns: Option<u64>,
    /// Window end, if any.
    pub to_ns: Option<u64>,
    /// Most trace events the sink writes before it stops adding slices and
    /// instants.
    pub max_events: u64,
    /// Trace events written.
    pub written: u64,
    /// Trace events left out because the budget was spent.
    pub dropped: u64,
    /// Process time (ns since its start) at which the budget ran out.
    pub truncated_at_ns: Option<u64>,
}

impl PolicyNote {
    /// One line stating the policy and what it did.
    pub fn describe(&self) -> String {
        let mut s = String::from("size policy: ");
        match (self.from_ns, self.to_ns) {
            (None, None) => s.push_str("whole recording"),
            (f, t) => {
                let _ = write!(
                    s,
                    "window {}..{}",
                    f.map_or("start".into(), fmt_ns_precise),
                    t.map_or("end".into(), fmt_ns_precise)
                );
            }
        }
        let _ = write!(
            s,
            ", budget {} events, {} written",
            self.max_events, self.written
        );
        if let Some(t) = self.truncated_at_ns {
            let _ = write!(
                s,
                "; budget reached at {} ({} events left out: use --from/--to for a later window, or --max-trace-events)",
                fmt_ns_precise(t),
                self.dropped
            );
        }
        s
    }
}

/// Escapes text for XML content and attribute values; drops characters XML
/// 1.0 does not allow.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Everything rendered from one recording held in memory (tests, small
/// inputs): the report, the walk, and the Perfetto and Chrome traces.
#[derive(Debug)]
pub struct Rendered {
    /// The JSON report's content.
    pub report: crate::Report,
    /// The walk's summary (flame stacks, await points, root groups).
    pub walk: WalkSummary,
    /// The Perfetto trace.
    pub perfetto: Vec<u8>,
    /// The Chrome JSON trace.
    pub chrome: Vec<u8>,
    /// Size policy of the Perfetto and Chrome traces.
    pub notes: Vec<PolicyNote>,
}

/// Window and budget of the timelines.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimelineOptions {
    /// Window start (ns since each process's start).
    pub from_ns: Option<u64>,
    /// Window end (ns since each process's start); `None`: the end of the
    /// recording.
    pub to_ns: Option<u64>,
    /// Event budget (default per format).
    pub max_events: Option<u64>,
}

/// Renders a recording held in memory (`name` stands for its path).
pub fn render_recording(
    name: &str,
    bytes: &[u8],
    opts: TimelineOptions,
) -> Result<Rendered, awaitscope_wire::DecodeError> {
    let mut model = crate::Model::default();
    let input = crate::ingest::recording::load_reader(&mut model, name, bytes)?;
    model.finish();
    crate::ingest::recording::warn_unended(&mut model, std::slice::from_ref(&input));
    let mut report = crate::Report::from_model(&model);
    report.inputs = vec![input];
    let mut frames = Vec::new();
    let mut reader = awaitscope_wire::FrameReader::new(bytes)?;
    while let Ok(Some(f)) = reader.next_frame() {
        frames.push(f);
    }
    let walk_opts = WalkOptions {
        from_ns: opts.from_ns,
        to_ns: opts.to_ns,
        findings: timeline::FindingMark::of_report(&report),
    };
    let mut pf = perfetto::PerfettoSink::new(
        Vec::new(),
        opts.max_events.unwrap_or(perfetto::DEFAULT_MAX_EVENTS),
        opts.from_ns,
        opts.to_ns,
    );
    let mut ch = chrome::ChromeSink::new(
        Vec::new(),
        opts.max_events.unwrap_or(chrome::DEFAULT_MAX_EVENTS),
        opts.from_ns,
        opts.to_ns,
    );
    let (walk, notes) = timeline::walk_frames(&frames, walk_opts, &mut [&mut pf, &mut ch])
        .expect("writing to memory does not fail");
    Ok(Rendered {
        report,
        walk,
        perfetto: pf.into_inner(),
        chrome: ch.into_inner(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escape_escapes_and_drops_control_chars() {
        assert_eq!(xml_escape("a<b>&\"'\u{1}c"), "a&lt;b&gt;&amp;&quot;&apos;c");
    }
}
