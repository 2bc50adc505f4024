//! Resources (mutexes, semaphores, timers...) with holders and waiters.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;

use super::{clip, clip_start, dur, scroll};
use crate::ui::app::App;
use crate::ui::theme::Theme;

/// Draws the resources view.
pub fn draw(f: &mut Frame, area: Rect, app: &App, t: &Theme) {
    let res = &app.snap.resources;
    let block = Block::default().borders(Borders::TOP).title(Span::styled(
        format!(" Resources ({}) ", res.len()),
        t.title(),
    ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if res.is_empty() {
        f.render_widget(
            Paragraph::new(Span::styled(
                "No resources (tokio resources need --cfg tokio_unstable).",
                t.dim(),
            )),
            inner,
        );
        return;
    }
    let h = inner.height.saturating_sub(1) as usize;
    app.page.set(h as u16);
    let cur = app.list_cursor[2];
    let off = scroll(app.offset.get(), cur, h, res.len());
    app.offset.set(off);
    app.body_top.set(inner.y + 1);
    let rest = inner.width.saturating_sub(10 + 6 + 22 + 8 + 4) as usize;
    let (hw, ww) = (rest / 2, rest - rest / 2);
    let rows = res[off..(off + h).min(res.len())]
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let holders: Vec<&str> = r.holders.iter().map(|(_, l)| l.as_str()).collect();
            let waiters: Vec<&str> = r.waiters.iter().map(|(_, l)| l.as_str()).collect();
            let waiting = if waiters.is_empty() {
                Cell::from("")
            } else {
                Cell::from(Span::styled(
                    clip(
                        &format!("{}: {}", waiters.len(), waiters.join(", ")),
                        ww,
                        t.ascii,
                    ),
                    t.bad(),
                ))
            };
            let row = Row::new(vec![
                Cell::from(clip(&r.concrete_type, 10, t.ascii)),
                Cell::from(Span::styled(clip(&r.kind, 6, t.ascii), t.dim())),
                Cell::from(Span::styled(clip_start(&r.location, 22, t.ascii), t.dim())),
                Cell::from(dur(r.age, t.ascii)),
                Cell::from(clip(
                    &if holders.is_empty() {
                        r.state.clone()
                    } else {
                        holders.join(", ")
                    },
                    hw,
                    t.ascii,
                )),
                waiting,
            ]);
            if off + j == cur {
                row.style(t.selected())
            } else {
                row.style(Style::default())
            }
        });
    let header = Row::new(
        [
            "Type",
            "Kind",
            "Created at",
            "Age",
            "Held by / state",
            "Waiters",
        ]
        .map(|h| Cell::from(h).style(t.title())),
    );
    let widths = [
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(22),
        Constraint::Length(8),
        Constraint::Length(hw as u16),
        Constraint::Min(4),
    ];
    f.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        inner,
    );
}
