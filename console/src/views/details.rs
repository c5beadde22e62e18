//! The failure drill-down: a target's or history record's facts, its whole error and the
//! log tail the device sent, wrapped to the width (never cut) and scrollable.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

use super::text::{clean, ellipsize, wrap};
use crate::app::App;
use crate::app::details::{Details, Report, Subject};

pub struct DetailsView<'a>(pub &'a App, pub &'a Details);

/// Columns the labels take.
const LABEL: usize = 11;

impl Widget for DetailsView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let (app, details) = (self.0, self.1);
        Clear.render(area, buf);
        let report = app.report(&details.subject);
        let block = Block::new()
            .borders(Borders::ALL)
            .border_style(Style::new().fg(Color::Cyan));
        let inner = block.inner(area);
        let lines = match &report {
            Some(r) => report_lines(r, inner.width as usize),
            None => vec![Line::styled(
                match &details.subject {
                    Subject::Target { deployment, .. } if app.reading_deployment(deployment) => {
                        "reading it from the server…"
                    }
                    _ => "no longer known here (R re-reads everything)",
                },
                Style::new().fg(Color::DarkGray),
            )],
        };
        let height = inner.height as usize;
        let top = details.pager.fit(lines.len().saturating_sub(height));
        let title = report.as_ref().map_or("details", |r| r.title.as_str());
        let room = (area.width as usize).saturating_sub(4);
        let shown = if lines.len() > height {
            format!(
                " {}–{} of {} · ↑↓ PgUp PgDn · Esc closes ",
                top + 1,
                (top + height).min(lines.len()),
                lines.len()
            )
        } else {
            " Esc closes ".to_owned()
        };
        block
            .title(format!(" {} ", ellipsize(title, room.saturating_sub(2))))
            .title_bottom(Line::from(shown).right_aligned())
            .render(area, buf);
        let visible: Vec<Line> = lines.into_iter().skip(top).take(height).collect();
        Paragraph::new(visible).render(inner, buf);
    }
}

fn heading(text: &'static str, style: Style) -> Line<'static> {
    Line::styled(text, style.bold())
}

/// Every line of the report at `width` cells: facts, the error, the log.
fn report_lines(r: &Report, width: usize) -> Vec<Line<'static>> {
    let label = Style::new().fg(Color::DarkGray);
    let mut out = Vec::new();
    for (name, value) in &r.facts {
        for (i, part) in wrap(&clean(value), width.saturating_sub(LABEL), 0)
            .into_iter()
            .enumerate()
        {
            let name = if i == 0 { *name } else { "" };
            out.push(Line::from(vec![
                Span::styled(format!("{name:<LABEL$}"), label),
                Span::raw(part),
            ]));
        }
    }
    let (err_style, body) = if r.failed {
        (Style::new().fg(Color::Red), Style::new().fg(Color::Red))
    } else {
        (Style::new().fg(Color::Yellow), Style::new())
    };
    if let Some(e) = r.error.as_deref().filter(|e| !e.trim().is_empty()) {
        out.push(Line::default());
        out.push(heading("error", err_style));
        push_text(&mut out, e, width, body);
    }
    match r.log.as_deref().filter(|l| !l.trim().is_empty()) {
        Some(log) => {
            out.push(Line::default());
            out.push(heading(
                "log (the end of what its scripts printed)",
                Style::new().fg(Color::Yellow),
            ));
            push_text(&mut out, log, width, Style::new());
        }
        None if r.error.is_none() => {
            out.push(Line::default());
            out.push(Line::styled(
                "the device reported no error and no log",
                label,
            ));
        }
        None => {}
    }
    out
}

/// `text`'s lines, cleaned, indented by two and wrapped (continuations by four).
fn push_text(out: &mut Vec<Line<'static>>, text: &str, width: usize, style: Style) {
    let text = clean(text);
    for line in text.trim_end().lines() {
        for part in wrap(&format!("  {line}"), width, 4) {
            out.push(Line::styled(part, style));
        }
    }
}
