//! Finding PEM blocks in an input, decoding them, and writing them back.
//!
//! Decoding (framing and base64) is `rustls-pki-types`' [`PemObject`]. That decoder skips
//! blocks whose label it does not know and does not say what it skipped, so we first locate
//! every block ourselves, line by line with the same rules, to tell the user what was found
//! instead ("expected a CERTIFICATE block, found PRIVATE KEY"), to spot encrypted keys, and to
//! hand the decoder one block at a time: a block we did not ask for is never decoded, so a key
//! pasted into a certificate file is never copied into memory we do not zeroize.
//!
//! # Nothing from inside a block reaches an error
//!
//! An input may be a private key, and a key that lost its line breaks (pasted into YAML or an
//! environment variable) puts its whole body on the BEGIN line. So errors describe a problem
//! by position (block number, line, column) and length only, and quote a label only when it
//! is one of [`KNOWN_LABELS`]. The decoder's own errors, which carry input bytes (the BEGIN
//! line, the offending base64 character), are never shown: [`Block::decode`] describes the
//! problem from its own scan instead.

use std::fmt;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use zeroize::Zeroize as _;

use crate::{
    Error, ErrorKind,
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

/// The labels an error may quote (RFC 7468, OpenSSL, OpenSSH, PGP). Any other label is text
/// we know nothing about, so errors give only its length.
const KNOWN_LABELS: &[&str] = &[
    "CERTIFICATE",
    "X509 CERTIFICATE",
    "TRUSTED CERTIFICATE",
    "X509 CRL",
    "CERTIFICATE REQUEST",
    "NEW CERTIFICATE REQUEST",
    "ATTRIBUTE CERTIFICATE",
    "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "ANY PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "DSA PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "SSH2 ENCRYPTED PRIVATE KEY",
    "PGP PRIVATE KEY BLOCK",
    "PUBLIC KEY",
    "RSA PUBLIC KEY",
    "DSA PUBLIC KEY",
    "SSH2 PUBLIC KEY",
    "PGP PUBLIC KEY BLOCK",
    "EC PARAMETERS",
    "DSA PARAMETERS",
    "DH PARAMETERS",
    "X9.42 DH PARAMETERS",
    "PARAMETERS",
    "PKCS7",
    "PKCS #7 SIGNED DATA",
    "CMS",
    "ECHCONFIG",
    "SSL SESSION PARAMETERS",
    "PGP MESSAGE",
    "PGP SIGNATURE",
];

/// Most distinct labels we list in an error.
const MAX_FOUND_LABELS: usize = 8;

/// The start of a BEGIN line.
const BEGIN: &[u8] = b"-----BEGIN ";
/// The start of an END line.
const END: &[u8] = b"-----END ";
/// What closes a BEGIN or END line's label.
const DASHES: &[u8] = b"-----";

/// What users do to PEM that loses its line breaks, and what to do about it.
const LOST_LINE_BREAKS: &str = "(pasted into YAML or an environment variable?)";

/// One `-----BEGIN <label>-----` … `-----END <label>-----` block of an input.
pub(crate) struct Block<'a> {
    /// Position among all blocks of the input, from 1.
    pub(crate) position: usize,
    /// The line of the BEGIN line, from 1.
    pub(crate) line: usize,
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
    ///
    /// The decoder's error is not kept (it can quote the input): the problem is described by
    /// position from our own scan of the block.
    pub(crate) fn decode<T: PemObject>(&self, origin: Origin<'_>) -> Result<T, Error> {
        T::from_pem_slice(self.text).map_err(|e| {
            let problem = match e {
                rustls_pki_types::pem::Error::Base64Decode(_) => self.base64_problem(),
                rustls_pki_types::pem::Error::SectionTooLarge => {
                    "the block is larger than the PEM decoder's limit of 256 MB".to_owned()
                }
                _ => "the PEM decoder cannot read this block".to_owned(),
            };
            malformed(origin, self.position, self.line, self.label, problem)
        })
    }

    /// Where the base64 text between the BEGIN and END lines is wrong, by line and column.
    fn base64_problem(&self) -> String {
        let mut lines = Lines::new(self.text, self.line - 1);
        lines.next(); // the BEGIN line
        let mut padding: Option<(usize, usize)> = None;
        for line in lines {
            if is_end(line.text, self.label) {
                break;
            }
            for (column, &b) in line.text.iter().enumerate().map(|(i, b)| (i + 1, b)) {
                match b {
                    b'=' => {
                        padding.get_or_insert((line.number, column));
                    }
                    b'\t'..=b'\r' | b' ' => {}
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' => {
                        if let Some((at_line, at_column)) = padding {
                            return format!(
                                "line {at_line}, column {at_column}: `=` padding before the end \
                                 of the base64 text"
                            );
                        }
                    }
                    _ => {
                        return format!(
                            "line {}, column {column}: a character that is not base64",
                            line.number
                        );
                    }
                }
            }
        }
        "the base64 text has a wrong length or padding: a line is missing or cut short, or \
         characters were added"
            .to_owned()
    }
}

