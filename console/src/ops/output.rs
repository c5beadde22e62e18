//! Text output of the scripted commands: aligned tables that fit the terminal, key/value
//! blocks, value formatting, and writing to stdout/stderr without ever panicking (a closed
//! pipe is an `Err`, not a crash).
//!
//! Everything shown comes from the server or from devices (free-text statuses, error
//! messages, log tails), so cells are cleaned of control characters: a device cannot
//! move the operator's cursor or change their terminal's colours.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Spaces between table columns.
const GAP: usize = 2;
/// A flexible column is never squeezed below this (or its natural width, if smaller).
const MIN_FLEX: usize = 12;

/// Write `text` to stdout and flush.
pub(crate) fn stdout(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// `kernex-console: <message>` on stderr. A closed stderr is ignored. Messages can carry
/// a server's or proxy's own text: control characters (escapes) are blanked.
pub(crate) fn error(message: &dyn std::fmt::Display) {
    let message: String = message
        .to_string()
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect();
    let _ = writeln!(io::stderr().lock(), "kernex-console: {message}");
}

/// A remark on stderr that is not data (e.g. "no devices").
pub(crate) fn note(message: &str) {
    let _ = writeln!(io::stderr().lock(), "{message}");
}

/// The width tables must fit: the terminal's, when stdout is one. Piped output is never
/// cut, so `| grep` and `| less -S` see every column.
pub(crate) fn width() -> Option<usize> {
    if !io::stdout().is_terminal() {
        return None;
    }
    crossterm::terminal::size()
        .ok()
        .map(|(cols, _)| usize::from(cols))
        .filter(|&c| c > 0)
}

/// Whether stderr is a terminal (progress bars are drawn only then).
pub(crate) fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub(crate) fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let target = if stderr_is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(len), target).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

// --------------------------------------------------------------------------- tables

/// One column of a [`Table`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    header: &'static str,
    right: bool,
    /// Dropped when the table is too wide, lowest first; `None` = always shown.
    drop_order: Option<u8>,
    /// Cut (with `…`) rather than widening the table. Only the last column.
    flex: bool,
}

impl Column {
    pub(crate) const fn new(header: &'static str) -> Column {
        Column {
            header,
            right: false,
            drop_order: None,
            flex: false,
        }
    }

    /// Right-aligned (numbers).
    pub(crate) const fn right(mut self) -> Column {
        self.right = true;
        self
    }

    /// May be left out in a narrow terminal; `order` 0 goes first.
    pub(crate) const fn optional(mut self, order: u8) -> Column {
        self.drop_order = Some(order);
        self
    }

    /// Cut to the room left (last column only).
    pub(crate) const fn flex(mut self) -> Column {
        self.flex = true;
        self
    }
}

/// Rows under headers, columns aligned. [`Table::render`] fits a width by cutting the
/// flexible last column, then leaving out optional columns; ids are never cut.
#[derive(Debug)]
pub(crate) struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: &[Column]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are blank, extra ones ignored).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| clean(&c)).collect();
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines of text; `width` is the room (`None`: unlimited).
    pub(crate) fn render(&self, width: Option<usize>) -> String {
        let n = self.columns.len();
        let mut widths: Vec<usize> = self.columns.iter().map(|c| len(c.header)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(len(cell));
            }
        }
        let mut shown = vec![true; n];
        if let Some(max) = width {
            let mut optional: Vec<(u8, usize)> = self
                .columns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.drop_order.map(|o| (o, i)))
                .collect();
            optional.sort_unstable();
            let mut optional = optional.into_iter();
            // The narrowest this set of columns can be: the flexible one at its minimum.
            let min_total = |shown: &[bool]| -> usize {
                let mut total = 0;
                let mut count = 0usize;
                for i in (0..n).filter(|&i| shown[i]) {
                    let c = &self.columns[i];
                    total += if c.flex {
                        widths[i].min(MIN_FLEX.max(len(c.header)))
                    } else {
                        widths[i]
                    };
                    count += 1;
                }
                total + GAP * count.saturating_sub(1)
            };
            while min_total(&shown) > max {
                match optional.next() {
                    Some((_, i)) => shown[i] = false,
                    None => break,
                }
            }
            if let Some(last) = (0..n).rev().find(|&i| shown[i])
                && self.columns[last].flex
            {
                let others: usize = (0..last)
                    .filter(|&i| shown[i])
                    .map(|i| widths[i] + GAP)
                    .sum();
                let floor = widths[last].min(MIN_FLEX.max(len(self.columns[last].header)));
                widths[last] = widths[last].min(max.saturating_sub(others).max(floor));
            }
        }

        let visible: Vec<usize> = (0..n).filter(|&i| shown[i]).collect();
        let mut out = String::new();
        let headers: Vec<String> = self.columns.iter().map(|c| c.header.to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (k, &i) in visible.iter().enumerate() {
                let last = k + 1 == visible.len();
                let cell = cut(&row[i], widths[i]);
                let pad = widths[i].saturating_sub(len(&cell));
                if k > 0 {
                    line.push_str(&" ".repeat(GAP));
                }
                if self.columns[i].right {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(&cell);
                } else {
                    line.push_str(&cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// `key: value` lines with the values aligned.
pub(crate) fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| len(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let key = format!("{k}:");
        let _ = writeln!(out, "{key:<w$}  {}", clean(v));
    }
    out
}

/// Characters, not bytes (ids and versions are ASCII; messages may not be).
fn len(s: &str) -> usize {
    s.chars().count()
}

/// At most `max` characters, the last one `…` when something was cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if len(s) <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// One line, no control characters (tabs, newlines and escape sequences become spaces).
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------- values

/// `-` for nothing.
pub(crate) fn or_dash(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "-".to_owned(),
    }
}

/// How long ago, coarsely: `12s ago`, `5m ago`, `3h ago`, `4d ago`; `never` for none.
pub(crate) fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map_or_else(
        || "never".to_owned(),
        |t| format!("{} ago", crate::fmt::age(t, now)),
    )
}

/// An absolute time, to the second, UTC.
pub(crate) fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An absolute time with how long ago it was.
pub(crate) fn when_ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => format!("{} ({})", when(t), ago(Some(t), now)),
        None => "never".to_owned(),
    }
}

