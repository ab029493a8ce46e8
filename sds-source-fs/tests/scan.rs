//! The one-shot read of a directory: layout, precedence, and what gets rejected or ignored.

mod fixture;

use std::{fs, io, os::unix::fs::symlink};

use fixture::{CredentialDir, bundle, ca, certified, is_pair, leaf, rejection};
use sds_core::{MAX_INPUT_LEN, Snapshot, UnixTime};
use sds_source_fs::{Error, scan};

fn read(dir: &CredentialDir) -> Snapshot {
    let update = scan(dir.path(), UnixTime::now()).expect("DIR is readable");
    Snapshot::build(None, update)
}

fn names(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.iter().map(|(name, _)| name.as_str()).collect()
}

#[test]
fn both_key_layouts_and_generic_precedence() {
    let ca = ca("Layout CA");
    let (tls, generic, kube, istio) = (
        leaf(&ca, "tls.example.com"),
        leaf(&ca, "generic.example.com"),
        leaf(&ca, "kube.example.com"),
        leaf(&ca, "istio.example.com"),
    );
    let dir = CredentialDir::new();
    dir.write_tls("tls", &tls);
    dir.write("generic", "cert", &generic.chain_pem);
    dir.write("generic", "key", &generic.key_pem);
    // Both layouts: the generic pair wins.
    dir.write_tls("both", &kube);
    dir.write("both", "cert", &istio.chain_pem);
    dir.write("both", "key", &istio.key_pem);
    // A lone generic half does not spoil a complete tls.* pair.
    dir.write_tls("half-generic", &kube);
    dir.write("half-generic", "cert", &istio.chain_pem);

    let snapshot = read(&dir);
    assert_eq!(names(&snapshot), ["both", "generic", "half-generic", "tls"]);
    assert_eq!(snapshot.rejected().len(), 0);
    let is = |name, leaf| is_pair(certified(&snapshot, name).expect(name), leaf);
    assert!(is("tls", &tls));
    assert!(is("generic", &generic));
    assert!(is("both", &istio));
    assert!(is("half-generic", &kube));
}

#[test]
fn a_chain_without_its_key_is_rejected() {
    let ca = ca("Lonely CA");
    let leaf = leaf(&ca, "lonely.example.com");
    let dir = CredentialDir::new();
    dir.write("no-key", "tls.crt", &leaf.chain_pem);
    dir.write("no-cert", "tls.key", &leaf.key_pem);
    dir.write("mixed", "cert", &leaf.chain_pem);
    dir.write("mixed", "tls.key", &leaf.key_pem);

    let snapshot = read(&dir);
    assert!(snapshot.is_empty());
    let reason = |name| rejection(&snapshot, name).expect("rejected");
    let no_key = reason("no-key");
    assert!(
        no_key.contains("found") && no_key.contains("no-key/tls.crt"),
        "{no_key}"
    );
    assert!(no_key.contains("no tls.key"), "{no_key}");
    let no_cert = reason("no-cert");
    assert!(
        no_cert.contains("no-cert/tls.key") && no_cert.contains("no tls.crt"),
        "{no_cert}"
    );
    let mixed = reason("mixed");
    assert!(
        mixed.contains("mixed/cert") && mixed.contains("no key"),
        "{mixed}"
    );
}

#[test]
fn ca_files_serve_name_cacert_with_crls_and_precedence() {
    let (root, other) = (ca("Root CA"), ca("Other CA"));
    let leaf = leaf(&root, "web.example.com");
    let revoked = fixture::leaf(&root, "revoked.example.com");
    let crl = root.crl().revoke(&revoked).pem();
    let other_crl = other.crl().pem();
    let dir = CredentialDir::new();
    // tls.* pair plus ca.crt and ca.crl.
    dir.write_tls("web", &leaf);
    dir.write("web", "ca.crt", root.cert_pem());
    dir.write("web", "ca.crl", &crl);
    // CA only, both names: `cacert` and `crl` win.
    dir.write("roots", "cacert", root.cert_pem());
    dir.write("roots", "ca.crt", other.cert_pem());
    dir.write("roots", "crl", &crl);
    dir.write("roots", "ca.crl", &other_crl);
    // CA only, no CRL.
    dir.write("plain-roots", "ca.crt", other.cert_pem());
    // A CRL without a CA.
    dir.write("crl-only", "ca.crl", &crl);

    let snapshot = read(&dir);
    assert_eq!(
        names(&snapshot),
        [
            "plain-roots",
            "plain-roots-cacert",
            "roots",
            "roots-cacert",
            "web",
            "web-cacert"
        ]
    );
    let web_ca = bundle(&snapshot, "web-cacert").expect("web-cacert");
    assert_eq!(web_ca.anchors().len(), 1);
    assert_eq!(web_ca.anchors()[0].as_ref(), root.cert_der());
    assert_eq!(web_ca.crls().len(), 1);
    let roots = bundle(&snapshot, "roots-cacert").expect("roots-cacert");
    assert_eq!(roots.anchors()[0].as_ref(), root.cert_der());
    assert_eq!(
        roots.crls()[0].as_ref(),
        web_ca.crls()[0].as_ref(),
        "crl wins"
    );
    // A CA-only directory is also a validation context under its own name: the same secret.
    assert!(std::sync::Arc::ptr_eq(
        snapshot.get("roots").expect("roots"),
        snapshot.get("roots-cacert").expect("roots-cacert"),
    ));
    let plain = bundle(&snapshot, "plain-roots-cacert").expect("plain-roots-cacert");
    assert_eq!(plain.anchors()[0].as_ref(), other.cert_der());
    assert!(plain.crls().is_empty());
    let crl_only = rejection(&snapshot, "crl-only-cacert").expect("crl-only-cacert rejected");
    assert!(crl_only.contains("crl-only/ca.crl"), "{crl_only}");
    assert!(crl_only.contains("cacert or ca.crt"), "{crl_only}");
    // A directory with only CA files is served under both names, so both are rejected.
    assert!(rejection(&snapshot, "crl-only").is_some());
    assert_eq!(snapshot.rejected().len(), 2);
}

