//! How this server speaks SDS (documentation only).
//!
//! # Names and versions
//! A resource is named by the credential: `httpbin-credential` is a `tls_certificate`,
//! `httpbin-credential-cacert` the `validation_context` that verifies clients. Versions are
//! derived from content (a SHA-256 digest of the DER that is served), so the same credential
//! has the same version after a restart and on every replica.
//!
//! Istio's external-SDS form is accepted on every method: `sds://NAME` (what Istio 1.26+
//! asks for when a gateway's `credentialName` is `sds://NAME`) is served from the credential
//! `NAME`, and `sds://NAME-cacert` from `NAME-cacert`, under the name asked for. A state-of-the-world response
//! with one secret carries that secret's version; with several, a digest of theirs.
//!
//! # State of the world (`StreamSecrets`)
//! - Envoy opens one stream per secret by default (`api_config_source` of type `GRPC`); many
//!   names per stream work too. Every response carries every subscribed secret that exists,
//!   so Envoy's unified mux never sees a watched secret vanish from a response.
//! - A response is sent when the client lacks something: on the first request of a stream
//!   (also when it carries a version from an earlier server: a reconnect is always answered),
//!   when it subscribes to a secret that exists, and when a subscribed secret changes.
//! - An ACK (nonce of the last response, no `error_detail`) sends nothing. A NACK (with
//!   `error_detail`) is logged with Envoy's message and counted; the rejected version is
//!   never resent, and the next change is sent as usual. A request whose nonce is not the
//!   latest one sent is stale and ignored.
//! - The client's `Node` is read from the first request of a stream that carries one; the
//!   `node` of later requests (Envoy repeats it on every request, ACKs included, some 61 KB
//!   with its extension list) is skipped undecoded, as xDS allows
//!   (`set_node_on_first_message_only`). Only `id`, `cluster` and `user_agent_name` are kept.
//! - A requested secret that does not exist is held without an error: the stream stays open
//!   and the secret is sent when it appears. Envoy's `initial_fetch_timeout` (15 s by default)
//!   decides how long its listener waits for it.
//! - An empty `resource_names` unsubscribes from everything (SDS has no wildcard).
//! - A secret removed at the source is not offered to new subscriptions; streams that hold it
//!   keep it (state of the world cannot delete, and Envoy keeps the last secret anyway).
//!
//! # Incremental (`DeltaSecrets`)
//! - A name in `resource_names_subscribe` is sent if it exists, even when
//!   `initial_resource_versions` says the client holds it (Envoy relies on that after a
//!   reconnect, envoy#33607). Changes send only the changed secrets.
//! - ACK and NACK are matched by nonce; a NACK is logged and never causes a resend.
//!   Subscription changes in a request count even when its nonce is stale.
//! - A secret removed at the source is sent in `removed_resources`. Envoy ignores SDS removals
//!   and keeps serving the last secret until the listener that uses it goes away.
//!
//! # `FetchSecrets`
//! Answers with the requested secrets that exist; `NOT_FOUND` when none does, `UNAVAILABLE`
//! before the first snapshot.
//!
//! # What is never sent
//! A credential whose input is invalid never reaches a stream: the source rejects it, the
//! publisher keeps the last good version, and only validated secrets are encoded.
