//! A Kubernetes Secret mounted as a volume gives exactly what the same Secret gives through the
//! API, key for key: the same table of cases runs through `sds-source-fs` (a kubelet-style
//! volume per Secret) and `sds-source-k8s` (the Secrets in the project's real-protocol API
//! server), and each name serves the same version, or is rejected for the same kind of
//! problem, or is absent from both.
//!
//! Which keys win is written once, in `sds_core::layout`; this test proves both sources use it
//! the same way (empty keys, lone keys, CRLs, OCSP staples, keys that are not a credential).

use std::{sync::Arc, time::Duration};

use sds_core::{CertifiedKey, Input, Secret, SecretName, Snapshot, TrustBundle, UnixTime};
use sds_source_k8s::{K8sSource, Scope};
use sds_test_apiserver::{Access, ApiServer, Secret as KubeSecret};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    kubelet::KubeletVolume,
    ocsp::OcspBuilder,
};
use tokio::time::timeout;

const NS: &str = "istio-system";
const ADMIN: &str = "admin";
const WAIT: Duration = Duration::from_secs(30);

/// What a name must give, in both sources.
#[derive(Clone, Debug)]
enum Expect {
    /// Nothing: the name is not served, nor rejected.
    Absent,
    /// The pair built from these inputs (chain, key, optional staple).
    Pair(&'static str, &'static str, Option<&'static str>),
    /// The CA bundle built from these inputs (CA, optional CRL).
    Ca(&'static str, Option<&'static str>),
    /// A rejection of this kind (the `ErrorKind` variant's name).
    Rejected(&'static str),
}

/// One Secret: its keys (name, input), and what `<name>` and `<name>-cacert` must give.
struct Case {
    keys: &'static [(&'static str, &'static str)],
    own: Expect,
    cacert: Expect,
}

use Expect::*;

const CASES: &[Case] = &[
    // The TLS pair alone; the generic pair alone; both (generic wins).
    Case {
        keys: &[("tls.crt", "a.chain"), ("tls.key", "a.key")],
        own: Pair("a.chain", "a.key", None),
        cacert: Absent,
    },
    Case {
        keys: &[("cert", "a.chain"), ("key", "a.key")],
        own: Pair("a.chain", "a.key", None),
        cacert: Absent,
    },
    Case {
        keys: &[
            ("cert", "a.chain"),
            ("key", "a.key"),
            ("tls.crt", "b.chain"),
            ("tls.key", "b.key"),
        ],
        own: Pair("a.chain", "a.key", None),
        cacert: Absent,
    },
    // Empty generic keys lose to a complete TLS pair (Istio's `hasValue`).
    Case {
        keys: &[
            ("cert", ""),
            ("key", ""),
            ("tls.crt", "b.chain"),
            ("tls.key", "b.key"),
        ],
        own: Pair("b.chain", "b.key", None),
        cacert: Absent,
    },
    Case {
        keys: &[
            ("cert", "a.chain"),
            ("key", ""),
            ("tls.crt", "b.chain"),
            ("tls.key", "b.key"),
        ],
        own: Pair("b.chain", "b.key", None),
        cacert: Absent,
    },
    // Nothing better than an empty pair: rejected as empty.
    Case {
        keys: &[("tls.crt", ""), ("tls.key", "")],
        own: Rejected("EmptyInput"),
        cacert: Absent,
    },
    // A lone key.
    Case {
        keys: &[("tls.crt", "a.chain")],
        own: Rejected("MissingInput"),
        cacert: Absent,
    },
    Case {
        keys: &[("key", "a.key"), ("ca.crt", "ca1")],
        own: Rejected("MissingInput"),
        cacert: Ca("ca1", None),
    },
    // A pair and its CA.
    Case {
        keys: &[
            ("tls.crt", "a.chain"),
            ("tls.key", "a.key"),
            ("ca.crt", "ca1"),
        ],
        own: Pair("a.chain", "a.key", None),
        cacert: Ca("ca1", None),
    },
    // A CA alone is served under both names.
    Case {
        keys: &[("ca.crt", "ca1")],
        own: Ca("ca1", None),
        cacert: Ca("ca1", None),
    },
    Case {
        keys: &[("cacert", "ca1"), ("ca.crt", "ca2")],
        own: Ca("ca1", None),
        cacert: Ca("ca1", None),
    },
    Case {
        keys: &[("cacert", ""), ("ca.crt", "ca2")],
        own: Ca("ca2", None),
        cacert: Ca("ca2", None),
    },
    Case {
        keys: &[("cacert", "")],
        own: Rejected("EmptyInput"),
        cacert: Rejected("EmptyInput"),
    },
    // A CRL goes with its CA, else the other is taken; a CRL alone is incomplete.
    Case {
        keys: &[("ca.crt", "ca1"), ("ca.crl", "crl1"), ("crl", "crl1b")],
        own: Ca("ca1", Some("crl1")),
        cacert: Ca("ca1", Some("crl1")),
    },
    Case {
        keys: &[("ca.crt", "ca1"), ("crl", "crl1")],
        own: Ca("ca1", Some("crl1")),
        cacert: Ca("ca1", Some("crl1")),
    },
    Case {
        keys: &[("crl", "crl1")],
        own: Rejected("MissingInput"),
        cacert: Rejected("MissingInput"),
    },
    // Bad inputs.
    Case {
        keys: &[("tls.crt", "garbage"), ("tls.key", "a.key")],
        own: Rejected("MissingPemBlock"),
        cacert: Absent,
    },
    Case {
        keys: &[("tls.crt", "a.chain"), ("tls.key", "b.key")],
        own: Rejected("KeyMismatch"),
        cacert: Absent,
    },
    // OCSP staples go with the pair; an empty one is no staple; one for another leaf is refused.
    Case {
        keys: &[
            ("tls.crt", "a.chain"),
            ("tls.key", "a.key"),
            ("tls.ocsp-staple", "a.staple"),
        ],
        own: Pair("a.chain", "a.key", Some("a.staple")),
        cacert: Absent,
    },
    Case {
        keys: &[
            ("cert", "a.chain"),
            ("key", "a.key"),
            ("tls.ocsp-staple", "a.staple"),
        ],
        own: Pair("a.chain", "a.key", Some("a.staple")),
        cacert: Absent,
    },
    Case {
        keys: &[
            ("tls.crt", "a.chain"),
            ("tls.key", "a.key"),
            ("tls.ocsp-staple", ""),
        ],
        own: Pair("a.chain", "a.key", None),
        cacert: Absent,
    },
    Case {
        keys: &[
            ("tls.crt", "a.chain"),
            ("tls.key", "a.key"),
            ("tls.ocsp-staple", "b.staple"),
        ],
        own: Rejected("OcspStapleMismatch"),
        cacert: Absent,
    },
    Case {
        keys: &[
            ("tls.crt", "a.chain"),
            ("tls.key", "a.key"),
            ("tls.ocsp-staple", "garbage"),
        ],
        own: Rejected("InvalidOcspStaple"),
        cacert: Absent,
    },
    // Not a credential: no known key, or a staple alone.
    Case {
        keys: &[("username", "u"), ("password", "p")],
        own: Absent,
        cacert: Absent,
    },
    Case {
        keys: &[("tls.ocsp-staple", "a.staple")],
        own: Absent,
        cacert: Absent,
    },
];

/// The inputs the cases name.
struct Inputs {
    a: Leaf,
    b: Leaf,
    a_staple: Vec<u8>,
    b_staple: Vec<u8>,
    ca1: String,
    ca2: String,
    crl1: String,
    crl1b: String,
}

impl Inputs {
    fn new() -> Self {
        let root = Ca::new("Parity Root");
        let other = Ca::new("Parity Other Root");
        let a = root.issue(
            &["a.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        );
        let b = root.issue(&["b.example.com"], KeyKind::EcP256Sec1, Validity::current());
        let revoked = root.issue(
            &["revoked.example.com"],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        );
        Inputs {
            a_staple: OcspBuilder::new(&root, &a).der(),
            b_staple: OcspBuilder::new(&root, &b).der(),
            crl1: root.crl().pem(),
            crl1b: root.crl().revoke(&revoked).pem(),
            ca1: root.cert_pem().to_owned(),
            ca2: other.cert_pem().to_owned(),
            a,
            b,
        }
    }

    fn bytes(&self, input: &str) -> Vec<u8> {
        match input {
            "a.chain" => self.a.chain_pem.clone().into_bytes(),
            "a.key" => self.a.key_pem.clone().into_bytes(),
            "b.chain" => self.b.chain_pem.clone().into_bytes(),
            "b.key" => self.b.key_pem.clone().into_bytes(),
            "a.staple" => self.a_staple.clone(),
            "b.staple" => self.b_staple.clone(),
            "ca1" => self.ca1.clone().into_bytes(),
            "ca2" => self.ca2.clone().into_bytes(),
            "crl1" => self.crl1.clone().into_bytes(),
            "crl1b" => self.crl1b.clone().into_bytes(),
            other => other.as_bytes().to_vec(),
        }
    }

    /// What `expect` is as a description both sources must match: the version of the secret
    /// built from the expected inputs, or the rejection's kind.
    fn describe(&self, name: &SecretName, expect: &Expect) -> String {
        let now = UnixTime::now();
        match expect {
            Absent => "absent".to_owned(),
            Rejected(kind) => format!("rejected {kind}"),
            Pair(chain, key, staple) => {
                let (chain, key) = (self.bytes(chain), self.bytes(key));
                let mut certified = CertifiedKey::from_pem(
                    name,
                    Input::new("chain", &chain),
                    Input::new("key", &key),
                    now,
                )
                .expect("the expected pair is valid");
                if let Some(staple) = staple {
                    let staple = self.bytes(staple);
                    certified = certified
                        .with_ocsp_staple(name, Input::new("staple", &staple))
                        .expect("the expected staple is valid");
                }
                describe_secret(&Secret::from(certified))
            }
            Ca(ca, crl) => {
                let ca = self.bytes(ca);
                let crl = crl.map(|crl| self.bytes(crl));
                let bundle = TrustBundle::from_pem(
                    name,
                    Input::new("ca", &ca),
                    crl.as_deref().map(|crl| Input::new("crl", crl)),
                    now,
                )
                .expect("the expected bundle is valid");
                describe_secret(&Secret::from(bundle))
            }
        }
    }
}

fn describe_secret(secret: &Secret) -> String {
    format!("{} {}", secret.kind(), secret.version())
}

/// What a snapshot gives under `name`.
fn given(snapshot: &Snapshot, name: &str) -> String {
    if let Some(secret) = snapshot.get(name) {
        return describe_secret(secret);
    }
    match snapshot.rejected().find(|(n, _)| n.as_str() == name) {
        Some((_, error)) => {
            let kind = error.kind().map(|k| format!("{k:?}")).unwrap_or_default();
            let variant: String = kind
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            format!("rejected {variant}")
        }
        None => "absent".to_owned(),
    }
}

async fn client(server: &ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(ADMIN, NS))
        .expect("a valid kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client config");
    kube::Client::try_from(config).expect("a client")
}

#[tokio::test]
async fn a_mounted_secret_gives_what_the_api_gives() {
    let inputs = Inputs::new();
    let volumes = tempfile::tempdir().expect("a temporary directory");
    let server = ApiServer::builder()
        .token(ADMIN, Access::all())
        .start()
        .await
        .expect("the test API server starts");
    for (i, case) in CASES.iter().enumerate() {
        let name = format!("case-{i:02}");
        let payload: Vec<(&str, Vec<u8>)> = case
            .keys
            .iter()
            .map(|(key, input)| (*key, inputs.bytes(input)))
            .collect();
        let mut volume = KubeletVolume::create(volumes.path().join(&name));
        let files: Vec<(&str, &[u8])> = payload.iter().map(|(k, v)| (*k, &v[..])).collect();
        volume.write(&files);
        let mut secret = KubeSecret::new(NS, &name);
        for (key, bytes) in payload {
            secret = secret.with_data(key, bytes);
        }
        server.create(secret).expect("created");
    }

    let from_files =
        sds_source_fs::scan(volumes.path(), UnixTime::now()).expect("the volumes are read");
    let from_files = Snapshot::build(None, from_files);
    let source = K8sSource::new(client(&server).await, Scope::Namespace(NS.into()));
    let (mut reader, driver) = sds_core::publish(source);
    let driver = tokio::spawn(driver);
    let from_api: Arc<Snapshot> = timeout(WAIT, reader.ready())
        .await
        .expect("the first snapshot in time")
        .expect("the source publishes");
    driver.abort();

    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let name = SecretName::new(format!("case-{i:02}")).expect("a valid name");
        for (name, expect) in [(name.clone(), &case.own), (name.cacert(), &case.cacert)] {
            let want = inputs.describe(&name, expect);
            let files = given(&from_files, name.as_str());
            let api = given(&from_api, name.as_str());
            if files != want || api != want {
                failures.push(format!(
                    "{name} ({:?}): want {want}, volume gives {files}, API gives {api}",
                    case.keys
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
