//! `--policy`: who may have which secret. A rules file applies on every transport; without
//! one, each transport has its default, logged at startup.

use std::{path::Path, sync::Arc};

use sds::server::policy::{AllowAnyPeer, Policy, RulesFile, UnixPeers};

use super::{Transport, describe, fail};

/// The policy chosen with `--policy`, and how to name it in the logs.
pub(crate) struct Chosen {
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) what: String,
    /// Whether it grants by client certificate only (no Unix-socket rule).
    pub(crate) certificates_only: bool,
}

/// Loads the rules file at `path` and spawns its driver, which reloads it when it changes.
/// A file that cannot be used ends the process: one `error:` line naming the file, the place
/// in it and the reason, and exit status 2.
pub(crate) async fn rules(path: &Path) -> Chosen {
    match RulesFile::load(path).await {
        Ok((rules, driver)) => {
            tokio::spawn(driver);
            Chosen {
                policy: Arc::new(rules),
                what: format!("rules file {}", path.display()),
                certificates_only: false,
            }
        }
        Err(error) => fail(&describe(&error)),
    }
}

/// The policy to serve `transport` with: `chosen`, else the transport's default. Logs which
/// it is, and warns where a combination grants more, or less, than it may seem to.
pub(crate) fn resolve(transport: &Transport, chosen: Option<Chosen>) -> Arc<dyn Policy> {
    if let Some(chosen) = chosen {
        tracing::info!(policy = %chosen.what, "who may have which secret");
        match transport {
            Transport::Tcp { addr } => tracing::warn!(
                address = %addr,
                "plain TCP proves no identity (no uid, no certificate): the policy grants \
                 nothing to its clients; serve TLS or a Unix socket"
            ),
            Transport::Unix { .. } if chosen.certificates_only => tracing::warn!(
                "the policy grants by client certificate, which a Unix-socket peer does not \
                 have: it grants nothing here; serve TLS (--tls-cert, --tls-key, --client-ca)"
            ),
            Transport::Unix { .. } | Transport::Tls { .. } => {}
        }
        return chosen.policy;
    }
    match transport {
        Transport::Unix { mode, .. } => {
            let own = UnixPeers::same_user();
            tracing::info!(
                allowed = %own,
                "Unix socket: only the server's own user and root get secrets (no --policy)"
            );
            // Group or others may connect.
            if mode & 0o077 != 0 {
                tracing::warn!(
                    mode = %format!("{mode:04o}"),
                    allowed = %own,
                    "the socket mode lets other users connect, but without --policy they get \
                     no secret: grant them with a --policy rule (e.g. `gid:N`)"
                );
            }
            Arc::new(own)
        }
        Transport::Tls { .. } => {
            tracing::info!(
                "TLS without --policy: every client with a certificate from the client CA gets \
                 every secret"
            );
            Arc::new(AllowAnyPeer)
        }
        Transport::Tcp { addr } if addr.ip().is_loopback() => {
            tracing::warn!(
                address = %addr,
                "plain TCP: every local user can read every secret; \
                 prefer a Unix socket (unix:/path) or TLS"
            );
            Arc::new(AllowAnyPeer)
        }
        Transport::Tcp { addr } => {
            tracing::warn!(
                address = %addr,
                "INSECURE: plain TCP on a non-loopback address (--insecure): ANYONE WHO CAN \
                 REACH THIS PORT CAN READ EVERY PRIVATE KEY"
            );
            Arc::new(AllowAnyPeer)
        }
    }
}
