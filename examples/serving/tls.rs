//! `--tls-cert`, `--tls-key`, `--client-ca`: the TLS of the SDS channel, its files read,
//! validated and watched by `sds-source-fs` as any credential is, into a reader of their own
//! that `sds_server::tls::ServerTls` follows.

use sds::{
    core::{SecretName, publish},
    fs::FileSource,
    server::tls::ServerTls,
};

use super::{TlsFiles, describe};

/// The names of the two secrets in the TLS reader (they appear in its messages).
const CERTIFICATE: &str = "tls-cert";
const CLIENT_CA: &str = "client-ca";

/// Reads and watches `files`, and returns the TLS configuration that follows them, or why
/// they cannot be used now (a file missing, unreadable or invalid: one line naming it).
pub(crate) async fn follow(files: &TlsFiles) -> Result<ServerTls, String> {
    let name = |name| SecretName::new(name).expect("a valid constant name");
    let (certificate, client_ca) = (name(CERTIFICATE), name(CLIENT_CA));
    let source = FileSource::new()
        .credential(certificate.clone(), &files.cert, &files.key)
        .bundle(client_ca.clone(), &files.client_ca);
    let (mut reader, driver) = publish(source);
    // Runs as long as the server: a file that changes is read again, and new handshakes use
    // what it holds once it is valid.
    tokio::spawn(driver);
    let snapshot = reader
        .ready()
        .await
        .map_err(|_| "the TLS files' watcher stopped".to_owned())?;
    let rejected: Vec<String> = snapshot
        .rejected()
        .map(|(_, error)| describe(&**error))
        .collect();
    if !rejected.is_empty() {
        return Err(format!("cannot serve TLS: {}", rejected.join("; ")));
    }
    let tls = ServerTls::follow(reader, certificate, client_ca);
    tls.config()
        .map_err(|error| format!("cannot serve TLS: {}", describe(&error)))?;
    Ok(tls)
}
