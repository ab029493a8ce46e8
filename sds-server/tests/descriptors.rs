//! At the file-descriptor limit, the accept loop pauses instead of spinning, and serves again
//! once descriptors are free. Its own test binary: it lowers the limit of its whole process.

use std::{process::Command, time::Duration};

use futures_util::StreamExt as _;
use sds_core::{CertifiedKey, Input, SecretName, UnixTime, Update};
use sds_proto::envoy::service::{
    discovery::v3::DiscoveryRequest,
    secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
};
use sds_server::{Limits, SdsService, connections};
use sds_test_util::certs::{Ca, KeyKind, Validity};
use tokio_stream::wrappers::TcpListenerStream;

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
    let name = SecretName::new("a").expect("name");
    let leaf = Ca::new("fd test CA").issue(&["a"], KeyKind::EcP256Pkcs8, Validity::current());
    let credential = CertifiedKey::from_pem(
        &name,
        Input {
            location: "tls.crt",
            bytes: leaf.chain_pem.as_bytes(),
        },
        Input {
            location: "tls.key",
            bytes: leaf.key_pem.as_bytes(),
        },
        UnixTime::now(),
    )
    .expect("valid");
    let mut update = Update::new();
    update.insert(name, credential);
    let (mut reader, driver) = sds_core::publish(sds_core::from_stream(
        futures_util::stream::iter([Ok::<_, std::io::Error>(update)])
            .chain(futures_util::stream::pending()),
    ));
    tokio::spawn(driver);
    reader.ready().await.expect("ready");
    let sds = SdsService::new(reader);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = connections::guard(TcpListenerStream::new(listener), Default::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(Limits::MAX_CONCURRENT_STREAMS)
            .add_service(sds.into_server())
            .serve_with_incoming(incoming),
    );

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
