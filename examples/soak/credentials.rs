//! Where the soak writes its credentials (a directory, or Secrets of the test API server),
//! and the registry of every good pair it wrote: what a stream may be sent.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use parking_lot::Mutex;
use sds_test_apiserver::{ApiServer, Secret};
use sds_test_util::certs::{Ca, KeyKind, Leaf, Validity};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// Which good pair a name holds: the count of good pairs written for it before, from 0.
pub(crate) type Generation = u64;

/// Where credentials are written.
pub(crate) enum Store {
    /// `DIR/<name>/{cert,key}`, each file written by rename (the key first).
    Dir(PathBuf),
    /// `kubernetes.io/tls` Secrets in `namespace`, each written whole (`tls.crt`, `tls.key`).
    K8s { api: ApiServer, namespace: String },
}

/// The store, the CA, and every good pair written per name.
pub(crate) struct Credentials {
    store: Store,
    ca: Ca,
    names: Vec<String>,
    good: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// Leaf DER -> (name, generation, key DER).
    pairs: HashMap<Vec<u8>, Written>,
    /// The latest good generation per name.
    latest: HashMap<String, Generation>,
    /// The next generation per name.
    next: HashMap<String, Generation>,
}

struct Written {
    name: String,
    generation: Generation,
    key: Vec<u8>,
}

/// What a pushed `TlsCertificate` turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A good pair written for this name, of this generation.
    Good(Generation),
    /// Anything else: never written as a good pair for this name.
    Bad,
}

impl Credentials {
    /// Creates `count` credentials `cred-0 ...` in `store`, each with its first good pair.
    pub(crate) fn create(store: Store, count: usize) -> io::Result<Credentials> {
        if let Store::Dir(dir) = &store {
            fs::create_dir_all(dir)?;
            // Readable by the server when it runs as another user (see `server.rs`).
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        }
        let credentials = Credentials {
            store,
            ca: Ca::new("soak.example.com"),
            names: (0..count).map(|i| format!("cred-{i}")).collect(),
            good: Mutex::default(),
        };
        for name in &credentials.names {
            if let Store::Dir(dir) = &credentials.store {
                let path = dir.join(name);
                fs::create_dir_all(&path)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
            }
            credentials.rotate(name)?;
        }
        Ok(credentials)
    }

    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// Writes the key and/or the chain of `name`: in a directory the key first, each file by
    /// rename (a reload in between sees a half pair, to be held back); as a Secret, both at
    /// once, the other kept.
    fn put(&self, name: &str, key: Option<&str>, chain: Option<&str>) -> io::Result<()> {
        match &self.store {
            Store::Dir(dir) => {
                if let Some(key) = key {
                    write(&dir.join(name).join("key"), key)?;
                }
                if let Some(chain) = chain {
                    write(&dir.join(name).join("cert"), chain)?;
                }
                Ok(())
            }
            Store::K8s { api, namespace } => {
                let mut secret = api
                    .get(namespace, name)
                    .unwrap_or_else(|| Secret::new(namespace, name).with_type("kubernetes.io/tls"));
                if let Some(key) = key {
                    secret
                        .data
                        .insert("tls.key".to_owned(), key.as_bytes().to_vec());
                }
                if let Some(chain) = chain {
                    secret
                        .data
                        .insert("tls.crt".to_owned(), chain.as_bytes().to_vec());
                }
                api.apply(secret).map(drop).map_err(io::Error::other)
            }
        }
    }

    fn issue(&self, name: &str) -> Leaf {
        self.ca.issue(
            &[&format!("{name}.soak.example.com")],
            KeyKind::EcP256Pkcs8,
            Validity::current(),
        )
    }

    /// Writes a new good pair for `name`, the key then the chain, each by rename (as an
    /// operator replaces files; a reload in between sees a half pair, to be held back).
    ///
    /// If a file cannot be written (the directory is unreadable to the soak too), the pair is
    /// forgotten: the name's latest good pair is the one before.
    pub(crate) fn rotate(&self, name: &str) -> io::Result<()> {
        let leaf = self.issue(name);
        let previous = self.register(name, &leaf);
        let written = self.put(name, Some(&leaf.key_pem), Some(&leaf.chain_pem));
        if written.is_err() {
            let mut good = self.good.lock();
            match previous {
                Some(previous) => good.latest.insert(name.to_owned(), previous),
                None => good.latest.remove(name),
            };
        }
        written
    }

