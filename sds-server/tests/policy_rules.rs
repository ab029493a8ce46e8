//! The rules-file policy end to end: files on disk, loaded, decided on, edited while the
//! driver runs (in place, renamed over, a ConfigMap `..data` swap, removed and back).

use std::{
    fs,
    future::Future,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use futures_util::FutureExt as _;
use sds_core::SecretName;
use sds_server::{
    Error,
    policy::{Decision, Peer, Policy, RulesFile, RulesProblem, UnixCredentials},
};
use sds_test_util::{kubelet::KubeletVolume, logs::Captured};
use tempfile::TempDir;

/// How long a test waits for the driver to see a change.
const PATIENCE: Duration = Duration::from_secs(10);

const ONE_RULE: &str = "rules:\n  - peers: [uid:1000]\n    secrets: [a-*]\n";

const TWO_RULES: &str = "\
rules:
  - peers: [uid:1000]
    secrets: [a-*]
  - peers: [\"gid:13*\"]
    secrets: [\"*\"]
";

/// The process-wide log capture, installed once: tests tell their lines apart by their
/// temporary paths.
fn logs() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("the only subscriber of this test binary");
        captured
    })
}

/// The lines logged about `path`.
fn logged_about(path: &Path) -> Vec<String> {
    let path = path.to_string_lossy();
    logs()
        .text()
        .lines()
        .filter(|line| line.contains(&*path))
        .map(str::to_owned)
        .collect()
}

/// Waits until `condition` holds, checking every 20 ms.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `future`, at most [`PATIENCE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn unix(uid: u32, gid: u32) -> Peer {
    Peer::unix(UnixCredentials {
        uid,
        gid,
        pid: None,
    })
}

async fn decide(policy: &RulesFile, peer: &Peer, name: &str) -> Decision {
    let name = SecretName::new(name).expect("a valid name");
    policy.decide(peer, &name).await
}

/// A rules file in a directory of its own.
fn rules_file(content: &str) -> (TempDir, PathBuf) {
    logs();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("rules.yaml");
    fs::write(&path, content).expect("write the rules file");
    (dir, path)
}

/// Replaces the file at `path` the way editors save: a new file renamed over it.
fn replace(path: &Path, content: &str) {
    let temporary = path.with_file_name(".rules.yaml.swp");
    fs::write(&temporary, content).expect("write the new version");
    fs::rename(&temporary, path).expect("rename it over the file");
}

/// Loads `path` and runs its driver.
async fn load_and_drive(path: &Path) -> RulesFile {
    let (policy, driver) = RulesFile::load(path).await.expect("a valid rules file");
    tokio::spawn(driver);
    policy
}

/// Replaces the rules with `TWO_RULES` by `edit`, and checks the new rules hold once
/// `changed()` resolved.
async fn reloads_after(policy: &RulesFile, path: &Path, edit: impl FnOnce()) {
    let gid_peer = unix(1, 1337);
    assert!(!decide(policy, &gid_peer, "b").await.is_allowed());
    let changed = policy.changed();
    edit();
    within("changed() after the edit", changed).await;
    assert!(decide(policy, &gid_peer, "b").await.is_allowed());
    assert!(decide(policy, &unix(1000, 1), "a-x").await.is_allowed());
    assert_eq!(policy.rule_count(), 2);
    let path = path.to_string_lossy().into_owned();
    eventually("the reload is logged", || {
        logs().text().lines().any(|line| {
            line.contains("INFO")
                && line.contains("policy reloaded: 2 rules")
                && line.contains(&path)
        })
    })
    .await;
}

#[tokio::test]
async fn yaml_and_json_load_and_decide() {
    let (_dir, path) = rules_file(TWO_RULES);
    let (policy, _driver) = RulesFile::load(&path).await.expect("valid YAML");
    assert_eq!(policy.path(), path);
    assert!(decide(&policy, &unix(1000, 1), "a-cred").await.is_allowed());
    assert!(
        decide(&policy, &unix(7, 1399), "anything")
            .await
            .is_allowed()
    );
    assert_eq!(
        decide(&policy, &unix(7, 8), "a-cred").await,
        Decision::deny("no rule grants \"a-cred\" to uid:7 gid:8")
    );
    let debug = format!("{policy:?}");
    assert!(
        debug.contains("rules: 2") && !debug.contains("1000"),
        "{debug}"
    );

    let json =
        r#"{"rules": [{"peers": ["spiffe://td/ns/a/sa/*"], "secrets": ["kubernetes://a/*"]}]}"#;
    let (_dir, path) = rules_file(json);
    let (policy, _driver) = RulesFile::load(&path).await.expect("valid JSON");
    assert_eq!(policy.rule_count(), 1);
    assert!(
        !decide(&policy, &unix(0, 0), "kubernetes://a/x")
            .await
            .is_allowed()
    );
}

