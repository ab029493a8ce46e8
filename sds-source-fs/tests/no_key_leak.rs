//! A private key file that lost its line breaks (written from a YAML value or an environment
//! variable) is refused with a reason that names the file and the problem, and no rejection
//! (message, `Debug`, source chain) holds a 12-character window of the key.
//!
//! What the publisher logs of a rejection is checked in `sds-core/tests/no_key_leak.rs`.

use std::{error::Error as _, fs, path::Path};

use sds_core::UnixTime;
use sds_source_fs::scan;
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    leak::KeyBytes,
};

fn write(dir: &Path, name: &str, chain: &str, key: &str) {
    let credential = dir.join(name);
    fs::create_dir(&credential).expect("creates a credential directory");
    fs::write(credential.join("tls.crt"), chain).expect("writes tls.crt");
    fs::write(credential.join("tls.key"), key).expect("writes tls.key");
}

#[test]
fn one_line_key_files_are_refused_without_quoting_them() {
    let ca = Ca::new("example.com");
    let leaves: Vec<Leaf> = [
        KeyKind::EcP256Sec1,
        KeyKind::Ed25519,
        KeyKind::RsaPkcs8(2048),
    ]
    .into_iter()
    .map(|kind| ca.issue(&["leak.example.com"], kind, Validity::current()))
    .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (i, leaf) in leaves.iter().enumerate() {
        let folded = leaf.key_pem.trim_end().replace('\n', " ");
        let stripped = leaf.key_pem.replace('\n', "");
        write(dir.path(), &format!("folded-{i}"), &leaf.chain_pem, &folded);
        write(
            dir.path(),
            &format!("stripped-{i}"),
            &leaf.chain_pem,
            &stripped,
        );
        let pasted = format!("{}{folded}", leaf.chain_pem);
        write(dir.path(), &format!("pasted-{i}"), &pasted, &leaf.key_pem);
    }

    let update = scan(dir.path(), UnixTime::now()).expect("the directory is read");
    assert_eq!(update.rejected().len(), 3 * leaves.len());
    let keys = KeyBytes::of(leaves.iter().map(|l| l.key_pem.as_str()));
    for (name, error) in update.rejected() {
        let mut texts = vec![error.to_string(), format!("{error:?}")];
        let mut next = error.source();
        while let Some(source) = next {
            texts.push(source.to_string());
            texts.push(format!("{source:?}"));
            next = source.source();
        }
        for text in &texts {
            keys.assert_absent(&format!("{name}: the rejection"), text);
        }
        let file = if name.as_str().starts_with("pasted-") {
            "tls.crt"
        } else {
            "tls.key"
        };
        assert!(texts[0].contains(file), "{name}: {}", texts[0]);
        assert!(
            texts
                .iter()
                .any(|t| t.contains("its line breaks were lost")),
            "{name}: {texts:#?}"
        );
    }
}
