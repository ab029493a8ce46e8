//! The unmodified kube-rs client and `watcher` against the test API server.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use sds_test_apiserver::{Access, ApiServer, Secret};

const SDS_USER: &str = "system:serviceaccount:istio-system:sds";
const WAIT: Duration = Duration::from_secs(10);

async fn server() -> ApiServer {
    ApiServer::builder()
        .version("v1.33.1")
        .token("admin", Access::all())
        .user(
            "sds-token",
            SDS_USER,
            Access::namespaces(["istio-system"]).read_only(),
        )
        .bookmark_interval(Duration::from_millis(300))
        .start()
        .await
        .expect("server starts")
}

async fn client(server: &ApiServer, token: &str) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml(token, "istio-system"))
        .expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn secret(name: &str, data: &[(&str, &[u8])]) -> K8sSecret {
    let mut s = K8sSecret::default();
    s.metadata.name = Some(name.to_owned());
    s.data = Some(
        data.iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
            .collect(),
    );
    s
}

fn api_error(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn create_get_update_patch_delete() {
    let server = server().await;
    let api: Api<K8sSecret> = Api::namespaced(client(&server, "admin").await, "istio-system");
    let bytes: &[u8] = b"\x00\xffbinary\n";

    let created = api
        .create(&PostParams::default(), &secret("cred", &[("key", bytes)]))
        .await
        .expect("create");
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    let rv = created.metadata.resource_version.clone().expect("rv");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(
        server.get("istio-system", "cred").expect("stored").data["key"],
        bytes
    );

    let err = api_error(
        api.create(&PostParams::default(), &secret("cred", &[]))
            .await
            .expect_err("exists"),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(err.message, r#"secrets "cred" already exists"#);

    // stringData is merged into data on write
    let mut with_string_data = created.clone();
    with_string_data.string_data = Some(BTreeMap::from([("plain".to_owned(), "text".to_owned())]));
    let updated = api
        .replace("cred", &PostParams::default(), &with_string_data)
        .await
        .expect("replace");
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(updated.data.as_ref().expect("data")["plain"].0, b"text");
    assert!(updated.string_data.is_none());

    // a stale resourceVersion is a conflict
    let err = api_error(
        api.replace("cred", &PostParams::default(), &created)
            .await
            .expect_err("stale"),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        r#"Operation cannot be fulfilled on secrets "cred": the object has been modified; please apply your changes to the latest version and try again"#
    );

    let patched = api
        .patch(
            "cred",
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({
                "metadata": { "labels": { "app": "gw" } },
                "data": { "plain": null, "extra": "ZXh0cmE=" },
            })),
        )
        .await
        .expect("strategic merge patch");
    let data = patched.data.expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["extra", "key"]);
    assert_eq!(data["extra"].0, b"extra");
    let patched = api
        .patch(
            "cred",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({ "metadata": { "labels": { "app": null, "tier": "edge" } } }),
            ),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        patched.metadata.labels,
        Some(BTreeMap::from([("tier".to_owned(), "edge".to_owned())]))
    );

    let invalid = api
        .create(&PostParams::default(), &secret("Bad_Name", &[]))
        .await
        .expect_err("invalid name");
    let err = api_error(invalid);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message.starts_with(r#"Secret "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#),
        "{}",
        err.message
    );

    let deleted = api
        .delete("cred", &DeleteParams::default())
        .await
        .expect("delete");
    let status = deleted.right().expect("a Status for a deleted Secret");
    assert_eq!(status.details.expect("details").name, "cred");
    assert!(server.get("istio-system", "cred").is_none());
    let err = api_error(api.get("cred").await.expect_err("gone"));
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, r#"secrets "cred" not found"#);
}

