//! The real `kubectl` against the test API server, for several server versions. The
//! machine's `kubectl` is a dispatcher that runs the kubectl matching the minor version that
//! `/version` reports, so each test also checks which kubectl ran.
//!
//! kubectl sends no credentials to an `http://` server, so these servers let anonymous
//! requests in (`Builder::anonymous`). Skipped (with a message) where there is no kubectl.

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sds_test_apiserver::{Access, ApiServer};

struct Kubectl {
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> Output {
        let home = self.dir.path();
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(home.join("cache"))
            .args(args)
            .env("HOME", home)
            .env_remove("KUBECONFIG")
            .current_dir(home)
            .output()
            .await
            .expect("kubectl runs")
    }

    /// Runs kubectl and returns stdout, failing the test on a non-zero exit.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
        assert!(
            !stderr.contains("Warning"),
            "kubectl {args:?} warned: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write a fixture");
        path.display().to_string()
    }
}

/// kubectl is on every machine of ours; a test that cannot find it fails rather than skips.
fn require_kubectl() {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| Path::new(&p).join("kubectl").is_file())
    });
    assert!(
        found,
        "no kubectl on PATH: install kubectl (1.27 to 1.33) to run these tests"
    );
}

async fn scenario(git_version: &str) {
    require_kubectl();
    let minor = git_version.split('.').nth(1).expect("a v1.N.x version");
    let server = ApiServer::builder()
        .version(git_version)
        .anonymous(Access::all())
        .start()
        .await
        .expect("server starts");
    let k = Kubectl {
        kubeconfig: server
            .kubeconfig("ignored-over-http", "istio-system")
            .expect("kubeconfig"),
        dir: tempfile::tempdir().expect("tempdir"),
    };

    // the dispatcher ran the kubectl of the server's minor version
    let version: serde_json::Value =
        serde_json::from_str(&k.ok(&["version", "-o", "json"]).await).expect("version json");
    assert_eq!(version["clientVersion"]["minor"], minor, "{version}");
    assert_eq!(version["serverVersion"]["gitVersion"], git_version);

    // create secret generic, from files with arbitrary bytes
    let key_bytes: Vec<u8> = (0..=255).collect();
    let cert_bytes = b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n";
    let key = k.write("K", &key_bytes);
    let cert = k.write("C", cert_bytes);
    let out = k
        .ok(&[
            "-n",
            "istio-system",
            "create",
            "secret",
            "generic",
            "httpbin-credential",
            &format!("--from-file=key={key}"),
            &format!("--from-file=cert={cert}"),
        ])
        .await;
    assert_eq!(out.trim(), "secret/httpbin-credential created");
    let stored = server
        .get("istio-system", "httpbin-credential")
        .expect("stored");
    assert_eq!(stored.data["key"], key_bytes);
    assert_eq!(stored.data["cert"], cert_bytes);
    assert_eq!(stored.secret_type, "Opaque");

    // kubectl 1.32 and later send typed bodies as Kubernetes protobuf
    let create = server
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("the create request");
    let expected = if minor.parse::<u32>().expect("minor") >= 32 {
        "application/vnd.kubernetes.protobuf"
    } else {
        "application/json"
    };
    assert_eq!(create.content_type.as_deref(), Some(expected));
    assert!(
        create.query.contains("fieldValidation=Strict"),
        "{}",
        create.query
    );

    // create secret tls (kubectl checks that the pair matches)
    let pair =
        rcgen::generate_simple_self_signed(vec!["httpbin.example.com".to_owned()]).expect("cert");
    let (cert_pem, key_pem) = (pair.cert.pem(), pair.signing_key.serialize_pem());
    let cert = k.write("tls.crt", &cert_pem);
    let key = k.write("tls.key", &key_pem);
    k.ok(&[
        "create",
        "secret",
        "tls",
        "httpbin-tls",
        &format!("--cert={cert}"),
        &format!("--key={key}"),
    ])
    .await;
    let tls = server.get("istio-system", "httpbin-tls").expect("stored");
    assert_eq!(tls.secret_type, "kubernetes.io/tls");
    assert_eq!(tls.data["tls.crt"], cert_pem.as_bytes());
    assert_eq!(tls.data["tls.key"], key_pem.as_bytes());

    // get -o yaml / -o json / the table
    let yaml = k
        .ok(&["get", "secret", "httpbin-credential", "-o", "yaml"])
        .await;
    assert!(yaml.contains("name: httpbin-credential"), "{yaml}");
    assert!(
        yaml.contains(&format!("key: {}", STANDARD.encode(&key_bytes))),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("resourceVersion: \"{}\"", stored.resource_version)),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "secret", "httpbin-tls", "-o", "json"]).await)
            .expect("json");
    assert_eq!(json["data"]["tls.key"], STANDARD.encode(&key_pem));
    let table = k.ok(&["get", "secrets"]).await;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "TYPE", "DATA", "AGE"], "{table}");
    assert_eq!(
        lines[1][..3],
        ["httpbin-credential", "Opaque", "2"],
        "{table}"
    );
    assert_eq!(
        lines[2][..3],
        ["httpbin-tls", "kubernetes.io/tls", "2"],
        "{table}"
    );

    // apply: create, then apply a change (a strategic merge patch with the last-applied
    // annotation)
    let manifest = |data: &[(&str, &[u8])]| {
        let mut yaml = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\n  namespace: istio-system\n  labels:\n    app: gw\ndata:\n".to_owned();
        for (key, value) in data {
            yaml.push_str(&format!("  {key}: {}\n", STANDARD.encode(value)));
        }
        yaml
    };
    let first: &[u8] = b"\x01\x02\x03";
    let file = k.write("applied.yaml", manifest(&[("a", first), ("b", b"b")]));
    assert_eq!(
        k.ok(&["apply", "-f", &file]).await.trim(),
        "secret/applied created"
    );
    let applied = server.get("istio-system", "applied").expect("stored");
    assert_eq!(applied.data["a"], first);
    assert!(
        applied
            .annotations
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );
    let second: &[u8] = b"\xff\x00second";
    let file = k.write("applied.yaml", manifest(&[("a", second), ("c", b"c")]));
    assert_eq!(
        k.ok(&["apply", "-f", &file]).await.trim(),
        "secret/applied configured"
    );
    let reapplied = server.get("istio-system", "applied").expect("stored");
    assert_eq!(
        reapplied.data.keys().collect::<Vec<_>>(),
        ["a", "c"],
        "b was pruned"
    );
    assert_eq!(reapplied.data["a"], second);
    assert!(reapplied.resource_version > applied.resource_version);
    let patch = server
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .expect("apply patched");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    // applying the same manifest again changes nothing
    assert_eq!(
        k.ok(&["apply", "-f", &file]).await.trim(),
        "secret/applied unchanged"
    );
    assert_eq!(server.resource_version(), reapplied.resource_version);

    // delete
    let out = k.ok(&["delete", "secret", "httpbin-credential"]).await;
    assert_eq!(out.trim(), "secret \"httpbin-credential\" deleted");
    assert!(server.get("istio-system", "httpbin-credential").is_none());

    access_reviews(&k, &server, minor.parse().expect("minor")).await;

    // errors, worded like the real server
    let out = k.run(&["get", "secret", "nope"]).await;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        r#"Error from server (NotFound): secrets "nope" not found"#
    );
    server.set_anonymous(Some(Access::namespaces(["istio-system"])));
    let out = k.run(&["-n", "other", "get", "secrets"]).await;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        r#"Error from server (Forbidden): secrets is forbidden: User "system:anonymous" cannot list resource "secrets" in API group "" in the namespace "other""#
    );
    // creating SubjectAccessReviews and impersonating need grants of their own
    let review = k.write("review.json", REVIEW);
    let out = k.run(&["create", "-f", &review]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "system:anonymous" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#),
        "{stderr}"
    );
    let out = k
        .run(&["auth", "can-i", "list", "secrets", "--as", GATEWAY])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"serviceaccounts "gateway" is forbidden: User "system:anonymous" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "istio-system""#),
        "{stderr}"
    );
}

