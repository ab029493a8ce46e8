//! Scenario 3: TCP connections that never start HTTP/2: they send nothing, or stop one byte
//! short of the preface and SETTINGS header the server waits for, or stop right after it.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

use crate::{
    Scenario, bystander,
    raw::PREFACE,
    report::{Row, bytes, growth},
    server::Server,
};

/// How long after opening them the connections are counted.
const COUNT_AFTER: Duration = Duration::from_secs(15);

/// A SETTINGS frame header announcing a 6-byte payload that never comes.
const SETTINGS_HEADER: [u8; 9] = [0, 0, 6, 0x4, 0, 0, 0, 0, 0];

/// One group of connections: how many, and what each sends before going silent.
struct Group {
    label: &'static str,
    count: usize,
    sends: Vec<u8>,
}

/// Per group: how many are still open after [`COUNT_AFTER`], and when the server closed the
/// others; of those open then, when the server closed them by the end of the follow-up.
struct Counted {
    open: usize,
    opened: usize,
    closed_after: Vec<Duration>,
    later: Vec<Duration>,
}

/// Runs scenario 3 on a fresh server.
pub(crate) async fn run(scenario: &Scenario<'_>, silent: usize, follow: Duration) -> Vec<Row> {
    let handshake: Vec<u8> = PREFACE.iter().chain(&SETTINGS_HEADER).copied().collect();
    let groups = [
        Group {
            label: "3a",
            count: silent,
            sends: Vec::new(),
        },
        Group {
            label: "3b",
            count: 100,
            sends: handshake[..handshake.len() - 1].to_vec(),
        },
        Group {
            label: "3c",
            count: 100,
            sends: handshake.clone(),
        },
    ];
    let titles = [
        format!("3a. {silent} TCP connections that never send a byte"),
        format!(
            "3b. 100 connections that send {} of the {} bytes of preface + SETTINGS header, then \
             nothing",
            handshake.len() - 1,
            handshake.len()
        ),
        format!(
            "3c. 100 connections that send the preface and a SETTINGS header ({} B) but not its \
             payload, then nothing",
            handshake.len()
        ),
    ];
    let mut row = Row::new("3. (all three groups at once)");
    let measured = scenario
        .on_fresh_server("3", &mut row, async |server: &Server| {
            let base = server.settled_rss().await;
            let start = Instant::now();
            let mut watchers = Vec::new();
            for group in &groups {
                let mut group_watchers = Vec::new();
                for _ in 0..group.count {
                    group_watchers.push(watch(server.addr, group.sends.clone()).await?);
                }
                watchers.push(group_watchers);
            }
            let opened_in = start.elapsed();
            let held = server.settled_rss().await;
            let served_early = bystander::check(server.addr).await;
            // Watch until COUNT_AFTER after the last connection opened.
            let end = start + opened_in + COUNT_AFTER;
            tokio::time::sleep_until(tokio::time::Instant::from_std(end - Duration::from_secs(4)))
                .await;
            let served_late = bystander::check(server.addr).await;
            tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
            let mut counted = Vec::new();
            let mut still_open = Vec::new();
            for group_watchers in watchers {
                let opened = group_watchers.len();
                let mut closed_after = Vec::new();
                let mut open = Vec::new();
                for watcher in group_watchers {
                    if watcher.is_finished() {
                        if let Ok(Some(after)) = watcher.await {
                            closed_after.push(after);
                        }
                    } else {
                        open.push(watcher);
                    }
                }
                counted.push(Counted {
                    open: open.len(),
                    opened,
                    closed_after,
                    later: Vec::new(),
                });
                still_open.push(open);
            }
            // Those still open: are they ever closed?
            if still_open.iter().any(|open| !open.is_empty()) && follow > COUNT_AFTER {
                let until = start + opened_in + follow;
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
            for (counted, open) in counted.iter_mut().zip(still_open) {
                for watcher in open {
                    if watcher.is_finished() {
                        if let Ok(Some(after)) = watcher.await {
                            counted.later.push(after);
                        }
                    } else {
                        watcher.abort();
                    }
                }
            }
            let total: usize = groups.iter().map(|g| g.count).sum();
            Ok((
                counted,
                growth(base, held),
                total,
                served_early,
                served_late,
            ))
        })
        .await;
    let Some((counted, grown, total, early, late)) = measured else {
        return vec![row];
    };
    let mut rows = Vec::new();
    for ((group, counted), title) in groups.iter().zip(counted).zip(titles) {
        let mut group_row = Row::new(title);
        let closed = counted.closed_after.len();
        group_row.outcome = format!(
            "after {COUNT_AFTER:?}: {} of {} still open, {closed} closed by the server{}",
            counted.open,
            counted.opened,
            span(&counted.closed_after)
        );
        if counted.open > 0 && follow > COUNT_AFTER {
            group_row.outcome.push_str(&format!(
                "; of those open, {} were closed by {follow:?}{}",
                counted.later.len(),
                span(&counted.later)
            ));
        }
        if group.label == "3a" {
            group_row.memory = format!(
                "{} for all {total} connections ({} each)",
                bytes(grown),
                bytes(grown / total as f64)
            );
            group_row.bystander = format!(
                "at {} open connections: {}; 4 s before the count: {}",
                total,
                early.label(),
                late.label()
            );
        }
        rows.push(group_row);
    }
    if let Some(first) = rows.first_mut() {
        first.log = std::mem::take(&mut row.log);
    }
    rows
}

/// `, at 10.0-10.1 s after opening`, or nothing if `times` is empty.
fn span(times: &[Duration]) -> String {
    match (times.iter().min(), times.iter().max()) {
        (Some(min), Some(max)) => format!(
            ", {:.1}-{:.1} s after opening",
            min.as_secs_f64(),
            max.as_secs_f64()
        ),
        _ => String::new(),
    }
}

/// Opens a connection, sends `sends`, and watches it: the task ends with the time until the
/// server closed it (reads return end-of-file or an error), or runs until aborted.
async fn watch(addr: SocketAddr, sends: Vec<u8>) -> Result<JoinHandle<Option<Duration>>, String> {
    let mut tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect: timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let start = Instant::now();
    if !sends.is_empty() {
        tcp.write_all(&sends)
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    Ok(tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => {}
            }
        }
    }))
}
