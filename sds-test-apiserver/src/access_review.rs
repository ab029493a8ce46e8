//! The `authorization.k8s.io/v1` SubjectAccessReview and SelfSubjectAccessReview objects on
//! the wire: decoding (JSON and protobuf), validation worded like the real server's (1.33:
//! `pkg/apis/authorization/validation`), and the answer, which is the object with its
//! `status` filled in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prost::Message as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::access::Identity;
use crate::authorizer::{AccessReview, Decision};
use crate::error::{Error, FieldError};
use crate::json;
use crate::protobuf::{self, pb as meta_pb};

/// The API group.
pub(crate) const GROUP: &str = "authorization.k8s.io";
/// The group-version, as `apiVersion`.
pub(crate) const API_VERSION: &str = "authorization.k8s.io/v1";

/// Which review.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `SubjectAccessReview`: may user X do Y? Needs
    /// [`Access::access_reviews`](crate::Access::access_reviews).
    Subject,
    /// `SelfSubjectAccessReview`: may I do Y? (`kubectl auth can-i`). Anyone may ask.
    SelfSubject,
}

/// A decoded review, not yet validated.
#[derive(Debug)]
pub(crate) struct Review {
    kind: Kind,
    meta: Meta,
    spec: Spec,
    /// The fields strict decoding rejects (JSON bodies only), e.g. `spec.foo`.
    pub(crate) unknown_fields: Vec<String>,
}

// === impl Kind ===

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Subject => "SubjectAccessReview",
            Kind::SelfSubject => "SelfSubjectAccessReview",
        }
    }

    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Subject => "subjectaccessreviews",
            Kind::SelfSubject => "selfsubjectaccessreviews",
        }
    }

    fn shape(self) -> &'static Shape {
        match self {
            Kind::Subject => &SUBJECT,
            Kind::SelfSubject => &SELF_SUBJECT,
        }
    }

    /// The 400 for a body that cannot be decoded.
    fn cannot_handle(self, detail: impl std::fmt::Display) -> Error {
        let kind = self.name();
        Error::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {detail}"
        ))
    }
}

// === Decoding ===

/// Decodes a JSON request body.
pub(crate) fn decode_json(body: &[u8], kind: Kind) -> Result<Review, Error> {
    let go_type = format!("v1.{}", kind.name());
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| kind.cannot_handle(json::problem(&e, &go_type)))?;
    if !value.is_object() {
        return Err(kind.cannot_handle(format!(
            "json: cannot unmarshal non-object into Go value of type {go_type}"
        )));
    }
    let mut unknown_fields = Vec::new();
    kind.shape().unknown(&value, "", &mut unknown_fields);
    let input: ReviewIn = serde_json::from_value(value)
        .map_err(|e| kind.cannot_handle(json::problem(&e, &go_type)))?;
    json::check_type_meta_as(
        input.api_version.as_deref(),
        input.kind.as_deref(),
        API_VERSION,
        kind.name(),
    )?;
    let mut spec = input.spec.unwrap_or_default();
    if kind == Kind::SelfSubject {
        // Not fields of a SelfSubjectAccessReviewSpec: dropped (and reported as unknown).
        spec = Spec {
            resource_attributes: spec.resource_attributes,
            non_resource_attributes: spec.non_resource_attributes,
            ..Spec::default()
        };
    }
    Ok(Review {
        kind,
        meta: input.metadata.unwrap_or_default(),
        spec,
        unknown_fields,
    })
}

