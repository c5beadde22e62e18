//! The Fleet: one row per device. Only the rows on screen are built, so the cost of a
//! frame does not grow with the fleet. Columns are sized to what the visible rows hold;
//! when they do not all fit, the least useful at 2 a.m. go first (admission, agent,
//! memory, CPU, type) and TAGS takes what is left.

use kernex_common::api::{DeviceSummary, LastDeployment, ResultStatus};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Widget};

use super::text::width;
use super::{ago, body_block, selected, short_id, status_style};
use crate::app::App;

pub struct FleetView<'a>(pub &'a App);

/// `1.1.0 ✓`, `1.2.0 ✗`, `1.2.0 ✗→1.1.0` (it failed and went back to 1.1.0).
pub fn last_deploy(l: Option<&LastDeployment>) -> String {
    match l {
        None => "-".into(),
        Some(l) => match (l.status, &l.rolled_back_to) {
            (ResultStatus::Success, _) => format!("{} ✓", l.bundle_version),
            (ResultStatus::Failed, Some(v)) => format!("{} ✗→{v}", l.bundle_version),
            (ResultStatus::Failed, None) => format!("{} ✗", l.bundle_version),
        },
    }
}

fn failed(d: &DeviceSummary) -> bool {
    d.last_deployment
        .as_ref()
        .is_some_and(|l| l.status == ResultStatus::Failed)
}

/// One column: its header, width, and when it is dropped for room (0: never; higher
/// goes first).
struct Col {
    header: &'static str,
    width: usize,
    drop: u8,
}

/// The columns, each with its cell for one device.
type Cells<'a> = Vec<(Col, Box<dyn Fn(&DeviceSummary) -> Cell<'static> + 'a>)>;

impl Widget for FleetView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let app = self.0;
        let fleet = &app.fleet;
        let block = body_block(title(app));
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
        let height = inner.height.saturating_sub(1) as usize;
        let start = fleet.scroll.window(height, fleet.visible_len());
        let shown: Vec<&DeviceSummary> = fleet.window(start, height).collect();
        let mut cols = columns(app, &shown, inner.width);
        // The sort column's header carries ▾ (▴ reversed): one more cell for it.
        for (c, _) in cols.iter_mut() {
            if c.header == fleet.sort.column() {
                c.width += 1;
            }
        }
        fit(&mut cols, inner.width as usize);
        let rows: Vec<Row> = shown
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let here = start + i == fleet.scroll.selected;
                let mut cells = vec![lead(here, fleet.marked.contains(&d.device_id), failed(d))];
                cells.extend(cols.iter().map(|(_, cell)| cell(d)));
                let row = Row::new(cells);
                if here { row.style(selected()) } else { row }
            })
            .collect();
        let mut header = vec![String::new()];
        let mut widths = vec![Constraint::Length(3)];
        let marker = if fleet.reversed { "▴" } else { "▾" };
        for (c, _) in &cols {
            let sorted = c.header == fleet.sort.column();
            header.push(if sorted {
                format!("{}{marker}", c.header)
            } else {
                c.header.to_owned()
            });
            widths.push(Constraint::Length(c.width as u16));
        }
        Table::new(rows, widths)
            .header(Row::new(header).style(Style::new().fg(Color::Yellow).bold()))
            .column_spacing(1)
            .render(inner, buf);
    }
}

fn title(app: &App) -> Line<'static> {
    let fleet = &app.fleet;
    let online = if fleet.stale_since.is_some() {
        format!("{} online when last heard ", fleet.online())
    } else {
        format!("{} online ", fleet.online())
    };
    let mut title = vec![
        Span::styled(" Fleet ", Style::new().bold()),
        Span::raw(format!("{} devices, {online}", fleet.len())),
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
        format!(
            "sort:{}{} ",
            fleet.sort.name(),
            if fleet.reversed { " reversed" } else { "" }
        ),
        Style::new().fg(Color::DarkGray),
    ));
    Line::from(title)
}

/// The first cell: cursor, mark, and ✗ when the newest deployment failed (a marker that
/// needs no colour).
fn lead(here: bool, marked: bool, failed: bool) -> Cell<'static> {
    let pick = |on: bool, c: &'static str| if on { c } else { " " };
    Cell::from(Line::from(vec![
        Span::styled(pick(here, "▶"), Style::new().fg(Color::Magenta).bold()),
        Span::styled(pick(marked, "●"), Style::new().fg(Color::Magenta).bold()),
        Span::styled(pick(failed, "✗"), Style::new().fg(Color::Red).bold()),
    ]))
}

/// Widest of `header` and the shown rows' `text`, capped.
fn widest(
    shown: &[&DeviceSummary],
    header: &str,
    cap: usize,
    text: impl Fn(&DeviceSummary) -> String,
) -> usize {
    shown
        .iter()
        .map(|d| width(&text(d)))
        .chain([header.len()])
        .max()
        .unwrap_or(0)
        .min(cap)
}

