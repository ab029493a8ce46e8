//! The SDS protocol as a state machine without I/O.
//!
//! A [`Sotw`] or [`Delta`] session holds one stream's state: which names it subscribes to,
//! what it last sent, what the client ACKed and NACKed of each (read through [`NameView`]),
//! and the nonce of the last response. The service feeds it requests and
//! secret changes; it answers with responses to send. Watching secrets is delegated to a
//! [`Subscriptions`] implementation, so tests drive sessions with a plain map.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
    time::SystemTime,
};

use sds_core::{Secret, SecretName, Untrusted, Version};

use sds_proto::SECRET_TYPE_URL;

use crate::limits::Exceeded;

/// Where a session subscribes to and unsubscribes from secrets.
pub(crate) trait Subscriptions {
    /// Starts watching `name` (if not yet watched) and returns its current value (`None` while
    /// it does not exist); refused when the server holds all the subscriptions it may.
    fn subscribe(&mut self, name: &SecretName) -> Result<Option<Arc<Secret>>, Refusal>;
    /// Stops watching `name`.
    fn unsubscribe(&mut self, name: &SecretName);
    /// The client answered a response that carried `version` of `name`: ACKed it
    /// (`accepted`) or NACKed it. Called once per name the answer settles.
    fn answered(&mut self, name: &SecretName, version: Version, accepted: bool) {
        let _ = (name, version, accepted);
    }
}

/// Why a request cannot be processed; the stream ends with this.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The request asks for a type other than `Secret` (shown escaped and cut short).
    WrongType(String),
    /// A resource name is not a valid name (shown escaped and cut short), and why.
    InvalidName {
        shown: String,
        problem: &'static str,
    },
    /// The stream would subscribe to more names than its limit.
    TooManyNames { count: usize, max: usize },
    /// The stream's names would be longer, together, than its limit.
    TooManyNameBytes { bytes: usize, max: usize },
    /// The server holds as many subscriptions, or bytes of names, as it may.
    ServerFull(Exceeded),
}

/// How long a client-supplied string may be in a log line or an error we send.
pub(crate) const SHOWN_CHARS: usize = 128;

/// A stream's share of [`Limits`](crate::Limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamLimits {
    pub(crate) names: usize,
    pub(crate) name_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        let limits = crate::Limits::default();
        Self {
            names: limits.names_per_stream,
            name_bytes: limits.name_bytes_per_stream,
        }
    }
}

impl StreamLimits {
    /// Checks a stream's would-be subscription set.
    fn check(&self, count: usize, bytes: usize) -> Result<(), Refusal> {
        if count > self.names {
            return Err(Refusal::TooManyNames {
                count,
                max: self.names,
            });
        }
        if bytes > self.name_bytes {
            return Err(Refusal::TooManyNameBytes {
                bytes,
                max: self.name_bytes,
            });
        }
        Ok(())
    }
}

/// The fields of a NACK's `error_detail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) code: i32,
    pub(crate) message: String,
}

/// A state-of-the-world request, as the session sees it.
#[derive(Debug)]
pub(crate) struct SotwRequest<'a> {
    pub(crate) version_info: &'a str,
    pub(crate) resource_names: &'a [String],
    pub(crate) type_url: &'a str,
    pub(crate) response_nonce: &'a str,
    pub(crate) error_detail: Option<Rejection>,
    /// When it was received: recorded for the names it subscribes to and its NACK. The
    /// session never reads the clock.
    pub(crate) at: SystemTime,
}

/// A state-of-the-world response to send.
#[derive(Debug)]
pub(crate) struct SotwResponse {
    /// The version of the whole response: the secret's own when it carries one, else a
    /// digest of theirs.
    pub(crate) version: Version,
    pub(crate) nonce: Nonce,
    pub(crate) resources: Vec<(SecretName, Arc<Secret>)>,
}

/// An incremental request, as the session sees it.
#[derive(Debug)]
pub(crate) struct DeltaRequest<'a> {
    pub(crate) type_url: &'a str,
    pub(crate) subscribe: &'a [String],
    pub(crate) unsubscribe: &'a [String],
    pub(crate) initial_resource_versions: Vec<(&'a str, &'a str)>,
    pub(crate) response_nonce: &'a str,
    pub(crate) error_detail: Option<Rejection>,
    /// When it was received (see [`SotwRequest::at`]).
    pub(crate) at: SystemTime,
}