/// Decodes a Kubernetes protobuf request body (what client-go sends when told to prefer
/// protobuf, as kubectl 1.32 and later do).
pub(crate) fn decode_protobuf(body: &[u8], kind: Kind) -> Result<Review, Error> {
    let (type_meta, raw) = protobuf::open(body).map_err(|e| kind.cannot_handle(e))?;
    json::check_type_meta_as(
        type_meta.api_version.as_deref(),
        type_meta.kind.as_deref(),
        API_VERSION,
        kind.name(),
    )?;
    // A SelfSubjectAccessReviewSpec has the first two fields of a SubjectAccessReviewSpec.
    let review =
        pb::SubjectAccessReview::decode(raw.as_slice()).map_err(|e| kind.cannot_handle(e))?;
    let spec = review.spec.unwrap_or_default();
    let mut spec = Spec {
        resource_attributes: spec.resource_attributes.map(|r| ResourceAttributes {
            namespace: r.namespace.unwrap_or_default(),
            verb: r.verb.unwrap_or_default(),
            group: r.group.unwrap_or_default(),
            version: r.version.unwrap_or_default(),
            resource: r.resource.unwrap_or_default(),
            subresource: r.subresource.unwrap_or_default(),
            name: r.name.unwrap_or_default(),
            field_selector: r.field_selector.map(pb::Selector::into_attributes),
            label_selector: r.label_selector.map(pb::Selector::into_attributes),
        }),
        non_resource_attributes: spec.non_resource_attributes.map(|n| NonResourceAttributes {
            path: n.path.unwrap_or_default(),
            verb: n.verb.unwrap_or_default(),
        }),
        user: spec.user.unwrap_or_default(),
        groups: spec.groups,
        extra: spec.extra.into_iter().map(|(k, v)| (k, v.items)).collect(),
        uid: spec.uid.unwrap_or_default(),
    };
    if kind == Kind::SelfSubject {
        spec = Spec {
            resource_attributes: spec.resource_attributes,
            non_resource_attributes: spec.non_resource_attributes,
            ..Spec::default()
        };
    }
    Ok(Review {
        kind,
        meta: review.metadata.map(Meta::from_pb).unwrap_or_default(),
        spec,
        unknown_fields: Vec::new(),
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ReviewIn {
    kind: Option<String>,
    api_version: Option<String>,
    metadata: Option<Meta>,
    spec: Option<Spec>,
}

/// `metadata`, which a review must leave empty.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Meta {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    creation_timestamp: Option<String>,
    deletion_timestamp: Option<String>,
    deletion_grace_period_seconds: Option<i64>,
    labels: Option<BTreeMap<String, Option<String>>>,
    annotations: Option<BTreeMap<String, Option<String>>>,
    owner_references: Option<Vec<Value>>,
    finalizers: Option<Vec<Option<String>>>,
}

/// `spec` of either kind (a SelfSubjectAccessReview's has only the attributes).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource_attributes: Option<ResourceAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    non_resource_attributes: Option<NonResourceAttributes>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    user: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    groups: Vec<String>,
    #[serde(
        default,
        deserialize_with = "extra",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    extra: BTreeMap<String, Vec<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    uid: String,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceAttributes {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    namespace: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    verb: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    group: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    version: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    resource: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    subresource: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    field_selector: Option<SelectorAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label_selector: Option<SelectorAttributes>,
}

/// `fieldSelector` or `labelSelector` of the resource attributes.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct SelectorAttributes {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    raw_selector: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    requirements: Vec<Requirement>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct Requirement {
    #[serde(default, deserialize_with = "nullable")]
    key: String,
    #[serde(default, deserialize_with = "nullable")]
    operator: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    values: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct NonResourceAttributes {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    path: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    verb: String,
}

/// Go's decoding of `null` into a value: it stays the zero value.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// `extra`, whose values may be `null` too.
fn extra<'de, D>(d: D) -> Result<BTreeMap<String, Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    let map = Option::<BTreeMap<String, Option<Vec<String>>>>::deserialize(d)?;
    Ok(map
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

// === impl Meta ===

impl Meta {
    fn from_pb(m: meta_pb::ObjectMeta) -> Self {
        // An empty `Time` message is the zero time (how Go sends an unset timestamp).
        let time = |t: Option<meta_pb::Time>| {
            t.filter(|t| t.seconds.is_some() || t.nanos.is_some())
                .map(|t| t.seconds.unwrap_or_default().to_string())
        };
        let map = |m: BTreeMap<String, String>| {
            (!m.is_empty()).then(|| m.into_iter().map(|(k, v)| (k, Some(v))).collect())
        };
        Self {
            name: m.name,
            generate_name: m.generate_name,
            namespace: m.namespace,
            self_link: m.self_link,
            uid: m.uid,
            resource_version: m.resource_version,
            generation: m.generation,
            creation_timestamp: time(m.creation_timestamp),
            deletion_timestamp: time(m.deletion_timestamp),
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            labels: map(m.labels),
            annotations: map(m.annotations),
            owner_references: (!m.owner_references.is_empty())
                .then(|| vec![Value::Null; m.owner_references.len()]),
            finalizers: (!m.finalizers.is_empty())
                .then(|| m.finalizers.into_iter().map(Some).collect()),
        }
    }

    /// The `metadata` fields that are set (Go's semantic equality with an empty
    /// `ObjectMeta`: nil and empty maps and lists are equal; `managedFields` is ignored), as
    /// `Name:"x"` pairs.
    fn set_fields(&self) -> Vec<String> {
        let mut set = Vec::new();
        let strings = [
            ("Name", &self.name),
            ("GenerateName", &self.generate_name),
            ("Namespace", &self.namespace),
            ("SelfLink", &self.self_link),
            ("UID", &self.uid),
            ("ResourceVersion", &self.resource_version),
        ];
        for (field, value) in strings {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                set.push(format!("{field}:{}", quote(value)));
            }
        }
        if let Some(generation) = self.generation.filter(|g| *g != 0) {
            set.push(format!("Generation:{generation}"));
        }
        if let Some(t) = &self.creation_timestamp {
            set.push(format!("CreationTimestamp:{}", quote(t)));
        }
        if let Some(t) = &self.deletion_timestamp {
            set.push(format!("DeletionTimestamp:{}", quote(t)));
        }
        if let Some(seconds) = self.deletion_grace_period_seconds {
            set.push(format!("DeletionGracePeriodSeconds:{seconds}"));
        }
        for (field, map) in [("Labels", &self.labels), ("Annotations", &self.annotations)] {
            if let Some(map) = map.as_ref().filter(|m| !m.is_empty()) {
                let mut text = format!("{field}:map[string]string{{");
                for (i, (k, v)) in map.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(
                        text,
                        "{sep}{}:{}",
                        quote(k),
                        quote(v.as_deref().unwrap_or_default())
                    );
                }
                text.push('}');
                set.push(text);
            }
        }
        if let Some(refs) = self.owner_references.as_ref().filter(|r| !r.is_empty()) {
            set.push(format!("OwnerReferences:[{} items]", refs.len()));
        }
        if let Some(finalizers) = self.finalizers.as_ref().filter(|f| !f.is_empty()) {
            let items: Vec<String> = finalizers
                .iter()
                .map(|f| quote(f.as_deref().unwrap_or_default()))
                .collect();
            set.push(format!("Finalizers:[]string{{{}}}", items.join(", ")));
        }
        set
    }
}

// === Validation ===

/// Validates a review as the real server does; a failure is a 422 `Invalid` naming
/// `SubjectAccessReview.authorization.k8s.io ""`.
pub(crate) fn validate(review: &Review) -> Result<(), Error> {
    let mut causes = Vec::new();
    let spec = &review.spec;
    match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(_), Some(n)) => causes.push(invalid(
            "spec.nonResourceAttributes",
            &format!(
                "authorization.NonResourceAttributes{{Path:{}, Verb:{}}}",
                quote(&n.path),
                quote(&n.verb)
            ),
            "cannot be specified in combination with resourceAttributes",
        )),
        // The real server names the resource attributes but shows the (nil) non-resource
        // ones, which prints as "null".
        (None, None) => causes.push(invalid(
            "spec.resourceAttributes",
            &quote("null"),
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        _ => {}
    }
    if review.kind == Kind::Subject && spec.user.is_empty() && spec.groups.is_empty() {
        causes.push(invalid(
            "spec.user",
            &quote(&spec.user),
            "at least one of user or group must be specified",
        ));
    }
    if let Some(r) = &spec.resource_attributes {
        let selectors = [
            ("spec.resourceAttributes.fieldSelector", &r.field_selector),
            ("spec.resourceAttributes.labelSelector", &r.label_selector),
        ];
        for (path, selector) in selectors {
            let Some(selector) = selector else { continue };
            match (
                selector.raw_selector.is_empty(),
                selector.requirements.is_empty(),
            ) {
                (false, false) => causes.push(invalid(
                    &format!("{path}.rawSelector"),
                    &quote(&selector.raw_selector),
                    "may not specified at the same time as requirements",
                )),
                (true, true) => causes.push(FieldError {
                    field: format!("{path}.requirements"),
                    reason: "FieldValueRequired",
                    message: format!(
                        "Required value: when {path} is specified, requirements or rawSelector is required"
                    ),
                }),
                _ => {}
            }
        }
    }
    let set = review.meta.set_fields();
    if !set.is_empty() {
        // Go prints every field of the ObjectMeta (`%#v`); only the set ones are shown here.
        causes.push(invalid(
            "metadata",
            &format!("v1.ObjectMeta{{{}}}", set.join(", ")),
            "must be empty",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid {
            group: GROUP,
            kind: review.kind.name(),
            name: String::new(),
            causes,
        })
    }
}

fn invalid(field: &str, shown: &str, why: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {shown}: {why}"),
    }
}

/// A string as Go's `%q` prints it (near enough: JSON escaping).
fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

// === The answer ===

impl Review {
    /// What the authorizer is asked: the spec's user for a SubjectAccessReview, the asker
    /// for a SelfSubjectAccessReview.
    pub(crate) fn attributes(&self, asker: &Identity) -> AccessReview {
        let spec = &self.spec;
        let mut review = match self.kind {
            Kind::Subject => AccessReview {
                user: spec.user.clone(),
                groups: spec.groups.clone(),
                uid: spec.uid.clone(),
                extra: spec.extra.clone(),
                ..AccessReview::default()
            },
            Kind::SelfSubject => AccessReview {
                user: asker.name.clone(),
                groups: asker.groups.clone(),
                uid: asker.uid.clone(),
                extra: asker.extra.clone(),
                ..AccessReview::default()
            },
        };
        if let Some(r) = &spec.resource_attributes {
            review.resource_request = true;
            review.verb = r.verb.clone();
            review.namespace = r.namespace.clone();
            review.group = r.group.clone();
            review.version = r.version.clone();
            review.resource = r.resource.clone();
            review.subresource = r.subresource.clone();
            review.name = r.name.clone();
        } else if let Some(n) = &spec.non_resource_attributes {
            review.verb = n.verb.clone();
            review.path = n.path.clone();
        }
        review
    }

    /// The created object as JSON: the review as decoded (unknown fields dropped) with its
    /// `status`.
    pub(crate) fn to_json(&self, decision: &Decision) -> Vec<u8> {
        json::to_vec(&ReviewOut {
            kind: self.kind.name(),
            api_version: API_VERSION,
            metadata: MetaOut {
                creation_timestamp: None,
            },
            spec: &self.spec,
            status: StatusOut {
                allowed: decision.is_allowed(),
                denied: decision.is_denied(),
                reason: decision.reason(),
                evaluation_error: decision.evaluation_error(),
            },
        })
    }

    /// The created object as Kubernetes protobuf.
    pub(crate) fn to_protobuf(&self, decision: &Decision) -> Vec<u8> {
        let spec = &self.spec;
        let selector = |s: &SelectorAttributes| pb::Selector {
            raw_selector: Some(s.raw_selector.clone()),
            requirements: s
                .requirements
                .iter()
                .map(|r| pb::Requirement {
                    key: Some(r.key.clone()),
                    operator: Some(r.operator.clone()),
                    values: r.values.clone(),
                })
                .collect(),
        };
        let (user, uid) = match self.kind {
            Kind::Subject => (Some(spec.user.clone()), Some(spec.uid.clone())),
            Kind::SelfSubject => (None, None),
        };
        let review = pb::SubjectAccessReview {
            metadata: Some(meta_pb::ObjectMeta {
                creation_timestamp: Some(meta_pb::Time::default()),
                ..meta_pb::ObjectMeta::default()
            }),
            spec: Some(pb::Spec {
                resource_attributes: spec.resource_attributes.as_ref().map(|r| {
                    pb::ResourceAttributes {
                        namespace: Some(r.namespace.clone()),
                        verb: Some(r.verb.clone()),
                        group: Some(r.group.clone()),
                        version: Some(r.version.clone()),
                        resource: Some(r.resource.clone()),
                        subresource: Some(r.subresource.clone()),
                        name: Some(r.name.clone()),
                        field_selector: r.field_selector.as_ref().map(selector),
                        label_selector: r.label_selector.as_ref().map(selector),
                    }
                }),
                non_resource_attributes: spec.non_resource_attributes.as_ref().map(|n| {
                    pb::NonResourceAttributes {
                        path: Some(n.path.clone()),
                        verb: Some(n.verb.clone()),
                    }
                }),
                user,
                groups: spec.groups.clone(),
                extra: spec
                    .extra
                    .iter()
                    .map(|(k, v)| (k.clone(), pb::ExtraValue { items: v.clone() }))
                    .collect(),
                uid,
            }),
            status: Some(pb::Status {
                allowed: Some(decision.is_allowed()),
                reason: Some(decision.reason().to_owned()),
                evaluation_error: Some(decision.evaluation_error().to_owned()),
                denied: Some(decision.is_denied()),
            }),
        };
        protobuf::envelope_as(API_VERSION, self.kind.name(), review.encode_to_vec())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: MetaOut,
    spec: &'a Spec,
    status: StatusOut<'a>,
}

/// An empty `metadata`, as Go writes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetaOut {
    creation_timestamp: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusOut<'a> {
    allowed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    denied: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    evaluation_error: &'a str,
}

// === Unknown fields ===

/// The fields of an object, for strict decoding.
#[derive(Debug)]
enum Shape {
    /// A value whose fields are not checked.
    Any,
    /// An object whose fields are all plain values.
    Fields(&'static [&'static str]),
    /// An object with nested objects.
    Object(&'static [(&'static str, Shape)]),
    /// A list of objects.
    List(&'static Shape),
}

