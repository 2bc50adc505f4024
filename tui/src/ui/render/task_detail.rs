//! One task: times, fields, spawn chain, the live await tree (what it
//! waits on, for how long, the resource and its holder), poll and
//! scheduled histograms with percentiles, wakes, events, findings and its
//! causal trace.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use super::findings::{finding_trace, trace_lines};
use super::{count, dur};
use crate::snapshot::{HistSummary, TaskDetail};
use crate::ui::app::App;
use crate::ui::theme::Theme;

/// Draws the task detail.
pub fn draw(f: &mut Frame, area: Rect, app: &App, t: &Theme) {
    let Some((_, d)) = app
        .snap
        .detail
        .as_ref()
        .filter(|(k, _)| Some(*k) == app.selected)
    else {
        let block = Block::default()
            .borders(Borders::TOP)
            .title(Span::styled(" Task ", t.title()));
        f.render_widget(
            Paragraph::new(Span::styled(
                "The task is gone (no longer retained).",
                t.dim(),
            ))
            .block(block),
            area,
        );
        return;
    };
    let block = Block::default()
        .borders(Borders::TOP)
        .title(Span::styled(format!(" {} ", d.title), t.title()));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let (left, right) = if inner.width >= 140 {
        let [a, b] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
            .areas(inner);
        (a, Some(b))
    } else {
        (inner, None)
    };
    let mut l = summary_lines(d, t);
    l.extend(await_lines(d, t));
    let mut r = hist_lines(d, t);
    r.extend(other_lines(d, t));
    match right {
        Some(right) => {
            f.render_widget(
                Paragraph::new(l)
                    .wrap(Wrap { trim: false })
                    .scroll((app.detail_scroll, 0)),
                left,
            );
            f.render_widget(
                Paragraph::new(r)
                    .wrap(Wrap { trim: false })
                    .scroll((app.detail_scroll, 0)),
                right,
            );
        }
        None => {
            l.extend(r);
            f.render_widget(
                Paragraph::new(l)
                    .wrap(Wrap { trim: false })
                    .scroll((app.detail_scroll, 0)),
                left,
            );
        }
    }
}

fn section(title: &str, t: &Theme) -> Line<'static> {
    Line::from(Span::styled(title.to_string(), t.title()))
}

fn summary_lines<'a>(d: &'a TaskDetail, t: &Theme) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    if let Some(s) = d.state {
        out.push(Line::from(vec![
            Span::styled(format!("{} {}", t.state_glyph(s), s.as_str()), t.state(s)),
            Span::raw(format!(
                "  busy {}  scheduled {}  idle {}  age {}  polls {}",
                dur(d.times[0], t.ascii),
                dur(d.times[1], t.ascii),
                dur(d.times[2], t.ascii),
                dur(d.times[3], t.ascii),
                count(d.polls)
            )),
        ]));
    }
    out.push(Line::from(format!(
        "wakes {} (self {})  live wakers {}",
        count(d.wakes),
        count(d.self_wakes),
        d.wakers_alive
    )));
    if d.console {
        out.push(Line::from(Span::styled(
            "woken by: not known from console (only whether by itself)",
            t.dim(),
        )));
    } else if !d.woken_by.is_empty() {
        let who: Vec<String> = d
            .woken_by
            .iter()
            .map(|(w, n)| format!("{w} ({})", count(*n)))
            .collect();
        out.push(Line::from(format!("woken by {}", who.join(", "))));
    }
    if let Some(p) = &d.panic {
        out.push(Line::from(vec![
            Span::styled("panicked: ", t.bad()),
            Span::raw(p.as_str()),
        ]));
    }
    if !d.fields.is_empty() {
        out.push(section("Fields", t));
        let line: Vec<String> = d.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push(Line::from(format!("  {}", line.join("  "))));
    }
    if !d.spawn_chain.is_empty() {
        out.push(section("Spawned by (root first)", t));
        out.extend(trace_lines(&d.spawn_chain, t));
    }
    if !d.awaited_by.is_empty() {
        out.push(section("Awaited by", t));
        for a in &d.awaited_by {
            out.push(Line::from(format!("  {a}")));
        }
    }
    if !d.handed_over_to.is_empty() {
        out.push(section("Handed over to other processes", t));
        for h in &d.handed_over_to {
            out.push(Line::from(Span::styled(format!("  {h}"), t.bad())));
        }
    }
    out
}

