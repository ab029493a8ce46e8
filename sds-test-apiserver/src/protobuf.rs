//! The Kubernetes protobuf wire format (`application/vnd.kubernetes.protobuf`), written by hand
//! from `k8s.io/api/core/v1/generated.proto`, `k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto`
//! and `k8s.io/apimachinery/pkg/runtime/generated.proto` (proto2; field numbers kept).
//!
//! A body is the 4 magic bytes `k8s\0` and then a `runtime.Unknown` whose `raw` is the encoded
//! object. kubectl 1.29 and later send `kubectl create secret` bodies this way.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;

use crate::error::Error;
use crate::json::ListMeta;
use crate::secret::{OwnerReference, Secret};
use crate::time::unix_seconds;

/// The media type.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8; 4] = b"k8s\0";

/// Decodes a protobuf request body into a Secret (`stringData` merged into `data`).
pub(crate) fn decode(body: &[u8]) -> Result<Secret, Error> {
    let (type_meta, raw) = open(body).map_err(cannot_handle)?;
    crate::json::check_type_meta(type_meta.api_version.as_deref(), type_meta.kind.as_deref())?;
    let secret = pb::Secret::decode(raw.as_slice()).map_err(cannot_handle)?;
    let meta = secret.metadata.unwrap_or_default();
    let mut data = secret.data;
    for (k, v) in secret.string_data {
        data.insert(k, v.into_bytes());
    }
    Ok(Secret {
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        generate_name: meta.generate_name.unwrap_or_default(),
        labels: meta.labels,
        annotations: meta.annotations,
        owner_references: meta
            .owner_references
            .into_iter()
            .map(|o| OwnerReference {
                api_version: o.api_version.unwrap_or_default(),
                kind: o.kind.unwrap_or_default(),
                name: o.name.unwrap_or_default(),
                uid: o.uid.unwrap_or_default(),
                controller: o.controller,
                block_owner_deletion: o.block_owner_deletion,
            })
            .collect(),
        finalizers: meta.finalizers,
        data,
        secret_type: secret.secret_type.unwrap_or_default(),
        immutable: secret.immutable,
        uid: meta.uid.unwrap_or_default(),
        resource_version: crate::json::parse_resource_version(meta.resource_version.as_deref()),
        creation_timestamp: None,
        deletion_timestamp: None,
    })
}

/// A Secret as a protobuf response body.
pub(crate) fn secret(s: &Secret) -> Vec<u8> {
    envelope("Secret", to_pb(s).encode_to_vec())
}

/// A `SecretList` as a protobuf response body.
pub(crate) fn list(meta: &ListMeta, items: &[Arc<Secret>]) -> Vec<u8> {
    let list = pb::SecretList {
        metadata: Some(pb::ListMeta {
            self_link: None,
            resource_version: Some(meta.resource_version.clone()),
            continue_token: meta.continue_token.clone(),
            remaining_item_count: meta
                .remaining_item_count
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        }),
        items: items.iter().map(|s| to_pb(s)).collect(),
    };
    envelope("SecretList", list.encode_to_vec())
}

/// A `Status` (failure) as a protobuf response body.
pub(crate) fn status(err: &Error) -> Vec<u8> {
    let (name, group, kind) = match err {
        Error::NotFound { name, .. }
        | Error::AlreadyExists { name, .. }
        | Error::Conflict { name, .. } => (Some(name.clone()), "", Some("secrets")),
        Error::Invalid {
            name, group, kind, ..
        } => (Some(name.clone()), *group, Some(*kind)),
        Error::Forbidden {
            name,
            group,
            resource,
            ..
        } => (name.clone(), *group, Some(*resource)),
        _ => (None, "", None),
    };
    let causes = match err {
        Error::Invalid { causes, .. } => causes
            .iter()
            .map(|c| pb::StatusCause {
                reason: Some(c.reason.to_owned()),
                message: Some(c.message.clone()),
                field: Some(c.field.clone()),
            })
            .collect(),
        _ => Vec::new(),
    };
    let status = pb::Status {
        metadata: Some(pb::ListMeta::default()),
        status: Some("Failure".to_owned()),
        message: Some(err.to_string()),
        reason: Some(err.reason().to_owned()),
        details: kind.map(|kind| pb::StatusDetails {
            name: name.filter(|n| !n.is_empty()),
            group: (!group.is_empty()).then(|| group.to_owned()),
            kind: Some(kind.to_owned()),
            causes,
            retry_after_seconds: None,
            uid: None,
        }),
        code: Some(i32::from(err.code())),
    };
    envelope("Status", status.encode_to_vec())
}

/// The success `Status` of a DELETE as a protobuf response body.
pub(crate) fn deleted(s: &Secret) -> Vec<u8> {
    let status = pb::Status {
        metadata: Some(pb::ListMeta::default()),
        status: Some("Success".to_owned()),
        message: None,
        reason: None,
        details: Some(pb::StatusDetails {
            name: Some(s.name.clone()),
            group: None,
            kind: Some("secrets".to_owned()),
            causes: Vec::new(),
            retry_after_seconds: None,
            uid: Some(s.uid.clone()),
        }),
        code: None,
    };
    envelope("Status", status.encode_to_vec())
}

