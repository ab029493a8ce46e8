//! Checking that no text holds bytes of a private key.

use std::collections::HashSet;

use base64::Engine as _;

/// How many consecutive bytes of a key make a leak.
pub const WINDOW: usize = 12;

/// Every [`WINDOW`]-byte window of some keys' base64 bodies and of their DER in hex (both
/// cases): what no error message, `Debug` output or log line may contain.
#[derive(Debug)]
pub struct KeyBytes(HashSet<Vec<u8>>);

impl KeyBytes {
    /// The windows of the PEM keys `pems`.
    pub fn of<'a>(pems: impl IntoIterator<Item = &'a str>) -> Self {
        let mut windows = HashSet::new();
        for pem in pems {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(&body)
                .expect("the fixture's key is valid base64");
            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
            for text in [body, hex.clone(), hex.to_uppercase()] {
                windows.extend(text.as_bytes().windows(WINDOW).map(<[u8]>::to_vec));
            }
        }
        Self(windows)
    }

    /// Panics, naming `what`, if `text` holds a window of the keys.
    pub fn assert_absent(&self, what: &str, text: &str) {
        if let Some(window) = text
            .as_bytes()
            .windows(WINDOW)
            .find(|w| self.0.contains(*w))
        {
            panic!(
                "{what} holds key bytes `{}`:\n{text}",
                String::from_utf8_lossy(window)
            );
        }
    }
}
