//! Text that came from outside (a guest, a record, a push service) is cut
//! before it is logged, kept or sent on: a reason, a log line or an error
//! message never carries more than a fixed number of bytes, and the cut is
//! marked so that nobody mistakes it for the whole.

use std::borrow::Cow;

/// The most bytes of a handler's reason, a log line or an error text that
/// herald keeps.
pub const TEXT_MAX: usize = 1024;

/// `text` as is when it fits in `max` bytes; else its first bytes (on a
/// character boundary) and a marker saying how much was cut.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}…[{} more bytes cut]",
        &text[..end],
        text.len() - end
    ))
}

/// [`cut`] to [`TEXT_MAX`], owned.
pub fn reason(text: String) -> String {
    match cut(&text, TEXT_MAX) {
        Cow::Borrowed(_) => text,
        Cow::Owned(short) => short,
    }
}

/// An error with its chain of causes, each cause not already in the text
/// added after a colon: reqwest's own text leaves out why a connection
/// failed ("connection refused", a DNS error).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary_and_says_so() {
        assert_eq!(cut("short", 10), "short");
        let long = "é".repeat(600); // 1200 bytes
        let short = cut(&long, 1023);
        assert!(short.starts_with(&"é".repeat(511)));
        assert!(short.ends_with("…[178 more bytes cut]"), "{short}");
        assert_eq!(
            reason("x".repeat(5000)).len(),
            1024 + "…[3976 more bytes cut]".len()
        );
    }
}
