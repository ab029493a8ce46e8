//! The flags of `tls-proxy` that need parsing: `--host HOST=SECRET` and `--upstream`.

use std::{fmt, path::PathBuf, str::FromStr};

use sds::core::SecretName;

/// `--host HOST=SECRET`: clients whose SNI matches `HOST` (a host name, or `*.` and a
/// domain) are presented the certificate of secret `SECRET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) pattern: String,
    pub(crate) secret: SecretName,
}

/// Where the upstream SDS server listens (`--upstream`): `unix:/path` or `http://HOST:PORT`
/// (clear text). `relay`'s TLS to the upstream (`https://`, `--upstream-ca`) is not wired here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upstream {
    Unix(PathBuf),
    Tcp(String),
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

// === impl Upstream ===

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Upstream::Unix(PathBuf::from(path))),
            Some(_) => Err("`unix:` needs a path, e.g. unix:/run/sds.sock".to_owned()),
            None if s.starts_with("http://") => Ok(Upstream::Tcp(s.to_owned())),
            None if s.starts_with("https://") => Err(
                "https is not supported by this example: use unix:/path or http://HOST:PORT"
                    .to_owned(),
            ),
            None => Err("expected unix:/path or http://HOST:PORT".to_owned()),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Unix(path) => write!(f, "unix:{}", path.display()),
            Upstream::Tcp(uri) => f.write_str(uri),
        }
    }
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

    #[test]
    fn upstreams_are_unix_paths_or_http_uris() {
        assert_eq!(
            "unix:/run/sds.sock".parse(),
            Ok(Upstream::Unix("/run/sds.sock".into()))
        );
        assert_eq!(
            "http://127.0.0.1:15012".parse(),
            Ok(Upstream::Tcp("http://127.0.0.1:15012".to_owned()))
        );
        for bad in ["unix:", "https://sds:443", "127.0.0.1:15012"] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad:?}");
        }
    }
}
