//! `authorization.k8s.io/v1` SubjectAccessReviews and SelfSubjectAccessReviews, with the
//! unmodified kube-rs client (and raw HTTP where kube-rs cannot say it).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReview,
    SelfSubjectAccessReviewSpec, SubjectAccessReview, SubjectAccessReviewSpec,
    SubjectAccessReviewStatus,
};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client, Config};
use sds_test_apiserver::{Access, AccessReview, ApiServer, Decision, ReviewFailure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The server asking (it delegates authorization to the API server).
const SDS: &str = "system:serviceaccount:istio-system:sds";
/// The service account asked about.
const GATEWAY: &str = "system:serviceaccount:apps:gateway";
const WAIT: Duration = Duration::from_secs(10);

async fn server() -> ApiServer {
    ApiServer::builder()
        .token("admin", Access::all())
        .user(
            "sds-token",
            SDS,
            Access::namespaces(["istio-system"])
                .read_only()
                .access_reviews(true),
        )
        .user(
            "reader-token",
            "system:serviceaccount:istio-system:reader",
            Access::namespaces(["istio-system"]).read_only(),
        )
        .start()
        .await
        .expect("server starts")
}

async fn config(server: &ApiServer, token: &str) -> Config {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml(token, "istio-system"))
        .expect("kubeconfig parses");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config")
}

async fn client(server: &ApiServer, token: &str) -> Client {
    Client::try_from(config(server, token).await).expect("client")
}

/// What istiod asks: may `user` `verb` `resource` in `namespace`?
fn review(user: &str, verb: &str, resource: &str, namespace: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some(verb.to_owned()),
                resource: Some(resource.to_owned()),
                ..ResourceAttributes::default()
            }),
            user: Some(user.to_owned()),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

async fn ask(
    api: &Api<SubjectAccessReview>,
    review: &SubjectAccessReview,
) -> SubjectAccessReviewStatus {
    api.create(&PostParams::default(), review)
        .await
        .expect("review created")
        .status
        .expect("a status")
}

fn api_error(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Sends one request and reads the whole response (the server closes after it).
async fn http(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("reads");
    String::from_utf8_lossy(&response).into_owned()
}

fn post(path: &str, token: &str, content_type: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn reviews_are_answered_by_the_rules_and_recorded() {
    let server = server().await;
    let api: Api<SubjectAccessReview> = Api::all(client(&server, "sds-token").await);

    // no rules: like a cluster whose RBAC grants nothing
    let asked = review(GATEWAY, "list", "secrets", "apps");
    let status = ask(&api, &asked).await;
    assert!(!status.allowed);
    assert_eq!(status.denied, None);
    assert_eq!(status.reason.as_deref(), Some("no rule allows it"));
    assert_eq!(status.evaluation_error, None);

    // the answer is the review as sent, with its status
    let created = api
        .create(&PostParams::default(), &asked)
        .await
        .expect("created");
    assert_eq!(created.spec, asked.spec);
    assert_eq!(created.metadata, Default::default());

    server.allow(GATEWAY, "list", "secrets", "apps");
    let status = ask(&api, &asked).await;
    assert!(status.allowed);
    assert_eq!(status.denied, None);
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("allowed")),
        "{status:?}"
    );
    // the rule is for that namespace, verb and resource only
    assert!(
        !ask(&api, &review(GATEWAY, "list", "secrets", "other"))
            .await
            .allowed
    );
    assert!(
        !ask(&api, &review(GATEWAY, "get", "secrets", "apps"))
            .await
            .allowed
    );
    assert!(
        !ask(&api, &review(GATEWAY, "list", "configmaps", "apps"))
            .await
            .allowed
    );

    // an explicit deny, ahead of a wildcard allow added later
    server.deny(
        "*",
        "*",
        "secrets",
        "kube-system",
        "kube-system is off limits",
    );
    server.allow("*", "*", "*", "*");
    let status = ask(&api, &review(GATEWAY, "list", "secrets", "kube-system")).await;
    assert!(!status.allowed);
    assert_eq!(status.denied, Some(true));
    assert_eq!(status.reason.as_deref(), Some("kube-system is off limits"));
    assert!(
        ask(&api, &review(GATEWAY, "list", "configmaps", "kube-system"))
            .await
            .allowed
    );

    // a callback sees every attribute; a no-opinion reason reaches the answer
    server.clear_authorization();
    server.authorize(|r: &AccessReview| {
        if r.groups.iter().any(|g| g == "system:masters") {
            Decision::allow("masters may")
        } else {
            Decision::no_opinion("webhook: not a master").with_evaluation_error("webhook slow")
        }
    });
    let mut by_group = review("", "get", "secrets", "apps");
    by_group.spec.user = None;
    by_group.spec.groups = Some(vec!["system:masters".to_owned()]);
    assert!(ask(&api, &by_group).await.allowed);
    let status = ask(&api, &asked).await;
    assert!(!status.allowed);
    assert_eq!(status.reason.as_deref(), Some("webhook: not a master"));
    assert_eq!(status.evaluation_error.as_deref(), Some("webhook slow"));

    // every review was recorded, with what it asked
    let reviews = server.access_reviews();
    assert_eq!(reviews.len(), 10);
    assert_eq!(
        reviews[0],
        AccessReview {
            user: GATEWAY.to_owned(),
            resource_request: true,
            verb: "list".to_owned(),
            namespace: "apps".to_owned(),
            resource: "secrets".to_owned(),
            ..AccessReview::default()
        }
    );
    assert_eq!(reviews[8].groups, ["system:masters"]);
    let asked_about_gateway = reviews
        .iter()
        .filter(|r| r.user == GATEWAY && r.verb == "list" && r.resource == "secrets")
        .count();
    assert_eq!(asked_about_gateway, 6);
    server.clear_access_reviews();
    assert!(server.access_reviews().is_empty());
}

