//! An admin HTTP handler to mount on your own server: metrics, what every client holds,
//! what is served, liveness and readiness. It binds nothing.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | the registry's metrics: OpenMetrics text if the scraper accepts it (Prometheus does), else the Prometheus text format 0.0.4 |
//! | `/debug/clients` | JSON: every open stream and what its client holds ([`SdsService::clients`]) |
//! | `/debug/secrets` | JSON: the snapshot's version, every secret served ([`SdsService::secrets`]) and every rejected input with its error |
//! | `/healthz` | `200` while the process answers |
//! | `/readyz` | `200` once the service has its first snapshot (for Kubernetes, once every namespace was listed), `503` before |
//!
//! Only `GET` and `HEAD`; anything else is `405`, an unknown path `404`. The JSON never
//! holds key material; client text in it (node ids, NACK messages) is escaped and cut short
//! as in the logs. Expose it on loopback or to operators only: it tells who holds what.
//!
//! [`Admin`] is a `tower::Service` for hyper, axum or tonic's router; [`Admin::respond`]
//! answers one request for any other server.
//!
//! ```no_run
//! # async fn demo(sds: sds_server::SdsService) -> Result<(), Box<dyn std::error::Error>> {
//! use hyper_util::{
//!     rt::{TokioExecutor, TokioIo},
//!     server::conn::auto,
//!     service::TowerToHyperService,
//! };
//!
//! let admin = sds_server::admin::Admin::new(sds);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15000").await?;
//! loop {
//!     let (io, _) = listener.accept().await?;
//!     let service = TowerToHyperService::new(admin.clone());
//!     tokio::spawn(async move {
//!         let _ = auto::Builder::new(TokioExecutor::new())
//!             .serve_connection(TokioIo::new(io), service)
//!             .await;
//!     });
//! }
//! # }
//! ```

use std::{
    convert::Infallible,
    fmt,
    future::{Ready, ready},
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::{
    SdsService,
    inventory::{Client, SecretInfo},
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// The admin handler of an [`SdsService`]; cheap to clone. See the [module](self) docs.
#[derive(Clone)]
pub struct Admin {
    sds: SdsService,
    registry: Arc<Registry>,
}

/// The body of `/debug/clients`.
#[derive(Serialize)]
struct Clients {
    streams: usize,
    clients: Vec<Client>,
}

/// The body of `/debug/secrets`.
#[derive(Serialize)]
struct Secrets {
    /// The snapshot's version, `null` before the first.
    version: Option<String>,
    secrets: Vec<SecretInfo>,
    rejected: Vec<Rejected>,
}

#[derive(Serialize)]
struct Rejected {
    name: String,
    reason: &'static str,
    /// sds-core's error: where and what, never a byte of key material.
    error: String,
}

impl Admin {
    /// The admin handler of `sds`, with a registry of its own holding the service's metrics
    /// ([`SdsService::register_metrics`]).
    pub fn new(sds: SdsService) -> Self {
        let mut registry = Registry::default();
        sds.register_metrics(&mut registry);
        Self::with_registry(sds, registry)
    }

    /// The admin handler of `sds`, serving `registry` at `/metrics`: yours, with your metrics
    /// and the service's (call [`SdsService::register_metrics`] on it first).
    pub fn with_registry(sds: SdsService, registry: Registry) -> Self {
        Self {
            sds,
            registry: Arc::new(registry),
        }
    }

    /// The answer to a request for `path` (the query, if any, is ignored), with the value
    /// of its `Accept` header if it has one.
    pub fn respond(
        &self,
        method: &Method,
        path: &str,
        accept: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let known = matches!(
            path,
            "/metrics" | "/debug/clients" | "/debug/secrets" | "/healthz" | "/readyz"
        );
        if !known {
            return text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /debug/clients, /debug/secrets, /healthz or /readyz\n",
            );
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/metrics" => self.metrics(accept),
            "/debug/clients" => {
                let clients = self.sds.clients();
                json(&Clients {
                    streams: clients.len(),
                    clients,
                })
            }
            "/debug/secrets" => json(&self.secrets()),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            _ if self.sds.is_ready() => text(StatusCode::OK, "ready\n"),
            _ => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the source has not yielded its first complete read yet\n",
            ),
        }
    }

    fn metrics(&self, accept: Option<&str>) -> Response<Full<Bytes>> {
        let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
        let mut body = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut body, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut body, &self.registry)
        };
        if encoded.is_err() {
            // Only a collector's own error: nothing of it is worth more than the status.
            tracing::warn!("metrics could not be encoded");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded\n",
            );
        }
        let content_type = if openmetrics {
            OPENMETRICS
        } else {
            PROMETHEUS_TEXT
        };
        with_type(StatusCode::OK, content_type, Bytes::from(body))
    }

    fn secrets(&self) -> Secrets {
        let snapshot = self.sds.inner.reader.current();
        Secrets {
            version: snapshot.as_ref().map(|s| s.version().to_string()),
            secrets: self.sds.secrets(),
            rejected: snapshot
                .iter()
                .flat_map(|s| s.rejected())
                .map(|(name, error)| Rejected {
                    name: name.to_string(),
                    reason: error.reason(),
                    error: error.to_string(),
                })
                .collect(),
        }
    }
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("sds", &self.sds)
            .finish_non_exhaustive()
    }
}

impl<B> tower_service::Service<Request<B>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok());
        ready(Ok(self.respond(
            request.method(),
            request.uri().path(),
            accept,
        )))
    }
}

fn json(value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(StatusCode::OK, JSON, Bytes::from(body))
        }
        Err(error) => {
            tracing::warn!(%error, "admin: JSON could not be written");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "JSON could not be written\n",
            )
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, TEXT, Bytes::from_static(body.as_bytes()))
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
