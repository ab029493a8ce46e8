//! Which Secret a gateway's resource name means: istiod's `credentials.ParseResourceName`,
//! with bare names read as `kubernetes://` ones.

use std::fmt;

use sds_core::Untrusted;

use crate::{
    keys::{MAX_SHOWN_CHARS, SecretId},
    naming::SCHEME,
};

/// Why a resource name is not a Kubernetes Secret a gateway can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotASecret<'a> {
    /// `scheme://…` with a scheme other than `kubernetes://`.
    OtherScheme { name: &'a str, scheme: &'a str },
    /// An empty part, or more than one `/`.
    Malformed { name: &'a str },
}

/// The Secret that `name` (`kubernetes://NS/NAME`, `kubernetes://NAME` or `NAME`) means for a
/// peer of `namespace`: names without a namespace are the peer's namespace's, as istiod reads
/// them (the proxy's namespace, not the server's default one).
pub(crate) fn resolve<'a>(name: &'a str, namespace: &str) -> Result<SecretId, NotASecret<'a>> {
    let (path, has_scheme) = match name.strip_prefix(SCHEME) {
        Some(path) => (path, true),
        None => match name.split_once("://") {
            Some((scheme, _)) => return Err(NotASecret::OtherScheme { name, scheme }),
            None => (name, false),
        },
    };
    let (secret_namespace, secret) = match (path.split_once('/'), has_scheme) {
        (Some(parts), true) => parts,
        // `a/b` without the scheme is no Secret's name.
        (Some(_), false) => return Err(NotASecret::Malformed { name }),
        (None, _) => (namespace, path),
    };
    if secret_namespace.is_empty() || secret.is_empty() || secret.contains('/') {
        return Err(NotASecret::Malformed { name });
    }
    Ok(SecretId::new(secret_namespace, secret))
}

/// For a denial: what is wrong with the name, escaped.
impl fmt::Display for NotASecret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NotASecret::OtherScheme { name, scheme } => write!(
                f,
                "secret {} is of the scheme {}://; a gateway gets only Kubernetes Secrets \
                 ({SCHEME}NAMESPACE/NAME, {SCHEME}NAME or NAME)",
                Untrusted::new(name, MAX_SHOWN_CHARS),
                Untrusted::new(scheme, MAX_SHOWN_CHARS)
            ),
            NotASecret::Malformed { name } => write!(
                f,
                "secret {} is not the name of a Kubernetes Secret ({SCHEME}NAMESPACE/NAME, \
                 {SCHEME}NAME or NAME)",
                Untrusted::new(name, MAX_SHOWN_CHARS)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_in_the_peers_namespace() {
        let ok = |name: &str| resolve(name, "apps").expect("a Secret");
        assert_eq!(ok("httpbin"), SecretId::new("apps", "httpbin"));
        assert_eq!(ok("kubernetes://httpbin"), SecretId::new("apps", "httpbin"));
        assert_eq!(
            ok("kubernetes://apps/httpbin"),
            SecretId::new("apps", "httpbin")
        );
        assert_eq!(
            ok("kubernetes://other/httpbin"),
            SecretId::new("other", "httpbin")
        );
        assert_eq!(
            ok("httpbin-cacert"),
            SecretId::new("apps", "httpbin-cacert")
        );
    }

    #[test]
    fn other_names_are_not_secrets() {
        assert_eq!(
            resolve("sds://httpbin", "apps"),
            Err(NotASecret::OtherScheme {
                name: "sds://httpbin",
                scheme: "sds"
            })
        );
        assert!(matches!(
            resolve("kubernetes-gateway://apps/httpbin", "apps"),
            Err(NotASecret::OtherScheme {
                scheme: "kubernetes-gateway",
                ..
            })
        ));
        for malformed in [
            "kubernetes://",
            "kubernetes:///httpbin",
            "kubernetes://apps/",
            "kubernetes://apps/a/b",
            "apps/httpbin",
        ] {
            assert_eq!(
                resolve(malformed, "apps"),
                Err(NotASecret::Malformed { name: malformed }),
                "{malformed}"
            );
        }
        assert_eq!(
            NotASecret::OtherScheme {
                name: "sds://x",
                scheme: "sds"
            }
            .to_string(),
            "secret sds://x is of the scheme sds://; a gateway gets only Kubernetes Secrets \
             (kubernetes://NAMESPACE/NAME, kubernetes://NAME or NAME)"
        );
    }
}
