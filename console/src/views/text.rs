//! Text from devices made safe and fitted to cells: script output may carry colour codes,
//! carriage returns and tabs (none of which may reach the terminal raw), and an error cut
//! to a column is cut between words and says so with "…".

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// `s` without terminal escape sequences or control characters. A line redrawn with `\r`
/// (a progress bar) keeps its last state; tabs become spaces.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split('\n') {
        let line = line.trim_end_matches('\r');
        let line = line.rsplit('\r').next().unwrap_or("");
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                // CSI (`ESC [ … final`) and other two-char escapes.
                '\u{1b}' => {
                    if chars.peek() == Some(&'[') {
                        chars.next();
                        for c in chars.by_ref() {
                            if ('@'..='~').contains(&c) {
                                break;
                            }
                        }
                    } else {
                        chars.next();
                    }
                }
                '\t' => out.push_str("    "),
                c if c.is_control() => out.push('�'),
                c => out.push(c),
            }
        }
        out.push('\n');
    }
    out.pop();
    out
}

/// Display width of `s` in cells.
pub fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `s` (one line) broken into lines of at most `width` cells, between words where it
/// can; a word longer than a line is split. Leading indentation is kept on the first
/// line; continuation lines are indented by `indent` spaces.
pub fn wrap(s: &str, width: usize, indent: usize) -> Vec<String> {
    let width = width.max(indent + 1).max(1);
    if self::width(s) <= width {
        return vec![s.to_owned()];
    }
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut cur_w = 0;
    let lead: String = s.chars().take_while(|c| *c == ' ').collect();
    cur.push_str(&lead);
    cur_w += lead.len();
    for word in s[lead.len()..].split(' ') {
        let w = self::width(word);
        let sep = usize::from(cur_w > 0 && !cur.ends_with(' '));
        if cur_w + sep + w <= width {
            if sep == 1 {
                cur.push(' ');
            }
            cur.push_str(word);
            cur_w += sep + w;
            continue;
        }
        // Does not fit: start a new line (unless this one holds only indentation).
        if !cur.trim().is_empty() {
            lines.push(std::mem::take(&mut cur));
            cur.push_str(&" ".repeat(indent));
            cur_w = indent;
        }
        for c in word.chars() {
            let cw = c.width().unwrap_or(0);
            if cur_w + cw > width {
                lines.push(std::mem::take(&mut cur));
                cur.push_str(&" ".repeat(indent));
                cur_w = indent;
            }
            cur.push(c);
            cur_w += cw;
        }
    }
    if !cur.trim().is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

/// The first line of `s`, cleaned, fitted to `width` cells: cut after the last whole
/// word that fits and ended with "…" when it does not fit (or has more lines).
pub fn ellipsize(s: &str, width: usize) -> String {
    let s = clean(s);
    let mut lines = s.lines();
    let first = lines.next().unwrap_or("").trim_end();
    let more = lines.any(|l| !l.trim().is_empty());
    if !more && self::width(first) <= width {
        return first.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let room = width - 1;
    let mut cut = String::new();
    let mut w = 0;
    let mut last_space = None;
    for c in first.chars() {
        let cw = c.width().unwrap_or(0);
        if w + cw > room {
            break;
        }
        if c == ' ' {
            last_space = Some(cut.len());
        }
        cut.push(c);
        w += cw;
    }
    if cut.len() < first.len() {
        // Mid-word: back up to the last space, unless that throws most of it away.
        if let Some(at) = last_space.filter(|at| *at * 2 >= cut.len()) {
            cut.truncate(at);
        }
    }
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_controls_never_reach_the_screen() {
        assert_eq!(clean("\u{1b}[31mred\u{1b}[0m ok"), "red ok");
        assert_eq!(clean("10%\r50%\r100%\ndone\r\n"), "100%\ndone\n");
        assert_eq!(clean("a\tb\u{7}"), "a    b�");
    }

    #[test]
    fn wrapping_breaks_between_words_and_splits_long_ones() {
        assert_eq!(
            wrap("deploy script deploy.sh exited with status 3", 20, 2),
            ["deploy script", "  deploy.sh exited", "  with status 3"]
        );
        assert_eq!(wrap("abcdefghij", 4, 0), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("short", 20, 2), ["short"]);
        assert_eq!(
            wrap("  indented text here", 12, 4),
            ["  indented", "    text", "    here"]
        );
    }

    #[test]
    fn an_error_cut_to_a_column_ends_between_words_with_an_ellipsis() {
        let e = "deploy script deploy.sh exited with status 3";
        assert_eq!(ellipsize(e, 100), e);
        assert_eq!(ellipsize(e, 30), "deploy script deploy.sh…");
        assert_eq!(ellipsize("one line\nand more", 30), "one line…");
        assert_eq!(ellipsize("abcdefghijkl", 6), "abcde…");
    }
}
