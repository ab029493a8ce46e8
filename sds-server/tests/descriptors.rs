//! At the file-descriptor limit, the accept loop pauses instead of spinning, and serves again
//! once descriptors are free. Its own test binary: it lowers the limit of its whole process.

use std::{process::Command, time::Duration};

use sds_proto::envoy::service::{
    discovery::v3::DiscoveryRequest,
    secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
};
use sds_server::{SdsService, policy::AllowAnyPeer};

mod support;

/// User plus system CPU time of this process, in clock ticks (1/100 s on Linux), read from
/// `/proc/self/stat` opened beforehand (no descriptor is left to open it at the limit).
fn cpu_ticks(stat: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt as _;
    let mut buf = [0u8; 1024];
    let n = stat.read_at(&mut buf, 0).expect("read stat");
    let stat = String::from_utf8_lossy(&buf[..n]);
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fd dir").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_pauses_at_the_descriptor_limit_and_recovers() {
    let sds = SdsService::builder(support::reader(support::credentials(&["a"])).await)
        .policy(AllowAnyPeer)
        .build();
    let addr = support::serve(&sds, Default::default()).await;

    let stat = std::fs::File::open("/proc/self/stat").expect("stat");
    // Room for 40 more descriptors: the client's sockets and the server's use them up.
    let limit = open_descriptors() + 40;
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed");

    let mut clients = Vec::new();
    for _ in 0..200 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(conn) => clients.push(conn),
            Err(_) => break,
        }
    }
    assert!(
        clients.len() < 200,
        "the descriptor limit was never reached"
    );
    // The server now fails to accept what waits in the backlog: it must not spin.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(&stat);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(&stat) - before;
    assert!(
        spent < 30,
        "{spent} ticks of CPU in 1 s at the descriptor limit: the accept loop spins"
    );

    drop(clients);
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let attempt = async {
                let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await?;
                let request = DiscoveryRequest {
                    resource_names: vec!["a".to_owned()],
                    ..DiscoveryRequest::default()
                };
                SecretDiscoveryServiceClient::new(channel)
                    .fetch_secrets(request)
                    .await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            };
            if attempt.await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "not served again once descriptors were free"
    );
}
