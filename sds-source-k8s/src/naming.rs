//! The SDS resource names a Secret is served under.

use sds_core::CACERT_SUFFIX;

use crate::keys::SecretId;

/// The scheme of Istio's resource names for Kubernetes Secrets.
pub(crate) const SCHEME: &str = "kubernetes://";

/// The names a Secret `ns/name` is served under, canonical first: `kubernetes://ns/name`,
/// and, when `ns` is the default namespace, also `name` and `kubernetes://name`.
pub(crate) fn aliases(id: &SecretId, default_namespace: &str) -> Vec<String> {
    let mut names = Vec::with_capacity(3);
    names.push(canonical(id));
    if *id.namespace == *default_namespace {
        names.push(id.name.to_string());
        names.push(format!("{SCHEME}{}", id.name));
    }
    names
}

/// `kubernetes://ns/name`: the name credentials are reported under.
pub(crate) fn canonical(id: &SecretId) -> String {
    format!("{SCHEME}{}/{}", id.namespace, id.name)
}

/// Whether the Secret's own name ends with `-cacert` (after a non-empty base): such a Secret
/// holds the CA of the Secret named without the suffix, and each of its names asks for a CA.
pub(crate) fn is_cacert(id: &SecretId) -> bool {
    id.name
        .strip_suffix(CACERT_SUFFIX)
        .is_some_and(|base| !base.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_default_namespace() {
        let id = SecretId::new("istio-system", "httpbin");
        assert_eq!(
            aliases(&id, "istio-system"),
            [
                "kubernetes://istio-system/httpbin",
                "httpbin",
                "kubernetes://httpbin"
            ]
        );
    }

    #[test]
    fn names_in_other_namespaces() {
        let id = SecretId::new("apps", "httpbin");
        assert_eq!(aliases(&id, "istio-system"), ["kubernetes://apps/httpbin"]);
    }

    #[test]
    fn cacert_secrets() {
        assert!(is_cacert(&SecretId::new("ns", "httpbin-cacert")));
        assert!(!is_cacert(&SecretId::new("ns", "-cacert")));
        assert!(!is_cacert(&SecretId::new("ns", "httpbin")));
    }
}