const REQUIREMENT: Shape = Shape::Fields(&["key", "operator", "values"]);
const SELECTOR: Shape = Shape::Object(&[
    ("rawSelector", Shape::Any),
    ("requirements", Shape::List(&REQUIREMENT)),
]);
const RESOURCE_ATTRIBUTES: Shape = Shape::Object(&[
    ("namespace", Shape::Any),
    ("verb", Shape::Any),
    ("group", Shape::Any),
    ("version", Shape::Any),
    ("resource", Shape::Any),
    ("subresource", Shape::Any),
    ("name", Shape::Any),
    ("fieldSelector", SELECTOR),
    ("labelSelector", SELECTOR),
]);
const NON_RESOURCE_ATTRIBUTES: Shape = Shape::Fields(&["path", "verb"]);
const STATUS: Shape = Shape::Fields(&["allowed", "denied", "reason", "evaluationError"]);
const METADATA: Shape = Shape::Fields(json::META_FIELDS);
const SUBJECT: Shape = Shape::Object(&[
    ("kind", Shape::Any),
    ("apiVersion", Shape::Any),
    ("metadata", METADATA),
    (
        "spec",
        Shape::Object(&[
            ("resourceAttributes", RESOURCE_ATTRIBUTES),
            ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
            ("user", Shape::Any),
            ("groups", Shape::Any),
            ("extra", Shape::Any),
            ("uid", Shape::Any),
        ]),
    ),
    ("status", STATUS),
]);
const SELF_SUBJECT: Shape = Shape::Object(&[
    ("kind", Shape::Any),
    ("apiVersion", Shape::Any),
    ("metadata", METADATA),
    (
        "spec",
        Shape::Object(&[
            ("resourceAttributes", RESOURCE_ATTRIBUTES),
            ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
        ]),
    ),
    ("status", STATUS),
]);