#[tokio::test]
async fn list_pages_and_selectors() {
    let server = server().await;
    for name in ["a", "b", "c", "d", "e"] {
        let mut s = Secret::new("istio-system", name).with_data("k", name.as_bytes());
        if name < "c" {
            s = s
                .with_label("app", "gw")
                .with_type("kubernetes.io/tls")
                .with_data("tls.crt", "c")
                .with_data("tls.key", "k");
        }
        server.create(s).expect("seed");
    }
    server
        .create(Secret::new("other", "helm").with_type("helm.sh/release.v1"))
        .expect("seed");
    let client = client(&server, "admin").await;
    let api: Api<K8sSecret> = Api::namespaced(client.clone(), "istio-system");

    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = api.list(&params).await.expect("page");
        pages += 1;
        if pages == 1 {
            assert_eq!(page.metadata.remaining_item_count, Some(3));
            // a write between pages does not show up: pages come from one snapshot
            server
                .create(Secret::new("istio-system", "aa"))
                .expect("write between pages");
        }
        names.extend(page.items.into_iter().filter_map(|s| s.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["a", "b", "c", "d", "e"]);

    let by_label = api
        .list(&ListParams::default().labels("app=gw"))
        .await
        .expect("labels");
    assert_eq!(by_label.items.len(), 2);
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=d"))
        .await
        .expect("fields");
    assert_eq!(by_field.items.len(), 1);

    // Istio's selector, cluster-wide
    let all: Api<K8sSecret> = Api::all(client);
    let istio = all
        .list(
            &ListParams::default()
                .fields("type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"),
        )
        .await
        .expect("cluster-wide list");
    assert_eq!(istio.items.len(), 6);
    assert!(
        istio
            .items
            .iter()
            .all(|s| s.metadata.namespace.as_deref() == Some("istio-system"))
    );
    let tls = all
        .list(&ListParams::default().fields("type==kubernetes.io/tls"))
        .await
        .expect("tls only");
    assert_eq!(tls.items.len(), 2);
    let err = api_error(
        all.list(&ListParams::default().fields("spec.x=1"))
            .await
            .expect_err("unsupported field"),
    );
    assert_eq!(
        (err.code, err.message.as_str()),
        (400, "field label not supported: spec.x")
    );
}

#[tokio::test]
async fn unauthorized_and_forbidden() {
    let server = server().await;
    let nobody: Api<K8sSecret> = Api::namespaced(client(&server, "wrong").await, "istio-system");
    let err = api_error(nobody.list(&ListParams::default()).await.expect_err("401"));
    assert_eq!(
        (err.code, err.reason.as_str(), err.message.as_str()),
        (401, "Unauthorized", "Unauthorized")
    );

    let sds = client(&server, "sds-token").await;
    let own: Api<K8sSecret> = Api::namespaced(sds.clone(), "istio-system");
    own.list(&ListParams::default())
        .await
        .expect("own namespace");
    let other: Api<K8sSecret> = Api::namespaced(sds.clone(), "other");
    let err = api_error(other.list(&ListParams::default()).await.expect_err("403"));
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        err.message,
        format!(
            r#"secrets is forbidden: User "{SDS_USER}" cannot list resource "secrets" in API group "" in the namespace "other""#
        )
    );
    let err = api_error(other.get("x").await.expect_err("403"));
    assert_eq!(
        err.message,
        format!(
            r#"secrets "x" is forbidden: User "{SDS_USER}" cannot get resource "secrets" in API group "" in the namespace "other""#
        )
    );
    let all: Api<K8sSecret> = Api::all(sds);
    let err = api_error(all.list(&ListParams::default()).await.expect_err("403"));
    assert_eq!(
        err.message,
        format!(
            r#"secrets is forbidden: User "{SDS_USER}" cannot list resource "secrets" in API group "" at the cluster scope"#
        )
    );
    // read-only access
    let err = api_error(
        own.create(&PostParams::default(), &secret("x", &[]))
            .await
            .expect_err("403"),
    );
    assert_eq!(err.code, 403);
    assert!(
        err.message.contains(r#"cannot create resource "secrets""#),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn watcher_sees_changes_and_relists_after_compaction() {
    let server = server().await;
    server
        .create(Secret::new("istio-system", "first").with_data("k", "1"))
        .expect("seed");
    let api: Api<K8sSecret> = Api::namespaced(client(&server, "admin").await, "istio-system");
    // Drive the watcher on its own task, as an application would.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    let mut next_result = async || {
        within("a watcher event", rx.recv())
            .await
            .expect("the watcher runs")
    };

    assert!(matches!(
        next_result().await.expect("no watcher error"),
        Event::Init
    ));
    assert!(
        matches!(next_result().await.expect("no watcher error"), Event::InitApply(s) if s.metadata.name.as_deref() == Some("first"))
    );
    assert!(matches!(
        next_result().await.expect("no watcher error"),
        Event::InitDone
    ));
    within("the watch", server.wait_for_watches(1)).await;

    server
        .create(Secret::new("istio-system", "second"))
        .expect("create");
    assert!(
        matches!(next_result().await.expect("no watcher error"), Event::Apply(s) if s.metadata.name.as_deref() == Some("second"))
    );
    let mut changed = server.get("istio-system", "second").expect("stored");
    changed.data.insert("k".into(), b"2".to_vec());
    server.update(changed).expect("update");
    assert!(
        matches!(next_result().await.expect("no watcher error"), Event::Apply(s) if s.data.as_ref().is_some_and(|d| d["k"].0 == b"2"))
    );
    server.delete("istio-system", "first").expect("delete");
    assert!(
        matches!(next_result().await.expect("no watcher error"), Event::Delete(s) if s.metadata.name.as_deref() == Some("first"))
    );

    // API server restart: the watcher re-watches from its resourceVersion and misses nothing
    server.stop().await;
    server
        .create(Secret::new("istio-system", "while-down"))
        .expect("create");
    server.restart().await.expect("restart");
    assert!(
        matches!(next_result().await.expect("no watcher error"), Event::Apply(s) if s.metadata.name.as_deref() == Some("while-down"))
    );

    // compaction + dropped watches: the re-watch gets 410, and the watcher re-lists
    server.clear_requests();
    server.compact();
    server.drop_watches();
    // kube-rs surfaces the in-stream 410 as an error item, then re-lists
    match next_result().await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version: "),
                "{}",
                status.message
            );
        }
        other => panic!("expected the 410, got {other:?}"),
    }
    assert!(matches!(
        next_result().await.expect("no watcher error"),
        Event::Init
    ));
    let mut relisted = Vec::new();
    loop {
        match next_result().await.expect("no watcher error") {
            Event::InitApply(s) => relisted.extend(s.metadata.name),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(relisted, ["second", "while-down"]);
    let requests = server.requests();
    let watch = requests
        .iter()
        .find(|r| r.query.contains("watch=true"))
        .expect("a re-watch");
    assert_eq!(watch.status, 200, "410 comes inside the stream");
    assert!(
        watch.query.contains("allowWatchBookmarks=true"),
        "{}",
        watch.query
    );
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && !r.query.contains("watch")),
        "a re-list: {requests:?}"
    );
    pump.abort();
}

