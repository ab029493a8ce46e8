//! The HTTP API: routing, authentication and authorization, content negotiation, and the
//! Secret handlers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use sds_core::Untrusted;
use serde_json::{Value, json};

use crate::access::{Identity, Impersonation, Verb};
use crate::access_review::{self, Kind};
use crate::body::Body;
use crate::error::Error;
use crate::patch::{self, PatchType};
use crate::secret::Secret;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::server::{RequestRecord, Shared};
use crate::store::{Deleted, ListQuery, Preconditions};
use crate::watch::{self, WatchQuery};
use crate::{discovery, json, openapi, protobuf, time};

/// The largest request body accepted (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Most characters of a request's text (path, query, header) that a log line shows.
const SHOWN_CHARS: usize = 256;
const JSON: &str = "application/json";

/// Serves one request and records it.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let content_type = header_str(&req, header::CONTENT_TYPE).map(str::to_owned);
    let accept = header_str(&req, header::ACCEPT).map(str::to_owned);
    let user_agent = header_str(&req, header::USER_AGENT).map(str::to_owned);
    let mut user = None;
    let response = route(&shared, req, &mut user).await;
    // Only the request line and headers that say what was asked: never a body, which holds
    // Secret data. Each is the client's text, escaped and cut short.
    let shown = |text: &str| Untrusted::new(text, SHOWN_CHARS).to_string();
    tracing::debug!(
        method = %shown(&method),
        path = %shown(&path),
        query = %shown(&query),
        status = response.status().as_u16(),
        content_type = %shown(content_type.as_deref().unwrap_or_default()),
        accept = %shown(accept.as_deref().unwrap_or_default()),
        "request"
    );
    shared.record(RequestRecord {
        method,
        path,
        query,
        user,
        status: response.status().as_u16(),
        content_type,
        accept,
        user_agent,
    });
    Ok(response)
}

fn header_str<B>(req: &Request<B>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    who: &mut Option<String>,
) -> Response<Body> {
    if shared.is_unavailable() {
        return error(&Error::Unavailable, Format::Json);
    }
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/version" | "/version/" => {
            return respond(
                StatusCode::OK,
                JSON,
                json::to_vec(&discovery::version(&shared.config.version)),
            );
        }
        "/healthz" | "/livez" | "/readyz" => {
            return respond(StatusCode::OK, "text/plain; charset=utf-8", "ok");
        }
        _ => {}
    }
    let user = match authenticate(shared, &req) {
        Ok(user) => user,
        Err(e) => return error(&e, Format::Json),
    };
    *who = Some(user.name.clone());
    let doc = match path.trim_end_matches('/') {
        "/api" => Some(discovery::api_versions(shared.port())),
        "/api/v1" => Some(discovery::core_v1_resources()),
        "/apis" => Some(discovery::api_groups()),
        "/apis/authorization.k8s.io" => Some(discovery::authorization_group()),
        "/apis/authorization.k8s.io/v1" => Some(discovery::authorization_v1_resources()),
        "/openapi/v3" => Some(openapi::openapi_v3_root()),
        "/openapi/v3/api/v1" => Some(openapi::openapi_v3_core_v1(&shared.config.version)),
        "/openapi/v3/apis/authorization.k8s.io/v1" => {
            Some(openapi::openapi_v3_authorization_v1(&shared.config.version))
        }
        "/openapi/v2" if req.method() == Method::GET => {
            let accept = header_str(&req, header::ACCEPT).unwrap_or_default();
            if accept.contains(openapi::V2_PROTOBUF) {
                let doc = openapi::openapi_v2_protobuf(&shared.config.version);
                return respond(StatusCode::OK, openapi::V2_PROTOBUF_RESPONSE, doc);
            }
            Some(openapi::openapi_v2_json(&shared.config.version))
        }
        _ => None,
    };
    if let Some(doc) = doc {
        if req.method() != Method::GET {
            return error(&Error::MethodNotAllowed, Format::Json);
        }
        return respond(StatusCode::OK, JSON, json::to_vec(&doc));
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let review = match segments.as_slice() {
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => Some(Kind::Subject),
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] => Some(Kind::SelfSubject),
        ["apis", "authorization.k8s.io", "v1", ..] => {
            return error(&Error::UnknownPath, Format::Json);
        }
        _ => None,
    };
    if let Some(kind) = review {
        let format = match negotiate(header_str(&req, header::ACCEPT)) {
            Ok(f) => f,
            Err(e) => return error(&e, Format::Json),
        };
        let query = Query::parse(req.uri().query().unwrap_or_default());
        return match access_review(shared, req, &user, kind, &query, format).await {
            Ok(response) => response,
            Err(e) => error(&e, format),
        };
    }
    let target = match segments.as_slice() {
        ["api", "v1", "secrets"] => Target::Collection(None),
        ["api", "v1", "namespaces", ns, "secrets"] => Target::Collection(Some((*ns).to_owned())),
        ["api", "v1", "namespaces", ns, "secrets", name] => {
            Target::Object((*ns).to_owned(), (*name).to_owned())
        }
        ["api", "v1", "namespaces", ns] if req.method() == Method::GET => {
            return respond(
                StatusCode::OK,
                JSON,
                json::to_vec(&discovery::namespace(ns)),
            );
        }
        ["api", "v1", ..] => return error(&Error::UnknownPath, Format::Json),
        _ => {
            return respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "404 page not found\n",
            );
        }
    };
    let query = Query::parse(req.uri().query().unwrap_or_default());
    let format = match negotiate(header_str(&req, header::ACCEPT)) {
        Ok(f) => f,
        Err(e) => return error(&e, Format::Json),
    };
    let error_format = if format == Format::Protobuf {
        Format::Protobuf
    } else {
        Format::Json
    };
    match secrets(shared, req, &user, target, &query, format).await {
        Ok(response) => response,
        Err(e) => error(&e, error_format),
    }
}

