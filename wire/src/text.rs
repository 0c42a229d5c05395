//! Bounded text: what a server puts in a frame when the text echoes a peer's input.
//!
//! An error message that quotes a hostile 60 KB id would not fit the frame it travels in, so
//! every piece of echoed text is cut where it is built: [`truncate`] cuts at a character
//! boundary, [`quote`] escapes and cuts an identifier for a message, and
//! [`ErrorFrame::new`](crate::frame::ErrorFrame::new) bounds a whole message.

/// Longest message text a server puts in an `Error` or `GoAway` frame, in bytes.
pub const MAX_MESSAGE: usize = 1024;

/// Longest quoted identifier inside a message, in characters (before escaping).
pub const MAX_QUOTED: usize = 64;

/// The longest prefix of `s` that is at most `max` bytes and ends at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` quoted for a message: control and non-ASCII characters escaped, and at most
/// [`MAX_QUOTED`] characters of it shown (then `…` and the total length).
pub fn quote(s: &str) -> String {
    let count = s.chars().count();
    let shown: String = s.chars().take(MAX_QUOTED).collect();
    let mut out = format!("{:?}", shown);
    if count > MAX_QUOTED {
        out.push_str(&format!("… ({} bytes)", s.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_stops_at_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("€", 2), "");
    }

    #[test]
    fn quote_escapes_and_bounds() {
        assert_eq!(quote("bob"), "\"bob\"");
        let hostile = "\u{1}".repeat(13_100);
        let q = quote(&hostile);
        assert!(q.len() < 64 * 6 + 40, "{} bytes", q.len());
        assert!(q.ends_with("(13100 bytes)"));
    }
}
