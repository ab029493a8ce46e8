//! The Envoy suite (`tests/support/envoy_suite.rs`) with Envoy talking to our SDS server
//! directly.

#[allow(dead_code)]
mod support {
    pub(crate) mod sds;
}

#[path = "support/envoy_suite.rs"]
mod suite;

const VIA: suite::Via = suite::Via::Direct;
