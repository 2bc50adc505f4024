//! Colours and glyphs. Without colour support (`NO_COLOR`, `TERM=dumb`) the
//! UI uses bold and reverse video only; `--ascii` swaps glyphs for plain
//! ASCII.

use awaitscope_collector::model::TaskState;
use awaitscope_collector::Severity;
use ratatui::style::{Color, Modifier, Style};

/// How the UI draws: with or without colours, with Unicode or ASCII glyphs.
/// The styles and glyphs below follow it.
#[derive(Clone, Copy, Debug)]
pub struct Theme {
    /// Colours on; off with `NO_COLOR` or `TERM=dumb` (then bold and
    /// reverse video only).
    pub color: bool,
    /// Plain ASCII glyphs.
    pub ascii: bool,
}

impl Default for Theme {
    fn default() -> Self {
        Self {
            color: true,
            ascii: false,
        }
    }
}

impl Theme {
    /// From the environment (`NO_COLOR`, `TERM`) and `--ascii`.
    pub fn detect(ascii: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
            || std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Self {
            color: !no_color,
            ascii,
        }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    /// Style of a task state.
    pub fn state(&self, s: TaskState) -> Style {
        match s {
            TaskState::Running => self.fg(Color::Green).add_modifier(Modifier::BOLD),
            TaskState::Scheduled => self.fg(Color::Yellow),
            TaskState::Idle => self.fg(Color::Reset),
            TaskState::Completed => self.fg(Color::DarkGray),
            TaskState::Cancelled => self.fg(Color::DarkGray),
            TaskState::Panicked => self.fg(Color::Red).add_modifier(Modifier::BOLD),
        }
    }

    /// Glyph of a task state.
    pub fn state_glyph(&self, s: TaskState) -> &'static str {
        match (s, self.ascii) {
            (TaskState::Running, false) => "▶",
            (TaskState::Running, true) => ">",
            (TaskState::Scheduled, false) => "⏵",
            (TaskState::Scheduled, true) => "~",
            (TaskState::Idle, false) => "⏸",
            (TaskState::Idle, true) => "=",
            (TaskState::Completed, false) => "✓",
            (TaskState::Completed, true) => "+",
            (TaskState::Cancelled, false) => "✗",
            (TaskState::Cancelled, true) => "x",
            (TaskState::Panicked, false) => "‼",
            (TaskState::Panicked, true) => "!",
        }
    }

    /// Style of a severity.
    pub fn severity(&self, s: Severity) -> Style {
        match s {
            Severity::Error => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            Severity::Warning => self.fg(Color::Yellow),
            Severity::Info => self.fg(Color::Cyan),
        }
    }

    /// Glyph of a severity.
    pub fn severity_glyph(&self, s: Severity) -> &'static str {
        match (s, self.ascii) {
            (Severity::Error, false) => "✖",
            (Severity::Error, true) => "E",
            (Severity::Warning, false) => "▲",
            (Severity::Warning, true) => "W",
            (Severity::Info, false) => "●",
            (Severity::Info, true) => "i",
        }
    }

    /// The selected row.
    pub fn selected(&self) -> Style {
        if self.color {
            Style::default()
                .bg(Color::Blue)
                .fg(Color::White)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }

    /// Headers and titles.
    pub fn title(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// Dim text.
    pub fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default()
        }
    }

    /// Keys in the footer.
    pub fn key(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    /// Good (connected).
    pub fn good(&self) -> Style {
        self.fg(Color::Green)
    }

    /// Bad (disconnected, errors).
    pub fn bad(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// Tree glyphs: branch, last branch, rail, blank.
    pub fn tree(&self) -> [&'static str; 4] {
        if self.ascii {
            ["|- ", "`- ", "|  ", "   "]
        } else {
            ["├─ ", "└─ ", "│  ", "   "]
        }
    }

    /// Folded / unfolded markers.
    pub fn fold(&self, folded: bool) -> &'static str {
        match (folded, self.ascii) {
            (true, false) => "▸ ",
            (false, false) => "▾ ",
            (true, true) => "+ ",
            (false, true) => "- ",
        }
    }

    /// An arrow.
    pub fn arrow(&self) -> &'static str {
        if self.ascii {
            "->"
        } else {
            "→"
        }
    }

    /// Histogram bar characters, low to high.
    pub fn bars(&self) -> &'static [&'static str] {
        if self.ascii {
            &[" ", ".", ":", "-", "=", "+", "*", "#", "@"]
        } else {
            &[" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]
        }
    }
}
