//! The soak's short versions (`examples/soak.rs`; the long one is `scripts/soak`): the real
//! server under rotations every half second with 500 streams that behave as Envoy's. No
//! update may be lost, no bad or older secret pushed; the soak's exit status says so and its
//! report shows the figures.
//!
//! - `serve-dir` with a fault every 2 s, each at least once: a restart, the directory
//!   unreadable, a half pair, a garbage key, another pair's key, an expired certificate.
//! - `serve-k8s` (feature `k8s`): the same on Secrets of the test API server, with the API
//!   server down and its history compacted instead of the unreadable directory.
//! - `serve-dir` without faults, while one client exceeds each per-client limit in turn
//!   (`--abuse`): the limits hold (the abuser is refused) and the others lose nothing.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::process::Command;

use support::example::binary;

/// Runs the soak on `source` for `duration` with `extra` arguments; checks the report and
/// that the server's log says each thing in `said`. Returns the report.
fn soak(source: &str, server: &str, duration: &str, extra: &[&str], said: &[&str]) -> String {
    let out = tempfile::tempdir().expect("tempdir");
    let server = binary(server);
    let output = Command::new(binary("soak"))
        .args(["--source", source, "--n", "500", "--credentials", "5"])
        .args(["--duration", duration, "--rotate-every", "500ms"])
        .args(extra)
        .arg("--server")
        .arg(&server)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("the soak runs");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = std::fs::read_to_string(out.path().join("server.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the soak failed: {}\n{report}\n--- the server's log, last lines ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    eprintln!("{report}");
    let row = |figure: &str| {
        report
            .lines()
            .find(|l| l.contains(figure))
            .unwrap_or_else(|| panic!("no {figure} in the report:\n{report}"))
    };
    for figure in ["**updates lost**", "**bad secrets pushed**", "regressions"] {
        assert!(row(figure).ends_with("| 0 |"), "{}", row(figure));
    }
    let late = row("| time until every stream");
    assert!(late.ends_with(", 0 not within 30 s) |"), "{late}");
    for said in said {
        assert!(log.contains(said), "the server never said {said:?}");
    }
    report
}

/// Every fault came round at least once.
fn every_fault_ran(report: &str) {
    let faults = report
        .lines()
        .find(|l| l.starts_with("| faults |"))
        .expect("the faults row");
    assert!(!faults.contains("×0"), "{faults}");
}

#[test]
fn serve_dir_loses_no_update_and_pushes_no_bad_secret_under_rotations_and_faults() {
    let report = soak(
        "dir",
        "serve-dir",
        "30s",
        &["--fault-every", "2s"],
        // The faults did something: the server said so.
        &[
            "cannot read the credential directory",
            "private key does not match the leaf certificate",
            "private key cannot be loaded",
            "expired",
        ],
    );
    every_fault_ran(&report);
}

#[cfg(feature = "k8s")]
#[test]
fn serve_k8s_loses_no_update_and_pushes_no_bad_secret_under_rotations_and_faults() {
    let report = soak(
        "k8s",
        "serve-k8s",
        "45s",
        &["--fault-every", "2s"],
        &[
            "private key does not match the leaf certificate",
            "private key cannot be loaded",
            "expired",
        ],
    );
    every_fault_ran(&report);
}

#[test]
fn limits_hold_under_load_and_the_others_lose_nothing() {
    let report = soak(
        "dir",
        "serve-dir",
        "40s",
        &["--fault-every", "0s", "--abuse"],
        &[],
    );
    let row = |step: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("| abuser: {step}")))
            .unwrap_or_else(|| panic!("no abuser row {step:?} in:\n{report}"))
            .to_owned()
    };
    // Every limit was exceeded, and held.
    assert!(
        row("1 streams").contains("refused (REFUSED_STREAM)"),
        "{report}"
    );
    assert!(row("2 names").contains("RESOURCE_EXHAUSTED"), "{report}");
    assert!(row("3 bytes").contains("RESOURCE_EXHAUSTED"), "{report}");
    assert!(row("4 NACKs").contains("sent"), "{report}");
    let silent = row("5 silent");
    assert!(
        silent.contains("closed by the server") && !silent.contains("still open"),
        "{silent}"
    );
}
