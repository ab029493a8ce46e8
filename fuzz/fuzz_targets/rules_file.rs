//! sds-server's policy rules file (`sds-server/src/policy/rules.rs`): YAML (or JSON) content
//! to compiled rules, and their decisions.
//!
//! Input: the file's content. Besides, when its first two lines are a glob and a secret name
//! (no whitespace, a name up to 1024 bytes), a file granting that glob to every Unix peer is
//! made and its decision compared with a reference matcher.
//!
//! Properties: no panic, and an error's message names the file; a file that parses has at
//! least one rule and decides for any peer and name; a glob matches exactly what the
//! reference (a quadratic table of which prefixes match) says it matches.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds_core::SecretName;
use sds_server::{
    __bench::ParsedRules,
    policy::{CertificateIdentity, Peer, UnixCredentials},
};

fuzz_target!(|data: &[u8]| {
    match ParsedRules::parse(data) {
        Ok(rules) => {
            assert!(!rules.is_empty(), "a file without rules was accepted");
            for peer in peers() {
                for name in [
                    "httpbin-credential",
                    "kubernetes://a/b-cacert",
                    "sds://x",
                    "*",
                ] {
                    let name = SecretName::new(name).expect("a valid name");
                    let _ = rules.decide(&peer, &name);
                }
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("rules.yaml"), "{message}");
        }
    }
    glob(data);
});

fn peers() -> [Peer; 3] {
    let unix = |uid, gid| {
        Peer::unix(UnixCredentials {
            uid,
            gid,
            pid: None,
        })
    };
    let certificate = Peer::tcp("127.0.0.1:1".parse().expect("an address")).with_certificate(
        CertificateIdentity {
            uris: vec!["spiffe://cluster.local/ns/a/sa/gw".to_owned()],
            dns_names: vec!["gateway.example.com".to_owned()],
        },
    );
    [unix(0, 0), unix(1337, 1337), certificate]
}

/// The glob property, for inputs whose first two lines are a pattern and a name.
fn glob(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let (Some(pattern), Some(name)) = (lines.next(), lines.next()) else {
        return;
    };
    if pattern.is_empty() || !pattern.bytes().all(|b| b.is_ascii_graphic()) {
        return;
    }
    let Ok(name) = SecretName::new(name) else {
        return;
    };
    let file = format!(
        r#"{{"rules": [{{"peers": ["uid:*"], "secrets": [{}]}}]}}"#,
        json_string(pattern)
    );
    let rules = ParsedRules::parse(file.as_bytes()).expect("a valid rules file");
    let peer = Peer::unix(UnixCredentials {
        uid: 0,
        gid: 0,
        pid: None,
    });
    assert_eq!(
        rules.decide(&peer, &name).is_allowed(),
        reference_match(pattern.as_bytes(), name.as_str().as_bytes()),
        "glob {pattern:?} on {name:?}"
    );
}

/// `text` as a JSON string (it is printable ASCII).
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `*` any run, `?` one character, anything else itself: which prefixes of the pattern match
/// which prefixes of the text, row by row (ASCII only, as patterns and names are).
fn reference_match(pattern: &[u8], text: &[u8]) -> bool {
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        if p == b'*' {
            let mut any = false;
            for j in 0..=text.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=text.len() {
                next[j] = row[j - 1] && (p == b'?' || p == text[j - 1]);
            }
        }
        row = next;
    }
    row[text.len()]
}
