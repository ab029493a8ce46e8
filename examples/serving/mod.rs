//! What every serving example shares: the `--listen` address, logging, and a server that
//! shuts down cleanly on SIGINT/SIGTERM.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use sds::{
    core::Reader,
    server::{Limits, SdsService, connections, policy::AllowAnyPeer},
};
use tokio::net::TcpListener;
use tokio_stream::{
    StreamExt as _,
    wrappers::{TcpListenerStream, UnixListenerStream},
};
use tracing_subscriber::EnvFilter;

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

/// Parses `100ms` or `2s` (a bare number is milliseconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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

/// Where to listen: `HOST:PORT` or `unix:/path`.
#[derive(Clone, Debug)]
pub(crate) enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

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

/// Waits for the first snapshot, logs what is served, and serves it over SDS on `listen`
/// until SIGINT/SIGTERM.
pub(crate) async fn serve(
    mut reader: Reader,
    listen: Listen,
) -> Result<(), Box<dyn std::error::Error>> {
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
    let sds = match &listen {
        // Over a Unix socket: the server's own user and root only (peer credentials).
        Listen::Unix(_) => SdsService::new(reader),
        // Plain TCP proves nothing about a client: on loopback any local process reads every
        // secret; anywhere else, anyone who reaches the port would.
        Listen::Tcp(addr) if addr.ip().is_loopback() => {
            tracing::warn!(
                address = %addr,
                "plain TCP: every local user can read every secret; \
                 prefer a Unix socket (unix:/path)"
            );
            SdsService::builder(reader).policy(AllowAnyPeer).build()
        }
        Listen::Tcp(addr) => {
            return Err(format!(
                "refusing plain TCP on {addr}: anyone who reaches it would read every private \
                 key; listen on a Unix socket (unix:/path) or a loopback address"
            )
            .into());
        }
    };
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

    let served = match listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            tracing::info!(address = %listener.local_addr()?, "listening (TCP)");
            // As tonic does for the listeners it binds itself: responses are small and must
            // not wait for Nagle's algorithm (about 40 ms with delayed ACKs).
            let accepted = TcpListenerStream::new(listener).map(|conn| {
                let conn = conn?;
                conn.set_nodelay(true)?;
                Ok(conn)
            });
            let incoming = connections::guard(accepted, guard);
            drain(server.serve_with_incoming_shutdown(incoming, stop)).await
        }
        Listen::Unix(path) => {
            let shown = path.display();
            // Only the server's user may connect (the policy checks the peer's uid too).
            let listener = connections::bind_unix(&path, 0o600)
                .await
                .map_err(|e| format!("cannot listen on unix:{shown}: {e}"))?;
            tracing::info!(path = %shown, "listening (Unix socket)");
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
