//! A small HTTPS terminator (rustls + hyper) whose certificates come from a directory of
//! credentials or from an upstream SDS server, picked by SNI and rotated without a restart.
//!
//! ```text
//! cargo run --release --example tls-proxy -- --demo
//! cargo run --release --example tls-proxy -- --dir /etc/sds \
//!     --host www.example.com=www-credential --host '*.example.com=wildcard-credential' \
//!     --default fallback-credential --listen 127.0.0.1:8443
//! cargo run --release --example tls-proxy -- --upstream unix:/run/sds.sock \
//!     --host httpbin.example.com=httpbin --client-ca httpbin-cacert
//! ```
//!
//! The credentials come from `--dir DIR` (`sds_source_fs::DirSource`, the layout of
//! `serve-dir`: `DIR/<name>/tls.crt` + `tls.key` is the secret `<name>`, `DIR/<name>/ca.crt`
//! is `<name>-cacert`) or from `--upstream unix:/path | http://HOST:PORT | https://HOST:PORT`
//! (`sds_source_xds::XdsSource`, subscribed to every secret named below). They are published
//! (`sds_core::Publish`) and followed by `sds_rustls::ServerCerts` (the server's certificate,
//! by SNI) and, with `--client-ca`, `sds_rustls::ClientVerifier` (mutual TLS).
//!
//! - `--host HOST=SECRET` (repeatable): clients whose SNI is `HOST` (or matches `*.domain`,
//!   one label) get the certificate of `SECRET`; an exact host wins over a wildcard.
//!   `--default SECRET`: clients without SNI, or whose SNI no `--host` matches; without it,
//!   their handshakes are refused.
//! - `--client-ca SECRET`: every client must present a certificate chaining to that
//!   `validation_context` secret (e.g. `httpbin-cacert`, the `ca.crt` of `DIR/httpbin/`).
//! - `--listen 127.0.0.1:8443` (TCP; logged at WARN off loopback: the answer tells which
//!   secret served the connection), ALPN `h2` and `http/1.1`.
//!
//! Every request is answered `200` with a short text: the host (SNI), the secret and its
//! version, and with `--client-ca`, the client certificate's subject and SANs. Nothing is
//! forwarded: `examples/tls_proxy/response.rs` is where a real proxy calls its backend.
//!
//! Rotations: a new version of a secret is used from the next handshake (logged at INFO by
//! `sds_rustls`: "secret rotated; new handshakes use the new version"); open connections
//! keep the certificate of their handshake. A version that does not validate (a key that
//! does not match, garbage) is logged at WARN naming the secret, never its key, and never
//! presented: the last good version stays. The proxy listens at once, before the first
//! snapshot: until a secret has a usable version, handshakes that need it are refused
//! (`access_denied`; a client certificate is refused while the CA secret has none);
//! "credentials ready" is logged once the first snapshot is prepared.
//!
//! Bounds: a TLS handshake must complete within `--handshake-timeout` (10 s) or the
//! connection is closed; at most `--max-connections` (1,024) connections are open at once
//! (further clients wait in the listen backlog); HTTP/1.1 request headers must arrive within
//! 10 s and HTTP/2 connections are pinged every 30 s. Failed handshakes are logged at DEBUG
//! with the peer's address (`RUST_LOG=tls_proxy=debug`). SIGINT/SIGTERM: stop accepting,
//! finish the requests in flight (at most 5 s; a second signal stops at once).

// tls-proxy uses the logging, error and duration helpers only.
#[allow(dead_code, unused_imports)]
mod serving;

#[path = "tls_proxy/demo.rs"]
mod demo;
#[path = "tls_proxy/flags.rs"]
mod flags;
#[path = "tls_proxy/response.rs"]
mod response;
#[path = "tls_proxy/server.rs"]
mod server;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use sds::{
    core::{Publish, Reader, SecretName},
    fs::DirSource,
};
use sds_rustls::{ClientVerifier, Driver, ServerCerts, rustls};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use flags::Route;

/// The node id and cluster the proxy sends upstream.
const NODE: &str = "tls-proxy";

