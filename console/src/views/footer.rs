//! The footer: the keys that apply right now, taken from the live keymap (or the keys of
//! the open dialog / input).

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Widget;

use crate::app::dialog::Dialog;
use crate::app::{App, Mode};

pub struct Footer<'a>(pub &'a App);

impl Widget for Footer<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let pairs: Vec<(String, &str)> = match &app.mode {
            Mode::Normal => app
                .keymap
                .footer(app.view)
                .into_iter()
                .filter(|(_, _, action)| app.applies(action))
                .map(|(k, l, _)| (k, l))
                .collect(),
            Mode::Help(_) | Mode::Details(_) => vec![
                ("↑↓".into(), "scroll"),
                ("PgUp PgDn".into(), "page"),
                ("Esc".into(), "close"),
                ("q".into(), "close"),
            ],
            Mode::Filter { .. } => vec![
                ("Enter".into(), "keep filter"),
                ("Esc".into(), "clear"),
                ("↑↓".into(), "move"),
            ],
            Mode::Command(_) => vec![("Enter".into(), "run"), ("Esc".into(), "cancel")],
            Mode::Dialog(d) => match d {
                Dialog::Confirm(c) if c.rollout.is_some() => vec![
                    ("y".into(), "yes"),
                    ("n".into(), "no"),
                    ("w".into(), "rollout preset"),
                    ("Esc".into(), "cancel"),
                ],
                Dialog::Confirm(_) => vec![
                    ("y".into(), "yes"),
                    ("n".into(), "no"),
                    ("Esc".into(), "cancel"),
                ],
                Dialog::Config(_) => vec![
                    ("↑↓".into(), "field"),
                    ("←→".into(), "log level"),
                    ("Enter".into(), "save"),
                    ("Esc".into(), "cancel"),
                ],
                Dialog::PickTargets(t) if t.on_tag() => {
                    vec![
                        ("type".into(), "tag"),
                        ("↑↓".into(), "choose"),
                        ("Enter".into(), "next"),
                        ("Esc".into(), "cancel"),
                    ]
                }
                _ => vec![
                    ("↑↓".into(), "choose"),
                    ("Enter".into(), "next"),
                    ("Esc".into(), "cancel"),
                ],
            },
        };
        // When not everything fits, the last pairs (help and quit) stay: `?` lists the rest.
        let cost = |(k, l): &(String, &str)| k.chars().count() + l.chars().count() + 3;
        let mut pairs = pairs;
        let keep_tail = if matches!(app.mode, Mode::Normal) {
            2
        } else {
            0
        };
        while pairs.len() > keep_tail && pairs.iter().map(cost).sum::<usize>() > area.width as usize
        {
            let drop = pairs.len().saturating_sub(keep_tail + 1);
            pairs.remove(drop);
        }
        let mut spans = Vec::new();
        for (key, label) in pairs {
            spans.push(Span::styled(
                format!(" {key}"),
                Style::new().fg(Color::Black).bg(Color::Cyan).bold(),
            ));
            spans.push(Span::styled(
                format!(" {label}"),
                Style::new().fg(Color::Gray),
            ));
            spans.push(Span::raw(" "));
        }
        Line::from(spans).render(area, buf);
    }
}
