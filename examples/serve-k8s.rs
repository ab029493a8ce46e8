//! Serve Kubernetes Secrets to Envoy over SDS, with Istio's conventions.
//!
//! ```text
//! cargo run --release --features k8s --example serve-k8s -- --namespace istio-system --listen unix:/run/sds.sock
//! ```
//!
//! The client is configured as kube-rs resolves it: `$KUBECONFIG` or `~/.kube/config`, else
//! the in-cluster service account. A Secret `httpbin-credential` with keys `cert` + `key` (or
//! `tls.crt` + `tls.key`) is served as `httpbin-credential` and
//! `kubernetes://httpbin-credential` (in the default namespace, the first `--namespace`) and as
//! `kubernetes://<ns>/httpbin-credential`; its `cacert` (or `ca.crt`, or a Secret
//! `httpbin-credential-cacert`) as `httpbin-credential-cacert`. Create, update or delete
//! Secrets with kubectl: Envoy gets the change without a restart.

mod serving;

use std::time::Duration;

use clap::Parser;
use sds::{
    core::publish,
    k8s::{K8sSource, Scope},
};
use serving::Listen;

/// Serve TLS credentials from Kubernetes Secrets to Envoy over SDS (xDS v3).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Namespace to watch (repeat for several). The first is the default namespace, whose
    /// Secrets are also served under their bare names. Default: the kubeconfig's namespace.
    #[arg(long = "namespace", short = 'n')]
    namespaces: Vec<String>,

    /// Watch Secrets in every namespace (needs a ClusterRole to list and watch secrets).
    #[arg(long, short = 'A', conflicts_with = "namespaces")]
    all_namespaces: bool,

    /// Where to listen: `HOST:PORT` (e.g. 127.0.0.1:15012) or `unix:/path/to/socket`.
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: Listen,

    /// How long to wait for a burst of Secret changes to settle before publishing.
    #[arg(long, default_value = "100ms", value_parser = serving::parse_duration)]
    debounce: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serving::init_tracing();
    let args = Args::parse();

    let client = kube::Client::try_default().await.map_err(|e| {
        format!("cannot configure a Kubernetes client (kubeconfig or in-cluster): {e}")
    })?;
    let default_namespace = args
        .namespaces
        .first()
        .cloned()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let scope = if args.all_namespaces {
        Scope::All
    } else if args.namespaces.is_empty() {
        Scope::Namespace(default_namespace.clone())
    } else {
        Scope::Namespaces(args.namespaces.clone())
    };
    tracing::info!(?scope, default_namespace, "listing Secrets");

    let source = K8sSource::new(client, scope)
        .default_namespace(default_namespace)
        .debounce(args.debounce);
    let (reader, driver) = publish(source);
    let driver = tokio::spawn(driver);
    let served = serving::serve(reader, args.listen).await;
    driver.abort();
    served
}
