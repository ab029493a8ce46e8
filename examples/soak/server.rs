//! The real server (`serve-dir` or `serve-k8s`) as a child process: started, stopped with
//! SIGTERM, restarted on the same port; its resident memory and CPU time read from `/proc`.

use std::{
    ffi::OsString,
    fs, io,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The user a root soak runs the server as, so that an unreadable directory is unreadable to
/// it (root reads through any mode): `nobody`.
const NOBODY: u32 = 65534;

/// How to start the server: the binary, its arguments (but `--listen`) and environment.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) binary: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(String, OsString)>,
}

/// One server process after another, on the same address.
pub(crate) struct Server {
    launch: Launch,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    /// CPU time of the servers that exited.
    cpu_before: Duration,
}

impl Server {
    /// Starts the server `launch` says, listening on `addr`, appending its log to `log`.
    pub(crate) fn start(launch: Launch, addr: SocketAddr, log: &Path) -> io::Result<Server> {
        let mut server = Server {
            launch,
            log: log.to_owned(),
            addr,
            child: None,
            cpu_before: Duration::ZERO,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.launch.binary);
        command
            .args(&self.launch.args)
            .arg("--listen")
            .arg(self.addr.to_string())
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if is_root() {
            command.uid(NOBODY).gid(NOBODY);
        }
        self.child = Some(command.spawn()?);
        Ok(())
    }

    /// Waits until the server accepts connections.
    pub(crate) async fn wait_listening(&self, limit: Duration) -> io::Result<Duration> {
        let start = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "serve-dir not listening on {} (see {})",
                        self.addr,
                        self.log.display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server with SIGTERM (SIGKILL after 5 s) and starts a new one.
    pub(crate) async fn restart(&mut self) -> io::Result<()> {
        self.stop().await?;
        self.spawn()
    }

    /// Stops the server with SIGTERM, SIGKILL after 5 s.
    pub(crate) async fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        self.cpu_before += cpu(child.id()).unwrap_or_default();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The running server's resident memory, in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// CPU time of every server so far (user and system).
    pub(crate) fn cpu(&self) -> Duration {
        self.cpu_before
            + self
                .child
                .as_ref()
                .and_then(|c| cpu(c.id()))
                .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A process's CPU time from `/proc/PID/stat` (clock ticks of 10 ms).
fn cpu(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses, utime and stime are the 12th and 13th fields.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}
