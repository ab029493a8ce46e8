//! The upstream flags of the examples that take their secrets from another SDS server
//! (`relay`, `tls-proxy`): `--upstream`, its TLS files, `--upstream-api`,
//! `--upstream-backoff`, checked together into a [`Plan`], and the `XdsSource` a plan makes.

use std::{path::PathBuf, sync::Arc, time::Duration};

use sds::{
    core::{SecretName, publish},
    fs::FileSource,
};
use sds_rustls::{ClientCert, ServerVerifier, rustls};
use sds_source_xds::{Api, Backoff, XdsSource};

/// `--upstream-api`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum UpstreamApi {
    /// State of the world (`StreamSecrets`), one stream per name, as Envoy.
    Sotw,
    /// Delta (`DeltaSecrets`), one stream for all names.
    Delta,
}

/// The names of the TLS files' secrets in their own reader (they appear in its messages).
const CA: &str = "upstream-ca";
const CERTIFICATE: &str = "upstream-cert";

/// How to reach the upstream SDS server.
#[derive(clap::Args, Debug)]
pub(crate) struct UpstreamArgs {
    /// The upstream SDS server: `unix:/path/to/socket`, `http://HOST:PORT` (clear text) or
    /// `https://HOST:PORT` (TLS: needs --upstream-ca).
    #[arg(long, value_name = "unix:/path | http://HOST:PORT | https://HOST:PORT")]
    upstream: Endpoint,

    /// With an https upstream: the CA certificates (PEM) that verify the upstream server's
    /// certificate, which must be valid for HOST. Reloaded when the file changes (the next
    /// connection uses it).
    #[arg(long, value_name = "FILE")]
    upstream_ca: Option<PathBuf>,

    /// With an https upstream: the client certificate chain (PEM, leaf first) presented to
    /// the upstream for mutual TLS. Needs --upstream-key. Reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires = "upstream_key")]
    upstream_cert: Option<PathBuf>,

    /// The private key (PEM) of --upstream-cert, reloaded with it.
    #[arg(long, value_name = "FILE", requires = "upstream_cert")]
    upstream_key: Option<PathBuf>,

    /// The xDS variant spoken upstream.
    #[arg(long, value_enum, default_value_t = UpstreamApi::Sotw)]
    upstream_api: UpstreamApi,

    /// How long to wait before reconnecting to the upstream: INITIAL, doubled after every
    /// failure up to MAX, with jitter (e.g. 200ms..10s; units ms, s, m, h, d).
    #[arg(
        long,
        value_name = "INITIAL..MAX",
        default_value = "500ms..30s",
        value_parser = parse_backoff
    )]
    upstream_backoff: Backoff,
}

/// Where the upstream listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Unix(PathBuf),
    Http(String),
    Https(String),
}

/// The upstream flags, checked: what to connect to, how, and with which TLS files.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) endpoint: Endpoint,
    tls: Option<TlsFiles>,
    api: Api,
    backoff: Backoff,
}

/// The TLS files of an https upstream.
#[derive(Debug, PartialEq, Eq)]
struct TlsFiles {
    ca: PathBuf,
    /// The client certificate chain and key, for mutual TLS.
    client: Option<(PathBuf, PathBuf)>,
}

const TLS_FLAGS: &str = "--upstream-ca, --upstream-cert and --upstream-key";

// === impl UpstreamArgs ===

impl UpstreamArgs {
    /// The plan these flags ask for, or why they do not go together (one line).
    pub(crate) fn plan(&self) -> Result<Plan, String> {
        let client = match (&self.upstream_cert, &self.upstream_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            // clap's `requires` refuses these first.
            _ => return Err("--upstream-cert and --upstream-key go together".to_owned()),
        };
        let tls = match (&self.upstream, &self.upstream_ca) {
            (Endpoint::Https(_), Some(ca)) => Some(TlsFiles {
                ca: ca.clone(),
                client,
            }),
            (Endpoint::Https(_), None) => {
                return Err("an https:// upstream needs --upstream-ca FILE: the CA \
                            certificates that verify the upstream server"
                    .to_owned());
            }
            (Endpoint::Unix(_) | Endpoint::Http(_), ca) if ca.is_some() || client.is_some() => {
                return Err(format!(
                    "{TLS_FLAGS} are for an https://HOST:PORT upstream, not {}",
                    match self.upstream {
                        Endpoint::Unix(_) => "a Unix socket (unix:/path)",
                        _ => "clear text (http://)",
                    }
                ));
            }
            (Endpoint::Unix(_) | Endpoint::Http(_), _) => None,
        };
        Ok(Plan {
            endpoint: self.upstream.clone(),
            tls,
            api: match self.upstream_api {
                UpstreamApi::Sotw => Api::Sotw,
                UpstreamApi::Delta => Api::Delta,
            },
            backoff: self.upstream_backoff,
        })
    }
}

