//! `--admin ADDR`: the library's admin handler (`sds_server::admin::Admin`) on a TCP port of
//! its own, over HTTP/1.1 and HTTP/2 (hyper), beside the SDS listener.

use std::net::SocketAddr;

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use sds::server::{SdsService, admin::Admin};
use tokio::net::TcpListener;

/// Binds `addr` and serves the admin endpoints of `sds` there until the process ends.
pub(crate) async fn serve(sds: &SdsService, addr: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (--admin): {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {addr} (--admin): {e}"))?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            address = %local,
            "the admin endpoint is not on loopback: /debug/clients tells who holds which \
             secret; keep it to operators"
        );
    }
    tracing::info!(
        address = %local,
        "admin listening: /metrics, /debug/clients, /debug/secrets, /healthz, /readyz"
    );
    let admin = Admin::new(sds.clone());
    tokio::spawn(async move {
        loop {
            let (io, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "admin: cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(admin.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });
    Ok(())
}
