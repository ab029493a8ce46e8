//! Wire-compatibility tests for the trimmed schema.
//!
//! The "Envoy side" of each test is written by hand, field number by field
//! number, from Envoy's own `.proto` definitions (not from our trimmed ones),
//! so a wrong field number or type in `proto/` shows up here.

use bytes::Bytes;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use sds_proto::SECRET_TYPE_URL;
use sds_proto::envoy::config::core::v3::{DataSource, Node, data_source};
use sds_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use sds_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use sds_proto::google::protobuf::Any;
use sds_proto::google::rpc::Status;

// ---------------------------------------------------------------------------
// A tiny hand encoder.
// ---------------------------------------------------------------------------

/// Appends a length-delimited field (string, bytes, sub-message, map entry).
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

fn put_fixed64(buf: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Encodes a message body built by `f`.
fn msg(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::new();
    f(&mut buf);
    buf
}

// ---------------------------------------------------------------------------
// Envoy's messages, per Envoy's field numbers.
// ---------------------------------------------------------------------------

/// google.protobuf.Struct { map<string, Value> fields = 1; } with
/// Value { string_value = 3; number_value = 2 (double); bool_value = 4; }.
fn envoy_struct(entries: &[(&str, &str)]) -> Vec<u8> {
    msg(|b| {
        for (k, v) in entries {
            let value = msg(|v_buf| put_str(v_buf, 3, v));
            let entry = msg(|e| {
                put_str(e, 1, k);
                put_len(e, 2, &value);
            });
            put_len(b, 1, &entry);
        }
        // A number and a bool, for other wire types inside skipped data.
        let number = msg(|v_buf| put_fixed64(v_buf, 2, 42.5f64.to_bits()));
        put_len(
            b,
            1,
            &msg(|e| {
                put_str(e, 1, "NUMBER");
                put_len(e, 2, &number);
            }),
        );
        let boolean = msg(|v_buf| put_varint(v_buf, 4, 1));
        put_len(
            b,
            1,
            &msg(|e| {
                put_str(e, 1, "FLAG");
                put_len(e, 2, &boolean);
            }),
        );
    })
}

/// envoy.config.core.v3.BuildVersion { SemanticVersion version = 1;
/// Struct metadata = 2; } with SemanticVersion { uint32 major_number = 1;
/// minor_number = 2; patch = 3; }.
fn envoy_build_version(major: u64, minor: u64, patch: u64) -> Vec<u8> {
    msg(|b| {
        put_len(
            b,
            1,
            &msg(|v| {
                put_varint(v, 1, major);
                put_varint(v, 2, minor);
                put_varint(v, 3, patch);
            }),
        );
        put_len(
            b,
            2,
            &envoy_struct(&[
                ("build.type", "RELEASE"),
                ("revision.sha", "0123456789abcdef0123456789abcdef01234567"),
                ("revision.status", "Clean"),
                ("ssl.version", "BoringSSL"),
            ]),
        );
    })
}

const NODE_ID: &str = "sidecar~10.1.2.3~web-7d9f8-abcde.prod~prod.svc.cluster.local";
const NODE_CLUSTER: &str = "web.prod";

/// A Node the way Envoy sends it: envoy.config.core.v3.Node with
/// id = 1, cluster = 2, metadata = 3, locality = 4, user_agent_name = 6,
/// user_agent_build_version = 8, extensions = 9, client_features = 10,
/// dynamic_parameters = 12.
fn envoy_node(extensions: usize) -> Vec<u8> {
    msg(|b| {
        put_str(b, 1, NODE_ID);
        put_str(b, 2, NODE_CLUSTER);
        put_len(
            b,
            3,
            &envoy_struct(&[
                ("ISTIO_VERSION", "1.22.0"),
                ("CLUSTER_ID", "Kubernetes"),
                ("NAMESPACE", "prod"),
                ("SERVICE_ACCOUNT", "web"),
            ]),
        );
        // Locality { region = 1; zone = 2; sub_zone = 3; }
        put_len(
            b,
            4,
            &msg(|l| {
                put_str(l, 1, "eu-west-1");
                put_str(l, 2, "eu-west-1a");
                put_str(l, 3, "rack-7");
            }),
        );
        put_str(b, 6, "envoy");
        put_len(b, 8, &envoy_build_version(1, 34, 2));
        // Extension { name = 1; category = 2; type_descriptor = 3;
        //             BuildVersion version = 4; bool disabled = 5; }
        for i in 0..extensions {
            let ext = msg(|e| {
                put_str(e, 1, &format!("envoy.filters.http.extension_number_{i:04}"));
                put_str(e, 2, "envoy.filters.http");
                put_str(
                    e,
                    3,
                    &format!("envoy.extensions.filters.http.ext{i}.v3.Config"),
                );
                put_len(e, 4, &envoy_build_version(1, 34, 2));
                if i % 7 == 0 {
                    put_varint(e, 5, 1);
                }
            });
            put_len(b, 9, &ext);
        }
        put_str(b, 10, "envoy.lb.does_not_support_overprovisioning");
        put_str(b, 10, "envoy.lrs.supports_send_all_clusters");
        put_str(b, 10, "xds.config.resource-in-sotw");
        // map<string, xds.core.v3.ContextParams> dynamic_parameters = 12;
        // ContextParams { map<string, string> params = 1; }
        let params = msg(|p| {
            put_len(
                p,
                1,
                &msg(|e| {
                    put_str(e, 1, "shard");
                    put_str(e, 2, "7");
                }),
            );
        });
        put_len(
            b,
            12,
            &msg(|e| {
                put_str(e, 1, SECRET_TYPE_URL);
                put_len(e, 2, &params);
            }),
        );
    })
}

/// google.rpc.Status { int32 code = 1; string message = 2;
/// repeated Any details = 3; } with Any { type_url = 1; bytes value = 2; }.
fn envoy_status(code: u64, message: &str) -> Vec<u8> {
    msg(|b| {
        put_varint(b, 1, code);
        put_str(b, 2, message);
        put_len(
            b,
            3,
            &msg(|a| {
                put_str(a, 1, "type.googleapis.com/google.rpc.DebugInfo");
                put_len(a, 2, &[0x12, 0x03, b'a', b'b', b'c']);
            }),
        );
    })
}

// ---------------------------------------------------------------------------
// (a) Requests as Envoy sends them decode with the trimmed schema.
// ---------------------------------------------------------------------------

#[test]
fn envoy_sotw_nack_with_full_node_decodes() {
    let node = envoy_node(500);
    assert!(
        node.len() > 50_000,
        "the test Node should be Envoy-sized, got {} bytes",
        node.len()
    );

    // envoy.service.discovery.v3.DiscoveryRequest: version_info = 1,
    // node = 2, resource_names = 3, type_url = 4, response_nonce = 5,
    // error_detail = 6, resource_locators = 7 (unknown to us).
    let wire = msg(|b| {
        put_str(b, 1, "v41");
        put_len(b, 2, &node);
        put_str(b, 3, "server_cert");
        put_str(b, 3, "validation_context");
        put_str(b, 4, SECRET_TYPE_URL);
        put_str(b, 5, "nonce-42");
        put_len(
            b,
            6,
            &envoy_status(13, "Failed to load certificate chain from <inline>"),
        );
        put_len(b, 7, &msg(|l| put_str(l, 1, "ignored_locator")));
    });

    let request = DiscoveryRequest::decode(wire.as_slice()).expect("decode DiscoveryRequest");

    assert_eq!(request.version_info, "v41");
    assert_eq!(
        request.resource_names,
        ["server_cert", "validation_context"]
    );
    assert_eq!(request.type_url, SECRET_TYPE_URL);
    assert_eq!(request.response_nonce, "nonce-42");
    let node = request.node.as_ref().expect("node");
    assert_eq!(node.id, NODE_ID);
    assert_eq!(node.cluster, NODE_CLUSTER);
    assert_eq!(node.user_agent_name, "envoy");
    let status = request.error_detail.as_ref().expect("error_detail");
    assert_eq!(status.code, 13);
    assert_eq!(
        status.message,
        "Failed to load certificate chain from <inline>"
    );
    assert_eq!(status.details.len(), 1);
    assert_eq!(
        status.details[0].type_url,
        "type.googleapis.com/google.rpc.DebugInfo"
    );
    assert_eq!(status.details[0].value, Bytes::from_static(b"\x12\x03abc"));

    // Everything the schema omits was skipped, not kept: the decoded request
    // is tiny compared with what Envoy sent.
    assert!(
        request.encoded_len() < 1_000,
        "decoded request should drop the unknown Node fields, re-encodes to {} bytes",
        request.encoded_len()
    );
}

#[test]
fn envoy_sotw_ack_decodes() {
    // An ACK: same Node again, new version, nonce, no error_detail.
    let wire = msg(|b| {
        put_str(b, 1, "v42");
        put_len(b, 2, &envoy_node(500));
        put_str(b, 3, "server_cert");
        put_str(b, 4, SECRET_TYPE_URL);
        put_str(b, 5, "nonce-43");
    });
    let request = DiscoveryRequest::decode(wire.as_slice()).expect("decode ACK");
    assert_eq!(request.version_info, "v42");
    assert_eq!(request.response_nonce, "nonce-43");
    assert_eq!(request.resource_names, ["server_cert"]);
    assert!(request.error_detail.is_none());
    assert_eq!(request.node.map(|n| n.id).as_deref(), Some(NODE_ID));
}

#[test]
fn envoy_delta_request_decodes() {
    // envoy.service.discovery.v3.DeltaDiscoveryRequest: node = 1,
    // type_url = 2, resource_names_subscribe = 3,
    // resource_names_unsubscribe = 4, initial_resource_versions = 5 (map),
    // response_nonce = 6, error_detail = 7, resource_locators_subscribe = 8.
    let wire = msg(|b| {
        put_len(b, 1, &envoy_node(500));
        put_str(b, 2, SECRET_TYPE_URL);
        put_str(b, 3, "server_cert");
        put_str(b, 3, "client_cert");
        put_str(b, 4, "old_cert");
        for (name, version) in [("server_cert", "v1"), ("trust", "v9")] {
            put_len(
                b,
                5,
                &msg(|e| {
                    put_str(e, 1, name);
                    put_str(e, 2, version);
                }),
            );
        }
        put_str(b, 6, "d-7");
        put_len(b, 7, &envoy_status(3, "bad key"));
        put_len(b, 8, &msg(|l| put_str(l, 1, "ignored_locator")));
    });

    let request = DeltaDiscoveryRequest::decode(wire.as_slice()).expect("decode delta request");
    let node = request.node.as_ref().expect("node");
    assert_eq!(node.id, NODE_ID);
    assert_eq!(node.cluster, NODE_CLUSTER);
    assert_eq!(request.type_url, SECRET_TYPE_URL);
    assert_eq!(
        request.resource_names_subscribe,
        ["server_cert", "client_cert"]
    );
    assert_eq!(request.resource_names_unsubscribe, ["old_cert"]);
    assert_eq!(request.initial_resource_versions.len(), 2);
    assert_eq!(
        request
            .initial_resource_versions
            .get("server_cert")
            .map(String::as_str),
        Some("v1")
    );
    assert_eq!(
        request
            .initial_resource_versions
            .get("trust")
            .map(String::as_str),
        Some("v9")
    );
    assert_eq!(request.response_nonce, "d-7");
    let status = request.error_detail.as_ref().expect("error_detail");
    assert_eq!((status.code, status.message.as_str()), (3, "bad key"));
}

#[test]
fn our_node_encodes_with_envoys_field_numbers() {
    let node = Node {
        id: "i".to_owned(),
        cluster: "c".to_owned(),
        user_agent_name: "u".to_owned(),
    };
    assert_eq!(
        node.encode_to_vec(),
        msg(|b| {
            put_str(b, 1, "i");
            put_str(b, 2, "c");
            put_str(b, 6, "u");
        })
    );
}

// ---------------------------------------------------------------------------
// (b) Secrets and responses: exact bytes on the wire.
// ---------------------------------------------------------------------------

fn inline_bytes(b: &'static [u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(Bytes::from_static(b))),
    })
}

