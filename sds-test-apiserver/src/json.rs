//! The JSON wire format of Secrets, lists, Status objects and watch events, as the real server
//! writes it.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::secret::{OwnerReference, Secret};
use crate::time::rfc3339;

/// A decoded request body: the Secret, plus the unknown fields that strict decoding rejects.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) secret: Secret,
    pub(crate) unknown_fields: Vec<String>,
}

/// Decodes a JSON request body into a Secret (`stringData` merged into `data`).
pub(crate) fn decode(body: &[u8]) -> Result<Decoded, Error> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| cannot_handle(problem(&e, "v1.Secret")))?;
    decode_value(value)
}

/// The types serde names in "invalid type: <type> …", most specific first.
const SERDE_TYPES: &[&str] = &[
    "string",
    "integer",
    "floating point",
    "boolean",
    "map",
    "sequence",
    "null",
    "unit",
    "byte array",
    "character",
];

/// A JSON decoding error as a `Status` message may show it: the kind of problem and where,
/// never a value of the body. serde's data errors quote the values they refuse ("invalid type:
/// string \"<a Secret's data>\"…"); the real server does not either ("json: cannot unmarshal
/// string into Go struct field …").
pub(crate) fn problem(e: &serde_json::Error, go_type: &str) -> String {
    if !e.is_data() {
        // Syntax and end-of-input errors: fixed text and a line and column.
        return e.to_string();
    }
    let message = e.to_string();
    let found = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| SERDE_TYPES.iter().find(|t| rest.starts_with(**t)));
    match found {
        Some(found) => format!("json: cannot unmarshal {found} into Go value of type {go_type}"),
        None => format!("json: cannot unmarshal the body into Go value of type {go_type}"),
    }
}

/// Decodes an already parsed JSON object (a request body or a patched object).
pub(crate) fn decode_value(value: Value) -> Result<Decoded, Error> {
    if !value.is_object() {
        return Err(cannot_handle(
            "json: cannot unmarshal non-object into Go value of type v1.Secret",
        ));
    }
    let unknown_fields = unknown_fields(&value);
    let input: SecretIn =
        serde_json::from_value(value).map_err(|e| cannot_handle(problem(&e, "v1.Secret")))?;
    check_type_meta(input.api_version.as_deref(), input.kind.as_deref())?;
    let meta = input.metadata.unwrap_or_default();
    let mut data = BTreeMap::new();
    for (key, value) in input.data.unwrap_or_default() {
        let bytes = match value {
            Some(text) => STANDARD.decode(text.as_bytes()).map_err(|e| {
                cannot_handle(match e {
                    base64::DecodeError::InvalidByte(at, _)
                    | base64::DecodeError::InvalidLastSymbol(at, _) => {
                        format!("illegal base64 data at input byte {at}")
                    }
                    _ => format!("illegal base64 data at input byte {}", text.len()),
                })
            })?,
            None => Vec::new(),
        };
        data.insert(key, bytes);
    }
    for (key, value) in input.string_data.unwrap_or_default() {
        data.insert(key, value.unwrap_or_default().into_bytes());
    }
    let secret = Secret {
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        generate_name: meta.generate_name.unwrap_or_default(),
        labels: strings(meta.labels),
        annotations: strings(meta.annotations),
        owner_references: meta
            .owner_references
            .unwrap_or_default()
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
        finalizers: meta.finalizers.unwrap_or_default(),
        data,
        secret_type: input.secret_type.unwrap_or_default(),
        immutable: input.immutable,
        uid: meta.uid.unwrap_or_default(),
        resource_version: parse_resource_version(meta.resource_version.as_deref()),
        creation_timestamp: None,
        deletion_timestamp: None,
    };
    Ok(Decoded {
        secret,
        unknown_fields,
    })
}

/// Checks `apiVersion` and `kind` of a Secret body, when it sets them.
pub(crate) fn check_type_meta(api_version: Option<&str>, kind: Option<&str>) -> Result<(), Error> {
    check_type_meta_as(api_version, kind, "v1", "Secret")
}

