//! The flags of `tls-proxy` that need parsing: `--host HOST=SECRET` (the upstream flags are
//! `serving::upstream`'s, shared with `relay`).

use std::str::FromStr;

use sds::core::SecretName;

/// `--host HOST=SECRET`: clients whose SNI matches `HOST` (a host name, or `*.` and a
/// domain) are presented the certificate of secret `SECRET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) pattern: String,
    pub(crate) secret: SecretName,
}

// === impl Route ===

impl FromStr for Route {
    type Err = String;

    /// `HOST=SECRET`. The pattern itself is checked when the resolver is built (it says
    /// what is wrong with it); here only its shape.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((pattern, secret)) = s.split_once('=') else {
            return Err("expected HOST=SECRET, e.g. www.example.com=www-credential".to_owned());
        };
        if pattern.is_empty() {
            return Err("the host before `=` is empty".to_owned());
        }
        let secret = SecretName::new(secret).map_err(|e| e.to_string())?;
        Ok(Route {
            pattern: pattern.to_owned(),
            secret,
        })
    }
}

/// Parses `--default` and `--client-ca`: a secret name.
pub(crate) fn secret_name(s: &str) -> Result<SecretName, String> {
    SecretName::new(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    //! `cargo test --example tls-proxy`

    use super::*;

    #[test]
    fn routes_are_host_equals_secret() {
        let route: Route = "*.example.com=wild-credential".parse().expect("a route");
        assert_eq!(route.pattern, "*.example.com");
        assert_eq!(route.secret.as_str(), "wild-credential");
        for bad in ["a.example.com", "=secret", "a.example.com="] {
            assert!(bad.parse::<Route>().is_err(), "{bad:?}");
        }
    }
}
