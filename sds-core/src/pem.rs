//! Finding PEM blocks in an input, decoding them, and writing them back.
//!
//! Decoding (framing and base64) is `rustls-pki-types`' [`PemObject`]. That decoder skips
//! blocks whose label it does not know and does not say what it skipped, so we first locate
//! every block ourselves, line by line with the same rules, to tell the user what was found
//! instead ("expected a CERTIFICATE block, found PRIVATE KEY"), to spot encrypted keys, and to
//! hand the decoder one block at a time: a block we did not ask for is never decoded, so a key
//! pasted into a certificate file is never copied into memory we do not zeroize.

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use zeroize::Zeroize as _;

use crate::{
    Error,
    credential::{MAX_INPUT_LEN, Origin},
    error::ParseError,
};

/// The label of a certificate block.
pub(crate) const CERTIFICATE_LABEL: &str = "CERTIFICATE";
/// The label of a CRL block.
pub(crate) const CRL_LABEL: &str = "X509 CRL";
/// `CERTIFICATE`.
pub(crate) const CERTIFICATE: &[u8] = CERTIFICATE_LABEL.as_bytes();
/// `X509 CRL`.
pub(crate) const CRL: &[u8] = CRL_LABEL.as_bytes();
/// `PRIVATE KEY` (PKCS#8).
pub(crate) const PKCS8_KEY: &[u8] = b"PRIVATE KEY";
/// `RSA PRIVATE KEY` (PKCS#1).
pub(crate) const PKCS1_KEY: &[u8] = b"RSA PRIVATE KEY";
/// `EC PRIVATE KEY` (SEC1).
pub(crate) const SEC1_KEY: &[u8] = b"EC PRIVATE KEY";
/// `ENCRYPTED PRIVATE KEY` (PKCS#8 `EncryptedPrivateKeyInfo`).
pub(crate) const ENCRYPTED_KEY: &[u8] = b"ENCRYPTED PRIVATE KEY";

/// Longest label we quote back in an error.
const MAX_LABEL_LEN: usize = 64;

/// Most distinct labels we list in an error.
const MAX_FOUND_LABELS: usize = 8;

/// One `-----BEGIN <label>-----` … `-----END <label>-----` block of an input.
pub(crate) struct Block<'a> {
    /// Position among all blocks of the input, from 1.
    pub(crate) position: usize,
    /// The label, e.g. `CERTIFICATE`.
    pub(crate) label: &'a [u8],
    /// The block's text, from the start of the BEGIN line to the end of the END line.
    pub(crate) text: &'a [u8],
    /// Whether the block carries an RFC 1421 `Proc-Type: 4,ENCRYPTED` header.
    pub(crate) encrypted: bool,
}

// === impl Block ===

impl Block<'_> {
    /// Decodes this block with `T`'s [`PemObject`] implementation.
    pub(crate) fn decode<T: PemObject>(&self, origin: Origin<'_>) -> Result<T, Error> {
        T::from_pem_slice(self.text).map_err(|e| self.malformed(origin, ParseError::pem_decode(e)))
    }

    fn malformed(&self, origin: Origin<'_>, source: ParseError) -> Error {
        Error::MalformedPem {
            credential: origin.credential(),
            location: origin.location(),
            block: self.position,
            label: printable(self.label),
            source,
        }
    }
}

/// Checks an input's size and emptiness, then finds all its PEM blocks, in order.
///
/// Text before, between and after blocks is ignored (OpenSSL's `-text` output puts a dump
/// there). Both LF and CRLF line endings are accepted. Finding no block is not an error here:
/// the caller knows what it expected, see [`missing`].
pub(crate) fn blocks<'a>(origin: Origin<'_>, bytes: &'a [u8]) -> Result<Vec<Block<'a>>, Error> {
    if bytes.len() > MAX_INPUT_LEN {
        return Err(Error::InputTooLarge {
            credential: origin.credential(),
            location: origin.location(),
            len: bytes.len(),
            max: MAX_INPUT_LEN,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::EmptyInput {
            credential: origin.credential(),
            location: origin.location(),
        });
    }

    let mut found = Vec::new();
    let mut lines = Lines {
        rest: bytes,
        offset: 0,
    };
    while let Some((start, line)) = lines.next() {
        let Some(after_begin) = line.strip_prefix(b"-----BEGIN ") else {
            continue;
        };
        let position = found.len() + 1;
        let Some(label) = begin_label(after_begin) else {
            let block = Block {
                position,
                label: after_begin,
                text: line,
                encrypted: false,
            };
            return Err(block.malformed(origin, ParseError::pem("the BEGIN line is malformed")));
        };

        let mut encrypted = false;
        let end = loop {
            let Some((line_start, line)) = lines.next() else {
                break None;
            };
            if is_end(line, label) {
                break Some(line_start + line.len());
            }
            if line.starts_with(b"-----BEGIN ") {
                break None;
            }
            if line.starts_with(b"Proc-Type:") && contains(line, b"ENCRYPTED") {
                encrypted = true;
            }
        };
        let Some(end) = end else {
            let block = Block {
                position,
                label,
                text: &bytes[start..],
                encrypted,
            };
            return Err(block.malformed(origin, ParseError::pem("it has no matching END line")));
        };
        found.push(Block {
            position,
            label,
            text: &bytes[start..end],
            encrypted,
        });
    }
    Ok(found)
}

/// The error for an input without any block labelled `expected`: either it looks like DER, or
/// it lists what was found instead.
pub(crate) fn missing(
    origin: Origin<'_>,
    expected: &'static str,
    blocks: &[Block<'_>],
    bytes: &[u8],
) -> Error {
    if blocks.is_empty() && looks_like_der(bytes) {
        return Error::NotPem {
            credential: origin.credential(),
            location: origin.location(),
            expected,
        };
    }
    let mut found: Vec<String> = Vec::new();
    for block in blocks {
        let label = printable(block.label);
        if found.contains(&label) {
            continue;
        }
        if found.len() == MAX_FOUND_LABELS {
            found.push("…".to_owned());
            break;
        }
        found.push(label);
    }
    Error::MissingPemBlock {
        credential: origin.credential(),
        location: origin.location(),
        expected,
        found,
    }
}

/// A DER `SEQUENCE` header at the start and bytes that are not text: a DER certificate or key,
/// or a PKCS#12 archive.
fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30)
        && bytes
            .iter()
            .any(|b| !(b.is_ascii_graphic() || b.is_ascii_whitespace()))
}