/// An incremental response to send.
#[derive(Debug)]
pub(crate) struct DeltaResponse {
    pub(crate) nonce: Nonce,
    pub(crate) resources: Vec<(SecretName, Arc<Secret>)>,
    pub(crate) removed: Vec<SecretName>,
}

/// What a session keeps about one subscribed name besides what it sent: when it was
/// subscribed to, until the client answers a response that carried it; then what the client
/// made of it. Read through [`NameView`]. At most 48 bytes: most subscriptions are idle.
#[derive(Debug)]
pub(crate) enum NameState {
    /// The client answered nothing about it yet: since when the stream subscribes to it.
    Unanswered { since: SystemTime },
    /// The client answered a response that carried it.
    Answered {
        /// The last version of it the client ACKed on this stream.
        acked: Option<Version>,
        /// The last NACK of a response that carried it (rare: boxed, to keep entries small).
        nack: Option<Box<LastNack>>,
    },
}

/// The last NACK of a response that carried a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LastNack {
    /// The version of the name the rejected response carried.
    pub(crate) version: Version,
    /// The `error_detail` code.
    pub(crate) code: i32,
    /// Envoy's message, escaped and cut short (client text); shared by the names of one
    /// response. Only the stream's latest NACK keeps its message: an earlier one's is emptied
    /// when a later NACK arrives (see [`forget_older_messages`]), so a stream holds at most
    /// one message, however its client spreads NACKs over its names.
    pub(crate) message: Arc<str>,
    /// When the NACK was received.
    pub(crate) at: SystemTime,
}

/// One subscribed name as the session knows it, for [`Client`](crate::inventory::Client).
#[derive(Debug)]
pub(crate) struct NameView<'a> {
    pub(crate) name: &'a SecretName,
    /// The version of it the stream sent last, if it sent one (and it was not removed since).
    pub(crate) sent: Option<Version>,
    pub(crate) acked: Option<Version>,
    pub(crate) nack: Option<&'a LastNack>,
    /// When the stream subscribed to it, if nothing of it was sent or answered since.
    pub(crate) waiting_since: Option<SystemTime>,
}

impl NameState {
    fn view<'a>(&'a self, name: &'a SecretName, sent: Option<Version>) -> NameView<'a> {
        let (acked, nack, waiting_since) = match self {
            NameState::Unanswered { since } => (None, None, sent.is_none().then_some(*since)),
            NameState::Answered { acked, nack } => (*acked, nack.as_deref(), None),
        };
        NameView {
            name,
            sent,
            acked,
            nack,
            waiting_since,
        }
    }

    /// The client ACKed `version`.
    fn ack(&mut self, version: Version) {
        match self {
            NameState::Unanswered { .. } => {
                *self = NameState::Answered {
                    acked: Some(version),
                    nack: None,
                }
            }
            NameState::Answered { acked, .. } => *acked = Some(version),
        }
    }

    /// The client NACKed a response that carried the name.
    fn nack(&mut self, last: LastNack) {
        match self {
            NameState::Unanswered { .. } => {
                *self = NameState::Answered {
                    acked: None,
                    nack: Some(Box::new(last)),
                }
            }
            NameState::Answered { nack, .. } => *nack = Some(Box::new(last)),
        }
    }
}

/// Most characters of a NACK message kept for [`LastNack`]: what the request reader keeps
/// (`MAX_NACK_MESSAGE` bytes).
const NACK_MESSAGE_CHARS: usize = crate::requests::MAX_NACK_MESSAGE;

impl LastNack {
    /// The message of `rejection`, escaped and cut short once, to share between names.
    fn message(rejection: &Rejection) -> Arc<str> {
        Arc::from(Untrusted::new(&rejection.message, NACK_MESSAGE_CHARS).to_string())
    }
}

