//! `?`: every key binding, generated from the keymap and grouped by where it applies,
//! wrapped to the width and scrollable, so a small terminal loses none of it.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

use super::text::wrap;
use crate::app::App;
use crate::app::details::Pager;

pub struct Help<'a>(pub &'a App, pub &'a Pager);

/// Columns the keys take.
const KEYS: usize = 13;

/// Keys of the dialogs and panels, which the keymap does not hold.
const IN_DIALOGS: [(&str, &str); 5] = [
    ("↑↓ j k", "choose / scroll"),
    ("PgUp PgDn", "scroll a page (help, details)"),
    ("Enter", "next step / keep the filter"),
    ("y n", "answer a confirmation"),
    ("Esc q", "close / cancel"),
];

impl Widget for Help<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        Clear.render(area, buf);
        let block = Block::new()
            .borders(Borders::ALL)
            .border_style(Style::new().fg(Color::Cyan));
        let inner = block.inner(area);
        let lines = help_lines(self.0, inner.width as usize);
        let height = inner.height as usize;
        let top = self.1.fit(lines.len().saturating_sub(height));
        let position = if lines.len() > height {
            format!(
                " {}–{} of {} · ↑↓ PgUp PgDn ",
                top + 1,
                (top + height).min(lines.len()),
                lines.len()
            )
        } else {
            String::new()
        };
        block
            .title(" help: keys (Esc ? q close) ")
            .title_bottom(Line::from(position).right_aligned())
            .render(area, buf);
        let visible: Vec<Line> = lines.into_iter().skip(top).take(height).collect();
        Paragraph::new(visible).render(inner, buf);
    }
}

/// Every binding, under a heading per set of views, then the dialog keys.
fn help_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let mut groups: Vec<(String, Vec<(String, &'static str)>)> = Vec::new();
    for (keys, help, views) in app.keymap.help() {
        let views = if views == "all" {
            "everywhere".to_owned()
        } else {
            views
        };
        match groups.iter_mut().find(|(v, _)| *v == views) {
            Some((_, rows)) => rows.push((keys, help)),
            None => groups.push((views, vec![(keys, help)])),
        }
    }
    // Where keys apply everywhere, they come first: they are the ones to learn.
    groups.sort_by_key(|(v, _)| v != "everywhere");
    let dialogs = IN_DIALOGS
        .iter()
        .map(|(k, h)| ((*k).to_owned(), *h))
        .collect();
    groups.push(("in dialogs and panels".to_owned(), dialogs));
    let heading = Style::new().fg(Color::Yellow).bold();
    let mut out = Vec::new();
    for (views, rows) in groups {
        out.push(Line::styled(views, heading));
        for (keys, help) in rows {
            let text = wrap(help, width.saturating_sub(KEYS), 0);
            for (i, part) in text.into_iter().enumerate() {
                let keys = if i == 0 { keys.as_str() } else { "" };
                out.push(Line::from(vec![
                    Span::styled(format!(" {keys:<w$}", w = KEYS - 1), Style::new().bold()),
                    Span::raw(part),
                ]));
            }
        }
    }
    out
}