/// Who the request is: the token's user or the anonymous user, or the user it
/// impersonates.
fn authenticate(shared: &Shared, req: &Request<Incoming>) -> Result<Identity, Error> {
    let requester = match header_str(req, header::AUTHORIZATION) {
        None => Identity::anonymous(shared.anonymous().ok_or(Error::Unauthorized)?),
        Some(value) => {
            let (scheme, token) = value.split_once(' ').ok_or(Error::Unauthorized)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Error::Unauthorized);
            }
            Identity::authenticated(shared.user(token.trim()).ok_or(Error::Unauthorized)?)
        }
    };
    impersonate(shared, req, requester)
}

/// Applies the `Impersonate-*` headers (`kubectl --as`, `--as-group`).
fn impersonate(
    shared: &Shared,
    req: &Request<Incoming>,
    requester: Identity,
) -> Result<Identity, Error> {
    let headers = req.headers();
    let text = |v: &HeaderValue| v.to_str().unwrap_or_default().to_owned();
    let mut asked = Impersonation {
        user: headers.get("impersonate-user").map(text),
        uid: headers.get("impersonate-uid").map(text),
        groups: headers
            .get_all("impersonate-group")
            .iter()
            .map(text)
            .collect(),
        extra: BTreeMap::new(),
    };
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .to_lowercase();
            asked.extra.entry(key).or_default().push(text(value));
        }
    }
    requester.impersonate(asked, |name| shared.access_of(name))
}

/// `POST /apis/authorization.k8s.io/v1/{subjectaccessreviews,selfsubjectaccessreviews}`:
/// decode, validate, record, decide, answer `201 Created` with the review and its status.
async fn access_review(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    user: &Identity,
    kind: Kind,
    q: &Query,
    format: Format,
) -> Result<Response<Body>, Error> {
    if req.method() != Method::POST {
        return Err(Error::MethodNotAllowed);
    }
    if kind == Kind::Subject && !user.access.allows_access_reviews() {
        return Err(Error::Forbidden {
            user: user.name.clone(),
            verb: "create",
            group: access_review::GROUP,
            resource: kind.resource(),
            namespace: None,
            name: None,
        });
    }
    let validation = FieldValidation::parse(q.get("fieldValidation"))?;
    let content_type = header_str(&req, header::CONTENT_TYPE)
        .unwrap_or(JSON)
        .to_owned();
    let body = read_body(req).await?;
    let review = match patch::media_type(&content_type) {
        JSON | "" => access_review::decode_json(&body, kind)?,
        protobuf::MEDIA_TYPE => access_review::decode_protobuf(&body, kind)?,
        _ => {
            return Err(Error::UnsupportedMediaType {
                accepted: "application/json, application/vnd.kubernetes.protobuf",
            });
        }
    };
    let warnings = validation.check(&review.unknown_fields, kind.name())?;
    access_review::validate(&review)?;
    let attributes = review.attributes(user);
    shared.authorizer.record(attributes.clone());
    if let Some(failure) = shared.authorizer.failure().await {
        return Err(Error::Internal {
            message: format!("the test server fails access reviews ({failure:?})"),
        });
    }
    let decision = shared.authorizer.decide(&attributes);
    let mut response = match format {
        Format::Protobuf => respond(
            StatusCode::CREATED,
            protobuf::MEDIA_TYPE,
            review.to_protobuf(&decision),
        ),
        Format::Json | Format::Table => {
            respond(StatusCode::CREATED, JSON, review.to_json(&decision))
        }
    };
    add_warnings(&mut response, warnings);
    Ok(response)
}

