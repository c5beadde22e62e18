//! Input rules shared by the server (which enforces them) and the clients (which can
//! check before sending).

/// Longest id, version or tag the API accepts.
pub const MAX_ID_LEN: usize = 64;
/// Longest free-text message (error messages, log tails) the API stores.
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;
/// Most tags a device may carry.
pub const MAX_TAGS: usize = 32;

/// A bundle version: 1–64 chars of `[A-Za-z0-9._+-]`, and not `.` or `..` (the agent
/// keeps each version in a folder of that name, so a version must be a safe path
/// component).
pub fn is_valid_version(v: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&v.len())
        && v != "."
        && v != ".."
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// A device tag: 1–64 chars of `[A-Za-z0-9._:-]`.
pub fn is_valid_tag(t: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// An id as the server mints them (device, bundle, deployment): URL-safe, 1–64 chars.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Cut `s` to at most `max` bytes, keeping the *end* (the interesting part of a log) and
/// never splitting a UTF-8 character.
pub fn tail_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(is_valid_version("1.2.0"));
        assert!(is_valid_version("1.0.0+build.5"));
        assert!(!is_valid_version(""));
        assert!(!is_valid_version("1.0/../x"));
        assert!(!is_valid_version(&"1".repeat(65)));
        // A version names a folder on the device: never a relative path of its own.
        assert!(!is_valid_version("."));
        assert!(!is_valid_version(".."));
    }

    #[test]
    fn tags() {
        assert!(is_valid_tag("site:berlin"));
        assert!(!is_valid_tag("has space"));
        assert!(!is_valid_tag(""));
    }

    #[test]
    fn tail_keeps_end_on_char_boundary() {
        assert_eq!(tail_utf8("abcdef", 3), "def");
        assert_eq!(tail_utf8("aé", 1), "");
        assert_eq!(tail_utf8("short", 100), "short");
    }
}
