//! Serves the test API server until Ctrl-C, for poking at it with kubectl:
//!
//! ```text
//! cargo run -p sds-test-apiserver -- --port 8001 --anonymous --token admin=secret
//! kubectl --kubeconfig /tmp/…/kubeconfig-1.yaml get secrets
//! curl -H 'Authorization: Bearer secret' http://127.0.0.1:8001/api/v1/secrets
//! ```

use std::time::Duration;

use clap::Parser;
use sds_test_apiserver::{Access, ApiServer};

/// An in-process Kubernetes API server for core/v1 Secrets (plain HTTP on 127.0.0.1).
#[derive(Debug, Parser)]
struct Args {
    /// The port to listen on (0: any free port).
    #[arg(long, default_value_t = 8001)]
    port: u16,
    /// `USER=TOKEN` for full access, or `USER=TOKEN@ns1,ns2` for some namespaces. Repeatable.
    #[arg(long = "token", value_name = "USER=TOKEN[@NS,...]")]
    tokens: Vec<String>,
    /// Let requests without a token in with full access (kubectl sends no token to http://).
    #[arg(long)]
    anonymous: bool,
    /// The gitVersion that /version reports (kubectl's minor version follows it).
    #[arg(long, default_value = "v1.33.1")]
    version: String,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 60)]
    bookmark_interval: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sds_test_apiserver=debug".into()),
        )
        .init();
    let args = Args::parse();
    let mut builder = ApiServer::builder()
        .port(args.port)
        .version(&args.version)
        .bookmark_interval(Duration::from_secs(args.bookmark_interval));
    if args.anonymous {
        builder = builder.anonymous(Access::all());
    }
    let mut first_token = None;
    for spec in &args.tokens {
        // The argument holds a token: never echoed.
        let (user, rest) = spec.split_once('=').ok_or_else(|| {
            format!(
                "--token: expected USER=TOKEN[@NS,...], got {} characters without `=`",
                spec.chars().count()
            )
        })?;
        let (token, access) = match rest.split_once('@') {
            Some((token, namespaces)) => (token, Access::namespaces(namespaces.split(','))),
            None => (rest, Access::all()),
        };
        first_token.get_or_insert_with(|| token.to_owned());
        builder = builder.user(token, user, access);
    }
    let server = builder.start().await?;
    println!("listening on {}", server.url());
    let path = server.kubeconfig(first_token.as_deref().unwrap_or_default(), "default")?;
    println!("kubectl --kubeconfig {} get secrets", path.display());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
