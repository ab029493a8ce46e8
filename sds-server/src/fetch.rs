//! `FetchSecrets`: one request, one answer, through tonic's codec. Its names are validated and
//! bounded as a stream's are.

use std::{
    collections::BTreeSet,
    sync::{Arc, atomic::Ordering},
};

use sds_core::Untrusted;

use sds_proto::{
    SECRET_TYPE_URL,
    envoy::service::{
        discovery::v3::{
            DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        },
        secret::v3::secret_discovery_service_server::SecretDiscoveryService,
    },
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    connections,
    framing::bounded,
    pump::decide,
    service::Inner,
    session::{SHOWN_CHARS, check_type, parse_names},
    status,
};

/// Answers `FetchSecrets` for the generated tonic server. The streaming methods never reach
/// it: [`SecretDiscoveryServer`](crate::SecretDiscoveryServer) serves them itself.
#[derive(Clone)]
pub(crate) struct Fetch {
    pub(crate) inner: Arc<Inner>,
}

type NoStream<T> = futures_util::stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Fetch {
    type StreamSecretsStream = NoStream<DiscoveryResponse>;
    type DeltaSecretsStream = NoStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Err(Status::internal(
            "StreamSecrets is served by SecretDiscoveryServer",
        ))
    }

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::internal(
            "DeltaSecrets is served by SecretDiscoveryServer",
        ))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        self.fetch(request).await.map_err(bounded)
    }
}

impl Fetch {
    async fn fetch(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let inner = &self.inner;
        let peer = connections::peer(request.extensions());
        let req = request.into_inner();
        let names = check_type(&req.type_url)
            .and_then(|()| parse_names(&req.resource_names, &inner.stream_limits()))
            .map_err(|refusal| inner.refuse(refusal))?;
        if names.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one secret in resource_names",
            ));
        }
        let mut granted = Vec::with_capacity(names.len());
        let mut denied = Vec::new();
        let mut reasons = BTreeSet::new();
        for name in &names {
            match decide(&*inner.policy, &peer, name).await {
                Ok(from) => granted.push((name, from)),
                Err(reason) => {
                    inner.counters.denied.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, secret = %name, %reason, "fetch denied by the policy");
                    denied.push(name);
                    reasons.insert(reason);
                }
            }
        }
        if !denied.is_empty() {
            let reasons = reasons.into_iter().collect::<Vec<_>>().join("; ");
            let reasons = Untrusted::new(&reasons, 4 * SHOWN_CHARS);
            return Err(Status::permission_denied(format!(
                "not allowed: {} ({reasons})",
                status::shown_names(denied.into_iter())
            )));
        }
        let snapshot = inner
            .reader
            .current()
            .ok_or_else(|| Status::unavailable("no secrets have been loaded yet"))?;
        let mut resources = Vec::new();
        let mut missing = Vec::new();
        let mut versions = Vec::new();
        for (name, from) in granted {
            match snapshot.get(from.as_str()) {
                Some(secret) => {
                    resources.extend(inner.encoder.any(name, secret));
                    versions.push(secret.version());
                }
                None => missing.push(name),
            }
        }
        if resources.is_empty() {
            return Err(Status::not_found(format!(
                "no such secret: {}",
                status::shown_names(missing.into_iter())
            )));
        }
        inner.counters.responses.fetch_add(1, Ordering::Relaxed);
        let version = match versions.as_slice() {
            [one] => *one,
            many => sds_core::Version::combine(many),
        };
        Ok(Response::new(DiscoveryResponse {
            version_info: version.to_string(),
            resources,
            canary: false,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: String::new(),
        }))
    }
}
