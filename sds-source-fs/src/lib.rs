//! A directory of TLS credentials, watched for changes, as an `sds-core`
//! [`SecretSource`](sds_core::SecretSource).
//!
//! [`DirSource`] yields the complete contents of a directory, then again after every change:
//! directories are watched with inotify (through `notify-debouncer-full`), bursts of events are
//! debounced into one reload, and a reload, on the blocking thread pool, reads and validates
//! at the current time only the credentials whose files changed. [`scan`] is one read of
//! everything, without watching. [`FileSource`] serves a few credentials named by explicit
//! file paths (e.g. the SDS server's own certificate and client CA) with the same parsing,
//! validation and watching.
//!
//! # Watching, and what it cannot see
//!
//! Each watch is on one directory, not recursive, and only where a change matters: the nearest
//! existing ancestor of `DIR` (so that `DIR`, or a parent, being removed, created or replaced
//! is seen), `DIR`, each credential directory, and each directory a symlink among its files
//! leads into (kubelet's payload directory, a certbot `archive/`). The watches follow the
//! directory on every reload: a `DIR` or parent deleted and created again is watched again.
//!
//! A directory that cannot be watched (no read permission, the inotify watch limit reached) is
//! logged once at warn level, naming it and why; every other credential stays watched. As a
//! safety net for that and for anything inotify does not report, the directory is read again
//! every [rescan interval](DirSource::rescan) (30 s by default). That read is cheap: a
//! credential whose directory and files have the same identity, size and times as at the last
//! read is not read again, and one whose files have the same content (by SHA-256) is not
//! parsed again; an update is yielded only if something changed. A certificate rejected for
//! the time (not valid yet, expired) is validated again at every reload, and one not valid yet
//! is read again when its notBefore passes.
//!
//! # Layout
//!
//! Each subdirectory `DIR/<name>/` is one credential. Its files have the names of the keys of a
//! Kubernetes Secret, so that a directory and a Secret with the same keys mean the same thing:
//!
//! | file | served as |
//! | --- | --- |
//! | `cert` + `key`, or `tls.crt` + `tls.key` | `<name>`: a certificate chain (leaf first) and its private key |
//! | `cacert`, or `ca.crt` | `<name>-cacert`: CA certificates that verify peers |
//! | `crl`, or `ca.crl` | attached to `<name>-cacert`: certificate revocation lists |
//! | `tls.ocsp-staple` | attached to `<name>`: a DER OCSP response for the leaf, which Envoy staples |
//!
//! - Which files win is written once, in [`sds_core::layout`], for directories and Kubernetes
//!   Secrets alike, so a Secret mounted as a volume gives what the Secret gives through the
//!   API: a complete, non-empty `cert` + `key` pair wins over `tls.crt` + `tls.key`, and an
//!   empty file loses to a non-empty one (`cacert` wins over `ca.crt` likewise); the CRL that
//!   goes with the CA wins (`crl` with `cacert`, `ca.crl` with `ca.crt`), else the other is
//!   taken; an empty `tls.ocsp-staple` is no staple. Other files are not read.
//! - A directory with only CA files is a validation context alone, served as `<name>-cacert`
//!   and as `<name>` (as a Kubernetes Secret holding only a CA is).
//! - Problems reject the secret they concern, with a reason that names the file: a chain without
//!   its key ("found …/tls.crt but no tls.key"), a CRL without a CA, a file that cannot be read
//!   or is larger than [`sds_core::MAX_INPUT_LEN`] (it is not read then), or content that does
//!   not validate (a key that does not match the chain, an expired leaf, garbage). The
//!   publisher keeps serving the last good version of a rejected secret, and never serves a name
//!   that was never valid. A chain renamed into place before its new key is therefore rejected
//!   for a moment, and the write of the key triggers the reload that heals it.
//! - Names starting with `.` are not credentials (kubelet's `..data`, editors' files), nor is
//!   `lost+found` (skipped silently). Nor are plain files, names that are not valid
//!   [`SecretName`](sds_core::SecretName)s, or directories without any of the files above:
//!   those are skipped and logged once, at warn level.
//! - A credential directory that cannot be read (no permission) rejects `<name>`, with the
//!   directory and the reason; the others are not disturbed.
//! - A credential directory that disappears disappears from the next update; a new one appears.
//!   If `DIR` itself (or a parent) is missing, is not a directory or is unreadable, the stream
//!   yields an [`Error::ReadDir`] once (the publisher keeps its last snapshot) and reloads when
//!   `DIR` reappears: a `DIR` missing at start is waited for.
//!
//! ```text
//! /etc/sds/credentials/
//! ├── httpbin-credential/      -> httpbin-credential and httpbin-credential-cacert
//! │   ├── tls.crt
//! │   ├── tls.key
//! │   └── ca.crt
//! └── client-roots/            -> client-roots-cacert
//!     ├── cacert
//!     └── crl
//! ```
//!
//! # Kubernetes secret volumes
//!
//! Mount each Secret as its own volume at `DIR/<name>`, without `subPath` (kubelet never updates
//! files mounted with `subPath`):
//!
//! ```yaml
//! volumes:
//!   - name: httpbin-credential
//!     secret: { secretName: httpbin-credential }
//! containers:
//!   - name: sds
//!     volumeMounts:
//!       - name: httpbin-credential
//!         mountPath: /etc/sds/credentials/httpbin-credential
//!         readOnly: true
//! ```
//!
//! In such a volume the files are symlinks through `..data` to a timestamped directory, and
//! kubelet updates a Secret by writing a new timestamped directory and renaming a new `..data`
//! symlink over the old one. The credential directory is watched, so the swap is seen, and a
//! credential is read again if `..data` changed while it was being read, so a chain and its key
//! come from the same version. Mounting one Secret volume at `DIR` itself is not supported:
//! `DIR` holds one subdirectory per credential.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use sds_source_fs::DirSource;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let source = DirSource::new("/etc/sds/credentials")
//!     .debounce(Duration::from_millis(200))
//!     .rescan(Duration::from_secs(60));
//! let (mut reader, driver) = sds_core::publish(source);
//! tokio::spawn(driver); // the embedder owns the task; dropping it stops the watcher
//! let snapshot = reader.ready().await?;
//! for (name, secret) in snapshot.iter() {
//!     println!("{name}: {} {}", secret.kind(), secret.version());
//! }
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! This crate has no Cargo features.
//!
//! # Scope
//!
//! This crate reads and watches local files. It does not validate credentials itself (that is
//! `sds-core`), talk to the Kubernetes API (`sds-source-k8s`), serve SDS (`sds-server`), or
//! write anything. A certificate that expires while its files stay unchanged stays served (the
//! rescan does not validate unchanged files again).

mod credential;
mod error;
mod files;
mod layout;
mod reload;
mod scan;
mod source;
mod stamp;
mod watch;

pub use crate::{error::Error, files::FileSource, scan::scan, source::DirSource};