/// What a Secret URL names.
#[derive(Debug)]
enum Target {
    /// `/api/v1/secrets` (`None`) or `/api/v1/namespaces/{ns}/secrets`.
    Collection(Option<String>),
    /// `/api/v1/namespaces/{ns}/secrets/{name}`.
    Object(String, String),
}

/// The response encoding the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Protobuf,
    /// `application/json;as=Table;v=v1;g=meta.k8s.io`, what `kubectl get` asks for.
    Table,
}

/// Picks the first media type of `Accept` that the server can produce.
fn negotiate(accept: Option<&str>) -> Result<Format, Error> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Format::Json);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        match (media, param("as")) {
            ("application/json", Some("Table"))
                if param("g") == Some("meta.k8s.io") && param("v").is_none_or(|v| v == "v1") =>
            {
                return Ok(Format::Table);
            }
            (_, Some(_)) => {}
            ("application/json" | "*/*" | "application/*", None) => return Ok(Format::Json),
            (protobuf::MEDIA_TYPE, None) => return Ok(Format::Protobuf),
            _ => {}
        }
    }
    Err(Error::NotAcceptable)
}

/// Whether a watch can be answered with JSON (the only watch encoding served).
fn accepts_json(accept: Option<&str>) -> bool {
    accept.is_none_or(|a| {
        a.trim().is_empty()
            || a.split(',').any(|r| {
                let media = r.split(';').next().unwrap_or_default().trim();
                matches!(media, "application/json" | "*/*" | "application/*")
            })
    })
}

