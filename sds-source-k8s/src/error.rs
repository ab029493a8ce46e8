//! The one error type of `sds-source-k8s`, and the opaque API error inside it.

use std::{fmt, sync::Arc};

use kube::{core::Status, runtime::watcher};
use sds_core::Untrusted;

use crate::keys::MAX_SHOWN_CHARS;

/// Most characters of an API server's message (or of a client error's chain) an [`ApiError`]
/// shows. A message is the server's text, or a whole error body that was not a `Status`.
const MAX_MESSAGE_CHARS: usize = 512;

/// An ambient failure of a Kubernetes source: Secrets cannot be listed or watched right now.
///
/// The source keeps going after every error (with backoff) and the publisher keeps serving the
/// last good snapshot, so an `Error` never withdraws a credential. A problem with one Secret
/// (a missing key, a certificate that does not parse) is not an `Error` of this type: it
/// rejects that credential in the [`Update`](sds_core::Update).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server refused the request (HTTP 403): the source's identity lacks RBAC
    /// permission on Secrets. The message names the rule to grant.
    #[error(
        "the ServiceAccount may not {verb} secrets {}: grant a {} with apiGroups [\"\"], \
         resources [\"secrets\"], verbs [\"get\", \"list\", \"watch\"]",
        Where(.namespace.as_deref()), Grant(.namespace.as_deref())
    )]
    Forbidden {
        /// The namespace, or `None` for all namespaces ([`Scope::All`](crate::Scope::All)).
        namespace: Option<String>,
        /// What was refused: `list` or `watch`.
        verb: &'static str,
        /// What the API server said.
        #[source]
        source: ApiError,
    },

    /// Listing or watching failed otherwise: the API server is unreachable, timed out, or
    /// answered with an error. The watch is retried with backoff.
    #[error("cannot {verb} secrets {}", Where(.namespace.as_deref()))]
    Watch {
        /// The namespace, or `None` for all namespaces.
        namespace: Option<String>,
        /// What failed: `list` or `watch`.
        verb: &'static str,
        /// Why.
        #[source]
        source: ApiError,
    },
}

// === impl Error ===

impl Error {
    /// Classifies a watcher error for `namespace`; `None` for the `410 Gone` that only says
    /// the watch must start over with a new list (the watcher does that by itself).
    pub(crate) fn from_watcher(namespace: Option<&str>, error: watcher::Error) -> Option<Self> {
        let (verb, inner) = match error {
            watcher::Error::InitialListFailed(e) => ("list", Inner::Client(Arc::new(e))),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                ("watch", Inner::Client(Arc::new(e)))
            }
            watcher::Error::WatchError(status) if status.code == 410 => return None,
            watcher::Error::WatchError(status) => ("watch", Inner::Status(Arc::new(*status))),
            watcher::Error::NoResourceVersion => ("list", Inner::NoResourceVersion),
        };
        let source = ApiError(inner);
        let namespace = namespace.map(str::to_owned);
        Some(if source.is_forbidden() {
            Error::Forbidden {
                namespace,
                verb,
                source,
            }
        } else {
            Error::Watch {
                namespace,
                verb,
                source,
            }
        })
    }
}

/// "in namespace `ns`" or "in all namespaces".
struct Where<'a>(Option<&'a str>);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(namespace) => write!(
                f,
                "in namespace `{}`",
                Untrusted::new(namespace, MAX_SHOWN_CHARS)
            ),
            None => f.write_str("in all namespaces"),
        }
    }
}

/// The RBAC object that grants access where the source looks.
struct Grant<'a>(Option<&'a str>);

impl fmt::Display for Grant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Role (bound with a RoleBinding in that namespace)"),
            None => f.write_str("ClusterRole (bound with a ClusterRoleBinding)"),
        }
    }
}

/// What the Kubernetes client or API server reported. Opaque: the client library is not part
/// of this crate's API. Cheap to clone.
///
/// `Display` shows the server's reason and message escaped and cut short (see
/// [`Untrusted`]). An answer that cannot be decoded is described by position only: the
/// decoder's own message can quote the answer, which holds Secret data.
#[derive(Clone)]
pub struct ApiError(Inner);

#[derive(Clone)]
enum Inner {
    /// A request failed: transport, TLS, or an error status.
    Client(Arc<kube::Error>),
    /// An error event inside a watch stream.
    Status(Arc<Status>),
    /// A list or watch answer without a resourceVersion.
    NoResourceVersion,
}

// === impl ApiError ===

impl ApiError {
    /// What a failed request of the client reports (for requests other than lists and
    /// watches, e.g. a SubjectAccessReview).
    pub(crate) fn from_client(error: kube::Error) -> Self {
        ApiError(Inner::Client(Arc::new(error)))
    }

    /// The HTTP status code the API server answered with, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        self.status().map(|s| s.code)
    }

    /// Whether the API server refused the request (403).
    pub fn is_forbidden(&self) -> bool {
        self.status_code() == Some(403)
    }

    /// Whether the API server answered with an error status (as opposed to not answering, or
    /// answering something that is not Kubernetes).
    pub fn is_status(&self) -> bool {
        self.status().is_some()
    }

    fn status(&self) -> Option<&Status> {
        match &self.0 {
            Inner::Client(e) => match &**e {
                kube::Error::Api(status) => Some(status),
                _ => None,
            },
            Inner::Status(status) => Some(status),
            Inner::NoResourceVersion => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(status) = self.status() {
            write!(f, "the API server answered {}", status.code)?;
            if !status.reason.is_empty() {
                write!(f, " {}", Untrusted::new(&status.reason, MAX_SHOWN_CHARS))?;
            }
            if !status.message.is_empty() {
                write!(
                    f,
                    ": {}",
                    Untrusted::new(&status.message, MAX_MESSAGE_CHARS)
                )?;
            }
            return Ok(());
        }
        match &self.0 {
            Inner::Client(e) => f.write_str(&describe(e)),
            Inner::Status(_) => Ok(()),
            Inner::NoResourceVersion => {
                f.write_str("the API server's answer has no metadata.resourceVersion")
            }
        }
    }
}

