//! Our SDS server in-process, served as the examples serve it.

use std::fs;

use sds::{
    core::Reader,
    server::{Limits, SdsService, connections, policy},
};
use sds_test_util::envoy::SdsEndpoint;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

/// Serves `reader` over SDS on `endpoint`, as the examples do, on the current runtime (the
/// server stops with it); returns the service, for its view of the clients.
///
/// The recommended HTTP/2 stream limit, guarded connections. Over a Unix socket, the default
/// policy: Envoy (or a relay) runs as the same user as the server. Over TCP (no identity
/// without TLS), any peer.
pub(crate) async fn serve(reader: Reader, endpoint: &SdsEndpoint) -> SdsService {
    let sds = match endpoint {
        SdsEndpoint::Tcp(_) => SdsService::builder(reader)
            .policy(policy::AllowAnyPeer)
            .build(),
        _ => SdsService::new(reader),
    };
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)
        .add_service(sds.clone().into_server());
    let guard = connections::ConnectionLimits::default();
    match endpoint {
        SdsEndpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
            let incoming = connections::guard(TcpListenerStream::new(listener), guard);
            tokio::spawn(router.serve_with_incoming(incoming));
        }
        SdsEndpoint::Unix(path) => {
            let _ = fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path).expect("bind");
            let incoming = connections::guard(UnixListenerStream::new(listener), guard);
            tokio::spawn(router.serve_with_incoming(incoming));
        }
        other => panic!("unsupported endpoint {other:?}"),
    }
    sds
}
