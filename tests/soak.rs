//! The soak's short version (`examples/soak.rs`; the long one is `scripts/soak`): the real
//! server under rotations every half second and a fault every 2 s, each fault at least once,
//! with 500 streams that behave as Envoy's. No update may be lost, no bad or older secret
//! pushed; the soak's exit status says so and its report shows the figures.
//!
//! - `serve-dir`: a restart, the directory unreadable, a half pair, a garbage key, another
//!   pair's key, an expired certificate.
//! - `serve-k8s` (feature `k8s`): the same on Secrets of the test API server, with the API
//!   server down and its history compacted instead of the unreadable directory.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::process::Command;

use support::example::binary;

/// Runs the soak on `source` for `duration`; checks the report and that the server's log
/// says each thing in `said` (the faults did something).
fn soak(source: &str, server: &str, duration: &str, said: &[&str]) {
    let out = tempfile::tempdir().expect("tempdir");
    let server = binary(server);
    let output = Command::new(binary("soak"))
        .args(["--source", source, "--n", "500", "--credentials", "5"])
        .args([
            "--duration",
            duration,
            "--rotate-every",
            "500ms",
            "--fault-every",
            "2s",
        ])
        .arg("--server")
        .arg(&server)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("the soak runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let log = std::fs::read_to_string(out.path().join("server.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the soak failed: {}\n{report}\n--- the server's log, last lines ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    eprintln!("{report}");
    for (figure, value) in [
        ("**updates lost**", "| 0 |"),
        ("**bad secrets pushed**", "| 0 |"),
        ("regressions", "| 0 |"),
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(figure))
            .unwrap_or_else(|| panic!("no {figure} in the report:\n{report}"));
        assert!(line.ends_with(value), "{line}");
    }
    // Every fault came round at least once, and did what it should have: the server said so.
    let faults = report
        .lines()
        .find(|l| l.starts_with("| faults |"))
        .expect("the faults row");
    assert!(!faults.contains("×0"), "{faults}");
    for said in said {
        assert!(log.contains(said), "the server never said {said:?}");
    }
}

#[test]
fn serve_dir_loses_no_update_and_pushes_no_bad_secret_under_rotations_and_faults() {
    soak(
        "dir",
        "serve-dir",
        "30s",
        &[
            "cannot read the credential directory",
            "private key does not match the leaf certificate",
            "private key cannot be loaded",
            "expired",
        ],
    );
}

#[cfg(feature = "k8s")]
#[test]
fn serve_k8s_loses_no_update_and_pushes_no_bad_secret_under_rotations_and_faults() {
    soak(
        "k8s",
        "serve-k8s",
        "45s",
        &[
            "private key does not match the leaf certificate",
            "private key cannot be loaded",
            "expired",
        ],
    );
}
