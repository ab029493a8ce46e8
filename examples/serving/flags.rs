//! The flags every serving example shares: where to listen, and what a client must prove
//! (socket mode, TLS files, `--insecure`), checked together into one [`Transport`].

use std::{net::SocketAddr, path::PathBuf};

/// How clients reach the server: the transport flags of `serve-dir` and `serve-k8s`.
#[derive(clap::Args, Debug)]
pub(crate) struct ChannelArgs {
    /// Where to listen: `HOST:PORT` (e.g. 127.0.0.1:15012) or `unix:/path/to/socket`. Plain
    /// TCP (no TLS) is refused on an address other than loopback unless --insecure.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub(crate) listen: Listen,

    /// Permission bits of the Unix socket file, in octal (default 0600: only the server's own
    /// user; e.g. 0660 lets the proxies' group connect). Without --policy, only the server's
    /// own uid and root get secrets whatever the mode: grant a group with a --policy rule
    /// (`gid:N`).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    socket_mode: Option<u32>,

    /// Serve TCP over TLS with this certificate chain (PEM, leaf first). Needs --tls-key and
    /// --client-ca. Reloaded when the file changes: new handshakes use the new certificate,
    /// open connections and streams go on.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert, reloaded with it.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "client_ca"])]
    tls_key: Option<PathBuf>,

    /// With --tls-cert: every client must present a certificate this CA (PEM) signed, or the
    /// handshake fails. Reloaded when the file changes. Without --policy, every client with
    /// such a certificate gets every secret.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    client_ca: Option<PathBuf>,

    /// Allow plain TCP (no TLS) on an address other than loopback. Without --policy, anyone who
    /// reaches the port can then read every secret (a --policy grants nothing over plain TCP:
    /// no client proves an identity there).
    #[arg(long)]
    insecure: bool,
}

/// What an operator watches: the admin endpoint and the expiry warnings.
#[derive(clap::Args, Debug)]
pub(crate) struct OperatorArgs {
    /// Serve /metrics (Prometheus), /debug/clients and /debug/secrets (JSON), /healthz and
    /// /readyz (200 once the first snapshot is published) over HTTP on `HOST:PORT`, e.g.
    /// 127.0.0.1:15000. It tells who holds which secret: keep it on loopback or to operators.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) admin: Option<SocketAddr>,

    /// Warn (and again daily) about a served certificate this long before it expires, e.g.
    /// 14d or 36h; 0 warns only once it has expired (an expired certificate that is still the
    /// last good version is logged at ERROR daily, and kept).
    #[arg(long, default_value = "7d", value_parser = super::parse_duration)]
    pub(crate) expiry_warning: std::time::Duration,
}

/// Where to listen: `HOST:PORT` or `unix:/path`.
#[derive(Clone, Debug)]
pub(crate) enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The transport, every flag checked: a Unix socket, TLS, or plain TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A Unix socket whose file has the permission bits `mode`.
    Unix { path: PathBuf, mode: u32 },
    /// TCP over TLS, with required client certificates.
    Tls { addr: SocketAddr, files: TlsFiles },
    /// Plain TCP: on loopback, or elsewhere with `--insecure`.
    Tcp { addr: SocketAddr },
}

/// The files of the TLS channel: the server's certificate chain and key, the client CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: PathBuf,
}

/// The Unix socket's mode without `--socket-mode`: only the server's own user.
const DEFAULT_SOCKET_MODE: u32 = 0o600;

// === impl ChannelArgs ===

impl ChannelArgs {
    /// The transport these flags ask for, or why they do not go together.
    pub(crate) fn transport(&self) -> Result<Transport, String> {
        let tls = match (&self.tls_cert, &self.tls_key, &self.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            }),
            (None, None, None) => None,
            // clap's `requires_all` refuses these first.
            _ => return Err(TLS_FLAGS_TOGETHER.to_owned()),
        };
        match (&self.listen, tls) {
            (Listen::Unix(_), Some(_)) => Err(format!(
                "{TLS_FLAGS} serve TCP; a Unix socket is fenced by its file mode (--socket-mode) \
                 and the peer's uid and gid (--policy): listen on HOST:PORT for TLS"
            )),
            (Listen::Unix(_), None) if self.insecure => {
                Err("--insecure is for plain TCP, not a Unix socket".to_owned())
            }
            (Listen::Unix(path), None) => Ok(Transport::Unix {
                path: path.clone(),
                mode: self.socket_mode.unwrap_or(DEFAULT_SOCKET_MODE),
            }),
            (Listen::Tcp(_), _) if self.socket_mode.is_some() => {
                Err("--socket-mode is for a Unix socket (--listen unix:/path)".to_owned())
            }
            (Listen::Tcp(_), Some(_)) if self.insecure => Err(format!(
                "--insecure is for plain TCP; with {TLS_FLAGS} the channel is not plain"
            )),
            (Listen::Tcp(addr), Some(files)) => Ok(Transport::Tls { addr: *addr, files }),
            (Listen::Tcp(addr), None) if addr.ip().is_loopback() || self.insecure => {
                Ok(Transport::Tcp { addr: *addr })
            }
            (Listen::Tcp(addr), None) => Err(format!(
                "refusing plain TCP on {addr}: anyone who reaches it could read every private \
                 key; serve TLS with {TLS_FLAGS}, listen on a Unix socket (unix:/path) or a \
                 loopback address, or accept the risk with --insecure"
            )),
        }
    }
}

const TLS_FLAGS: &str = "--tls-cert, --tls-key and --client-ca";
const TLS_FLAGS_TOGETHER: &str = "--tls-cert, --tls-key and --client-ca go together";