async fn secrets(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    user: &Identity,
    target: Target,
    q: &Query,
    format: Format,
) -> Result<Response<Body>, Error> {
    let method = req.method().clone();
    let watching = q.flag("watch");
    let verb = match (&target, &method) {
        (Target::Collection(_), &Method::GET) if watching => Verb::Watch,
        (Target::Collection(_), &Method::GET) => Verb::List,
        (Target::Collection(Some(_)), &Method::POST) => Verb::Create,
        (Target::Object(..), &Method::GET) => Verb::Get,
        (Target::Object(..), &Method::PUT) => Verb::Update,
        (Target::Object(..), &Method::PATCH) => Verb::Patch,
        (Target::Object(..), &Method::DELETE) => Verb::Delete,
        _ => return Err(Error::MethodNotAllowed),
    };
    let (namespace, name) = match &target {
        Target::Collection(ns) => (ns.clone(), None),
        Target::Object(ns, name) => (Some(ns.clone()), Some(name.clone())),
    };
    if !user.access.allows(verb, namespace.as_deref()) {
        return Err(Error::Forbidden {
            user: user.name.clone(),
            verb: verb.as_str(),
            group: "",
            resource: "secrets",
            namespace,
            name,
        });
    }
    let dry_run = match q.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "Invalid dry run value: {other}, supported values: All"
            )));
        }
    };
    let validation = FieldValidation::parse(q.get("fieldValidation"))?;
    let ns = namespace.unwrap_or_default();
    let name = name.unwrap_or_default();
    match verb {
        Verb::List => {
            let lq = ListQuery {
                namespace: (!ns.is_empty()).then_some(ns),
                selectors: selectors(q)?,
                resource_version: q.get("resourceVersion").map(str::to_owned),
                resource_version_match: q.get("resourceVersionMatch").map(str::to_owned),
                limit: q.number("limit")?,
                continue_token: q.get("continue").map(str::to_owned),
            };
            let (meta, items) = shared.store.lock().list(&lq)?;
            Ok(match format {
                Format::Json => respond(StatusCode::OK, JSON, json::list(&meta, &items)),
                Format::Protobuf => respond(
                    StatusCode::OK,
                    protobuf::MEDIA_TYPE,
                    protobuf::list(&meta, &items),
                ),
                Format::Table => respond(
                    StatusCode::OK,
                    JSON,
                    table(&meta, &items, q.get("includeObject")),
                ),
            })
        }
        Verb::Watch => {
            if !accepts_json(header_str(&req, header::ACCEPT)) {
                return Err(Error::NotAcceptable);
            }
            let resource_version = match q.get("resourceVersion") {
                None | Some("" | "0") => None,
                Some(text) => Some(text.parse::<u64>().map_err(|_| {
                    Error::bad_request(format!("invalid resource version: {text:?}"))
                })?),
            };
            let wq = WatchQuery {
                namespace: (!ns.is_empty()).then_some(ns),
                selectors: selectors(q)?,
                resource_version,
                send_initial_events: q.flag("sendInitialEvents"),
                bookmarks: q.flag("allowWatchBookmarks"),
                timeout: q.number::<u64>("timeoutSeconds")?.map(Duration::from_secs),
            };
            let body = watch::start(shared.clone(), wq);
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
            Ok(response)
        }
        Verb::Get => {
            let s = shared.store.lock().get(&ns, &name)?;
            Ok(object(StatusCode::OK, &s, format, q, Vec::new()))
        }
        Verb::Create => {
            let (mut s, warnings) = decode_body(req, validation).await?;
            if s.namespace.is_empty() {
                s.namespace = ns.clone();
            } else if s.namespace != ns {
                return Err(Error::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let created = shared.write(|store| store.create(s, dry_run))?;
            Ok(object(StatusCode::CREATED, &created, format, q, warnings))
        }
        Verb::Update => {
            let (mut s, warnings) = decode_body(req, validation).await?;
            check_identity(&mut s, &ns, &name)?;
            let updated = shared.write(|store| store.update(s, dry_run))?;
            Ok(object(StatusCode::OK, &updated, format, q, warnings))
        }
        Verb::Patch => {
            let kind = PatchType::from_content_type(
                header_str(&req, header::CONTENT_TYPE).unwrap_or_default(),
            )?;
            let body = read_body(req).await?;
            let (patched, warnings) = shared.write(|store| {
                store.modify(&ns, &name, dry_run, |current| {
                    let mut value = json::secret_value(current);
                    patch::apply(&mut value, &body, kind)?;
                    let decoded = json::decode_value(value)?;
                    let warnings = validation.check(&decoded.unknown_fields, "Secret")?;
                    let mut s = decoded.secret;
                    check_identity(&mut s, &ns, &name)?;
                    Ok((s, warnings))
                })
            })?;
            Ok(object(StatusCode::OK, &patched, format, q, warnings))
        }
        Verb::Delete => {
            let is_json = header_str(&req, header::CONTENT_TYPE)
                .is_none_or(|ct| patch::media_type(ct) == JSON);
            let body = read_body(req).await?;
            let (pre, body_dry_run) = if is_json {
                delete_options(&body)?
            } else {
                Default::default()
            };
            let deleted =
                shared.write(|store| store.delete(&ns, &name, &pre, dry_run || body_dry_run))?;
            Ok(match deleted {
                Deleted::Pending(s) => object(StatusCode::OK, &s, format, q, Vec::new()),
                Deleted::Gone(s) if format == Format::Protobuf => {
                    respond(StatusCode::OK, protobuf::MEDIA_TYPE, protobuf::deleted(&s))
                }
                Deleted::Gone(s) => respond(StatusCode::OK, JSON, json::deleted(&s)),
            })
        }
    }
}

/// The name and namespace of a PUT or PATCH body must be those of the URL.
fn check_identity(s: &mut Secret, ns: &str, name: &str) -> Result<(), Error> {
    if s.namespace.is_empty() {
        s.namespace = ns.to_owned();
    } else if s.namespace != ns {
        return Err(Error::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if s.name != name {
        return Err(Error::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            s.name
        )));
    }
    Ok(())
}

fn selectors(q: &Query) -> Result<Selectors, Error> {
    Ok(Selectors {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())?,
    })
}