fn await_lines<'a>(d: &'a TaskDetail, t: &Theme) -> Vec<Line<'a>> {
    let mut out = vec![section(
        if d.console {
            "Await tree (last poll; from console: the resources it waits on, spans not known)"
        } else {
            "Await tree (last poll)"
        },
        t,
    )];
    if d.await_tree.is_empty() && d.console {
        out.push(Line::from(Span::styled(
            "  (waits on no tokio resource; what else it awaits is not known from console)",
            t.dim(),
        )));
    } else if d.await_tree.is_empty() {
        out.push(Line::from(Span::styled(
            "  (nothing entered in its last poll)",
            t.dim(),
        )));
    }
    let tree = t.tree();
    for n in &d.await_tree {
        let mut spans = vec![Span::raw(format!(
            "  {}{}",
            tree[2].repeat(n.depth.min(16)).replace(tree[2], "   "),
            if n.depth > 0 { tree[1] } else { "" }
        ))];
        spans.push(Span::styled(
            n.label.clone(),
            if n.leaf { t.bad() } else { t.title() },
        ));
        if !n.location.is_empty() {
            spans.push(Span::styled(format!(" @ {}", n.location), t.dim()));
        }
        spans.push(Span::raw(format!("  for {}", dur(n.for_ns, t.ascii))));
        if let Some(r) = &n.resource {
            spans.push(Span::styled(format!("  [{r}]"), t.key()));
        }
        if n.leaf {
            spans.push(Span::styled(
                format!("  {} waiting here", if t.ascii { "<-" } else { "←" }),
                t.bad(),
            ));
        }
        out.push(Line::from(spans));
    }
    out
}

fn hist(title: &str, h: &HistSummary, t: &Theme) -> Vec<Line<'static>> {
    let mut out = vec![section(title, t)];
    if h.count == 0 {
        out.push(Line::from(Span::styled("  no samples", t.dim())));
        return out;
    }
    let us = |v: u64| dur(v.saturating_mul(1000), t.ascii);
    out.push(Line::from(format!(
        "  n={}  p50 {}  p90 {}  p99 {}  max {}",
        count(h.count),
        us(h.p50),
        us(h.p90),
        us(h.p99),
        us(h.max)
    )));
    let bars = t.bars();
    let max = h.buckets.iter().copied().max().unwrap_or(1).max(1);
    let bar: String = h
        .buckets
        .iter()
        .map(|&c| {
            let i = if c == 0 {
                0
            } else {
                1 + (c * (bars.len() as u64 - 2) / max) as usize
            };
            bars[i.min(bars.len() - 1)]
        })
        .collect();
    out.push(Line::from(vec![
        Span::raw("  "),
        Span::styled(bar, t.good()),
        Span::styled(
            format!(
                "  1{} .. {}",
                if t.ascii { "us" } else { "µs" },
                us(1 << (h.buckets.len().saturating_sub(1)))
            ),
            t.dim(),
        ),
    ]));
    out
}

fn hist_lines(d: &TaskDetail, t: &Theme) -> Vec<Line<'static>> {
    let mut out = hist("Poll times", &d.poll, t);
    out.extend(hist("Scheduled times (wake to poll)", &d.scheduled, t));
    out
}

fn other_lines<'a>(d: &'a TaskDetail, t: &Theme) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    if !d.findings.is_empty() {
        out.push(section("Findings", t));
        for fr in &d.findings {
            out.push(Line::from(vec![
                Span::styled(
                    format!("  {} {}: ", t.severity_glyph(fr.severity), fr.kind),
                    t.severity(fr.severity),
                ),
                Span::raw(fr.message.as_str()),
            ]));
            if !fr.location.is_empty() {
                out.push(Line::from(vec![
                    Span::styled("    at ", t.dim()),
                    Span::raw(fr.location.as_str()),
                ]));
            }
            out.extend(finding_trace(&fr.trace, 4, t));
        }
    }
    if !d.logs.is_empty() {
        out.push(section("WARN / ERROR events", t));
        for (lvl, m, loc) in &d.logs {
            let style = if lvl == "error" { t.bad() } else { t.key() };
            out.push(Line::from(vec![
                Span::styled(format!("  {lvl:<5} "), style),
                Span::raw(m.as_str()),
                Span::styled(
                    if loc.is_empty() {
                        String::new()
                    } else {
                        format!(" @ {loc}")
                    },
                    t.dim(),
                ),
            ]));
        }
    }
    if !d.causal.is_empty() {
        out.push(section("Causal trace (innermost first)", t));
        out.extend(trace_lines(&d.causal, t));
    }
    out
}