/// Empties the message of every NACK in `names` but `latest`'s: what one stream keeps of its
/// client's NACK messages is one message (at most [`NACK_MESSAGE_CHARS`]), not one per name.
/// At most [`Limits::names_per_stream`](crate::Limits::names_per_stream) names, per NACK.
fn forget_older_messages(names: &mut BTreeMap<SecretName, Box<NameState>>, latest: &Arc<str>) {
    for state in names.values_mut() {
        if let NameState::Answered {
            nack: Some(nack), ..
        } = &mut **state
            && !Arc::ptr_eq(&nack.message, latest)
            && !nack.message.is_empty()
        {
            nack.message = Arc::from("");
        }
    }
}

/// What the client did with a response, as far as the session can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ack {
    /// A first request, or a request that changes subscriptions only.
    None,
    /// The client accepted the response with this nonce.
    Acked { nonce: String },
    /// The client rejected the response with this nonce.
    Nacked {
        nonce: String,
        version: String,
        rejection: Rejection,
    },
    /// The nonce is not the latest one sent: the request is ignored.
    Stale { nonce: String },
}

pub(crate) fn check_type(type_url: &str) -> Result<(), Refusal> {
    if type_url.is_empty() || type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(Refusal::WrongType(
            Untrusted::new(type_url, SHOWN_CHARS).to_string(),
        ))
    }
}

/// Istio's external-SDS form: a gateway whose `credentialName` is `sds://NAME` asks for the
/// resource `sds://NAME` (and `sds://NAME-cacert`), served from the credential `NAME`.
const SDS_PREFIX: &str = "sds://";

/// Validates one name as every method does.
pub(crate) fn parse_name(name: &str) -> Result<SecretName, Refusal> {
    let invalid = |problem| Refusal::InvalidName {
        shown: Untrusted::new(name, SHOWN_CHARS).to_string(),
        problem,
    };
    let parsed = SecretName::new(name).map_err(|e| {
        invalid(match e {
            sds_core::Error::InvalidName { problem, .. } => problem,
            _ => "is not a valid resource name",
        })
    })?;
    if let Some(credential) = name.strip_prefix(SDS_PREFIX)
        && SecretName::new(credential).is_err()
    {
        return Err(invalid("names no credential after sds://"));
    }
    Ok(parsed)
}

/// The name of the secret a requested name is served from: `NAME` for `sds://NAME`, else
/// the name itself. The response still names the resource as it was asked for.
pub(crate) fn source_name(name: &SecretName) -> SecretName {
    name.as_str()
        .strip_prefix(SDS_PREFIX)
        .and_then(|credential| SecretName::new(credential).ok())
        .unwrap_or_else(|| name.clone())
}

/// Validates a list of names within `limits` (duplicates count once).
pub(crate) fn parse_names(
    names: &[String],
    limits: &StreamLimits,
) -> Result<BTreeSet<SecretName>, Refusal> {
    // Checked before parsing, so that a huge list costs nothing: duplicates only make the
    // true figures smaller.
    let bytes = names.iter().map(String::len).sum();
    limits.check(names.len(), bytes).or_else(|_| {
        let unique: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let bytes = unique.iter().map(|n| n.len()).sum();
        limits.check(unique.len(), bytes)
    })?;
    names.iter().map(|n| parse_name(n)).collect()
}

/// A response's nonce: a per-stream counter, sent in decimal. Nonces only need to be unique
/// within their stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Nonce(u64);

impl From<u64> for Nonce {
    fn from(n: u64) -> Self {
        Self(n)
    }
}