fn tls_secret() -> Secret {
    Secret {
        name: "a".to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline_bytes(b"C"),
            private_key: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString("K".to_owned())),
            }),
            ocsp_staple: Some(DataSource {
                specifier: Some(data_source::Specifier::Filename("o".to_owned())),
            }),
        })),
    }
}

fn validation_secret() -> Secret {
    Secret {
        name: "ca".to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(data_source::Specifier::EnvironmentVariable("CA".to_owned())),
                }),
                crl: inline_bytes(b"R"),
                only_verify_leaf_cert_crl: true,
            },
        )),
    }
}

#[test]
fn tls_certificate_secret_exact_bytes() {
    // Secret.name = 1 "a"; Secret.tls_certificate = 2 {
    //   TlsCertificate.certificate_chain = 1 { DataSource.inline_bytes = 2 "C" }
    //   TlsCertificate.private_key = 2 { DataSource.inline_string = 3 "K" }
    //   TlsCertificate.ocsp_staple = 4 { DataSource.filename = 1 "o" } }
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x0a, 0x01, b'a',
        0x12, 0x0f,
            0x0a, 0x03, 0x12, 0x01, b'C',
            0x12, 0x03, 0x1a, 0x01, b'K',
            0x22, 0x03, 0x0a, 0x01, b'o',
    ];
    let secret = tls_secret();
    assert_eq!(secret.encode_to_vec(), expected);
    assert_eq!(Secret::decode(expected).expect("decode"), secret);
}

