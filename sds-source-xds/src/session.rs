//! The protocol, sans IO: what to send first, and how to answer each response (ACK or NACK),
//! for state of the world and delta. The transport (`stream.rs`) only pumps messages.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use sds_core::{Secret, SecretName, UnixTime, Untrusted};
use sds_proto::{
    SECRET_TYPE_URL,
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{
            DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        },
    },
    google::rpc::Status,
};

use crate::convert;

/// gRPC `INTERNAL`, the code Envoy puts in a NACK's `error_detail`.
const NACK_CODE: i32 = 13;

/// Most bytes of a NACK's message (the reasons of at most as many secrets as requested).
const MAX_NACK_LEN: usize = 16 * 1024;

/// Longest `version_info` (state of the world) or resource `version` (delta) accepted, in
/// bytes: it is kept and echoed on every request. A longer one refuses the response (NACK).
pub(crate) const MAX_VERSION_LEN: usize = 1024;

/// Longest nonce accepted, in bytes: it is echoed in the answer. A response with a longer one
/// cannot be answered (not even NACKed: the NACK would have to echo it), so the stream is
/// closed and reopened with backoff.
pub(crate) const MAX_NONCE_LEN: usize = 1024;

/// Most characters of upstream text (a name, a type URL) shown in a NACK or a log line.
const SHOWN_LEN: usize = 128;

/// What a stream holds for one name.
#[derive(Clone, Debug)]
pub(crate) enum Held {
    /// The last version received was valid.
    Valid(Arc<Secret>),
    /// The last version received was rejected, for this reason; the publisher keeps serving
    /// the last good one, if any.
    Rejected(sds_core::Error),
}

/// Every name a stream holds something for.
pub(crate) type HeldMap = BTreeMap<SecretName, Held>;

/// A protocol session over one gRPC stream (and its reconnections).
pub(crate) trait Session: Send + 'static {
    /// The request message type.
    type Request: Send + 'static;
    /// The response message type.
    type Response: Send + 'static;

    /// The first request of a (re)opened stream: the node, the names, what is held.
    fn first(&mut self) -> Self::Request;

    /// Processes a response at `now`: the ACK or NACK to send back, or why the response
    /// cannot be answered at all (the stream is then closed and reopened).
    fn on_response(
        &mut self,
        response: Self::Response,
        now: UnixTime,
    ) -> Result<Self::Request, NonceTooLong>;

    /// What the session holds now.
    fn held(&self) -> &HeldMap;
}

/// The fixed parts of every session: names, node, where errors say secrets came from.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub(crate) names: BTreeSet<SecretName>,
    pub(crate) node: Node,
    /// E.g. `sds unix:/run/spire/agent.sock`: the prefix of rejected secrets' locations.
    pub(crate) origin: Arc<str>,
}

/// A response whose nonce is longer than [`MAX_NONCE_LEN`]: it cannot be answered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NonceTooLong {
    /// The nonce's length, in bytes.
    pub(crate) len: usize,
}

/// Refuses `nonce` if it is too long to echo.
fn check_nonce(nonce: &str) -> Result<(), NonceTooLong> {
    if nonce.len() > MAX_NONCE_LEN {
        return Err(NonceTooLong { len: nonce.len() });
    }
    Ok(())
}

/// A problem that no held secret carries to the publisher: a response refused whole, or a
/// resource that is not a requested secret. NACKed, and logged by the session (see
/// [`Reported`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    /// The response's `type_url` is not the Secret type.
    TypeUrl,
    /// More resources, or removals, than names requested.
    TooMany,
    /// A `version_info` or resource `version` longer than [`MAX_VERSION_LEN`].
    TooLong,
    /// A secret that was not requested.
    NotRequested,
    /// A resource that is not a decodable Secret, or is named other than the Secret it holds.
    Malformed,
}

