//! Validation of Secrets on create and update, worded like the real server's.

use crate::error::{Error, FieldError};
use crate::secret::Secret;

const MAX_DATA_BYTES: usize = 1024 * 1024;
const TLS: &str = "kubernetes.io/tls";
const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";

/// Validates a Secret about to be created.
pub(crate) fn create(s: &Secret) -> Result<(), Error> {
    let mut causes = Vec::new();
    if s.name.is_empty() {
        causes.push(FieldError {
            field: "metadata.name".to_owned(),
            reason: "FieldValueRequired",
            message: "Required value: name or generateName is required".to_owned(),
        });
    } else if let Some(why) = dns_subdomain(&s.name) {
        causes.push(invalid("metadata.name", &s.name, why));
    }
    object(s, &mut causes);
    finish(s, causes)
}

/// Validates an update of `old` to `new`.
pub(crate) fn update(old: &Secret, new: &Secret) -> Result<(), Error> {
    let mut causes = Vec::new();
    object(new, &mut causes);
    if old.effective_type() != new.effective_type() {
        causes.push(invalid("type", new.effective_type(), "field is immutable"));
    }
    if old.immutable == Some(true) {
        if old.data != new.data {
            causes.push(forbidden("data"));
        }
        if new.immutable != Some(true) {
            causes.push(forbidden("immutable"));
        }
    }
    finish(new, causes)
}

fn object(s: &Secret, causes: &mut Vec<FieldError>) {
    let mut total = 0;
    for (key, value) in &s.data {
        total += value.len();
        if let Some(why) = config_key(key) {
            causes.push(invalid(&format!("data[{key}]"), key, why));
        }
    }
    if total > MAX_DATA_BYTES {
        causes.push(FieldError {
            field: "data".to_owned(),
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
        });
    }
    match s.effective_type() {
        TLS => {
            for key in ["tls.crt", "tls.key"] {
                if !s.data.contains_key(key) {
                    causes.push(FieldError {
                        field: format!("data[{key}]"),
                        reason: "FieldValueRequired",
                        message: "Required value".to_owned(),
                    });
                }
            }
        }
        SERVICE_ACCOUNT_TOKEN => {
            let key = "kubernetes.io/service-account.name";
            if !s.annotations.contains_key(key) {
                causes.push(FieldError {
                    field: format!("metadata.annotations[{key}]"),
                    reason: "FieldValueRequired",
                    message: "Required value".to_owned(),
                });
            }
        }
        _ => {}
    }
}

fn finish(s: &Secret, causes: Vec<FieldError>) -> Result<(), Error> {
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid {
            group: "",
            kind: "Secret",
            name: s.name.clone(),
            causes,
        })
    }
}

fn invalid(field: &str, value: &str, why: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: \"{value}\": {why}"),
    }
}

fn forbidden(field: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: "FieldValueForbidden",
        message: "Forbidden: field is immutable when `immutable` is set".to_owned(),
    }
}

/// Why `name` is not an RFC 1123 subdomain, if it is not.
pub(crate) fn dns_subdomain(name: &str) -> Option<&'static str> {
    if name.len() > 253 {
        return Some("must be no more than 253 characters");
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    if name.split('.').all(label_ok) {
        None
    } else {
        Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )
    }
}

fn config_key(key: &str) -> Option<&'static str> {
    if key.len() > 253 {
        Some("must be no more than 253 characters")
    } else if key.is_empty()
        || !key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        Some(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. \
             'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is \
             '[-._a-zA-Z0-9]+')",
        )
    } else if key == "." {
        Some("must not be '.'")
    } else if key == ".." {
        Some("must not be '..'")
    } else if key.starts_with("..") {
        Some("must not start with '..'")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert!(create(&Secret::new("ns", "ok.name-1")).is_ok());
        let err = create(&Secret::new("ns", "Bad_Name")).expect_err("invalid");
        assert_eq!(err.code(), 422);
        assert!(
            err.to_string()
                .starts_with("Secret \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
            "{err}"
        );
        let err = create(&Secret::new("ns", "x").with_type(TLS)).expect_err("tls keys");
        assert_eq!(
            err.to_string(),
            "Secret \"x\" is invalid: [data[tls.crt]: Required value, data[tls.key]: Required value]"
        );
        assert!(create(&Secret::new("ns", "x").with_data("a b", b"".to_vec())).is_err());
    }

    #[test]
    fn type_is_immutable() {
        let old = Secret::new("ns", "x");
        let new = Secret::new("ns", "x").with_type("other");
        let err = update(&old, &new).expect_err("immutable");
        assert_eq!(
            err.to_string(),
            "Secret \"x\" is invalid: type: Invalid value: \"other\": field is immutable"
        );
    }
}
