//! The Envoy suite (`tests/support/envoy_suite.rs`) through a relay: Envoy talks to an
//! `sds-server` whose source is `sds-source-xds` subscribed to the server over the directory,
//! so every scenario (rotation, SNI, mutual TLS, a bad key held back, a late credential, a
//! restart, Istio's `sds://` names, OCSP staples) also crosses the SDS client.

#[allow(dead_code)]
mod support {
    pub(crate) mod sds;
}

#[path = "support/envoy_suite.rs"]
mod suite;

const VIA: suite::Via = suite::Via::Relay;