/// `INITIAL..MAX`, each a duration as `super::parse_duration` reads it.
pub(crate) fn parse_backoff(s: &str) -> Result<Backoff, String> {
    let (initial, max) = s
        .split_once("..")
        .ok_or_else(|| format!("expected INITIAL..MAX (e.g. 500ms..30s), not {s:?}"))?;
    let (initial, max) = (super::parse_duration(initial)?, super::parse_duration(max)?);
    if initial < Duration::from_millis(1) {
        return Err(
            "INITIAL must be at least 1ms: without a wait, a failing upstream \
                    is reconnected to in a busy loop"
                .to_owned(),
        );
    }
    if max < initial {
        return Err(format!(
            "MAX ({max:?}) is shorter than INITIAL ({initial:?})"
        ));
    }
    Ok(Backoff::new(initial, max))
}

// === impl Endpoint ===

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Endpoint::Unix(PathBuf::from(path))),
            Some(_) => Err("`unix:` needs a path, e.g. unix:/run/sds.sock".to_owned()),
            None if s.starts_with("http://") => Ok(Endpoint::Http(s.to_owned())),
            None if s.starts_with("https://") => Ok(Endpoint::Https(s.to_owned())),
            None => Err("expected unix:/path, http://HOST:PORT or https://HOST:PORT".to_owned()),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Http(uri) | Endpoint::Https(uri) => f.write_str(uri),
        }
    }
}

// === impl Plan ===

impl Plan {
    /// For the log: `none`, `server verified` or `mutual`.
    pub(crate) fn tls_mode(&self) -> &'static str {
        match &self.tls {
            None => "none",
            Some(TlsFiles { client: None, .. }) => "server verified",
            Some(TlsFiles {
                client: Some(_), ..
            }) => "mutual",
        }
    }
}

/// The source `plan` describes, subscribed to `names`; for TLS, its files read and
/// followed. Why not, in one line: an invalid endpoint or name, TLS files unusable now.
pub(crate) async fn source(plan: &Plan, names: &[String], node: &str) -> Result<XdsSource, String> {
    let source = match &plan.endpoint {
        Endpoint::Unix(path) => XdsSource::unix(path),
        Endpoint::Http(uri) | Endpoint::Https(uri) => {
            XdsSource::tcp(uri).map_err(|e| super::describe(&e))?
        }
    };
    let source = source
        .names(names)
        .map_err(|e| super::describe(&e))?
        .node(node, node)
        .api(plan.api)
        .backoff(plan.backoff);
    match &plan.tls {
        Some(files) => Ok(source.tls(follow(files).await?)),
        None => Ok(source),
    }
}

