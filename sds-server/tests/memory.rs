//! What a subscribed name costs the server, measured with a counting allocator: the memory a
//! stream holds grows by a small, stated amount per name, whatever the client sends.
//!
//! Its own test binary: the allocator counts every allocation of the process.

use std::{alloc::System, net::SocketAddr, time::Duration};

use prost::Message;
use sds_core::Update;
use sds_proto::envoy::service::discovery::v3::DiscoveryRequest;
use sds_server::{SdsService, policy::AllowAnyPeer};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The most a subscribed name may cost beyond its own bytes: the sessions's entry, the
/// stream's watch, and the watch channel every stream of that name shares.
const MAX_BYTES_PER_NAME: i64 = 1024;

mod support;

/// Opens one stream subscribing to `names` over a raw HTTP/2 connection; returns what must be
/// kept alive for the stream to stay open.
async fn subscribe(addr: SocketAddr, names: Vec<String>) -> impl Sized {
    let mut client = support::raw_client(addr).await;
    let message = DiscoveryRequest {
        resource_names: names,
        ..DiscoveryRequest::default()
    }
    .encode_to_vec();
    let body = support::framed(0, message.len() as u32, &message);
    let (response, send) =
        support::raw_call(&mut client, addr, support::STREAM_SECRETS, body, false);
    (client, send, response)
}

/// Live bytes allocated by the process while `n` names of `len` bytes are subscribed on one
/// stream, once the server holds them.
async fn live_bytes_for(
    addr: SocketAddr,
    sds: &SdsService,
    n: usize,
    len: usize,
    tag: &str,
) -> i64 {
    let names: Vec<String> = (0..n)
        .map(|i| {
            format!("{tag}{i:06}")
                .chars()
                .chain(std::iter::repeat('x'))
                .take(len)
                .collect()
        })
        .collect();
    let region = Region::new(GLOBAL);
    let held = subscribe(addr, names).await;
    let before = sds.stats().subscriptions;
    tokio::time::timeout(Duration::from_secs(10), async {
        while sds.stats().subscriptions < before + n as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server holds the names");
    // Let the connection settle (request buffers released).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let change = region.change();
    std::mem::forget(held);
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

#[tokio::test]
async fn a_subscribed_name_costs_a_bounded_number_of_bytes() {
    let sds = SdsService::builder(support::reader(Update::new()).await)
        .policy(AllowAnyPeer)
        .build();
    let addr = support::serve(&sds, Default::default()).await;
    // Warm up whatever is allocated once (the connection machinery, the runtime's timers).
    let _ = live_bytes_for(addr, &sds, 1, 64, "warm").await;

    // The same stream cost with 1 and with 100 names: the slope is the cost of a name.
    let len = 160;
    let one = live_bytes_for(addr, &sds, 1, len, "a").await;
    let hundred = live_bytes_for(addr, &sds, 100, len, "b").await;
    let per_name = (hundred - one) / 99;
    eprintln!(
        "one stream: {one} bytes with 1 name, {hundred} with 100 names of {len} bytes: \
         {per_name} bytes per subscribed name"
    );
    assert!(
        per_name <= len as i64 + MAX_BYTES_PER_NAME,
        "{per_name} bytes per name of {len} bytes"
    );
}
