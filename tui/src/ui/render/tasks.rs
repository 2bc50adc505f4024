//! The task table and the spawn tree. Only the visible rows are built.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::Frame;

use super::{clip, clip_start, count, dur, scroll};
use crate::ui::app::{App, Column, RowKind, VisRow};
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
    let visible = &app.rows[off..(off + height).min(app.rows.len())];
    let names: Vec<String> = visible.iter().map(|r| row_name(app, r, t)).collect();
    // Name, location and "waiting on" share what the fixed columns leave,
    // sized to the widest seen (see `App::task_widths`).
    let task = |r: &VisRow| match r.kind {
        RowKind::Task(i) => Some(&app.snap.tasks[i]),
        RowKind::Process(_) => None,
    };
    let widest = |it: &mut dyn Iterator<Item = &str>| {
        it.map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
            .min(usize::from(u16::MAX)) as u16
    };
    let seen = app.task_widths.get();
    let want = [
        seen[0].max(widest(&mut names.iter().map(String::as_str))),
        seen[1].max(widest(
            &mut visible.iter().filter_map(task).map(|t| t.location.as_str()),
        )),
        seen[2].max(widest(
            &mut visible.iter().filter_map(task).map(|t| t.waiting.as_str()),
        )),
    ];
    app.task_widths.set(want);
    // The state in full when there is room ("⏸ scheduled"), else its first
    // four letters (`state:` filters match any start of the word).
    let state_w: u16 = if wide {
        let longest = visible
            .iter()
            .filter_map(task)
            .map(|t| t.state.as_str().len());
        (2 + longest.max().unwrap_or(4) as u16).max(6)
    } else {
        6
    };
    let rest = inner.width.saturating_sub(4 + state_w + 6 + 8 * 3 + 6 + 9);
    let (name_w, loc_w, wait_w) = if wide {
        let titles = [4, 8, 10];
        let [n, l, w] = fair_share(rest, [0, 1, 2].map(|i| want[i].max(titles[i])));
        (n, l, w + rest.saturating_sub(n + l + w))
    } else {
        // Narrow: the name gets half (in the tree, with its rails, 60 %)
        // unless one of the two wants less than its part.
        let part = rest * if app.tree { 60 } else { 50 } / 100;
        let (want_n, want_l) = (want[0].max(4), want[1].max(8));
        let n = if want_l < rest - part {
            rest - want_l
        } else {
            part.min(want_n)
        };
        (n.max(8), rest.saturating_sub(n).max(6), 0)
    };
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
    let rows = visible.iter().zip(names).enumerate().map(|(j, (r, name))| {
        let selected = off + j == app.cursor;
        let row = match r.kind {
            RowKind::Process(_) => Row::new(vec![
                Cell::from(""),
                Cell::from(""),
                Cell::from(Span::styled(
                    clip(&name, name_w as usize, t.ascii),
                    t.title(),
                )),
            ]),
            RowKind::Task(i) => {
                let task = &app.snap.tasks[i];
                let warn = if task.warnings > 0 {
                    let sev = task.worst.map(|k| k.severity());
                    let g = sev.map_or(if t.ascii { "!" } else { "▲" }, |s| t.severity_glyph(s));
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
                let state = task.state.as_str();
                let state = if wide { state } else { &state[..4] };
                let mut cells = vec![
                    warn,
                    Cell::from(Span::styled(
                        format!("{} {state}", t.state_glyph(task.state)),
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
        Constraint::Length(state_w),
        Constraint::Length(name_w),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(loc_w),
    ];
    if wide {
        widths.push(Constraint::Length(wait_w));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header))
        .column_spacing(1);
    f.render_widget(table, inner);
}

/// What a row shows in the Name column: a task's name (or kind) with its
/// tree prefix, and in the tree its descendants; a process's name, pid
/// and tasks.
fn row_name(app: &App, r: &VisRow, t: &Theme) -> String {
    let mut prefix = String::new();
    if app.tree {
        let tree = t.tree();
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
    match r.kind {
        RowKind::Process(pi) => {
            let p = &app.snap.processes[pi as usize];
            format!(
                "{prefix}{} (pid {}) {} tasks{}",
                p.name,
                p.pid,
                r.descendants,
                if p.connected { "" } else { " [disconnected]" }
            )
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
            name
        }
    }
}

/// Splits `avail` columns between columns that want `want` each: all
/// they want when it fits, else max-min fair shares (a column wanting
/// less than an equal share of what is left gets its want, the others
/// split the rest). What is left over is the caller's to give.
fn fair_share<const N: usize>(avail: u16, want: [u16; N]) -> [u16; N] {
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    order.sort_by_key(|&i| want[i]);
    let mut out = [0; N];
    let mut left = avail;
    for (k, &i) in order.iter().enumerate() {
        let share = left / (N - k) as u16;
        out[i] = want[i].min(share);
        left -= out[i];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn all_wants_that_fit_are_met() {
        assert_eq!(fair_share(100, [10, 20, 30]), [10, 20, 30]);
    }

    #[test]
    fn a_small_want_is_met_and_the_rest_split() {
        // 100: the 10 fits; 90 left for two that want more than 45 each.
        assert_eq!(fair_share(100, [200, 10, 80]), [45, 10, 45]);
        // The second smallest fits its share too (30 < 45).
        assert_eq!(fair_share(100, [200, 10, 30]), [60, 10, 30]);
    }

    #[test]
    fn nothing_to_share_gives_nothing() {
        assert_eq!(fair_share(0, [5, 6]), [0, 0]);
    }
}