#[test]
fn validation_context_secret_exact_bytes() {
    // Secret.name = 1 "ca"; Secret.validation_context = 4 {
    //   CertificateValidationContext.trusted_ca = 1 { DataSource.environment_variable = 4 "CA" }
    //   CertificateValidationContext.crl = 7 { DataSource.inline_bytes = 2 "R" }
    //   CertificateValidationContext.only_verify_leaf_cert_crl = 14 true }
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x0a, 0x02, b'c', b'a',
        0x22, 0x0d,
            0x0a, 0x04, 0x22, 0x02, b'C', b'A',
            0x3a, 0x03, 0x12, 0x01, b'R',
            0x70, 0x01,
    ];
    let secret = validation_secret();
    assert_eq!(secret.encode_to_vec(), expected);
    assert_eq!(Secret::decode(expected).expect("decode"), secret);
}

#[test]
fn secret_skips_other_envoy_secret_kinds() {
    // Envoy's Secret oneof also has session_ticket_keys = 3 and
    // generic_secret = 5; we do not model them, so they decode to no type.
    let wire = msg(|b| {
        put_str(b, 1, "ticket");
        put_len(
            b,
            3,
            &msg(|k| put_len(k, 1, &msg(|d| put_len(d, 2, &[0u8; 80])))),
        );
    });
    let secret = Secret::decode(wire.as_slice()).expect("decode");
    assert_eq!(secret.name, "ticket");
    assert!(secret.r#type.is_none());
}

#[test]
fn sotw_response_round_trip_shares_encoded_secret() {
    let encoded = Bytes::from(tls_secret().encode_to_vec());
    let packed = Any {
        type_url: SECRET_TYPE_URL.to_owned(),
        value: encoded.clone(),
    };
    // Cloning the Any shares the buffer rather than copying it.
    let shared = packed.clone();
    assert_eq!(shared.value.as_ptr(), encoded.as_ptr());

    let response = DiscoveryResponse {
        version_info: "7".to_owned(),
        resources: vec![packed, validation_any()],
        canary: true,
        type_url: SECRET_TYPE_URL.to_owned(),
        nonce: "n".to_owned(),
    };

    // DiscoveryResponse: version_info = 1, resources = 2, canary = 3,
    // type_url = 4, nonce = 5. Any: type_url = 1, value = 2.
    let expected = msg(|b| {
        put_str(b, 1, "7");
        for secret in [tls_secret(), validation_secret()] {
            put_len(
                b,
                2,
                &msg(|a| {
                    put_str(a, 1, SECRET_TYPE_URL);
                    put_len(a, 2, &secret.encode_to_vec());
                }),
            );
        }
        put_varint(b, 3, 1);
        put_str(b, 4, SECRET_TYPE_URL);
        put_str(b, 5, "n");
    });
    assert_eq!(response.encode_to_vec(), expected);

    let decoded = DiscoveryResponse::decode(Bytes::from(expected)).expect("decode");
    assert_eq!(decoded, response);
    let secrets: Vec<Secret> = decoded
        .resources
        .iter()
        .map(|any| Secret::decode(any.value.clone()).expect("decode Secret"))
        .collect();
    assert_eq!(secrets, [tls_secret(), validation_secret()]);
}

fn validation_any() -> Any {
    Any {
        type_url: SECRET_TYPE_URL.to_owned(),
        value: validation_secret().encode_to_vec().into(),
    }
}

#[test]
fn delta_response_exact_bytes() {
    let response = DeltaDiscoveryResponse {
        system_version_info: "s".to_owned(),
        resources: vec![Resource {
            name: "n".to_owned(),
            aliases: vec!["x".to_owned()],
            version: "v".to_owned(),
            resource: Some(Any {
                type_url: "t".to_owned(),
                value: Bytes::from_static(b"\x01"),
            }),
        }],
        type_url: SECRET_TYPE_URL.to_owned(),
        removed_resources: vec!["gone".to_owned()],
        nonce: "d".to_owned(),
    };

    // DeltaDiscoveryResponse: system_version_info = 1, resources = 2,
    // type_url = 4, nonce = 5, removed_resources = 6.
    // Resource: version = 1, resource = 2, name = 3, aliases = 4.
    let expected = msg(|b| {
        put_str(b, 1, "s");
        put_len(
            b,
            2,
            &msg(|r| {
                put_str(r, 1, "v");
                put_len(
                    r,
                    2,
                    &msg(|a| {
                        put_str(a, 1, "t");
                        put_len(a, 2, b"\x01");
                    }),
                );
                put_str(r, 3, "n");
                put_str(r, 4, "x");
            }),
        );
        put_str(b, 4, SECRET_TYPE_URL);
        put_str(b, 5, "d");
        put_str(b, 6, "gone");
    });
    assert_eq!(response.encode_to_vec(), expected);
    assert_eq!(
        DeltaDiscoveryResponse::decode(expected.as_slice()).expect("decode"),
        response
    );
}

#[test]
fn status_exact_bytes() {
    let status = Status {
        code: 13,
        message: "Failed to load certificate chain from <inline>".to_owned(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.DebugInfo".to_owned(),
            value: Bytes::from_static(b"\x12\x03abc"),
        }],
    };
    assert_eq!(
        status.encode_to_vec(),
        envoy_status(13, "Failed to load certificate chain from <inline>")
    );
}
