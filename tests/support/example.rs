//! The real example binaries as child processes: built once per test run in the test's own
//! profile, features and target directory (`cargo build --example NAME`), run with their
//! stderr in a file, killed by PID when dropped.

use parking_lot::Mutex;
use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// How long an example may take to start, and any one wait for a log line.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The example `name`, built once per test run (in this test's profile, features and target
/// directory, so nothing is built twice).
pub(crate) fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built.lock();
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    // target/<profile>/deps/<test>-HASH
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile in {}", exe.display()),
    };
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--example", name, "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir);
    if cfg!(feature = "k8s") {
        // The features this test was built with: nothing is built twice.
        build.arg("--features=k8s");
    }
    // What cargo sets for a running test describes this package, not the build: a build
    // script that watches one of them (ring's watches CARGO_MANIFEST_DIR) would run again.
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy();
        if var.starts_with("CARGO_PKG_") || TEST_ENV.contains(&&*var) {
            build.env_remove(&*var);
        }
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example {name}: {status}");
    let path = profile_dir.join("examples").join(name);
    built.push((name.to_owned(), path.clone()));
    path
}

/// What cargo sets, besides `CARGO_PKG_*`, for a running test.
const TEST_ENV: [&str; 8] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// An example running as a child process, its stderr in a file; killed when dropped.
pub(crate) struct Example {
    pub(crate) child: Child,
    name: String,
    log: PathBuf,
}

impl Example {
    /// Starts the example `name` with `args` and the environment `env`, logging at the
    /// default INFO level into `log`.
    pub(crate) fn start(name: &str, log: PathBuf, args: &[&str], env: &[(&str, &Path)]) -> Example {
        let mut command = Command::new(binary(name));
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create the log"));
        for (var, value) in env {
            command.env(var, value);
        }
        let child = command.spawn().expect("the example starts");
        Example {
            child,
            name: name.to_owned(),
            log,
        }
    }

    /// Runs the example `name` with `args` to its end (at most [`WAIT`]): its exit code
    /// and stderr.
    pub(crate) fn run(name: &str, log: PathBuf, args: &[&str]) -> (Option<i32>, String) {
        let mut example = Example::start(name, log, args, &[]);
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = example.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{name} {args:?} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), example.log())
    }

    /// Everything it logged so far.
    pub(crate) fn log(&self) -> String {
        let mut log = String::new();
        fs::File::open(&self.log)
            .and_then(|mut f| f.read_to_string(&mut log))
            .expect("read the log");
        log
    }

    /// Waits for a log line containing `needle`; returns it.
    pub(crate) fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.find_line(needle, deadline) {
                return line;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Example::wait_for_line`] without blocking the runtime (which may serve what the
    /// child talks to, as an in-process API server).
    pub(crate) async fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.find_line(needle, deadline) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first log line containing `needle`, if logged yet; panics with the log if the
    /// child exited first or `deadline` passed.
    fn find_line(&mut self, needle: &str, deadline: Instant) -> Option<String> {
        let file = fs::File::open(&self.log).expect("open the log");
        if let Some(line) = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains(needle))
        {
            return Some(line);
        }
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!(
                "{} exited ({status}) before logging {needle:?}:\n{}",
                self.name,
                self.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log of {} within {WAIT:?}:\n{}",
            self.name,
            self.log()
        );
        None
    }

    /// The address in the first log line containing `what` (`... address=HOST:PORT ...`).
    pub(crate) fn address(&mut self, what: &str) -> SocketAddr {
        address_in(&self.wait_for_line(what))
    }

    /// [`Example::address`] without blocking the runtime.
    pub(crate) async fn address_async(&mut self, what: &str) -> SocketAddr {
        address_in(&self.line(what).await)
    }
}

fn address_in(line: &str) -> SocketAddr {
    let (_, rest) = line.split_once("address=").expect("an address");
    rest.split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
