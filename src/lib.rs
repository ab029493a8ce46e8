//! `sds`: serve TLS credentials to Envoy over the Secret Discovery Service.
//!
//! This facade re-exports the workspace's crates behind features:
//! - [`core`] (always): the credential model, validation and snapshots (`sds-core`);
//! - [`fs`] (feature `fs`, default): a watched directory of credentials (`sds-source-fs`);
//! - `k8s` (feature `k8s`): Kubernetes Secrets with Istio's conventions (`sds-source-k8s`);
//! - [`server`] and [`proto`] (feature `server`, default): the tonic SDS service
//!   (`sds-server`) and the wire types (`sds-proto`).
//!
//! See the README for the two commands (serve a directory, run the tests) and `examples/`.

pub use sds_core as core;
#[cfg(feature = "server")]
pub use sds_proto as proto;
#[cfg(feature = "server")]
pub use sds_server as server;
#[cfg(feature = "fs")]
pub use sds_source_fs as fs;
#[cfg(feature = "k8s")]
pub use sds_source_k8s as k8s;

/// The README's Rust examples, compiled (and run, unless marked otherwise) as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
