//! What every serving example shares: the transport flags (`--listen`, `--socket-mode`, TLS,
//! `--insecure`), `--policy` rules files, logging, and a server that shuts down cleanly on
//! SIGINT/SIGTERM.

mod admin;
pub(crate) mod flags;
mod policy;
mod tls;
#[allow(
    dead_code,
    reason = "used by the examples that have an upstream: relay, tls-proxy"
)]
pub(crate) mod upstream;

use std::{path::PathBuf, sync::Arc, time::Duration};

use sds::{
    core::Reader,
    server::{
        Limits, SdsService, connections,
        policy::Policy,
        tls::{self as server_tls, ServerTls},
    },
};
use tokio::net::TcpListener;
use tokio_stream::{
    Stream, StreamExt as _,
    wrappers::{TcpListenerStream, UnixListenerStream},
};
use tracing_subscriber::EnvFilter;

pub(crate) use flags::{ChannelArgs, OperatorArgs, TlsFiles, Transport};
pub(crate) use policy::{Chosen, rules};

/// Logs to stderr, `info` unless `RUST_LOG` says otherwise, colours only on a terminal.
pub(crate) fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

/// Parses `100ms`, `2s`, `5m`, `12h` or `7d` (a bare number is milliseconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "ms"), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("too long: {s:?}"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("unknown unit in {s:?}: use ms, s, m, h or d")),
    }
}

/// Ends the process for a configuration that cannot be served: one `error:` line on stderr,
/// exit status 2 (as clap does for a bad flag).
pub(crate) fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

/// `error` and its sources, joined by `: `, on one line.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        line = format!("{line}: {error}");
        source = error.source();
    }
    line.replace('\n', " ")
}

/// The transport `args` ask for; ends the process (status 2) if the flags do not go together.
pub(crate) fn transport(args: &ChannelArgs) -> Transport {
    args.transport().unwrap_or_else(|problem| fail(&problem))
}

/// Everything the server needs besides the secrets: where it listens, its TLS, its policy.
pub(crate) struct Channel {
    listener: Listener,
    policy: Arc<dyn Policy>,
}

/// What to listen on.
enum Listener {
    Unix {
        path: PathBuf,
        mode: u32,
    },
    Tcp {
        addr: std::net::SocketAddr,
    },
    Tls {
        addr: std::net::SocketAddr,
        tls: ServerTls,
    },
}

impl Channel {
    /// Serves `transport` with `chosen` (or the transport's default policy): reads the TLS
    /// files, if any, and ends the process (status 2) if they cannot be used.
    pub(crate) async fn open(transport: Transport, chosen: Option<Chosen>) -> Channel {
        let listener = match transport.clone() {
            Transport::Unix { path, mode } => Listener::Unix { path, mode },
            Transport::Tcp { addr } => Listener::Tcp { addr },
            Transport::Tls { addr, files } => match tls::follow(&files).await {
                Ok(tls) => Listener::Tls { addr, tls },
                Err(problem) => fail(&problem),
            },
        };
        // Logged once the TLS files are known to be usable.
        let policy = policy::resolve(&transport, chosen);
        Channel { listener, policy }
    }
}

/// Starts the admin endpoint if `--admin` asks for one (at once: `/readyz` says when the
/// first snapshot is there), waits for the first snapshot, logs what is served, and serves it
/// over SDS on `channel` until SIGINT/SIGTERM.
pub(crate) async fn serve(
    mut reader: Reader,
    channel: Channel,
    operator: &OperatorArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let sds = SdsService::builder(reader.clone())
        .policy(channel.policy)
        .build();
    if let Some(addr) = operator.admin
        && let Err(problem) = admin::serve(&sds, addr).await
    {
        fail(&problem);
    }
    let snapshot = reader.ready().await?;
    tracing::info!(
        secrets = snapshot.len(),
        // The first few: a gateway may have thousands.
        names = %snapshot
            .iter()
            .take(10)
            .map(|(n, _)| sds::core::Untrusted::new(n.as_str(), 128).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        "serving"
    );
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)
        .add_service(sds.clone().into_server());
    let guard = connections::ConnectionLimits::default();
    // On SIGINT/SIGTERM: end every SDS stream (Envoy keeps its secrets and reconnects), then
    // let tonic drain the connections.
    let stop = {
        let sds = sds.clone();
        async move {
            signal("shutting down").await;
            sds.shutdown();
        }
    };

    let served = match channel.listener {
        Listener::Tcp { addr } => {
            let incoming = tcp(addr, "listening (TCP)").await?;
            let incoming = connections::guard(incoming, guard);
            drain(server.serve_with_incoming_shutdown(incoming, stop)).await
        }
        Listener::Tls { addr, tls } => {
            let incoming = tcp(addr, "listening (TLS over TCP)").await?;
            // `guard` outside: its handshake deadline covers the TLS handshake too.
            let incoming = connections::guard(server_tls::accept(incoming, tls), guard);
            drain(server.serve_with_incoming_shutdown(incoming, stop)).await
        }
        Listener::Unix { path, mode } => {
            let shown = path.display();
            // The policy checks the peer's uid too: the mode is a first fence.
            let listener = connections::bind_unix(&path, mode)
                .await
                .map_err(|e| format!("cannot listen on unix:{shown}: {e}"))?;
            tracing::info!(path = %shown, mode = %format!("{mode:04o}"), "listening (Unix socket)");
            let incoming = connections::guard(UnixListenerStream::new(listener), guard);
            let served = drain(server.serve_with_incoming_shutdown(incoming, stop)).await;
            let _ = std::fs::remove_file(&path);
            served
        }
    };
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `addr` and logs `what` with the address bound; the connections it accepts.
async fn tcp(
    addr: std::net::SocketAddr,
    what: &'static str,
) -> Result<impl Stream<Item = std::io::Result<tokio::net::TcpStream>> + Unpin, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(address = %local, "{what}");
    // As tonic does for the listeners it binds itself: responses are small and must not wait
    // for Nagle's algorithm (about 40 ms with delayed ACKs).
    Ok(TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    }))
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

/// Resolves on SIGINT or SIGTERM, logging `what` (unless empty) with the signal's name.
pub(crate) async fn signal(what: &str) {
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