/// The [`ErrorKind::MalformedPem`] for block `position`, whose BEGIN line is line `line`.
fn malformed(
    origin: Origin<'_>,
    position: usize,
    line: usize,
    label: &[u8],
    problem: String,
) -> Error {
    origin.error(ErrorKind::MalformedPem {
        block: position,
        line,
        label: Label(label).to_string(),
        source: ParseError::pem(problem),
    })
}

/// A label as an error may show it: itself if it is one of [`KNOWN_LABELS`], else only its
/// length.
pub(crate) struct Label<'a>(pub(crate) &'a [u8]);

// === impl Label ===

impl Label<'_> {
    /// The label if it is one of [`KNOWN_LABELS`].
    pub(crate) fn known(&self) -> Option<&'static str> {
        KNOWN_LABELS
            .iter()
            .copied()
            .find(|known| known.as_bytes() == self.0)
    }
}

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.known() {
            Some(known) => f.write_str(known),
            None => write!(f, "unknown label of {} bytes", self.0.len()),
        }
    }
}

/// Checks an input's size and emptiness, then finds all its PEM blocks, in order.
///
/// Text before, between and after blocks is ignored (OpenSSL's `-text` output puts a dump
/// there). LF, CRLF and CR line endings are accepted. Finding no block is not an error here:
/// the caller knows what it expected, see [`missing`].
pub(crate) fn blocks<'a>(origin: Origin<'_>, bytes: &'a [u8]) -> Result<Vec<Block<'a>>, Error> {
    if bytes.len() > MAX_INPUT_LEN {
        return Err(origin.error(ErrorKind::InputTooLarge {
            len: bytes.len(),
            max: MAX_INPUT_LEN,
        }));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(origin.error(ErrorKind::EmptyInput));
    }

    let mut found = Vec::new();
    let mut lines = Lines::new(bytes, 0);
    while let Some(begin) = lines.next() {
        let Some(after_begin) = begin.text.strip_prefix(BEGIN) else {
            continue;
        };
        let position = found.len() + 1;
        let fail = |label: &[u8], problem: String| {
            Err(malformed(origin, position, begin.number, label, problem))
        };
        let Some(close) = find(after_begin, DASHES) else {
            return fail(
                after_begin,
                format!(
                    "line {}: the BEGIN line does not end in `-----`",
                    begin.number
                ),
            );
        };
        let (label, rest) = (&after_begin[..close], &after_begin[close + DASHES.len()..]);
        if let Some(problem) = after_begin_label(begin.number, rest) {
            return fail(label, problem);
        }

        let mut encrypted = false;
        let mut last = begin.number;
        let mut end = None;
        for line in lines.by_ref() {
            last = line.number;
            if is_end(line.text, label) {
                end = Some(line.end);
                break;
            }
            if let Some(end_label) = line.text.strip_prefix(END) {
                let end_label = find(end_label, DASHES).map_or(end_label, |i| &end_label[..i]);
                return fail(
                    label,
                    format!(
                        "line {}: the END line is for {}, not for the BEGIN line's label",
                        line.number,
                        Found(end_label)
                    ),
                );
            }
            if line.text.starts_with(BEGIN) {
                return fail(
                    label,
                    format!(
                        "line {}: another BEGIN line comes before this block's END line",
                        line.number
                    ),
                );
            }
            if find(line.text, END).is_some() {
                return fail(
                    label,
                    format!(
                        "line {}: the END line is joined to the text before it; its line break \
                         was lost {LOST_LINE_BREAKS}: restore it",
                        line.number
                    ),
                );
            }
            if line.text.starts_with(b"Proc-Type:") && find(line.text, b"ENCRYPTED").is_some() {
                encrypted = true;
            }
        }
        let Some(end) = end else {
            return fail(
                label,
                format!("it has no END line: the input ends at line {last}; is it cut short?"),
            );
        };
        found.push(Block {
            position,
            line: begin.number,
            label,
            text: &bytes[begin.start..end],
            encrypted,
        });
    }
    Ok(found)
}