fn columns<'a>(app: &'a App, shown: &[&DeviceSummary], area_w: u16) -> Cells<'a> {
    let now = app.now();
    let stale = app.fleet.stale_since.is_some();
    let id_w = if area_w >= 118 { 32 } else { 12 };
    let version = |d: &DeviceSummary| {
        d.current_bundle_version
            .clone()
            .unwrap_or_else(|| "-".into())
    };
    let agent = |d: &DeviceSummary| d.agent_status.clone().unwrap_or_default();
    let col = |header, width, drop| Col {
        header,
        width,
        drop,
    };
    vec![
        (
            col("ID", id_w, 0),
            Box::new(move |d: &DeviceSummary| Cell::from(short_id(&d.device_id, id_w))),
        ),
        (
            col(
                "TYPE",
                widest(shown, "TYPE", 14, |d| d.device_type.clone()),
                3,
            ),
            Box::new(|d: &DeviceSummary| Cell::from(d.device_type.clone())),
        ),
        (
            col("ADMISSION", 9, 7),
            Box::new(|d: &DeviceSummary| Cell::from(d.admission.as_str())),
        ),
        (
            col("STATUS", 8, 0),
            Box::new(move |d: &DeviceSummary| {
                let (text, style) = status_style(d, stale);
                Cell::from(Span::styled(text, style))
            }),
        ),
        (
            col("VERSION", widest(shown, "VERSION", 16, version), 0),
            Box::new(move |d: &DeviceSummary| Cell::from(version(d))),
        ),
        (
            col(
                "LAST DEPLOY",
                widest(shown, "LAST DEPLOY", 24, |d| {
                    last_deploy(d.last_deployment.as_ref())
                }),
                0,
            ),
            Box::new(last_deploy_cell),
        ),
        (col("CPU", 5, 4), Box::new(cpu_cell)),
        (col("MEM", 6, 5), Box::new(mem_cell)),
        (
            col("SEEN", 4, 0),
            Box::new(move |d: &DeviceSummary| Cell::from(ago(d.last_heartbeat, now))),
        ),
        (
            col("TAGS", widest(shown, "TAGS", 200, |d| d.tags.join(",")), 0),
            Box::new(|d: &DeviceSummary| Cell::from(d.tags.join(","))),
        ),
        (
            col("AGENT", widest(shown, "AGENT", 20, agent), 6),
            Box::new(move |d: &DeviceSummary| Cell::from(agent(d))),
        ),
    ]
}

fn last_deploy_cell(d: &DeviceSummary) -> Cell<'static> {
    let style = match &d.last_deployment {
        Some(l) if l.status == ResultStatus::Failed => Style::new().fg(Color::Red).bold(),
        Some(_) => Style::new().fg(Color::Green),
        None => Style::new(),
    };
    Cell::from(Span::styled(last_deploy(d.last_deployment.as_ref()), style))
}

fn cpu_cell(d: &DeviceSummary) -> Cell<'static> {
    Cell::from(
        d.cpu_pct
            .map_or_else(|| "    -".into(), |c| format!("{c:>4.0}%")),
    )
}

fn mem_cell(d: &DeviceSummary) -> Cell<'static> {
    Cell::from(
        d.memory_mb
            .map_or_else(|| "     -".into(), |m| format!("{m:>5.0}M")),
    )
}

/// TAGS is worth more than admission, agent, memory and CPU up to this width...
const TAGS_FULL: usize = 32;
/// ...and more than the type down to this one; it grows back into what is left.
const TAGS_AT_LEAST: usize = 10;
/// Columns dropped (highest first) before TAGS is cut short: admission, agent, memory,
/// CPU. Below it (type) only go once TAGS is at its least.
const BEFORE_TAGS: u8 = 4;

/// Drop columns until they fit `avail` cells beside the lead column, then give TAGS the
/// room left, up to what it holds.
fn fit(cols: &mut Cells<'_>, avail: usize) {
    let tags = |cols: &Cells<'_>| cols.iter().position(|(c, _)| c.header == "TAGS");
    let want = tags(cols).map_or(0, |i| cols[i].0.width);
    let set_tags = |cols: &mut Cells<'_>, w: usize| {
        if let Some(i) = tags(cols) {
            cols[i].0.width = w;
        }
    };
    set_tags(cols, want.min(TAGS_FULL));
    drop_until_fits(cols, avail, BEFORE_TAGS);
    if used(cols) > avail {
        set_tags(cols, want.min(TAGS_AT_LEAST));
        drop_until_fits(cols, avail, 1);
    }
    let spare = avail.saturating_sub(used(cols));
    if let Some(i) = tags(cols) {
        let c = &mut cols[i].0;
        c.width = (c.width + spare).min(want.max(c.width));
    }
}

/// Cells the columns take, with the lead column and the gaps.
fn used(cols: &Cells<'_>) -> usize {
    4 + cols.iter().map(|(c, _)| c.width + 1).sum::<usize>() - 1
}

/// Drop the highest-ranked droppable column (rank ≥ `least`) until the rest fit.
fn drop_until_fits(cols: &mut Cells<'_>, avail: usize, least: u8) {
    while used(cols) > avail {
        let Some(i) = (0..cols.len())
            .filter(|&i| cols[i].0.drop >= least)
            .max_by_key(|&i| cols[i].0.drop)
        else {
            return;
        };
        let _ = cols.remove(i);
    }
}
