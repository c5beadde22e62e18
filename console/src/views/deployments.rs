//! Deployments, newest first, each with its progress; below, the selected one's gauge and
//! per-device status, phase and error.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Gauge, Row, Table, Widget};

use super::text::ellipsize;
use super::{deployment_style, list_frame, selected, short_id, target_style};
use crate::app::{App, progress};

pub struct DeploymentsView<'a>(pub &'a App);

/// A text progress bar for list rows (a Gauge widget per row would not fit a table).
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (done as usize * width) / total as usize
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

impl Widget for DeploymentsView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let deps = &app.deployments;
        let visible = deps.visible();
        let Some(inner) = list_frame(
            area,
            buf,
            "Deployments",
            (deps.items.len(), visible.len()),
            &deps.filter,
            "no deployments yet: press d on a device (or in Bundles) to deploy",
        ) else {
            return;
        };
        let list_h = if deps.expanded {
            4.min(inner.height / 3).max(2)
        } else {
            (inner.height / 2).max(3)
        };
        let [list_area, detail_area] =
            Layout::vertical([Constraint::Length(list_h + 1), Constraint::Min(3)]).areas(inner);
        let height = list_area.height.saturating_sub(1) as usize;
        let start = deps.scroll.window(height, visible.len());
        // The id's end, as wide as its column: a suffix (what commands accept), never a
        // chunk from its middle.
        let id_w = (list_area.width as usize).saturating_sub(13 + 8 + 16 + 16 + 11 + 5);
        let rows: Vec<Row> = visible
            .iter()
            .enumerate()
            .skip(start)
            .take(height)
            .map(|(i, d)| {
                let (done, total) = progress(d);
                let row = Row::new(vec![
                    Cell::from(Line::from(vec![
                        Span::raw(if i == deps.scroll.selected {
                            "▶ "
                        } else {
                            "  "
                        }),
                        Span::styled(d.status.as_str(), deployment_style(d.status)),
                    ])),
                    Cell::from(d.kind.as_str()),
                    Cell::from(d.bundle_version.clone()),
                    Cell::from(format!("{} {done}/{total}", bar(done, total, 8))),
                    Cell::from(d.created_at.format("%m-%d %H:%M").to_string()),
                    Cell::from(short_id(&d.id, id_w)),
                ]);
                if i == deps.scroll.selected {
                    row.style(selected())
                } else {
                    row
                }
            })
            .collect();
        Table::new(
            rows,
            [
                Constraint::Length(13),
                Constraint::Length(8),
                Constraint::Length(16),
                Constraint::Length(16),
                Constraint::Length(11),
                Constraint::Min(6),
            ],
        )
        .header(
            Row::new(["  STATUS", "KIND", "VERSION", "PROGRESS", "CREATED", "ID"])
                .style(Style::new().fg(Color::Yellow).bold()),
        )
        .render(list_area, buf);

        let Some(d) = visible.get(deps.scroll.selected) else {
            return;
        };
        let block = Block::new()
            .borders(Borders::TOP)
            .border_style(Style::new().fg(Color::DarkGray))
            .title(Line::from(vec![
                Span::raw(format!(" {} {} ", d.kind.as_str(), d.bundle_version)),
                Span::styled(d.id.clone(), Style::new().fg(Color::DarkGray)),
                Span::raw(" "),
            ]));
        let inner = block.inner(detail_area);
        block.render(detail_area, buf);
        let rollout_rows = if d.rollout.is_some() { 2 } else { 0 };
        let [gauge_area, rollout_area, table_area] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(rollout_rows),
            Constraint::Min(1),
        ])
        .areas(inner);
        if let Some(r) = &d.rollout {
            rollout_lines(d, r, app.now()).render(rollout_area, buf);
        }
        let (done, total) = progress(d);
        let c = &d.counts;
        Gauge::default()
            .gauge_style(deployment_style(d.status))
            .ratio(if total == 0 {
                0.0
            } else {
                done as f64 / total as f64
            })
            .label(format!(
                "{done}/{total} done · {} ok · {} failed · {} running · {} pending · {} cancelled",
                c.success, c.failed, c.in_progress, c.pending, c.cancelled
            ))
            .render(gauge_area, buf);
        // Only the targets on screen become rows (a deployment may target the fleet).
        let height = table_area.height.saturating_sub(1) as usize;
        let start = deps.target_scroll.window(height, d.devices.len());
        let cursor = deps.expanded;
        // The error column gets what the others leave; a cut error ends with "…" and
        // `l` shows it whole.
        let error_w = (table_area.width as usize).saturating_sub(13 + 11 + 17 + 3);
        let rows: Vec<Row> = d
            .devices
            .iter()
            .enumerate()
            .skip(start)
            .take(height)
            .map(|(i, t)| {
                let phase = match (t.phase, t.progress_pct) {
                    (Some(p), Some(pct)) if !t.status.is_final() => {
                        format!("{} {pct}%", p.as_str())
                    }
                    (Some(p), _) if !t.status.is_final() => p.as_str().to_owned(),
                    _ => String::new(),
                };
                let here = cursor && i == deps.target_scroll.selected;
                let row = Row::new(vec![
                    Cell::from(format!(
                        "{}{}",
                        if here { "▶" } else { " " },
                        short_id(&t.device_id, 12)
                    )),
                    Cell::from(Span::styled(t.status.as_str(), target_style(t.status))),
                    Cell::from(phase),
                    Cell::from(
                        t.error_message
                            .as_deref()
                            .map(|e| ellipsize(e, error_w))
                            .unwrap_or_default(),
                    ),
                ]);
                if here { row.style(selected()) } else { row }
            })
            .collect();
        Table::new(
            rows,
            [
                Constraint::Length(13),
                Constraint::Length(11),
                Constraint::Length(17),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(["DEVICE", "STATUS", "PHASE", "ERROR"])
                .style(Style::new().fg(Color::Yellow).bold()),
        )
        .render(table_area, buf);
    }
}

