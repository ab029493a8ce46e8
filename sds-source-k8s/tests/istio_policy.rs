//! `istio::GatewayPolicy` against the project's real-protocol API server
//! (`sds-test-apiserver`): SubjectAccessReviews created by the unmodified kube-rs client over
//! loopback HTTP.

use std::{future::Future, time::Duration};

use sds_core::SecretName;
use sds_server::policy::{CertificateIdentity, Decision, Peer, Policy as _};
use sds_source_k8s::istio::GatewayPolicy;
use sds_test_apiserver::{Access, AccessReview, ApiServer, ReviewFailure};
use tokio::time::timeout;

/// The token of the SDS server's own ServiceAccount.
const SDS: &str = "sds-token";
/// A token that may not create reviews.
const READER: &str = "reader-token";
/// The gateway's service account, as a SPIFFE ID and as a Kubernetes user.
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/apps/sa/gateway";
const GATEWAY: &str = "system:serviceaccount:apps:gateway";
const WAIT: Duration = Duration::from_secs(10);

// === harness ===

async fn server() -> ApiServer {
    ApiServer::builder()
        .user(
            SDS,
            "system:serviceaccount:istio-system:sds",
            Access::namespaces(["istio-system"])
                .read_only()
                .access_reviews(true),
        )
        .user(
            READER,
            "system:serviceaccount:istio-system:reader",
            Access::namespaces(["istio-system"]).read_only(),
        )
        .start()
        .await
        .expect("the test API server starts")
}

async fn client(server: &ApiServer, token: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(token, "apps"))
        .expect("a valid kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client config");
    kube::Client::try_from(config).expect("a client")
}

async fn policy(server: &ApiServer) -> GatewayPolicy {
    GatewayPolicy::new(client(server, SDS).await)
}

/// A peer whose verified client certificate has these URI SANs.
fn peer(uris: &[&str]) -> Peer {
    Peer::tcp("127.0.0.1:40000".parse().expect("an address")).with_certificate(
        CertificateIdentity {
            uris: uris.iter().map(|uri| (*uri).to_owned()).collect(),
            dns_names: vec![],
        },
    )
}

fn gateway() -> Peer {
    peer(&[GATEWAY_ID])
}

async fn decide(policy: &GatewayPolicy, peer: &Peer, name: &str) -> Decision {
    let name = SecretName::new(name).expect("a valid name");
    within("a decision", policy.decide(peer, &name)).await
}

fn served(name: &str) -> Decision {
    Decision::AllowAs(SecretName::new(name).expect("a valid name"))
}