/// The outcome of processing one response.
#[derive(Default)]
struct Review {
    /// Why the response, or some of its resources, were refused, in order: the NACK.
    problems: Vec<String>,
    /// Which of `problems` (by index) the session logs itself: those of no held secret.
    refusals: Vec<(Refusal, usize)>,
}

impl Review {
    /// A secret was rejected: it is held as rejected, and the publisher logs it.
    fn reject(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// The response, or a resource that is no requested secret, was refused.
    fn refuse(&mut self, kind: Refusal, problem: String) {
        self.refusals.push((kind, self.problems.len()));
        self.problems.push(problem);
    }

    /// Whether the whole response was accepted (ACKed).
    fn accepted(&self) -> bool {
        self.problems.is_empty()
    }

    /// The refusals: kind and text.
    fn refusals(&self) -> impl Iterator<Item = (Refusal, &str)> {
        self.refusals
            .iter()
            .filter_map(|&(kind, at)| Some((kind, self.problems.get(at)?.as_str())))
    }

    fn error_detail(&self) -> Option<Status> {
        if self.problems.is_empty() {
            return None;
        }
        let mut message = self.problems.join("; ");
        if message.len() > MAX_NACK_LEN {
            let mut end = MAX_NACK_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Some(Status {
            code: NACK_CODE,
            message,
            details: Vec::new(),
        })
    }
}

/// The kinds of [`Refusal`] logged at WARN since the last accepted response.
///
/// A rejected secret is logged by the publisher, once per problem; a refused response is
/// logged here, once per kind of problem: an upstream that sends the same bad response in a
/// loop adds one line, not one per response (later ones are logged at DEBUG). Once a response
/// is accepted, every kind is logged again the next time it occurs. At most one entry per
/// kind: the memory is bounded whatever the upstream sends.
#[derive(Debug, Default)]
struct Reported {
    kinds: BTreeSet<Refusal>,
}

impl Reported {
    /// Logs `review`'s refusals of a kind not logged since the last accepted response.
    fn log(&mut self, subscription: &Subscription, review: &Review) {
        if review.accepted() {
            self.kinds.clear();
            return;
        }
        let secret = subscription.single().map(SecretName::as_str);
        for (kind, problem) in review.refusals() {
            if self.kinds.insert(kind) {
                tracing::warn!(
                    origin = %subscription.origin,
                    secret,
                    problem = %problem,
                    "refused a response from the upstream SDS server (NACKed); this kind of \
                     problem is not logged again until a response is accepted"
                );
            } else {
                tracing::debug!(
                    origin = %subscription.origin,
                    secret,
                    problem = %problem,
                    "refused a response from the upstream SDS server (NACKed)"
                );
            }
        }
    }
}

impl Subscription {
    /// The one name of a stream of one name (a stream per name, as Envoy): named in its logs.
    pub(crate) fn single(&self) -> Option<&SecretName> {
        match self.names.len() {
            1 => self.names.first(),
            _ => None,
        }
    }

    /// Validates one received secret, named `name`, into `held`; records a problem if it is
    /// rejected. Returns whether it was accepted.
    fn take(
        &self,
        name: SecretName,
        secret: sds_proto::envoy::extensions::transport_sockets::tls::v3::Secret,
        now: UnixTime,
        held: &mut HeldMap,
        review: &mut Review,
    ) -> bool {
        match convert::secret(&name, secret, &self.origin, now) {
            Ok(secret) => {
                held.insert(name, Held::Valid(Arc::new(secret)));
                true
            }
            Err(error) => {
                let described = convert::describe(&error);
                // The publisher logs each new rejection at WARN, with this reason: once.
                tracing::debug!(origin = %self.origin, secret = %name, error = %described, "rejected a secret from the upstream SDS server");
                review.reject(described);
                held.insert(name, Held::Rejected(error));
                false
            }
        }
    }

    /// The requested name `name` is, if it is one.
    fn requested(&self, name: &str) -> Option<SecretName> {
        self.names.get(name).cloned()
    }
}

/// A response holding more resources than names were requested: refused whole, unread.
fn too_many(count: usize, limit: usize) -> String {
    format!("the response holds {count} resources, more than the {limit} names requested")
}

/// Upstream text (a name, a type URL) shown in a NACK or a log line: escaped and cut short.
fn shown(text: &str) -> Untrusted<'_> {
    Untrusted::new(text, SHOWN_LEN)
}

/// A `version_info` or resource `version` too long to keep.
fn too_long(what: &str, len: usize) -> String {
    format!("{what} is {len} bytes long, more than the {MAX_VERSION_LEN} accepted")
}

// === Sotw ===

/// State of the world: one stream for some of the names.
#[derive(Debug)]
pub(crate) struct Sotw {
    subscription: Subscription,
    /// The `version_info` of the last accepted response; empty before the first.
    accepted: String,
    held: HeldMap,
    reported: Reported,
}

impl Sotw {
    pub(crate) fn new(subscription: Subscription) -> Self {
        Self {
            subscription,
            accepted: String::new(),
            held: HeldMap::new(),
            reported: Reported::default(),
        }
    }