/// An HTTPS terminator whose certificates, picked by SNI, come from a directory of
/// credentials or an upstream SDS server and rotate without a restart.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory of credentials, laid out as for `serve-dir`: `DIR/<name>/tls.crt` and
    /// `tls.key` are the secret `<name>`, `DIR/<name>/ca.crt` is `<name>-cacert`. Watched:
    /// changes are used by new connections. It must exist at start.
    #[arg(long, required_unless_present_any = ["upstream", "demo"], conflicts_with = "upstream")]
    dir: Option<PathBuf>,

    /// Or take the secrets from another SDS server, subscribed to every secret named by
    /// --host, --default and --client-ca: `--upstream unix:/path | http://HOST:PORT |
    /// https://HOST:PORT` with the TLS and backoff flags of `relay`.
    #[command(flatten)]
    upstream: Option<serving::upstream::UpstreamArgs>,

    /// Present the certificate of secret SECRET to clients whose SNI is HOST, or matches it
    /// if it is `*.domain` (one label). Repeat for several hosts.
    #[arg(long = "host", value_name = "HOST=SECRET")]
    hosts: Vec<Route>,

    /// Present the certificate of this secret to clients without SNI or whose SNI no --host
    /// matches. Without it, their handshakes are refused.
    #[arg(long = "default", value_name = "SECRET", value_parser = flags::secret_name)]
    default_secret: Option<SecretName>,

    /// Require client certificates chaining to this `validation_context` secret (e.g.
    /// `httpbin-cacert`), rotated like the certificates.
    #[arg(long, value_name = "SECRET", value_parser = flags::secret_name)]
    client_ca: Option<SecretName>,

    /// Where to listen for HTTPS (TCP).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,

    /// Close a connection whose TLS handshake has not completed within this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = serving::parse_duration)]
    handshake_timeout: Duration,

    /// At most this many connections at once; further clients wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// With --dir: how long to wait for a burst of file changes to settle before reloading.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = serving::parse_duration)]
    debounce: Duration,

    /// With --dir: how often to read the directory again although no change was reported.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = serving::parse_duration)]
    rescan: Duration,

    /// Generate a demo CA, an `httpbin.example.com` credential and a client certificate
    /// (under `target/tls-proxy-demo`, or --dir), serve them, and print the curl command.
    #[arg(long, conflicts_with = "upstream")]
    demo: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serving::init_tracing();
    let mut args = Args::parse();

    let demo = match args.demo {
        true => {
            let root = args.dir.clone().unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tls-proxy-demo")
            });
            let demo = demo::prepare(&root)?;
            if args.hosts.is_empty() && args.default_secret.is_none() {
                args.hosts.push(Route {
                    pattern: demo::HOST.to_owned(),
                    secret: SecretName::new(demo::SECRET)?,
                });
            }
            args.dir = Some(demo.credentials.clone());
            Some(demo)
        }
        false => None,
    };
    if args.hosts.is_empty() && args.default_secret.is_none() {
        serving::fail("nothing to serve: give --host HOST=SECRET (repeatable) or --default SECRET");
    }

    let (reader, publisher) = publish(&args).await;
    let publisher = tokio::spawn(publisher);

    let Tls {
        config,
        certs,
        verifier,
        drivers,
    } = tls(&reader, &args)?;
    let drivers: Vec<_> = drivers.into_iter().map(tokio::spawn).collect();

    let listener = TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| serving::fail(&format!("cannot listen on {}: {e}", args.listen)));
    let address = listener.local_addr()?;
    if !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "listening off loopback: every client that reaches it is told which secret (and \
             version) served it"
        );
    }
    tracing::info!(
        %address,
        hosts = %args
            .hosts
            .iter()
            .map(|r| format!("{}={}", r.pattern, r.secret))
            .collect::<Vec<_>>()
            .join(", "),
        default = args.default_secret.as_ref().map(tracing::field::display),
        client_ca = args.client_ca.as_ref().map(tracing::field::display),
        "tls-proxy listening"
    );
    if let Some(demo) = &demo {
        demo.print(address, args.client_ca.is_some());
    }
    tokio::spawn(ready(reader, certs.clone(), verifier));

    let server = server::Server {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        certs,
        handshake_timeout: args.handshake_timeout,
        max_connections: usize::try_from(args.max_connections)?,
    };
    server
        .run(
            listener,
            serving::signal("shutting down"),
            serving::signal("stopping now"),
        )
        .await;
    for driver in drivers {
        driver.abort();
    }
    publisher.abort();
    tracing::info!("stopped");
    Ok(())
}

