//! Discovery documents: what clients read before they touch a Secret.

use serde_json::{Value, json};

use crate::access_review::{self, Kind};

/// The `/version` document for a `gitVersion` like `v1.33.1`.
pub(crate) fn version(git_version: &str) -> Value {
    let mut parts = git_version.trim_start_matches('v').split('.');
    let digits = |p: Option<&str>| {
        p.unwrap_or_default()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    };
    let major = digits(parts.next());
    let minor = digits(parts.next());
    json!({
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn api_versions(port: u16) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            { "clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}") }
        ],
    })
}

/// `/api/v1`: only `secrets`.
pub(crate) fn core_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [{
            "name": "secrets",
            "singularName": "secret",
            "namespaced": true,
            "kind": "Secret",
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "storageVersionHash": "S6u1pOWzb84=",
        }],
    })
}

/// `/apis`: `authorization.k8s.io`.
pub(crate) fn api_groups() -> Value {
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [authorization_group_entry()] })
}

/// `/apis/authorization.k8s.io`.
pub(crate) fn authorization_group() -> Value {
    let mut group = authorization_group_entry();
    group["kind"] = "APIGroup".into();
    group["apiVersion"] = "v1".into();
    group
}

fn authorization_group_entry() -> Value {
    let version = json!({ "groupVersion": access_review::API_VERSION, "version": "v1" });
    json!({
        "name": access_review::GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

/// `/apis/authorization.k8s.io/v1`: only the reviews served (no
/// LocalSubjectAccessReviews, no SelfSubjectRulesReviews).
pub(crate) fn authorization_v1_resources() -> Value {
    let resource = |kind: Kind| {
        json!({
            "name": kind.resource(),
            "singularName": kind.resource().trim_end_matches('s'),
            "namespaced": false,
            "kind": kind.name(),
            "verbs": ["create"],
        })
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": access_review::API_VERSION,
        "resources": [resource(Kind::SelfSubject), resource(Kind::Subject)],
    })
}

/// `GET /api/v1/namespaces/{name}`: every namespace exists and is `Active` (kubectl 1.33
/// looks a namespace up after a NotFound, to blame a missing namespace instead).
pub(crate) fn namespace(name: &str) -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": "00000000-0000-4000-8000-000000000000",
            "resourceVersion": "1",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": { "kubernetes.io/metadata.name": name },
        },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Active" },
    })
}
