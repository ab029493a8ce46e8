//! The load tool's handle on a server child process: commands over its stdin and stdout, CPU
//! and memory from `/proc`.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use crate::serve::{Http2, Kind, WORKER_THREAD};

pub(crate) struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub(crate) addr: String,
}

impl Server {
    /// Starts `load --serve KIND` and waits until it listens.
    pub(crate) fn spawn(
        kind: Kind,
        k: usize,
        http2: &Http2,
        workers: usize,
    ) -> std::io::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args([
                "--serve",
                kind.label(),
                "--k",
                &k.to_string(),
                "--server-workers",
                &workers.to_string(),
            ])
            .args(http2.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut server = Server {
            child,
            stdin,
            stdout,
            addr: String::new(),
        };
        let line = server.read_line()?;
        server.addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| std::io::Error::other(format!("unexpected: {line}")))?
            .to_owned();
        Ok(server)
    }

    pub(crate) fn send(&mut self, command: &str) -> std::io::Result<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()
    }

    pub(crate) fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the server exited"));
        }
        Ok(line.trim_end().to_owned())
    }

    /// Sends `command` and returns the words of its answer after the expected first word.
    pub(crate) fn ask(&mut self, command: &str, answer: &str) -> std::io::Result<Vec<String>> {
        self.send(command)?;
        self.expect(answer)
    }

    pub(crate) fn expect(&mut self, answer: &str) -> std::io::Result<Vec<String>> {
        let line = self.read_line()?;
        let mut words = line.split_whitespace().map(str::to_owned);
        if words.next().as_deref() != Some(answer) {
            return Err(std::io::Error::other(format!(
                "expected `{answer}`, got `{line}`"
            )));
        }
        Ok(words.collect())
    }

    /// (messages sent, encodes) so far.
    pub(crate) fn stats(&mut self) -> std::io::Result<(u64, u64)> {
        let words = self.ask("stats", "stats")?;
        let num = |i: usize| words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0);
        Ok((num(0), num(1)))
    }

    /// Resident memory in bytes (`VmRSS`).
    pub(crate) fn rss(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// CPU time of the server's runtime threads, in nanoseconds (`schedstat`), excluding the
    /// control thread that issues credentials and polls counters.
    pub(crate) fn cpu_ns(&self) -> u64 {
        let pid = self.child.id();
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|t| {
                fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end().starts_with(WORKER_THREAD))
            })
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits until the server's threads stop using CPU (every request handled), at most
    /// `limit`. Returns false if they never did.
    pub(crate) async fn quiet(&self, limit: Duration) -> bool {
        let start = tokio::time::Instant::now();
        let mut last = self.cpu_ns();
        let mut calm = 0;
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = self.cpu_ns();
            if now.saturating_sub(last) < 100_000 {
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.send("quit");
        std::thread::sleep(Duration::from_millis(50));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