    /// Writes a new pair's chain only: the store holds a half pair (the new chain, the old
    /// key) until [`Credentials::complete`] writes its key.
    pub(crate) fn half(&self, name: &str) -> io::Result<Leaf> {
        let leaf = self.issue(name);
        self.register(name, &leaf);
        self.put(name, None, Some(&leaf.chain_pem))?;
        Ok(leaf)
    }

    /// Writes the key of a half pair.
    pub(crate) fn complete(&self, name: &str, leaf: &Leaf) -> io::Result<()> {
        self.put(name, Some(&leaf.key_pem), None)
    }

    /// Writes something that must never be served as `name`: a key that is not PEM, a key of
    /// another pair, or an expired certificate with its own key.
    pub(crate) fn spoil(&self, name: &str, how: Spoil) -> io::Result<()> {
        match how {
            Spoil::Garbage => self.put(
                name,
                Some("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"),
                None,
            ),
            Spoil::OtherKey => self.put(name, Some(&self.issue(name).key_pem), None),
            Spoil::Expired => {
                let leaf = self.ca.issue(
                    &[&format!("{name}.soak.example.com")],
                    KeyKind::EcP256Pkcs8,
                    Validity::expired(),
                );
                self.put(name, Some(&leaf.key_pem), Some(&leaf.chain_pem))
            }
        }
    }

    /// Records a good pair for `name` (before it is written: a stream may be sent it at
    /// once); returns the generation that was the latest.
    fn register(&self, name: &str, leaf: &Leaf) -> Option<Generation> {
        let der =
            leaf_der(leaf.chain_pem.as_bytes()).expect("sds-test-util issues PEM that parses");
        let key = key_der(leaf.key_pem.as_bytes()).expect("sds-test-util issues PEM that parses");
        let mut good = self.good.lock();
        let previous = good.latest.get(name).copied();
        // Generations only grow, even past a forgotten pair.
        let generation = good.next.entry(name.to_owned()).or_insert(0);
        let this = *generation;
        *generation += 1;
        good.latest.insert(name.to_owned(), this);
        good.pairs.insert(
            der,
            Written {
                name: name.to_owned(),
                generation: this,
                key,
            },
        );
        previous
    }

    /// Judges a pushed chain and key for `name`.
    pub(crate) fn judge(&self, name: &str, chain: &[u8], key: &[u8]) -> Verdict {
        let (Some(der), Some(key)) = (leaf_der(chain), key_der(key)) else {
            return Verdict::Bad;
        };
        let good = self.good.lock();
        match good.pairs.get(&der) {
            Some(w) if w.name == name && w.key == key => Verdict::Good(w.generation),
            _ => Verdict::Bad,
        }
    }

    /// The latest good generation of `name`.
    pub(crate) fn latest(&self, name: &str) -> Generation {
        self.good.lock().latest.get(name).copied().unwrap_or(0)
    }

    /// Makes the directory unreadable (`false`) or readable again.
    pub(crate) fn readable(&self, readable: bool) -> io::Result<()> {
        let Store::Dir(dir) = &self.store else {
            return Err(io::Error::other("only a directory can be made unreadable"));
        };
        let mode = if readable { 0o755 } else { 0o000 };
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
    }

    /// The test API server, for the Kubernetes faults.
    pub(crate) fn api(&self) -> io::Result<&ApiServer> {
        match &self.store {
            Store::K8s { api, .. } => Ok(api),
            Store::Dir(_) => Err(io::Error::other(
                "only the Kubernetes source has an API server",
            )),
        }
    }
}

/// How [`Credentials::spoil`] breaks a credential.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Spoil {
    Garbage,
    OtherKey,
    Expired,
}

fn leaf_der(chain: &[u8]) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(chain)
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

fn key_der(key: &[u8]) -> Option<Vec<u8>> {
    PrivateKeyDer::from_pem_slice(key)
        .ok()
        .map(|k| k.secret_der().to_vec())
}

/// Writes `path` by rename, readable by the server whichever user it runs as.
fn write(path: &Path, content: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, path)
}
