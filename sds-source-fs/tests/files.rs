//! A running `FileSource`: explicit files in real directories, real inotify, the real
//! publisher. Rotation in place and by rename, a bad file that keeps the last good version,
//! files and directories that appear later, a kubelet volume.

mod fixture;

use std::{fs, path::Path, pin::pin, time::Duration};

use fixture::{
    DEBOUNCE, KubeletVolume, TIMEOUT, bundle, ca, describe, leaf, rejection, serves, wait_for,
};
use futures_util::{Stream, StreamExt as _};
use sds_core::{Reader, SecretName, SecretSource, Snapshot, Update, publish};
use sds_source_fs::{Error, FileSource};
use tokio::time::timeout;

fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("a valid name")
}

/// The SDS server's own credential and client CA, as `serve-dir --tls-*` names them.
fn source(dir: &Path) -> FileSource {
    FileSource::new()
        .debounce(DEBOUNCE)
        .credential(name("server"), dir.join("tls.crt"), dir.join("tls.key"))
        .bundle(name("client-ca"), dir.join("ca.crt"))
}

/// The next update of `stream`, as a snapshot.
async fn next<S: Stream<Item = Result<Update, Error>> + Unpin>(stream: &mut S) -> Snapshot {
    let update = timeout(TIMEOUT, stream.next())
        .await
        .expect("an update in time")
        .expect("the stream goes on")
        .expect("never an error");
    Snapshot::build(None, update)
}

fn start(source: FileSource) -> Reader {
    let (reader, driver) = publish(source);
    tokio::spawn(driver);
    reader
}

/// Writes `path` as careful tools do: a temporary file renamed over it.
fn rename_over(path: &Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).expect("write a temporary file");
    fs::rename(&tmp, path).expect("rename it into place");
}

#[test]
fn the_stream_is_send() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let stream = FileSource::new().into_stream();
    assert_send(&stream);
}

