//! Bundles on the server, newest first.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};

use ratatui::widgets::{Cell, Row, Table, Widget};

use super::{list_frame, selected};
use crate::app::App;
use crate::fmt::bytes;

pub struct BundlesView<'a>(pub &'a App);

impl Widget for BundlesView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let b = &app.bundles;
        let visible = b.visible();
        let Some(inner) = list_frame(
            area,
            buf,
            "Bundles",
            (b.items.len(), visible.len()),
            &b.filter,
            "no bundles: pack and push one (just pack DIR; just push FILE)",
        ) else {
            return;
        };
        let height = inner.height.saturating_sub(1) as usize;
        let start = b.scroll.window(height, visible.len());
        let wide = inner.width >= 110;
        let rows: Vec<Row> = visible
            .iter()
            .enumerate()
            .skip(start)
            .take(height)
            .map(|(i, x)| {
                let sum = if wide {
                    x.checksum_sha256.clone()
                } else {
                    x.checksum_sha256.chars().take(12).collect()
                };
                let row = Row::new(vec![
                    Cell::from(format!(
                        "{}{}",
                        if i == b.scroll.selected { "▶ " } else { "  " },
                        x.version
                    )),
                    Cell::from(x.name.clone()),
                    Cell::from(bytes(x.size_bytes)),
                    Cell::from(sum),
                    Cell::from(x.created_at.format("%Y-%m-%d %H:%M").to_string()),
                    Cell::from(x.manifest.description.clone().unwrap_or_default()),
                ]);
                if i == b.scroll.selected {
                    row.style(selected())
                } else {
                    row
                }
            })
            .collect();
        Table::new(
            rows,
            [
                Constraint::Length(18),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(if wide { 64 } else { 12 }),
                Constraint::Length(16),
                Constraint::Min(0),
            ],
        )
        .header(
            Row::new([
                "  VERSION",
                "NAME",
                "SIZE",
                "SHA256",
                "CREATED",
                "DESCRIPTION",
            ])
            .style(Style::new().fg(Color::Yellow).bold()),
        )
        .render(inner, buf);
    }
}
