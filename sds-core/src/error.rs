//! The one error type of `sds-core`.

use std::{fmt, sync::Arc, time::Duration};

use rustls_pki_types::UnixTime;

use crate::{KeyFormat, OcspProblem, SecretName};

/// Everything that can go wrong in `sds-core`: a name that is not a valid resource name, or a
/// credential input that cannot be served.
///
/// A credential error is layered like `rustls::Error::InvalidCertificate(CertificateError)`:
/// the context (which credential, where the input came from) is held once in a
/// [`CredentialError`], and an [`ErrorKind`] says what is wrong. Match on the kind with
/// [`Error::kind`]:
///
/// ```
/// # use sds_core::{Error, ErrorKind};
/// fn is_expired(err: &Error) -> bool {
///     matches!(err.kind(), Some(ErrorKind::Expired { .. }))
/// }
/// ```
///
/// No message, `Debug` output or [`source`](std::error::Error::source) ever contains bytes from
/// inside a PEM block or from a key input, however mangled the input is: problems are told by
/// position (block, line, column) and length, and a PEM label is quoted only when it is one
/// of the well-known labels (`CERTIFICATE`, `EC PRIVATE KEY`, …).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A resource name that cannot be used (empty, too long, whitespace or non-ASCII).
    #[error("invalid secret name \"{name}\": {problem}")]
    InvalidName {
        /// The offending name, escaped and cut short for printing (see
        /// [`Untrusted`](crate::Untrusted)).
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A credential input that cannot be served: which credential, where, and what is wrong.
    #[error(transparent)]
    Credential(Box<CredentialError>),
}

/// A credential input that cannot be served: the context, once, and the [`ErrorKind`].
///
/// Displays as ``credential `<name>`: <location>: <what is wrong>``, or without the location
/// when the problem is not at one input (a missing half of a pair). Its
/// [`source`](std::error::Error::source) is the kind's source (a [`ParseError`] or an
/// [`std::io::Error`]), so a chain never repeats the kind's message.
#[derive(Clone, Debug)]
pub struct CredentialError {
    credential: SecretName,
    location: Option<String>,
    kind: ErrorKind,
}

