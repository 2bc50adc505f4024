//! Errors and panics, each with its causal trace stitched across tasks.

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph};
use ratatui::Frame;

use super::findings::detail;
use super::{clip, count, scroll, split_list_detail};
use crate::ui::app::App;
use crate::ui::theme::Theme;

/// Draws the errors view.
pub fn draw(f: &mut Frame, area: Rect, app: &App, t: &Theme) {
    let errs = app.error_indices();
    let (list_area, detail_area) = split_list_detail(area);
    let block = Block::default().borders(Borders::TOP).title(Span::styled(
        format!(" Errors and panics ({}) — newest first ", errs.len()),
        t.title(),
    ));
    let inner = block.inner(list_area);
    f.render_widget(block, list_area);
    if errs.is_empty() {
        f.render_widget(
            Paragraph::new(Span::styled("No errors or panics.", t.dim())),
            inner,
        );
    } else {
        let h = inner.height as usize;
        app.page.set(inner.height);
        let cur = app.list_cursor[1];
        let off = scroll(app.offset.get(), cur, h, errs.len());
        app.offset.set(off);
        app.body_top.set(inner.y);
        let w = inner.width as usize;
        let items: Vec<ListItem> = errs[off..(off + h).min(errs.len())]
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                let fr = &app.snap.findings[i];
                let task = fr.tasks.first().map_or("", |(_, l)| l.as_str());
                let c = if fr.count > 1 {
                    format!(" ×{}", count(fr.count))
                } else {
                    String::new()
                };
                let line = Line::from(vec![
                    Span::styled(
                        format!("{} {:<5} ", t.severity_glyph(fr.severity), fr.kind),
                        t.severity(fr.severity),
                    ),
                    Span::raw(clip(
                        &format!("{}{c}  {}", fr.message, task),
                        w.saturating_sub(8),
                        t.ascii,
                    )),
                ]);
                let item = ListItem::new(line);
                if off + j == cur {
                    item.style(t.selected())
                } else {
                    item.style(Style::default())
                }
            })
            .collect();
        f.render_widget(List::new(items), inner);
    }
    detail(
        f,
        detail_area,
        app,
        t,
        " Error ",
        "Select an error; Enter opens its task.",
    );
}
