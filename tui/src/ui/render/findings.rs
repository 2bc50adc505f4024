//! Findings, grouped by kind and counted, newest first; the selected one
//! in detail (scrolled with J/K): its location and its trace, innermost
//! first, or a deadlock's cycle drawn task -> resource -> task.

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Wrap};
use ratatui::Frame;

use super::{clip, count, dur, scroll, split_list_detail};
use crate::snapshot::FindingRow;
use crate::ui::app::{App, FindingLine};
use crate::ui::theme::Theme;
use awaitscope_collector::trace;
use awaitscope_collector::FindingKind;

/// Draws the findings view.
pub fn draw(f: &mut Frame, area: Rect, app: &App, t: &Theme) {
    let (list_area, detail_area) = split_list_detail(area);
    let block = Block::default().borders(Borders::TOP).title(Span::styled(
        format!(" Findings ({}) — newest first ", app.snap.findings.len()),
        t.title(),
    ));
    let inner = block.inner(list_area);
    f.render_widget(block, list_area);
    if app.finding_rows.is_empty() {
        f.render_widget(
            Paragraph::new(Span::styled(
                "No findings. Nothing stalled, blocked or failed.",
                t.dim(),
            )),
            inner,
        );
    } else {
        let h = inner.height as usize;
        app.page.set(inner.height);
        let cur = app.list_cursor[0];
        let off = scroll(app.offset.get(), cur, h, app.finding_rows.len());
        app.offset.set(off);
        app.body_top.set(inner.y);
        let w = inner.width as usize;
        let items: Vec<ListItem> = app.finding_rows[off..(off + h).min(app.finding_rows.len())]
            .iter()
            .enumerate()
            .map(|(j, line)| {
                let sel = off + j == cur;
                let item = match line {
                    FindingLine::Group(k, n, occ) => ListItem::new(Line::from(vec![
                        Span::styled(
                            format!("{} ", t.severity_glyph(k.severity())),
                            t.severity(k.severity()),
                        ),
                        Span::styled(format!("{k}"), t.title()),
                        Span::styled(
                            format!(
                                "  {n} finding{}, {} occurrence{}",
                                s(*n as u64),
                                count(*occ),
                                s(*occ)
                            ),
                            t.dim(),
                        ),
                    ])),
                    FindingLine::Item(i) => {
                        let fr = &app.snap.findings[*i];
                        let c = if fr.count > 1 {
                            format!(" ×{}", count(fr.count))
                        } else {
                            String::new()
                        };
                        let text = format!("   {}{c}", fr.message);
                        ListItem::new(Line::from(vec![Span::raw(clip(&text, w, t.ascii))]))
                    }
                };
                if sel {
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
        " Finding ",
        "Select a finding (↑↓); Enter opens its task.",
    );
}

/// The detail pane of the selected finding (or `placeholder`), shared by
/// the findings and errors views.
pub fn detail(f: &mut Frame, area: Rect, app: &App, t: &Theme, title: &str, placeholder: &str) {
    let block = Block::default()
        .borders(Borders::TOP)
        .title(Span::styled(title.to_owned(), t.title()));
    let lines = match app.selected_finding() {
        Some(fr) => finding_lines(fr, app, t),
        None => vec![Line::from(Span::styled(placeholder.to_owned(), t.dim()))],
    };
    // Scrolled with J/K (a long trace); never past the last line.
    let scroll = app.detail_scroll.min(lines.len().saturating_sub(1) as u16);
    f.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0)),
        area,
    );
}

fn s(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The lines describing a finding (shared with the task detail).
pub fn finding_lines<'a>(fr: &'a FindingRow, app: &App, t: &Theme) -> Vec<Line<'a>> {
    let mut out = vec![Line::from(vec![
        Span::styled(
            format!("{} {} ", t.severity_glyph(fr.severity), fr.kind),
            t.severity(fr.severity),
        ),
        Span::raw(fr.message.as_str()),
    ])];
    let mut facts = format!("seen {} time{}", count(fr.count), s(fr.count));
    if let Some(w) = fr.worst_ns {
        facts.push_str(&format!(", worst {}", dur(w, t.ascii)));
    }
    facts.push_str(&format!(
        ", first at {}, last at {}",
        dur(fr.first_seen, t.ascii),
        dur(fr.last_seen, t.ascii)
    ));
    if app.snap.processes.len() > 1 {
        if let Some(p) = app.snap.processes.get(fr.proc as usize) {
            facts.push_str(&format!(", process {} (pid {})", p.name, p.pid));
        }
    }
    out.push(Line::from(Span::styled(facts, t.dim())));
    if !fr.location.is_empty() {
        out.push(Line::from(vec![
            Span::styled("at ", t.dim()),
            Span::raw(fr.location.as_str()),
        ]));
    }
    if is_cycle(fr) {
        out.push(Line::from(Span::styled("Cycle:", t.title())));
        out.extend(cycle_lines(fr, t));
        return out;
    }
    if !fr.tasks.is_empty() {
        out.push(Line::from(Span::styled("Tasks:", t.title())));
        for (_, l) in &fr.tasks {
            out.push(Line::from(format!("  {l}")));
        }
    }
    out.extend(finding_trace(&fr.trace, 0, t));
    out
}