/// What is wrong with a credential input: the kind of a [`CredentialError`].
///
/// Certificate positions count from 1, the leaf, in the order of the input.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is empty: no bytes at all, or only whitespace.
    #[error("input is empty")]
    EmptyInput,

    /// An input could not be read (a file, a Secret's key): the source reports why.
    #[error("cannot read it")]
    Unreadable {
        /// Why it could not be read.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// One half of a pair is present without the other: a chain without its key, a key
    /// without its chain, a CRL without a CA. Such an error has no
    /// [`location`](CredentialError::location): `found` says where the present half is.
    #[error("found {found} but no {missing}")]
    MissingInput {
        /// The input that is present, e.g. `/etc/sds/httpbin/tls.crt`.
        found: String,
        /// What is missing beside it, e.g. `tls.key`.
        missing: String,
    },

    /// The input is larger than [`MAX_INPUT_LEN`](crate::MAX_INPUT_LEN).
    #[error("input is {len} bytes, more than the limit of {max}")]
    InputTooLarge {
        /// The input's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// The input looks like binary DER (or PKCS#12), not PEM text.
    #[error("input looks like binary DER, not PEM; sds needs PEM text with a {expected} block")]
    NotPem {
        /// The PEM block label(s) that were expected, e.g. `CERTIFICATE`.
        expected: &'static str,
    },

    /// The input holds no PEM block of the expected kind.
    #[error("expected a {expected} block, found {}", Found(.found))]
    MissingPemBlock {
        /// The PEM block label(s) that were expected, e.g. `CERTIFICATE`.
        expected: &'static str,
        /// What was found instead (possibly nothing): each block's label if it is a
        /// well-known one, else "a block with an unknown label of N bytes".
        found: Vec<String>,
    },

    /// A PEM block is malformed: no END line, a broken BEGIN line, its line breaks lost, or
    /// invalid base64.
    #[error("PEM block {block} ({label}) at line {line} is malformed")]
    MalformedPem {
        /// Position of the block among all PEM blocks of the input, from 1.
        block: usize,
        /// The line of the block's BEGIN line, from 1.
        line: usize,
        /// The block's label if it is a well-known one (`EC PRIVATE KEY`), else "unknown
        /// label of N bytes".
        label: String,
        /// What is wrong, by line and column: never the text itself.
        #[source]
        source: ParseError,
    },

    /// The private key is encrypted; sds serves keys to Envoy without a password.
    #[error(
        "private key is encrypted ({encryption}); \
         sds needs an unencrypted PKCS#8, PKCS#1 or SEC1 key"
    )]
    EncryptedKey {
        /// How the encryption was recognised, e.g. "`ENCRYPTED PRIVATE KEY` block".
        encryption: &'static str,
    },

    /// The key input holds more than one private key.
    #[error("holds {count} private keys, expected exactly one")]
    MultipleKeys {
        /// How many private key blocks were found.
        count: usize,
    },

    /// A certificate does not parse as X.509.
    #[error("{} is not a valid X.509 certificate", Nth(*.position))]
    InvalidCertificate {
        /// Position of the certificate in the input, from 1.
        position: usize,
        /// What the X.509 parser found wrong.
        #[source]
        source: ParseError,
    },

    /// A CRL does not parse as an X.509 certificate revocation list.
    #[error("CRL {position} is not a valid X.509 CRL")]
    InvalidCrl {
        /// Position of the CRL among the CRLs of the input, from 1.
        position: usize,
        /// What the X.509 parser found wrong.
        #[source]
        source: ParseError,
    },

    /// The private key does not parse, or is not a usable RSA, ECDSA or Ed25519 key.
    #[error("{} private key cannot be loaded", format_name(*.format))]
    InvalidKey {
        /// The encoding the key was given in.
        format: KeyFormat,
        /// What the key parser found wrong.
        #[source]
        source: ParseError,
    },

    /// The leaf certificate's key is of a type or size that Envoy (or sds) cannot use. The
    /// location is the certificate chain's.
    #[error("the leaf certificate has {key} key, which is not supported: {reason}")]
    UnsupportedKey {
        /// The key, described: e.g. "an RSA 1024-bit", "an ECDSA P-521".
        key: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// The private key is not the key of the leaf certificate. The location is the private
    /// key's.
    #[error("private key does not match the leaf certificate in {chain_location}")]
    KeyMismatch {
        /// Where the certificate chain came from.
        chain_location: String,
    },

    /// The chain holds the same certificate twice.
    #[error("{} and certificate {second} are the same certificate", Nth(*.first))]
    DuplicateCertificate {
        /// Position of the first copy, from 1.
        first: usize,
        /// Position of the second copy.
        second: usize,
    },

    /// A certificate of the chain is not followed by its issuer.
    #[error(
        "{} was issued by `{issuer}`, but certificate {} is `{next_subject}`; the chain must \
         list the leaf first, then each certificate's issuer",
        Nth(*.position), .position + 1
    )]
    ChainOrder {
        /// Position of the certificate whose successor is not its issuer, from 1.
        position: usize,
        /// That certificate's issuer.
        issuer: String,
        /// The subject of the certificate that follows it.
        next_subject: String,
    },

    /// A certificate is not valid yet.
    #[error(
        "{} is not valid before {}, and it is now {}",
        Nth(*.position), Utc(*.not_before), Utc(*.now)
    )]
    NotYetValid {
        /// Position of the certificate, from 1 (the leaf).
        position: usize,
        /// Start of its validity window.
        not_before: UnixTime,
        /// The time validation ran at.
        now: UnixTime,
    },

    /// A certificate has expired.
    #[error(
        "{} expired at {}, and it is now {}",
        Nth(*.position), Utc(*.not_after), Utc(*.now)
    )]
    Expired {
        /// Position of the certificate, from 1 (the leaf).
        position: usize,
        /// End of its validity window.
        not_after: UnixTime,
        /// The time validation ran at.
        now: UnixTime,
    },

    /// A CRL is past its `nextUpdate`: Envoy would fail every client handshake with
    /// "CRL has expired", so it is not served.
    #[error(
        "CRL {} (issuer {issuer}) expired at {} (its nextUpdate); it is now {}: publish a \
         fresh CRL",
        Nth(*.position), Utc(*.next_update), Utc(*.now)
    )]
    CrlExpired {
        /// Position of the CRL in its input, from 1.
        position: usize,
        /// The CRL's issuer.
        issuer: String,
        /// The CRL's `nextUpdate`.
        next_update: UnixTime,
        /// The time validation ran at.
        now: UnixTime,
    },

    /// An OCSP staple Envoy would not load: not a DER OCSP response, an unsuccessful one, or
    /// not for exactly one certificate. Times are not checked (see
    /// [`CertifiedKey::with_ocsp_staple`](crate::CertifiedKey::with_ocsp_staple)).
    #[error("invalid OCSP staple: {problem}")]
    InvalidOcspStaple {
        /// What is wrong, by position and structure.
        problem: OcspProblem,
    },

    /// The OCSP staple is for another certificate than the leaf: its serial number is not the
    /// leaf's (Envoy: "OCSP response does not match its TLS certificate").
    #[error(
        "the OCSP staple is for serial 0x{staple_serial}, but the leaf's serial is \
         0x{leaf_serial}"
    )]
    OcspStapleMismatch {
        /// The staple's serial number, hex as [`CertificateInfo::serial`] shows it.
        ///
        /// [`CertificateInfo::serial`]: crate::CertificateInfo::serial
        staple_serial: String,
        /// The leaf's serial number, hex.
        leaf_serial: String,
    },
}

