//! The Fleet: one row per device. Only the rows on screen are built, so the cost of a
//! frame does not grow with the fleet.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Widget};

use super::{ago, body_block, selected, short_id, status_style};
use crate::app::App;

pub struct FleetView<'a>(pub &'a App);

impl Widget for FleetView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let fleet = &app.fleet;
        let mut title = vec![
            Span::styled(" Fleet ", Style::new().bold()),
            Span::raw(format!(
                "{} devices, {} online ",
                fleet.len(),
                fleet.online()
            )),
        ];
        if app.loading_devices {
            title.push(Span::styled("loading… ", Style::new().fg(Color::Yellow)));
        }
        if !fleet.marked.is_empty() {
            title.push(Span::styled(
                format!("{} marked ", fleet.marked.len()),
                Style::new().fg(Color::Magenta).bold(),
            ));
        }
        if !fleet.filter.is_empty() {
            title.push(Span::styled(
                format!("/{} ({}) ", fleet.filter, fleet.visible_len()),
                Style::new().fg(Color::Cyan),
            ));
        }
        title.push(Span::styled(
            format!("sort:{} ", fleet.sort.name()),
            Style::new().fg(Color::DarkGray),
        ));
        let block = body_block(Line::from(title));
        let inner = block.inner(area);
        block.render(area, buf);
        if fleet.visible_len() == 0 {
            let text = if fleet.is_empty() {
                if app.loading_devices {
                    "reading the fleet…"
                } else {
                    "no devices yet: start an agent (just agent) and it appears here"
                }
            } else {
                "no device matches the filter (Esc clears it)"
            };
            Paragraph::new(text)
                .style(Style::new().fg(Color::DarkGray))
                .render(inner, buf);
            return;
        }
        let wide = inner.width >= 118;
        let id_w: u16 = if wide { 32 } else { 12 };
        let height = inner.height.saturating_sub(1) as usize;
        let start = fleet.scroll.window(height, fleet.visible_len());
        let now = app.now();
        let rows: Vec<Row> = fleet
            .window(start, height)
            .enumerate()
            .map(|(i, d)| {
                let (status, st) = status_style(d);
                let here = start + i == fleet.scroll.selected;
                let mark = match (here, fleet.marked.contains(&d.device_id)) {
                    (true, true) => "▶●",
                    (true, false) => "▶ ",
                    (false, true) => " ●",
                    (false, false) => "  ",
                };
                let mut cells = vec![
                    Cell::from(Span::styled(mark, Style::new().fg(Color::Magenta).bold())),
                    Cell::from(short_id(&d.device_id, id_w as usize)),
                    Cell::from(d.device_type.clone()),
                ];
                if wide {
                    cells.push(Cell::from(d.admission.as_str()));
                }
                cells.extend([
                    Cell::from(Span::styled(status, st)),
                    Cell::from(
                        d.current_bundle_version
                            .clone()
                            .unwrap_or_else(|| "-".into()),
                    ),
                    Cell::from(
                        d.cpu_pct
                            .map(|c| format!("{c:>4.0}%"))
                            .unwrap_or_else(|| "    -".into()),
                    ),
                    Cell::from(
                        d.memory_mb
                            .map(|m| format!("{m:>5.0}M"))
                            .unwrap_or_else(|| "     -".into()),
                    ),
                    Cell::from(ago(d.last_heartbeat, now)),
                    Cell::from(d.tags.join(",")),
                ]);
                if wide {
                    cells.push(Cell::from(d.agent_status.clone().unwrap_or_default()));
                }
                let row = Row::new(cells);
                if here { row.style(selected()) } else { row }
            })
            .collect();
        let mut header = vec!["", "ID", "TYPE"];
        let mut widths = vec![
            Constraint::Length(2),
            Constraint::Length(id_w),
            Constraint::Length(11),
        ];
        if wide {
            header.push("ADMISSION");
            widths.push(Constraint::Length(9));
        }
        header.extend(["STATUS", "VERSION", "CPU", "MEM", "SEEN", "TAGS"]);
        widths.extend([
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Min(4),
        ]);
        if wide {
            header.push("AGENT");
            widths.push(Constraint::Length(18));
        }
        Table::new(rows, widths)
            .header(Row::new(header).style(Style::new().fg(Color::Yellow).bold()))
            .column_spacing(1)
            .render(inner, buf);
    }
}