/// `fieldValidation`: what to do with unknown fields in a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    fn parse(value: Option<&str>) -> Result<Self, Error> {
        match value {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(Error::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict; got {other}"
            ))),
        }
    }

    /// The `Warning` headers to send, or the strict-decoding error for a `kind` object.
    fn check(self, unknown: &[String], kind: &str) -> Result<Vec<String>, Error> {
        if unknown.is_empty() || self == Self::Ignore {
            return Ok(Vec::new());
        }
        let each = unknown.iter().map(|f| format!("unknown field \"{f}\""));
        if self == Self::Strict {
            return Err(Error::bad_request(format!(
                "{kind} in version \"v1\" cannot be handled as a {kind}: strict decoding error: {}",
                each.collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(each.collect())
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Error> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Error::TooLarge { limit: MAX_BODY })
        }
        Err(e) => Err(Error::bad_request(format!(
            "error reading the request body: {e}"
        ))),
    }
}

async fn decode_body(
    req: Request<Incoming>,
    validation: FieldValidation,
) -> Result<(Secret, Vec<String>), Error> {
    let content_type = header_str(&req, header::CONTENT_TYPE)
        .unwrap_or(JSON)
        .to_owned();
    let body = read_body(req).await?;
    match patch::media_type(&content_type) {
        JSON | "" => {
            let decoded = json::decode(&body)?;
            let warnings = validation.check(&decoded.unknown_fields, "Secret")?;
            Ok((decoded.secret, warnings))
        }
        protobuf::MEDIA_TYPE => Ok((protobuf::decode(&body)?, Vec::new())),
        _ => Err(Error::UnsupportedMediaType {
            accepted: "application/json, application/vnd.kubernetes.protobuf",
        }),
    }
}

/// `DeleteOptions`: preconditions and dryRun.
fn delete_options(body: &[u8]) -> Result<(Preconditions, bool), Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Error::bad_request(format!(
            "error decoding DeleteOptions: {}",
            json::problem(&e, "v1.DeleteOptions")
        ))
    })?;
    let pre = &v["preconditions"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let dry_run = v["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "All"));
    Ok((
        Preconditions {
            uid: text(&pre["uid"]),
            resource_version: text(&pre["resourceVersion"]),
        },
        dry_run,
    ))
}

fn object(
    status: StatusCode,
    s: &Secret,
    format: Format,
    q: &Query,
    warnings: Vec<String>,
) -> Response<Body> {
    let mut response = match format {
        Format::Json => respond(status, JSON, json::secret(s)),
        Format::Protobuf => respond(status, protobuf::MEDIA_TYPE, protobuf::secret(s)),
        Format::Table => {
            let meta = json::ListMeta {
                resource_version: s.resource_version.to_string(),
                ..json::ListMeta::default()
            };
            respond(
                status,
                JSON,
                table(
                    &meta,
                    std::slice::from_ref(&Arc::new(s.clone())),
                    q.get("includeObject"),
                ),
            )
        }
    };
    add_warnings(&mut response, warnings);
    response
}

/// `Warning: 299 - "…"` headers, one per warning.
fn add_warnings(response: &mut Response<Body>, warnings: Vec<String>) {
    for warning in warnings {
        let text = format!("299 - {}", serde_json::Value::String(warning));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
}

/// A `meta.k8s.io/v1` Table, as `kubectl get secrets` shows it: NAME, TYPE, DATA, AGE.
fn table(meta: &json::ListMeta, items: &[Arc<Secret>], include: Option<&str>) -> Vec<u8> {
    let now = SystemTime::now();
    let column = |name: &str, format: &str, description: &str| json!({ "name": name, "type": "string", "format": format, "description": description, "priority": 0 });
    let rows: Vec<Value> = items
        .iter()
        .map(|s| {
            let full = json::secret_value(s);
            let object = match include {
                Some("None") => Value::Null,
                Some("Object") => full,
                _ => json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": full["metadata"] }),
            };
            let age = s.creation_timestamp.map(|t| time::age(t, now)).unwrap_or_else(|| "<unknown>".to_owned());
            json!({ "cells": [s.name, s.effective_type(), s.data.len(), age], "object": object })
        })
        .collect();
    json::to_vec(&json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": [
            column("Name", "name", "Name must be unique within a namespace."),
            column("Type", "", "Used to facilitate programmatic handling of secret data."),
            column("Data", "", "Data contains the secret data."),
            column("Age", "", "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        "rows": rows,
    }))
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error(e: &Error, format: Format) -> Response<Body> {
    let status = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match format {
        Format::Protobuf => respond(status, protobuf::MEDIA_TYPE, protobuf::status(e)),
        Format::Json | Format::Table => respond(status, JSON, json::to_vec(&json::status_value(e))),
    }
}

/// Decoded query parameters (first occurrence wins).
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Self(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Go's `strconv.ParseBool` truths.
    fn flag(&self, name: &str) -> bool {
        matches!(
            self.get(name),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, Error> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| Error::bad_request(format!("invalid {name}: {text:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None).ok(), Some(Format::Json));
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf, */*")).ok(),
            Some(Format::Protobuf)
        );
        assert_eq!(
            negotiate(Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")).ok(),
            Some(Format::Table)
        );
        assert_eq!(
            negotiate(Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")).ok(),
            Some(Format::Json)
        );
        assert!(negotiate(Some("text/html")).is_err());
    }

    #[test]
    fn queries() {
        let q = Query::parse("fieldSelector=type%21%3Dhelm.sh%2Frelease.v1&watch=1&limit=2");
        assert_eq!(q.get("fieldSelector"), Some("type!=helm.sh/release.v1"));
        assert!(q.flag("watch"));
        assert_eq!(q.number::<usize>("limit").ok().flatten(), Some(2));
    }
}