/// Checks `apiVersion` and `kind` of a body against the expected ones, when it sets them.
pub(crate) fn check_type_meta_as(
    api_version: Option<&str>,
    kind: Option<&str>,
    expected_api_version: &str,
    expected_kind: &str,
) -> Result<(), Error> {
    if let Some(api_version) = api_version.filter(|v| !v.is_empty() && v != &expected_api_version) {
        return Err(Error::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({expected_api_version})"
        )));
    }
    if let Some(kind) = kind.filter(|k| !k.is_empty() && k != &expected_kind) {
        return Err(Error::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({expected_kind})"
        )));
    }
    Ok(())
}

/// A resourceVersion from a body: empty is 0 (none); garbage can never match, so it becomes
/// `u64::MAX` and fails the precondition with a Conflict, as on the real server.
pub(crate) fn parse_resource_version(rv: Option<&str>) -> u64 {
    match rv {
        None | Some("") => 0,
        Some(s) => s.parse().unwrap_or(u64::MAX),
    }
}

fn strings(map: Option<BTreeMap<String, Option<String>>>) -> BTreeMap<String, String> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}

fn cannot_handle(detail: impl std::fmt::Display) -> Error {
    Error::bad_request(format!(
        "Secret in version \"v1\" cannot be handled as a Secret: {detail}"
    ))
}

const SECRET_FIELDS: &[&str] = &[
    "kind",
    "apiVersion",
    "metadata",
    "immutable",
    "data",
    "stringData",
    "type",
];
pub(crate) const META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];
const OWNER_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "name",
    "uid",
    "controller",
    "blockOwnerDeletion",
];

/// The fields strict decoding rejects, spelled as the real server does (`.metadata.foo`).
fn unknown_fields(value: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    let Some(top) = value.as_object() else {
        return unknown;
    };
    for (key, v) in top {
        if !SECRET_FIELDS.contains(&key.as_str()) {
            unknown.push(key.clone());
        } else if key == "metadata" {
            for (mk, mv) in v.as_object().into_iter().flatten() {
                if !META_FIELDS.contains(&mk.as_str()) {
                    unknown.push(format!("metadata.{mk}"));
                } else if mk == "ownerReferences" {
                    let refs = mv.as_array().into_iter().flatten().enumerate();
                    for (i, o) in refs {
                        for ok in o.as_object().into_iter().flatten().map(|(k, _)| k) {
                            if !OWNER_FIELDS.contains(&ok.as_str()) {
                                unknown.push(format!("metadata.ownerReferences[{i}].{ok}"));
                            }
                        }
                    }
                }
            }
        }
    }
    unknown
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SecretIn {
    kind: Option<String>,
    api_version: Option<String>,
    metadata: Option<MetaIn>,
    immutable: Option<bool>,
    data: Option<BTreeMap<String, Option<String>>>,
    string_data: Option<BTreeMap<String, Option<String>>>,
    #[serde(rename = "type")]
    secret_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MetaIn {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, Option<String>>>,
    annotations: Option<BTreeMap<String, Option<String>>>,
    owner_references: Option<Vec<OwnerIn>>,
    finalizers: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct OwnerIn {
    api_version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    controller: Option<bool>,
    block_owner_deletion: Option<bool>,
}

// === Output ===

/// A Secret as JSON. `with_type_meta` is false for list items, which the real server sends
/// without `kind` and `apiVersion`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SecretOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<&'static str>,
    metadata: MetaOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    immutable: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    data: BTreeMap<&'a str, String>,
    #[serde(rename = "type")]
    secret_type: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetaOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    generate_name: &'a str,
    namespace: &'a str,
    uid: &'a str,
    resource_version: String,
    creation_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deletion_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deletion_grace_period_seconds: Option<i64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    owner_references: Vec<OwnerOut<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    finalizers: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OwnerOut<'a> {
    api_version: &'a str,
    kind: &'a str,
    name: &'a str,
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    controller: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_owner_deletion: Option<bool>,
}

impl<'a> SecretOut<'a> {
    pub(crate) fn new(s: &'a Secret, with_type_meta: bool) -> Self {
        Self {
            kind: with_type_meta.then_some("Secret"),
            api_version: with_type_meta.then_some("v1"),
            metadata: MetaOut {
                name: &s.name,
                generate_name: &s.generate_name,
                namespace: &s.namespace,
                uid: &s.uid,
                resource_version: s.resource_version.to_string(),
                creation_timestamp: s.creation_timestamp.map(rfc3339),
                deletion_timestamp: s.deletion_timestamp.map(rfc3339),
                deletion_grace_period_seconds: s.deletion_timestamp.map(|_| 0),
                labels: &s.labels,
                annotations: &s.annotations,
                owner_references: s
                    .owner_references
                    .iter()
                    .map(|o| OwnerOut {
                        api_version: &o.api_version,
                        kind: &o.kind,
                        name: &o.name,
                        uid: &o.uid,
                        controller: o.controller,
                        block_owner_deletion: o.block_owner_deletion,
                    })
                    .collect(),
                finalizers: &s.finalizers,
            },
            immutable: s.immutable,
            data: s
                .data
                .iter()
                .map(|(k, v)| (k.as_str(), STANDARD.encode(v)))
                .collect(),
            secret_type: s.effective_type(),
        }
    }
}

/// The JSON of one Secret with `kind` and `apiVersion`, as a GET returns it.
pub(crate) fn secret(s: &Secret) -> Vec<u8> {
    to_vec(&SecretOut::new(s, true))
}

/// The same as a [`Value`], for patching.
pub(crate) fn secret_value(s: &Secret) -> Value {
    serde_json::to_value(SecretOut::new(s, true)).unwrap_or(Value::Null)
}

/// `metadata` of a list.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListMeta {
    pub(crate) resource_version: String,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub(crate) continue_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) remaining_item_count: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListOut<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: &'a ListMeta,
    items: Vec<SecretOut<'a>>,
}