/// What is wrong with the text after a BEGIN line's label and its five dashes, if anything:
/// only spaces may follow, as for the decoder.
fn after_begin_label(line: usize, rest: &[u8]) -> Option<String> {
    if rest.iter().all(|&b| b == b' ') {
        return None;
    }
    Some(if rest.starts_with(b"-") {
        format!("line {line}: the BEGIN line ends in more than five dashes")
    } else if find(rest, END).is_some() {
        format!(
            "line {line}: the block is on one line; its line breaks were lost \
             {LOST_LINE_BREAKS}: restore them"
        )
    } else {
        format!(
            "line {line}: {} bytes follow the BEGIN line's closing `-----`; the line break after \
             it was lost {LOST_LINE_BREAKS}: restore it",
            rest.len()
        )
    })
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
        return origin.error(ErrorKind::NotPem { expected });
    }
    let mut found: Vec<String> = Vec::new();
    for block in blocks {
        let label = Found(block.label).to_string();
        if found.contains(&label) {
            continue;
        }
        if found.len() == MAX_FOUND_LABELS {
            found.push("…".to_owned());
            break;
        }
        found.push(label);
    }
    origin.error(ErrorKind::MissingPemBlock { expected, found })
}

/// A label found where another was expected: itself if known, else "a block with an unknown
/// label of N bytes".
struct Found<'a>(&'a [u8]);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Label(self.0).known() {
            Some(known) => f.write_str(known),
            None => write!(f, "a block with an unknown label of {} bytes", self.0.len()),
        }
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

fn is_end(line: &[u8], label: &[u8]) -> bool {
    line.strip_prefix(END)
        .and_then(|rest| rest.strip_prefix(label))
        .is_some_and(|rest| rest.starts_with(DASHES))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One line of an input, without its line break.
#[derive(Clone, Copy)]
struct Line<'a> {
    /// Its number, from 1.
    number: usize,
    /// Offset of its first byte in the input.
    start: usize,
    /// Offset just past its last byte (before the line break).
    end: usize,
    text: &'a [u8],
}

/// Lines split at `\n`, `\r\n` or `\r`, as the decoder splits them (it also splits `\r\n` in
/// two, which only adds an empty line), with their numbers and offsets.
struct Lines<'a> {
    bytes: &'a [u8],
    at: usize,
    number: usize,
}