#[test]
fn a_name_given_twice_keeps_the_last_files() {
    let source = FileSource::new()
        .credential(name("a"), "a.crt", "a.key")
        .bundle(name("ca"), "ca.crt")
        .bundle(name("a"), "other.crt");
    let files: Vec<_> = source.files().map(|p| p.display().to_string()).collect();
    assert_eq!(files, ["ca.crt", "other.crt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_files_and_follows_their_rotation() {
    let (server_ca, client_ca) = (ca("Server CA"), ca("Client CA"));
    let (v1, v2, v3) = (
        leaf(&server_ca, "v1.sds.example"),
        leaf(&server_ca, "v2.sds.example"),
        leaf(&server_ca, "v3.sds.example"),
    );
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path();
    fs::write(dir.join("tls.crt"), &v1.chain_pem).expect("write");
    fs::write(dir.join("tls.key"), &v1.key_pem).expect("write");
    fs::write(dir.join("ca.crt"), client_ca.cert_pem()).expect("write");

    let mut reader = start(source(dir));
    let snapshot = timeout(TIMEOUT, reader.ready())
        .await
        .expect("ready in time")
        .expect("publisher running");
    let names: Vec<_> = snapshot.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["client-ca", "server"]);
    assert!(serves(&snapshot, "server", &v1));
    let ca_version = snapshot.get("client-ca").map(|s| s.version());
    assert!(bundle(&snapshot, "client-ca").is_some());

    // In place, the key last (a reload in between sees a mismatched pair, held back).
    fs::write(dir.join("tls.crt"), &v2.chain_pem).expect("write");
    fs::write(dir.join("tls.key"), &v2.key_pem).expect("write");
    wait_for(&mut reader, "v2 written in place", |s| {
        (serves(s, "server", &v2) && s.rejected().len() == 0).then_some(())
    })
    .await;

    // Renamed over the old files, as deploy tools and editors do.
    rename_over(&dir.join("tls.key"), &v3.key_pem);
    rename_over(&dir.join("tls.crt"), &v3.chain_pem);
    let snapshot = wait_for(&mut reader, "v3 renamed into place", |s| {
        (serves(s, "server", &v3) && s.rejected().len() == 0).then(|| s.clone())
    })
    .await;
    // The CA did not change: the same version.
    assert_eq!(snapshot.get("client-ca").map(|s| s.version()), ca_version);

    // A new client CA.
    let next_ca = ca("Next client CA");
    rename_over(&dir.join("ca.crt"), next_ca.cert_pem());
    wait_for(&mut reader, "the new client CA", |s| {
        let anchors = bundle(s, "client-ca")?.anchors();
        (anchors.first().map(|a| a.as_ref()) == Some(next_ca.cert_der())).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_rejected_naming_it_and_the_last_good_version_kept() {
    let (server_ca, client_ca) = (ca("Server CA"), ca("Client CA"));
    let (v1, v2) = (
        leaf(&server_ca, "v1.sds.example"),
        leaf(&server_ca, "v2.sds.example"),
    );
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path();
    fs::write(dir.join("tls.crt"), &v1.chain_pem).expect("write");
    fs::write(dir.join("tls.key"), &v1.key_pem).expect("write");
    fs::write(dir.join("ca.crt"), client_ca.cert_pem()).expect("write");
    let mut reader = start(source(dir));
    wait_for(&mut reader, "v1", |s| {
        serves(s, "server", &v1).then_some(())
    })
    .await;

    // Garbage in the key: rejected with the key's path, v1 stays.
    rename_over(
        &dir.join("tls.key"),
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    );
    let reason = wait_for(&mut reader, "server rejected", |s| rejection(s, "server")).await;
    let key = dir.join("tls.key").display().to_string();
    assert!(reason.contains(&key), "{reason}");
    let snapshot = reader.current().expect("published");
    assert!(serves(&snapshot, "server", &v1), "{}", describe(&snapshot));

    // The client CA removed: rejected with its path, the last good one stays.
    fs::remove_file(dir.join("ca.crt")).expect("remove ca.crt");
    let reason = wait_for(&mut reader, "client-ca rejected", |s| {
        rejection(s, "client-ca")
    })
    .await;
    let ca_path = dir.join("ca.crt").display().to_string();
    assert!(reason.contains(&ca_path), "{reason}");
    let snapshot = reader.current().expect("published");
    assert!(
        bundle(&snapshot, "client-ca").is_some(),
        "{}",
        describe(&snapshot)
    );

    // Fixed: served again, nothing rejected.
    fs::write(dir.join("ca.crt"), client_ca.cert_pem()).expect("write");
    rename_over(&dir.join("tls.crt"), &v2.chain_pem);
    rename_over(&dir.join("tls.key"), &v2.key_pem);
    wait_for(&mut reader, "v2 and the CA, nothing rejected", |s| {
        (serves(s, "server", &v2) && s.rejected().len() == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_directories_that_appear_later_are_served() {
    let server_ca = ca("Server CA");
    let v1 = leaf(&server_ca, "v1.sds.example");
    let temp = tempfile::tempdir().expect("a temporary directory");
    // Neither the files nor their directory exist yet.
    let dir = temp.path().join("later").join("tls");
    let mut reader = start(source(&dir));
    let snapshot = timeout(TIMEOUT, reader.ready())
        .await
        .expect("ready in time")
        .expect("publisher running");
    assert!(snapshot.is_empty(), "{}", describe(&snapshot));
    let reason = rejection(&snapshot, "server").expect("server rejected");
    assert!(
        reason.contains(&dir.join("tls.crt").display().to_string()),
        "{reason}"
    );

    fs::create_dir_all(&dir).expect("create the directory");
    fs::write(dir.join("tls.crt"), &v1.chain_pem).expect("write");
    fs::write(dir.join("tls.key"), &v1.key_pem).expect("write");
    wait_for(&mut reader, "the credential once written", |s| {
        serves(s, "server", &v1).then_some(())
    })
    .await;
    let snapshot = reader.current().expect("published");
    assert!(
        rejection(&snapshot, "client-ca").is_some(),
        "{}",
        describe(&snapshot)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_volume_swap_is_followed() {
    let (server_ca, client_ca) = (ca("Server CA"), ca("Client CA"));
    let (v1, v2) = (
        leaf(&server_ca, "v1.sds.example"),
        leaf(&server_ca, "v2.sds.example"),
    );
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path().join("sds-tls");
    let mut volume = KubeletVolume::create(dir.clone());
    let payload = |leaf: &fixture::Leaf| {
        vec![
            ("tls.crt", leaf.chain_pem.clone().into_bytes()),
            ("tls.key", leaf.key_pem.clone().into_bytes()),
            ("ca.crt", client_ca.cert_pem().as_bytes().to_vec()),
        ]
    };
    let write = |volume: &mut KubeletVolume, leaf| {
        let payload = payload(leaf);
        let files: Vec<_> = payload.iter().map(|(f, b)| (*f, &b[..])).collect();
        volume.write(&files);
    };
    write(&mut volume, &v1);

    let mut reader = start(source(&dir));
    wait_for(&mut reader, "v1", |s| {
        serves(s, "server", &v1).then_some(())
    })
    .await;
    write(&mut volume, &v2);
    wait_for(&mut reader, "v2 after the swap", |s| {
        (serves(s, "server", &v2) && s.rejected().len() == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_change_is_yielded() {
    let server_ca = ca("Server CA");
    let (v1, v2) = (
        leaf(&server_ca, "v1.sds.example"),
        leaf(&server_ca, "v2.sds.example"),
    );
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path();
    fs::write(dir.join("tls.crt"), &v1.chain_pem).expect("write");
    fs::write(dir.join("tls.key"), &v1.key_pem).expect("write");
    let source = FileSource::new()
        .debounce(DEBOUNCE)
        .rescan(Duration::from_millis(200))
        .credential(name("server"), dir.join("tls.crt"), dir.join("tls.key"));
    let mut stream = pin!(source.into_stream());
    assert!(serves(&next(&mut stream).await, "server", &v1));

    // The same content written again, and several rescans: nothing is yielded.
    fs::write(dir.join("tls.crt"), &v1.chain_pem).expect("write");
    let quiet = timeout(Duration::from_millis(800), stream.next()).await;
    assert!(quiet.is_err(), "an unchanged read yielded an update");

    // New content: one update.
    rename_over(&dir.join("tls.key"), &v2.key_pem);
    rename_over(&dir.join("tls.crt"), &v2.chain_pem);
    let mut snapshot = next(&mut stream).await;
    while !serves(&snapshot, "server", &v2) {
        // A reload between the two renames saw a mismatched pair.
        assert!(
            rejection(&snapshot, "server").is_some(),
            "{}",
            describe(&snapshot)
        );
        snapshot = next(&mut stream).await;
    }
}
