//! What each open stream holds: [`Client`] and its [`Subscription`]s.

use std::{fmt, time::SystemTime};

use sds_core::{SecretName, Version};

use crate::policy::Peer;

/// One open stream (`StreamSecrets` or `DeltaSecrets`) and what its client holds.
///
/// The node id and cluster are what the client claims: escaped and cut short, never trusted.
/// The [`Peer`] is what the transport proves, and what the policy decides for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Client {
    /// Who the transport says the client is.
    pub peer: Peer,
    /// The node id the client claims (Envoy's `--service-node`), once a request carried one.
    pub node_id: Option<String>,
    /// The cluster the client claims (Envoy's `--service-cluster`), if it sent one.
    pub cluster: Option<String>,
    /// Which SDS method the stream uses.
    pub api: Api,
    /// When the stream opened.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::unix_seconds")
    )]
    pub connected: SystemTime,
    /// Every name the stream subscribes to, in name order.
    pub subscriptions: Vec<Subscription>,
}

/// Which SDS method a stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Api {
    /// `StreamSecrets`: state of the world.
    Sotw,
    /// `DeltaSecrets`: incremental.
    Delta,
}

impl Api {
    /// `sotw` or `delta`.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Sotw => "sotw",
            Api::Delta => "delta",
        }
    }
}

/// `sotw` or `delta`.
impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One name a stream subscribes to, and what its client made of it.
///
/// Versions are the secret's own (as in a delta response, or a state-of-the-world response
/// carrying that secret alone): a state-of-the-world response with several secrets carries a
/// digest of theirs as its `version_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Subscription {
    /// The name as the client asked for it.
    #[cfg_attr(feature = "serde", serde(serialize_with = "super::serialize::display"))]
    pub name: SecretName,
    /// The version this stream sent last, if any (a delta stream forgets it when the secret
    /// is removed at the source).
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::option_display")
    )]
    pub sent: Option<Version>,
    /// The last version the client ACKed on this stream, if any.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::option_display")
    )]
    pub acked: Option<Version>,
    /// The last NACK of a response that carried this name, if any: the client kept what it had.
    pub nack: Option<Nack>,
    /// Why the policy denies this name to the client, if it does: it is never sent.
    pub denied: Option<String>,
    /// When the stream subscribed to this name, if nothing of it was sent, ACKed or NACKed
    /// since: a secret that does not exist (yet), or a denied one. Envoy waits
    /// `initial_fetch_timeout` (15 s by default) for a secret before it starts without it.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::option_unix_seconds")
    )]
    pub waiting_since: Option<SystemTime>,
}

/// A NACK: the client rejected a response and kept its previous version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Nack {
    /// The version of the name the rejected response carried.
    #[cfg_attr(feature = "serde", serde(serialize_with = "super::serialize::display"))]
    pub version: Version,
    /// The gRPC code of the client's `error_detail`.
    pub code: i32,
    /// The client's message (Envoy says what it could not load), escaped and cut to 1 KiB:
    /// client text.
    pub message: String,
    /// When the NACK arrived.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::serialize::unix_seconds")
    )]
    pub at: SystemTime,
}
