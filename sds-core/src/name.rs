//! Validated resource names.

use std::{borrow::Borrow, fmt, sync::Arc};

use crate::{Error, Untrusted};

/// The suffix Istio appends to a credential's name to ask for its CA part (`<name>-cacert`).
pub const CACERT_SUFFIX: &str = "-cacert";

/// Longest resource name we accept, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Most characters of an invalid name that [`Error::InvalidName`] shows.
const MAX_SHOWN_CHARS: usize = 64;

/// The name of an SDS resource, e.g. `httpbin-credential`, `httpbin-credential-cacert` or
/// `kubernetes://istio-system/httpbin-credential`.
///
/// Validated once on construction: non-empty, at most [`MAX_NAME_LEN`] bytes, printable ASCII
/// without whitespace. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(Arc<str>);

// === impl SecretName ===

impl SecretName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl AsRef<str>) -> Result<Self, Error> {
        let name = name.as_ref();
        let problem = if name.is_empty() {
            Some("is empty")
        } else if name.len() > MAX_NAME_LEN {
            Some("is longer than 1024 bytes")
        } else if !name.bytes().all(|b| b.is_ascii_graphic()) {
            Some("contains whitespace, control or non-ASCII characters")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::InvalidName {
                name: Untrusted::new(name, MAX_SHOWN_CHARS).to_string(),
                problem,
            }),
            None => Ok(Self(Arc::from(name))),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the CA resource that goes with this credential: `<name>-cacert`.
    pub fn cacert(&self) -> SecretName {
        SecretName(Arc::from(format!("{}{CACERT_SUFFIX}", self.0)))
    }

    /// For `<name>-cacert`, the credential name `<name>`; `None` for any other name.
    pub fn strip_cacert(&self) -> Option<SecretName> {
        self.0
            .strip_suffix(CACERT_SUFFIX)
            .filter(|base| !base.is_empty())
            .map(|base| SecretName(Arc::from(base)))
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for SecretName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SecretName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SecretName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_istio_names() {
        for ok in [
            "httpbin-credential",
            "httpbin-credential-cacert",
            "kubernetes://istio-system/httpbin",
            "file-cert:/a/b~/c/d",
        ] {
            assert_eq!(SecretName::new(ok).expect(ok).as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "a b", "tab\there", "ünï", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(SecretName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_names_are_shown_escaped_and_cut_short() {
        let long = format!("a\nb{}", "x".repeat(1 << 20));
        let Err(Error::InvalidName { name, problem }) = SecretName::new(&long) else {
            panic!("a 1 MiB name is invalid")
        };
        assert_eq!(problem, "is longer than 1024 bytes");
        assert!(name.starts_with("a\\nbxxx"), "{name}");
        assert!(name.len() < 100, "{name}");
        let error = SecretName::new("é\u{1b}[2J").expect_err("not ASCII");
        assert_eq!(
            error.to_string(),
            "invalid secret name \"\\u{e9}\\u{1b}[2J\": contains whitespace, control or \
             non-ASCII characters"
        );
    }

    #[test]
    fn cacert_suffix() {
        let n = SecretName::new("httpbin").expect("valid");
        assert_eq!(n.cacert().as_str(), "httpbin-cacert");
        assert_eq!(n.cacert().strip_cacert(), Some(n.clone()));
        assert_eq!(n.strip_cacert(), None);
        assert_eq!(
            SecretName::new("-cacert").expect("valid").strip_cacert(),
            None
        );
    }
}
