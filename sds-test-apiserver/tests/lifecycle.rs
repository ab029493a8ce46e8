//! Server lifecycle and test switches, over raw HTTP/1.1.

use std::time::Duration;

use sds_test_apiserver::{Access, ApiServer, Secret};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Sends one request and reads the whole response (the server closes after it).
async fn http(port: u16, request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn get(path: &str, token: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn stop_restart_unavailable_and_drop() {
    let server = ApiServer::builder()
        .version("v1.30.2")
        .token("t", Access::all())
        .start()
        .await
        .expect("starts");
    let port = server.port();
    server.create(Secret::new("ns", "kept")).expect("seed");

    let version = http(port, &get("/version", "")).await.expect("version");
    assert!(version.starts_with("HTTP/1.1 200"), "{version}");
    assert!(
        version.contains(r#""minor":"30""#) && version.contains(r#""gitVersion":"v1.30.2""#),
        "{version}"
    );
    let anonymous = http(port, &get("/api/v1/secrets", "nope"))
        .await
        .expect("401");
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");

    server.set_unavailable(true);
    let unavailable = http(port, &get("/api/v1/secrets", "t")).await.expect("503");
    assert!(unavailable.starts_with("HTTP/1.1 503"), "{unavailable}");
    assert!(
        unavailable.contains(r#""reason":"ServiceUnavailable""#),
        "{unavailable}"
    );
    server.set_unavailable(false);

    server.stop().await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "stopped"
    );
    server.restart().await.expect("restarts");
    assert_eq!(server.port(), port);
    let list = http(port, &get("/api/v1/namespaces/ns/secrets", "t"))
        .await
        .expect("list");
    assert!(
        list.contains(r#""name":"kept""#),
        "state survives a restart: {list}"
    );

    let counted = server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/ns/secrets" && r.user.as_deref() == Some("t"))
        .count();
    assert_eq!(counted, 1);

    drop(server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "dropped"
    );
}

#[tokio::test]
async fn drop_watches_cuts_streams_mid_chunk() {
    let server = ApiServer::builder()
        .token("t", Access::all())
        .start()
        .await
        .expect("starts");
    server.create(Secret::new("ns", "a")).expect("seed");
    let mut stream = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .expect("connect");
    let request = get("/api/v1/namespaces/ns/secrets?watch=1", "t");
    stream.write_all(request.as_bytes()).await.expect("send");
    tokio::time::timeout(WAIT, server.wait_for_watches(1))
        .await
        .expect("watch opens");
    assert_eq!(server.open_watches(), 1);

    server.drop_watches();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the stream ends")
        .ok();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("transfer-encoding: chunked"),
        "{response}"
    );
    assert!(
        response.contains(r#"{"type":"ADDED","object":{"kind":"Secret","apiVersion":"v1""#),
        "{response}"
    );
    assert!(
        !response.ends_with("0\r\n\r\n"),
        "no final chunk: {response}"
    );
    tokio::time::timeout(WAIT, async {
        while server.open_watches() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the watch is closed");
}