/// A `SecretList`.
pub(crate) fn list(meta: &ListMeta, items: &[std::sync::Arc<Secret>]) -> Vec<u8> {
    to_vec(&ListOut {
        kind: "SecretList",
        api_version: "v1",
        metadata: meta,
        items: items.iter().map(|s| SecretOut::new(s, false)).collect(),
    })
}

#[derive(Serialize)]
struct EventOut<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    object: T,
}

/// One line of a watch stream (with the trailing newline).
pub(crate) fn watch_event(kind: &str, s: &Secret) -> Vec<u8> {
    let mut line = to_vec(&EventOut {
        kind,
        object: SecretOut::new(s, true),
    });
    line.push(b'\n');
    line
}

/// A `BOOKMARK` watch event at `resource_version`; `initial_events_end` adds the annotation
/// that ends a streaming list (`sendInitialEvents=true`).
pub(crate) fn bookmark(resource_version: u64, initial_events_end: bool) -> Vec<u8> {
    let mut metadata = serde_json::json!({ "resourceVersion": resource_version.to_string() });
    if initial_events_end {
        metadata["annotations"] = serde_json::json!({ "k8s.io/initial-events-end": "true" });
    }
    let mut line = to_vec(&EventOut {
        kind: "BOOKMARK",
        object: serde_json::json!({ "kind": "Secret", "apiVersion": "v1", "metadata": metadata }),
    });
    line.push(b'\n');
    line
}

/// An `ERROR` watch event carrying the Status of `err`.
pub(crate) fn watch_error(err: &Error) -> Vec<u8> {
    let mut line = to_vec(&EventOut {
        kind: "ERROR",
        object: status_value(err),
    });
    line.push(b'\n');
    line
}

/// The `Status` object for a failure.
pub(crate) fn status_value(err: &Error) -> Value {
    let mut status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": err.to_string(),
        "reason": err.reason(),
    });
    let details = match err {
        Error::NotFound { name, .. } | Error::AlreadyExists { name, .. } => {
            Some(serde_json::json!({ "name": name, "kind": "secrets" }))
        }
        Error::Conflict { name, .. } => {
            Some(serde_json::json!({ "name": name, "kind": "secrets" }))
        }
        Error::Forbidden {
            name,
            group,
            resource,
            ..
        } => Some(named_details(name.as_deref(), group, resource)),
        Error::Invalid {
            name,
            group,
            kind,
            causes,
        } => {
            let mut details = named_details(Some(name), group, kind);
            details["causes"] = causes
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "reason": c.reason,
                        "message": c.message,
                        "field": c.field,
                    })
                })
                .collect();
            Some(details)
        }
        Error::TooLargeResourceVersion { .. } => Some(serde_json::json!({
            "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }],
            "retryAfterSeconds": 1,
        })),
        _ => None,
    };
    if let Some(details) = details {
        status["details"] = details;
    }
    status["code"] = err.code().into();
    status
}

