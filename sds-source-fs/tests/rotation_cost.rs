//! What one rotation costs a running `DirSource` with 2,000 credentials: the process's CPU time
//! (source and publisher) from rewriting one credential's files in place until the reader
//! serves the new certificate and the process is idle again; then what a rescan of the unchanged
//! directory costs. Ignored by default; run it in release:
//!
//! ```text
//! cargo test --release -p sds-source-fs --test rotation_cost -- --ignored --nocapture
//! ```

mod fixture;

use std::{fs, time::Duration};

use fixture::{CredentialDir, TIMEOUT, ca, leaf, serves, wait_for};
use sds_core::publish;
use sds_source_fs::DirSource;
use tokio::time::timeout;

const CREDENTIALS: usize = 2_000;
const ROTATIONS: usize = 40;
const RESCANS: u32 = 10;

/// CPU time of this process so far (all threads, those that ended included), in seconds.
/// `/proc` counts it in clock ticks of 1/100 s.
fn cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The command name, in parentheses, may hold spaces: count fields after it.
    let after = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks = |i: usize| fields[i].parse::<u64>().expect("a number of ticks");
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
async fn cpu_per_rotation_with_2000_credentials() {
    let root = ca("Cost CA");
    let versions = [leaf(&root, "v1.example.com"), leaf(&root, "v2.example.com")];
    let dir = CredentialDir::new();
    for i in 0..CREDENTIALS {
        let name = format!("c{i:04}");
        dir.write_tls(&name, &versions[0]);
        dir.write(&name, "ca.crt", root.cert_pem());
    }
    let (mut reader, driver) =
        publish(DirSource::new(dir.path()).debounce(Duration::from_millis(50)));
    tokio::spawn(driver);
    let started = cpu_seconds();
    timeout(TIMEOUT * 6, reader.ready())
        .await
        .expect("the first read ends in time")
        .expect("the publisher runs");
    println!(
        "first read of {CREDENTIALS} credentials: {:.3} s of CPU",
        cpu_seconds() - started
    );
    // Let the files written above age, so that they are not read again as "just written".
    tokio::time::sleep(Duration::from_secs(3)).await;

    let rotated = dir.credential("c0000");
    let mut spent = 0.0;
    for rotation in 1..=ROTATIONS {
        let leaf = &versions[rotation % 2];
        let before = cpu_seconds();
        // In place, as `cp` or an editor would: the same inode, truncated and rewritten.
        fs::write(rotated.join("tls.crt"), &leaf.chain_pem).expect("rewrite tls.crt");
        fs::write(rotated.join("tls.key"), &leaf.key_pem).expect("rewrite tls.key");
        wait_for(&mut reader, "the rotated credential", |s| {
            (serves(s, "c0000", leaf) && s.rejected().len() == 0).then_some(())
        })
        .await;
        // Counted too: any reload the rotation causes after the new certificate is served.
        tokio::time::sleep(Duration::from_millis(300)).await;
        spent += cpu_seconds() - before;
    }
    println!(
        "CPU per rotation of 1 of {CREDENTIALS} credentials: {:.1} ms ({ROTATIONS} rotations)",
        spent * 1000.0 / ROTATIONS as f64
    );
    drop(reader);

    // The safety-net rescan of an unchanged directory: every credential looked at, none read.
    let rescan = Duration::from_secs(1);
    let (mut reader, driver) = publish(DirSource::new(dir.path()).rescan(rescan));
    tokio::spawn(driver);
    timeout(TIMEOUT * 6, reader.ready())
        .await
        .expect("the first read ends in time")
        .expect("the publisher runs");
    tokio::time::sleep(rescan).await;
    let before = cpu_seconds();
    tokio::time::sleep(rescan * RESCANS).await;
    println!(
        "CPU per rescan of {CREDENTIALS} unchanged credentials: {:.1} ms ({RESCANS} rescans)",
        (cpu_seconds() - before) * 1000.0 / f64::from(RESCANS)
    );
}