impl std::fmt::Display for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Nonce {
    /// The nonce after this one.
    fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// The nonce in decimal, written into `buf` without allocating.
    pub(crate) fn digits(self, buf: &mut [u8; 20]) -> &[u8] {
        let mut at = buf.len();
        let mut rest = self.0;
        loop {
            at -= 1;
            buf[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        &buf[at..]
    }

    /// Whether a client's `response_nonce` is this nonce.
    fn is(self, nonce: &str) -> bool {
        nonce.as_bytes() == self.digits(&mut [0; 20])
    }
}

/// One state-of-the-world stream (`StreamSecrets`).
///
/// Rules (see the `protocol` docs module):
/// - every response carries every subscribed secret this stream has (one per name), so
///   Envoy's unified mux never sees a watched secret vanish;
/// - a response is sent only when the client lacks something: a new subscription to an
///   existing secret, a first request on the stream, or a changed secret; never on an ACK,
///   a NACK or a stale nonce, so a rejected version is never resent;
/// - a secret removed at the source stays in this stream's responses (Envoy keeps using it;
///   SOTW cannot delete), but it is not offered to new subscriptions.
#[derive(Debug, Default)]
pub(crate) struct Sotw {
    /// Boxed: a map's first node holds room for 11 entries, and most streams have one name.
    names: BTreeMap<SecretName, Box<NameState>>,
    /// The latest value of each subscribed name that exists.
    current: BTreeMap<SecretName, Arc<Secret>>,
    /// What the last response carried.
    sent: BTreeMap<SecretName, Arc<Secret>>,
    /// The nonce and version of the last response.
    last: Option<(Nonce, Version)>,
    dirty: bool,
    limits: StreamLimits,
}

// === impl Sotw ===

impl Sotw {
    /// A session held to `limits`.
    pub(crate) fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Handles a request. Returns what the request meant and, possibly, a response.
    pub(crate) fn on_request(
        &mut self,
        req: &SotwRequest<'_>,
        subs: &mut dyn Subscriptions,
    ) -> Result<(Ack, Option<SotwResponse>), Refusal> {
        check_type(req.type_url)?;
        let ack = match (self.last, req.response_nonce) {
            // A first request, or one that reconnects with state from another stream: the
            // nonce means nothing to us, so it is answered like a first request.
            (None, _) | (_, "") => Ack::None,
            (Some((last, _)), nonce) if !last.is(nonce) => {
                return Ok((
                    Ack::Stale {
                        nonce: nonce.to_owned(),
                    },
                    None,
                ));
            }
            (Some((_, version)), nonce) => match &req.error_detail {
                Some(rejection) => Ack::Nacked {
                    nonce: nonce.to_owned(),
                    version: version.to_string(),
                    rejection: rejection.clone(),
                },
                None => Ack::Acked {
                    nonce: nonce.to_owned(),
                },
            },
        };
        self.settle(&ack, req.error_detail.as_ref(), req.at, subs);
        let first = self.last.is_none() || req.response_nonce.is_empty();
        if first && !req.version_info.is_empty() {
            tracing::debug!(
                version = %Untrusted::new(req.version_info, SHOWN_CHARS),
                "client reconnects holding a version"
            );
        }
        // An ACK names what the stream subscribes to already: nothing to parse or compare.
        if !self.subscribes_exactly(req.resource_names) {
            let names = parse_names(req.resource_names, &self.limits)?;
            self.names.retain(|name, _| {
                let kept = names.contains(name);
                if !kept {
                    subs.unsubscribe(name);
                    self.current.remove(name);
                    self.sent.remove(name);
                }
                kept
            });
            for added in names {
                if self.names.contains_key(&added) {
                    continue;
                }
                let secret = subs.subscribe(&added)?;
                self.names.insert(
                    added.clone(),
                    Box::new(NameState::Unanswered { since: req.at }),
                );
                if let Some(secret) = secret {
                    self.current.insert(added, secret);
                    self.dirty = true;
                }
            }
        }
        if first && !self.current.is_empty() {
            self.dirty = true;
        }
        Ok((ack, self.take_response()))
    }

    /// Records what an ACK or a NACK of the last response says about the names it carried
    /// (every name in `sent`), and tells `subs`.
    fn settle(
        &mut self,
        ack: &Ack,
        rejection: Option<&Rejection>,
        at: SystemTime,
        subs: &mut dyn Subscriptions,
    ) {
        let message = match (ack, rejection) {
            (Ack::Acked { .. }, _) => None,
            (Ack::Nacked { .. }, Some(rejection)) => {
                Some((rejection.code, LastNack::message(rejection)))
            }
            _ => return,
        };
        for (name, secret) in &self.sent {
            let Some(state) = self.names.get_mut(name) else {
                continue;
            };
            let version = secret.version();
            match &message {
                None => state.ack(version),
                Some((code, message)) => state.nack(LastNack {
                    version,
                    code: *code,
                    message: Arc::clone(message),
                    at,
                }),
            }
            subs.answered(name, version, message.is_none());
        }
        // Unless no name took the new message (a NACK of nothing held).
        if let Some((_, message)) = &message
            && Arc::strong_count(message) > 1
        {
            forget_older_messages(&mut self.names, message);
        }
    }

    /// Whether `names` is exactly the set subscribed to now (checked for a few names only;
    /// a longer list is parsed and compared as a set).
    fn subscribes_exactly(&self, names: &[String]) -> bool {
        names.len() == self.names.len()
            && names.len() <= 8
            && names.iter().all(|n| self.names.contains_key(n.as_str()))
            && self
                .names
                .keys()
                .all(|n| names.iter().any(|m| m == n.as_str()))
    }

    /// Records a change of a subscribed secret (`None`: removed at the source).
    pub(crate) fn on_change(&mut self, name: &SecretName, secret: Option<Arc<Secret>>) {
        if !self.names.contains_key(name) {
            return;
        }
        match secret {
            Some(secret) => {
                let stale = self
                    .sent
                    .get(name)
                    .is_none_or(|s| s.version() != secret.version());
                self.dirty |= stale;
                match self.current.get_mut(name) {
                    Some(current) => *current = secret,
                    None => {
                        self.current.insert(name.clone(), secret);
                    }
                }
            }
            None => {
                self.current.remove(name);
            }
        }
    }

    /// The response owed to the client, if any.
    pub(crate) fn take_response(&mut self) -> Option<SotwResponse> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        // Secrets removed at the source keep their last sent value (see the type's docs).
        let mut resources = std::mem::take(&mut self.sent);
        for (name, secret) in &self.current {
            match resources.get_mut(name) {
                Some(held) => *held = Arc::clone(secret),
                None => {
                    resources.insert(name.clone(), Arc::clone(secret));
                }
            }
        }
        resources.retain(|n, _| self.names.contains_key(n));
        if resources.is_empty() {
            return None;
        }
        let version = match resources.values().next() {
            Some(only) if resources.len() == 1 => only.version(),
            _ => {
                let versions: Vec<Version> = resources.values().map(|s| s.version()).collect();
                Version::combine(&versions)
            }
        };
        let nonce = self.last.map_or(Nonce::default(), |(n, _)| n).next();
        self.last = Some((nonce, version));
        let carried = resources
            .iter()
            .map(|(n, s)| (n.clone(), Arc::clone(s)))
            .collect();
        self.sent = resources;
        Some(SotwResponse {
            version,
            nonce,
            resources: carried,
        })
    }

    /// The names this stream subscribes to.
    pub(crate) fn names(&self) -> impl Iterator<Item = &SecretName> {
        self.names.keys()
    }

    /// Whether this stream subscribes to `name`.
    pub(crate) fn subscribes(&self, name: &SecretName) -> bool {
        self.names.contains_key(name)
    }

    /// Every subscribed name with what was sent of it and what the client made of it.
    pub(crate) fn view(&self) -> impl Iterator<Item = NameView<'_>> {
        self.names
            .iter()
            .map(|(name, state)| state.view(name, self.sent.get(name).map(|s| s.version())))
    }
}

