//! [`K8sSource`]: Kubernetes Secrets, listed and watched, as a [`SecretSource`].

use std::{fmt, time::Duration};

use futures_core::Stream;
use futures_util::{
    StreamExt as _, future,
    stream::{self, BoxStream, SelectAll},
};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use sds_core::{SecretSource, UnixTime, Update};
use tokio::time::{Instant, sleep_until};

use crate::{
    Error, Scope,
    keys::{Lean, SecretId},
    store::{Change, Store},
};

/// Secrets that can never be credentials, filtered out by the API server (as istiod does):
/// Helm release records and legacy ServiceAccount tokens are the bulk of most clusters' Secrets.
const FIELD_SELECTOR: &str = "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

/// Kubernetes Secrets as credentials, with Istio's key names and resource names (see the
/// [crate docs](crate)).
///
/// As a [`SecretSource`], it lists the Secrets of its [`Scope`], then watches them, and yields
/// the complete set of credentials once every namespace has been listed, then again after every
/// change, debounced. Non-credential Secrets are not kept.
#[derive(Clone)]
pub struct K8sSource {
    client: Client,
    scope: Scope,
    default_namespace: Option<String>,
    debounce: Duration,
    page_size: u32,
}

// === impl K8sSource ===

impl K8sSource {
    /// How long the source waits after a change for more before it yields, by default.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

    /// How many Secrets one list request asks for, by default. Smaller than kube's and
    /// client-go's 500: a page of 500 Secrets of 10 KiB costs about 35 MiB more at the peak of
    /// a list than a page of 50 (see `examples/memory.rs`), for 10 times more round trips.
    pub const DEFAULT_PAGE_SIZE: u32 = 50;

    /// A source for the Secrets in `scope`, read with `client`. Nothing is requested before the
    /// stream is polled.
    ///
    /// Bare names (`name`, `kubernetes://name`) are those of the default namespace: the one of
    /// [`Scope::Namespace`], else the client's (from the kubeconfig or the pod's service
    /// account), unless set with [`K8sSource::default_namespace`].
    pub fn new(client: Client, scope: Scope) -> Self {
        Self {
            client,
            scope,
            default_namespace: None,
            debounce: Self::DEFAULT_DEBOUNCE,
            page_size: Self::DEFAULT_PAGE_SIZE,
        }
    }

    /// Sets the namespace whose Secrets are also served under bare names.
    pub fn default_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.default_namespace = Some(namespace.into());
        self
    }

    /// Sets how long the source collects changes after the first one before it yields an
    /// update ([`K8sSource::DEFAULT_DEBOUNCE`] by default): a `kubectl apply` of many Secrets
    /// gives one update. Zero yields after every event.
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Sets how many Secrets one list request asks for ([`K8sSource::DEFAULT_PAGE_SIZE`] by
    /// default, at least 1). Whole Secrets, including non-credential ones, are held only one
    /// page at a time, so this bounds the memory a (re-)list takes.
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// The namespace of bare names.
    fn bare_namespace(&self) -> String {
        match (&self.default_namespace, &self.scope) {
            (Some(namespace), _) | (None, Scope::Namespace(namespace)) => namespace.clone(),
            (None, _) => self.client.default_namespace().to_owned(),
        }
    }
}

impl fmt::Debug for K8sSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sSource")
            .field("scope", &self.scope)
            .field("default_namespace", &self.default_namespace)
            .field("debounce", &self.debounce)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl SecretSource for K8sSource {
    type Error = Error;

    /// Lists and watches the Secrets of the scope. The first item comes once every namespace
    /// has been listed; an `Err` item is ambient (the publisher keeps serving): the stream goes
    /// on, retrying with backoff. Dropping the stream closes the watches.
    fn into_stream(self) -> impl Stream<Item = Result<Update, Error>> + Send + 'static {
        let default_namespace = self.bare_namespace();
        let config = watcher::Config::default()
            .fields(FIELD_SELECTOR)
            .page_size(self.page_size);
        let watches = self.scope.watches();
        let store = Store::new(&default_namespace, watches.len());
        let events =
            stream::select_all(watches.into_iter().enumerate().map(|(index, namespace)| {
                watch(
                    &self.client,
                    index,
                    namespace,
                    &default_namespace,
                    config.clone(),
                )
            }));
        let run = Run {
            events,
            store,
            debounce: self.debounce,
            deadline: None,
            served: None,
            recheck: None,
        };
        stream::unfold(run, |mut run| async move {
            let item = run.next().await?;
            Some((item, run))
        })
    }
}

