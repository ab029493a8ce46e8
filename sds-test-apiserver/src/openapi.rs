//! OpenAPI documents, just enough for kubectl to leave validation to the server.
//!
//! kubectl validates a manifest itself (`--validate=strict`, the default) unless the server
//! declares the `fieldValidation` query parameter on the PATCH operation of the kind; then it
//! sends `fieldValidation=Strict` and lets the server decide. kubectl 1.27 and 1.28 look for
//! that in `/openapi/v2` (a gnostic protobuf document; without one `kubectl apply` fails with
//! "the server could not find the requested resource"), 1.29 and later in `/openapi/v3`.
//! Neither document declares schemas: `kubectl apply` then falls back to its built-in
//! strategic-merge metadata for Secrets.

use prost::Message as _;
use serde_json::{Value, json};

use crate::access_review::{self, Kind};

/// The media type kubectl asks `/openapi/v2` for.
pub(crate) const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The `Content-Type` of the answer: Go's `mime.ParseMediaType` rejects the `@` of the
/// requested type ("mime: unexpected content after media subtype"), so the real server
/// answers with a dot instead.
pub(crate) const V2_PROTOBUF_RESPONSE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

const GVK_YAML: &str = "group: \"\"\nkind: Secret\nversion: v1\n";

/// The hash that `/openapi/v3` publishes for `api/v1` (any stable string works).
const V3_HASH: &str = "5A1D5E0C7E6B4C2F";

/// The hash that `/openapi/v3` publishes for `apis/authorization.k8s.io/v1`.
const V3_AUTHORIZATION_HASH: &str = "3B7C0D9A5E2F4A61";

/// `/openapi/v3`: the index of group-version documents.
pub(crate) fn openapi_v3_root() -> Value {
    json!({
        "paths": {
            "api/v1": { "serverRelativeURL": format!("/openapi/v3/api/v1?hash={V3_HASH}") },
            "apis/authorization.k8s.io/v1": {
                "serverRelativeURL": format!("/openapi/v3/apis/authorization.k8s.io/v1?hash={V3_AUTHORIZATION_HASH}")
            },
        }
    })
}

/// `/openapi/v3/apis/authorization.k8s.io/v1`: the create operations of the reviews served.
pub(crate) fn openapi_v3_authorization_v1(git_version: &str) -> Value {
    let op = |kind: Kind| {
        json!({
            "operationId": format!("createAuthorizationV1{}", kind.name()),
            "responses": { "201": { "description": "Created" } },
            "x-kubernetes-action": "post",
            "x-kubernetes-group-version-kind": {
                "group": access_review::GROUP,
                "kind": kind.name(),
                "version": "v1",
            },
        })
    };
    let path = |kind: Kind| format!("/apis/{}/{}", access_review::API_VERSION, kind.resource());
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": git_version },
        "paths": {
            path(Kind::Subject): { "post": op(Kind::Subject) },
            path(Kind::SelfSubject): { "post": op(Kind::SelfSubject) },
        },
    })
}

const GVK: fn() -> Value = || json!({ "group": "", "kind": "Secret", "version": "v1" });

/// `/openapi/v3/api/v1`: the Secret paths, whose operations declare the `fieldValidation`
/// query parameter.
pub(crate) fn openapi_v3_core_v1(git_version: &str) -> Value {
    let field_validation = json!({
        "name": "fieldValidation",
        "in": "query",
        "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.",
        "schema": { "type": "string", "uniqueItems": true },
    });
    let op = |id: &str, action: &str| {
        json!({
            "operationId": id,
            "parameters": [field_validation],
            "responses": { "200": { "description": "OK" } },
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": GVK(),
        })
    };
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": git_version },
        "paths": {
            "/api/v1/namespaces/{namespace}/secrets": {
                "post": op("createCoreV1NamespacedSecret", "post"),
            },
            "/api/v1/namespaces/{namespace}/secrets/{name}": {
                "put": op("replaceCoreV1NamespacedSecret", "put"),
                "patch": op("patchCoreV1NamespacedSecret", "patch"),
            },
        },
    })
}