impl<'a> Lines<'a> {
    /// The lines of `bytes`, numbered from `before + 1`.
    fn new(bytes: &'a [u8], before: usize) -> Self {
        Self {
            bytes,
            at: 0,
            number: before,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.at..).filter(|rest| !rest.is_empty())?;
        let start = self.at;
        let (len, consumed) = match rest.iter().position(|b| matches!(b, b'\n' | b'\r')) {
            Some(i) if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') => (i, i + 2),
            Some(i) => (i, i + 1),
            None => (rest.len(), rest.len()),
        };
        self.at += consumed;
        self.number += 1;
        Some(Line {
            number: self.number,
            start,
            end: start + len,
            text: &rest[..len],
        })
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
            .map(|b| (Label(b.label).to_string(), b.encrypted))
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
                ("unknown label of 7 bytes".to_owned(), false)
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
                matches!(scan(input), Err(e) if matches!(e.kind(), Some(ErrorKind::MalformedPem { .. }))),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// The error for `input`, as its message and its source's.
    fn problem(input: &[u8]) -> (String, String) {
        let error = match scan(input) {
            Err(error) => error,
            Ok(found) => panic!("{} scans: {found:?}", String::from_utf8_lossy(input)),
        };
        let source = std::error::Error::source(&error)
            .map(ToString::to_string)
            .unwrap_or_default();
        (error.to_string(), source)
    }

    #[test]
    fn lost_line_breaks_are_named_not_quoted() {
        let body = "MHcCAQEEIB5Lv7paSECRETSECRETSECRET";
        for separator in [" ", "", "  "] {
            let input = format!(
                "-----BEGIN EC PRIVATE KEY-----{separator}{body}{separator}-----END EC PRIVATE KEY-----"
            );
            let (message, source) = problem(input.as_bytes());
            assert_eq!(
                message,
                "credential `t`: mem: PEM block 1 (EC PRIVATE KEY) at line 1 is malformed"
            );
            assert_eq!(
                source,
                "line 1: the block is on one line; its line breaks were lost (pasted into YAML \
                 or an environment variable?): restore them"
            );
        }

        let input =
            format!("junk\n-----BEGIN PRIVATE KEY----- {body}\n-----END PRIVATE KEY-----\n");
        let (message, source) = problem(input.as_bytes());
        assert!(
            message.contains("PEM block 1 (PRIVATE KEY) at line 2"),
            "{message}"
        );
        assert!(
            source.starts_with("line 2: 35 bytes follow the BEGIN line's closing `-----`"),
            "{source}"
        );

        let input = format!("-----BEGIN PRIVATE KEY-----\r\n{body} -----END PRIVATE KEY-----\r\n");
        let (message, source) = problem(input.as_bytes());
        assert!(
            source.starts_with("line 2: the END line is joined to the text before it"),
            "{source}"
        );
        assert!(!message.contains("MHcC") && !source.contains("MHcC"));
    }

    #[test]
    fn unknown_labels_are_not_quoted() {
        let body = "MHcCAQEEIB5Lv7paSECRETSECRET";
        let input = format!("-----BEGIN EC PRIVATE KEY {body}-----\n{body}\n");
        let (message, source) = problem(input.as_bytes());
        assert!(message.contains("(unknown label of 43 bytes)"), "{message}");
        assert!(source.starts_with("it has no END line"), "{source}");

        let input = format!("-----BEGIN EC PRIVATE KEY {body}\n");
        let (message, source) = problem(input.as_bytes());
        assert!(message.contains("(unknown label of 43 bytes)"), "{message}");
        assert_eq!(source, "line 1: the BEGIN line does not end in `-----`");

        let input = format!("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END {body}-----\n");
        let (message, source) = problem(input.as_bytes());
        assert!(message.contains("(EC PRIVATE KEY) at line 1"), "{message}");
        assert_eq!(
            source,
            "line 3: the END line is for a block with an unknown label of 28 bytes, not for the \
             BEGIN line's label"
        );
        let input = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            problem(input).1,
            "line 3: the END line is for PRIVATE KEY, not for the BEGIN line's label"
        );
    }

    #[test]
    fn base64_problems_are_told_by_position() {
        let name = SecretName::new("t").expect("valid");
        let origin = Origin::new(&name, "mem");
        let decode = |input: &[u8]| {
            let found = blocks(origin, input).expect("scans");
            let error = found[0]
                .decode::<rustls_pki_types::CertificateDer<'static>>(origin)
                .expect_err("does not decode");
            let source = std::error::Error::source(&error).map(ToString::to_string);
            (error.to_string(), source.unwrap_or_default())
        };
        let (message, source) = decode(
            b"x\r\n-----BEGIN CERTIFICATE-----\r\nAAAA\r\nAB!D\r\n-----END CERTIFICATE-----\r\n",
        );
        assert!(
            message.contains("PEM block 1 (CERTIFICATE) at line 2"),
            "{message}"
        );
        assert_eq!(source, "line 4, column 3: a character that is not base64");
        let (_, source) =
            decode(b"-----BEGIN CERTIFICATE-----\rAA==\rAAAA\r-----END CERTIFICATE-----\r");
        assert_eq!(
            source,
            "line 2, column 3: `=` padding before the end of the base64 text"
        );
        let (_, source) =
            decode(b"-----BEGIN CERTIFICATE-----\nAAAAA\n-----END CERTIFICATE-----\n");
        assert!(
            source.starts_with("the base64 text has a wrong length"),
            "{source}"
        );
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