/// The changes of one watch, tagged with its index. Whole Secrets are reduced to their
/// credential keys here, as soon as they are decoded.
fn watch(
    client: &Client,
    index: usize,
    namespace: Option<String>,
    default_namespace: &str,
    config: watcher::Config,
) -> BoxStream<'static, Result<(usize, Change), Error>> {
    let api: Api<KubeSecret> = match &namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let fallback = namespace
        .clone()
        .unwrap_or_else(|| default_namespace.to_owned());
    watcher(api, config)
        .default_backoff()
        .filter_map(move |item| {
            let item = match item {
                Ok(event) => change(event, &fallback).map(|change| Ok((index, change))),
                Err(error) => Error::from_watcher(namespace.as_deref(), error).map(Err),
            };
            future::ready(item)
        })
        .boxed()
}

/// The [`Change`] a watcher event makes; `None` for an object without a name.
fn change(event: watcher::Event<KubeSecret>, namespace: &str) -> Option<Change> {
    Some(match event {
        watcher::Event::Init => Change::Relist,
        watcher::Event::InitApply(secret) => {
            Change::RelistItem(Lean::from_secret(secret, namespace)?)
        }
        watcher::Event::InitDone => Change::RelistDone,
        watcher::Event::Apply(secret) => Change::Apply(Lean::from_secret(secret, namespace)?),
        watcher::Event::Delete(secret) => {
            let name = secret.metadata.name?;
            let namespace = secret
                .metadata
                .namespace
                .unwrap_or_else(|| namespace.to_owned());
            Change::Delete(SecretId::new(namespace, name))
        }
    })
}

/// The state of a running [`K8sSource`].
struct Run {
    events: SelectAll<BoxStream<'static, Result<(usize, Change), Error>>>,
    store: Store,
    debounce: Duration,
    /// When the pending changes are yielded; `None` when nothing changed.
    deadline: Option<Instant>,
    /// Credential Secrets served and names rejected by the last update, to log only changes.
    served: Option<(usize, usize)>,
    /// When a certificate rejected as not valid yet becomes valid: the Secrets are parsed
    /// again then, though nothing changed in the cluster.
    recheck: Option<Instant>,
}

// === impl Run ===

impl Run {
    /// The next item: an update once the changes settle, or an ambient error at once.
    async fn next(&mut self) -> Option<Result<Update, Error>> {
        loop {
            let deadline = self.deadline;
            tokio::select! {
                item = self.events.next() => match item? {
                    Err(error) => return Some(Err(error)),
                    Ok((watch, change)) => {
                        if self.store.apply(watch, change) && self.deadline.is_none() {
                            self.deadline = Some(Instant::now() + self.debounce);
                        }
                    }
                },
                () = sleep_until(self.recheck.unwrap_or_else(Instant::now)), if self.recheck.is_some() => {
                    self.recheck = None;
                    tracing::debug!("parsing again: a rejected certificate's notBefore has passed");
                    self.deadline.get_or_insert_with(Instant::now);
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.deadline = None;
                    // The first update waits for every namespace; each list's end wakes us.
                    if self.store.is_listed() {
                        return self.update().await.map(Ok);
                    }
                }
            }
        }
    }

    /// Parses what changed on the blocking pool, then builds the complete update.
    async fn update(&mut self) -> Option<Update> {
        let jobs = self.store.jobs();
        if !jobs.is_empty() {
            let now = UnixTime::now();
            let parse = tokio::task::spawn_blocking(move || {
                jobs.into_iter().map(|job| job.run(now)).collect()
            });
            match parse.await {
                Ok(done) => self.store.finish(done),
                Err(error) => match error.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // The runtime is shutting down.
                    Err(_) => return None,
                },
            }
        }
        let update = self.store.update();
        self.recheck = update.recheck_at().map(|at| {
            let wait = at.as_secs().saturating_sub(UnixTime::now().as_secs());
            Instant::now() + Duration::from_secs(wait.saturating_add(1))
        });
        let served = (self.store.len(), update.len());
        if self.served != Some(served) {
            tracing::info!(
                secrets = served.0,
                names = served.1,
                "loaded credentials from Kubernetes Secrets"
            );
        }
        self.served = Some(served);
        Some(update)
    }
}
