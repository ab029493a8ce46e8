//! The authorizer that answers SubjectAccessReviews: the rules and callbacks a test installs,
//! how they combine (like the API server's union of authorizers), the record of every review,
//! and the switch that makes reviews fail.
//!
//! It answers reviews only. Requests to the server itself are authorized by each token's
//! [`Access`](crate::Access).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

/// What a SubjectAccessReview (or SelfSubjectAccessReview) asked: the attributes the API
/// server's authorizer sees (`authorizer.AttributesRecord`), recorded for every review the
/// server receives and passed to [`ApiServer::authorize`](crate::ApiServer::authorize)
/// callbacks.
///
/// For a resource request the `resource*` fields are set and `path` is empty; for a
/// non-resource request (`nonResourceAttributes`) only `verb` and `path` are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessReview {
    /// `spec.user`, e.g. `system:serviceaccount:istio-system:istio-ingressgateway` (for a
    /// SelfSubjectAccessReview: the user who asked).
    pub user: String,
    /// `spec.groups`.
    pub groups: Vec<String>,
    /// `spec.uid`.
    pub uid: String,
    /// `spec.extra`.
    pub extra: BTreeMap<String, Vec<String>>,
    /// Whether `resourceAttributes` (`true`) or `nonResourceAttributes` was given.
    pub resource_request: bool,
    /// The verb, e.g. `list`.
    pub verb: String,
    /// The namespace (`""`: cluster-scoped, or all namespaces).
    pub namespace: String,
    /// The API group (`""`: core).
    pub group: String,
    /// The API version.
    pub version: String,
    /// The resource, e.g. `secrets`.
    pub resource: String,
    /// The subresource.
    pub subresource: String,
    /// The object's name (`""`: all).
    pub name: String,
    /// The URL path of a non-resource request.
    pub path: String,
}

/// An authorizer's answer to one review: the `status` of the SubjectAccessReview.
///
/// Like the API server's authorizers, a decision allows, denies, or has no opinion (neither
/// allowed nor denied: what RBAC answers when no rule allows the request; the next
/// authorizer is asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    denied: bool,
    reason: String,
    evaluation_error: String,
}

/// How [`ApiServer::fail_access_reviews`](crate::ApiServer::fail_access_reviews) makes
/// reviews fail. Reviews are still validated and recorded first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReviewFailure {
    /// Answer `500 InternalError` (a `Status`), as when an authorization webhook errors.
    InternalError,
    /// Never answer while the switch stays on (the client's timeout fires); the held
    /// requests carry on when it is turned off.
    Hang,
}

/// One installed authorizer.
type Rule = Arc<dyn Fn(&AccessReview) -> Decision + Send + Sync>;

/// The reason of the answer when no authorizer has an opinion and none gave a reason.
const NO_RULE: &str = "no rule allows it";

/// The authorizers, the recorded reviews and the failure switch.
pub(crate) struct Authorizer {
    rules: Mutex<Vec<Rule>>,
    reviews: Mutex<Vec<AccessReview>>,
    failure: watch::Sender<Option<ReviewFailure>>,
}

// === impl Decision ===

impl Decision {
    /// Allowed, with `reason` (e.g. RBAC's `allowed by ClusterRoleBinding "…"`).
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            allowed: true,
            denied: false,
            reason: reason.into(),
            evaluation_error: String::new(),
        }
    }

    /// Explicitly denied (`denied: true`), as a webhook or the Node authorizer may answer;
    /// later authorizers are not asked.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            denied: true,
            reason: reason.into(),
            evaluation_error: String::new(),
        }
    }

    /// No opinion: the next authorizer is asked; if none has an opinion the review answers
    /// `allowed: false` with the reasons joined by newlines.
    pub fn no_opinion(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            denied: false,
            reason: reason.into(),
            evaluation_error: String::new(),
        }
    }

    /// Adds `status.evaluationError` (an authorizer can fail and still decide).
    #[must_use]
    pub fn with_evaluation_error(mut self, error: impl Into<String>) -> Self {
        self.evaluation_error = error.into();
        self
    }

    /// `status.allowed`.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// `status.denied`.
    pub fn is_denied(&self) -> bool {
        self.denied
    }

    /// `status.reason`.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// `status.evaluationError`.
    pub fn evaluation_error(&self) -> &str {
        &self.evaluation_error
    }

    fn has_opinion(&self) -> bool {
        self.allowed || self.denied
    }
}

// === impl Authorizer ===

impl Authorizer {
    pub(crate) fn new() -> Self {
        Self {
            rules: Mutex::new(Vec::new()),
            reviews: Mutex::new(Vec::new()),
            failure: watch::Sender::new(None),
        }
    }

    /// Adds an authorizer, asked after those added before.
    pub(crate) fn push(&self, rule: impl Fn(&AccessReview) -> Decision + Send + Sync + 'static) {
        self.rules.lock().push(Arc::new(rule));
    }