/// What terminates TLS: the rustls configuration, the resolver and verifier in it, and
/// their drivers (to spawn).
struct Tls {
    config: rustls::ServerConfig,
    certs: ServerCerts,
    verifier: Option<ClientVerifier>,
    drivers: Vec<Driver>,
}

/// The TLS of `args` over the secrets of `reader`: certificates by SNI, ALPN `h2` and
/// `http/1.1`, client certificates with `--client-ca`. Ends the process (status 2) on a host
/// pattern that is not one.
fn tls(reader: &Reader, args: &Args) -> Result<Tls, rustls::Error> {
    let mut certs = ServerCerts::builder(reader.clone());
    for route in &args.hosts {
        certs = certs.host(route.pattern.clone(), route.secret.clone());
    }
    if let Some(name) = &args.default_secret {
        certs = certs.default_secret(name.clone());
    }
    let (certs, driver) = certs
        .build()
        .unwrap_or_else(|error| serving::fail(&serving::describe(&error)));
    let mut drivers = vec![driver];
    let verifier = args.client_ca.as_ref().map(|name| {
        let (verifier, driver) = ClientVerifier::follow(reader.clone(), name.clone());
        drivers.push(driver);
        verifier
    });

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let resolver = Arc::new(certs.clone());
    let mut config = match &verifier {
        Some(verifier) => config
            .with_client_cert_verifier(Arc::new(verifier.clone()))
            .with_cert_resolver(resolver),
        None => config.with_no_client_auth().with_cert_resolver(resolver),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        config,
        certs,
        verifier,
        drivers,
    })
}

/// The reader of the secrets `args` name, from `--dir` or `--upstream`, and the publisher's
/// driver (to spawn). Ends the process (status 2) if the source cannot be used.
async fn publish(args: &Args) -> (Reader, sds::core::Driver) {
    match (&args.dir, &args.upstream) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                serving::fail(&format!(
                    "credential directory {} does not exist or is not a directory",
                    dir.display()
                ));
            }
            let source = DirSource::new(dir)
                .debounce(args.debounce)
                .rescan(args.rescan);
            tracing::info!(dir = %dir.display(), "reading credentials");
            Publish::new(source).start()
        }
        (None, Some(upstream)) => {
            let plan = upstream
                .plan()
                .unwrap_or_else(|problem| serving::fail(&problem));
            let names: Vec<String> = secret_names(args).iter().map(|n| n.to_string()).collect();
            let source = serving::upstream::source(&plan, &names, NODE)
                .await
                .unwrap_or_else(|problem| serving::fail(&problem));
            tracing::info!(upstream = %plan.endpoint, tls = plan.tls_mode(), "subscribing upstream");
            Publish::new(source).start()
        }
        // clap requires one of --dir, --upstream, --demo, and --demo sets --dir.
        (None, None) => serving::fail("give --dir DIR or --upstream ADDRESS"),
    }
}

/// Every secret the proxy follows, each once: the hosts', the default, the client CA.
fn secret_names(args: &Args) -> Vec<SecretName> {
    let mut names: Vec<SecretName> = Vec::new();
    let all = args.hosts.iter().map(|r| &r.secret);
    for name in all.chain(&args.default_secret).chain(&args.client_ca) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Logs "credentials ready" once the first snapshot is published and prepared for rustls
/// (`sds_rustls` has logged each secret it could not use, by name, at WARN).
async fn ready(mut reader: Reader, certs: ServerCerts, verifier: Option<ClientVerifier>) {
    let Ok(snapshot) = reader.ready().await else {
        return;
    };
    let usable = certs.refresh().is_ok() && verifier.is_none_or(|v| v.refresh().is_ok());
    tracing::info!(
        secrets = snapshot.len(),
        all_usable = usable,
        "credentials ready: handshakes use the first snapshot"
    );
}