/// `/openapi/v2` as JSON (for people; kubectl asks for [`V2_PROTOBUF`]).
pub(crate) fn openapi_v2_json(git_version: &str) -> Value {
    let op = |id: &str| {
        json!({
            "operationId": id,
            "parameters": [{ "name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true }],
            "responses": { "200": { "description": "OK" } },
            "x-kubernetes-group-version-kind": GVK(),
        })
    };
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": git_version },
        "paths": {
            "/api/v1/namespaces/{namespace}/secrets": { "post": op("createCoreV1NamespacedSecret") },
            "/api/v1/namespaces/{namespace}/secrets/{name}": {
                "put": op("replaceCoreV1NamespacedSecret"),
                "patch": op("patchCoreV1NamespacedSecret"),
            },
        },
        "definitions": {},
    })
}

/// `/openapi/v2` as gnostic's `openapi.v2.Document` protobuf, the same content as
/// [`openapi_v2_json`].
pub(crate) fn openapi_v2_protobuf(git_version: &str) -> Vec<u8> {
    let op = |id: &str| v2::Operation {
        operation_id: id.to_owned(),
        parameters: vec![v2::ParametersItem {
            parameter: Some(v2::Parameter {
                non_body_parameter: Some(v2::NonBodyParameter {
                    query_parameter_sub_schema: Some(v2::QueryParameterSubSchema {
                        r#in: "query".to_owned(),
                        name: "fieldValidation".to_owned(),
                        r#type: "string".to_owned(),
                        unique_items: true,
                    }),
                }),
            }),
        }],
        vendor_extension: vec![v2::NamedAny {
            name: "x-kubernetes-group-version-kind".to_owned(),
            value: Some(v2::Any {
                yaml: GVK_YAML.to_owned(),
            }),
        }],
    };
    let doc = v2::Document {
        swagger: "2.0".to_owned(),
        info: Some(v2::Info {
            title: "Kubernetes".to_owned(),
            version: git_version.to_owned(),
        }),
        paths: Some(v2::Paths {
            path: vec![
                v2::NamedPathItem {
                    name: "/api/v1/namespaces/{namespace}/secrets".to_owned(),
                    value: Some(v2::PathItem {
                        post: Some(op("createCoreV1NamespacedSecret")),
                        ..v2::PathItem::default()
                    }),
                },
                v2::NamedPathItem {
                    name: "/api/v1/namespaces/{namespace}/secrets/{name}".to_owned(),
                    value: Some(v2::PathItem {
                        put: Some(op("replaceCoreV1NamespacedSecret")),
                        patch: Some(op("patchCoreV1NamespacedSecret")),
                        ..v2::PathItem::default()
                    }),
                },
            ],
        }),
    };
    doc.encode_to_vec()
}

/// The few messages of gnostic's `openapiv2/OpenAPIv2.proto` (proto3) that the document
/// uses, with their upstream field numbers.
mod v2 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Document {
        #[prost(string, tag = "1")]
        pub(super) swagger: String,
        #[prost(message, optional, tag = "2")]
        pub(super) info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub(super) paths: Option<Paths>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Info {
        #[prost(string, tag = "1")]
        pub(super) title: String,
        #[prost(string, tag = "2")]
        pub(super) version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub(super) path: Vec<NamedPathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(message, optional, tag = "2")]
        pub(super) value: Option<PathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PathItem {
        #[prost(message, optional, tag = "3")]
        pub(super) put: Option<Operation>,
        #[prost(message, optional, tag = "4")]
        pub(super) post: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        pub(super) patch: Option<Operation>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Operation {
        #[prost(string, tag = "5")]
        pub(super) operation_id: String,
        #[prost(message, repeated, tag = "8")]
        pub(super) parameters: Vec<ParametersItem>,
        #[prost(message, repeated, tag = "13")]
        pub(super) vendor_extension: Vec<NamedAny>,
    }

    /// `oneof { Parameter parameter = 1; JsonReference json_reference = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub(super) parameter: Option<Parameter>,
    }

    /// `oneof { BodyParameter body_parameter = 1; NonBodyParameter non_body_parameter = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Parameter {
        #[prost(message, optional, tag = "2")]
        pub(super) non_body_parameter: Option<NonBodyParameter>,
    }

    /// `oneof { …; QueryParameterSubSchema query_parameter_sub_schema = 3; … }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub(super) query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        pub(super) r#in: String,
        #[prost(string, tag = "4")]
        pub(super) name: String,
        #[prost(string, tag = "6")]
        pub(super) r#type: String,
        #[prost(bool, tag = "20")]
        pub(super) unique_items: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NamedAny {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(message, optional, tag = "2")]
        pub(super) value: Option<Any>,
    }

    /// `Any { google.protobuf.Any value = 1; string yaml = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Any {
        #[prost(string, tag = "2")]
        pub(super) yaml: String,
    }
}