pub(crate) use crate::fmt::bytes;

/// Memory reported in MB: `812 MB`, `1.5 GB`.
pub(crate) fn megabytes(mb: Option<f64>) -> String {
    match mb {
        Some(m) if m >= 1024.0 => format!("{:.1} GB", m / 1024.0),
        Some(m) => format!("{m:.0} MB"),
        None => "-".to_owned(),
    }
}

/// A percentage with one decimal.
pub(crate) fn percent(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:.1}%"),
        None => "-".to_owned(),
    }
}

/// Seconds as `4.2s`, `3m 05s`.
pub(crate) fn duration(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) => {
            let s = s.round() as u64;
            format!("{}m {:02}s", s / 60, s % 60)
        }
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(&[
            Column::new("ID"),
            Column::new("CPU").right(),
            Column::new("TYPE").optional(1),
            Column::new("MEM").optional(0),
            Column::new("TAGS").flex(),
        ]);
        t.row(vec![
            "dev-a".into(),
            "5.0%".into(),
            "jetson-nano".into(),
            "812 MB".into(),
            "site:berlin,canary".into(),
        ]);
        t.row(vec![
            "dev-bb".into(),
            "100.0%".into(),
            "kiosk".into(),
            "1.5 GB".into(),
            String::new(),
        ]);
        t
    }

    #[test]
    fn columns_align_and_numbers_go_right() {
        let text = sample().render(None);
        let expected = "\
ID         CPU  TYPE         MEM     TAGS
dev-a     5.0%  jetson-nano  812 MB  site:berlin,canary
dev-bb  100.0%  kiosk        1.5 GB
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_narrow_width_cuts_the_flexible_column_then_drops_optional_ones() {
        // Full: 55 wide. At 50 the tags are cut to fit.
        let text = sample().render(Some(50));
        assert!(text.lines().all(|l| len(l) <= 50), "{text}");
        assert!(
            text.contains("site:berlin,…") && text.contains("MEM"),
            "{text}"
        );
        // At 45 even the cut tags do not fit next to MEM: MEM goes first (order 0), and
        // the tags get the room it leaves.
        let text = sample().render(Some(45));
        assert!(text.lines().all(|l| len(l) <= 45), "{text}");
        assert!(!text.contains("MEM") && text.contains("TYPE"), "{text}");
        assert!(text.contains("site:berlin,can…"), "{text}");
        // Too narrow for anything optional: only the fixed columns and the flex one.
        let text = sample().render(Some(10));
        assert_eq!(text.lines().next(), Some("ID         CPU  TAGS"));
    }

    #[test]
    fn cells_lose_control_characters() {
        let mut t = Table::new(&[Column::new("MSG")]);
        t.row(vec!["bad\x1b[31mred\nline\ttab".into()]);
        let text = t.render(None);
        assert_eq!(text.lines().nth(1), Some("bad [31mred line tab"));
        assert_eq!(key_values(&[("k", "a\nb".into())]), "k:  a b\n");
    }

    #[test]
    fn key_values_align() {
        let text = key_values(&[("id", "x".into()), ("version", "3".into())]);
        assert_eq!(text, "id:       x\nversion:  3\n");
    }

    #[test]
    fn cut_marks_what_it_removed() {
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("äöü", 2), "ä…");
        assert_eq!(cut("abc", 0), "");
    }

    #[test]
    fn values_format_compactly() {
        let now = DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: i64| Some(now - chrono::Duration::seconds(s));
        assert_eq!(ago(at(5), now), "5s ago");
        assert_eq!(ago(at(-3), now), "0s ago");
        assert_eq!(ago(at(125), now), "2m ago");
        assert_eq!(ago(at(7_200), now), "2h ago");
        assert_eq!(ago(at(3 * 86_400), now), "3d ago");
        assert_eq!(ago(None, now), "never");
        assert_eq!(when(now), "2025-06-01 12:00:00 UTC");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(megabytes(Some(812.4)), "812 MB");
        assert_eq!(megabytes(Some(1536.0)), "1.5 GB");
        assert_eq!(percent(Some(12.345)), "12.3%");
        assert_eq!(percent(None), "-");
        assert_eq!(duration(Some(4.24)), "4.2s");
        assert_eq!(duration(Some(185.0)), "3m 05s");
        assert_eq!(or_dash(Some("")), "-");
    }
}