#[test]
fn entries_that_are_not_credentials_are_skipped() {
    let ca = ca("Skip CA");
    let leaf = leaf(&ca, "skip.example.com");
    let dir = CredentialDir::new();
    dir.write_tls("ok", &leaf);
    dir.write_tls(".hidden", &leaf);
    dir.write_tls("bad name", &leaf);
    dir.write("unrelated", "README", "not a credential");
    fs::create_dir(dir.credential("empty")).expect("mkdir");
    fs::write(dir.credential("plain-file"), "x").expect("write");
    symlink("nowhere", dir.credential("dangling")).expect("symlink");

    let snapshot = read(&dir);
    assert_eq!(names(&snapshot), ["ok"]);
    assert_eq!(snapshot.rejected().len(), 0);
}

#[test]
fn a_symlinked_credential_directory_is_read() {
    let ca = ca("Link CA");
    let leaf = leaf(&ca, "link.example.com");
    let dir = CredentialDir::new();
    dir.write_tls(".store", &leaf);
    symlink(".store", dir.credential("linked")).expect("symlink");

    let snapshot = read(&dir);
    assert!(is_pair(
        certified(&snapshot, "linked").expect("linked"),
        &leaf
    ));
}

#[test]
fn garbage_and_unreadable_files_reject_their_credential_naming_the_file() {
    let ca = ca("Garbage CA");
    let leaf = leaf(&ca, "garbage.example.com");
    let dir = CredentialDir::new();
    dir.write("garbage", "tls.crt", &leaf.chain_pem);
    dir.write("garbage", "tls.key", "this is not a key\n");
    // A symlink loop cannot be read, even by root.
    dir.write("loop", "tls.crt", &leaf.chain_pem);
    symlink("tls.key", dir.credential("loop").join("tls.key")).expect("symlink");
    // A directory where a file should be.
    dir.write("not-a-file", "tls.key", &leaf.key_pem);
    fs::create_dir(dir.credential("not-a-file").join("tls.crt")).expect("mkdir");
    // The CA is broken, the pair is fine.
    dir.write_tls("bad-ca", &leaf);
    dir.write("bad-ca", "ca.crt", "garbage");

    let snapshot = read(&dir);
    assert_eq!(names(&snapshot), ["bad-ca"]);
    let reason = |name| rejection(&snapshot, name).expect("rejected");
    let garbage = reason("garbage");
    assert!(garbage.contains("garbage/tls.key"), "{garbage}");
    let looped = reason("loop");
    assert!(looped.contains("loop/tls.key"), "{looped}");
    let looped_io = io::Error::from_raw_os_error(40).to_string(); // ELOOP
    assert!(
        looped.contains(&looped_io),
        "{looped} should say {looped_io}"
    );
    let not_a_file = reason("not-a-file");
    assert!(not_a_file.contains("not-a-file/tls.crt"), "{not_a_file}");
    assert!(not_a_file.contains("not a regular file"), "{not_a_file}");
    let bad_ca = reason("bad-ca-cacert");
    assert!(bad_ca.contains("bad-ca/ca.crt"), "{bad_ca}");
}

#[test]
fn oversized_files_are_rejected_without_reading_them() {
    let ca = ca("Large CA");
    let leaf = leaf(&ca, "large.example.com");
    let dir = CredentialDir::new();
    dir.write("large", "tls.key", &leaf.key_pem);
    let mut chain = leaf.chain_pem.clone().into_bytes();
    chain.resize(MAX_INPUT_LEN + 1, b'\n');
    dir.write("large", "tls.crt", &chain);

    let snapshot = read(&dir);
    let reason = rejection(&snapshot, "large").expect("rejected");
    assert!(reason.contains("large/tls.crt"), "{reason}");
    assert!(
        reason.contains(&(MAX_INPUT_LEN + 1).to_string()),
        "{reason}"
    );
}

#[test]
fn a_derived_cacert_name_is_not_served_twice() {
    let (root, other) = (ca("First CA"), ca("Second CA"));
    let leaf = leaf(&other, "clash.example.com");
    let dir = CredentialDir::new();
    dir.write("clash", "ca.crt", root.cert_pem());
    dir.write_tls("clash-cacert", &leaf);

    let snapshot = read(&dir);
    assert_eq!(names(&snapshot), ["clash", "clash-cacert"]);
    assert!(
        bundle(&snapshot, "clash-cacert").is_some(),
        "the first directory wins"
    );
}

#[test]
fn a_missing_or_non_directory_dir_is_an_error() {
    let dir = CredentialDir::new();
    let missing = dir.path().join("missing");
    match scan(&missing, UnixTime::now()) {
        Err(Error::ReadDir { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected ReadDir, got {other:?}"),
    }
    let file = dir.path().join("file");
    fs::write(&file, "x").expect("write");
    let error = scan(&file, UnixTime::now()).expect_err("a file is not a directory");
    assert!(matches!(error, Error::ReadDir { .. }), "{error:?}");
    assert!(error.to_string().contains(&file.display().to_string()));
    assert!(
        !error
            .to_string()
            .contains(&io::Error::from_raw_os_error(20).to_string())
    );
}
