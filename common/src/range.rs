//! The HTTP `Range` request header (RFC 9110 §14.2) for bundle downloads: one byte
//! range, resolved against the body's size. Pure, so the server uses it and the fuzz
//! targets (`fuzz/`) hammer it.
//!
//! ```
//! use kernex_common::range::{RangeRequest, parse_range};
//! assert_eq!(parse_range(Some("bytes=2-"), 10), RangeRequest::Partial { start: 2, end: 9 });
//! ```

/// A parsed single `Range: bytes=…` request against a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: send everything.
    Full,
    /// Send bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// Syntactically fine but outside the body.
    Unsatisfiable,
}

/// Parse `Range` (RFC 9110 §14.2). Multiple ranges and malformed values are ignored (the
/// whole body is sent), as the RFC allows.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last `b` bytes.
        return match b.parse::<u64>() {
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(_) if size == 0 => RangeRequest::Unsatisfiable,
            Ok(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            Err(_) => RangeRequest::Full,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeRequest::Full;
    };
    let end = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(size.saturating_sub(1)),
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(
            parse_range(Some("bytes=2-"), 10),
            Partial { start: 2, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=2-4"), 10),
            Partial { start: 2, end: 4 }
        );
        assert_eq!(
            parse_range(Some("bytes=2-400"), 10),
            Partial { start: 2, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            Partial { start: 7, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
    }
}