impl Shape {
    /// Appends the paths of the fields of `value` that the shape does not know, spelled as
    /// the real server does (`spec.resourceAttributes.foo`, `….requirements[0].foo`).
    fn unknown(&self, value: &Value, path: &str, out: &mut Vec<String>) {
        let at = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match self {
            Shape::Any => {}
            Shape::Fields(known) => {
                for key in value.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !known.contains(&key.as_str()) {
                        out.push(at(key));
                    }
                }
            }
            Shape::Object(known) => {
                for (key, v) in value.as_object().into_iter().flatten() {
                    match known.iter().find(|(k, _)| k == key) {
                        Some((_, shape)) => shape.unknown(v, &at(key), out),
                        None => out.push(at(key)),
                    }
                }
            }
            Shape::List(item) => {
                for (i, v) in value.as_array().into_iter().flatten().enumerate() {
                    item.unknown(v, &format!("{path}[{i}]"), out);
                }
            }
        }
    }
}

/// The messages of `k8s.io/api/authorization/v1/generated.proto` (proto2) that reviews use,
/// with their upstream field numbers.
mod pb {
    use std::collections::BTreeMap;

    use crate::protobuf::pb::ObjectMeta;

    /// `SubjectAccessReview`; a `SelfSubjectAccessReview` has the same fields, and its spec
    /// the first two of this spec.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SubjectAccessReview {
        #[prost(message, optional, tag = "1")]
        pub(super) metadata: Option<ObjectMeta>,
        #[prost(message, optional, tag = "2")]
        pub(super) spec: Option<Spec>,
        #[prost(message, optional, tag = "3")]
        pub(super) status: Option<Status>,
    }

    /// `SubjectAccessReviewSpec`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Spec {
        #[prost(message, optional, tag = "1")]
        pub(super) resource_attributes: Option<ResourceAttributes>,
        #[prost(message, optional, tag = "2")]
        pub(super) non_resource_attributes: Option<NonResourceAttributes>,
        #[prost(string, optional, tag = "3")]
        pub(super) user: Option<String>,
        #[prost(string, repeated, tag = "4")]
        pub(super) groups: Vec<String>,
        #[prost(btree_map = "string, message", tag = "5")]
        pub(super) extra: BTreeMap<String, ExtraValue>,
        #[prost(string, optional, tag = "6")]
        pub(super) uid: Option<String>,
    }

    /// `ExtraValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ExtraValue {
        #[prost(string, repeated, tag = "1")]
        pub(super) items: Vec<String>,
    }

    /// `ResourceAttributes`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ResourceAttributes {
        #[prost(string, optional, tag = "1")]
        pub(super) namespace: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub(super) verb: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub(super) group: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub(super) version: Option<String>,
        #[prost(string, optional, tag = "5")]
        pub(super) resource: Option<String>,
        #[prost(string, optional, tag = "6")]
        pub(super) subresource: Option<String>,
        #[prost(string, optional, tag = "7")]
        pub(super) name: Option<String>,
        #[prost(message, optional, tag = "8")]
        pub(super) field_selector: Option<Selector>,
        #[prost(message, optional, tag = "9")]
        pub(super) label_selector: Option<Selector>,
    }

    /// `FieldSelectorAttributes` and `LabelSelectorAttributes` (the same fields).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Selector {
        #[prost(string, optional, tag = "1")]
        pub(super) raw_selector: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub(super) requirements: Vec<Requirement>,
    }

    /// `meta.v1.FieldSelectorRequirement` and `meta.v1.LabelSelectorRequirement`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Requirement {
        #[prost(string, optional, tag = "1")]
        pub(super) key: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub(super) operator: Option<String>,
        #[prost(string, repeated, tag = "3")]
        pub(super) values: Vec<String>,
    }

    /// `NonResourceAttributes`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NonResourceAttributes {
        #[prost(string, optional, tag = "1")]
        pub(super) path: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub(super) verb: Option<String>,
    }

    /// `SubjectAccessReviewStatus`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Status {
        #[prost(bool, optional, tag = "1")]
        pub(super) allowed: Option<bool>,
        #[prost(string, optional, tag = "2")]
        pub(super) reason: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub(super) evaluation_error: Option<String>,
        #[prost(bool, optional, tag = "4")]
        pub(super) denied: Option<bool>,
    }

    impl Selector {
        pub(super) fn into_attributes(self) -> super::SelectorAttributes {
            super::SelectorAttributes {
                raw_selector: self.raw_selector.unwrap_or_default(),
                requirements: self
                    .requirements
                    .into_iter()
                    .map(|r| super::Requirement {
                        key: r.key.unwrap_or_default(),
                        operator: r.operator.unwrap_or_default(),
                        values: r.values,
                    })
                    .collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Access, User};

    const ISTIOD: &[u8] = br#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview",
        "spec":{"resourceAttributes":{"namespace":"ns","verb":"list","resource":"secrets"},"user":"system:serviceaccount:ns:sa"}}"#;

    fn asker() -> Identity {
        Identity::authenticated(User {
            name: "system:serviceaccount:ns:me".to_owned(),
            access: Access::none(),
        })
    }

    #[test]
    fn decodes_what_istiod_sends() {
        let review = decode_json(ISTIOD, Kind::Subject).expect("decodes");
        assert!(review.unknown_fields.is_empty());
        validate(&review).expect("valid");
        let attrs = review.attributes(&asker());
        assert_eq!(
            (
                attrs.user.as_str(),
                attrs.verb.as_str(),
                attrs.resource.as_str(),
                attrs.namespace.as_str()
            ),
            ("system:serviceaccount:ns:sa", "list", "secrets", "ns")
        );
        assert!(attrs.resource_request);
        let out: Value =
            serde_json::from_slice(&review.to_json(&Decision::allow("yes"))).expect("json");
        assert_eq!(
            out,
            serde_json::json!({
                "kind": "SubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": { "creationTimestamp": null },
                "spec": {
                    "resourceAttributes": { "namespace": "ns", "verb": "list", "resource": "secrets" },
                    "user": "system:serviceaccount:ns:sa",
                },
                "status": { "allowed": true, "reason": "yes" },
            })
        );
    }

    #[test]
    fn invalid_specs_are_worded_like_the_real_server() {
        let err = |body: &str| {
            let review = decode_json(body.as_bytes(), Kind::Subject).expect("decodes");
            validate(&review).expect_err("invalid").to_string()
        };
        assert_eq!(
            err(r#"{"kind":"SubjectAccessReview"}"#),
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: [spec.resourceAttributes: \
             Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes \
             must be specified, spec.user: Invalid value: \"\": at least one of user or group \
             must be specified]"
        );
        assert_eq!(
            err(
                r#"{"spec":{"resourceAttributes":{},"nonResourceAttributes":{"path":"/x","verb":"get"},"groups":["g"]}}"#
            ),
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.nonResourceAttributes: \
             Invalid value: authorization.NonResourceAttributes{Path:\"/x\", Verb:\"get\"}: cannot \
             be specified in combination with resourceAttributes"
        );
        assert_eq!(
            err(
                r#"{"metadata":{"name":"n","creationTimestamp":null},"spec":{"resourceAttributes":{"fieldSelector":{}},"user":"u"}}"#
            ),
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: \
             [spec.resourceAttributes.fieldSelector.requirements: Required value: when \
             spec.resourceAttributes.fieldSelector is specified, requirements or rawSelector is \
             required, metadata: Invalid value: v1.ObjectMeta{Name:\"n\"}: must be empty]"
        );
        // `null` is Go's zero value, and an empty `metadata` is fine.
        let review = decode_json(
            br#"{"metadata":{"creationTimestamp":null,"labels":{}},"spec":{"nonResourceAttributes":{"path":"/healthz","verb":"get"},"user":null,"groups":["system:masters"],"extra":{"k":null}}}"#,
            Kind::Subject,
        )
        .expect("decodes");
        validate(&review).expect("valid");
    }

    #[test]
    fn bodies_that_do_not_decode_are_bad_requests() {
        for (body, message) in [
            (
                r#"{"spec":{"user":5}}"#,
                "SubjectAccessReview in version \"v1\" cannot be handled as a SubjectAccessReview: \
                 json: cannot unmarshal integer into Go value of type v1.SubjectAccessReview",
            ),
            (
                r#"{"apiVersion":"v1","kind":"SubjectAccessReview"}"#,
                "the API version in the data (v1) does not match the expected API version \
                 (authorization.k8s.io/v1)",
            ),
            (
                r#"{"kind":"Secret"}"#,
                "the kind in the data (Secret) does not match the expected kind (SubjectAccessReview)",
            ),
        ] {
            let err = decode_json(body.as_bytes(), Kind::Subject).expect_err("bad");
            assert_eq!((err.code(), err.to_string().as_str()), (400, message));
        }
    }

    #[test]
    fn unknown_fields_are_found() {
        let review = decode_json(
            br#"{"spec":{"resourceAttributes":{"verb":"get","fieldSelector":{"requirements":[{"key":"a","operator":"In","x":1}]},"y":2},"user":"u","z":3},"w":4}"#,
            Kind::Subject,
        )
        .expect("decodes");
        assert_eq!(
            review.unknown_fields,
            [
                "spec.resourceAttributes.fieldSelector.requirements[0].x",
                "spec.resourceAttributes.y",
                "spec.z",
                "w"
            ]
        );
        let review = decode_json(
            br#"{"spec":{"resourceAttributes":{"verb":"get"},"user":"u"}}"#,
            Kind::SelfSubject,
        )
        .expect("decodes");
        assert_eq!(review.unknown_fields, ["spec.user"]);
        // A SelfSubjectAccessReview asks about the asker.
        assert_eq!(
            review.attributes(&asker()).groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn protobuf_round_trips() {
        let review = decode_json(ISTIOD, Kind::Subject).expect("decodes");
        let body = review.to_protobuf(&Decision::deny("no").with_evaluation_error("e"));
        let back = decode_protobuf(&body, Kind::Subject).expect("decodes");
        validate(&back).expect("valid: an empty Time is no timestamp");
        assert_eq!(back.attributes(&asker()), review.attributes(&asker()));
        let (_, raw) = protobuf::open(&body).expect("envelope");
        let status = pb::SubjectAccessReview::decode(raw.as_slice())
            .expect("decodes")
            .status
            .expect("status");
        assert_eq!(
            (status.allowed, status.denied, status.reason.as_deref()),
            (Some(false), Some(true), Some("no"))
        );
    }
}
