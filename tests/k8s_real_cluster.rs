//! The Kubernetes source against a real cluster. Ignored by default (CI runs the same
//! scenarios against `sds-test-apiserver`); run it with:
//!
//! ```text
//! KUBECONFIG=$HOME/.kube/config SDS_TEST_NAMESPACE=default \
//!   cargo test --features k8s --test k8s_real_cluster -- --ignored
//! ```
//!
//! It creates, updates and deletes a Secret `sds-test-<pid>` in that namespace (it needs
//! get/list/watch/create/update/delete on secrets there) and removes it at the end.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use sds::{
    core::{SecretName, publish},
    k8s::{K8sSource, Scope},
};
use sds_test_util::certs::{Ca, KeyKind, Validity};

const WAIT: Duration = Duration::from_secs(60);

fn secret(name: &str, keys: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            keys.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test --features k8s --test k8s_real_cluster -- --ignored"]
async fn serves_a_secret_from_a_real_cluster() {
    let client = kube::Client::try_default()
        .await
        .expect("a Kubernetes client from KUBECONFIG or in-cluster config");
    let ns = std::env::var("SDS_TEST_NAMESPACE")
        .unwrap_or_else(|_| client.default_namespace().to_owned());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let name = format!("sds-test-{}", std::process::id());
    let ca = Ca::new("example.com");
    let leaf = ca.issue(
        &["httpbin.example.com"],
        KeyKind::EcP256Pkcs8,
        Validity::current(),
    );

    let source = K8sSource::new(client, Scope::Namespace(ns.clone()))
        .default_namespace(ns.clone())
        .debounce(Duration::from_millis(100));
    let (mut reader, driver) = publish(source);
    tokio::spawn(driver);
    reader.ready().await.expect("the first list");
    let mut cert = reader.watch(&SecretName::new(&name).expect("name"));
    let mut cacert = reader.watch(&SecretName::new(format!("{name}-cacert")).expect("name"));

    secrets
        .create(
            &PostParams::default(),
            &secret(&name, &[("cert", &leaf.chain_pem), ("key", &leaf.key_pem)]),
        )
        .await
        .expect("create the Secret");
    let outcome = async {
        tokio::time::timeout(WAIT, cert.changed())
            .await
            .expect("served")
            .expect("publisher");
        assert!(cert.current().is_some());

        let mut with_ca = secret(
            &name,
            &[
                ("cert", &leaf.chain_pem),
                ("key", &leaf.key_pem),
                ("cacert", ca.cert_pem()),
            ],
        );
        with_ca.metadata.resource_version = secrets
            .get(&name)
            .await
            .expect("get")
            .metadata
            .resource_version;
        secrets
            .replace(&name, &PostParams::default(), &with_ca)
            .await
            .expect("add cacert");
        tokio::time::timeout(WAIT, cacert.changed())
            .await
            .expect("CA served")
            .expect("publisher");
        assert!(cacert.current().is_some());

        secrets
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete");
        tokio::time::timeout(WAIT, cert.changed())
            .await
            .expect("removed")
            .expect("publisher");
        assert!(
            cert.current().is_none(),
            "a deleted Secret is no longer offered"
        );
    }
    .await;
    let _ = secrets.delete(&name, &DeleteParams::default()).await;
    outcome
}
