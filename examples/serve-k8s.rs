//! Serve Kubernetes Secrets to Envoy over SDS, with Istio's conventions.
//!
//! ```text
//! cargo run --release --features k8s --example serve-k8s -- --namespace istio-system --listen unix:/run/sds.sock
//! cargo run --release --features k8s --example serve-k8s -- -A --listen 0.0.0.0:15012 \
//!     --tls-cert /etc/sds-tls/tls.crt --tls-key /etc/sds-tls/tls.key \
//!     --client-ca /etc/sds-tls/ca.crt --policy istio --trust-domain cluster.local
//! ```
//!
//! The client is configured as kube-rs resolves it: `$KUBECONFIG` or `~/.kube/config`, else
//! the in-cluster service account. A Secret `httpbin-credential` with keys `cert` + `key` (or
//! `tls.crt` + `tls.key`) is served as `httpbin-credential` and
//! `kubernetes://httpbin-credential` (in the default namespace, the first `--namespace`) and as
//! `kubernetes://<ns>/httpbin-credential`; its `cacert` (or `ca.crt`, or a Secret
//! `httpbin-credential-cacert`) as `httpbin-credential-cacert`. Create, update or delete
//! Secrets with kubectl: Envoy gets the change without a restart.
//!
//! Who gets which secret is as for `serve-dir` (`--policy FILE`, or each transport's
//! default), plus `--policy istio`: Istio's rule for gateways
//! (`sds_source_k8s::istio::GatewayPolicy`), which identifies a gateway by the SPIFFE ID of its
//! client certificate (so it needs TLS) and grants it the Secrets of its own namespace that
//! its service account may read (a SubjectAccessReview, which needs RBAC `create` on
//! `subjectaccessreviews`).

mod serving;

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use sds::{
    core::Publish,
    k8s::{K8sSource, Scope, istio::GatewayPolicy},
    server::policy::Policy as _,
};
use serving::{ChannelArgs, OperatorArgs};

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

    #[command(flatten)]
    channel: ChannelArgs,

    #[command(flatten)]
    operator: OperatorArgs,

    /// Who may have which secret, on every transport: `istio` for Istio's gateway rule (a
    /// gateway, identified by the SPIFFE ID of its TLS client certificate, gets the Secrets of
    /// its own namespace its service account may read), or a rules file (YAML or JSON; see
    /// `sds_server::policy::RulesFile`; write `./istio` for a file of that name), reloaded when
    /// it changes. A file that cannot be used at start is an error (exit status 2). Default:
    /// the server's own user and root on a Unix socket, every client with a certificate from
    /// --client-ca over TLS, every client over plain TCP.
    #[arg(long, value_name = "FILE|istio")]
    policy: Option<PathBuf>,

    /// With --policy istio: accept only SPIFFE IDs of this trust domain (e.g. cluster.local).
    /// Default: any trust domain the client CA signs for.
    #[arg(long, value_name = "TD")]
    trust_domain: Option<String>,

    /// How long to wait for a burst of Secret changes to settle before publishing.
    #[arg(long, default_value = "100ms", value_parser = serving::parse_duration)]
    debounce: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serving::init_tracing();
    let args = Args::parse();
    let transport = serving::transport(&args.channel);
    let istio = args.policy.as_deref() == Some("istio".as_ref());
    if args.trust_domain.is_some() && !istio {
        serving::fail("--trust-domain is for --policy istio");
    }
    let rules = match &args.policy {
        Some(path) if !istio => Some(serving::rules(path).await),
        _ => None,
    };

    let client = kube::Client::try_default().await.map_err(|e| {
        format!("cannot configure a Kubernetes client (kubeconfig or in-cluster): {e}")
    })?;
    let policy = match (rules, istio) {
        (Some(rules), _) => Some(rules),
        (None, true) => {
            let mut gateways = GatewayPolicy::new(client.clone());
            let mut what =
                "Istio gateways (SPIFFE ID, own namespace, SubjectAccessReview)".to_owned();
            if let Some(trust_domain) = &args.trust_domain {
                what = format!("{what}, trust domain {trust_domain}");
                gateways = gateways.trust_domain(trust_domain.clone());
            }
            Some(serving::Chosen {
                policy: gateways.boxed(),
                what,
                certificates_only: true,
            })
        }
        (None, false) => None,
    };
    let channel = serving::Channel::open(transport, policy).await;

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
    let (reader, driver) = Publish::new(source)
        .expiry_warning(args.operator.expiry_warning)
        .start();
    let driver = tokio::spawn(driver);
    let served = serving::serve(reader, channel, &args.operator).await;
    driver.abort();
    served
}