/// `Status.details` naming an object: `name` and `group` are left out when empty, as Go's
/// `omitempty` does.
fn named_details(name: Option<&str>, group: &str, kind: &str) -> Value {
    let mut details = serde_json::Map::new();
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        details.insert("name".to_owned(), name.into());
    }
    if !group.is_empty() {
        details.insert("group".to_owned(), group.into());
    }
    details.insert("kind".to_owned(), kind.into());
    Value::Object(details)
}

/// The `Status` a successful DELETE returns.
pub(crate) fn deleted(s: &Secret) -> Vec<u8> {
    to_vec(&serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": { "name": s.name, "kind": "secrets", "uid": s.uid },
    }))
}

/// Serializes `value`; our output types cannot fail to serialize.
pub(crate) fn to_vec(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("output types serialize infallibly (string keys only)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_merges_string_data() {
        let body = br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"a","labels":{"x":"y"},"resourceVersion":"7","creationTimestamp":null},
            "data":{"k":"aGk=","e":null},"stringData":{"s":"plain"},"type":"kubernetes.io/tls","spec":1}"#;
        let d = decode(body).expect("decodes");
        assert_eq!(d.secret.name, "a");
        assert_eq!(d.secret.resource_version, 7);
        assert_eq!(d.secret.data["k"], b"hi");
        assert_eq!(d.secret.data["e"], b"");
        assert_eq!(d.secret.data["s"], b"plain");
        assert_eq!(d.secret.secret_type, "kubernetes.io/tls");
        assert_eq!(d.unknown_fields, vec!["spec".to_owned()]);
    }

    #[test]
    fn bad_base64_is_a_bad_request() {
        let err = decode(br#"{"metadata":{"name":"a"},"data":{"k":"a!=="}}"#).expect_err("bad");
        assert_eq!(err.code(), 400);
        assert!(
            err.to_string()
                .contains("illegal base64 data at input byte 1"),
            "{err}"
        );
    }

    #[test]
    fn refused_values_are_not_echoed() {
        let key = "LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tIE1IY0NBUUVFSUI1TA==";
        for body in [
            format!(r#"{{"metadata":{{"name":"a"}},"data":"{key}"}}"#),
            format!(r#"{{"metadata":{{"name":"a"}},"stringData":["{key}"]}}"#),
            format!(r#"{{"metadata":{{"name":"a"}},"data":{{"k":["{key}"]}}}}"#),
            format!(r#"{{"metadata":{{"name":"a"}},"data":{{"k":"{key}"#),
            format!(r#"{{"metadata":{{"name":"a"}},"data":{{"k":"!{key}"}}}}"#),
        ] {
            let err = decode(body.as_bytes()).expect_err("not a Secret");
            let message = err.to_string();
            assert_eq!(err.code(), 400);
            assert!(!message.contains(&key[..12]), "{message}");
            assert!(!status_value(&err).to_string().contains(&key[..12]));
        }
        let err = decode(format!(r#"{{"data":"{key}"}}"#).as_bytes()).expect_err("not a map");
        assert_eq!(
            err.to_string(),
            "Secret in version \"v1\" cannot be handled as a Secret: json: cannot unmarshal \
             string into Go value of type v1.Secret"
        );
    }

    #[test]
    fn round_trips() {
        let s = Secret::new("ns", "n").with_data("k", b"\x00\xff".to_vec());
        let d = decode(&secret(&s)).expect("decodes");
        assert_eq!(d.secret.data, s.data);
        assert!(d.unknown_fields.is_empty());
    }
}