/// The service account whose access the reviews ask about.
const GATEWAY: &str = "system:serviceaccount:istio-system:gateway";

/// What istiod asks the API server.
const REVIEW: &str = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview",
 "spec":{"resourceAttributes":{"namespace":"istio-system","verb":"list","resource":"secrets"},
 "user":"system:serviceaccount:istio-system:gateway"}}"#;

/// `kubectl create -f` of a SubjectAccessReview, and `kubectl auth can-i --as` (a
/// SelfSubjectAccessReview as the impersonated user; kubectl 1.32 and later send it as
/// protobuf).
async fn access_reviews(k: &Kubectl, server: &ApiServer, minor: u32) {
    let review = k.write("review.json", REVIEW);
    let allowed = ["create", "-f", &review, "-o", "jsonpath={.status.allowed}"];
    assert_eq!(k.ok(&allowed).await, "false");
    let created: serde_json::Value =
        serde_json::from_str(&k.ok(&["create", "-f", &review, "-o", "json"]).await).expect("json");
    assert_eq!(
        created["status"],
        serde_json::json!({ "allowed": false, "reason": "no rule allows it" })
    );
    assert_eq!(created["spec"]["user"], GATEWAY);
    let out = k
        .run(&["auth", "can-i", "list", "secrets", "--as", GATEWAY])
        .await;
    assert_eq!(out.status.code(), Some(1), "no: exit code 1");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no - no rule allows it"
    );

    server.allow(GATEWAY, "list", "secrets", "istio-system");
    assert_eq!(k.ok(&allowed).await, "true");
    let yes = k
        .ok(&["auth", "can-i", "list", "secrets", "--as", GATEWAY])
        .await;
    assert_eq!(yes.trim(), "yes");
    let out = k
        .run(&[
            "auth", "can-i", "list", "secrets", "-n", "other", "--as", GATEWAY,
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));

    let reviews = server.access_reviews();
    assert_eq!(reviews.len(), 6);
    assert!(
        reviews.iter().all(|r| r.user == GATEWAY
            && r.verb == "list"
            && r.resource == "secrets"
            && r.resource_request),
        "{reviews:?}"
    );
    let namespaces: Vec<_> = reviews.iter().map(|r| r.namespace.as_str()).collect();
    assert_eq!(
        namespaces,
        [
            "istio-system",
            "istio-system",
            "istio-system",
            "istio-system",
            "istio-system",
            "other"
        ]
    );
    // a SelfSubjectAccessReview asks about the impersonated service account
    assert_eq!(
        reviews[2].groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:istio-system",
            "system:authenticated"
        ]
    );
    assert!(
        reviews[0].groups.is_empty(),
        "a SubjectAccessReview asks about spec.user only"
    );
    let content_types: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("subjectaccessreviews"))
        .map(|r| (r.path, r.content_type.unwrap_or_default()))
        .collect();
    let self_review = if minor >= 32 {
        "application/vnd.kubernetes.protobuf"
    } else {
        "application/json"
    };
    assert!(
        content_types
            .iter()
            .all(|(path, ct)| if path.contains("/selfsubject") {
                ct == self_review
            } else {
                ct == "application/json"
            }),
        "{content_types:?}"
    );
    server.clear_authorization();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_27() {
    scenario("v1.27.16").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_29() {
    scenario("v1.29.14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33() {
    scenario("v1.33.1").await;
}