/// The `TypeMeta` and the encoded object of a body: the magic bytes and the envelope taken
/// off. The error is the real server's wording, for the caller's "cannot be handled as".
pub(crate) fn open(body: &[u8]) -> Result<(pb::TypeMeta, Vec<u8>), String> {
    let raw = body.strip_prefix(MAGIC).ok_or_else(|| {
        "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
            .to_owned()
    })?;
    let unknown = pb::Unknown::decode(raw).map_err(|e| e.to_string())?;
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err("content encodings are not supported".to_owned());
    }
    Ok((
        unknown.type_meta.unwrap_or_default(),
        unknown.raw.unwrap_or_default(),
    ))
}

fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
    envelope_as("v1", kind, raw)
}

/// A response body: the magic bytes and the envelope around an encoded `apiVersion`/`kind`
/// object.
pub(crate) fn envelope_as(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = pb::Unknown {
        type_meta: Some(pb::TypeMeta {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    unknown.encode(&mut out).expect("a Vec grows as needed");
    out
}

fn to_pb(s: &Secret) -> pb::Secret {
    let time = |t: std::time::SystemTime| pb::Time {
        seconds: Some(unix_seconds(t)),
        nanos: Some(0),
    };
    pb::Secret {
        metadata: Some(pb::ObjectMeta {
            name: Some(s.name.clone()),
            generate_name: Some(s.generate_name.clone()),
            namespace: Some(s.namespace.clone()),
            self_link: None,
            uid: Some(s.uid.clone()),
            resource_version: Some(s.resource_version.to_string()),
            generation: None,
            creation_timestamp: s.creation_timestamp.map(time),
            deletion_timestamp: s.deletion_timestamp.map(time),
            deletion_grace_period_seconds: s.deletion_timestamp.map(|_| 0),
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
            owner_references: s
                .owner_references
                .iter()
                .map(|o| pb::OwnerReference {
                    kind: Some(o.kind.clone()),
                    name: Some(o.name.clone()),
                    uid: Some(o.uid.clone()),
                    api_version: Some(o.api_version.clone()),
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                })
                .collect(),
            finalizers: s.finalizers.clone(),
        }),
        data: s.data.clone(),
        secret_type: Some(s.effective_type().to_owned()),
        string_data: BTreeMap::new(),
        immutable: s.immutable,
    }
}

fn cannot_handle(detail: impl std::fmt::Display) -> Error {
    Error::bad_request(format!(
        "Secret in version \"v1\" cannot be handled as a Secret: {detail}"
    ))
}

/// The messages, by hand. Field numbers are those of the upstream `generated.proto` files.
pub(crate) mod pb {
    use std::collections::BTreeMap;

    /// `k8s.io.apimachinery.pkg.runtime.TypeMeta` (note: apiVersion = 1, kind = 2).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct TypeMeta {
        #[prost(string, optional, tag = "1")]
        pub(crate) api_version: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub(crate) kind: Option<String>,
    }

    /// `k8s.io.apimachinery.pkg.runtime.Unknown`: the envelope after the magic bytes.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Unknown {
        #[prost(message, optional, tag = "1")]
        pub(crate) type_meta: Option<TypeMeta>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub(crate) raw: Option<Vec<u8>>,
        #[prost(string, optional, tag = "3")]
        pub(crate) content_encoding: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub(crate) content_type: Option<String>,
    }

    /// `k8s.io.apimachinery.pkg.apis.meta.v1.Time`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Time {
        #[prost(int64, optional, tag = "1")]
        pub(crate) seconds: Option<i64>,
        #[prost(int32, optional, tag = "2")]
        pub(crate) nanos: Option<i32>,
    }

    /// `k8s.io.apimachinery.pkg.apis.meta.v1.OwnerReference`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct OwnerReference {
        #[prost(string, optional, tag = "1")]
        pub(crate) kind: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub(crate) name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub(crate) uid: Option<String>,
        #[prost(string, optional, tag = "5")]
        pub(crate) api_version: Option<String>,
        #[prost(bool, optional, tag = "6")]
        pub(crate) controller: Option<bool>,
        #[prost(bool, optional, tag = "7")]
        pub(crate) block_owner_deletion: Option<bool>,
    }

    /// `k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta` (managedFields = 17 is skipped as
    /// an unknown field on decode and never sent).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ObjectMeta {
        #[prost(string, optional, tag = "1")]
        pub(crate) name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub(crate) generate_name: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub(crate) namespace: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub(crate) self_link: Option<String>,
        #[prost(string, optional, tag = "5")]
        pub(crate) uid: Option<String>,
        #[prost(string, optional, tag = "6")]
        pub(crate) resource_version: Option<String>,
        #[prost(int64, optional, tag = "7")]
        pub(crate) generation: Option<i64>,
        #[prost(message, optional, tag = "8")]
        pub(crate) creation_timestamp: Option<Time>,
        #[prost(message, optional, tag = "9")]
        pub(crate) deletion_timestamp: Option<Time>,
        #[prost(int64, optional, tag = "10")]
        pub(crate) deletion_grace_period_seconds: Option<i64>,
        #[prost(btree_map = "string, string", tag = "11")]
        pub(crate) labels: BTreeMap<String, String>,
        #[prost(btree_map = "string, string", tag = "12")]
        pub(crate) annotations: BTreeMap<String, String>,
        #[prost(message, repeated, tag = "13")]
        pub(crate) owner_references: Vec<OwnerReference>,
        #[prost(string, repeated, tag = "14")]
        pub(crate) finalizers: Vec<String>,
    }

    /// `k8s.io.api.core.v1.Secret`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Secret {
        #[prost(message, optional, tag = "1")]
        pub(super) metadata: Option<ObjectMeta>,
        #[prost(btree_map = "string, bytes", tag = "2")]
        pub(super) data: BTreeMap<String, Vec<u8>>,
        #[prost(string, optional, tag = "3")]
        pub(super) secret_type: Option<String>,
        #[prost(btree_map = "string, string", tag = "4")]
        pub(super) string_data: BTreeMap<String, String>,
        #[prost(bool, optional, tag = "5")]
        pub(super) immutable: Option<bool>,
    }

    /// `k8s.io.apimachinery.pkg.apis.meta.v1.ListMeta`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ListMeta {
        #[prost(string, optional, tag = "1")]
        pub(super) self_link: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub(super) resource_version: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub(super) continue_token: Option<String>,
        #[prost(int64, optional, tag = "4")]
        pub(super) remaining_item_count: Option<i64>,
    }

    /// `k8s.io.api.core.v1.SecretList`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SecretList {
        #[prost(message, optional, tag = "1")]
        pub(super) metadata: Option<ListMeta>,
        #[prost(message, repeated, tag = "2")]
        pub(super) items: Vec<Secret>,
    }

    /// `k8s.io.apimachinery.pkg.apis.meta.v1.StatusCause`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct StatusCause {
        #[prost(string, optional, tag = "1")]
        pub(super) reason: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub(super) message: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub(super) field: Option<String>,
    }

    /// `k8s.io.apimachinery.pkg.apis.meta.v1.StatusDetails`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct StatusDetails {
        #[prost(string, optional, tag = "1")]
        pub(super) name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub(super) group: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub(super) kind: Option<String>,
        #[prost(message, repeated, tag = "4")]
        pub(super) causes: Vec<StatusCause>,
        #[prost(int32, optional, tag = "5")]
        pub(super) retry_after_seconds: Option<i32>,
        #[prost(string, optional, tag = "6")]
        pub(super) uid: Option<String>,
    }

    /// `k8s.io.apimachinery.pkg.apis.meta.v1.Status`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Status {
        #[prost(message, optional, tag = "1")]
        pub(super) metadata: Option<ListMeta>,
        #[prost(string, optional, tag = "2")]
        pub(super) status: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub(super) message: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub(super) reason: Option<String>,
        #[prost(message, optional, tag = "5")]
        pub(super) details: Option<StatusDetails>,
        #[prost(int32, optional, tag = "6")]
        pub(super) code: Option<i32>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::from_unix_seconds;

    #[test]
    fn round_trips_through_the_envelope() {
        let mut s = Secret::new("istio-system", "cred")
            .with_type("kubernetes.io/tls")
            .with_data("tls.crt", b"\x00cert".to_vec())
            .with_label("a", "b");
        s.resource_version = 42;
        s.creation_timestamp = Some(from_unix_seconds(1_700_000_000));
        let body = secret(&s);
        assert_eq!(&body[..4], b"k8s\0");
        let back = decode(&body).expect("decodes");
        assert_eq!(back.name, "cred");
        assert_eq!(back.namespace, "istio-system");
        assert_eq!(back.data, s.data);
        assert_eq!(back.labels, s.labels);
        assert_eq!(back.secret_type, "kubernetes.io/tls");
        assert_eq!(back.resource_version, 42);

        let unknown = pb::Unknown::decode(&body[4..]).expect("envelope");
        let inner = pb::Secret::decode(unknown.raw.unwrap_or_default().as_slice()).expect("secret");
        let created = inner
            .metadata
            .and_then(|m| m.creation_timestamp)
            .expect("time");
        assert_eq!(created.seconds, Some(1_700_000_000));
    }

    #[test]
    fn string_data_wins_and_garbage_is_a_bad_request() {
        let inner = pb::Secret {
            metadata: Some(pb::ObjectMeta {
                name: Some("x".into()),
                ..Default::default()
            }),
            data: BTreeMap::from([("k".into(), b"old".to_vec())]),
            secret_type: None,
            string_data: BTreeMap::from([("k".into(), "new".into())]),
            immutable: None,
        };
        let body = envelope("Secret", inner.encode_to_vec());
        assert_eq!(decode(&body).expect("decodes").data["k"], b"new");
        assert_eq!(decode(b"nope").expect_err("no magic").code(), 400);
    }
}
