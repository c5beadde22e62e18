//! Drawing. Each screen is a widget over `&App`; `draw` lays out the frame: header, the
//! current view, the events pane, a status line and the footer of live key bindings.
//! Everything fits 80×24.

mod bundles; // bundle list
mod deployments; // deployments with gauges and per-device rows
mod details; // the failure drill-down
mod device; // one device: sparklines, history, config
mod dialogs; // pickers, config form, confirmation
mod fleet; // the device table
mod footer; // keys that apply, from the keymap
mod help; // every binding
pub mod text; // device text made safe, wrapped and fitted

use chrono::{DateTime, Utc};
use kernex_common::api::{Admission, DeploymentStatus, DeviceSummary, OnlineStatus, TargetStatus};
use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

use crate::action::View;
use crate::app::{App, Link, Mode};

/// Rows of the events pane for a terminal `height` rows high.
fn events_height(height: u16) -> u16 {
    if height >= 32 { 7 } else { 3 }
}

/// Table rows visible in the body (page size for PgUp/PgDn).
pub fn body_rows(height: u16) -> usize {
    // header 1, status 1, footer 1, events, body borders 2, table header 1.
    height.saturating_sub(1 + 1 + 1 + events_height(height) + 3) as usize
}

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let [header, body, events, status, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(events_height(area.height)),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let buf = f.buffer_mut();
    Header(app).render(header, buf);
    match app.view {
        View::Fleet => fleet::FleetView(app).render(body, buf),
        View::Device => device::DeviceView(app).render(body, buf),
        View::Deployments => deployments::DeploymentsView(app).render(body, buf),
        View::Bundles => bundles::BundlesView(app).render(body, buf),
    }
    EventsPane(app).render(events, buf);
    StatusLine(app).render(status, buf);
    footer::Footer(app).render(footer, buf);
    match &app.mode {
        // Panels of text take the events pane's rows too: every line counts at 80×24.
        Mode::Help(pager) => help::Help(app, pager).render(body.union(events), buf),
        Mode::Details(d) => details::DetailsView(app, d).render(body.union(events), buf),
        Mode::Dialog(d) => dialogs::DialogView(d).render(body, buf),
        _ => {}
    }
}

struct Header<'a>(&'a App);

impl Widget for Header<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let mut spans = vec![
            Span::styled(" kernex ", Style::new().bold().reversed()),
            Span::raw(" "),
        ];
        for v in View::ALL {
            if v == View::Device && app.device.is_none() {
                continue;
            }
            let style = if v == app.view {
                Style::new()
                    .bold()
                    .fg(Color::Cyan)
                    .add_modifier(Modifier::UNDERLINED)
            } else {
                Style::new().fg(Color::Gray)
            };
            spans.push(Span::styled(v.title(), style));
            spans.push(Span::raw("  "));
        }
        let left = Line::from(spans);
        let room = (area.width as usize).saturating_sub(left.width() + 1);
        left.render(area, buf);
        // The longest telling that fits: link and URL, the link, its short form.
        let (long, short) = link_spans(app);
        let url = Span::styled(format!(" {}", app.server), Style::new().fg(Color::DarkGray));
        let right = [
            Line::from(vec![long.clone(), url]),
            Line::from(long),
            Line::from(short),
        ]
        .into_iter()
        .find(|l| l.width() <= room)
        .unwrap_or_else(|| Line::from(link_spans(app).1));
        let w = right.width() as u16;
        right.render(
            Rect {
                x: area.right().saturating_sub(w + 1),
                width: (w + 1).min(area.width),
                ..area
            },
            buf,
        );
    }
}

