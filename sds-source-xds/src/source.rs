//! [`XdsSource`]: the builder and its [`SecretSource`] implementation.

use std::{collections::BTreeSet, fmt, path::PathBuf, sync::Arc};

use futures_core::Stream;
use futures_util::stream;
use rustls::ClientConfig;
use sds_core::{SecretName, SecretSource, Update};
use sds_proto::envoy::config::core::v3::Node;
use tonic::transport::Uri;

use crate::{
    Backoff, Error,
    connect::Target,
    session::{Delta, Sotw, Subscription},
    stream::{Client, Run, Worker},
};

/// Which xDS protocol variant to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Api {
    /// State of the world (`StreamSecrets`): every response carries every secret of the
    /// stream. What Envoy uses by default, and what every SDS server implements.
    #[default]
    Sotw,
    /// Delta (`DeltaSecrets`): one stream for all names; responses carry changes and removals.
    Delta,
}

/// How many state-of-the-world streams to open. Delta always uses one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Streams {
    /// One stream per name, as Envoy does (some servers, e.g. older Istio agents, expect it).
    #[default]
    PerName,
    /// All names on one stream.
    One,
}

/// Another SDS server as a [`SecretSource`] (see the [crate docs](crate)).
pub struct XdsSource {
    target: Target,
    endpoint: Arc<str>,
    names: BTreeSet<SecretName>,
    node: Node,
    api: Api,
    streams: Streams,
    backoff: Backoff,
    max_message_size: usize,
}

// === impl XdsSource ===

impl XdsSource {
    /// Largest response accepted by default, in bytes (4 MiB, gRPC's usual limit).
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

    /// The node id and cluster sent by default.
    pub const DEFAULT_NODE: &str = "sds-source-xds";

