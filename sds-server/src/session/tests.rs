//! Table-driven tests of the protocol state machines: no network, no clock.

use std::collections::{BTreeMap, BTreeSet};

use sds_core::{CertifiedKey, Input, UnixTime};

use super::*;

/// A fake world: what exists, and what the session watches.
#[derive(Default)]
struct World {
    secrets: BTreeMap<SecretName, Arc<Secret>>,
    watched: BTreeSet<SecretName>,
}

impl Subscriptions for World {
    fn subscribe(&mut self, name: &SecretName) -> Result<Option<Arc<Secret>>, Refusal> {
        self.watched.insert(name.clone());
        Ok(self.secrets.get(name).cloned())
    }
    fn unsubscribe(&mut self, name: &SecretName) {
        self.watched.remove(name);
    }
}

fn name(n: &str) -> SecretName {
    SecretName::new(n).expect("valid name")
}

/// A distinct, valid self-signed credential for `cn`.
fn secret(cn: &str) -> Arc<Secret> {
    let key = rcgen::KeyPair::generate().expect("keygen");
    let cert = rcgen::CertificateParams::new(vec![cn.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let parsed = CertifiedKey::from_pem(
        &name(cn),
        Input {
            location: "test.crt",
            bytes: cert_pem.as_bytes(),
        },
        Input {
            location: "test.key",
            bytes: key_pem.as_bytes(),
        },
        UnixTime::now(),
    )
    .expect("valid credential");
    Arc::new(Secret::from(parsed))
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn sotw<'a>(names: &'a [String], version: &'a str, nonce: &'a str) -> SotwRequest<'a> {
    SotwRequest {
        version_info: version,
        resource_names: names,
        type_url: SECRET_TYPE_URL,
        response_nonce: nonce,
        error_detail: None,
    }
}

fn nack() -> Option<Rejection> {
    Some(Rejection {
        code: 13,
        message: "Failed to load private key".to_owned(),
    })
}

fn sent_names(r: &SotwResponse) -> Vec<&str> {
    r.resources.iter().map(|(n, _)| n.as_str()).collect()
}

// === state of the world ===

#[test]
fn sotw_first_request_ack_nack_stale() {
    let a = secret("a");
    let mut world = World::default();
    world.secrets.insert(name("a"), a.clone());
    let mut s = Sotw::default();
    let req_names = names(&["a"]);

    // First request: answered with the secret's own version.
    let (ack, resp) = s
        .on_request(&sotw(&req_names, "", ""), &mut world)
        .expect("ok");
    assert_eq!(ack, Ack::None);
    let resp = resp.expect("first request is answered");
    assert_eq!(sent_names(&resp), ["a"]);
    assert_eq!(resp.version.to_string(), a.version().to_string());
    assert!(world.watched.contains("a"));

    // ACK: nothing to send.
    let (ack, resp) = s
        .on_request(
            &sotw(
                &req_names,
                &resp.version.to_string(),
                &resp.nonce.to_string(),
            ),
            &mut world,
        )
        .expect("ok");
    assert!(matches!(ack, Ack::Acked { .. }));
    assert!(resp.is_none());

    // A change is pushed with a new nonce.
    let a2 = secret("a");
    s.on_change(&name("a"), Some(a2.clone()));
    let pushed = s.take_response().expect("change is pushed");
    assert_eq!(pushed.version.to_string(), a2.version().to_string());

    // NACK of that push: recorded, never resent.
    let accepted = a.version().to_string();
    let pushed_nonce = pushed.nonce.to_string();
    let mut req = sotw(&req_names, &accepted, &pushed_nonce);
    req.error_detail = nack();
    let (ack, resp) = s.on_request(&req, &mut world).expect("ok");
    match ack {
        Ack::Nacked {
            version, rejection, ..
        } => {
            assert_eq!(version, a2.version().to_string());
            assert_eq!(rejection.code, 13);
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    assert!(resp.is_none(), "a NACK must not cause a resend");
    // The same content woken again (e.g. an identical re-publish) is not resent either.
    s.on_change(&name("a"), Some(a2.clone()));
    assert!(s.take_response().is_none());

    // Stale nonce: ignored entirely, even if it changes the names.
    let other = names(&["a", "b"]);
    let (ack, resp) = s
        .on_request(&sotw(&other, "", "0"), &mut world)
        .expect("ok");
    assert!(matches!(ack, Ack::Stale { .. }));
    assert!(resp.is_none());
    assert!(!world.watched.contains("b"));

    // The next change after a NACK is sent as usual.
    let a3 = secret("a");
    s.on_change(&name("a"), Some(a3.clone()));
    assert_eq!(
        s.take_response().expect("new version").version.to_string(),
        a3.version().to_string()
    );
}

#[test]
fn sotw_missing_secret_is_held_then_sent() {
    let mut world = World::default();
    let mut s = Sotw::default();
    let req_names = names(&["later"]);
    let (_, resp) = s
        .on_request(&sotw(&req_names, "", ""), &mut world)
        .expect("ok");
    assert!(resp.is_none(), "a missing secret is held, without an error");
    assert!(world.watched.contains("later"));
    // A removal of something never sent sends nothing.
    s.on_change(&name("later"), None);
    assert!(s.take_response().is_none());
    let l = secret("later");
    s.on_change(&name("later"), Some(l.clone()));
    let resp = s.take_response().expect("sent when it appears");
    assert_eq!(sent_names(&resp), ["later"]);
}

#[test]
fn sotw_reconnect_with_old_version_is_answered() {
    let a = secret("a");
    let mut world = World::default();
    world.secrets.insert(name("a"), a.clone());
    let req_names = names(&["a"]);
    for (version, nonce) in [
        // Same content, earlier server instance: same version, answered anyway.
        (a.version().to_string(), ""),
        // A version this server never produced.
        ("2019-01-01T00:00:00Z/7".to_owned(), ""),
        // A nonce from the previous stream: meaningless on this one.
        (a.version().to_string(), "42"),
    ] {
        let mut s = Sotw::default();
        let (ack, resp) = s
            .on_request(&sotw(&req_names, &version, nonce), &mut world)
            .expect("ok");
        assert_eq!(ack, Ack::None, "{version} {nonce}");
        assert!(
            resp.is_some(),
            "reconnect ({version:?}, {nonce:?}) is answered"
        );
    }
}

#[test]
fn sotw_subscribe_unsubscribe_and_many_names() {
    let (a, b) = (secret("a"), secret("b"));
    let mut world = World::default();
    world.secrets.insert(name("a"), a.clone());
    world.secrets.insert(name("b"), b.clone());
    let mut s = Sotw::default();

    let one = names(&["a"]);
    let resp = s
        .on_request(&sotw(&one, "", ""), &mut world)
        .expect("ok")
        .1
        .expect("sent");
    // Adding a name sends the full subscribed set.
    let two = names(&["a", "b"]);
    let resp = s
        .on_request(
            &sotw(&two, &resp.version.to_string(), &resp.nonce.to_string()),
            &mut world,
        )
        .expect("ok")
        .1
        .expect("added name is sent");
    assert_eq!(sent_names(&resp), ["a", "b"]);
    assert_ne!(resp.version.to_string(), a.version().to_string());

    // A change of one name sends both: responses carry every subscribed secret.
    let b2 = secret("b");
    s.on_change(&name("b"), Some(b2));
    let resp = s.take_response().expect("change");
    assert_eq!(sent_names(&resp), ["a", "b"]);

    // `a` removed at the source: not resent on its own, but kept in later responses.
    s.on_change(&name("a"), None);
    assert!(s.take_response().is_none());
    s.on_change(&name("b"), Some(secret("b")));
    let resp = s.take_response().expect("change");
    assert_eq!(
        sent_names(&resp),
        ["a", "b"],
        "a watched secret never vanishes"
    );

    // Dropping a name unsubscribes without a response.
    let (_, none) = s
        .on_request(
            &sotw(&one, &resp.version.to_string(), &resp.nonce.to_string()),
            &mut world,
        )
        .expect("ok");
    assert!(none.is_none());
    assert!(!world.watched.contains("b"));
    s.on_change(&name("b"), Some(secret("b")));
    assert!(
        s.take_response().is_none(),
        "unsubscribed names are not pushed"
    );

    // Empty names: unsubscribe from everything (no wildcard for SDS).
    let empty = names(&[]);
    let (_, none) = s
        .on_request(
            &sotw(&empty, &resp.version.to_string(), &resp.nonce.to_string()),
            &mut world,
        )
        .expect("ok");
    assert!(none.is_none());
    assert!(world.watched.is_empty());
}

#[test]
fn sotw_refusals() {
    let mut world = World::default();
    let mut s = Sotw::default();
    let n = names(&["a"]);
    let mut req = sotw(&n, "", "");
    req.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    assert!(matches!(
        s.on_request(&req, &mut world),
        Err(Refusal::WrongType(_))
    ));
    let bad = names(&["has space"]);
    assert!(matches!(
        s.on_request(&sotw(&bad, "", ""), &mut world),
        Err(Refusal::InvalidName { .. })
    ));
}

// === delta ===

fn delta<'a>(sub: &'a [String], unsub: &'a [String], nonce: &'a str) -> DeltaRequest<'a> {
    DeltaRequest {
        type_url: SECRET_TYPE_URL,
        subscribe: sub,
        unsubscribe: unsub,
        initial_resource_versions: Vec::new(),
        response_nonce: nonce,
        error_detail: None,
    }
}

fn delta_names(r: &DeltaResponse) -> Vec<&str> {
    r.resources.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn delta_subscribe_ack_nack_change() {
    let a = secret("a");
    let mut world = World::default();
    world.secrets.insert(name("a"), a.clone());
    let mut d = Delta::default();
    let (sub, none) = (names(&["a", "missing"]), names(&[]));

    let (ack, resp) = d
        .on_request(&delta(&sub, &none, ""), &mut world)
        .expect("ok");
    assert_eq!(ack, Ack::None);
    let resp = resp.expect("existing names are sent");
    assert_eq!(delta_names(&resp), ["a"]);
    assert!(resp.removed.is_empty());

    let (ack, resp2) = d
        .on_request(&delta(&none, &none, &resp.nonce.to_string()), &mut world)
        .expect("ok");
    assert!(matches!(ack, Ack::Acked { .. }));
    assert!(resp2.is_none());

    // The missing one appears: only it is sent.
    d.on_change(&name("missing"), Some(secret("missing")));
    let resp = d.take_response().expect("appeared");
    assert_eq!(delta_names(&resp), ["missing"]);

    // NACK: no resend.
    let resp_nonce = resp.nonce.to_string();
    let mut req = delta(&none, &none, &resp_nonce);
    req.error_detail = nack();
    let (ack, again) = d.on_request(&req, &mut world).expect("ok");
    assert!(matches!(ack, Ack::Nacked { .. }), "{ack:?}");
    assert!(again.is_none());

    // Stale nonce: reported, but subscription changes still apply.
    let unsub = names(&["missing"]);
    let (ack, _) = d
        .on_request(&delta(&none, &unsub, "999"), &mut world)
        .expect("ok");
    assert!(matches!(ack, Ack::Stale { .. }));
    assert!(!world.watched.contains("missing"));
    d.on_change(&name("missing"), Some(secret("missing")));
    assert!(d.take_response().is_none(), "unsubscribed");

    // Removal at the source is reported in removed_resources.
    d.on_change(&name("a"), None);
    let resp = d.take_response().expect("removal");
    assert!(resp.resources.is_empty());
    assert_eq!(resp.removed, [name("a")]);
    // ... and a reappearance is sent again.
    d.on_change(&name("a"), Some(a.clone()));
    assert_eq!(delta_names(&d.take_response().expect("back")), ["a"]);
}

#[test]
fn delta_subscribe_is_must_send_despite_initial_versions() {
    let a = secret("a");
    let mut world = World::default();
    world.secrets.insert(name("a"), a.clone());
    let mut d = Delta::default();
    let (sub, none) = (names(&["a"]), names(&[]));
    let version = a.version().to_string();
    let mut req = delta(&sub, &none, "");
    req.initial_resource_versions = vec![("a", version.as_str())];
    let resp = d.on_request(&req, &mut world).expect("ok").1;
    assert_eq!(delta_names(&resp.expect("must send")), ["a"]);
    // The same content again: nothing new to send.
    d.on_change(&name("a"), Some(a));
    assert!(d.take_response().is_none());
}
