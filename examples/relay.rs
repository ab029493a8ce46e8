//! Relay secrets from an upstream SDS server to Envoy over SDS: a node-local cache in front
//! of a central server.
//!
//! ```text
//! # the upstream: a directory of credentials on a Unix socket
//! cargo run --release --example serve-dir -- --dir /etc/sds --listen unix:/run/sds-upstream.sock
//! # the relay in front of it, for Envoy on loopback TCP
//! cargo run --release --example relay -- --upstream unix:/run/sds-upstream.sock \
//!     --name httpbin --listen 127.0.0.1:15012
//! # or an upstream served over mutual TLS (serve-dir --tls-cert/--tls-key/--client-ca)
//! cargo run --release --example relay -- --upstream https://sds.example:15012 \
//!     --upstream-ca /etc/relay/upstream-ca.crt \
//!     --upstream-cert /etc/relay/tls.crt --upstream-key /etc/relay/tls.key \
//!     --name httpbin --listen unix:/run/sds.sock
//! ```
//!
//! The relay subscribes upstream (`sds_source_xds::XdsSource`) to every `--name`, validates
//! what it receives, and serves it under the same names with the transports, `--policy`,
//! `--admin`, logging and clean shutdown of `serve-dir` (`examples/serving/`). It starts
//! serving once the upstream sent its first response. When the upstream goes away, the relay
//! keeps serving the last good secrets and reconnects with backoff (`--upstream-backoff`,
//! 500ms..30s by default, as Envoy); a secret the upstream sends that does not validate is
//! NACKed upstream and the last good version stays served. The relay identifies itself
//! upstream as the node `sds-relay` (cluster `sds-relay`).
//!
//! The upstream is `unix:/path`, `http://HOST:PORT` (clear text) or `https://HOST:PORT`. Over
//! `https`, `--upstream-ca` (required) is the CA bundle that verifies the upstream's
//! certificate, which must be valid for HOST (a DNS name, or an IP address SAN for an
//! address); `--upstream-cert` and `--upstream-key` (together, optional) are the client
//! certificate presented for mutual TLS. These files are read, validated and watched as
//! credentials are (`sds_source_fs::FileSource`), and followed by `sds_rustls`'
//! `ServerVerifier` and `ClientCert`: when they change, the next connection to the upstream
//! (the next reconnection) uses the new ones, while an open connection keeps its handshake; a
//! bad file keeps the last good one (WARN). Files unusable at start, and flags that do not go
//! together, are one `error:` line and exit status 2.

mod serving;

use std::path::PathBuf;

use clap::Parser;
use sds::core::Publish;
use serving::{ChannelArgs, OperatorArgs};

/// The node id and cluster the relay sends upstream.
const NODE: &str = "sds-relay";

/// Relay TLS credentials from an upstream SDS server to Envoy over SDS (xDS v3).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    upstream: serving::upstream::UpstreamArgs,

    /// A secret name to relay: subscribed to upstream and served under the same name.
    /// Repeat for several.
    #[arg(long = "name", value_name = "NAME", required = true)]
    names: Vec<String>,

    #[command(flatten)]
    channel: ChannelArgs,

    #[command(flatten)]
    operator: OperatorArgs,

    /// Who may have which secret, on every transport: a rules file (YAML or JSON; see
    /// `sds_server::policy::RulesFile`), reloaded when it changes, as for `serve-dir`.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serving::init_tracing();
    let args = Args::parse();
    // Every flag is checked before anything is read or bound.
    let transport = serving::transport(&args.channel);
    let plan = args
        .upstream
        .plan()
        .unwrap_or_else(|problem| serving::fail(&problem));

    let policy = match &args.policy {
        Some(path) => Some(serving::rules(path).await),
        None => None,
    };
    let source = serving::upstream::source(&plan, &args.names, NODE)
        .await
        .unwrap_or_else(|problem| serving::fail(&problem));
    let channel = serving::Channel::open(transport, policy).await;

    let (reader, driver) = Publish::new(source)
        .expiry_warning(args.operator.expiry_warning)
        .start();
    let driver = tokio::spawn(driver);
    tracing::info!(
        upstream = %plan.endpoint,
        tls = plan.tls_mode(),
        names = %args.names.join(", "),
        "waiting for the upstream's first response"
    );
    let served = serving::serve(reader, channel, &args.operator).await;
    driver.abort();
    served
}
