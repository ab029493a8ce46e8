//! The generated tonic client talking to the generated tonic server in
//! process (no sockets, no runtime): checks Envoy's gRPC paths, the prost
//! codec and that tonic's `codegen` feature alone is enough for both sides.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use sds_proto::SECRET_TYPE_URL;
use sds_proto::envoy::config::core::v3::Node;
use sds_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use sds_proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use sds_proto::envoy::service::secret::v3::secret_discovery_service_server::{
    SERVICE_NAME, SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use sds_proto::google::protobuf::Any;
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

/// Drives a future that never waits on I/O or timers to completion.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("future did not complete in process");
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn one<T: Send + 'static>(item: T) -> BoxStream<T> {
    Box::pin(tokio_stream::iter(vec![Ok(item)]))
}

fn payload(name: &str) -> Any {
    Any {
        type_url: SECRET_TYPE_URL.to_owned(),
        value: Bytes::from(format!("secret:{name}")),
    }
}

/// Answers each request with one response derived from it.
struct EchoSds;

#[tonic::async_trait]
impl SecretDiscoveryService for EchoSds {
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = BoxStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let first = request
            .into_inner()
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stream"))?;
        Ok(Response::new(one(DeltaDiscoveryResponse {
            system_version_info: "delta".to_owned(),
            resources: first
                .resource_names_subscribe
                .iter()
                .map(|name| Resource {
                    name: name.clone(),
                    version: "1".to_owned(),
                    resource: Some(payload(name)),
                    aliases: Vec::new(),
                })
                .collect(),
            type_url: first.type_url,
            removed_resources: first.resource_names_unsubscribe,
            nonce: "d1".to_owned(),
        })))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let first = request
            .into_inner()
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stream"))?;
        Ok(Response::new(one(sotw_response(first, "s1"))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Ok(Response::new(sotw_response(request.into_inner(), "f1")))
    }
}

fn sotw_response(request: DiscoveryRequest, nonce: &str) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: request.node.map(|n| n.id).unwrap_or_default(),
        resources: request.resource_names.iter().map(|n| payload(n)).collect(),
        canary: false,
        type_url: request.type_url,
        nonce: nonce.to_owned(),
    }
}

/// Records the request path of every call before handing it on.
struct RecordPaths<S> {
    inner: S,
    paths: Rc<RefCell<Vec<String>>>,
}

impl<S, B> Service<http::Request<B>> for RecordPaths<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.paths.borrow_mut().push(req.uri().path().to_owned());
        self.inner.call(req)
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: "node-1".to_owned(),
        cluster: "web".to_owned(),
        user_agent_name: "envoy".to_owned(),
    })
}

#[test]
fn service_name_is_envoys() {
    assert_eq!(
        SERVICE_NAME,
        "envoy.service.secret.v3.SecretDiscoveryService"
    );
    assert_eq!(
        <SecretDiscoveryServiceServer<EchoSds> as NamedService>::NAME,
        SERVICE_NAME
    );
}

#[test]
fn client_and_server_agree_on_envoys_paths() {
    let paths = Rc::new(RefCell::new(Vec::new()));
    let mut client = SecretDiscoveryServiceClient::new(RecordPaths {
        inner: SecretDiscoveryServiceServer::new(EchoSds),
        paths: Rc::clone(&paths),
    });

    // FetchSecrets (unary).
    let fetched = block_on(client.fetch_secrets(DiscoveryRequest {
        node: node(),
        resource_names: vec!["server_cert".to_owned()],
        type_url: SECRET_TYPE_URL.to_owned(),
        ..Default::default()
    }))
    .expect("FetchSecrets")
    .into_inner();
    assert_eq!(fetched.version_info, "node-1");
    assert_eq!(fetched.nonce, "f1");
    assert_eq!(fetched.type_url, SECRET_TYPE_URL);
    assert_eq!(fetched.resources, [payload("server_cert")]);

    // StreamSecrets (bidi, state of the world).
    let streamed = block_on(async {
        let request = tokio_stream::iter(vec![DiscoveryRequest {
            node: node(),
            resource_names: vec!["a".to_owned(), "b".to_owned()],
            type_url: SECRET_TYPE_URL.to_owned(),
            ..Default::default()
        }]);
        let mut responses = client.stream_secrets(request).await?.into_inner();
        responses.message().await
    })
    .expect("StreamSecrets")
    .expect("one response");
    assert_eq!(streamed.nonce, "s1");
    assert_eq!(streamed.resources, [payload("a"), payload("b")]);

    // DeltaSecrets (bidi, incremental).
    let delta = block_on(async {
        let request = tokio_stream::iter(vec![DeltaDiscoveryRequest {
            node: node(),
            type_url: SECRET_TYPE_URL.to_owned(),
            resource_names_subscribe: vec!["c".to_owned()],
            resource_names_unsubscribe: vec!["old".to_owned()],
            ..Default::default()
        }]);
        let mut responses = client.delta_secrets(request).await?.into_inner();
        responses.message().await
    })
    .expect("DeltaSecrets")
    .expect("one response");
    assert_eq!(delta.nonce, "d1");
    assert_eq!(delta.type_url, SECRET_TYPE_URL);
    assert_eq!(delta.removed_resources, ["old"]);
    assert_eq!(delta.resources.len(), 1);
    assert_eq!(delta.resources[0].name, "c");
    assert_eq!(delta.resources[0].resource, Some(payload("c")));

    assert_eq!(
        *paths.borrow(),
        [
            "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
            "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
            "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
        ]
    );
}

#[test]
fn unknown_method_is_unimplemented() {
    let mut server = SecretDiscoveryServiceServer::new(EchoSds);
    let request = http::Request::builder()
        .method("POST")
        .uri("/envoy.service.secret.v3.SecretDiscoveryService/NoSuchMethod")
        .body(tonic::body::Body::empty())
        .expect("request");
    let response: Result<_, Infallible> = block_on(server.call(request));
    let response = response.unwrap_or_else(|never| match never {});
    let status = response
        .headers()
        .get("grpc-status")
        .expect("grpc-status header");
    assert_eq!(status, &(tonic::Code::Unimplemented as i32).to_string());
}
