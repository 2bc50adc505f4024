//! Header (source, connection, processes, task counts, event rate, drops,
//! view tabs) and footer (the keys that apply here, or the filter).

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{count, dur};
use crate::ui::app::{App, View};
use crate::ui::theme::Theme;

/// Draws the two header lines.
pub fn draw(f: &mut Frame, area: Rect, app: &App, t: &Theme) {
    let s = &app.snap;
    let mut l1 = vec![Span::styled(" awaitscope ", t.title()), Span::raw("│ ")];
    let (dot, style) = if app.source_ok {
        (if t.ascii { "*" } else { "●" }, t.good())
    } else {
        (if t.ascii { "x" } else { "○" }, t.bad())
    };
    l1.push(Span::styled(format!("{dot} "), style));
    l1.push(Span::raw(app.source.clone()));
    if let Some((pos, end, playing)) = app.replay {
        l1.push(Span::raw(format!(
            " {} / {} {}",
            dur(pos, t.ascii),
            dur(end, t.ascii),
            if playing { "playing" } else { "paused" }
        )));
    }
    l1.push(Span::raw(" │ "));
    match s.processes.len() {
        0 => l1.push(Span::styled("waiting for a program…", t.dim())),
        1 => {
            let p = &s.processes[0];
            if p.console {
                l1.push(Span::raw(format!("{} ", p.name)));
                l1.push(Span::styled(
                    "[from console: no span await trees, causal traces or wake edges] ",
                    t.dim(),
                ));
            } else {
                l1.push(Span::raw(format!("{} (pid {}) ", p.name, p.pid)));
            }
            if p.connected {
                l1.push(Span::styled("connected", t.good()));
            } else if p.ended {
                l1.push(Span::styled("ended", t.dim()));
            } else {
                l1.push(Span::styled("disconnected", t.bad()));
            }
        }
        n => {
            let c = s.processes.iter().filter(|p| p.connected).count();
            l1.push(Span::raw(format!("{n} processes, {c} connected")));
        }
    }
    if app.paused {
        l1.push(Span::styled("  PAUSED", t.bad()));
    }
    let c = s.counts();
    let mut l2 = Vec::new();
    for v in View::TABS {
        let n = match v {
            View::Tasks => s.tasks.len(),
            View::Findings => s.findings.len(),
            View::Errors => app.error_indices().len(),
            View::Resources => s.resources.len(),
            View::Detail => 0,
        };
        let cur = app.view == v || (app.view == View::Detail && app.back == v);
        let label = format!(" {} {} ", v.title(), n);
        l2.push(if cur {
            Span::styled(label, t.selected())
        } else {
            Span::raw(label)
        });
    }
    l2.push(Span::raw(" │ "));
    use awaitscope_collector::model::TaskState as S;
    for (i, st) in [S::Running, S::Scheduled, S::Idle, S::Completed]
        .into_iter()
        .enumerate()
    {
        l2.push(Span::styled(
            format!("{}{} ", t.state_glyph(st), c[i]),
            t.state(st),
        ));
    }
    l2.push(Span::raw(format!(
        "│ {} ev/s │ ",
        count(app.event_rate.round() as u64)
    )));
    let dropped = format!("dropped {}", count(s.dropped));
    l2.push(if s.dropped > 0 {
        Span::styled(dropped, t.bad())
    } else {
        Span::raw(dropped)
    });
    f.render_widget(Paragraph::new(vec![Line::from(l1), Line::from(l2)]), area);
}

/// Draws the footer: keys that apply to the current view, or the filter
/// being edited.
pub fn footer(f: &mut Frame, area: Rect, app: &App, t: &Theme) {
    if app.editing {
        let line = Line::from(vec![
            Span::styled(" / ", t.key()),
            Span::raw(app.filter.clone()),
            Span::styled(if t.ascii { "_" } else { "▏" }, t.key()),
            Span::styled("   Enter keep · Esc clear", t.dim()),
        ]);
        f.render_widget(Paragraph::new(line), area);
        return;
    }
    let keys: &[(&str, &str)] = match app.view {
        View::Tasks if app.tree => &[
            ("↑↓", "move"),
            ("←→", "fold"),
            ("⏎", "open"),
            ("t", "table"),
            ("s", "sort"),
            ("/", "filter"),
            ("Tab", "view"),
            ("p", "pause"),
            ("?", "help"),
            ("q", "quit"),
        ],
        View::Tasks => &[
            ("↑↓", "move"),
            ("⏎", "open"),
            ("t", "tree"),
            ("s", "sort"),
            ("r", "reverse"),
            ("/", "filter"),
            ("Tab", "view"),
            ("p", "pause"),
            ("?", "help"),
            ("q", "quit"),
        ],
        View::Findings | View::Errors => &[
            ("↑↓", "move"),
            ("⏎", "go to task"),
            ("JK", "scroll"),
            ("/", "filter"),
            ("Tab", "view"),
            ("p", "pause"),
            ("?", "help"),
            ("q", "quit"),
        ],
        View::Resources => &[
            ("↑↓", "move"),
            ("⏎", "holder"),
            ("Tab", "view"),
            ("p", "pause"),
            ("?", "help"),
            ("q", "quit"),
        ],
        View::Detail => &[
            ("↑↓", "scroll"),
            ("Esc", "back"),
            ("Tab", "view"),
            ("p", "pause"),
            ("?", "help"),
            ("q", "quit"),
        ],
    };
    let mut spans = vec![Span::raw(" ")];
    if app.replay.is_some() {
        for (k, d) in [("space", "play"), (".,", "step"), ("[]", "seek")] {
            spans.push(Span::styled(k, t.key()));
            spans.push(Span::raw(format!(" {d}  ")));
        }
    }
    for (k, d) in keys {
        let k = if t.ascii {
            k.replace("↑↓", "jk")
                .replace("←→", "hl")
                .replace('⏎', "Enter")
        } else {
            k.to_string()
        };
        spans.push(Span::styled(k, t.key()));
        spans.push(Span::raw(format!(" {d}  ")));
    }
    if !app.filter.is_empty() {
        spans.push(Span::styled(format!("filter: {}", app.filter), t.title()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}