// === impl Error ===

impl Error {
    /// A credential error: `kind` is wrong with the input of `credential` found at `location`
    /// (as given in [`Input`](crate::Input), escaped and cut short like
    /// [`Untrusted`](crate::Untrusted)).
    pub fn input(credential: SecretName, location: impl Into<String>, kind: ErrorKind) -> Self {
        CredentialError {
            credential,
            location: Some(location.into()),
            kind,
        }
        .into()
    }

    /// A credential error for one half of a pair found (at `found`) without the other
    /// (`missing`): an [`ErrorKind::MissingInput`] with no location.
    pub fn missing_input(
        credential: SecretName,
        found: impl Into<String>,
        missing: impl Into<String>,
    ) -> Self {
        CredentialError {
            credential,
            location: None,
            kind: ErrorKind::MissingInput {
                found: found.into(),
                missing: missing.into(),
            },
        }
        .into()
    }

    /// The credential part of this error, if it is about a credential's input.
    pub fn as_credential(&self) -> Option<&CredentialError> {
        match self {
            Error::InvalidName { .. } => None,
            Error::Credential(e) => Some(e),
        }
    }

    /// The credential this error is about, if it is about a credential's input.
    pub fn credential(&self) -> Option<&SecretName> {
        self.as_credential().map(CredentialError::credential)
    }

    /// Where the faulty input came from, if this error is about one input.
    pub fn location(&self) -> Option<&str> {
        self.as_credential().and_then(CredentialError::location)
    }

    /// What is wrong with the credential's input, if this error is about a credential.
    pub fn kind(&self) -> Option<&ErrorKind> {
        self.as_credential().map(CredentialError::kind)
    }

    /// A short, stable name for the problem: [`ErrorKind::name`] for a credential,
    /// `invalid_name` for a name that cannot be used.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidName { .. } => "invalid_name",
            Error::Credential(c) => c.kind.name(),
        }
    }

    /// Whether this rejection depends on the time validation ran at (a certificate not valid
    /// yet or expired, a CRL expired): the same input may pass when validated again later.
    pub fn depends_on_time(&self) -> bool {
        self.kind().is_some_and(ErrorKind::depends_on_time)
    }

    /// Whether `self` and `other` report the same problem, ignoring the time validation ran
    /// at (so a reload that finds the same expired certificate is not a new rejection).
    pub fn same_problem(&self, other: &Error) -> bool {
        self.without_clock().to_string() == other.without_clock().to_string()
    }

    fn without_clock(&self) -> Error {
        let mut e = self.clone();
        if let Error::Credential(c) = &mut e {
            match &mut c.kind {
                ErrorKind::NotYetValid { now, .. }
                | ErrorKind::Expired { now, .. }
                | ErrorKind::CrlExpired { now, .. } => {
                    *now = UnixTime::since_unix_epoch(Duration::ZERO);
                }
                _ => {}
            }
        }
        e
    }
}

