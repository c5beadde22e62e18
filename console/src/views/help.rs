//! `?`: every key binding, generated from the keymap.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Borders, Clear, Row, Table, Widget};

use crate::app::App;

pub struct Help<'a>(pub &'a App);

impl Widget for Help<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        Clear.render(area, buf);
        let rows: Vec<Row> = self
            .0
            .keymap
            .help()
            .into_iter()
            .map(|(keys, help, views)| Row::new(vec![keys, help.to_owned(), views]))
            .collect();
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Min(30),
                Constraint::Length(22),
            ],
        )
        .header(Row::new(["KEYS", "", "WHERE"]).style(Style::new().fg(Color::Yellow).bold()))
        .block(
            Block::new()
                .borders(Borders::ALL)
                .border_style(Style::new().fg(Color::Cyan))
                .title(" help: keys (Esc closes) "),
        )
        .render(area, buf);
    }
}
