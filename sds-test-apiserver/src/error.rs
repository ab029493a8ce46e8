//! The crate's error type: every failure of the Rust API, and every Kubernetes `Status` the
//! HTTP API answers with.

use std::io;
use std::path::PathBuf;

/// What went wrong, worded like the real API server where it is an API failure.
///
/// [`Error::code`] and [`Error::reason`] give the HTTP status code and the `Status.reason`
/// that the HTTP API sends for the same failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener could not be bound.
    #[error("cannot listen on 127.0.0.1:{port}")]
    Bind {
        /// The port asked for (0 for any).
        port: u16,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file (the kubeconfig) could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// 404 `NotFound`: no such Secret.
    #[error("secrets \"{name}\" not found")]
    NotFound {
        /// The namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// 409 `AlreadyExists`: create of an existing name.
    #[error("secrets \"{name}\" already exists")]
    AlreadyExists {
        /// The namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// 409 `Conflict`: a resourceVersion or uid precondition failed.
    #[error("Operation cannot be fulfilled on secrets \"{name}\": {detail}")]
    Conflict {
        /// The Secret's name.
        name: String,
        /// The real server's explanation, e.g. "the object has been modified; …".
        detail: String,
    },
    /// 422 `Invalid`: the object (a Secret or a SubjectAccessReview) failed validation.
    #[error(
        "{}{} \"{name}\" is invalid: {}",
        kind,
        group_suffix(group),
        join_causes(causes)
    )]
    Invalid {
        /// The API group of the object's kind (`""` for Secrets).
        group: &'static str,
        /// The object's kind, e.g. `Secret`.
        kind: &'static str,
        /// The object's name (as given; SubjectAccessReviews have none).
        name: String,
        /// One entry per invalid field.
        causes: Vec<FieldError>,
    },
    /// 400 `BadRequest`: an undecodable body, a bad selector or query parameter.
    #[error("{message}")]
    BadRequest {
        /// The real server's wording.
        message: String,
    },
    /// 410 `Expired`: a resourceVersion or continue token older than the last compaction.
    #[error("{message}")]
    Expired {
        /// The real server's wording.
        message: String,
    },
    /// 401 `Unauthorized`: no bearer token, or an unknown one.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403 `Forbidden`: the token's [`Access`](crate::Access) does not allow the request.
    #[error("{}", forbidden_message(user, verb, group, resource, namespace.as_deref(), name.as_deref()))]
    Forbidden {
        /// The user the token belongs to.
        user: String,
        /// The verb that was refused, e.g. `list` (see [`Verb`](crate::Verb)), `create`
        /// (a SubjectAccessReview) or `impersonate`.
        verb: &'static str,
        /// The API group of the resource (`""` for Secrets).
        group: &'static str,
        /// The resource, e.g. `secrets` or `subjectaccessreviews`.
        resource: &'static str,
        /// The namespace, or `None` at the cluster scope.
        namespace: Option<String>,
        /// The object's name for single-object requests.
        name: Option<String>,
    },
    /// 405 `MethodNotAllowed`.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 404 `NotFound` for a path the server does not serve.
    #[error("the server could not find the requested resource")]
    UnknownPath,
    /// 406 `NotAcceptable`: the client accepts no media type the server can produce.
    #[error(
        "only the following media types are accepted: application/json, application/vnd.kubernetes.protobuf"
    )]
    NotAcceptable,
    /// 415 `UnsupportedMediaType`: the request body has a content type the server cannot decode.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {accepted}"
    )]
    UnsupportedMediaType {
        /// The media types that would have been accepted.
        accepted: &'static str,
    },
    /// 413 `RequestEntityTooLarge`.
    #[error("Request entity too large: limit is {limit}")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 500 `InternalError`: the test made SubjectAccessReviews fail
    /// ([`ApiServer::fail_access_reviews`](crate::ApiServer::fail_access_reviews)).
    #[error("Internal error occurred: {message}")]
    Internal {
        /// What failed.
        message: String,
    },
    /// 503 `ServiceUnavailable`: the test switched the server to unavailable.
    #[error("the server is currently unable to handle the request")]
    Unavailable,
    /// 504 `Timeout`: a list at a resourceVersion the server has not reached.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// The resourceVersion asked for.
        requested: u64,
        /// The server's current resourceVersion.
        current: u64,
    },
}

/// One invalid field of an [`Error::Invalid`], as in `Status.details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The path of the field, e.g. `metadata.name` or `data[tls.key]`.
    pub field: String,
    /// The cause's reason, e.g. `FieldValueInvalid` or `FieldValueRequired`.
    pub reason: &'static str,
    /// The cause's message, e.g. `Invalid value: "A": a lowercase RFC 1123 subdomain …`.
    pub message: String,
}

// === impl Error ===

impl Error {
    /// The HTTP status code the API answers with for this failure (500 for local failures).
    pub fn code(&self) -> u16 {
        match self {
            Self::Bind { .. } | Self::Write { .. } | Self::Internal { .. } => 500,
            Self::NotFound { .. } | Self::UnknownPath => 404,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::Invalid { .. } => 422,
            Self::BadRequest { .. } => 400,
            Self::Expired { .. } => 410,
            Self::Unauthorized => 401,
            Self::Forbidden { .. } => 403,
            Self::MethodNotAllowed => 405,
            Self::NotAcceptable => 406,
            Self::UnsupportedMediaType { .. } => 415,
            Self::TooLarge { .. } => 413,
            Self::Unavailable => 503,
            Self::TooLargeResourceVersion { .. } => 504,
        }
    }

    /// The `Status.reason` the API answers with for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Bind { .. } | Self::Write { .. } | Self::Internal { .. } => "InternalError",
            Self::NotFound { .. } | Self::UnknownPath => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Invalid { .. } => "Invalid",
            Self::BadRequest { .. } => "BadRequest",
            Self::Expired { .. } => "Expired",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden { .. } => "Forbidden",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::NotAcceptable => "NotAcceptable",
            Self::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            Self::TooLarge { .. } => "RequestEntityTooLarge",
            Self::Unavailable => "ServiceUnavailable",
            Self::TooLargeResourceVersion { .. } => "Timeout",
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
        }
    }

    pub(crate) fn not_found(namespace: &str, name: &str) -> Self {
        Self::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub(crate) fn modified(name: &str) -> Self {
        Self::Conflict {
            name: name.to_owned(),
            detail: "the object has been modified; please apply your changes to the latest \
                     version and try again"
                .to_owned(),
        }
    }

    pub(crate) fn too_old(requested: u64, oldest: u64) -> Self {
        Self::Expired {
            message: format!("too old resource version: {requested} ({oldest})"),
        }
    }
}

fn join_causes(causes: &[FieldError]) -> String {
    let each = |c: &FieldError| format!("{}: {}", c.field, c.message);
    match causes {
        [one] => each(one),
        many => format!("[{}]", many.iter().map(each).collect::<Vec<_>>().join(", ")),
    }
}

/// `.group`, or nothing for the core group: how `GroupKind` and `GroupResource` print.
fn group_suffix(group: &str) -> String {
    if group.is_empty() {
        String::new()
    } else {
        format!(".{group}")
    }
}

fn forbidden_message(
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    let qualified = format!("{resource}{}", group_suffix(group));
    let what = match name {
        Some(name) => format!("{qualified} \"{name}\""),
        None => qualified,
    };
    let scope = match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    format!(
        "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
    )
}