impl From<CredentialError> for Error {
    fn from(error: CredentialError) -> Self {
        Error::Credential(Box::new(error))
    }
}

// === impl CredentialError ===

impl CredentialError {
    /// The credential the faulty input belongs to.
    pub fn credential(&self) -> &SecretName {
        &self.credential
    }

    /// Where the faulty input came from (a path, a Secret's key), escaped and cut short for
    /// printing; `None` for [`ErrorKind::MissingInput`], which names the input it found.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// What is wrong with the input.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "credential `{}`", self.credential)?;
        if let Some(location) = &self.location {
            write!(f, ": {location}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for CredentialError {
    /// The kind's source: the kind's own message is already part of this error's.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

// === impl ErrorKind ===

impl ErrorKind {
    /// A short, stable name for this kind of problem, in snake case (`expired`,
    /// `key_mismatch`, …): a metric label, a field to match logs on.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorKind::EmptyInput => "empty_input",
            ErrorKind::Unreadable { .. } => "unreadable",
            ErrorKind::MissingInput { .. } => "missing_input",
            ErrorKind::InputTooLarge { .. } => "input_too_large",
            ErrorKind::NotPem { .. } => "not_pem",
            ErrorKind::MissingPemBlock { .. } => "missing_pem_block",
            ErrorKind::MalformedPem { .. } => "malformed_pem",
            ErrorKind::EncryptedKey { .. } => "encrypted_key",
            ErrorKind::MultipleKeys { .. } => "multiple_keys",
            ErrorKind::InvalidCertificate { .. } => "invalid_certificate",
            ErrorKind::InvalidCrl { .. } => "invalid_crl",
            ErrorKind::InvalidKey { .. } => "invalid_key",
            ErrorKind::UnsupportedKey { .. } => "unsupported_key",
            ErrorKind::KeyMismatch { .. } => "key_mismatch",
            ErrorKind::DuplicateCertificate { .. } => "duplicate_certificate",
            ErrorKind::ChainOrder { .. } => "chain_order",
            ErrorKind::NotYetValid { .. } => "not_yet_valid",
            ErrorKind::Expired { .. } => "expired",
            ErrorKind::CrlExpired { .. } => "crl_expired",
            ErrorKind::InvalidOcspStaple { .. } => "invalid_ocsp_staple",
            ErrorKind::OcspStapleMismatch { .. } => "ocsp_staple_mismatch",
        }
    }

    /// Whether this problem depends on the time validation ran at: [`NotYetValid`],
    /// [`Expired`] or [`CrlExpired`].
    ///
    /// [`NotYetValid`]: ErrorKind::NotYetValid
    /// [`Expired`]: ErrorKind::Expired
    /// [`CrlExpired`]: ErrorKind::CrlExpired
    pub fn depends_on_time(&self) -> bool {
        matches!(
            self,
            ErrorKind::NotYetValid { .. }
                | ErrorKind::Expired { .. }
                | ErrorKind::CrlExpired { .. }
        )
    }
}

/// Why a parser rejected an input: the source of [`ErrorKind::MalformedPem`],
/// [`ErrorKind::InvalidCertificate`], [`ErrorKind::InvalidCrl`] and [`ErrorKind::InvalidKey`].
///
/// Opaque on purpose: the parsers behind it are not part of this crate's API. Cheap to clone.
/// Never contains bytes of the input: the parsers' own errors, which may quote it (the PEM
/// decoder quotes a broken BEGIN line whole), are described by position and length instead.
#[derive(Clone)]
pub struct ParseError(Cause);

/// Each message is built by this crate from fixed text, positions and lengths only.
#[derive(Clone)]
enum Cause {
    /// PEM framing or base64, found by our own scan of the block.
    Pem(Arc<str>),
    /// ASN.1 / X.509 structure error.
    Der(Arc<str>),
    /// The crypto library refused the key.
    Key(Arc<str>),
}

// === impl ParseError ===

impl ParseError {
    /// A PEM problem; `problem` must hold no input bytes.
    pub(crate) fn pem(problem: impl Into<Arc<str>>) -> Self {
        Self(Cause::Pem(problem.into()))
    }