fn denial(decision: Decision) -> String {
    match decision {
        Decision::Deny(reason) => reason.into_owned(),
        allowed => panic!("expected a denial, got {allowed:?}"),
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Moves Tokio's clock on by `by` (the policy's cache reads it), with the clock running for
/// the rest: the kube client's own timers must not race the API server's answers.
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// What istiod asks about the gateway.
fn gateway_review() -> AccessReview {
    AccessReview {
        user: GATEWAY.to_owned(),
        resource_request: true,
        verb: "list".to_owned(),
        resource: "secrets".to_owned(),
        namespace: "apps".to_owned(),
        ..AccessReview::default()
    }
}

// === tests ===

#[tokio::test]
async fn own_namespace_after_a_review() {
    let server = server().await;
    server.allow(GATEWAY, "list", "secrets", "apps");
    let policy = policy(&server).await;

    assert_eq!(
        decide(&policy, &gateway(), "kubernetes://apps/httpbin").await,
        Decision::Allow
    );
    assert_eq!(server.access_reviews(), [gateway_review()]);
    // Cached: no second review, for any credential of the namespace.
    assert_eq!(
        decide(&policy, &gateway(), "kubernetes://apps/other").await,
        Decision::Allow
    );
    assert_eq!(server.access_reviews().len(), 1);
}

#[tokio::test]
async fn bare_names_are_the_peers_namespace() {
    let server = server().await;
    server.allow(GATEWAY, "list", "secrets", "apps");
    let policy = policy(&server).await;

    for name in ["httpbin", "kubernetes://httpbin"] {
        assert_eq!(
            decide(&policy, &gateway(), name).await,
            served("kubernetes://apps/httpbin"),
            "{name}"
        );
    }
    // Another namespace's gateway: its own namespace, whatever the server's default.
    server.allow("system:serviceaccount:web:gw", "list", "secrets", "web");
    let web = peer(&["spiffe://cluster.local/ns/web/sa/gw"]);
    assert_eq!(
        decide(&policy, &web, "httpbin").await,
        served("kubernetes://web/httpbin")
    );
    assert_eq!(server.access_reviews().len(), 2);
}

#[tokio::test]
async fn other_namespaces_are_refused_without_a_review() {
    let server = server().await;
    server.allow("*", "*", "*", "*");
    let policy = policy(&server).await;

    assert_eq!(
        denial(decide(&policy, &gateway(), "kubernetes://b/x").await),
        "secret kubernetes://b/x is in namespace b; a gateway of namespace apps gets only its \
         own namespace's secrets"
    );
    assert!(
        !decide(&policy, &gateway(), "kubernetes://b/x-cacert")
            .await
            .is_allowed()
    );
    let other_scheme = denial(decide(&policy, &gateway(), "kubernetes-gateway://apps/x").await);
    assert!(
        other_scheme.contains("is of the scheme kubernetes-gateway://"),
        "{other_scheme}"
    );
    assert!(server.access_reviews().is_empty());
}

#[tokio::test]
async fn a_denial_gives_the_api_servers_reason() {
    let server = server().await;
    server.deny(
        GATEWAY,
        "list",
        "secrets",
        "apps",
        "gateways may not (webhook)",
    );
    let policy = policy(&server).await;
    assert_eq!(
        denial(decide(&policy, &gateway(), "httpbin").await),
        "the service account apps/gateway may not list secrets in namespace apps \
         (SubjectAccessReview: gateways may not (webhook))"
    );

    // RBAC without a binding: no opinion, which is a denial too.
    let web = peer(&["spiffe://cluster.local/ns/web/sa/gw"]);
    let reason = denial(decide(&policy, &web, "httpbin").await);
    assert!(
        reason.ends_with("(SubjectAccessReview: no rule allows it)"),
        "{reason}"
    );
    assert_eq!(server.access_reviews().len(), 2);
}

#[tokio::test]
async fn ca_certificates_need_no_review() {
    let server = server().await;
    let policy = policy(&server).await;
    assert_eq!(
        decide(&policy, &gateway(), "httpbin-cacert").await,
        served("kubernetes://apps/httpbin-cacert")
    );
    assert_eq!(
        decide(&policy, &gateway(), "kubernetes://apps/httpbin-cacert").await,
        Decision::Allow
    );
    // The credential itself is still denied (no rule allows it).
    assert!(!decide(&policy, &gateway(), "httpbin").await.is_allowed());
    assert_eq!(server.access_reviews().len(), 1);
}

#[tokio::test]
async fn peers_without_a_kubernetes_spiffe_id_are_denied() {
    let server = server().await;
    server.allow("*", "*", "*", "*");
    let policy = policy(&server).await;

    let no_certificate = Peer::tcp("127.0.0.1:40000".parse().expect("an address"));
    let reason = denial(decide(&policy, &no_certificate, "httpbin").await);
    assert!(
        reason.starts_with("the peer presented no verified client certificate"),
        "{reason}"
    );
    for uris in [
        &[][..],
        &["spiffe://cluster.local/workload/gateway"],
        &["https://gateway.example.com"],
        &["spiffe://cluster.local/ns/apps/sa/gateway/extra"],
    ] {
        let reason = denial(decide(&policy, &peer(uris), "httpbin-cacert").await);
        assert!(
            reason.starts_with("the peer's certificate has no URI SAN of the form"),
            "{uris:?}: {reason}"
        );
    }
    // Several URI SANs: the first Kubernetes SPIFFE ID counts.
    let several = peer(&[
        "https://gateway.example.com",
        "spiffe://cluster.local/ns/web/sa/gw",
        GATEWAY_ID,
    ]);
    assert_eq!(
        decide(&policy, &several, "httpbin").await,
        served("kubernetes://web/httpbin")
    );
    assert_eq!(
        server
            .access_reviews()
            .iter()
            .map(|r| r.user.as_str())
            .collect::<Vec<_>>(),
        ["system:serviceaccount:web:gw"]
    );
}

#[tokio::test]
async fn the_trust_domain_can_be_restricted() {
    let server = server().await;
    server.allow(GATEWAY, "list", "secrets", "apps");
    let policy = policy(&server).await.trust_domain("cluster.local");

    assert!(decide(&policy, &gateway(), "httpbin").await.is_allowed());
    let elsewhere = peer(&["spiffe://elsewhere.example/ns/apps/sa/gateway"]);
    assert_eq!(
        denial(decide(&policy, &elsewhere, "httpbin").await),
        "the peer's SPIFFE ID spiffe://elsewhere.example/ns/apps/sa/gateway is of the trust \
         domain elsewhere.example, not cluster.local"
    );
    assert_eq!(server.access_reviews().len(), 1);
}

#[tokio::test]
async fn a_denial_is_cached_for_a_minute() {
    let server = server().await;
    let policy = policy(&server).await;
    assert!(!decide(&policy, &gateway(), "httpbin").await.is_allowed());

    server.allow(GATEWAY, "list", "secrets", "apps");
    jump(GatewayPolicy::DENIED_TTL - Duration::from_secs(1)).await;
    assert!(!decide(&policy, &gateway(), "httpbin").await.is_allowed());
    assert_eq!(server.access_reviews().len(), 1, "still cached");

    jump(Duration::from_secs(1)).await;
    assert!(decide(&policy, &gateway(), "httpbin").await.is_allowed());
    assert_eq!(server.access_reviews().len(), 2);
}

#[tokio::test]
async fn an_allowance_is_cached_for_five_minutes_and_streams_ask_again() {
    let server = server().await;
    server.allow(GATEWAY, "list", "secrets", "apps");
    let policy = policy(&server).await;
    // What an open stream waits on.
    let changed = policy.changed();
    assert!(decide(&policy, &gateway(), "httpbin").await.is_allowed());

    server.clear_authorization(); // the RoleBinding is deleted
    jump(GatewayPolicy::RECHECK_INTERVAL).await;
    within("the policy to change", changed).await;
    assert!(
        decide(&policy, &gateway(), "httpbin").await.is_allowed(),
        "still cached"
    );
    jump(GatewayPolicy::ALLOWED_TTL - GatewayPolicy::RECHECK_INTERVAL - Duration::from_secs(1))
        .await;
    assert!(decide(&policy, &gateway(), "httpbin").await.is_allowed());
    assert_eq!(server.access_reviews().len(), 1);

    jump(Duration::from_secs(1)).await;
    let reason = denial(decide(&policy, &gateway(), "httpbin").await);
    assert!(reason.contains("no rule allows it"), "{reason}");
    assert_eq!(server.access_reviews().len(), 2);
}

#[tokio::test]
async fn a_failed_review_is_a_denial_cached_briefly() {
    let server = server().await;
    server.allow(GATEWAY, "list", "secrets", "apps");
    server.fail_access_reviews(Some(ReviewFailure::InternalError));
    let policy = policy(&server).await;

    let reason = denial(decide(&policy, &gateway(), "httpbin").await);
    assert!(
        reason.starts_with(
            "cannot tell whether the service account apps/gateway may list secrets in namespace \
             apps, so it may not for now (asked again after 5 s): SubjectAccessReview failed: \
             the API server answered 500 InternalError: Internal error occurred"
        ),
        "{reason}"
    );
    assert!(!decide(&policy, &gateway(), "httpbin").await.is_allowed());
    assert_eq!(server.access_reviews().len(), 1, "cached for a moment");

    server.fail_access_reviews(None);
    jump(GatewayPolicy::FAILED_TTL).await;
    assert!(decide(&policy, &gateway(), "httpbin").await.is_allowed());
    assert_eq!(server.access_reviews().len(), 2);
}

#[tokio::test]
async fn a_review_without_an_answer_times_out() {
    let server = server().await;
    server.allow(GATEWAY, "list", "secrets", "apps");
    server.fail_access_reviews(Some(ReviewFailure::Hang));
    let policy = policy(&server).await;

    let asking = tokio::spawn({
        let policy = policy.clone();
        async move { decide(&policy, &gateway(), "httpbin").await }
    });
    within("the review", async {
        while server.access_reviews().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    jump(GatewayPolicy::REVIEW_TIMEOUT).await;
    let reason = denial(within("the timeout", asking).await.expect("joins"));
    assert!(
        reason.ends_with("the API server did not answer within 10 s"),
        "{reason}"
    );
}

#[tokio::test]
async fn concurrent_first_requests_share_one_review() {
    let server = server().await;
    server.allow(GATEWAY, "list", "secrets", "apps");
    // Held until all the requests are waiting.
    server.fail_access_reviews(Some(ReviewFailure::Hang));
    let policy = policy(&server).await;

    let asking: Vec<_> = (0..20)
        .map(|i| {
            let policy = policy.clone();
            let name = if i % 2 == 0 {
                "httpbin"
            } else {
                "kubernetes://apps/other"
            };
            tokio::spawn(async move { decide(&policy, &gateway(), name).await })
        })
        .collect();
    within("the review", async {
        while server.access_reviews().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.access_reviews().len(), 1);

    server.fail_access_reviews(None);
    for asked in asking {
        let decision = within("a decision", asked).await.expect("joins");
        assert!(decision.is_allowed(), "{decision:?}");
    }
    assert_eq!(server.access_reviews(), [gateway_review()]);
}

#[tokio::test]
async fn a_server_that_may_not_create_reviews_says_so() {
    let server = server().await;
    server.allow(GATEWAY, "list", "secrets", "apps");
    let policy = GatewayPolicy::new(client(&server, READER).await);
    let reason = denial(decide(&policy, &gateway(), "httpbin").await);
    assert!(
        reason.contains("the API server answered 403 Forbidden")
            && reason.ends_with(
                "(the SDS server's own ServiceAccount needs a ClusterRole with apiGroups \
                 [\"authorization.k8s.io\"], resources [\"subjectaccessreviews\"], verbs \
                 [\"create\"])"
            ),
        "{reason}"
    );
}
