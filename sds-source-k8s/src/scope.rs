//! Which namespaces a source watches.

/// The namespaces whose Secrets a [`K8sSource`](crate::K8sSource) serves.
///
/// Each namespace is listed and watched on its own, so the source needs `get`, `list` and
/// `watch` on Secrets in each of them (a Role per namespace); [`Scope::All`] makes one
/// cluster-wide watch and needs a ClusterRole.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// One namespace, e.g. the gateway's own (`istio-system`).
    Namespace(String),
    /// Several namespaces (duplicates are ignored). With none, the source watches nothing and
    /// its stream ends at once.
    Namespaces(Vec<String>),
    /// Every namespace of the cluster.
    All,
}

// === impl Scope ===

impl Scope {
    /// One entry per watch: a namespace, or `None` for all of them. Sorted, without duplicates.
    pub(crate) fn watches(&self) -> Vec<Option<String>> {
        match self {
            Scope::Namespace(namespace) => vec![Some(namespace.clone())],
            Scope::Namespaces(namespaces) => {
                let mut namespaces = namespaces.clone();
                namespaces.sort_unstable();
                namespaces.dedup();
                namespaces.into_iter().map(Some).collect()
            }
            Scope::All => vec![None],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches() {
        assert_eq!(
            Scope::Namespace("a".into()).watches(),
            [Some("a".to_owned())]
        );
        assert_eq!(
            Scope::Namespaces(vec!["b".into(), "a".into(), "b".into()]).watches(),
            [Some("a".to_owned()), Some("b".to_owned())]
        );
        assert_eq!(Scope::All.watches(), [None]);
    }
}