#[tokio::test]
async fn every_attribute_is_recorded() {
    let server = server().await;
    let api: Api<SubjectAccessReview> = Api::all(client(&server, "sds-token").await);
    let full = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some("apps".to_owned()),
                verb: Some("get".to_owned()),
                group: Some("gateway.networking.k8s.io".to_owned()),
                version: Some("v1".to_owned()),
                resource: Some("gateways".to_owned()),
                subresource: Some("status".to_owned()),
                name: Some("gw".to_owned()),
                ..ResourceAttributes::default()
            }),
            user: Some(GATEWAY.to_owned()),
            groups: Some(vec!["system:serviceaccounts".to_owned()]),
            uid: Some("1234".to_owned()),
            extra: Some(BTreeMap::from([(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec!["gw-0".to_owned()],
            )])),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    ask(&api, &full).await;
    let mut non_resource = review(GATEWAY, "", "", "");
    non_resource.spec.resource_attributes = None;
    non_resource.spec.non_resource_attributes = Some(NonResourceAttributes {
        path: Some("/healthz".to_owned()),
        verb: Some("get".to_owned()),
    });
    ask(&api, &non_resource).await;

    let reviews = server.access_reviews();
    assert_eq!(
        reviews,
        [
            AccessReview {
                user: GATEWAY.to_owned(),
                groups: vec!["system:serviceaccounts".to_owned()],
                uid: "1234".to_owned(),
                extra: BTreeMap::from([(
                    "authentication.kubernetes.io/pod-name".to_owned(),
                    vec!["gw-0".to_owned()],
                )]),
                resource_request: true,
                verb: "get".to_owned(),
                namespace: "apps".to_owned(),
                group: "gateway.networking.k8s.io".to_owned(),
                version: "v1".to_owned(),
                resource: "gateways".to_owned(),
                subresource: "status".to_owned(),
                name: "gw".to_owned(),
                path: String::new(),
            },
            AccessReview {
                user: GATEWAY.to_owned(),
                verb: "get".to_owned(),
                path: "/healthz".to_owned(),
                ..AccessReview::default()
            },
        ]
    );
}

#[tokio::test]
async fn invalid_reviews_are_422() {
    let server = server().await;
    let api: Api<SubjectAccessReview> = Api::all(client(&server, "sds-token").await);

    let err = api_error(
        api.create(&PostParams::default(), &SubjectAccessReview::default())
            .await
            .expect_err("no spec"),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        err.message,
        "SubjectAccessReview.authorization.k8s.io \"\" is invalid: [spec.resourceAttributes: \
         Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes \
         must be specified, spec.user: Invalid value: \"\": at least one of user or group must \
         be specified]"
    );
    let details = err.details.expect("details");
    assert_eq!(
        (
            details.group.as_str(),
            details.kind.as_str(),
            details.name.as_str()
        ),
        ("authorization.k8s.io", "SubjectAccessReview", "")
    );
    let fields: Vec<_> = details.causes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, ["spec.resourceAttributes", "spec.user"]);
    assert!(
        details
            .causes
            .iter()
            .all(|c| c.reason == "FieldValueInvalid")
    );

    // both kinds of attributes
    let mut both = review(GATEWAY, "list", "secrets", "apps");
    both.spec.non_resource_attributes = Some(NonResourceAttributes {
        path: Some("/metrics".to_owned()),
        verb: Some("get".to_owned()),
    });
    let err = api_error(
        api.create(&PostParams::default(), &both)
            .await
            .expect_err("both"),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message.ends_with(
            "spec.nonResourceAttributes: Invalid value: authorization.NonResourceAttributes{Path:\"/metrics\", Verb:\"get\"}: cannot be specified in combination with resourceAttributes"
        ),
        "{}",
        err.message
    );

    // no user and no groups
    let mut nobody = review(GATEWAY, "list", "secrets", "apps");
    nobody.spec.user = Some(String::new());
    let err = api_error(
        api.create(&PostParams::default(), &nobody)
            .await
            .expect_err("nobody"),
    );
    assert_eq!(
        err.message,
        "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified"
    );

    // a review has no name
    let mut named = review(GATEWAY, "list", "secrets", "apps");
    named.metadata.name = Some("mine".to_owned());
    let err = api_error(
        api.create(&PostParams::default(), &named)
            .await
            .expect_err("named"),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .ends_with("metadata: Invalid value: v1.ObjectMeta{Name:\"mine\"}: must be empty"),
        "{}",
        err.message
    );
    assert!(
        server.access_reviews().is_empty(),
        "invalid reviews are not recorded"
    );
}

