//! The protocol, sans IO: what to send first, and how to answer each response (ACK or NACK),
//! for state of the world and delta. The transport (`stream.rs`) only pumps messages.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use sds_core::{Secret, SecretName, UnixTime};
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

    /// Processes a response at `now`: the ACK or NACK to send back.
    fn on_response(&mut self, response: Self::Response, now: UnixTime) -> Self::Request;

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

/// The outcome of processing the resources of one response.
#[derive(Default)]
struct Review {
    /// Why the response, or some of its resources, were rejected.
    problems: Vec<String>,
}

impl Review {
    fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    fn error_detail(self) -> Option<Status> {
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

impl Subscription {
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
                review.problem(described);
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

/// A name shown in a NACK: escaped and cut short (it is the server's, not ours).
fn shown(name: &str) -> String {
    name.escape_default().take(128).collect()
}

// === Sotw ===

/// State of the world: one stream for some of the names.
#[derive(Debug)]
pub(crate) struct Sotw {
    subscription: Subscription,
    /// The `version_info` of the last accepted response; empty before the first.
    accepted: String,
    held: HeldMap,
}

impl Sotw {
    pub(crate) fn new(subscription: Subscription) -> Self {
        Self {
            subscription,
            accepted: String::new(),
            held: HeldMap::new(),
        }
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

    fn on_response(&mut self, response: DiscoveryResponse, now: UnixTime) -> DiscoveryRequest {
        let mut review = Review::default();
        let limit = self.subscription.names.len();
        if response.type_url != SECRET_TYPE_URL {
            review.problem(format!(
                "response type `{}` is not `{SECRET_TYPE_URL}`",
                shown(&response.type_url)
            ));
        } else if response.resources.len() > limit {
            review.problem(too_many(response.resources.len(), limit));
        } else {
            for any in &response.resources {
                let secret = match convert::unpack(any) {
                    Ok(secret) => secret,
                    Err(problem) => {
                        review.problem(problem);
                        continue;
                    }
                };
                let Some(name) = self.subscription.requested(&secret.name) else {
                    review.problem(format!(
                        "secret `{}` was not requested",
                        shown(&secret.name)
                    ));
                    continue;
                };
                self.subscription
                    .take(name, secret, now, &mut self.held, &mut review);
            }
        }
        let error_detail = review.error_detail();
        if error_detail.is_none() {
            self.accepted = response.version_info;
        }
        DiscoveryRequest {
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
            error_detail,
        }
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
}

impl Delta {
    pub(crate) fn new(subscription: Subscription) -> Self {
        Self {
            subscription,
            versions: BTreeMap::new(),
            held: HeldMap::new(),
        }
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
        response: DeltaDiscoveryResponse,
        now: UnixTime,
    ) -> DeltaDiscoveryRequest {
        let mut review = Review::default();
        let limit = self.subscription.names.len();
        if response.type_url != SECRET_TYPE_URL {
            review.problem(format!(
                "response type `{}` is not `{SECRET_TYPE_URL}`",
                shown(&response.type_url)
            ));
        } else if response.resources.len() > limit {
            review.problem(too_many(response.resources.len(), limit));
        } else if response.removed_resources.len() > limit {
            review.problem(format!(
                "the response removes {} resources, more than the {limit} names requested",
                response.removed_resources.len()
            ));
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
                    review.problem(format!(
                        "secret `{}` was not requested",
                        shown(&resource.name)
                    ));
                    continue;
                };
                let secret = match resource.resource.as_ref().map(convert::unpack) {
                    Some(Ok(secret)) => secret,
                    Some(Err(problem)) => {
                        review.problem(format!("secret `{name}`: {problem}"));
                        continue;
                    }
                    None => {
                        review.problem(format!("secret `{name}` has no resource"));
                        continue;
                    }
                };
                if secret.name != resource.name {
                    review.problem(format!(
                        "resource `{name}` holds a Secret named `{}`",
                        shown(&secret.name)
                    ));
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
        DeltaDiscoveryRequest {
            node: None,
            type_url: SECRET_TYPE_URL.to_owned(),
            resource_names_subscribe: Vec::new(),
            resource_names_unsubscribe: Vec::new(),
            initial_resource_versions: HashMap::new(),
            response_nonce: response.nonce,
            error_detail: review.error_detail(),
        }
    }

    fn held(&self) -> &HeldMap {
        &self.held
    }
}
