//! `--format folded` and `--format svg`: async flame graphs of where tasks
//! wait.
//!
//! A stack is `process;task group;await node;...;leaf await node` (the
//! task group is `name@spawn location`, await nodes are `label @ location`,
//! outermost first). Two weightings, both in nanoseconds:
//!
//! * **pending**: the time a task spent between polls (waiting to be woken,
//!   or woken and waiting for a worker), charged to the await tree of its
//!   last poll; before its first poll, to the task group alone;
//! * **busy**: the time a task spent being polled, charged to the await
//!   tree of that poll.
//!
//! When an await tree has several leaves (`join!`, `select!`), the time is
//! split evenly between them. The folded files are the input format of
//! `inferno-flamegraph` and `flamegraph.pl` (`stack weight` per line, sorted);
//! the SVGs are rendered with the `inferno` crate, colours hashed from the
//! frame names so that the same recording gives the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

use inferno::flamegraph::{self, Options};

/// Which weighting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// Time pending.
    Pending,
    /// Time busy.
    Busy,
}

impl Weight {
    /// Name in file names and titles.
    pub fn as_str(self) -> &'static str {
        match self {
            Weight::Pending => "pending",
            Weight::Busy => "busy",
        }
    }
}

/// Writes folded stacks (`stack weight\n`, sorted by stack).
pub fn write_folded<W: Write>(stacks: &BTreeMap<String, u64>, mut out: W) -> io::Result<()> {
    for (s, w) in stacks {
        writeln!(out, "{s} {w}")?;
    }
    out.flush()
}

/// Renders folded stacks as an SVG flame graph.
pub fn write_svg<W: Write>(
    stacks: &BTreeMap<String, u64>,
    weight: Weight,
    mut out: W,
) -> io::Result<()> {
    let title = match weight {
        Weight::Pending => "awaitscope: where tasks wait (time pending)",
        Weight::Busy => "awaitscope: where tasks run (time busy)",
    };
    if stacks.is_empty() {
        // inferno refuses empty input; a valid, empty picture instead.
        write!(
            out,
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\"><text x=\"600\" y=\"24\" text-anchor=\"middle\">{}</text><text x=\"600\" y=\"48\" text-anchor=\"middle\">no samples</text></svg>\n",
            super::xml_escape(title)
        )?;
        return out.flush();
    }
    let lines: Vec<String> = stacks.iter().map(|(s, w)| format!("{s} {w}")).collect();
    let mut opts = Options::default();
    opts.title = title.to_string();
    opts.count_name = "ns".to_string();
    opts.hash = true;
    opts.deterministic = true;
    // Blue for waiting, red-yellow for running.
    opts.colors = flamegraph::color::Palette::Basic(match weight {
        Weight::Pending => flamegraph::color::BasicPalette::Io,
        Weight::Busy => flamegraph::color::BasicPalette::Hot,
    });
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out)
        .map_err(|e| io::Error::other(e.to_string()))?;
    out.flush()
}
