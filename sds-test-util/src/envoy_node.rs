//! An Envoy-sized `Node`, encoded by hand with Envoy's field numbers (our trimmed schema keeps
//! only `id`, `cluster` and `user_agent_name`, so it cannot build one).
//!
//! Envoy 1.40 sends its whole `Node` on every discovery request, ACKs included, unless
//! `set_node_on_first_message_only` is set: identity, metadata, locality, build version and one
//! `Extension` entry per compiled-in extension (about 500), some 61 KB in all.

use prost::encoding::{WireType, encode_key, encode_varint};

/// The type URL of every SDS resource.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// How many `Extension` entries an Envoy 1.40 `Node` lists.
pub const ENVOY_EXTENSIONS: usize = 500;

/// The node id an Istio ingress gateway's Envoy reports.
pub const NODE_ID: &str =
    "router~10.1.2.3~gateway-7d9f8-abcde.istio-system~istio-system.svc.cluster.local";
/// The node cluster an Istio ingress gateway's Envoy reports.
pub const NODE_CLUSTER: &str = "istio-ingressgateway.istio-system";

fn put_len(buf: &mut Vec<u8>, tag: u32, payload: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(payload.len() as u64, buf);
    buf.extend_from_slice(payload);
}

fn put_str(buf: &mut Vec<u8>, tag: u32, s: &str) {
    put_len(buf, tag, s.as_bytes());
}

fn put_varint(buf: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(v, buf);
}

fn msg(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::new();
    f(&mut buf);
    buf
}

/// `google.protobuf.Struct { map<string, Value> fields = 1 }`, string values (`Value.string_value = 3`).
fn string_struct(entries: &[(&str, &str)]) -> Vec<u8> {
    msg(|b| {
        for (k, v) in entries {
            let value = msg(|x| put_str(x, 3, v));
            put_len(
                b,
                1,
                &msg(|e| {
                    put_str(e, 1, k);
                    put_len(e, 2, &value);
                }),
            );
        }
    })
}

/// Plausible extension names and categories, the way `envoy --version`'s build lists them.
const CATEGORIES: [(&str, &str); 10] = [
    ("envoy.filters.http", "envoy.extensions.filters.http"),
    ("envoy.filters.network", "envoy.extensions.filters.network"),
    (
        "envoy.filters.listener",
        "envoy.extensions.filters.listener",
    ),
    (
        "envoy.transport_sockets.upstream",
        "envoy.extensions.transport_sockets",
    ),
    (
        "envoy.transport_sockets.downstream",
        "envoy.extensions.transport_sockets",
    ),
    ("envoy.access_loggers", "envoy.extensions.access_loggers"),
    ("envoy.clusters", "envoy.extensions.clusters"),
    ("envoy.tracers", "envoy.config.trace"),
    (
        "envoy.matching.input_matchers",
        "envoy.extensions.matching.input_matchers",
    ),
    ("envoy.stats_sinks", "envoy.extensions.stat_sinks"),
];

/// A `Node` (envoy.config.core.v3.Node) as Envoy 1.40 sends it, with `extensions` entries:
/// id = 1, cluster = 2, metadata = 3, locality = 4, user_agent_name = 6,
/// user_agent_build_version = 8, extensions = 9, client_features = 10. `Extension`: name = 1,
/// category = 2, type_urls = 6.
pub fn envoy_node(extensions: usize) -> Vec<u8> {
    msg(|b| {
        put_str(b, 1, NODE_ID);
        put_str(b, 2, NODE_CLUSTER);
        put_len(
            b,
            3,
            &string_struct(&[
                ("ISTIO_VERSION", "1.28.0"),
                ("CLUSTER_ID", "Kubernetes"),
                ("NAMESPACE", "istio-system"),
                ("SERVICE_ACCOUNT", "istio-ingressgateway-service-account"),
                ("WORKLOAD_NAME", "istio-ingressgateway"),
                ("MESH_ID", "cluster.local"),
            ]),
        );
        put_len(
            b,
            4,
            &msg(|l| {
                put_str(l, 1, "eu-west-1");
                put_str(l, 2, "eu-west-1a");
            }),
        );
        put_str(b, 6, "envoy");
        // BuildVersion { SemanticVersion version = 1; Struct metadata = 2 }.
        put_len(
            b,
            8,
            &msg(|v| {
                put_len(
                    v,
                    1,
                    &msg(|s| {
                        put_varint(s, 1, 1);
                        put_varint(s, 2, 40);
                        put_varint(s, 3, 0);
                    }),
                );
                put_len(
                    v,
                    2,
                    &string_struct(&[
                        ("build.type", "RELEASE"),
                        ("revision.sha", "4f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f"),
                        ("revision.status", "Clean"),
                        ("ssl.version", "BoringSSL"),
                    ]),
                );
            }),
        );
        for i in 0..extensions {
            let (category, package) = CATEGORIES[i % CATEGORIES.len()];
            put_len(
                b,
                9,
                &msg(|e| {
                    put_str(e, 1, &format!("{category}.extension_{i:03}"));
                    put_str(e, 2, category);
                    put_str(e, 6, &format!("{package}.ext_{i:03}.v3.Config"));
                }),
            );
        }
        for feature in [
            "envoy.config.require-any-fields-contain-struct",
            "envoy.lb.does_not_support_overprovisioning",
            "envoy.lrs.supports_send_all_clusters",
            "fmt.json_format",
            "xds.config.resource-in-sotw",
        ] {
            put_str(b, 10, feature);
        }
    })
}

/// The `Node` a minimal client sends: id, cluster and user agent only.
pub fn minimal_node() -> Vec<u8> {
    msg(|b| {
        put_str(b, 1, NODE_ID);
        put_str(b, 2, NODE_CLUSTER);
        put_str(b, 6, "envoy");
    })
}

/// A state-of-the-world `DiscoveryRequest` as Envoy encodes it (version_info = 1, node = 2,
/// resource_names = 3, type_url = 4, response_nonce = 5), with `node` already encoded.
pub fn put_discovery_request(
    buf: &mut impl bytes::BufMut,
    node: &[u8],
    version: &str,
    name: &str,
    nonce: &str,
) {
    fn key(buf: &mut impl bytes::BufMut, tag: u32, len: usize) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }
    if !version.is_empty() {
        key(buf, 1, version.len());
        buf.put_slice(version.as_bytes());
    }
    key(buf, 2, node.len());
    buf.put_slice(node);
    key(buf, 3, name.len());
    buf.put_slice(name.as_bytes());
    key(buf, 4, SECRET_TYPE_URL.len());
    buf.put_slice(SECRET_TYPE_URL.as_bytes());
    if !nonce.is_empty() {
        key(buf, 5, nonce.len());
        buf.put_slice(nonce.as_bytes());
    }
}

/// The encoded length of [`put_discovery_request`]'s output.
pub fn discovery_request_len(node: &[u8], version: &str, name: &str, nonce: &str) -> usize {
    fn field(len: usize) -> usize {
        1 + prost::encoding::encoded_len_varint(len as u64) + len
    }
    let opt = |s: &str| if s.is_empty() { 0 } else { field(s.len()) };
    opt(version) + field(node.len()) + field(name.len()) + field(SECRET_TYPE_URL.len()) + opt(nonce)
}