#[tokio::test]
async fn raw_watch_errors_and_bookmarks() {
    let server = server().await;
    let api: Api<K8sSecret> = Api::namespaced(client(&server, "admin").await, "istio-system");
    let old = server
        .create(Secret::new("istio-system", "a"))
        .expect("seed")
        .resource_version;
    server
        .create(Secret::new("istio-system", "b"))
        .expect("seed");

    // replay from a resourceVersion: only what came after it
    let wp = WatchParams::default().timeout(2);
    let mut stream = api
        .watch(&wp, &old.to_string())
        .await
        .expect("watch")
        .boxed();
    match within("a replayed event", stream.try_next())
        .await
        .expect("ok")
    {
        Some(WatchEvent::Added(s)) => assert_eq!(s.metadata.name.as_deref(), Some("b")),
        other => panic!("unexpected {other:?}"),
    }
    // bookmarks arrive (every 300 ms here) and carry the current resourceVersion
    match within("a bookmark", stream.try_next()).await.expect("ok") {
        Some(WatchEvent::Bookmark(b)) => {
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // timeoutSeconds ends the stream cleanly
    let rest: Vec<_> = within("the timeout", stream.collect::<Vec<_>>()).await;
    assert!(
        rest.iter()
            .all(|e| matches!(e, Ok(WatchEvent::Bookmark(_)))),
        "{rest:?}"
    );

    // a compacted resourceVersion: 200, then one in-stream ERROR event with 410 Expired
    server.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .expect("watch")
        .boxed();
    match within("the 410", stream.try_next()).await.expect("ok") {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert_eq!(
                status.message,
                format!(
                    "too old resource version: {old} ({})",
                    server.resource_version()
                )
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        within("the end", stream.try_next())
            .await
            .expect("ok")
            .is_none()
    );

    // a list continue token from before the compaction is 410 too
    server
        .create(Secret::new("istio-system", "c"))
        .expect("seed");
    let page = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("page");
    let token = page.metadata.continue_.expect("more");
    server.compact();
    let err = api_error(
        api.list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .expect_err("expired"),
    );
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
    assert!(
        err.message
            .starts_with("The provided continue parameter is too old"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn streaming_list_watcher() {
    let server = server().await;
    server
        .create(Secret::new("istio-system", "a"))
        .expect("seed");
    server.create(Secret::new("other", "b")).expect("seed");
    let api: Api<K8sSecret> = Api::all(client(&server, "admin").await);
    // sendInitialEvents=true: ADDED for the current state, then a BOOKMARK annotated
    // k8s.io/initial-events-end, then live events
    let mut events = watcher::watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut next = async || {
        within("an event", events.try_next())
            .await
            .expect("ok")
            .expect("some")
    };
    assert!(matches!(next().await, Event::Init));
    let mut names = Vec::new();
    loop {
        match next().await {
            Event::InitApply(s) => names.extend(s.metadata.name),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, ["a", "b"]);
    let watch = server.requests().pop().expect("the watch");
    assert!(
        watch.query.contains("sendInitialEvents=true"),
        "{}",
        watch.query
    );
    assert!(
        !server.requests().iter().any(|r| !r.query.contains("watch")),
        "no list"
    );
}