/// The link state, long and short. While the server is lost the fleet is stale: say
/// since when.
fn link_spans(app: &App) -> (Span<'static>, Span<'static>) {
    let since = app
        .fleet
        .stale_since
        .map(|t| t.format("%H:%M:%S").to_string());
    let warn = Style::new().fg(Color::Black).bg(Color::Yellow).bold();
    let both = |long: String, short: String, style: Style| {
        (Span::styled(long, style), Span::styled(short, style))
    };
    match (&app.link, since) {
        (Link::Connecting, _) => both(
            "◌ connecting".into(),
            "◌ connecting".into(),
            Style::new().fg(Color::Yellow),
        ),
        (Link::Live, None) => both(
            "● live".into(),
            "● live".into(),
            Style::new().fg(Color::Green).bold(),
        ),
        (Link::Live, Some(t)) if app.loading_devices => both(
            format!("● live — re-reading, stale since {t}"),
            "● live — re-reading".into(),
            Style::new().fg(Color::Green).bold(),
        ),
        // Connected, but the server has gone quiet (not even a keep-alive).
        (Link::Live, Some(t)) => both(
            format!("◌ server silent — stale since {t}"),
            format!("◌ stale since {t}"),
            warn,
        ),
        (Link::Reconnecting { .. }, Some(t)) => both(
            format!("◌ reconnecting — stale since {t}"),
            format!("◌ stale since {t}"),
            warn,
        ),
        (Link::Reconnecting { .. }, None) => {
            both("◌ reconnecting".into(), "◌ reconnecting".into(), warn)
        }
        (Link::Refused { .. }, since) => {
            let style = Style::new().fg(Color::White).bg(Color::Red).bold();
            let long = match since {
                Some(t) => format!("✗ token refused — stale since {t}"),
                None => "✗ token refused".into(),
            };
            both(long, "✗ token refused".into(), style)
        }
    }
}

struct EventsPane<'a>(&'a App);

impl Widget for EventsPane<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let block = Block::new()
            .borders(Borders::TOP)
            .title(" events ")
            .border_style(Style::new().fg(Color::DarkGray));
        let inner = block.inner(area);
        block.render(area, buf);
        let mut lines: Vec<Line> = Vec::new();
        match &app.link {
            Link::Reconnecting { error, attempt } => lines.push(Line::styled(
                format!("server unreachable (try {attempt}): {error}; retrying…"),
                Style::new().fg(Color::Yellow),
            )),
            Link::Refused { error } => lines.push(Line::styled(
                format!("{error}; retrying every 10 s"),
                Style::new().fg(Color::Red),
            )),
            _ => {}
        }
        let room = (inner.height as usize).saturating_sub(lines.len());
        let start = app.events.len().saturating_sub(room);
        for (at, text) in app.events.iter().skip(start) {
            lines.push(Line::from(vec![
                Span::styled(
                    at.format("%H:%M:%S ").to_string(),
                    Style::new().fg(Color::DarkGray),
                ),
                Span::raw(text.clone()),
            ]));
        }
        if lines.is_empty() {
            lines.push(Line::styled(
                "waiting for events…",
                Style::new().fg(Color::DarkGray),
            ));
        }
        Paragraph::new(lines).render(inner, buf);
    }
}

struct StatusLine<'a>(&'a App);

impl Widget for StatusLine<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let line = match &app.mode {
            Mode::Filter { fresh } => {
                let f = match app.view {
                    View::Fleet => &app.fleet.filter,
                    View::Deployments => &app.deployments.filter,
                    _ => &app.bundles.filter,
                };
                // The old filter shows selected: typing replaces it, Enter keeps it.
                let text = if *fresh {
                    Span::styled(f.clone(), Style::new().reversed())
                } else {
                    Span::raw(f.clone())
                };
                let hint = if *fresh && !f.is_empty() {
                    "   type to replace · Enter keep · Esc clear"
                } else {
                    "   Enter keep · Esc clear"
                };
                Line::from(vec![
                    Span::styled("/", Style::new().fg(Color::Cyan).bold()),
                    text,
                    Span::styled("█", Style::new().fg(Color::Cyan)),
                    Span::styled(hint, Style::new().fg(Color::DarkGray)),
                ])
            }
            Mode::Command(input) => Line::from(vec![
                Span::styled(":", Style::new().fg(Color::Cyan).bold()),
                Span::raw(input.clone()),
                Span::styled("█", Style::new().fg(Color::Cyan)),
                Span::styled(
                    "   fleet · device ID · deployments · bundles · refresh · quit",
                    Style::new().fg(Color::DarkGray),
                ),
            ]),
            _ => match &app.flash {
                Some(f) if f.error => {
                    Line::styled(format!("✗ {}", f.text), Style::new().fg(Color::Red).bold())
                }
                Some(f) => Line::styled(format!("✓ {}", f.text), Style::new().fg(Color::Green)),
                None => Line::default(),
            },
        };
        line.render(area, buf);
    }
}

