//! The Envoy suite (`tests/support/envoy_suite.rs`) with Envoy talking to our SDS server
//! directly.

#[path = "support/envoy_suite.rs"]
mod suite;

const VIA: suite::Via = suite::Via::Direct;
