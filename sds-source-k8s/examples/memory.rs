//! How much resident memory a `K8sSource` costs while it watches a namespace full of
//! non-credential Secrets (10,000 of 10 KiB each by default), through a full list and a
//! re-list after compaction.
//!
//! ```text
//! cargo run --release -p sds-source-k8s --example memory [-- SECRETS [KIB [PAGE_SIZE]]]
//! ```
//!
//! The API server (`sds-test-apiserver`) runs in a child process, so that what is measured
//! (this process's `VmRSS` and its peak `VmHWM`, from `/proc/self/status`) is the source alone:
//! the kube client, the watcher, the tokio runtime and the kept credentials.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sds_source_k8s::{K8sSource, Scope};
use sds_test_apiserver::{Access, ApiServer, Secret};
use sds_test_util::certs::{Ca, KeyKind, Validity};

const NS: &str = "bench";
const TOKEN: &str = "bench";
/// Credentials among the non-credential Secrets, to show they are served.
const CREDENTIALS: usize = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return serve(&args[1..]);
    }
    let secrets: usize = args.first().map_or(Ok(10_000), |a| a.parse())?;
    let kib: usize = args.get(1).map_or(Ok(10), |a| a.parse())?;
    let page_size: u32 = args
        .get(2)
        .map_or(Ok(K8sSource::DEFAULT_PAGE_SIZE), |a| a.parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(measure(secrets, kib, page_size))
}

/// The measuring side: the source, nothing else.
async fn measure(
    secrets: usize,
    kib: usize,
    page_size: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let baseline = memory()?;

    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", &secrets.to_string(), &kib.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let kubeconfig = lines.next().ok_or("the server did not start")??;
    let kubeconfig = std::fs::read_to_string(kubeconfig)?;

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let source = K8sSource::new(client, Scope::Namespace(NS.into())).page_size(page_size);
    let (mut reader, driver) = sds_core::publish(source);
    let driver = tokio::spawn(driver);

    let started = Instant::now();
    let snapshot = reader.ready().await?;
    let listed = started.elapsed();
    let after_list = memory()?;

    // Compaction plus dropped watches: the watcher gets 410 and lists everything again.
    writeln!(stdin, "relist")?;
    let started = Instant::now();
    let relisted = lines.next().ok_or("the server stopped")??;
    assert_eq!(relisted, "relisted");
    let relist = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_relist = memory()?;
    let current = reader.current().ok_or("no snapshot")?;
    assert_eq!(
        current.version(),
        snapshot.version(),
        "the re-list changes nothing"
    );

    println!(
        "{secrets} non-credential Secrets of {kib} KiB + {CREDENTIALS} credentials in `{NS}`, \
         pages of {page_size}: {} names served",
        snapshot.len()
    );
    println!("list:    {listed:?}; re-list: {relist:?}");
    println!("RSS before the source:     {:>8.1} MiB", mib(baseline.rss));
    println!(
        "RSS after the list:        {:>8.1} MiB",
        mib(after_list.rss)
    );
    println!(
        "RSS after a re-list:       {:>8.1} MiB",
        mib(after_relist.rss)
    );
    println!(
        "peak RSS (VmHWM):          {:>8.1} MiB",
        mib(after_relist.peak)
    );
    println!(
        "the source's cost: {:.1} MiB resident after the re-list, {:.1} MiB at the peak",
        mib(after_relist.rss.saturating_sub(baseline.rss)),
        mib(after_relist.peak.saturating_sub(baseline.rss))
    );

    driver.abort();
    drop(stdin);
    child.wait()?;
    Ok(())
}

/// The child process: an API server with the Secrets; prints its kubeconfig's path, then
/// "relisted" after each "relist" line once the source watches again.
fn serve(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let secrets: usize = args.first().ok_or("SECRETS")?.parse()?;
    let kib: usize = args.get(1).ok_or("KIB")?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = ApiServer::builder()
            .token(TOKEN, Access::all())
            .start()
            .await?;
        let blob = vec![b'x'; kib * 1024];
        for i in 0..secrets {
            server
                .create(Secret::new(NS, format!("app-{i:05}")).with_data("config", blob.clone()))?;
        }
        let ca = Ca::new("example.com");
        for i in 0..CREDENTIALS {
            let leaf = ca.issue(
                &["httpbin.example.com"],
                KeyKind::EcP256Pkcs8,
                Validity::current(),
            );
            server.create(
                Secret::new(NS, format!("cred-{i}"))
                    .with_type("kubernetes.io/tls")
                    .with_data("tls.crt", leaf.chain_pem)
                    .with_data("tls.key", leaf.key_pem),
            )?;
        }
        let kubeconfig = server.kubeconfig(TOKEN, NS)?;
        println!("{}", kubeconfig.display());
        std::io::stdout().flush()?;

        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = String::new();
        loop {
            use tokio::io::AsyncBufReadExt as _;
            line.clear();
            if stdin.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line.trim() == "relist" {
                server.wait_for_watches(1).await;
                server.compact();
                server.drop_watches();
                // The watch is opened again only after the list completes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                server.wait_for_watches(1).await;
                println!("relisted");
                std::io::stdout().flush()?;
            }
        }
    })
}

struct Memory {
    rss: u64,
    peak: u64,
}

/// This process's resident memory now and at its peak, in bytes.
fn memory() -> Result<Memory, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64, Box<dyn std::error::Error>> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("no {name} in /proc/self/status"))?;
        let kib: u64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