// ---------------------------------------------------------------- shared formatting

/// A device's STATUS cell. `stale`: the console has lost the server, so what it knows
/// is the last known state, not the device's: never "offline" for that.
pub(crate) fn status_style(d: &DeviceSummary, stale: bool) -> (String, Style) {
    if stale {
        return ("stale".into(), Style::new().fg(Color::DarkGray));
    }
    match (d.admission, d.status) {
        (Admission::Pending, _) => ("pending".into(), Style::new().fg(Color::Yellow).bold()),
        (Admission::Rejected, _) => ("rejected".into(), Style::new().fg(Color::DarkGray)),
        (_, OnlineStatus::Online) => ("online".into(), Style::new().fg(Color::Green)),
        (_, OnlineStatus::Offline) => ("offline".into(), Style::new().fg(Color::Red)),
        (_, OnlineStatus::Never) => ("never".into(), Style::new().fg(Color::DarkGray)),
    }
}

pub(crate) fn target_style(s: TargetStatus) -> Style {
    match s {
        TargetStatus::Waiting => Style::new().fg(Color::DarkGray),
        TargetStatus::Pending => Style::new().fg(Color::Gray),
        TargetStatus::InProgress => Style::new().fg(Color::Cyan),
        TargetStatus::Success => Style::new().fg(Color::Green),
        TargetStatus::Failed | TargetStatus::TimedOut => Style::new().fg(Color::Red).bold(),
        TargetStatus::Cancelled => Style::new().fg(Color::DarkGray),
    }
}

pub(crate) fn deployment_style(s: DeploymentStatus) -> Style {
    match s {
        DeploymentStatus::Scheduled | DeploymentStatus::Pending => Style::new().fg(Color::Gray),
        DeploymentStatus::InProgress => Style::new().fg(Color::Cyan),
        DeploymentStatus::Paused => Style::new().fg(Color::Yellow).bold(),
        DeploymentStatus::Success => Style::new().fg(Color::Green),
        DeploymentStatus::Failed => Style::new().fg(Color::Red).bold(),
        DeploymentStatus::Cancelled => Style::new().fg(Color::DarkGray),
    }
}

/// "4s", "12m", "3h", "5d" since `t`; "-" for never.
pub(crate) fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| crate::fmt::age(t, now))
}

/// An id cut to `width`, keeping its end: device ids are time-ordered UUIDs whose
/// beginnings are shared by devices registered together.
pub(crate) fn short_id(id: &str, width: usize) -> String {
    if id.chars().count() <= width || width < 2 {
        return id.to_owned();
    }
    let tail: String = id.chars().skip(id.chars().count() - (width - 1)).collect();
    format!("…{tail}")
}

/// Block for a view's body.
pub(crate) fn body_block(title: Line<'static>) -> Block<'static> {
    Block::new()
        .borders(Borders::ALL)
        .border_style(Style::new().fg(Color::DarkGray))
        .title(title)
}

/// The frame of a filtered list view: title with the count (and the filter with how many
/// rows match), and the `empty` hint when nothing shows. The area inside, if there are
/// rows to draw.
pub(crate) fn list_frame(
    area: Rect,
    buf: &mut Buffer,
    name: &str,
    (total, shown): (usize, usize),
    filter: &str,
    empty: &str,
) -> Option<Rect> {
    let mut title = vec![
        Span::styled(format!(" {name} "), Style::new().bold()),
        Span::raw(format!("{total} ")),
    ];
    if !filter.is_empty() {
        title.push(Span::styled(
            format!("/{filter} ({shown}) "),
            Style::new().fg(Color::Cyan),
        ));
    }
    let block = body_block(Line::from(title));
    let inner = block.inner(area);
    block.render(area, buf);
    if shown == 0 {
        Paragraph::new(empty.to_owned())
            .style(Style::new().fg(Color::DarkGray))
            .render(inner, buf);
        return None;
    }
    Some(inner)
}

/// Selected-row style.
pub(crate) fn selected() -> Style {
    Style::new().bg(Color::DarkGray).fg(Color::White).bold()
}