/// One incremental stream (`DeltaSecrets`).
///
/// Rules: a name in `resource_names_subscribe` is always sent if it exists, whatever
/// `initial_resource_versions` claims (Envoy relies on it after reconnects); changes send only
/// the changed secret; a secret removed at the source is reported in `removed_resources`
/// (Envoy ignores SDS removals and keeps the last secret); ACK, NACK and stale nonces never
/// cause a response.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    /// Boxed: a map's first node holds room for 11 entries, and most streams have one name.
    names: BTreeMap<SecretName, Box<NameState>>,
    /// What the client holds, as far as we know: the version we last sent per name, and the
    /// nonce of the response that carried it.
    sent: BTreeMap<SecretName, (Version, Nonce)>,
    /// Names whose latest value the client lacks.
    owed: BTreeMap<SecretName, Option<Arc<Secret>>>,
    /// The nonce of the last response.
    nonce: Nonce,
    /// Responses not yet acknowledged (nonce, what they carried), oldest first, for NACK
    /// reports and stale-nonce detection. Described in words only when a NACK is reported.
    in_flight: VecDeque<(Nonce, Carried)>,
    /// The nonce of the last response the client answered (ACK or NACK).
    settled: Nonce,
    /// Bytes of the names in `names`.
    name_bytes: usize,
    limits: StreamLimits,
}