    /// Reviews `response`'s resources into `held` (or refuses the response whole).
    fn review(&mut self, response: &DiscoveryResponse, now: UnixTime) -> Review {
        let mut review = Review::default();
        let limit = self.subscription.names.len();
        if response.type_url != SECRET_TYPE_URL {
            review.refuse(
                Refusal::TypeUrl,
                format!(
                    "response type `{}` is not `{SECRET_TYPE_URL}`",
                    shown(&response.type_url)
                ),
            );
        } else if response.version_info.len() > MAX_VERSION_LEN {
            review.refuse(
                Refusal::TooLong,
                too_long("the response's version_info", response.version_info.len()),
            );
        } else if response.resources.len() > limit {
            review.refuse(Refusal::TooMany, too_many(response.resources.len(), limit));
        } else {
            for any in &response.resources {
                let secret = match convert::unpack(any) {
                    Ok(secret) => secret,
                    Err(problem) => {
                        review.refuse(Refusal::Malformed, problem);
                        continue;
                    }
                };
                let Some(name) = self.subscription.requested(&secret.name) else {
                    review.refuse(
                        Refusal::NotRequested,
                        format!("secret `{}` was not requested", shown(&secret.name)),
                    );
                    continue;
                };
                self.subscription
                    .take(name, secret, now, &mut self.held, &mut review);
            }
        }
        review
    }
}

impl Session for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn first(&mut self) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.accepted.clone(),
            node: Some(self.subscription.node.clone()),
            resource_names: self
                .subscription
                .names
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            response_nonce: String::new(),
            error_detail: None,
        }
    }

    fn on_response(
        &mut self,
        response: DiscoveryResponse,
        now: UnixTime,
    ) -> Result<DiscoveryRequest, NonceTooLong> {
        check_nonce(&response.nonce)?;
        let review = self.review(&response, now);
        self.reported.log(&self.subscription, &review);
        if review.accepted() {
            self.accepted = response.version_info;
        }
        Ok(DiscoveryRequest {
            version_info: self.accepted.clone(),
            node: None,
            resource_names: self
                .subscription
                .names
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            response_nonce: response.nonce,
            error_detail: review.error_detail(),
        })
    }

    fn held(&self) -> &HeldMap {
        &self.held
    }
}

// === Delta ===

/// Delta (incremental): one stream for every name.
#[derive(Debug)]
pub(crate) struct Delta {
    subscription: Subscription,
    /// The server's version of every secret held valid: `initial_resource_versions` on
    /// reconnect.
    versions: BTreeMap<SecretName, String>,
    held: HeldMap,
    reported: Reported,
}

impl Delta {
    pub(crate) fn new(subscription: Subscription) -> Self {
        Self {
            subscription,
            versions: BTreeMap::new(),
            held: HeldMap::new(),
            reported: Reported::default(),
        }
    }

