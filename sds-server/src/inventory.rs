//! What the server holds and what each client holds, for an operator: the open streams with
//! what was sent, ACKed and NACKed on each ([`SdsService::clients`]), and the secrets served
//! ([`SdsService::secrets`]). Plain values, read at the moment of the call; never key material.
//!
//! ```no_run
//! # fn demo(sds: &sds_server::SdsService) {
//! for client in sds.clients() {
//!     for sub in client.subscriptions.iter().filter(|s| s.acked != s.sent) {
//!         println!("{} has not ACKed {} yet", client.peer, sub.name);
//!     }
//! }
//! # }
//! ```
//!
//! With the `serde` feature every type here is `serde::Serialize`: times are whole seconds
//! since the Unix epoch (UTC; `jq 'todate'` shows them), versions the 32 hex digits sent to
//! Envoy, key algorithms and OCSP statuses their `Display` text, and a [`Peer`](crate::policy::Peer)
//! its Unix credentials, certificate names and address.
//!
//! [`SdsService::clients`]: crate::SdsService::clients
//! [`SdsService::secrets`]: crate::SdsService::secrets

mod clients;
mod secrets;
#[cfg(feature = "serde")]
mod serialize;

pub(crate) use self::secrets::system_time;
pub use self::{
    clients::{Api, Client, Nack, Subscription},
    secrets::{
        Certificate, CertificateDetails, Details, SecretInfo, Staple, TrustBundleDetails, secrets,
    },
};