// === impl Listen ===

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Listen::Unix(PathBuf::from(path))),
            Some(_) => Err("`unix:` needs a path, e.g. unix:/run/sds.sock".to_owned()),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("expected HOST:PORT or unix:/path ({e})")),
        }
    }
}

/// Parses permission bits in octal: `0600`, `660`, `0o660`; at most `0777`.
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("not an octal mode: {s:?} (e.g. 0600 or 0660)"))?;
    if mode > 0o777 {
        return Err(format!(
            "{s} has bits beyond 0777 (setuid, setgid, sticky): give permission bits only"
        ));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Args {
        #[command(flatten)]
        channel: ChannelArgs,
    }

    /// The transport `args` ask for, or the error: clap's (its kind) or ours.
    fn transport(args: &[&str]) -> Result<Transport, String> {
        let args = Args::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map_err(|e| format!("clap: {:?}", e.kind()))?;
        args.channel.transport()
    }

    fn tls_files() -> TlsFiles {
        TlsFiles {
            cert: "s.crt".into(),
            key: "s.key".into(),
            client_ca: "ca.crt".into(),
        }
    }

    #[test]
    fn socket_modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        assert_eq!(parse_mode("0"), Ok(0));
        assert_eq!(parse_mode("0777"), Ok(0o777));
        for bad in [
            "",
            "0o",
            "0680",
            "rw-------",
            "+0600",
            "-600",
            "0x180",
            " 600",
        ] {
            let error = parse_mode(bad).expect_err(bad);
            assert!(error.starts_with("not an octal mode"), "{bad}: {error}");
        }
        let error = parse_mode("4755").expect_err("setuid");
        assert!(error.contains("beyond 0777"), "{error}");

        let unix = |args: &[&str]| transport(args);
        assert_eq!(
            unix(&["--listen", "unix:/run/sds.sock"]),
            Ok(Transport::Unix {
                path: "/run/sds.sock".into(),
                mode: 0o600
            })
        );
        assert_eq!(
            unix(&["--listen", "unix:/run/sds.sock", "--socket-mode", "0660"]),
            Ok(Transport::Unix {
                path: "/run/sds.sock".into(),
                mode: 0o660
            })
        );
        assert_eq!(
            unix(&["--listen", "unix:/s", "--socket-mode", "0999"]),
            Err("clap: ValueValidation".to_owned())
        );
        assert_eq!(
            unix(&["--socket-mode", "0660"]),
            Err("--socket-mode is for a Unix socket (--listen unix:/path)".to_owned())
        );
    }

    #[test]
    fn the_tls_flags_go_together_and_with_tcp() {
        let all = [
            "--tls-cert",
            "s.crt",
            "--tls-key",
            "s.key",
            "--client-ca",
            "ca.crt",
        ];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = all.iter().chain(extra).copied().collect();
            transport(&args)
        };
        assert_eq!(
            with(&["--listen", "0.0.0.0:15012"]),
            Ok(Transport::Tls {
                addr: "0.0.0.0:15012".parse().expect("an address"),
                files: tls_files()
            })
        );
        // The default address.
        assert!(matches!(with(&[]), Ok(Transport::Tls { .. })));

        // One or two of the three: refused by clap, naming what is missing.
        for partial in [
            &all[..2],
            &all[2..4],
            &all[4..],
            &all[..4],
            &all[2..],
            &[all[0], all[1], all[4], all[5]],
        ] {
            assert_eq!(
                transport(partial),
                Err("clap: MissingRequiredArgument".to_owned()),
                "{partial:?}"
            );
        }
        let missing = Args::try_parse_from(["serve", "--tls-cert", "s.crt"])
            .expect_err("incomplete")
            .to_string();
        assert!(
            missing.contains("--tls-key <FILE>") && missing.contains("--client-ca <FILE>"),
            "{missing}"
        );

        let unix = with(&["--listen", "unix:/run/sds.sock"]).expect_err("TLS on a Unix socket");
        assert!(
            unix.starts_with("--tls-cert, --tls-key and --client-ca serve TCP"),
            "{unix}"
        );
        let insecure = with(&["--insecure"]).expect_err("TLS and --insecure");
        assert!(
            insecure.starts_with("--insecure is for plain TCP"),
            "{insecure}"
        );
    }

    #[test]
    fn plain_tcp_is_for_loopback_unless_insecure() {
        let tcp = |addr: &str| Transport::Tcp {
            addr: addr.parse().expect("an address"),
        };
        assert_eq!(transport(&[]), Ok(tcp("127.0.0.1:15012")));
        assert_eq!(transport(&["--listen", "[::1]:80"]), Ok(tcp("[::1]:80")));
        for exposed in ["0.0.0.0:15012", "10.1.2.3:15012", "[::]:15012"] {
            let refused = transport(&["--listen", exposed]).expect_err(exposed);
            assert!(
                refused.starts_with(&format!("refusing plain TCP on {exposed}: ")),
                "{refused}"
            );
            assert!(refused.contains("--insecure"), "{refused}");
            assert_eq!(
                transport(&["--listen", exposed, "--insecure"]),
                Ok(tcp(exposed))
            );
        }
        assert_eq!(
            transport(&["--listen", "unix:/s", "--insecure"]),
            Err("--insecure is for plain TCP, not a Unix socket".to_owned())
        );
        assert_eq!(
            transport(&["--listen", "unix:"]),
            Err("clap: ValueValidation".to_owned())
        );
    }
}