    /// Reviews `response`'s removals and resources into `held` and `versions` (or refuses
    /// the response whole).
    fn review(&mut self, response: DeltaDiscoveryResponse, now: UnixTime) -> Review {
        let mut review = Review::default();
        let limit = self.subscription.names.len();
        if response.type_url != SECRET_TYPE_URL {
            review.refuse(
                Refusal::TypeUrl,
                format!(
                    "response type `{}` is not `{SECRET_TYPE_URL}`",
                    shown(&response.type_url)
                ),
            );
        } else if response.resources.len() > limit {
            review.refuse(Refusal::TooMany, too_many(response.resources.len(), limit));
        } else if response.removed_resources.len() > limit {
            review.refuse(
                Refusal::TooMany,
                format!(
                    "the response removes {} resources, more than the {limit} names requested",
                    response.removed_resources.len()
                ),
            );
        } else if let Some(resource) = response
            .resources
            .iter()
            .find(|r| r.version.len() > MAX_VERSION_LEN)
        {
            review.refuse(
                Refusal::TooLong,
                too_long(
                    &format!("the version of resource `{}`", shown(&resource.name)),
                    resource.version.len(),
                ),
            );
        } else {
            for removed in &response.removed_resources {
                // Names never requested are ignored: there is nothing to remove.
                if let Some(name) = self.subscription.requested(removed) {
                    self.held.remove(&name);
                    self.versions.remove(&name);
                }
            }
            for resource in response.resources {
                let Some(name) = self.subscription.requested(&resource.name) else {
                    review.refuse(
                        Refusal::NotRequested,
                        format!("secret `{}` was not requested", shown(&resource.name)),
                    );
                    continue;
                };
                let secret = match resource.resource.as_ref().map(convert::unpack) {
                    Some(Ok(secret)) => secret,
                    Some(Err(problem)) => {
                        review.refuse(Refusal::Malformed, format!("secret `{name}`: {problem}"));
                        continue;
                    }
                    None => {
                        review.refuse(
                            Refusal::Malformed,
                            format!("secret `{name}` has no resource"),
                        );
                        continue;
                    }
                };
                if secret.name != resource.name {
                    review.refuse(
                        Refusal::Malformed,
                        format!(
                            "resource `{name}` holds a Secret named `{}`",
                            shown(&secret.name)
                        ),
                    );
                    continue;
                }
                // A rejected version is not held: `versions` keeps the last accepted one.
                if self
                    .subscription
                    .take(name.clone(), secret, now, &mut self.held, &mut review)
                {
                    self.versions.insert(name, resource.version);
                }
            }
        }
        review
    }
}

impl Session for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn first(&mut self) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(self.subscription.node.clone()),
            type_url: SECRET_TYPE_URL.to_owned(),
            resource_names_subscribe: self
                .subscription
                .names
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect(),
            resource_names_unsubscribe: Vec::new(),
            initial_resource_versions: self
                .versions
                .iter()
                .map(|(name, version)| (name.as_str().to_owned(), version.clone()))
                .collect::<HashMap<_, _>>(),
            response_nonce: String::new(),
            error_detail: None,
        }
    }

    fn on_response(
        &mut self,
        mut response: DeltaDiscoveryResponse,
        now: UnixTime,
    ) -> Result<DeltaDiscoveryRequest, NonceTooLong> {
        check_nonce(&response.nonce)?;
        let nonce = std::mem::take(&mut response.nonce);
        let review = self.review(response, now);
        self.reported.log(&self.subscription, &review);
        Ok(DeltaDiscoveryRequest {
            node: None,
            type_url: SECRET_TYPE_URL.to_owned(),
            resource_names_subscribe: Vec::new(),
            resource_names_unsubscribe: Vec::new(),
            initial_resource_versions: HashMap::new(),
            response_nonce: nonce,
            error_detail: review.error_detail(),
        })
    }

    fn held(&self) -> &HeldMap {
        &self.held
    }
}
