//! The soak's short version (`examples/soak.rs`; the long one is `scripts/soak`): the real
//! `serve-dir` under rotations every half second and a fault every 2 s (a restart, the
//! directory unreadable, a half pair, a garbage key, another pair's key, an expired
//! certificate, each at least once), with 500 streams that behave as Envoy's. No update may be
//! lost, no bad or older secret pushed; the soak's exit status says so and its report shows
//! the figures.

#[allow(dead_code)]
mod support {
    pub(crate) mod example;
}

use std::process::Command;

use support::example::binary;

#[test]
fn no_update_lost_and_no_bad_secret_pushed_under_rotations_and_faults() {
    let out = tempfile::tempdir().expect("tempdir");
    let server = binary("serve-dir");
    let output = Command::new(binary("soak"))
        .args(["--n", "500", "--credentials", "5", "--duration", "30s"])
        .args(["--rotate-every", "500ms", "--fault-every", "2s"])
        .arg("--server")
        .arg(&server)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("the soak runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let log = std::fs::read_to_string(out.path().join("serve-dir.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the soak failed: {}\n{report}\n--- serve-dir's log, last lines ---\n{}",
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
    for said in [
        "cannot read the credential directory",
        "private key does not match the leaf certificate",
        "private key cannot be loaded",
        "expired",
    ] {
        assert!(log.contains(said), "the server never said {said:?}");
    }
}