/// The gate that holds the rollout (or why it is paused), then its waves in one line:
/// `▸1 1% 1/1 ok · 2 10% 0/9 · 3 100% waiting` (SPEC §6).
fn rollout_lines(
    d: &kernex_common::api::Deployment,
    r: &kernex_common::api::Rollout,
    now: chrono::DateTime<chrono::Utc>,
) -> ratatui::widgets::Paragraph<'static> {
    let gate = crate::fmt::rollout_gate(r, d.status, now).unwrap_or_default();
    let gate_style = if r.paused_reason.is_some() {
        Style::new().fg(Color::Yellow).bold()
    } else {
        Style::new().fg(Color::Cyan)
    };
    let mut extra = Vec::new();
    if d.counts.waiting > 0 {
        extra.push(format!("{} waiting", d.counts.waiting));
    }
    if d.counts.timed_out > 0 {
        extra.push(format!("{} timed out", d.counts.timed_out));
    }
    let mut first = vec![Span::styled(gate, gate_style)];
    if !extra.is_empty() {
        first.push(Span::raw(format!(" · {}", extra.join(" · "))));
    }
    let mut waves = vec![Span::styled("waves ", Style::new().fg(Color::DarkGray))];
    for (k, w) in r.waves.iter().enumerate() {
        if k > 0 {
            waves.push(Span::styled(" · ", Style::new().fg(Color::DarkGray)));
        }
        let here = k == r.current_wave && w.opened_at.is_some();
        let text = if w.opened_at.is_none() {
            format!("{} {}% waiting", k + 1, w.pct)
        } else if w.failed > 0 {
            format!(
                "{} {}% {}/{} ok {} failed",
                k + 1,
                w.pct,
                w.healthy,
                w.targets,
                w.failed
            )
        } else {
            format!("{} {}% {}/{} ok", k + 1, w.pct, w.healthy, w.targets)
        };
        let style = match (here, w.opened_at.is_some()) {
            (true, _) => Style::new().bold(),
            (false, true) => Style::new(),
            (false, false) => Style::new().fg(Color::DarkGray),
        };
        waves.push(Span::styled(
            format!("{}{text}", if here { "▸" } else { "" }),
            style,
        ));
    }
    ratatui::widgets::Paragraph::new(vec![Line::from(first), Line::from(waves)])
}

#[cfg(test)]
mod tests {
    use super::bar;

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0, 4, 4), "░░░░");
        assert_eq!(bar(2, 4, 4), "██░░");
        assert_eq!(bar(4, 4, 4), "████");
        assert_eq!(bar(0, 0, 3), "░░░");
    }
}
