//! Table-driven tests of the protocol state machines: no network, no clock.

use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, SystemTime};

use sds_core::{CertifiedKey, Input, UnixTime};

use super::*;

/// A fake world: what exists, and what the session watches.
#[derive(Default)]
struct World {
    secrets: BTreeMap<SecretName, Arc<Secret>>,
    watched: BTreeSet<SecretName>,
    /// Every answer the session reported: name, version, ACKed.
    answers: Vec<(String, Version, bool)>,
}

impl Subscriptions for World {
    fn subscribe(&mut self, name: &SecretName) -> Result<Option<Arc<Secret>>, Refusal> {
        self.watched.insert(name.clone());
        Ok(self.secrets.get(name).cloned())
    }
    fn unsubscribe(&mut self, name: &SecretName) {
        self.watched.remove(name);
    }
    fn answered(&mut self, name: &SecretName, version: Version, accepted: bool) {
        self.answers
            .push((name.as_str().to_owned(), version, accepted));
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
        at: SystemTime::UNIX_EPOCH,
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
        at: SystemTime::UNIX_EPOCH,
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

// === what the client holds (the view behind `SdsService::clients`) ===

/// `(name, sent, acked, NACKed version, waiting since)` for each subscribed name.
type Row = (
    String,
    Option<Version>,
    Option<Version>,
    Option<Version>,
    Option<SystemTime>,
);

fn rows<'a>(view: impl Iterator<Item = NameView<'a>>) -> Vec<Row> {
    view.map(|v| {
        (
            v.name.as_str().to_owned(),
            v.sent,
            v.acked,
            v.nack.map(|n| n.version),
            v.waiting_since,
        )
    })
    .collect()
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn sotw_view_follows_sends_acks_and_nacks() {
    let (a1, a2) = (secret("a"), secret("a"));
    let (v1, v2) = (a1.version(), a2.version());
    let mut world = World::default();
    world.secrets.insert(name("a"), a1);
    let mut s = Sotw::default();
    let subscribed = names(&["a", "nope"]);

    let mut req = sotw(&subscribed, "", "");
    req.at = at(10);
    let first = s.on_request(&req, &mut world).expect("ok").1.expect("sent");
    assert_eq!(
        rows(s.view()),
        [
            ("a".to_owned(), Some(v1), None, None, None),
            ("nope".to_owned(), None, None, None, Some(at(10))),
        ]
    );

    let nonce = first.nonce.to_string();
    s.on_request(&sotw(&subscribed, "", &nonce), &mut world)
        .expect("ok");
    assert_eq!(world.answers, [("a".to_owned(), v1, true)]);
    assert_eq!(
        rows(s.view())[0],
        ("a".to_owned(), Some(v1), Some(v1), None, None)
    );

    // A rotation the client NACKs: sent v2, still ACKed v1, the NACK names v2.
    world.secrets.insert(name("a"), Arc::clone(&a2));
    s.on_change(&name("a"), Some(a2));
    let pushed = s.take_response().expect("pushed");
    let nonce = pushed.nonce.to_string();
    let mut nack_req = sotw(&subscribed, "", &nonce);
    nack_req.error_detail = Some(Rejection {
        code: 13,
        message: "Failed to load\nprivate key".to_owned(),
    });
    nack_req.at = at(20);
    s.on_request(&nack_req, &mut world).expect("ok");
    assert_eq!(world.answers[1], ("a".to_owned(), v2, false));
    assert_eq!(
        rows(s.view())[0],
        ("a".to_owned(), Some(v2), Some(v1), Some(v2), None)
    );
    let view: Vec<NameView<'_>> = s.view().collect();
    let nack = view[0].nack.expect("a NACK");
    assert_eq!(&*nack.message, "Failed to load\\nprivate key", "escaped");
    assert_eq!((nack.code, nack.at), (13, at(20)));

    // Unsubscribing forgets the name; subscribing again starts over.
    s.on_request(&sotw(&names(&["nope"]), "", &nonce), &mut world)
        .expect("ok");
    let mut again = sotw(&subscribed, "", &nonce);
    again.at = at(30);
    s.on_request(&again, &mut world).expect("ok");
    let resent = s.take_response();
    assert!(resent.is_none(), "the re-subscription was answered already");
    assert_eq!(
        rows(s.view()),
        [
            ("a".to_owned(), Some(v2), None, None, None),
            ("nope".to_owned(), None, None, None, Some(at(10))),
        ]
    );
}

#[test]
fn delta_view_maps_each_answer_to_what_its_response_carried() {
    let (a1, b1, a2, a3) = (secret("a"), secret("b"), secret("a"), secret("a"));
    let (va1, vb1, va2, va3) = (a1.version(), b1.version(), a2.version(), a3.version());
    let mut world = World::default();
    world.secrets.insert(name("a"), a1);
    let mut d = Delta::default();
    let none = names(&[]);

    let subscribed = names(&["a", "b", "nope"]);
    let mut req = delta(&subscribed, &none, "");
    req.at = at(5);
    let first = d.on_request(&req, &mut world).expect("ok").1.expect("a");
    d.on_request(&delta(&none, &none, &first.nonce.to_string()), &mut world)
        .expect("ok");
    assert_eq!(world.answers, [("a".to_owned(), va1, true)]);

    // b appears and a rotates before the client answers: an ACK of the later response
    // settles the earlier one too.
    d.on_change(&name("b"), Some(b1));
    let _second = d.take_response().expect("b");
    d.on_change(&name("a"), Some(a2));
    let third = d.take_response().expect("a again");
    assert_eq!(
        rows(d.view())[0],
        ("a".to_owned(), Some(va2), Some(va1), None, None)
    );
    d.on_request(&delta(&none, &none, &third.nonce.to_string()), &mut world)
        .expect("ok");
    assert_eq!(
        world.answers[1..],
        [("a".to_owned(), va2, true), ("b".to_owned(), vb1, true)]
    );
    assert_eq!(
        rows(d.view()),
        [
            ("a".to_owned(), Some(va2), Some(va2), None, None),
            ("b".to_owned(), Some(vb1), Some(vb1), None, None),
            ("nope".to_owned(), None, None, None, Some(at(5))),
        ]
    );

    // A NACK concerns only what its response carried.
    d.on_change(&name("a"), Some(a3));
    let fourth = d.take_response().expect("a rotated");
    let fourth_nonce = fourth.nonce.to_string();
    let mut nack_req = delta(&none, &none, &fourth_nonce);
    nack_req.error_detail = nack();
    d.on_request(&nack_req, &mut world).expect("ok");
    assert_eq!(world.answers[3], ("a".to_owned(), va3, false));
    assert_eq!(
        rows(d.view())[..2],
        [
            ("a".to_owned(), Some(va3), Some(va2), Some(va3), None),
            ("b".to_owned(), Some(vb1), Some(vb1), None, None),
        ]
    );

    // A later ACK of a response without `a` does not mark the NACKed version ACKed.
    d.on_change(&name("b"), Some(secret("b")));
    let fifth = d.take_response().expect("b again");
    d.on_request(&delta(&none, &none, &fifth.nonce.to_string()), &mut world)
        .expect("ok");
    assert_eq!(rows(d.view())[0].2, Some(va2));
    assert_eq!(world.answers.len(), 5);
}

#[test]
fn a_subscription_costs_little_per_name() {
    assert!(std::mem::size_of::<NameState>() <= 48);
}

#[test]
fn a_stream_keeps_one_nack_message_whatever_the_names_it_spreads_them_over() {
    let mut world = World::default();
    world.secrets.insert(name("a"), secret("a"));
    world.secrets.insert(name("b"), secret("b"));
    let mut d = Delta::default();
    let none = names(&[]);
    let nacked = |d: &mut Delta, world: &mut World, nonce: String, text: &str| {
        let mut req = delta(&none, &none, &nonce);
        req.error_detail = Some(Rejection {
            code: 13,
            message: text.to_owned(),
        });
        d.on_request(&req, world).expect("ok");
    };

    let a_only = names(&["a"]);
    let first = d
        .on_request(&delta(&a_only, &none, ""), &mut world)
        .expect("ok")
        .1
        .expect("a");
    nacked(&mut d, &mut world, first.nonce.to_string(), "bad a");
    let b_only = names(&["b"]);
    let second = d
        .on_request(&delta(&b_only, &none, ""), &mut world)
        .expect("ok")
        .1
        .expect("b");
    nacked(&mut d, &mut world, second.nonce.to_string(), "bad b");

    let messages: Vec<(String, String)> = d
        .view()
        .map(|v| {
            let nack = v.nack.expect("both NACKed");
            (v.name.to_string(), nack.message.to_string())
        })
        .collect();
    assert_eq!(
        messages,
        [
            ("a".to_owned(), String::new()),
            ("b".to_owned(), "bad b".to_owned())
        ],
        "only the latest NACK keeps its message"
    );
}
