//! Directories the server may not read or watch, with real permission errors: as root (CI),
//! each scenario runs in a child process as uid 65534 (see `fixture::without_root`).
//!
//! Alone in its test binary: it captures the logs of the whole process.

mod fixture;

use std::{
    fs,
    os::unix::fs::symlink,
    path::Path,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use fixture::{
    CredentialDir, Leaf, Logs, ca, chmod, leaf, rejection, serves, wait_for, without_root,
};
use sds_core::{Reader, publish};
use sds_source_fs::DirSource;

/// Longer than any test: only inotify can deliver a change in time.
const NO_RESCAN: Duration = Duration::from_secs(3600);

fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(Logs::capture)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn start(dir: &Path, rescan: Duration) -> Reader {
    let source = DirSource::new(dir)
        .debounce(fixture::DEBOUNCE)
        .rescan(rescan);
    let (reader, driver) = publish(source);
    tokio::spawn(driver);
    reader
}

/// Lets the reloads that follow the first read (new watches are checked by one more read)
/// pass, so that a change made now is seen only by what the test means to exercise.
async fn settle() {
    tokio::time::sleep(fixture::DEBOUNCE * 4).await;
}

/// Rewrites `DIR/<name>/tls.crt` and `tls.key` in place (same inodes), as `cp` would.
fn rewrite_in_place(dir: &Path, name: &str, leaf: &Leaf) {
    fs::write(dir.join(name).join("tls.crt"), &leaf.chain_pem).expect("rewrite tls.crt");
    fs::write(dir.join(name).join("tls.key"), &leaf.key_pem).expect("rewrite tls.key");
}

/// The log lines that mention `text`.
fn lines_with(text: &str) -> Vec<String> {
    logs()
        .lines()
        .into_iter()
        .filter(|line| line.contains(text))
        .collect()
}

/// The review's case: a non-root server, a `lost+found` it may not read and a credential
/// directory it may not read among 30 credentials. Every other credential stays live: 30
/// in-place rotations, one at a time, are all picked up from inotify alone; the unreadable
/// credential is rejected with its directory and the reason; `lost+found` is not a credential;
/// and the source never fails as a whole.
#[test]
fn an_unreadable_entry_blinds_no_other_credential() {
    without_root("an_unreadable_entry_blinds_no_other_credential", || {
        logs();
        let root = ca("Blind CA");
        let (v1, v2) = (leaf(&root, "v1.example.com"), leaf(&root, "v2.example.com"));
        let dir = CredentialDir::new();
        let names: Vec<String> = (0..30).map(|i| format!("c{i:02}")).collect();
        for name in &names {
            dir.write_tls(name, &v1);
        }
        fs::create_dir(dir.credential("lost+found")).expect("create lost+found");
        chmod(&dir.credential("lost+found"), 0o000);
        dir.write_tls("locked", &v1);
        chmod(&dir.credential("locked"), 0o000);

        runtime().block_on(async {
            let mut reader = start(dir.path(), NO_RESCAN);
            wait_for(&mut reader, "every credential at v1", |s| {
                names.iter().all(|n| serves(s, n, &v1)).then_some(())
            })
            .await;
            let snapshot = reader.current().expect("published");
            let reason = rejection(&snapshot, "locked").expect("`locked` is rejected");
            let locked = dir.credential("locked").display().to_string();
            assert!(reason.contains(&locked), "{reason}");
            assert!(reason.contains("Permission denied"), "{reason}");
            assert!(rejection(&snapshot, "lost+found").is_none());
            assert_eq!(snapshot.rejected().len(), 1);
            settle().await;

            // One rotation at a time, as they come in production: each must be seen by itself.
            for name in &names {
                rewrite_in_place(dir.path(), name, &v2);
                let what = format!("{name} at v2");
                wait_for(&mut reader, &what, |s| serves(s, name, &v2).then_some(())).await;
            }
        });

        let failed = lines_with("secret source failed");
        assert!(failed.is_empty(), "{failed:#?}");
        let unwatchable = lines_with("cannot watch a directory");
        assert_eq!(unwatchable.len(), 1, "{unwatchable:#?}");
        assert!(unwatchable[0].contains("WARN"), "{}", unwatchable[0]);
        assert!(unwatchable[0].contains("/locked"), "{}", unwatchable[0]);
        assert!(
            unwatchable[0].contains("Permission denied"),
            "{}",
            unwatchable[0]
        );
        // Restore the permissions, so that the temporary directory can be removed.
        chmod(&dir.credential("locked"), 0o700);
        chmod(&dir.credential("lost+found"), 0o700);
    });
}

/// A credential directory the server may read but not watch (`-wx`: no listing, so no inotify
/// watch), and a directory outside `DIR` that a credential's symlinks lead into, with a newline
/// in its name: each is reported once, at warn level, naming it (escaped) and why; the rescan
/// reads them, and the watched credential stays event-driven.
#[test]
fn an_unwatchable_directory_is_reported_once_and_read_by_the_rescan() {
    without_root(
        "an_unwatchable_directory_is_reported_once_and_read_by_the_rescan",
        || {
            logs();
            let root = ca("Rescan CA");
            let (v1, v2) = (leaf(&root, "v1.example.com"), leaf(&root, "v2.example.com"));
            let dir = CredentialDir::new();
            dir.write_tls("fast", &v1);
            dir.write_tls("slow", &v1);
            chmod(&dir.credential("slow"), 0o300);
            let outside = tempfile::tempdir().expect("a temporary directory");
            let store = outside.path().join("store\nFORGED log line");
            fs::create_dir(&store).expect("create the store");
            fs::write(store.join("tls.crt"), &v1.chain_pem).expect("write tls.crt");
            fs::write(store.join("tls.key"), &v1.key_pem).expect("write tls.key");
            chmod(&store, 0o300);
            fs::create_dir(dir.credential("linked")).expect("create DIR/linked");
            for file in ["tls.crt", "tls.key"] {
                symlink(store.join(file), dir.credential("linked").join(file)).expect("symlink");
            }

            runtime().block_on(async {
                let mut reader = start(dir.path(), Duration::from_millis(300));
                wait_for(&mut reader, "every credential at v1", |s| {
                    ["fast", "slow", "linked"]
                        .iter()
                        .all(|n| serves(s, n, &v1))
                        .then_some(())
                })
                .await;
                settle().await;
                // No event reports these: the rescan reads them.
                rewrite_in_place(dir.path(), "slow", &v2);
                fs::write(store.join("tls.crt"), &v2.chain_pem).expect("rewrite tls.crt");
                fs::write(store.join("tls.key"), &v2.key_pem).expect("rewrite tls.key");
                wait_for(&mut reader, "slow and linked at v2", |s| {
                    (serves(s, "slow", &v2) && serves(s, "linked", &v2)).then_some(())
                })
                .await;
                rewrite_in_place(dir.path(), "fast", &v2);
                wait_for(&mut reader, "every credential at v2", |s| {
                    ["fast", "slow", "linked"]
                        .iter()
                        .all(|n| serves(s, n, &v2))
                        .then_some(())
                })
                .await;
                // A few more rescans: nothing is reported twice.
                tokio::time::sleep(Duration::from_secs(1)).await;
            });

            let unwatchable = lines_with("cannot watch a directory");
            let slow = dir.credential("slow").display().to_string();
            let naming = |text: &str| unwatchable.iter().filter(|l| l.contains(text)).count();
            assert_eq!(naming(&slow), 1, "{unwatchable:#?}");
            assert_eq!(naming("store\\nFORGED log line"), 1, "{unwatchable:#?}");
            assert_eq!(unwatchable.len(), 2, "{unwatchable:#?}");
            assert!(
                unwatchable
                    .iter()
                    .all(|l| l.contains("WARN") && l.contains("Permission denied")),
                "{unwatchable:#?}"
            );
            // The newline in the directory's name did not start a line of its own.
            let forged = logs()
                .lines()
                .into_iter()
                .filter(|l| l.starts_with("FORGED"))
                .count();
            assert_eq!(forged, 0);
            chmod(&dir.credential("slow"), 0o700);
            chmod(&store, 0o700);
        },
    );
}

/// A file the server may not read rejects its credential, naming the file; nothing else.
#[test]
fn an_unreadable_key_rejects_only_its_credential() {
    without_root("an_unreadable_key_rejects_only_its_credential", || {
        logs();
        let root = ca("Key CA");
        let v1 = leaf(&root, "v1.example.com");
        let dir = CredentialDir::new();
        dir.write_tls("open", &v1);
        dir.write_tls("closed", &v1);
        let key = dir.credential("closed").join("tls.key");
        chmod(&key, 0o000);
        let now = sds_core::UnixTime::since_unix_epoch(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970"),
        );
        let update = sds_source_fs::scan(dir.path(), now).expect("DIR is readable");
        let snapshot = sds_core::Snapshot::build(None, update);
        assert!(serves(&snapshot, "open", &v1));
        let reason = rejection(&snapshot, "closed").expect("rejected");
        assert!(reason.contains(&key.display().to_string()), "{reason}");
        assert!(reason.contains("Permission denied"), "{reason}");
    });
}
