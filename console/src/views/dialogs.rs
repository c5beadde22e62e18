//! The modal steps of deploy, rollback, config and confirmation, drawn centred over the
//! body.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

use crate::app::dialog::{CONFIG_FIELDS, Dialog, TargetOption, devices, marked};
use crate::fmt::bytes;

pub struct DialogView<'a>(pub &'a Dialog);

fn centred(area: Rect, width: u16, height: u16) -> Rect {
    let [v] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [h] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(v);
    h
}

fn pick(selected: bool, text: String) -> Line<'static> {
    if selected {
        Line::from(Span::styled(
            format!("▶ {text}"),
            Style::new().fg(Color::Black).bg(Color::Cyan).bold(),
        ))
    } else {
        Line::from(format!("  {text}"))
    }
}

impl Widget for DialogView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let (title, lines, danger): (String, Vec<Line>, bool) =
            match self.0 {
                Dialog::PickBundle(p) => {
                    let mut lines = vec![Line::styled("Which bundle?", Style::new().bold())];
                    // Keep the selection in view in a small terminal.
                    let room = area.height.saturating_sub(4) as usize;
                    let start = p.selected.saturating_sub(room.saturating_sub(1));
                    lines.extend(p.bundles.iter().enumerate().skip(start).take(room).map(
                        |(i, b)| {
                            // ✗ and how many: a bundle that failed somewhere stands out.
                            let failed = match b.failed {
                                0 => String::new(),
                                n => format!("  ✗ failed on {}", devices(n)),
                            };
                            pick(
                                i == p.selected,
                                format!(
                                    "{:<16} {:<12} {:>10}{failed}",
                                    b.version,
                                    b.name,
                                    bytes(b.size_bytes)
                                ),
                            )
                        },
                    ));
                    ("Deploy 1/3: bundle".into(), lines, false)
                }
                Dialog::PickTargets(t) => {
                    let mut lines = vec![Line::styled(
                        format!("Deploy {} to…", t.version),
                        Style::new().bold(),
                    )];
                    if t.failed > 0 {
                        lines.push(Line::styled(
                            format!("✗ it failed on {} already", devices(t.failed)),
                            Style::new().fg(Color::Red).bold(),
                        ));
                    }
                    for (i, o) in t.options.iter().enumerate() {
                        let text = match o {
                            TargetOption::Marked(ids) => {
                                format!("the {}", marked(ids.len()))
                            }
                            TargetOption::Device(id) => format!("device {id}"),
                            TargetOption::Tag => format!(
                                "devices tagged: {}{}",
                                t.tag,
                                if t.on_tag() { "█" } else { "" }
                            ),
                        };
                        lines.push(pick(i == t.selected, text));
                    }
                    if t.on_tag() {
                        let n = t
                            .choices
                            .tag_counts
                            .iter()
                            .find(|(tag, _)| *tag == t.tag.trim())
                            .map(|(_, n)| *n);
                        let hint = match n {
                            Some(n) => format!("  {n} accepted device(s) carry this tag"),
                            None if !t.choices.tag_counts.is_empty() => format!(
                                "  tags: {}",
                                t.choices
                                    .tag_counts
                                    .iter()
                                    .map(|(t, n)| format!("{t}({n})"))
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            ),
                            None => "  (no device has a tag yet)".into(),
                        };
                        lines.push(Line::styled(hint, Style::new().fg(Color::DarkGray)));
                    }
                    if let Some(e) = &t.error {
                        lines.push(Line::styled(e.clone(), Style::new().fg(Color::Red)));
                    }
                    ("Deploy 2/3: targets".into(), lines, false)
                }
                Dialog::PickRollback(r) => {
                    let mut lines = vec![Line::styled(
                        format!("Roll back {} to…", r.device_id),
                        Style::new().bold(),
                    )];
                    match &r.versions {
                        None => lines.push(Line::styled(
                            "reading its history…",
                            Style::new().fg(Color::DarkGray),
                        )),
                        Some(v) => lines.extend(
                            v.iter()
                                .enumerate()
                                .map(|(i, v)| pick(i == r.selected, v.clone())),
                        ),
                    }
                    lines.push(Line::styled(
                        "versions it ran successfully, newest first",
                        Style::new().fg(Color::DarkGray),
                    ));
                    ("Rollback 1/2: version".into(), lines, false)
                }
                Dialog::Config(c) => {
                    let mut lines = vec![Line::styled(
                        match &c.current {
                            Some(cur) => format!("Config of {} (v{})", c.device_id, cur.version),
                            None => format!("Config of {}", c.device_id),
                        },
                        Style::new().bold(),
                    )];
                    if c.current.is_none() {
                        lines.push(Line::styled(
                            "reading the current config…",
                            Style::new().fg(Color::DarkGray),
                        ));
                    } else {
                        let hints = [
                            "5-86400 s",
                            "1-300 s",
                            "1-86400 s",
                            "←→ trace…error",
                            "JSON object",
                        ];
                        for (i, name) in CONFIG_FIELDS.iter().enumerate() {
                            let sel = i == c.field;
                            let value = format!("{}{}", c.values[i], if sel { "█" } else { "" });
                            let style = if sel {
                                Style::new().fg(Color::Cyan).bold()
                            } else {
                                Style::new()
                            };
                            lines.push(Line::from(vec![
                                Span::styled(
                                    format!("{}{name:<18}", if sel { "▶ " } else { "  " }),
                                    style,
                                ),
                                Span::styled(value, style),
                                Span::styled(
                                    format!("  {}", hints[i]),
                                    Style::new().fg(Color::DarkGray),
                                ),
                            ]));
                            if let Some(e) = &c.errors[i] {
                                lines.push(Line::styled(
                                    format!("    ✗ {e}"),
                                    Style::new().fg(Color::Red),
                                ));
                            }
                        }
                        if let Some(m) = &c.message {
                            lines.push(Line::styled(m.clone(), Style::new().fg(Color::Yellow)));
                        }
                    }
                    ("Edit config".into(), lines, false)
                }
                Dialog::Confirm(c) => {
                    let mut lines: Vec<Line> =
                        c.body.iter().map(|l| Line::from(l.clone())).collect();
                    if let Some(r) = &c.rollout {
                        lines.extend(
                            r.line()
                                .map(|l| Line::styled(l, Style::new().fg(Color::Cyan))),
                        );
                        lines.extend(
                            r.error.as_ref().map(|e| {
                                Line::styled(format!("  {e}"), Style::new().fg(Color::Red))
                            }),
                        );
                    }
                    lines.push(Line::default());
                    lines.push(Line::from(vec![
                        Span::styled(" y ", Style::new().fg(Color::Black).bg(Color::Red).bold()),
                        Span::raw(" yes   "),
                        Span::styled(" n ", Style::new().fg(Color::Black).bg(Color::Gray).bold()),
                        Span::raw(" no"),
                    ]));
                    (format!("{}: are you sure?", c.title), lines, true)
                }
            };
        let width = lines
            .iter()
            .map(|l| l.width() as u16)
            .max()
            .unwrap_or(20)
            .max(title.len() as u16 + 4)
            + 4;
        let rect = centred(area, width.min(area.width), lines.len() as u16 + 2);
        Clear.render(rect, buf);
        let color = if danger { Color::Red } else { Color::Cyan };
        Paragraph::new(lines)
            .block(
                Block::new()
                    .borders(Borders::ALL)
                    .border_style(Style::new().fg(color))
                    .title(format!(" {title} ")),
            )
            .render(rect, buf);
    }
}
