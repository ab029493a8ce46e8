//! Label selectors (`labelSelector`) and field selectors (`fieldSelector`) on Secrets.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::secret::Secret;

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: LabelOp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A parsed `fieldSelector`: every term must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<FieldTerm>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldTerm {
    field: Field,
    value: String,
    negated: bool,
}

/// The fields a Secret can be selected by (`metadata.name`, `metadata.namespace`, `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    Type,
}

/// Both selectors of a list or watch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selectors {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

// === impl Selectors ===

impl Selectors {
    /// Whether `s` passes both selectors.
    pub(crate) fn matches(&self, s: &Secret) -> bool {
        self.labels.matches(&s.labels) && self.fields.matches(s)
    }

    /// Whether either selector is set (the real server then omits `remainingItemCount`).
    pub(crate) fn is_empty(&self) -> bool {
        self.labels.0.is_empty() && self.fields.0.is_empty()
    }
}

// === impl LabelSelector ===

impl LabelSelector {
    /// Parses the `labelSelector` syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
    /// `a notin (x)`, `a`, `!a`, joined by commas.
    pub(crate) fn parse(text: &str) -> Result<Self, Error> {
        let mut reqs = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(Requirement::parse(part)?);
        }
        Ok(Self(reqs))
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                LabelOp::Equals(v) => value == Some(v),
                LabelOp::NotEquals(v) => value != Some(v),
                LabelOp::In(vs) => value.is_some_and(|x| vs.contains(x)),
                LabelOp::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
            }
        })
    }
}

impl Requirement {
    fn parse(part: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::bad_request(format!(
                "unable to parse requirement: found '{part}', {why}"
            ))
        };
        if let Some(key) = part.strip_prefix('!') {
            return Ok(Self {
                key: label_key(key.trim()).map_err(|_| bad("invalid label key"))?,
                op: LabelOp::DoesNotExist,
            });
        }
        for (token, negated) in [("!=", true), ("==", false), ("=", false)] {
            if let Some((key, value)) = part.split_once(token) {
                let key = label_key(key.trim()).map_err(|_| bad("invalid label key"))?;
                let value = value.trim().to_owned();
                let op = if negated {
                    LabelOp::NotEquals(value)
                } else {
                    LabelOp::Equals(value)
                };
                return Ok(Self { key, op });
            }
        }
        let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
        match words.as_slice() {
            [key] => Ok(Self {
                key: label_key(key).map_err(|_| bad("invalid label key"))?,
                op: LabelOp::Exists,
            }),
            [key, rest] => {
                let rest = rest.trim();
                let (negated, list) = if let Some(list) = rest.strip_prefix("notin") {
                    (true, list)
                } else if let Some(list) = rest.strip_prefix("in") {
                    (false, list)
                } else {
                    return Err(bad("expected: in, notin, =, ==, !="));
                };
                let list = list
                    .trim()
                    .strip_prefix('(')
                    .and_then(|l| l.strip_suffix(')'))
                    .ok_or_else(|| bad("expected: '(' and ')' around the values"))?;
                let values = list.split(',').map(|v| v.trim().to_owned()).collect();
                let key = label_key(key).map_err(|_| bad("invalid label key"))?;
                let op = if negated {
                    LabelOp::NotIn(values)
                } else {
                    LabelOp::In(values)
                };
                Ok(Self { key, op })
            }
            _ => Err(bad("expected a requirement")),
        }
    }
}

fn label_key(key: &str) -> Result<String, ()> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok { Ok(key.to_owned()) } else { Err(()) }
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0_u32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

// === impl FieldSelector ===

impl FieldSelector {
    /// Parses `field=value`, `field==value`, `field!=value` terms joined by commas
    /// (a backslash escapes `,`, `=`, `!` and `\` in values).
    pub(crate) fn parse(text: &str) -> Result<Self, Error> {
        let mut terms = Vec::new();
        for part in split_unescaped_commas(text) {
            if part.is_empty() {
                continue;
            }
            let (field, value, negated) = if let Some((f, v)) = find_unescaped(&part, "!=") {
                (f, v, true)
            } else if let Some((f, v)) = find_unescaped(&part, "==") {
                (f, v, false)
            } else if let Some((f, v)) = find_unescaped(&part, "=") {
                (f, v, false)
            } else {
                return Err(Error::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = match field.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                "type" => Field::Type,
                other => {
                    return Err(Error::bad_request(format!(
                        "field label not supported: {other}"
                    )));
                }
            };
            terms.push(FieldTerm {
                field,
                value: unescape(&value),
                negated,
            });
        }
        Ok(Self(terms))
    }

    fn matches(&self, s: &Secret) -> bool {
        self.0.iter().all(|t| {
            let actual = match t.field {
                Field::Name => s.name.as_str(),
                Field::Namespace => s.namespace.as_str(),
                Field::Type => s.effective_type(),
            };
            (actual == t.value) != t.negated
        })
    }
}

fn split_unescaped_commas(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut().expect("parts starts non-empty");
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' => parts.push(String::new()),
            _ => current.push(c),
        }
    }
    parts
}

fn find_unescaped(part: &str, op: &str) -> Option<(String, String)> {
    let bytes = part.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if part[i..].starts_with(op) {
            return Some((part[..i].to_owned(), part[i + op.len()..].to_owned()));
        }
        i += 1;
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(ns: &str, name: &str, ty: &str) -> Secret {
        Secret::new(ns, name).with_type(ty).with_label("app", "web")
    }

    #[test]
    fn istio_field_selector() {
        let sel = FieldSelector::parse(
            "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token",
        )
        .expect("parses");
        assert!(sel.matches(&secret("a", "b", "kubernetes.io/tls")));
        assert!(!sel.matches(&secret("a", "b", "helm.sh/release.v1")));
        assert!(!sel.matches(&secret("a", "b", "kubernetes.io/service-account-token")));
        let sel = FieldSelector::parse("metadata.name==b,metadata.namespace=a").expect("parses");
        assert!(sel.matches(&secret("a", "b", "Opaque")));
        assert!(!sel.matches(&secret("a", "c", "Opaque")));
        let err = FieldSelector::parse("spec.x=1").expect_err("unsupported");
        assert_eq!(err.to_string(), "field label not supported: spec.x");
    }

    #[test]
    fn label_selectors() {
        let s = secret("a", "b", "Opaque").with_label("tier", "front");
        let ok = |text: &str| {
            LabelSelector::parse(text)
                .expect("parses")
                .matches(&s.labels)
        };
        assert!(ok("app=web"));
        assert!(ok("app==web,tier"));
        assert!(ok("app in (web, db),tier notin (back)"));
        assert!(ok("!missing"));
        assert!(!ok("app!=web"));
        assert!(!ok("missing"));
        assert!(!ok("tier in (back)"));
        assert!(ok(""));
        assert!(LabelSelector::parse("app in web").is_err());
    }
}
