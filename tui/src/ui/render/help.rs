//! The full help, over the current view.

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use crate::ui::input::HELP;
use crate::ui::theme::Theme;

/// Draws the help popup.
pub fn draw(f: &mut Frame, area: Rect, t: &Theme) {
    let w = area.width.saturating_sub(4).min(86);
    let h = area.height.saturating_sub(2).min(34);
    let [col] = Layout::horizontal([Constraint::Length(w)])
        .flex(Flex::Center)
        .areas(area);
    let [popup] = Layout::vertical([Constraint::Length(h)])
        .flex(Flex::Center)
        .areas(col);
    f.render_widget(Clear, popup);
    let mut lines = Vec::new();
    for (section, keys) in HELP {
        lines.push(Line::from(Span::styled(*section, t.title())));
        for (k, d) in *keys {
            let k = if t.ascii {
                k.replace('↑', "up")
                    .replace('↓', "down")
                    .replace('←', "left")
                    .replace('→', "right")
            } else {
                k.to_string()
            };
            lines.push(Line::from(vec![
                Span::styled(format!("  {k:<22}"), t.key()),
                Span::raw(*d),
            ]));
        }
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(" Help — Esc or ? to close ", t.title()));
    f.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        popup,
    );
}
