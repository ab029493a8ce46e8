//! Relay secrets from an upstream SDS server to Envoy over SDS: a node-local cache in front
//! of a central server.
//!
//! ```text
//! # the upstream: a directory of credentials on a Unix socket
//! cargo run --release --example serve-dir -- --dir /etc/sds --listen unix:/run/sds-upstream.sock
//! # the relay in front of it, for Envoy on loopback TCP
//! cargo run --release --example relay -- --upstream unix:/run/sds-upstream.sock \
//!     --name httpbin --listen 127.0.0.1:15012
//! ```
//!
//! The relay subscribes upstream (`sds_source_xds::XdsSource`) to every `--name`, validates
//! what it receives, and serves it under the same names with the transports, `--policy`,
//! `--admin`, logging and clean shutdown of `serve-dir` (`examples/serving/`). It starts
//! serving once the upstream sent its first response. When the upstream goes away, the relay
//! keeps serving the last good secrets and reconnects with backoff; a secret the upstream
//! sends that does not validate is NACKed upstream and the last good version stays served.
//! The relay identifies itself upstream as the node `sds-relay` (cluster `sds-relay`).

mod serving;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use sds::core::Publish;
use sds_source_xds::{Api, XdsSource};
use serving::{ChannelArgs, OperatorArgs};

/// The node id and cluster the relay sends upstream.
const NODE: &str = "sds-relay";

/// Relay TLS credentials from an upstream SDS server to Envoy over SDS (xDS v3).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The upstream SDS server: `unix:/path/to/socket` or `http://HOST:PORT` (clear text).
    #[arg(long, value_name = "unix:/path | http://HOST:PORT")]
    upstream: Upstream,

    /// A secret name to relay: subscribed to upstream and served under the same name.
    /// Repeat for several.
    #[arg(long = "name", value_name = "NAME", required = true)]
    names: Vec<String>,

    /// The xDS variant spoken upstream.
    #[arg(long, value_enum, default_value_t = UpstreamApi::Sotw)]
    upstream_api: UpstreamApi,

    #[command(flatten)]
    channel: ChannelArgs,

    #[command(flatten)]
    operator: OperatorArgs,

    /// Who may have which secret, on every transport: a rules file (YAML or JSON; see
    /// `sds_server::policy::RulesFile`), reloaded when it changes, as for `serve-dir`.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

/// Where the upstream listens.
#[derive(Clone, Debug)]
enum Upstream {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for Upstream {
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

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Unix(path) => write!(f, "unix:{}", path.display()),
            Upstream::Tcp(uri) => f.write_str(uri),
        }
    }
}

/// `--upstream-api`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum UpstreamApi {
    /// State of the world (`StreamSecrets`), one stream per name, as Envoy.
    Sotw,
    /// Delta (`DeltaSecrets`), one stream for all names.
    Delta,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serving::init_tracing();
    let args = Args::parse();
    let transport = serving::transport(&args.channel);

    let source = match &args.upstream {
        Upstream::Unix(path) => Ok(XdsSource::unix(path)),
        Upstream::Tcp(uri) => XdsSource::tcp(uri),
    };
    let api = match args.upstream_api {
        UpstreamApi::Sotw => Api::Sotw,
        UpstreamApi::Delta => Api::Delta,
    };
    let source = match source.and_then(|s| s.names(&args.names)) {
        Ok(source) => source.node(NODE, NODE).api(api),
        Err(error) => serving::fail(&serving::describe(&error)),
    };

    let policy = match &args.policy {
        Some(path) => Some(serving::rules(path).await),
        None => None,
    };
    let channel = serving::Channel::open(transport, policy).await;

    let (reader, driver) = Publish::new(source)
        .expiry_warning(args.operator.expiry_warning)
        .start();
    let driver = tokio::spawn(driver);
    tracing::info!(
        upstream = %args.upstream,
        names = %args.names.join(", "),
        "waiting for the upstream's first response"
    );
    let served = serving::serve(reader, channel, &args.operator).await;
    driver.abort();
    served
}
