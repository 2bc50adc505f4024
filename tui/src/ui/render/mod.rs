//! Rendering: one module per view, all drawing from [`App`] (its snapshot)
//! only, so every view can be drawn on ratatui's `TestBackend`.

pub mod errors;
pub mod findings;
pub mod header;
pub mod help;
pub mod resources;
pub mod task_detail;
pub mod tasks;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::Frame;

use super::app::{App, View};
use super::theme::Theme;

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App, theme: &Theme) {
    let area = f.area();
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    header::draw(f, head, app, theme);
    match app.view {
        View::Tasks => tasks::draw(f, body, app, theme),
        View::Findings => findings::draw(f, body, app, theme),
        View::Errors => errors::draw(f, body, app, theme),
        View::Resources => resources::draw(f, body, app, theme),
        View::Detail => task_detail::draw(f, body, app, theme),
    }
    header::footer(f, foot, app, theme);
    if app.help {
        help::draw(f, area, theme);
    }
}

/// A duration for humans: `1.20s`, `12.3ms`, `45µs`.
pub fn dur(ns: u64, ascii: bool) -> String {
    let us = if ascii { "us" } else { "µs" };
    if ns >= 60_000_000_000 {
        format!("{}m{:02}s", ns / 60_000_000_000, (ns / 1_000_000_000) % 60)
    } else if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{}{us}", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

/// A count for humans: `1234`, `12.3k`, `4.5M`.
pub fn count(n: u64) -> String {
    if n >= 10_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 10_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// Cuts `s` to `w` columns, with an ellipsis.
pub fn clip(s: &str, w: usize, ascii: bool) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    out.push_str(if ascii { "~" } else { "…" });
    out
}

/// Keeps the end of `s` (paths): `…/src/main.rs:12`.
pub fn clip_start(s: &str, w: usize, ascii: bool) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out = String::from(if ascii { "~" } else { "…" });
    out.extend(s.chars().skip(n - (w - 1)));
    out
}

/// The first row to show so that `cursor` is visible in `height` rows,
/// keeping the previous offset when possible.
pub fn scroll(prev: usize, cursor: usize, height: usize, len: usize) -> usize {
    let h = height.max(1);
    let mut off = prev.min(len.saturating_sub(1));
    if cursor < off {
        off = cursor;
    } else if cursor >= off + h {
        off = cursor + 1 - h;
    }
    off.min(len.saturating_sub(h)).min(cursor)
}

/// Splits `area` into a list and a detail pane (side by side when wide).
pub fn split_list_detail(area: Rect) -> (Rect, Rect) {
    if area.width >= 140 {
        let [a, b] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(area);
        (a, b)
    } else {
        let list = (area.height / 2).max(3).min(area.height);
        let [a, b] = Layout::vertical([Constraint::Length(list), Constraint::Min(0)]).areas(area);
        (a, b)
    }
}