/// Most responses awaiting an ACK that a delta stream remembers.
const MAX_IN_FLIGHT: usize = 64;

/// Most entries of a response remembered for a NACK report.
const MAX_CARRIED: usize = 8;

/// What one delta response carried, for a NACK report: the first [`MAX_CARRIED`] names with
/// the version sent (`None`: removed), and how many there were in all.
#[derive(Debug)]
struct Carried {
    first: Vec<(SecretName, Option<Version>)>,
    count: usize,
}

/// `name@version,...,-removed` for a NACK report.
fn describe(carried: &Carried) -> String {
    let mut out = carried
        .first
        .iter()
        .map(|(n, v)| {
            let n = Untrusted::new(n.as_str(), SHOWN_CHARS);
            match v {
                Some(v) => format!("{n}@{v}"),
                None => format!("-{n}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    if carried.count > carried.first.len() {
        out.push_str(&format!(",… ({} secrets in the response)", carried.count));
    }
    out
}

// === impl Delta ===

impl Delta {
    /// A session held to `limits`.
    pub(crate) fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Handles a request. Returns what the request meant and, possibly, a response.
    pub(crate) fn on_request(
        &mut self,
        req: &DeltaRequest<'_>,
        subs: &mut dyn Subscriptions,
    ) -> Result<(Ack, Option<DeltaResponse>), Refusal> {
        check_type(req.type_url)?;
        let ack = if req.response_nonce.is_empty() {
            Ack::None
        } else {
            let found = self
                .in_flight
                .iter()
                .position(|(n, _)| n.is(req.response_nonce));
            // Acknowledging a response also settles every older one.
            match found
                .and_then(|i| self.in_flight.drain(..=i).next_back())
                .map(|(_, v)| v)
            {
                None => Ack::Stale {
                    nonce: req.response_nonce.to_owned(),
                },
                Some(carried) => match &req.error_detail {
                    Some(rejection) => Ack::Nacked {
                        nonce: req.response_nonce.to_owned(),
                        version: describe(&carried),
                        rejection: rejection.clone(),
                    },
                    None => Ack::Acked {
                        nonce: req.response_nonce.to_owned(),
                    },
                },
            }
        };
        if matches!(ack, Ack::Acked { .. } | Ack::Nacked { .. }) {
            self.settle(req.response_nonce, req.error_detail.as_ref(), req.at, subs);
        }
        // Subscription changes count even on a stale nonce: delta requests are incremental.
        let subscribe = parse_names(req.subscribe, &self.limits)?;
        let unsubscribe = parse_names(req.unsubscribe, &self.limits)?;
        for (name, version) in req.initial_resource_versions.iter().take(MAX_CARRIED) {
            tracing::trace!(
                secret = %Untrusted::new(name, SHOWN_CHARS),
                version = %Untrusted::new(version, SHOWN_CHARS),
                "client already holds"
            );
        }
        for name in unsubscribe {
            if self.names.remove(&name).is_some() {
                self.name_bytes -= name.as_str().len();
                subs.unsubscribe(&name);
            }
            self.sent.remove(&name);
            self.owed.remove(&name);
        }
        let added: Vec<&SecretName> = subscribe
            .iter()
            .filter(|n| !self.names.contains_key(*n))
            .collect();
        self.limits.check(
            self.names.len() + added.len(),
            self.name_bytes + added.iter().map(|n| n.as_str().len()).sum::<usize>(),
        )?;
        for name in subscribe {
            // Sent even if already subscribed or claimed in `initial_resource_versions`.
            let secret = subs.subscribe(&name)?;
            if let std::collections::btree_map::Entry::Vacant(entry) =
                self.names.entry(name.clone())
            {
                self.name_bytes += name.as_str().len();
                entry.insert(Box::new(NameState::Unanswered { since: req.at }));
            }
            if let Some(secret) = secret {
                self.owed.insert(name, Some(secret));
            }
        }
        Ok((ack, self.take_response()))
    }

    /// Records a change of a subscribed secret (`None`: removed at the source).
    pub(crate) fn on_change(&mut self, name: &SecretName, secret: Option<Arc<Secret>>) {
        if !self.names.contains_key(name) {
            return;
        }
        let known = self.sent.get(name).map(|(version, _)| *version);
        match secret {
            Some(s) if known != Some(s.version()) => {
                self.owed.insert(name.clone(), Some(s));
            }
            Some(_) => {
                self.owed.remove(name);
            }
            None if known.is_some() => {
                self.owed.insert(name.clone(), None);
            }
            None => {
                self.owed.remove(name);
            }
        }
    }

    /// The response owed to the client, if any.
    pub(crate) fn take_response(&mut self) -> Option<DeltaResponse> {
        if self.owed.is_empty() {
            return None;
        }
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        self.nonce = self.nonce.next();
        let nonce = self.nonce;
        for (name, secret) in std::mem::take(&mut self.owed) {
            match secret {
                Some(secret) => {
                    self.sent.insert(name.clone(), (secret.version(), nonce));
                    resources.push((name, secret));
                }
                None => {
                    self.sent.remove(&name);
                    removed.push(name);
                }
            }
        }
        let carried = Carried {
            first: resources
                .iter()
                .map(|(n, s)| (n.clone(), Some(s.version())))
                .chain(removed.iter().map(|n| (n.clone(), None)))
                .take(MAX_CARRIED)
                .collect(),
            count: resources.len() + removed.len(),
        };
        self.in_flight.push_back((nonce, carried));
        // A client that never answers must not grow this without bound.
        if self.in_flight.len() > MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        Some(DeltaResponse {
            nonce,
            resources,
            removed,
        })
    }

    /// Records what the answer to the response `nonce` says about the names it carried, and
    /// those of older responses not answered yet (an ACK settles them too), and tells `subs`.
    fn settle(
        &mut self,
        nonce: &str,
        rejection: Option<&Rejection>,
        at: SystemTime,
        subs: &mut dyn Subscriptions,
    ) {
        let Ok(answered) = nonce.parse::<u64>().map(Nonce) else {
            return;
        };
        let message = rejection.map(|r| (r.code, LastNack::message(r)));
        let settled = std::mem::replace(&mut self.settled, answered);
        for (name, (version, sent_in)) in &self.sent {
            let Some(state) = self.names.get_mut(name) else {
                continue;
            };
            let (version, sent_in) = (*version, *sent_in);
            match &message {
                None if settled.0 < sent_in.0 && sent_in.0 <= answered.0 => {
                    state.ack(version);
                    subs.answered(name, version, true);
                }
                Some((code, message)) if sent_in == answered => {
                    state.nack(LastNack {
                        version,
                        code: *code,
                        message: Arc::clone(message),
                        at,
                    });
                    subs.answered(name, version, false);
                }
                _ => {}
            }
        }
        // Unless no name took the new message (a NACK of nothing held).
        if let Some((_, message)) = &message
            && Arc::strong_count(message) > 1
        {
            forget_older_messages(&mut self.names, message);
        }
    }

    /// The names this stream subscribes to.
    pub(crate) fn names(&self) -> impl Iterator<Item = &SecretName> {
        self.names.keys()
    }

    /// Whether this stream subscribes to `name`.
    pub(crate) fn subscribes(&self, name: &SecretName) -> bool {
        self.names.contains_key(name)
    }

    /// Every subscribed name with what was sent of it and what the client made of it.
    pub(crate) fn view(&self) -> impl Iterator<Item = NameView<'_>> {
        self.names
            .iter()
            .map(|(name, state)| state.view(name, self.sent.get(name).map(|(version, _)| *version)))
    }
}

#[cfg(test)]
mod tests;