/// A finding's trace under its heading, as every view shows it
/// ([`awaitscope_collector::trace`]): one step a line, in the
/// detectors' order (innermost first), folded frames dimmed; `indent`
/// spaces before the heading. No lines for an empty trace.
pub fn finding_trace<'a>(trace: &'a [String], indent: usize, t: &Theme) -> Vec<Line<'a>> {
    if trace.is_empty() {
        return Vec::new();
    }
    let pad = " ".repeat(indent);
    let mut heading = trace::HEADING.to_owned();
    heading[..1].make_ascii_uppercase();
    let mut out = vec![Line::from(Span::styled(
        format!("{pad}{heading}:"),
        t.title(),
    ))];
    out.extend(trace.iter().map(|step| {
        let style = if trace::is_fold(step) {
            t.dim()
        } else {
            Style::default()
        };
        Line::from(vec![
            Span::raw(format!("{pad}  ")),
            Span::styled(trace::one_line(step), style),
        ])
    }));
    out
}

/// A trace as an indented chain, innermost first (each line called from,
/// or spawned by, the one before it).
pub fn trace_lines<'a>(trace: &'a [String], t: &Theme) -> Vec<Line<'a>> {
    let tree = t.tree();
    trace
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let indent = " ".repeat(2 + i.min(12) * 2);
            let glyph = if i == 0 { "" } else { tree[1] };
            let style = if step.starts_with("task ") {
                t.title()
            } else {
                Style::default()
            };
            Line::from(vec![
                Span::raw(format!("{indent}{glyph}")),
                Span::styled(step.as_str(), style),
            ])
        })
        .collect()
}

/// Whether the finding's trace is a deadlock's cycle of `A waits on R held
/// by B` steps, each maybe followed by indented lines (where A waits, what
/// it holds), drawn as a cycle; any other trace is drawn as a trace.
fn is_cycle(fr: &FindingRow) -> bool {
    fr.kind == FindingKind::Deadlock
        && !fr.trace.is_empty()
        && fr
            .trace
            .iter()
            .filter(|l| !l.starts_with(char::is_whitespace))
            .all(|l| l.contains(" waits on ") && l.contains(" held by "))
}

/// A deadlock cycle: each step `A waits on R held by B`, drawn as
/// task -> resource -> task, back to the first task; the indented lines
/// after a step (where A waits, what it holds) are shown under it.
pub fn cycle_lines<'a>(fr: &'a FindingRow, t: &Theme) -> Vec<Line<'a>> {
    let down = if t.ascii { "|" } else { "│" };
    let arrow = if t.ascii { "v" } else { "▼" };
    let back = if t.ascii { "(back to)" } else { "↺" };
    let mut out = Vec::new();
    let mut first = None;
    for step in &fr.trace {
        if step.starts_with(' ') {
            // Under a step, before its "held by": where its task waits and
            // what it holds.
            let at = out.len().saturating_sub(1);
            out.insert(at, Line::from(format!("    {down}{step}")));
            continue;
        }
        let (task, rest) = step.split_once(" waits on ").unwrap_or((step.as_str(), ""));
        let (res, holder) = rest.split_once(" held by ").unwrap_or((rest, ""));
        first.get_or_insert(task);
        out.push(Line::from(Span::styled(format!("  {task}"), t.title())));
        out.push(Line::from(vec![
            Span::raw(format!("    {down} waits on ")),
            Span::styled(res, t.bad()),
        ]));
        out.push(Line::from(format!("    {arrow} held by")));
        let _ = holder;
    }
    if let Some(f0) = first {
        out.push(Line::from(Span::styled(
            format!("  {back} {f0}"),
            t.title(),
        )));
    }
    out
}