#[tokio::test]
async fn bodies_are_decoded_like_the_real_server() {
    let server = server().await;
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let body = format!(
        r#"{{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{{"resourceAttributes":{{"namespace":"apps","verb":"list","resource":"secrets","colour":"red"}},"user":"{GATEWAY}"}}}}"#
    );

    // unknown fields: a warning by default, an error when strict
    let response = http(
        server.port(),
        &post(path, "sds-token", "application/json", &body),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(
        response
            .contains("warning: 299 - \"unknown field \\\"spec.resourceAttributes.colour\\\"\""),
        "{response}"
    );
    assert!(
        response.contains(r#""status":{"allowed":false,"reason":"no rule allows it"}"#),
        "{response}"
    );
    let strict = format!("{path}?fieldValidation=Strict");
    let response = http(
        server.port(),
        &post(&strict, "sds-token", "application/json", &body),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains(r#"SubjectAccessReview in version \"v1\" cannot be handled as a SubjectAccessReview: strict decoding error: unknown field \"spec.resourceAttributes.colour\""#),
        "{response}"
    );

    // not JSON, the wrong kind, a GET, an unknown resource
    let response = http(
        server.port(),
        &post(path, "sds-token", "application/json", "{"),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    let response = http(
        server.port(),
        &post(
            path,
            "sds-token",
            "application/json",
            r#"{"kind":"Secret","apiVersion":"v1"}"#,
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains("does not match the expected API version (authorization.k8s.io/v1)"),
        "{response}"
    );
    let response = http(server.port(), &post(path, "sds-token", "text/plain", &body)).await;
    assert!(response.starts_with("HTTP/1.1 415"), "{response}");
    let get = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sds-token\r\nConnection: close\r\n\r\n"
    );
    let response = http(server.port(), &get).await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    let response = http(
        server.port(),
        &post(
            "/apis/authorization.k8s.io/v1/localsubjectaccessreviews",
            "sds-token",
            "application/json",
            &body,
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains(r#""reason":"NotFound""#), "{response}");
}

#[tokio::test]
async fn creating_reviews_needs_the_grant() {
    let server = server().await;
    let review = review(GATEWAY, "list", "secrets", "apps");

    let reader: Api<SubjectAccessReview> = Api::all(client(&server, "reader-token").await);
    let err = api_error(
        reader
            .create(&PostParams::default(), &review)
            .await
            .expect_err("forbidden"),
    );
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        err.message,
        r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "system:serviceaccount:istio-system:reader" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#
    );
    let details = err.details.expect("details");
    assert_eq!(
        (details.group.as_str(), details.kind.as_str()),
        ("authorization.k8s.io", "subjectaccessreviews")
    );

    let stranger: Api<SubjectAccessReview> = Api::all(client(&server, "unknown").await);
    let err = api_error(
        stranger
            .create(&PostParams::default(), &review)
            .await
            .expect_err("unauthorized"),
    );
    assert_eq!(err.code, 401);
    assert!(server.access_reviews().is_empty());

    // with the grant, and with Access::all
    let sds: Api<SubjectAccessReview> = Api::all(client(&server, "sds-token").await);
    ask(&sds, &review).await;
    let admin: Api<SubjectAccessReview> = Api::all(client(&server, "admin").await);
    ask(&admin, &review).await;
    assert_eq!(server.access_reviews().len(), 2);
}

#[tokio::test]
async fn self_reviews_ask_about_the_caller_or_whom_it_impersonates() {
    let server = server().await;
    server.allow(SDS, "list", "secrets", "istio-system");
    server.allow(GATEWAY, "get", "secrets", "apps");
    let self_review = |verb: &str, namespace: &str| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some(verb.to_owned()),
                resource: Some("secrets".to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let can = async |api: &Api<SelfSubjectAccessReview>, verb: &str, namespace: &str| {
        api.create(&PostParams::default(), &self_review(verb, namespace))
            .await
            .expect("created")
            .status
            .expect("status")
            .allowed
    };

    // anyone may ask about themselves (the reader may not create SubjectAccessReviews)
    let reader: Api<SelfSubjectAccessReview> = Api::all(client(&server, "reader-token").await);
    assert!(!can(&reader, "list", "istio-system").await);
    let sds: Api<SelfSubjectAccessReview> = Api::all(client(&server, "sds-token").await);
    assert!(can(&sds, "list", "istio-system").await);
    assert!(!can(&sds, "list", "apps").await);
    let recorded = server.access_reviews().pop().expect("recorded");
    assert_eq!(recorded.user, SDS);
    assert_eq!(
        recorded.groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:istio-system",
            "system:authenticated"
        ]
    );

    // impersonation, as `kubectl auth can-i --as`
    let mut as_gateway = config(&server, "admin").await;
    as_gateway.auth_info.impersonate = Some(GATEWAY.to_owned());
    as_gateway.auth_info.impersonate_user_extra = Some(HashMap::from([(
        "scopes".to_owned(),
        vec!["a".to_owned(), "b".to_owned()],
    )]));
    let gateway: Api<SelfSubjectAccessReview> =
        Api::all(Client::try_from(as_gateway).expect("client"));
    assert!(can(&gateway, "get", "apps").await);
    let recorded = server.access_reviews().pop().expect("recorded");
    assert_eq!(recorded.user, GATEWAY);
    assert_eq!(
        recorded.groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ]
    );
    assert_eq!(recorded.extra["scopes"], ["a", "b"]);
    let last = server.requests().pop().expect("a request");
    assert_eq!(last.user.as_deref(), Some(GATEWAY));

    // only with the grant to impersonate
    let mut reader_as_gateway = config(&server, "reader-token").await;
    reader_as_gateway.auth_info.impersonate = Some(GATEWAY.to_owned());
    let api: Api<SelfSubjectAccessReview> =
        Api::all(Client::try_from(reader_as_gateway).expect("client"));
    let err = api_error(
        api.create(&PostParams::default(), &self_review("get", "apps"))
            .await
            .expect_err("forbidden"),
    );
    assert_eq!(
        err.message,
        r#"serviceaccounts "gateway" is forbidden: User "system:serviceaccount:istio-system:reader" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "apps""#
    );
}

#[tokio::test]
async fn discovery_lists_the_reviews() {
    let server = server().await;
    let discovery = Discovery::new(client(&server, "sds-token").await)
        .run()
        .await
        .expect("discovery runs");
    for kind in ["SubjectAccessReview", "SelfSubjectAccessReview"] {
        let gvk = GroupVersionKind::gvk("authorization.k8s.io", "v1", kind);
        let (resource, caps) = discovery.resolve_gvk(&gvk).expect("served");
        assert_eq!(resource.plural, format!("{}s", kind.to_lowercase()));
        assert_eq!(caps.scope, Scope::Cluster);
        assert_eq!(caps.operations, ["create"]);
    }
    assert!(discovery.has_group(""), "core/v1 is still there");
}

#[tokio::test]
async fn the_endpoint_can_fail_or_hang() {
    let server = server().await;
    let api: Api<SubjectAccessReview> = Api::all(client(&server, "sds-token").await);
    let asked = review(GATEWAY, "list", "secrets", "apps");
    server.allow(GATEWAY, "list", "secrets", "apps");

    server.fail_access_reviews(Some(ReviewFailure::InternalError));
    let err = api_error(
        api.create(&PostParams::default(), &asked)
            .await
            .expect_err("fails"),
    );
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    assert!(
        err.message.starts_with("Internal error occurred: "),
        "{}",
        err.message
    );

    server.fail_access_reviews(Some(ReviewFailure::Hang));
    let held = tokio::time::timeout(
        Duration::from_millis(300),
        api.create(&PostParams::default(), &asked),
    )
    .await;
    assert!(held.is_err(), "no answer while hanging");
    // a held review is answered once the switch is off
    let pending = tokio::spawn({
        let api = api.clone();
        let asked = asked.clone();
        async move { api.create(&PostParams::default(), &asked).await }
    });
    tokio::time::timeout(WAIT, async {
        while server.access_reviews().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the held review arrives");
    server.fail_access_reviews(None);
    let answered = tokio::time::timeout(WAIT, pending)
        .await
        .expect("answered")
        .expect("joins")
        .expect("created");
    assert!(answered.status.expect("status").allowed);
    assert!(ask(&api, &asked).await.allowed);
    assert_eq!(
        server.access_reviews().len(),
        4,
        "failed and held reviews are recorded"
    );
}
