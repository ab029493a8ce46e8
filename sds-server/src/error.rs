//! The one error type of `sds-server`: configuration the server is given that it cannot use
//! (a policy rules file, the TLS credential of the SDS channel). Serving errors are gRPC
//! statuses sent to the client, not this type.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use sds_core::Untrusted;

/// Configuration `sds-server` cannot use, with what a user needs to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A secret the SDS channel's TLS is configured with is not in the snapshot.
    #[error("the SDS server's TLS secret `{name}` does not exist (expected a {expected})")]
    TlsSecretMissing {
        /// The secret's name.
        name: sds_core::SecretName,
        /// The kind it should be: `tls_certificate` or `validation_context`.
        expected: &'static str,
    },
    /// A secret the SDS channel's TLS is configured with is of the wrong kind.
    #[error("the SDS server's TLS secret `{name}` is a {found}, not a {expected}")]
    TlsSecretKind {
        /// The secret's name.
        name: sds_core::SecretName,
        /// The kind it should be: `tls_certificate` or `validation_context`.
        expected: &'static str,
        /// The kind it is.
        found: &'static str,
    },
    /// rustls cannot use a secret the SDS channel's TLS is configured with.
    #[error("rustls cannot use the SDS server's TLS secret `{name}`")]
    TlsSecretRejected {
        /// The secret's name.
        name: sds_core::SecretName,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// A policy rules file that cannot be used: which file, where in it, and what is wrong.
    #[error(transparent)]
    Rules(Box<RulesError>),
}

/// A policy rules file ([`RulesFile`](crate::policy::RulesFile)) that cannot be used: the file,
/// where in it when the problem has a place (the rule, counted from 1, and the line and column),
/// and the [`RulesProblem`].
///
/// Displays as ``policy rules file /etc/sds/rules.yaml, rule 2 (line 5, column 14): peer
/// pattern `user:1000` is not uid:N, gid:N, dns:NAME or a URI``. Text from the file (a pattern,
/// a key) is escaped and cut short; nothing else of the file is ever shown. Its
/// [`source`](std::error::Error::source) is the problem's source (an [`io::Error`]).
#[derive(Clone, Debug)]
pub struct RulesError {
    path: PathBuf,
    rule: Option<usize>,
    position: Option<(usize, usize)>,
    problem: RulesProblem,
}

/// What is wrong with a policy rules file: the kind of a [`RulesError`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesProblem {
    /// The file cannot be read (it does not exist, permissions): the source says why.
    #[error("cannot read it")]
    Unreadable {
        /// Why it could not be read.
        #[source]
        source: Arc<io::Error>,
    },

    /// The file is larger than [`RulesFile::MAX_BYTES`](crate::policy::RulesFile::MAX_BYTES).
    #[error("it is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// The file's length in bytes (at least, if it grew while being read).
        len: u64,
        /// The limit.
        max: u64,
    },

    /// The file is not UTF-8 text (at the position of the error).
    #[error("it is not UTF-8 text")]
    NotUtf8,

    /// The file is not YAML, or not of the rules file's shape: a syntax error, an unknown or
    /// missing key, a value of the wrong type.
    #[error("{message}")]
    Yaml {
        /// The YAML parser's message, escaped and cut short.
        message: String,
    },

    /// The file has no rules (it is empty, or its `rules` list is): it would grant nothing.
    #[error("it has no rules")]
    NoRules,

    /// The file has more rules than [`RulesFile::MAX_RULES`](crate::policy::RulesFile::MAX_RULES)
    /// (at the first rule over the limit).
    #[error("it has {count} rules, more than the limit of {max}")]
    TooManyRules {
        /// How many rules the file has.
        count: usize,
        /// The limit.
        max: usize,
    },

    /// A rule's `peers` or `secrets` list is empty.
    #[error("`{field}` is empty")]
    EmptyList {
        /// `peers` or `secrets`.
        field: &'static str,
    },

    /// A peer pattern is not one of the identity forms `uid:N`, `gid:N`, `dns:NAME` or a URI
    /// (`scheme://…`), with globs in its name part only.
    #[error("peer pattern `{pattern}` {problem}")]
    PeerPattern {
        /// The pattern, escaped and cut short.
        pattern: String,
        /// What is wrong with it, e.g. "is not uid:N, gid:N, dns:NAME or a URI".
        problem: &'static str,
    },

    /// A secret pattern can never match a secret name (it is empty, or has whitespace, control
    /// or non-ASCII characters).
    #[error("secret pattern `{pattern}` {problem}")]
    SecretPattern {
        /// The pattern, escaped and cut short.
        pattern: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Most characters of a path an error shows.
const SHOWN_PATH_CHARS: usize = 256;

// === impl RulesError ===

impl RulesError {
    /// `problem` with the file at `path`, at no particular place in it.
    pub(crate) fn new(path: &Path, problem: RulesProblem) -> Self {
        Self {
            path: path.to_owned(),
            rule: None,
            position: None,
            problem,
        }
    }

    /// This error, in rule `rule` (counted from 1).
    pub(crate) fn in_rule(mut self, rule: usize) -> Self {
        self.rule = Some(rule);
        self
    }

    /// This error, at `line` and `column` (counted from 1).
    pub(crate) fn at(mut self, line: usize, column: usize) -> Self {
        self.position = Some((line, column));
        self
    }

    /// The rules file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rule the problem is in, counted from 1, when it is in one.
    pub fn rule(&self) -> Option<usize> {
        self.rule
    }

    /// The line of the problem, counted from 1, when it has one.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The column of the problem (in characters, counted from 1), when it has one.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }

    /// What is wrong.
    pub fn problem(&self) -> &RulesProblem {
        &self.problem
    }
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.to_string_lossy();
        write!(
            f,
            "policy rules file {}",
            Untrusted::new(&path, SHOWN_PATH_CHARS)
        )?;
        match (self.rule, self.position) {
            (Some(rule), Some((line, column))) => {
                write!(f, ", rule {rule} (line {line}, column {column})")?;
            }
            (Some(rule), None) => write!(f, ", rule {rule}")?,
            (None, Some((line, column))) => write!(f, ", line {line}, column {column}")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for RulesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.problem)
    }
}
