//! A running `DirSource`: real directories, real inotify, the real publisher.

mod fixture;

use std::{fs, pin::pin, sync::Arc, time::Duration};

use fixture::{
    CredentialDir, DEBOUNCE, KubeletVolume, TIMEOUT, bundle, ca, describe, is_pair, leaf,
    rejection, serves, wait_for,
};
use futures_util::{Stream, StreamExt as _};
use sds_core::{Reader, SecretName, SecretSource, Snapshot, Update, publish};
use sds_source_fs::{DirSource, Error};
use tokio::time::timeout;

fn source(dir: &CredentialDir) -> DirSource {
    DirSource::new(dir.path()).debounce(DEBOUNCE)
}

fn start(dir: &CredentialDir) -> Reader {
    let (reader, driver) = publish(source(dir));
    tokio::spawn(driver);
    reader
}

async fn next<S: Stream<Item = Result<Update, Error>> + Unpin>(
    stream: &mut S,
) -> Result<Snapshot, Error> {
    let item = timeout(TIMEOUT, stream.next())
        .await
        .expect("the stream yields within the timeout")
        .expect("the stream goes on");
    item.map(|update| Snapshot::build(None, update))
}

#[test]
fn the_stream_is_send() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let stream = DirSource::new("/nonexistent").into_stream();
    assert_send(&stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_initial_state() {
    let root = ca("Initial CA");
    let (a, b) = (leaf(&root, "a.example.com"), leaf(&root, "b.example.com"));
    let dir = CredentialDir::new();
    dir.write_tls("a", &a);
    dir.write("b", "cert", &b.chain_pem);
    dir.write("b", "key", &b.key_pem);
    dir.write("b", "cacert", root.cert_pem());
    dir.write("roots", "ca.crt", root.cert_pem());

    let mut reader = start(&dir);
    let snapshot = timeout(TIMEOUT, reader.ready())
        .await
        .expect("ready in time")
        .expect("publisher running");
    let names: Vec<_> = snapshot.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "b-cacert", "roots", "roots-cacert"]);
    assert!(serves(&snapshot, "a", &a) && serves(&snapshot, "b", &b));
    assert!(bundle(&snapshot, "roots-cacert").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_atomic_swap_delivers_the_new_certificate() {
    let root = ca("Kubelet CA");
    let (v1, v2) = (leaf(&root, "v1.example.com"), leaf(&root, "v2.example.com"));
    let dir = CredentialDir::new();
    let mut volume = KubeletVolume::create(dir.credential("httpbin"));
    let payload = |leaf: &fixture::Leaf| {
        vec![
            ("tls.crt", leaf.chain_pem.clone().into_bytes()),
            ("tls.key", leaf.key_pem.clone().into_bytes()),
            ("ca.crt", root.cert_pem().as_bytes().to_vec()),
        ]
    };
    let write = |volume: &mut KubeletVolume, leaf| {
        let payload = payload(leaf);
        let files: Vec<_> = payload.iter().map(|(f, b)| (*f, &b[..])).collect();
        volume.write(&files);
    };
    write(&mut volume, &v1);

    let mut reader = start(&dir);
    wait_for(&mut reader, "v1", |s| {
        serves(s, "httpbin", &v1).then_some(())
    })
    .await;
    let name = SecretName::new("httpbin").expect("valid");
    let mut watch = reader.watch(&name);
    let ca_before = reader
        .current()
        .and_then(|s| s.get("httpbin-cacert").cloned());

    write(&mut volume, &v2);
    let snapshot = wait_for(&mut reader, "v2 after the swap", |s| {
        serves(s, "httpbin", &v2).then(|| s.clone())
    })
    .await;
    assert_eq!(snapshot.rejected().len(), 0, "{}", describe(&snapshot));
    // The unchanged CA is the same secret; the credential changed once, to v2.
    let ca_after = reader
        .current()
        .and_then(|s| s.get("httpbin-cacert").cloned());
    assert!(ca_before.is_some() && ca_after.is_some());
    assert_eq!(
        ca_before.map(|s| s.version()),
        ca_after.map(|s| s.version())
    );
    // The per-name watch follows (it is updated just after the snapshot).
    let watched_v2 = async {
        loop {
            if let Some(secret) = watch.current() {
                match &*secret {
                    sds_core::Secret::TlsCertificate(c) if is_pair(c, &v2) => return,
                    sds_core::Secret::TlsCertificate(c) => assert!(is_pair(c, &v1)),
                    other => panic!("unexpected {}", other.kind()),
                }
            }
            watch.changed().await.expect("the publisher is running");
        }
    };
    timeout(TIMEOUT, watched_v2)
        .await
        .expect("the watch sees v2");

    // Old timestamped directories are gone, hidden entries were never credentials.
    let hidden: Vec<_> = fs::read_dir(dir.credential("httpbin"))
        .expect("read the volume")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".."))
        .collect();
    assert_eq!(
        hidden.len(),
        2,
        "..data and one timestamped directory: {hidden:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_pair_keeps_the_last_good_version() {
    let root = ca("Rotation CA");
    let (v1, v2) = (leaf(&root, "v1.example.com"), leaf(&root, "v2.example.com"));
    let dir = CredentialDir::new();
    dir.write_tls("web", &v1);

    let mut reader = start(&dir);
    wait_for(&mut reader, "v1", |s| serves(s, "web", &v1).then_some(())).await;

    // Every version of `web` ever published is a matching pair: v1 or v2, never a mix.
    let name = SecretName::new("web").expect("valid");
    let mut watch = reader.watch(&name);
    let (v1_der, v2_der) = (v1.cert_der.clone(), v2.cert_der.clone());
    let observer = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            if let Some(secret) = watch.current() {
                match &*secret {
                    sds_core::Secret::TlsCertificate(c) => seen.push(c.chain()[0].to_vec()),
                    other => panic!("unexpected {}", other.kind()),
                }
            }
            if seen.last() == Some(&v2_der) || watch.changed().await.is_err() {
                return seen;
            }
        }
    });

    // The new chain lands first: its key is still v1's, so `web` is rejected and v1 stays.
    dir.write("web", "tls.crt", &v2.chain_pem);
    let reason = wait_for(&mut reader, "web rejected", |s| rejection(s, "web")).await;
    assert!(reason.contains("web/tls.key"), "{reason}");
    assert!(reason.contains("does not match"), "{reason}");
    let snapshot = reader.current().expect("published");
    assert!(
        serves(&snapshot, "web", &v1),
        "still v1: {}",
        describe(&snapshot)
    );

    // A brand-new credential that is half written is not served at all.
    dir.write("fresh", "tls.crt", &v2.chain_pem);
    wait_for(&mut reader, "fresh rejected", |s| rejection(s, "fresh")).await;
    dir.write("fresh", "tls.key", &v1.key_pem);
    let reason = wait_for(&mut reader, "fresh mismatched", |s| {
        rejection(s, "fresh").filter(|r| r.contains("does not match"))
    })
    .await;
    assert!(reason.contains("fresh/tls.key"), "{reason}");
    assert!(reader.current().expect("published").get("fresh").is_none());

    // The keys land in later debounce windows: the next reload heals both.
    dir.write("web", "tls.key", &v2.key_pem);
    dir.write("fresh", "tls.key", &v2.key_pem);
    wait_for(&mut reader, "web is v2 and fresh is served", |s| {
        (serves(s, "web", &v2) && serves(s, "fresh", &v2) && s.rejected().len() == 0).then_some(())
    })
    .await;

    let seen = timeout(TIMEOUT, observer)
        .await
        .expect("the observer saw v2")
        .expect("the observer did not panic");
    assert_eq!(
        seen,
        [v1_der, v2.cert_der.clone()],
        "v1 until v2, nothing in between"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_key_is_rejected_and_the_last_good_version_kept() {
    let root = ca("Garbage CA");
    let v1 = leaf(&root, "v1.example.com");
    let dir = CredentialDir::new();
    dir.write_tls("api", &v1);

    let mut reader = start(&dir);
    wait_for(&mut reader, "v1", |s| serves(s, "api", &v1).then_some(())).await;
    dir.write(
        "api",
        "tls.key",
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    );
    let reason = wait_for(&mut reader, "api rejected", |s| rejection(s, "api")).await;
    let key_path = dir.credential("api").join("tls.key");
    assert!(reason.contains(&key_path.display().to_string()), "{reason}");
    assert!(serves(&reader.current().expect("published"), "api", &v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_and_go() {
    let root = ca("Churn CA");
    let (a, b) = (leaf(&root, "a.example.com"), leaf(&root, "b.example.com"));
    let dir = CredentialDir::new();
    dir.write_tls("a", &a);

    let mut reader = start(&dir);
    wait_for(&mut reader, "a", |s| serves(s, "a", &a).then_some(())).await;

    dir.write_tls("b", &b);
    dir.write("b", "ca.crt", root.cert_pem());
    wait_for(&mut reader, "a, b and b-cacert", |s| {
        (serves(s, "a", &a) && serves(s, "b", &b) && s.get("b-cacert").is_some()).then_some(())
    })
    .await;

    dir.remove("a");
    let snapshot = wait_for(&mut reader, "a removed", |s| {
        s.get("a").is_none().then(|| s.clone())
    })
    .await;
    let names: Vec<_> = snapshot.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["b", "b-cacert"]);

    // Removing the CA file removes `b-cacert` only.
    fs::remove_file(dir.credential("b").join("ca.crt")).expect("remove ca.crt");
    wait_for(&mut reader, "b-cacert removed", |s| {
        (s.get("b-cacert").is_none() && serves(s, "b", &b)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_dir_is_an_ambient_error_until_it_comes_back() {
    let root = ca("Recreate CA");
    let (a, b) = (leaf(&root, "a.example.com"), leaf(&root, "b.example.com"));
    let dir = CredentialDir::new();
    dir.write_tls("a", &a);

    let mut stream = pin!(source(&dir).into_stream());
    let first = next(&mut stream).await.expect("initial state");
    assert!(serves(&first, "a", &a));

    fs::remove_dir_all(dir.path()).expect("remove DIR");
    loop {
        match next(&mut stream).await {
            Err(Error::ReadDir { path, source }) => {
                assert_eq!(path, dir.path());
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
            // A reload may catch the removal half done.
            Ok(_) => continue,
        }
    }

    fs::create_dir(dir.path()).expect("recreate DIR");
    dir.write_tls("b", &b);
    loop {
        match next(&mut stream).await {
            Ok(snapshot) if serves(&snapshot, "b", &b) => {
                assert!(snapshot.get("a").is_none());
                break;
            }
            Ok(_) | Err(Error::ReadDir { .. }) => continue,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    // And the recreated directory is watched again.
    dir.write_tls("a", &a);
    loop {
        let snapshot = next(&mut stream).await.expect("DIR is back");
        if serves(&snapshot, "a", &a) && serves(&snapshot, "b", &b) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dir_missing_at_start_is_read_when_it_appears() {
    let root = ca("Late CA");
    let a = leaf(&root, "a.example.com");
    let dir = CredentialDir::new();
    fs::remove_dir(dir.path()).expect("remove DIR");

    let mut reader = start(&dir);
    fs::create_dir(dir.path()).expect("create DIR");
    dir.write_tls("a", &a);
    wait_for(&mut reader, "a", |s| serves(s, "a", &a).then_some(())).await;
}

/// A `DIR` whose parent is missing too is an ambient error, once, then waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_parent_is_an_ambient_error_then_waited_for() {
    let root = ca("Parent CA");
    let a = leaf(&root, "a.example.com");
    let temp = CredentialDir::new();
    let missing = temp.path().join("no-parent").join("credentials");
    let mut stream = pin!(DirSource::new(&missing).debounce(DEBOUNCE).into_stream());
    match next(&mut stream).await {
        Err(Error::ReadDir { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a ReadDir error, got {other:?}"),
    }
    fs::create_dir_all(missing.join("a")).expect("create the parent, DIR and DIR/a");
    let dir = missing.join("a");
    fs::write(dir.join("tls.crt"), &a.chain_pem).expect("write tls.crt");
    fs::write(dir.join("tls.key"), &a.key_pem).expect("write tls.key");
    loop {
        match next(&mut stream).await {
            Ok(snapshot) if serves(&snapshot, "a", &a) => break,
            Ok(_) => continue,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_coalesce_and_a_quiet_dir_is_not_reloaded() {
    let root = ca("Burst CA");
    let leaves: Vec<_> = (0..20)
        .map(|i| leaf(&root, &format!("n{i}.example.com")))
        .collect();
    let dir = CredentialDir::new();
    let mut stream = pin!(DirSource::new(dir.path()).into_stream()); // default debounce
    assert!(next(&mut stream).await.expect("initial state").is_empty());

    // Reading the directory must not wake the watcher: no reload while nothing changes.
    let quiet = Duration::from_millis(700);
    assert!(
        timeout(quiet, stream.next()).await.is_err(),
        "reloaded with no change"
    );

    for (i, leaf) in leaves.iter().enumerate() {
        dir.write_tls(&format!("n{i}"), leaf);
    }
    let mut updates = 0;
    loop {
        let snapshot = next(&mut stream).await.expect("DIR is readable");
        updates += 1;
        if snapshot.len() == leaves.len() {
            break;
        }
    }
    while timeout(quiet, stream.next()).await.is_ok() {
        updates += 1;
    }
    assert!(updates <= 4, "{updates} reloads for one burst of 40 writes");
}

/// A certificate issued a moment "in the future" (clock skew between the issuer and this
/// host) is rejected, and served by itself once its notBefore passes: no file event is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_yet_valid_certificate_is_read_again_when_it_becomes_valid() {
    use std::time::SystemTime;

    use sds_test_util::certs::{KeyKind, Validity};

    let root = ca("Skewed CA");
    let now = SystemTime::now();
    let soon = root.issue(
        &["soon.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::between(
            now + Duration::from_secs(2),
            now + Duration::from_secs(86_400),
        ),
    );
    let dir = CredentialDir::new();
    dir.write_tls("soon", &soon);
    let mut reader = start(&dir);
    let first = timeout(TIMEOUT, reader.ready())
        .await
        .expect("ready in time")
        .expect("publisher running");
    assert!(first.get("soon").is_none(), "not valid yet: not served");
    assert_eq!(first.rejected().count(), 1);
    let mut watch = reader.watch(&SecretName::new("soon").expect("name"));
    timeout(TIMEOUT, watch.changed())
        .await
        .expect("served once valid, without any file change")
        .expect("publisher running");
    assert!(watch.current().is_some());
}

/// Longer than any test: only inotify can deliver a change in time.
const NO_RESCAN: Duration = Duration::from_secs(3600);

/// Lets the reloads that follow a read that added watches pass, so that a change made now is
/// seen only by what the test means to exercise.
async fn settle() {
    tokio::time::sleep(DEBOUNCE * 4).await;
}

/// `rm -rf parent; mkdir -p parent/credentials`: the new directories are watched again, from
/// inotify alone (no rescan in the test's time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_recreated_parent_is_watched_again() {
    let root = ca("Parent CA");
    let (a, b, b2) = (
        leaf(&root, "a.example.com"),
        leaf(&root, "b.example.com"),
        leaf(&root, "b2.example.com"),
    );
    let temp = tempfile::tempdir().expect("a temporary directory");
    let parent = temp.path().join("parent");
    let dir = parent.join("credentials");
    let write = |name: &str, leaf: &fixture::Leaf| {
        fs::create_dir_all(dir.join(name)).expect("create DIR/<name>");
        fs::write(dir.join(name).join("tls.crt"), &leaf.chain_pem).expect("write tls.crt");
        fs::write(dir.join(name).join("tls.key"), &leaf.key_pem).expect("write tls.key");
    };
    write("a", &a);
    let source = DirSource::new(&dir).debounce(DEBOUNCE).rescan(NO_RESCAN);
    let (mut reader, driver) = publish(source);
    tokio::spawn(driver);
    wait_for(&mut reader, "a", |s| serves(s, "a", &a).then_some(())).await;
    settle().await;

    fs::remove_dir_all(&parent).expect("rm -rf parent");
    fs::create_dir_all(&dir).expect("mkdir -p parent/credentials");
    write("b", &b);
    wait_for(&mut reader, "b in the new DIR, a gone", |s| {
        (serves(s, "b", &b) && s.get("a").is_none()).then_some(())
    })
    .await;
    settle().await;
    // The new DIR and the new credential directory are watched: an in-place rewrite is seen.
    write("b", &b2);
    wait_for(&mut reader, "b rewritten", |s| {
        serves(s, "b", &b2).then_some(())
    })
    .await;
    write("c", &a);
    wait_for(&mut reader, "c", |s| serves(s, "c", &a).then_some(())).await;
}

/// A change that no watch reports (a symlink swapped in a directory outside `DIR` that is not
/// watched, only the directory it led to is) is read by the periodic rescan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rescan_reads_a_change_no_watch_reports() {
    use std::os::unix::fs::symlink;

    let root = ca("Rescan CA");
    let (v1, v2) = (leaf(&root, "v1.example.com"), leaf(&root, "v2.example.com"));
    let dir = CredentialDir::new();
    let store = tempfile::tempdir().expect("a temporary directory");
    for (version, leaf) in [("v1", &v1), ("v2", &v2)] {
        let path = store.path().join(version);
        fs::create_dir(&path).expect("create a version directory");
        fs::write(path.join("tls.crt"), &leaf.chain_pem).expect("write tls.crt");
        fs::write(path.join("tls.key"), &leaf.key_pem).expect("write tls.key");
    }
    symlink("v1", store.path().join("current")).expect("current -> v1");
    fs::create_dir(dir.credential("web")).expect("create DIR/web");
    for file in ["tls.crt", "tls.key"] {
        let target = store.path().join("current").join(file);
        symlink(target, dir.credential("web").join(file))
            .expect("DIR/web/<file> -> current/<file>");
    }

    let source = DirSource::new(dir.path())
        .debounce(DEBOUNCE)
        .rescan(Duration::from_millis(300));
    let (mut reader, driver) = publish(source);
    tokio::spawn(driver);
    wait_for(&mut reader, "v1", |s| serves(s, "web", &v1).then_some(())).await;
    settle().await;
    symlink("v2", store.path().join("current.tmp")).expect("current.tmp -> v2");
    fs::rename(
        store.path().join("current.tmp"),
        store.path().join("current"),
    )
    .expect("rename current.tmp over current");
    wait_for(&mut reader, "v2 from the rescan", |s| {
        serves(s, "web", &v2).then_some(())
    })
    .await;
}

/// A reload reads only what changed: a credential whose files did not change, or were
/// rewritten with the same bytes, keeps the very secret it had (not parsed again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_credential_is_not_parsed_again() {
    let root = ca("Reuse CA");
    let (a, b1, b2) = (
        leaf(&root, "a.example.com"),
        leaf(&root, "b1.example.com"),
        leaf(&root, "b2.example.com"),
    );
    let dir = CredentialDir::new();
    dir.write_tls("a", &a);
    dir.write("a", "ca.crt", root.cert_pem());
    dir.write_tls("b", &b1);
    dir.write_tls("c", &a);
    let mut stream = pin!(source(&dir).rescan(NO_RESCAN).into_stream());
    let first = next(&mut stream).await.expect("initial state");
    assert!(serves(&first, "a", &a) && serves(&first, "b", &b1));

    // `c` gets the same bytes again (new stamps, same content), `b` a new certificate.
    fs::write(dir.credential("c").join("tls.crt"), &a.chain_pem).expect("rewrite tls.crt");
    dir.write_tls("b", &b2);
    let snapshot = loop {
        let snapshot = next(&mut stream).await.expect("DIR is readable");
        if serves(&snapshot, "b", &b2) {
            break snapshot;
        }
    };
    let same = |name: &str| {
        let (before, after) = (first.get(name), snapshot.get(name));
        before.zip(after).is_some_and(|(x, y)| Arc::ptr_eq(x, y))
    };
    assert!(same("a") && same("a-cacert"), "a was parsed again");
    assert!(
        same("c"),
        "c was parsed again though its bytes are the same"
    );
    assert!(!same("b"));
}