/// The whole chain of a client error, down to e.g. "Connection refused", escaped and cut
/// short. kube's messages include their direct source's already, so repeated messages are
/// skipped.
///
/// A decoding error is told by kind and position only: serde_json's messages quote the value
/// they refuse ("invalid type: string \"…\""), which is a Secret's data.
fn describe(error: &kube::Error) -> String {
    let mut message = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = next {
        if let Some(kube::Error::SerdeError(e)) = error.downcast_ref::<kube::Error>() {
            let what = if e.is_syntax() {
                "it is not valid JSON"
            } else if e.is_eof() {
                "it ends early"
            } else if e.is_data() {
                "it does not have the shape of a Secret list or watch event"
            } else {
                "it cannot be read"
            };
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&format!(
                "cannot decode the API server's answer: {what} (line {}, column {})",
                e.line(),
                e.column()
            ));
            break;
        }
        let part = error.to_string();
        if !message.contains(&part) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&part);
        }
        if message.len() > MAX_MESSAGE_CHARS * 4 {
            break;
        }
        next = error.source();
    }
    Untrusted::new(&message, MAX_MESSAGE_CHARS).to_string()
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status_code", &self.status_code())
            .field("message", &self.to_string())
            .finish()
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> Status {
        Status {
            code,
            reason: reason.to_owned(),
            message: message.to_owned(),
            ..Status::default()
        }
    }

    #[test]
    fn forbidden_names_the_rbac_rule() {
        let denied = status(
            403,
            "Forbidden",
            "secrets is forbidden: User \"system:serviceaccount:istio-system:sds\" cannot list \
             resource \"secrets\" in API group \"\" in the namespace \"istio-system\"",
        );
        let error = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(denied)));
        let error = Error::from_watcher(Some("istio-system"), error).expect("an error");
        assert!(
            matches!(&error, Error::Forbidden { namespace: Some(ns), verb: "list", .. } if ns == "istio-system")
        );
        assert_eq!(
            error.to_string(),
            "the ServiceAccount may not list secrets in namespace `istio-system`: grant a Role \
             (bound with a RoleBinding in that namespace) with apiGroups [\"\"], resources \
             [\"secrets\"], verbs [\"get\", \"list\", \"watch\"]"
        );
        let source = std::error::Error::source(&error)
            .expect("a source")
            .to_string();
        assert!(
            source.starts_with("the API server answered 403 Forbidden: secrets is forbidden"),
            "{source}"
        );

        let error = watcher::Error::WatchError(Box::new(status(403, "Forbidden", "no")));
        let error = Error::from_watcher(None, error).expect("an error");
        assert!(
            error.to_string().starts_with(
                "the ServiceAccount may not watch secrets in all namespaces: grant a ClusterRole"
            ),
            "{error}"
        );
    }

    #[test]
    fn answers_are_not_quoted() {
        let secret = "LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0t";
        let body = format!(r#"{{"kind":"Secret","apiVersion":"v1","data":"{secret}"}}"#);
        let serde = serde_json_error(&body);
        let error = watcher::Error::InitialListFailed(kube::Error::SerdeError(serde));
        let error = Error::from_watcher(Some("ns"), error).expect("an error");
        let source = std::error::Error::source(&error).expect("a source");
        for text in [source.to_string(), format!("{error:?}")] {
            assert!(!text.contains(&secret[..12]), "{text}");
        }
        assert_eq!(
            source.to_string(),
            "cannot decode the API server's answer: it does not have the shape of a Secret \
             list or watch event (line 1, column 84)"
        );

        // A Status whose message is an error body: escaped and cut short.
        let long = format!("line\n{}", "x".repeat(10_000));
        let error = watcher::Error::WatchError(Box::new(status(500, "Internal\u{1b}", &long)));
        let error = Error::from_watcher(None, error).expect("an error");
        let Error::Watch { source, .. } = &error else {
            panic!("{error:?}")
        };
        let shown = source.to_string();
        assert!(
            shown.starts_with("the API server answered 500 Internal\\u{1b}: line\\nxxx"),
            "{shown}"
        );
        assert!(shown.len() < 600, "{} bytes", shown.len());
    }

    /// What kube reports for a Secret whose `data` is not a map.
    fn serde_json_error(body: &str) -> serde_json::Error {
        serde_json::from_str::<k8s_openapi::api::core::v1::Secret>(body).expect_err("not a Secret")
    }

    #[test]
    fn gone_is_not_an_error() {
        let gone = watcher::Error::WatchError(Box::new(status(410, "Expired", "too old")));
        assert!(Error::from_watcher(Some("ns"), gone).is_none());
    }

    #[test]
    fn other_failures() {
        let error = watcher::Error::WatchError(Box::new(status(500, "InternalError", "boom")));
        let error = Error::from_watcher(Some("ns"), error).expect("an error");
        assert_eq!(error.to_string(), "cannot watch secrets in namespace `ns`");
        let Error::Watch { source, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(source.status_code(), Some(500));
        assert!(!source.is_forbidden());
        assert_eq!(
            source.to_string(),
            "the API server answered 500 InternalError: boom"
        );
    }
}
