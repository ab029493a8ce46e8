//! The server under test: `serve-dir` in a child process on 127.0.0.1, its log (stderr, at
//! the default INFO level) in a file, its memory and CPU read from `/proc`.

use std::{
    fs,
    io::{self, BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sds_test_util::certs::{Ca, KeyKind, Validity};

/// The credential every well-behaved request asks for.
pub(crate) const CREDENTIAL: &str = "abuse-credential";

/// How long the server may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(15);

/// Writes `dir/abuse-credential/{tls.crt,tls.key}`, issued by a fresh CA.
pub(crate) fn write_credentials(dir: &Path) -> io::Result<()> {
    let ca = Ca::new("abuse tool CA");
    let leaf = ca.issue(
        &["abuse.example"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );
    let dir = dir.join(CREDENTIAL);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("tls.crt"), &leaf.chain_pem)?;
    fs::write(dir.join("tls.key"), &leaf.key_pem)
}

/// A running `serve-dir`; killed (by its PID) when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
    log: PathBuf,
}

/// What the log holds at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LogMark {
    pub(crate) bytes: u64,
    pub(crate) lines: u64,
    pub(crate) warn_lines: u64,
}

impl Server {
    /// Starts `exe --dir DIR --listen 127.0.0.1:0`, logging to `log`, and waits until it
    /// listens (which it does once the first snapshot is loaded).
    pub(crate) fn start(exe: &Path, dir: &Path, log: PathBuf) -> io::Result<Server> {
        let file = fs::File::create(&log)?;
        let child = Command::new(exe)
            .args(["--dir".as_ref(), dir.as_os_str()])
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot start {}: {e}", exe.display())))?;
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(addr) = server.listening() {
                server.addr = addr;
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "the server exited ({status}) before listening; see {}",
                    server.log.display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "the server did not listen within {START_LIMIT:?}; see {}",
                    server.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address in the log's `listening (TCP) address=...` line, once it is there.
    fn listening(&self) -> Option<SocketAddr> {
        let file = fs::File::open(&self.log).ok()?;
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("listening (TCP)"))
            .find_map(|l| {
                let (_, rest) = l.split_once("address=")?;
                rest.split_whitespace().next()?.parse().ok()
            })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory in bytes (`VmRSS`).
    pub(crate) fn rss(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// CPU time of all the server's threads, in nanoseconds.
    fn cpu_ns(&self) -> u64 {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits (at most `limit`) until the server has used almost no CPU for 60 ms: every
    /// request it received is handled. Returns false if it never calmed down.
    pub(crate) async fn quiet(&self, limit: Duration) -> bool {
        let start = Instant::now();
        let mut last = self.cpu_ns();
        let mut calm = 0;
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.cpu_ns();
            if now.saturating_sub(last) < 300_000 {
                calm += 1;
                if calm >= 3 {
                    return true;
                }
            } else {
                calm = 0;
            }
            last = now;
        }
        false
    }

    /// Resident memory once the server is quiet (at most 10 s of waiting).
    pub(crate) async fn settled_rss(&self) -> u64 {
        self.quiet(Duration::from_secs(10)).await;
        self.rss()
    }

    /// The log's size and WARN lines now.
    pub(crate) fn log_mark(&self) -> LogMark {
        let text = fs::read(&self.log).unwrap_or_default();
        LogMark {
            bytes: text.len() as u64,
            lines: text.iter().filter(|&&b| b == b'\n').count() as u64,
            warn_lines: text
                .split(|&b| b == b'\n')
                .filter(|l| l.windows(6).any(|w| w == b" WARN "))
                .count() as u64,
        }
    }

    /// The log lines added since `mark`, for a look at what they say.
    pub(crate) fn log_since(&self, mark: LogMark) -> String {
        let text = fs::read(&self.log).unwrap_or_default();
        let start = (mark.bytes as usize).min(text.len());
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