/// The label of a BEGIN line (after `-----BEGIN `), which must end in exactly five dashes,
/// possibly followed by spaces; the same rule as the decoder's.
fn begin_label(rest: &[u8]) -> Option<&[u8]> {
    let trimmed = trim_end(rest);
    let label = trimmed.strip_suffix(b"-----")?;
    if label.ends_with(b"-") {
        return None;
    }
    Some(label)
}

fn is_end(line: &[u8], label: &[u8]) -> bool {
    line.strip_prefix(b"-----END ")
        .and_then(|rest| rest.strip_prefix(label))
        .is_some_and(|rest| rest.starts_with(b"-----"))
}

fn trim_end(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b' '] = bytes {
        bytes = rest;
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A label as it may appear in an error: lossy UTF-8, escaped, and cut to a sane length.
pub(crate) fn printable(label: &[u8]) -> String {
    let cut = &label[..label.len().min(MAX_LABEL_LEN)];
    let mut out: String = String::from_utf8_lossy(cut).escape_debug().collect();
    if label.len() > MAX_LABEL_LEN {
        out.push('…');
    }
    out
}

/// Lines split at `\n` or `\r`, as the decoder splits them, with their offsets.
struct Lines<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let start = self.offset;
        let (line, consumed) = match self.rest.iter().position(|b| matches!(b, b'\n' | b'\r')) {
            Some(i) => (&self.rest[..i], i + 1),
            None => (self.rest, self.rest.len()),
        };
        self.rest = &self.rest[consumed..];
        self.offset += consumed;
        Some((start, line))
    }
}

// === encoding ===

/// Bytes of DER per base64 line: 48 bytes make 64 characters.
const LINE_BYTES: usize = 48;

/// The exact length of [`encode_into`]'s output for `der_len` bytes of DER.
pub(crate) fn encoded_len(label: &str, der_len: usize) -> usize {
    let b64 = der_len.div_ceil(3) * 4;
    let lines = der_len.div_ceil(LINE_BYTES);
    let begin = "-----BEGIN ".len() + label.len() + "-----\n".len();
    let end = "-----END ".len() + label.len() + "-----\n".len();
    begin + b64 + lines + end
}

/// `ders` as consecutive PEM blocks labelled `label`.
pub(crate) fn encode_all<'a>(label: &str, ders: impl Iterator<Item = &'a [u8]> + Clone) -> String {
    let len = ders.clone().map(|der| encoded_len(label, der.len())).sum();
    let mut out = String::with_capacity(len);
    for der in ders {
        encode_into(&mut out, label, der);
    }
    out
}

/// Appends `der` as a PEM block: LF line endings, 64-column standard base64 with padding.
///
/// Appends without reallocating when `out` has [`encoded_len`] spare capacity, and keeps no
/// other copy of the encoded text, so a zeroizing `out` is enough for secret material.
pub(crate) fn encode_into(out: &mut String, label: &str, der: &[u8]) {
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut line = [0u8; 64];
    for chunk in der.chunks(LINE_BYTES) {
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(chunk, &mut line)
            .expect("48 bytes always encode into 64 characters");
        out.extend(line[..written].iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    line.zeroize();
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretName;

    fn scan(bytes: &[u8]) -> Result<Vec<(String, bool)>, Error> {
        let name = SecretName::new("t").expect("valid");
        let origin = Origin::new(&name, "mem");
        Ok(blocks(origin, bytes)?
            .iter()
            .map(|b| (printable(b.label), b.encrypted))
            .collect())
    }

    #[test]
    fn finds_labels_between_text() {
        let input = b"Certificate:\n  Data: ...\n-----BEGIN CERTIFICATE-----\r\nAAAA\r\n\
            -----END CERTIFICATE-----\r\njunk\n-----BEGIN FOO BAR-----\nQQ==\n-----END FOO BAR-----";
        let found = scan(input).expect("scans");
        assert_eq!(
            found,
            [
                ("CERTIFICATE".to_owned(), false),
                ("FOO BAR".to_owned(), false)
            ]
        );
    }

    #[test]
    fn spots_legacy_encryption_header() {
        let input = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
            DEK-Info: AES-256-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            scan(input).expect("scans"),
            [("RSA PRIVATE KEY".to_owned(), true)]
        );
    }

    #[test]
    fn rejects_unterminated_and_broken_blocks() {
        for input in [
            &b"-----BEGIN CERTIFICATE-----\nAAAA\n"[..],
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----BEGIN CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE------\nAAAA\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE\n",
        ] {
            assert!(
                matches!(scan(input), Err(Error::MalformedPem { .. })),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn encodes_64_columns_exactly() {
        for len in [0, 1, 2, 3, 47, 48, 49, 96, 1000] {
            let der: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = String::with_capacity(encoded_len("X", der.len()));
            let capacity = out.capacity();
            encode_into(&mut out, "X", &der);
            assert_eq!(out.len(), encoded_len("X", der.len()), "len {len}");
            assert_eq!(out.capacity(), capacity, "no reallocation for len {len}");
            assert!(out.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        }
    }
}
