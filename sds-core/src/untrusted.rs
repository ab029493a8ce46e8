//! Text from outside (a client, a file name, a Kubernetes object) made safe to log or echo.

use std::fmt;

/// Text that came from outside the process — a client's node id, NACK message or resource
/// name, a directory entry, a Kubernetes object's name — shown escaped and cut short.
///
/// `Display` escapes every control character, quote, backslash and non-ASCII character the
/// way [`str::escape_debug`] does (so a newline cannot forge a log line and terminal escape
/// bytes never reach a terminal), and stops after `max` characters of the input, then says
/// how many bytes were left out. Writing it allocates nothing and reads at most `max`
/// characters, whatever the input's length.
///
/// ```
/// use sds_core::Untrusted;
///
/// let forged = "x\nINFO sds_core::publish: secret added secret=FORGED";
/// assert_eq!(
///     Untrusted::new(forged, 16).to_string(),
///     "x\\nINFO sds_core:…(36 more bytes)"
/// );
/// assert_eq!(Untrusted::new("ok", 16).to_string(), "ok");
/// ```
#[derive(Clone, Copy)]
pub struct Untrusted<'a> {
    text: &'a str,
    max: usize,
}

impl<'a> Untrusted<'a> {
    /// `text`, to be shown escaped and cut after `max` characters.
    pub fn new(text: &'a str, max: usize) -> Self {
        Self { text, max }
    }

    /// Bytes that are not UTF-8: shown as [`Untrusted`] text with each invalid sequence
    /// replaced by U+FFFD, which `Display` then escapes as `\u{fffd}`.
    ///
    /// The count of bytes left out is of `bytes` (not of the converted text), and reading
    /// stops after `max` characters whatever the input's length.
    pub fn lossy(bytes: &[u8], max: usize) -> String {
        // `max` characters take at most 4 bytes each (an invalid sequence, at most 3): cut
        // first, so a huge input costs nothing.
        let cut = &bytes[..bytes.len().min(max.saturating_mul(4))];
        let mut text = String::new();
        let (mut chars, mut consumed) = (0, 0);
        'chunks: for chunk in cut.utf8_chunks() {
            for c in chunk.valid().chars() {
                if chars == max {
                    break 'chunks;
                }
                text.push(c);
                chars += 1;
                consumed += c.len_utf8();
            }
            if !chunk.invalid().is_empty() {
                if chars == max {
                    break;
                }
                text.push(char::REPLACEMENT_CHARACTER);
                chars += 1;
                consumed += chunk.invalid().len();
            }
        }
        let mut out = Untrusted::new(&text, max).to_string();
        if consumed < bytes.len() {
            out.push_str(&format!("…({} more bytes)", bytes.len() - consumed));
        }
        out
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for (count, (at, c)) in self.text.char_indices().enumerate() {
            if count == self.max {
                return write!(f, "…({} more bytes)", self.text.len() - at);
            }
            if c == ' ' || (c.is_ascii_graphic() && c != '\\' && c != '"') {
                f.write_char(c)?;
            } else if c.is_ascii() {
                // `\n`, `\\`, `\"`, `\u{1b}`.
                for e in c.escape_debug() {
                    f.write_char(e)?;
                }
            } else {
                // Every non-ASCII character, printable or not (`escape_debug` keeps `é`).
                for e in c.escape_unicode() {
                    f.write_char(e)?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::Untrusted;

    #[test]
    fn escapes_controls_and_non_ascii() {
        let shown = Untrusted::new("a\r\nb\u{1b}[31mc\u{7f}é\\\"", 100).to_string();
        assert_eq!(shown, "a\\r\\nb\\u{1b}[31mc\\u{7f}\\u{e9}\\\\\\\"");
        assert!(!shown.chars().any(|c| c.is_control()));
    }

    #[test]
    fn cuts_after_max_characters() {
        let long = "n".repeat(1_000_000);
        let shown = Untrusted::new(&long, 10).to_string();
        assert_eq!(shown, "nnnnnnnnnn…(999990 more bytes)");
        assert_eq!(Untrusted::new("abc", 3).to_string(), "abc");
        assert_eq!(Untrusted::new("", 0).to_string(), "");
    }

    #[test]
    fn lossy_bytes() {
        assert_eq!(Untrusted::lossy(b"a\xffb", 10), "a\\u{fffd}b");
        let shown = Untrusted::lossy(&[b'x'; 100], 4);
        assert_eq!(shown, "xxxx…(96 more bytes)");
        // Counts are of the input's bytes, whatever the replacements and the last character.
        assert_eq!(
            Untrusted::lossy(b"\xff\xff\xff\xffzzzz", 2),
            "\\u{fffd}\\u{fffd}…(6 more bytes)"
        );
        assert_eq!(Untrusted::lossy("(é)".as_bytes(), 3), "(\\u{e9})");
        assert_eq!(
            Untrusted::lossy("(é)😀😀😀".as_bytes(), 3),
            "(\\u{e9})…(12 more bytes)"
        );
        assert_eq!(Untrusted::lossy(b"abc", 0), "…(3 more bytes)");
    }
}
