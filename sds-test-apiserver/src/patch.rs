//! PATCH bodies: JSON merge patch (RFC 7386) and strategic merge patch, applied to a Secret's
//! JSON.
//!
//! A Secret has no lists with a merge strategy except `metadata.finalizers` (a set) and
//! `metadata.ownerReferences` (merged by `uid`), so strategic merge is a merge patch plus those
//! two lists and the `$patch` / `$setElementOrder` / `$retainKeys` /
//! `$deleteFromPrimitiveList` directives that `kubectl apply` may send.

use serde_json::{Map, Value};

use crate::error::Error;

/// The patch types the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

/// What a 415 lists as acceptable.
pub(crate) const ACCEPTED: &str =
    "application/merge-patch+json, application/strategic-merge-patch+json";

impl PatchType {
    /// The patch type of a `Content-Type`, or the 415 to answer.
    pub(crate) fn from_content_type(content_type: &str) -> Result<Self, Error> {
        match media_type(content_type) {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            _ => Err(Error::UnsupportedMediaType { accepted: ACCEPTED }),
        }
    }
}

/// The media type of a `Content-Type` value, without parameters.
pub(crate) fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Applies `patch` (a request body) to `target`.
pub(crate) fn apply(target: &mut Value, patch: &[u8], kind: PatchType) -> Result<(), Error> {
    let patch: Value = serde_json::from_slice(patch).map_err(|e| {
        Error::bad_request(format!(
            "error decoding patch: {}",
            crate::json::problem(&e, "map[string]interface {}")
        ))
    })?;
    if !patch.is_object() {
        return Err(Error::bad_request(
            "error decoding patch: the patch is not a JSON object",
        ));
    }
    match kind {
        PatchType::Merge => merge(target, &patch),
        PatchType::Strategic => strategic(target, &patch, ""),
    }
    Ok(())
}

/// RFC 7386.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn strategic(target: &mut Value, patch: &Value, path: &str) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *target = Value::Object(replaced);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(gone)) = (map.get_mut(list), value) {
                items.retain(|item| !gone.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue; // $patch handled above; $setElementOrder/ and $retainKeys only order/prune
        }
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if value.is_null() || value.get("$patch").and_then(Value::as_str) == Some("delete") {
            map.remove(key);
            continue;
        }
        match (child.as_str(), value) {
            ("metadata.finalizers", Value::Array(add)) => {
                let slot = map.entry(key.clone()).or_insert(Value::Array(Vec::new()));
                match slot {
                    Value::Array(items) => {
                        for item in add {
                            if !items.contains(item) {
                                items.push(item.clone());
                            }
                        }
                    }
                    other => *other = value.clone(),
                }
            }
            ("metadata.ownerReferences", Value::Array(refs)) => {
                let slot = map.entry(key.clone()).or_insert(Value::Array(Vec::new()));
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                if let Value::Array(items) = slot {
                    merge_by_uid(items, refs);
                }
            }
            (_, Value::Object(_)) => {
                strategic(map.entry(key.clone()).or_insert(Value::Null), value, &child);
            }
            _ => {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_by_uid(items: &mut Vec<Value>, patches: &[Value]) {
    for p in patches {
        let uid = p.get("uid").cloned();
        let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
        let at = items.iter().position(|i| i.get("uid") == uid.as_ref());
        match (at, delete) {
            (Some(i), true) => {
                items.remove(i);
            }
            (Some(i), false) => strategic(&mut items[i], p, "metadata.ownerReferences[]"),
            (None, true) => {}
            (None, false) => items.push(p.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls() {
        let mut v = json!({"data": {"a": "1", "b": "2"}, "type": "Opaque"});
        apply(&mut v, br#"{"data":{"a":null,"c":"3"}}"#, PatchType::Merge).expect("applies");
        assert_eq!(v, json!({"data": {"b": "2", "c": "3"}, "type": "Opaque"}));
    }

    #[test]
    fn strategic_patch_from_kubectl_apply() {
        let mut v = json!({"metadata": {"name": "x", "finalizers": ["a"], "annotations": {"k": "v"}}, "data": {"a": "1"}});
        let patch = br#"{"$setElementOrder/finalizers":["a","b"],"metadata":{"finalizers":["b"],"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"}},"data":{"a":null,"n":"2"}}"#;
        apply(&mut v, patch, PatchType::Strategic).expect("applies");
        assert_eq!(
            v,
            json!({"metadata": {"name": "x", "finalizers": ["a", "b"], "annotations": {"k": "v", "kubectl.kubernetes.io/last-applied-configuration": "{}"}}, "data": {"n": "2"}})
        );
        apply(
            &mut v,
            br#"{"data":{"$patch":"replace","z":"9"}}"#,
            PatchType::Strategic,
        )
        .expect("applies");
        assert_eq!(v["data"], json!({"z": "9"}));
        apply(
            &mut v,
            br#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}}"#,
            PatchType::Strategic,
        )
        .expect("applies");
        assert_eq!(v["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn unknown_patch_type_is_415() {
        let err = PatchType::from_content_type("application/apply-patch+yaml").expect_err("415");
        assert_eq!(err.code(), 415);
    }
}
