//! The task table and the spawn tree. Only the visible rows are built.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;

use super::{clip, clip_start, count, dur, scroll};
use crate::ui::app::{App, Column, RowKind};
use crate::ui::theme::Theme;

/// Draws the task table (or tree).
pub fn draw(f: &mut Frame, area: Rect, app: &App, t: &Theme) {
    let title = if app.tree { " Task tree " } else { " Tasks " };
    let block = Block::default().borders(Borders::TOP).title(Span::styled(
        format!("{title}({} shown) ", app.rows.len()),
        t.title(),
    ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if app.rows.is_empty() {
        let procs = &app.snap.processes;
        let msg = if !app.filter.is_empty() {
            "No task matches the filter (Esc clears it)."
        } else if procs.is_empty() {
            "No tasks yet. Instrument a program with awaitscope::init() and run it."
        } else if procs.iter().all(|p| p.console) {
            "No tasks yet: console-subscriber has named none of the program's tasks."
        } else {
            "No tasks yet: the programs connected have spawned none."
        };
        f.render_widget(Paragraph::new(Span::styled(msg, t.dim())), inner);
        return;
    }
    let height = inner.height.saturating_sub(1) as usize; // minus the header row
    app.page.set(height as u16);
    let off = scroll(app.offset.get(), app.cursor, height, app.rows.len());
    app.offset.set(off);
    app.body_top.set(inner.y + 1);
    let wide = inner.width >= 120;
    let wait_w: u16 = if wide { 30 } else { 0 };
    let rest = inner
        .width
        .saturating_sub(4 + 6 + 6 + 8 * 3 + 6 + 9 + wait_w);
    let name_w = (rest * if app.tree { 60 } else { 50 } / 100).max(8);
    let loc_w = rest.saturating_sub(name_w).max(6);
    let mut header = Vec::new();
    for c in Column::ALL {
        let mut s = c.title().to_string();
        if c == app.sort {
            s.push_str(if app.desc { "▼" } else { "▲" });
            if t.ascii {
                s = s.replace('▼', "v").replace('▲', "^");
            }
        }
        header.push(Cell::from(s).style(t.title()));
    }
    if wide {
        header.push(Cell::from("Waiting on").style(t.title()));
    }
    let tree = t.tree();
    let rows = app.rows[off..(off + height).min(app.rows.len())]
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let selected = off + j == app.cursor;
            let mut prefix = String::new();
            if app.tree {
                for lvl in 0..r.depth.min(64) {
                    if lvl + 1 == r.depth {
                        prefix.push_str(if r.last { tree[1] } else { tree[0] });
                    } else {
                        prefix.push_str(if lvl < 63 && r.rails & (1 << (lvl + 1)) != 0 {
                            tree[3]
                        } else {
                            tree[2]
                        });
                    }
                }
                if r.has_children {
                    prefix.push_str(t.fold(r.folded));
                }
            }
            let row = match r.kind {
                RowKind::Process(pi) => {
                    let p = &app.snap.processes[pi as usize];
                    let name = format!(
                        "{prefix}{} (pid {}) {} tasks{}",
                        p.name,
                        p.pid,
                        r.descendants,
                        if p.connected { "" } else { " [disconnected]" }
                    );
                    Row::new(vec![
                        Cell::from(""),
                        Cell::from(""),
                        Cell::from(Span::styled(clip(&name, 200, t.ascii), t.title())),
                    ])
                }
                RowKind::Task(i) => {
                    let task = &app.snap.tasks[i];
                    let mut name = if task.name.is_empty() {
                        format!(
                            "{prefix}{}",
                            if task.kind.is_empty() {
                                "task"
                            } else {
                                &task.kind
                            }
                        )
                    } else {
                        format!("{prefix}{}", task.name)
                    };
                    if app.tree && r.descendants > 0 {
                        name.push_str(&format!(" ({})", count(u64::from(r.descendants))));
                    }
                    let warn = if task.warnings > 0 {
                        let sev = task.worst.map(|k| k.severity());
                        let g =
                            sev.map_or(if t.ascii { "!" } else { "▲" }, |s| t.severity_glyph(s));
                        Cell::from(Span::styled(
                            format!("{g}{}", task.warnings),
                            sev.map_or(t.dim(), |s| t.severity(s)),
                        ))
                    } else {
                        Cell::from("")
                    };
                    let id = match task.tokio_id {
                        Some(tid) => tid.to_string(),
                        None => format!("#{}", task.key.id),
                    };
                    let mut cells = vec![
                        warn,
                        Cell::from(Span::styled(
                            format!(
                                "{} {}",
                                t.state_glyph(task.state),
                                &task.state.as_str()[..4]
                            ),
                            t.state(task.state),
                        )),
                        Cell::from(clip(&name, name_w as usize, t.ascii)),
                        Cell::from(id),
                        Cell::from(dur(task.busy, t.ascii)),
                        Cell::from(dur(task.sched, t.ascii)),
                        Cell::from(dur(task.idle, t.ascii)),
                        Cell::from(count(task.polls)),
                        Cell::from(Span::styled(
                            clip_start(&task.location, loc_w as usize, t.ascii),
                            t.dim(),
                        )),
                    ];
                    if wide {
                        // The end names the operation (`Receiver::await`),
                        // the start its module: keep the end.
                        cells.push(Cell::from(clip_start(
                            &task.waiting,
                            wait_w as usize,
                            t.ascii,
                        )));
                    }
                    Row::new(cells)
                }
            };
            if selected {
                row.style(t.selected())
            } else {
                row.style(Style::default())
            }
        });
    let mut widths = vec![
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Length(name_w),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(loc_w),
    ];
    if wide {
        widths.push(Constraint::Min(10));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header))
        .column_spacing(1);
    f.render_widget(table, inner);
}