#[tokio::test]
async fn a_bad_file_is_refused_at_load_with_path_line_and_problem() {
    let (_dir, path) = rules_file(
        "rules:\n  - peers: [uid:1]\n    secrets: [a]\n  - peers: [user:1000]\n    secrets: [a]\n",
    );
    let Err(Error::Rules(error)) = RulesFile::load(&path).await else {
        panic!("refused");
    };
    assert_eq!(error.path(), path);
    assert_eq!(
        (error.rule(), error.line(), error.column()),
        (Some(2), Some(4), Some(13))
    );
    assert!(matches!(error.problem(), RulesProblem::PeerPattern { .. }));
    assert_eq!(
        error.to_string(),
        format!(
            "policy rules file {}, rule 2 (line 4, column 13): peer pattern `user:1000` is not \
             uid:N, gid:N, dns:NAME or a URI",
            path.display()
        )
    );

    let (_dir, path) =
        rules_file("rules:\n  - peers: [uid:1]\n    secrets: [a]\n    extra: true\n");
    let Err(Error::Rules(error)) = RulesFile::load(&path).await else {
        panic!("refused");
    };
    assert_eq!((error.rule(), error.line()), (Some(1), Some(4)));
    assert!(
        error
            .to_string()
            .ends_with("unknown field `extra`, expected one of peers, secrets")
    );

    let missing = path.with_file_name("missing.yaml");
    let Err(Error::Rules(error)) = RulesFile::load(&missing).await else {
        panic!("refused");
    };
    assert!(matches!(error.problem(), RulesProblem::Unreadable { .. }));
    let source = std::error::Error::source(&*error).expect("the I/O error");
    assert!(source.to_string().contains("No such file"), "{source}");

    let large = "#".repeat(usize::try_from(RulesFile::MAX_BYTES).expect("small") + 1);
    let (_dir, path) = rules_file(&large);
    let Err(Error::Rules(error)) = RulesFile::load(&path).await else {
        panic!("refused");
    };
    assert!(
        error
            .to_string()
            .ends_with("it is 1048577 bytes, more than the limit of 1048576")
    );
}

#[tokio::test]
async fn an_edit_in_place_is_reloaded() {
    let (_dir, path) = rules_file(ONE_RULE);
    let policy = load_and_drive(&path).await;
    reloads_after(&policy, &path, || {
        fs::write(&path, TWO_RULES).expect("rewrite")
    })
    .await;
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_rules() {
    let (_dir, path) = rules_file(ONE_RULE);
    let policy = load_and_drive(&path).await;
    let mut changed = policy.changed();
    // Atomically, so that the driver never reads half a file.
    replace(
        &path,
        "rules:\n  - peers: [uid:1000]\n    secrets: [a-*]\n    secret: [b]\n",
    );
    eventually("the broken edit is logged", || {
        logged_about(&path).iter().any(|line| {
            line.contains("WARN")
                && line.contains("keeping the last good rules")
                && line.contains("rule 1 (line 4, column 5): unknown field `secret`")
        })
    })
    .await;
    assert!((&mut changed).now_or_never().is_none(), "nothing changed");
    assert!(decide(&policy, &unix(1000, 1), "a-x").await.is_allowed());
    assert_eq!(policy.rule_count(), 1);

    replace(&path, TWO_RULES);
    within("changed() after the fix", changed).await;
    assert_eq!(policy.rule_count(), 2);
    let warnings = logged_about(&path)
        .iter()
        .filter(|l| l.contains("WARN"))
        .count();
    assert_eq!(warnings, 1, "{:#?}", logged_about(&path));
}

#[tokio::test]
async fn a_rename_over_the_file_is_reloaded() {
    let (_dir, path) = rules_file(ONE_RULE);
    let policy = load_and_drive(&path).await;
    reloads_after(&policy, &path, || replace(&path, TWO_RULES)).await;
}

#[tokio::test]
async fn a_configmap_volume_swap_is_reloaded() {
    logs();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut volume = KubeletVolume::create(dir.path().join("policy"));
    volume.write(&[("rules.yaml", ONE_RULE.as_bytes())]);
    let path = dir.path().join("policy").join("rules.yaml");
    let policy = load_and_drive(&path).await;
    reloads_after(&policy, &path, || {
        volume.write(&[("rules.yaml", TWO_RULES.as_bytes())]);
    })
    .await;
}

#[tokio::test]
async fn a_removed_file_keeps_the_rules_until_it_is_back() {
    let (_dir, path) = rules_file(ONE_RULE);
    let policy = load_and_drive(&path).await;
    let changed = policy.changed();
    fs::remove_file(&path).expect("remove");
    eventually("the removal is logged", || {
        logged_about(&path)
            .iter()
            .any(|line| line.contains("WARN") && line.contains("cannot read the policy rules file"))
    })
    .await;
    assert!(decide(&policy, &unix(1000, 1), "a-x").await.is_allowed());
    fs::write(&path, TWO_RULES).expect("put it back");
    within("changed() once it is back", changed).await;
    assert_eq!(policy.rule_count(), 2);
}

#[tokio::test]
async fn the_driver_ends_with_the_last_policy() {
    let (_dir, path) = rules_file(ONE_RULE);
    let (policy, driver) = RulesFile::load(&path).await.expect("valid");
    let driver = tokio::spawn(driver);
    let clone = policy.clone();
    drop(policy);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!driver.is_finished(), "a clone is left");
    drop(clone);
    within("the driver ends", driver)
        .await
        .expect("the driver ran");
}

#[tokio::test(start_paused = true)]
async fn a_change_no_event_reports_is_read_within_30_seconds() {
    // The file is a symlink into another directory, which is not watched: only the periodic
    // read sees an edit there.
    let (_dir, path) = rules_file(ONE_RULE);
    let elsewhere = tempfile::tempdir().expect("a temporary directory");
    let target = elsewhere.path().join("rules.yaml");
    fs::rename(&path, &target).expect("move the file away");
    std::os::unix::fs::symlink(&target, &path).expect("link to it");
    let policy = load_and_drive(&path).await;
    // The driver's first read is done once the (paused) clock can move.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let changed = policy.changed();
    fs::write(&target, TWO_RULES).expect("edit the target in place");
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(31), changed)
        .await
        .expect("read again within 30 s");
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(policy.rule_count(), 2);
}