    /// A DER problem; `problem` must hold no input bytes.
    pub(crate) fn der(problem: impl fmt::Display) -> Self {
        Self(Cause::Der(Arc::from(problem.to_string())))
    }

    /// A key the crypto library refused; `problem` must hold no input bytes.
    pub(crate) fn key(problem: impl fmt::Display) -> Self {
        Self(Cause::Key(Arc::from(problem.to_string())))
    }

    /// Whether the PEM text itself is broken (framing or base64).
    pub fn is_pem(&self) -> bool {
        matches!(self.0, Cause::Pem(_))
    }

    /// Whether the DER structure (X.509 certificate, CRL, key encoding) is broken.
    pub fn is_der(&self) -> bool {
        matches!(self.0, Cause::Der(_))
    }

    /// Whether the crypto library refused the private key.
    pub fn is_key(&self) -> bool {
        matches!(self.0, Cause::Key(_))
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Cause::Pem(problem) | Cause::Der(problem) | Cause::Key(problem) => f.write_str(problem),
        }
    }
}

impl fmt::Debug for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0 {
            Cause::Pem(_) => "pem",
            Cause::Der(_) => "der",
            Cause::Key(_) => "key",
        };
        f.debug_struct("ParseError")
            .field("kind", &kind)
            .field("message", &self.to_string())
            .finish()
    }
}

impl std::error::Error for ParseError {}

// === message helpers ===

/// "certificate 1 (the leaf)" or "certificate N".
struct Nth(usize);

impl fmt::Display for Nth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("certificate 1 (the leaf)"),
            n => write!(f, "certificate {n}"),
        }
    }
}

/// The list of labels found instead of the expected one.
struct Found<'a>(&'a [String]);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no PEM block");
        }
        for (i, label) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(label)?;
        }
        Ok(())
    }
}

fn format_name(format: KeyFormat) -> &'static str {
    match format {
        KeyFormat::Pkcs8 => "PKCS#8",
        KeyFormat::Pkcs1 => "PKCS#1",
        KeyFormat::Sec1 => "SEC1",
    }
}

/// A time as RFC 3339 UTC, e.g. `2024-05-01T12:00:00Z`.
pub(crate) struct Utc(pub(crate) UnixTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn error_is_small() {
        assert!(std::mem::size_of::<Error>() <= 48);
    }

    #[test]
    fn credential_errors_carry_their_context_once() {
        let name = SecretName::new("httpbin").expect("valid");
        let err = Error::input(
            name.clone(),
            "/etc/sds/httpbin/tls.key",
            ErrorKind::InvalidKey {
                format: KeyFormat::Pkcs8,
                source: ParseError::key("not a key"),
            },
        );
        assert_eq!(
            err.to_string(),
            "credential `httpbin`: /etc/sds/httpbin/tls.key: PKCS#8 private key cannot be loaded"
        );
        assert_eq!(err.credential(), Some(&name));
        assert_eq!(err.location(), Some("/etc/sds/httpbin/tls.key"));
        assert!(matches!(err.kind(), Some(ErrorKind::InvalidKey { .. })));
        // The chain goes straight to the parser's error: the kind's message is not repeated.
        let source = std::error::Error::source(&err).expect("has a source");
        assert_eq!(source.to_string(), "not a key");
        assert!(source.source().is_none());

        let missing = Error::missing_input(name, "/etc/sds/httpbin/tls.crt", "tls.key");
        assert_eq!(
            missing.to_string(),
            "credential `httpbin`: found /etc/sds/httpbin/tls.crt but no tls.key"
        );
        assert_eq!(missing.location(), None);
        assert!(std::error::Error::source(&missing).is_none());

        let invalid = SecretName::new("").expect_err("empty name");
        assert!(invalid.credential().is_none() && invalid.kind().is_none());
    }

    #[test]
    fn utc_formats_rfc3339() {
        let at = |secs| Utc(UnixTime::since_unix_epoch(Duration::from_secs(secs))).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