    /// Adds a rule that answers `decision` for resource requests matching the patterns
    /// (`*` matches anything) and has no opinion on the rest.
    pub(crate) fn push_match(
        &self,
        user: String,
        verb: String,
        resource: String,
        namespace: String,
        decision: Decision,
    ) {
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        self.push(move |r| {
            if r.resource_request
                && matches(&user, &r.user)
                && matches(&verb, &r.verb)
                && matches(&resource, &r.resource)
                && matches(&namespace, &r.namespace)
            {
                decision.clone()
            } else {
                Decision::no_opinion("")
            }
        });
    }

    /// Removes every authorizer: reviews are answered `allowed: false` again.
    pub(crate) fn clear(&self) {
        self.rules.lock().clear();
    }

    /// Asks the authorizers in order, as the API server's union authorizer does: the first
    /// that allows or denies decides; otherwise no opinion, with every reason given.
    pub(crate) fn decide(&self, review: &AccessReview) -> Decision {
        // Clone the list out: a callback may take its time, or touch the server.
        let rules = self.rules.lock().clone();
        let mut reasons = Vec::new();
        let mut errors = Vec::new();
        for rule in rules {
            let decision = rule(review);
            if decision.has_opinion() {
                return decision;
            }
            if !decision.reason.is_empty() {
                reasons.push(decision.reason);
            }
            if !decision.evaluation_error.is_empty() {
                errors.push(decision.evaluation_error);
            }
        }
        let reason = if reasons.is_empty() {
            NO_RULE.to_owned()
        } else {
            reasons.join("\n")
        };
        // Go's `utilerrors.NewAggregate(...).Error()`.
        let evaluation_error = match errors.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        Decision::no_opinion(reason).with_evaluation_error(evaluation_error)
    }

    pub(crate) fn record(&self, review: AccessReview) {
        self.reviews.lock().push(review);
    }

    pub(crate) fn reviews(&self) -> Vec<AccessReview> {
        self.reviews.lock().clone()
    }

    pub(crate) fn clear_reviews(&self) {
        self.reviews.lock().clear();
    }

    pub(crate) fn set_failure(&self, failure: Option<ReviewFailure>) {
        self.failure.send_replace(failure);
    }

    /// Waits while the switch says [`ReviewFailure::Hang`]; then whether to fail.
    pub(crate) async fn failure(&self) -> Option<ReviewFailure> {
        let mut rx = self.failure.subscribe();
        // The sender lives in `self`, so this never fails while `self` is borrowed.
        rx.wait_for(|f| *f != Some(ReviewFailure::Hang))
            .await
            .map(|f| *f)
            .unwrap_or(None)
    }
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("rules", &self.rules.lock().len())
            .field("reviews", &self.reviews.lock().len())
            .field("failure", &*self.failure.borrow())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(user: &str, verb: &str, resource: &str, namespace: &str) -> AccessReview {
        AccessReview {
            user: user.to_owned(),
            resource_request: true,
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            ..AccessReview::default()
        }
    }

    #[test]
    fn no_rule_means_no_opinion() {
        let a = Authorizer::new();
        let d = a.decide(&review("u", "list", "secrets", "ns"));
        assert!(!d.is_allowed() && !d.is_denied());
        assert_eq!(d.reason(), NO_RULE);
        assert_eq!(d.evaluation_error(), "");
    }

    #[test]
    fn first_opinion_wins_and_reasons_join() {
        let a = Authorizer::new();
        a.push(|_| Decision::no_opinion("webhook: unsure").with_evaluation_error("e1"));
        a.push_match(
            "u".into(),
            "list".into(),
            "secrets".into(),
            "*".into(),
            Decision::allow("ok"),
        );
        a.push(|_| Decision::deny("never reached for u").with_evaluation_error("e2"));
        assert_eq!(
            a.decide(&review("u", "list", "secrets", "ns")),
            Decision::allow("ok")
        );
        let other = a.decide(&review("v", "list", "secrets", "ns"));
        assert!(other.is_denied());
        a.clear();
        a.push(|_| Decision::no_opinion("a").with_evaluation_error("e1"));
        a.push(|_| Decision::no_opinion("b").with_evaluation_error("e2"));
        let joined = a.decide(&review("u", "get", "pods", ""));
        assert_eq!(
            (joined.reason(), joined.evaluation_error()),
            ("a\nb", "[e1, e2]")
        );
    }

    #[test]
    fn non_resource_requests_match_no_table_rule() {
        let a = Authorizer::new();
        a.push_match(
            "*".into(),
            "*".into(),
            "*".into(),
            "*".into(),
            Decision::allow(""),
        );
        let mut r = review("u", "get", "", "");
        r.resource_request = false;
        r.path = "/healthz".into();
        assert!(!a.decide(&r).is_allowed());
    }
}