    /// A source for the server listening on the Unix socket at `path` (the Istio agent's
    /// `/var/run/secrets/workload-spiffe-uds/socket`, SPIRE's `/run/spire/sockets/agent.sock`).
    #[cfg(unix)]
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let endpoint = Arc::from(format!("unix:{}", path.display()));
        Self::with_target(Target::Unix(path), endpoint)
    }

    /// A source for the server at `uri`: `http://host:port`, or `https://host:port` with
    /// [`XdsSource::tls`].
    pub fn tcp(uri: impl AsRef<str>) -> Result<Self, Error> {
        let given = uri.as_ref();
        // Never echo a password: refused before the URI is shown anywhere.
        let authority = given.split_once("://").map_or(given, |(_, rest)| rest);
        let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(Error::InvalidEndpoint {
                endpoint: "(a URI with credentials, not shown)".to_owned(),
                problem: "credentials in the URI are not supported",
            });
        }
        let invalid = |problem| Error::InvalidEndpoint {
            endpoint: sds_core::Untrusted::new(given, 256).to_string(),
            problem,
        };
        let uri: Uri = given.parse().map_err(|_| invalid("not a valid URI"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(invalid("the scheme must be `http` or `https`")),
        }
        if uri.host().is_none() {
            return Err(invalid("no host"));
        }
        let endpoint = Arc::from(uri.to_string());
        Ok(Self::with_target(Target::Tcp { uri, tls: None }, endpoint))
    }

    fn with_target(target: Target, endpoint: Arc<str>) -> Self {
        Self {
            target,
            endpoint,
            names: BTreeSet::new(),
            node: Node {
                id: Self::DEFAULT_NODE.to_owned(),
                cluster: Self::DEFAULT_NODE.to_owned(),
                user_agent_name: Self::DEFAULT_NODE.to_owned(),
            },
            api: Api::default(),
            streams: Streams::default(),
            backoff: Backoff::default(),
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// Connects with TLS (for an `https` endpoint; ignored for a Unix socket). ALPN `h2` is
    /// added to `config` if it offers no protocol.
    pub fn tls(mut self, mut config: ClientConfig) -> Self {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = vec![b"h2".to_vec()];
        }
        if let Target::Tcp { tls, .. } = &mut self.target {
            *tls = Some(Arc::new(config));
        }
        self
    }

    /// Adds the secret names to subscribe to. They are opaque to this source (SPIRE's
    /// `default`, `ROOTCA`, `ALL`, `spiffe://example.org`, Istio's `kubernetes://ns/name`) and
    /// served under the same names. A name is refused only if [`SecretName::new`] refuses it.
    pub fn names<I>(mut self, names: I) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for name in names {
            let name = SecretName::new(name).map_err(|source| Error::InvalidName {
                endpoint: self.endpoint.to_string(),
                source,
            })?;
            self.names.insert(name);
        }
        Ok(self)
    }

    /// Sets the node id and cluster sent on the first request of every stream
    /// ([`XdsSource::DEFAULT_NODE`] for both by default).
    pub fn node(mut self, id: impl Into<String>, cluster: impl Into<String>) -> Self {
        self.node.id = id.into();
        self.node.cluster = cluster.into();
        self
    }

    /// Sets the protocol variant ([`Api::Sotw`] by default).
    pub fn api(mut self, api: Api) -> Self {
        self.api = api;
        self
    }

    /// Sets how many state-of-the-world streams to open ([`Streams::PerName`] by default).
    pub fn streams(mut self, streams: Streams) -> Self {
        self.streams = streams;
        self
    }

    /// Sets the reconnection backoff ([`Backoff::DEFAULT`] by default).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the largest response accepted, in bytes
    /// ([`XdsSource::DEFAULT_MAX_MESSAGE_SIZE`] by default). A larger one fails the stream,
    /// which is then reopened.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The configuration problem that stops the source, if any.
    fn check(&self) -> Result<(), Error> {
        if self.names.is_empty() {
            return Err(Error::NoNames {
                endpoint: self.endpoint.to_string(),
            });
        }
        if let Target::Tcp { uri, tls } = &self.target {
            let invalid = |problem| Error::InvalidEndpoint {
                endpoint: self.endpoint.to_string(),
                problem,
            };
            match (uri.scheme_str(), tls) {
                (Some("https"), None) => {
                    return Err(invalid(
                        "`https` needs a TLS configuration (`XdsSource::tls`)",
                    ));
                }
                (Some("http"), Some(_)) => {
                    return Err(invalid(
                        "a TLS configuration was given for an `http` endpoint",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Creates the channel and the workers. Runs inside the runtime that polls the stream.
    fn start(self) -> Run {
        let client =
            Client::new(self.target.channel()).max_decoding_message_size(self.max_message_size);
        let subscription = |names: BTreeSet<SecretName>| Subscription {
            names,
            node: self.node.clone(),
            origin: Arc::from(format!("sds {}", self.endpoint)),
        };
        let worker = |index, names| {
            let subscription = subscription(names);
            let secret = subscription.single().cloned();
            let (client, endpoint) = (client.clone(), Arc::clone(&self.endpoint));
            match self.api {
                Api::Delta => Worker::new(
                    index,
                    Delta::new(subscription),
                    client,
                    endpoint,
                    secret,
                    self.backoff,
                )
                .into_stream(),
                Api::Sotw => Worker::new(
                    index,
                    Sotw::new(subscription),
                    client,
                    endpoint,
                    secret,
                    self.backoff,
                )
                .into_stream(),
            }
        };
        let workers = match (self.api, self.streams) {
            (Api::Sotw, Streams::PerName) => self
                .names
                .iter()
                .enumerate()
                .map(|(index, name)| worker(index, BTreeSet::from([name.clone()])))
                .collect(),
            _ => vec![worker(0, self.names.clone())],
        };
        Run::new(workers)
    }
}

impl fmt::Debug for XdsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsSource")
            .field("endpoint", &self.endpoint)
            .field(
                "tls",
                &matches!(self.target, Target::Tcp { tls: Some(_), .. }),
            )
            .field("names", &self.names)
            .field("node", &(&self.node.id, &self.node.cluster))
            .field("api", &self.api)
            .field("streams", &self.streams)
            .field("backoff", &self.backoff)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl SecretSource for XdsSource {
    type Error = Error;

    /// Subscribes to the names. Yields a complete update after every response (each name as
    /// last received: valid, or rejected and NACKed), and an `Err` item for every connection
    /// failure, after which the failed stream is reopened with backoff. A configuration error
    /// ([`Error::NoNames`], [`Error::InvalidEndpoint`]) is the only item, and the stream ends.
    fn into_stream(self) -> impl Stream<Item = Result<Update, Error>> + Send + 'static {
        stream::unfold(State::Start(Box::new(self)), |state| async move {
            let mut run = match state {
                // The channel is created on the first poll, in the runtime that polls.
                State::Start(source) => match source.check() {
                    Ok(()) => source.start(),
                    Err(error) => return Some((Err(error), State::Done)),
                },
                State::Running(run) => run,
                State::Done => return None,
            };
            let item = run.next().await?;
            Some((item, State::Running(run)))
        })
    }
}

/// The state of the stream [`XdsSource::into_stream`] returns.
enum State {
    Start(Box<XdsSource>),
    Running(Run),
    Done,
}
