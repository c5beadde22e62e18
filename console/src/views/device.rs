//! One device, live: what it is and runs, CPU and memory sparklines from its heartbeats,
//! its bundle history and its configuration.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, Widget};

use super::text::ellipsize;
use super::{ago, body_block, selected, status_style};
use crate::app::App;

pub struct DeviceView<'a>(pub &'a App);

impl Widget for DeviceView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let Some(pane) = &app.device else {
            Paragraph::new("no device open: select one in the Fleet and press Enter")
                .render(area, buf);
            return;
        };
        let block = body_block(Line::from(vec![
            Span::styled(" Device ", Style::new().bold()),
            Span::raw(format!("{} ", pane.id)),
        ]));
        let inner = block.inner(area);
        block.render(area, buf);
        let Some(data) = &pane.data else {
            Paragraph::new("reading the device…")
                .style(Style::new().fg(Color::DarkGray))
                .render(inner, buf);
            return;
        };
        let now = app.now();
        let d = app.fleet.get(&pane.id).unwrap_or(&data.detail.summary);
        let (status, st) = status_style(d, app.fleet.stale_since.is_some());
        let label = |s: &'static str| Span::styled(s, Style::new().fg(Color::DarkGray));
        let info = vec![
            Line::from(vec![
                label("type "),
                Span::raw(format!("{}  ", d.device_type)),
                label("status "),
                Span::styled(status, st),
                Span::raw(format!(" ({})  ", d.agent_status.as_deref().unwrap_or("-"))),
                label("seen "),
                Span::raw(ago(d.last_heartbeat, now)),
            ]),
            Line::from(vec![
                label("runs "),
                Span::styled(
                    d.current_bundle_version
                        .clone()
                        .unwrap_or_else(|| "nothing".into()),
                    Style::new().bold(),
                ),
                Span::raw("  "),
                label("agent "),
                Span::raw(format!("{}  ", d.agent_version.as_deref().unwrap_or("-"))),
                label("queued "),
                Span::raw(format!("{}  ", data.detail.queued_reports)),
                label("tags "),
                Span::raw(if d.tags.is_empty() {
                    "-".to_owned()
                } else {
                    d.tags.join(",")
                }),
            ]),
            Line::from(vec![
                label("key "),
                Span::raw(format!(
                    "{}…  ",
                    data.detail
                        .public_key_fingerprint
                        .chars()
                        .take(16)
                        .collect::<String>()
                )),
                label("registered "),
                Span::raw(
                    data.detail
                        .registered_at
                        .format("%Y-%m-%d %H:%M")
                        .to_string(),
                ),
            ]),
        ];
        let [info_area, sparks, lower] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Length(4),
            Constraint::Min(3),
        ])
        .areas(inner);
        Paragraph::new(info).render(info_area, buf);

        let [cpu_area, mem_area] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(sparks);
        spark(
            format!(
                " CPU {} ",
                last(&pane.cpu)
                    .map(|v| format!("{v:.0}%"))
                    .unwrap_or_default()
            ),
            &pane.cpu,
            Some(100.0),
            Color::Cyan,
        )
        .render(cpu_area, buf);
        spark(
            format!(
                " memory {} ",
                last(&pane.mem)
                    .map(|v| format!("{v:.0} MB"))
                    .unwrap_or_default()
            ),
            &pane.mem,
            None,
            Color::Magenta,
        )
        .render(mem_area, buf);

        let [hist_area, cfg_area] =
            Layout::horizontal([Constraint::Min(40), Constraint::Length(24)]).areas(lower);
        // Rows under the table's title and header; the error gets what the rest leave.
        let height = hist_area.height.saturating_sub(2) as usize;
        let start = pane.history.window(height, data.history.len());
        let error_w = (hist_area.width as usize).saturating_sub(1 + 5 + 8 + 12 + 14 + 5);
        let rows: Vec<Row> = data
            .history
            .iter()
            .enumerate()
            .skip(start)
            .take(height)
            .map(|(i, h)| {
                let here = i == pane.history.selected;
                let status = match (&h.status, &h.rolled_back_to) {
                    (kernex_common::api::ResultStatus::Success, _) => {
                        Span::styled("ok", Style::new().fg(Color::Green))
                    }
                    (_, Some(v)) => {
                        Span::styled(format!("failed→{v}"), Style::new().fg(Color::Red))
                    }
                    _ => Span::styled("failed", Style::new().fg(Color::Red)),
                };
                let row = Row::new(vec![
                    Cell::from(if here { "▶" } else { " " }),
                    Cell::from(if h.deployed_at.date_naive() == now.date_naive() {
                        h.deployed_at.format("%H:%M").to_string()
                    } else {
                        h.deployed_at.format("%m-%d").to_string()
                    }),
                    Cell::from(h.kind.as_str()),
                    Cell::from(h.bundle_version.clone()),
                    Cell::from(status),
                    Cell::from(
                        h.error_message
                            .as_deref()
                            .map(|e| ellipsize(e, error_w))
                            .unwrap_or_default(),
                    ),
                ]);
                if here { row.style(selected()) } else { row }
            })
            .collect();
        let history = Table::new(
            rows,
            [
                Constraint::Length(1),
                Constraint::Length(5),
                Constraint::Length(8),
                Constraint::Length(12),
                Constraint::Length(14),
                Constraint::Min(5),
            ],
        )
        .header(
            Row::new(["", "WHEN", "KIND", "VERSION", "RESULT", "ERROR"])
                .style(Style::new().fg(Color::Yellow).bold()),
        )
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(" bundle history ")
                .border_style(Style::new().fg(Color::DarkGray)),
        );
        if data.history.is_empty() {
            Paragraph::new("no deployments yet")
                .style(Style::new().fg(Color::DarkGray))
                .block(
                    Block::new()
                        .borders(Borders::TOP)
                        .title(" bundle history ")
                        .border_style(Style::new().fg(Color::DarkGray)),
                )
                .render(hist_area, buf);
        } else {
            history.render(hist_area, buf);
        }

        let c = &data.config;
        let acked = match d.config_version {
            Some(v) if v >= c.version => Span::styled("applied", Style::new().fg(Color::Green)),
            Some(v) => Span::styled(format!("device has v{v}"), Style::new().fg(Color::Yellow)),
            None => Span::styled("not acknowledged", Style::new().fg(Color::Yellow)),
        };
        let cfg = vec![
            Line::from(vec![Span::raw(format!("v{} ", c.version)), acked]),
            Line::from(format!("polling   {}s", c.polling_interval)),
            Line::from(format!("heartbeat {}s", c.heartbeat_timeout)),
            Line::from(format!("deploy    {}s", c.deploy_timeout)),
            Line::from(format!("log level {}", c.log_level)),
            Line::from(format!("metadata  {}", c.metadata)),
        ];
        Paragraph::new(cfg)
            .block(
                Block::new()
                    .borders(Borders::TOP | Borders::LEFT)
                    .title(" config ")
                    .border_style(Style::new().fg(Color::DarkGray)),
            )
            .render(cfg_area, buf);
    }
}

fn last(v: &std::collections::VecDeque<f64>) -> Option<f64> {
    v.back().copied()
}

fn spark(
    title: String,
    data: &std::collections::VecDeque<f64>,
    max: Option<f64>,
    color: Color,
) -> Sparkline<'static> {
    // Newest at the right: show the last `width` points (the widget draws from the left).
    // Without a fixed scale (memory), bars start a little below the lowest value so that
    // changes show; the title carries the absolute figure.
    let (base, max) = match max {
        Some(m) => (0.0, m),
        None => {
            let lo = data.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = data.iter().cloned().fold(0.0, f64::max);
            let base = if lo.is_finite() {
                (lo - (hi - lo).max(1.0)).max(0.0)
            } else {
                0.0
            };
            (base, hi)
        }
    };
    let values: Vec<u64> = data
        .iter()
        .rev()
        .map(|v| (v - base).max(0.0).round() as u64)
        .collect();
    let max = (max - base).max(1.0).round() as u64;
    Sparkline::default()
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(title)
                .border_style(Style::new().fg(Color::DarkGray)),
        )
        .data(values)
        .max(max)
        .style(Style::new().fg(color))
        .direction(ratatui::widgets::RenderDirection::RightToLeft)
        .bold()
}