/// Reads and watches `files`; a TLS client configuration that verifies the upstream with
/// the CA and presents the client certificate (if any), following their files.
async fn follow(files: &TlsFiles) -> Result<rustls::ClientConfig, String> {
    let name = |name| SecretName::new(name).expect("a valid constant name");
    let (ca, certificate) = (name(CA), name(CERTIFICATE));
    let mut source = FileSource::new().bundle(ca.clone(), &files.ca);
    if let Some((cert, key)) = &files.client {
        source = source.credential(certificate.clone(), cert, key);
    }
    let (mut reader, driver) = publish(source);
    // Runs as long as the relay: a file that changes is read again, and the next
    // connection uses what it holds once it is valid.
    tokio::spawn(driver);
    let snapshot = reader
        .ready()
        .await
        .map_err(|_| "the upstream TLS files' watcher stopped".to_owned())?;
    let rejected: Vec<String> = snapshot
        .rejected()
        .map(|(_, error)| super::describe(&**error))
        .collect();
    if !rejected.is_empty() {
        return Err(format!(
            "cannot connect to the upstream over TLS: {}",
            rejected.join("; ")
        ));
    }
    let unusable = |e: &(dyn std::error::Error + 'static)| {
        format!(
            "cannot connect to the upstream over TLS: {}",
            super::describe(e)
        )
    };

    let (verifier, driver) = ServerVerifier::follow(reader.clone(), ca);
    tokio::spawn(driver);
    verifier.refresh().map_err(|e| unusable(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match files.client {
        Some(_) => {
            let (cert, driver) = ClientCert::follow(reader, certificate);
            tokio::spawn(driver);
            cert.refresh().map_err(|e| unusable(&e))?;
            config.with_client_cert_resolver(Arc::new(cert))
        }
        None => config.with_no_client_auth(),
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    //! `cargo test --example relay`

    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        upstream: UpstreamArgs,
    }

    /// The plan `args` ask for, or the error: clap's (its kind) or ours.
    fn plan(args: &[&str]) -> Result<Plan, String> {
        Flags::try_parse_from(std::iter::once("relay").chain(args.iter().copied()))
            .map_err(|e| format!("clap: {:?}", e.kind()))?
            .upstream
            .plan()
    }

    #[test]
    fn tls_flags_go_with_https_only() {
        let https = ["--upstream", "https://127.0.0.1:15012"];
        let with = |extra: &[&str]| plan(&https.iter().chain(extra).copied().collect::<Vec<_>>());
        let mutual = with(&[
            "--upstream-ca",
            "ca.crt",
            "--upstream-cert",
            "c.crt",
            "--upstream-key",
            "c.key",
        ])
        .expect("mutual TLS");
        assert_eq!(mutual.tls_mode(), "mutual");
        assert_eq!(
            with(&["--upstream-ca", "ca.crt"])
                .expect("server verified")
                .tls_mode(),
            "server verified"
        );
        let missing = with(&[]).expect_err("https without a CA");
        assert!(
            missing.starts_with("an https:// upstream needs --upstream-ca"),
            "{missing}"
        );
        assert_eq!(
            with(&["--upstream-ca", "ca.crt", "--upstream-cert", "c.crt"]),
            Err("clap: MissingRequiredArgument".to_owned())
        );
        assert_eq!(
            with(&["--upstream-ca", "ca.crt", "--upstream-key", "c.key"]),
            Err("clap: MissingRequiredArgument".to_owned())
        );

        for (upstream, what) in [
            ("unix:/run/sds.sock", "a Unix socket"),
            ("http://127.0.0.1:1", "clear text"),
        ] {
            let refused =
                plan(&["--upstream", upstream, "--upstream-ca", "ca.crt"]).expect_err(upstream);
            assert!(refused.starts_with(TLS_FLAGS), "{refused}");
            assert!(refused.contains(what), "{refused}");
            let refused = plan(&[
                "--upstream",
                upstream,
                "--upstream-cert",
                "c.crt",
                "--upstream-key",
                "c.key",
            ])
            .expect_err(upstream);
            assert!(refused.starts_with(TLS_FLAGS), "{refused}");
            assert_eq!(
                plan(&["--upstream", upstream]).expect("plain").tls_mode(),
                "none"
            );
        }
        assert_eq!(
            plan(&["--upstream", "ftp://x"]),
            Err("clap: ValueValidation".to_owned())
        );
    }

    #[test]
    fn backoff_is_initial_dot_dot_max() {
        let ms = Duration::from_millis;
        assert_eq!(
            parse_backoff("200ms..10s"),
            Ok(Backoff::new(ms(200), ms(10_000)))
        );
        assert_eq!(
            parse_backoff("1s..1s"),
            Ok(Backoff::new(ms(1000), ms(1000)))
        );
        assert_eq!(
            plan(&["--upstream", "unix:/s"]).expect("default").backoff,
            Backoff::DEFAULT
        );
        for bad in ["", "1s", "1s..", "..1s", "1x..2s", "0..1s", "2s..1s"] {
            assert!(parse_backoff(bad).is_err(), "{bad}");
        }
        assert!(
            parse_backoff("0ms..1s")
                .expect_err("zero")
                .contains("at least 1ms")
        );
        assert!(
            parse_backoff("2s..1s")
                .expect_err("reversed")
                .contains("shorter")
        );
    }
}
