//! What the fuzz targets share: how an input is cut into frames or files, the time credentials
//! are validated at, and the check that no secret material reaches an error.

use std::collections::HashSet;

use bytes::Bytes;
use sds_core::UnixTime;

/// The time every target validates at: 2027-01-15. The seed certificates are valid from 2025
/// to 2035, except those generated expired or not yet valid (see `tests/corpus.rs`); a fixed
/// time keeps a corpus meaning the same thing next year.
pub const NOW_SECS: u64 = 1_800_000_000;

/// [`NOW_SECS`] as validation takes it.
pub fn now() -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(NOW_SECS))
}

/// What separates the files of one `credential` input: a line `===`, which no PEM has.
pub const FILE_SEPARATOR: &[u8] = b"\n===\n";

/// The files of one input, split at [`FILE_SEPARATOR`].
pub fn files(data: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    let mut rest = data;
    while let Some(at) = find(rest, FILE_SEPARATOR) {
        files.push(&rest[..at]);
        rest = &rest[at + FILE_SEPARATOR.len()..];
    }
    files.push(rest);
    files
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `wire` cut at `offsets` (each taken modulo `wire.len() + 1`, in any order, repeats making
/// empty frames, as HTTP/2 allows).
pub fn frames_at(wire: &Bytes, offsets: &[usize]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = offsets.iter().map(|o| o % (wire.len() + 1)).collect();
    cuts.sort_unstable();
    let mut frames = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        frames.push(wire.slice(start..cut));
        start = cut;
    }
    frames.push(wire.slice(start..));
    frames
}

/// `wire` one byte per frame.
pub fn bytewise(wire: &Bytes) -> Vec<Bytes> {
    (0..wire.len()).map(|i| wire.slice(i..i + 1)).collect()
}

/// The shortest run of secret text an error must never hold.
pub const SECRET_RUN: usize = 16;

/// The secret text of a key input: every window of [`SECRET_RUN`] bytes of its runs of base64
/// characters (the body of a PEM key, wherever its line breaks are, and any other run that
/// long). Labels and dashes are not base64 runs.
#[derive(Debug, Default)]
pub struct SecretText {
    windows: HashSet<Vec<u8>>,
}

impl SecretText {
    /// The secret text of `input`.
    pub fn of(input: &[u8]) -> Self {
        let mut windows = HashSet::new();
        for run in base64_runs(input) {
            for window in run.windows(SECRET_RUN) {
                windows.insert(window.to_vec());
            }
        }
        Self { windows }
    }

    /// Adds the secret text of another input.
    pub fn add(&mut self, input: &[u8]) {
        self.windows.extend(Self::of(input).windows);
    }

    /// Forgets the secret text that `public` holds too (a Secret's name is shown in errors,
    /// whatever it says).
    pub fn forget(&mut self, public: &[u8]) {
        for run in base64_runs(public) {
            for window in run.windows(SECRET_RUN) {
                self.windows.remove(window);
            }
        }
    }

    /// Panics if `shown` (an error's message, a `Debug` dump) holds any of the secret text.
    pub fn assert_absent(&self, what: &str, shown: &str) {
        if self.windows.is_empty() {
            return;
        }
        for run in base64_runs(shown.as_bytes()) {
            if let Some(window) = run.windows(SECRET_RUN).find(|w| self.windows.contains(*w)) {
                panic!(
                    "{what} shows secret text {:?}: {shown}",
                    String::from_utf8_lossy(window)
                );
            }
        }
    }
}

/// Runs of base64 characters (`A-Z a-z 0-9 + / =`) at least [`SECRET_RUN`] long.
fn base64_runs(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
        .filter(|run| run.len() >= SECRET_RUN)
}

/// An error as a user could see it: `Display` of it and of every source, and `Debug`.
pub fn shown(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error}\n{error:?}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n{cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_at_the_separator_line() {
        assert_eq!(files(b"a\n===\nb\n===\n"), [&b"a"[..], b"b", b""]);
        assert_eq!(files(b"abc"), [&b"abc"[..]]);
    }

    #[test]
    fn frames_cover_the_wire_in_order() {
        let wire = Bytes::from_static(b"0123456789");
        let frames = frames_at(&wire, &[7, 3, 3, 25]);
        assert_eq!(frames.concat(), b"0123456789");
        assert_eq!(frames.len(), 5);
        assert!(frames[2].is_empty());
    }

    #[test]
    fn secret_text_is_found_in_errors() {
        let key = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAbcdefghijklmnop\n-----END";
        let secret = SecretText::of(key);
        secret.assert_absent("ok", "expected a CERTIFICATE block, found PRIVATE KEY");
        let leaked = std::panic::catch_unwind(|| {
            secret.assert_absent("leak", "bad byte near `YDK2VwBCIEIAbcde`")
        });
        assert!(leaked.is_err());
    }
}
