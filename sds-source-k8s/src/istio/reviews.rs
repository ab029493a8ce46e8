//! SubjectAccessReviews: may a service account list the Secrets of its own namespace? Asked
//! once per service account at a time (concurrent askers share the review), and cached as
//! istiod caches the answers, in a cache of bounded size.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::{Api, Client, api::PostParams};
use parking_lot::Mutex;
use sds_core::Untrusted;
use tokio::time::{Instant, timeout_at};

use crate::{ApiError, istio::spiffe::ServiceAccount};

/// How long an allowance is cached: istiod's 5 minutes.
pub(crate) const ALLOWED_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a denial is cached: istiod's 1 minute.
pub(crate) const DENIED_TTL: Duration = Duration::from_secs(60);
/// How long a failed review (the API server unreachable, an error answer, a timeout) is
/// cached.
pub(crate) const FAILED_TTL: Duration = Duration::from_secs(5);
/// How long a review may take before it counts as failed.
pub(crate) const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// How many service accounts the cache holds at most.
pub(crate) const MAX_CACHED: usize = 10_000;

/// Most characters of the API server's reason (or evaluation error) in a denial.
const MAX_REASON_CHARS: usize = 256;

/// The answer about one service account.
#[derive(Clone, Debug)]
pub(crate) enum Verdict {
    /// It may list the Secrets of its namespace.
    Allowed,
    /// It may not, for this reason (the API server's `status.reason` and
    /// `status.evaluationError`, escaped and cut short).
    Denied(Arc<str>),
    /// The review failed, for this reason (escaped and cut short: the cache keeps only
    /// bounded text).
    Failed(Arc<str>),
}

/// Why a review has no answer.
#[derive(Debug)]
enum Failure {
    /// The request failed: unreachable, or an error status.
    Api(ApiError),
    /// The answer has no `status`.
    NoStatus,
    /// No answer within [`REVIEW_TIMEOUT`].
    TimedOut,
}

/// How reviews are asked.
#[cfg_attr(
    test,
    expect(clippy::large_enum_variant, reason = "one per policy, never moved")
)]
pub(crate) enum Reviewer {
    /// Through the API server: `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`.
    Api(Api<SubjectAccessReview>),
    /// A stand-in, for tests without a network.
    #[cfg(test)]
    Fake(FakeReview),
}

/// A stand-in for the API server: the answer about a service account.
#[cfg(test)]
pub(crate) type FakeReview =
    Arc<dyn Fn(&ServiceAccount) -> BoxFuture<'static, Verdict> + Send + Sync>;

/// The reviews asked and answered, per service account.
pub(crate) struct Reviews {
    reviewer: Reviewer,
    capacity: usize,
    cache: Mutex<Cache>,
}

/// The cache: at most `capacity` service accounts.
#[derive(Default)]
struct Cache {
    slots: HashMap<ServiceAccount, Slot>,
    /// The id of the next review, to tell a review's answer from a newer review's.
    next_id: u64,
}

enum Slot {
    /// A review in flight: everyone who asks meanwhile waits for its answer.
    Pending {
        id: u64,
        since: Instant,
        verdict: Shared<BoxFuture<'static, Verdict>>,
    },
    /// An answer, until `expires`.
    Decided {
        since: Instant,
        expires: Instant,
        verdict: Verdict,
    },
}

/// What the cache holds for a service account.
enum Lookup {
    Cached(Verdict),
    Wait(u64, Shared<BoxFuture<'static, Verdict>>),
}

// === impl Verdict ===

impl Verdict {
    /// How long it is cached.
    fn ttl(&self) -> Duration {
        match self {
            Verdict::Allowed => ALLOWED_TTL,
            Verdict::Denied(_) => DENIED_TTL,
            Verdict::Failed(_) => FAILED_TTL,
        }
    }

    /// The verdict the API server's `status` gives.
    fn from_status(status: &SubjectAccessReviewStatus) -> Self {
        if status.allowed {
            return Verdict::Allowed;
        }
        let reason = status
            .reason
            .as_deref()
            .filter(|r| !r.is_empty())
            .unwrap_or("no reason given");
        let mut text = Untrusted::new(reason, MAX_REASON_CHARS).to_string();
        if let Some(error) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
            text.push_str("; evaluation error: ");
            text.push_str(&Untrusted::new(error, MAX_REASON_CHARS).to_string());
        }
        Verdict::Denied(text.into())
    }
}

// === impl Failure ===

impl From<Failure> for Verdict {
    fn from(failure: Failure) -> Self {
        Verdict::Failed(failure.to_string().into())
    }
}

/// What went wrong, escaped; for a 403, the RBAC rule the server's own identity lacks.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Api(error) if error.is_forbidden() => write!(
                f,
                "{error} (the SDS server's own ServiceAccount needs a ClusterRole with \
                 apiGroups [\"authorization.k8s.io\"], resources [\"subjectaccessreviews\"], \
                 verbs [\"create\"])"
            ),
            Failure::Api(error) => write!(f, "{error}"),
            Failure::NoStatus => f.write_str("the API server's answer has no status"),
            Failure::TimedOut => write!(
                f,
                "the API server did not answer within {} s",
                REVIEW_TIMEOUT.as_secs()
            ),
        }
    }
}

// === impl Reviewer ===

impl Reviewer {
    /// Asks about `account`; a failure once `deadline` passes.
    fn review(&self, account: &ServiceAccount, deadline: Instant) -> BoxFuture<'static, Verdict> {
        let review = match self {
            Reviewer::Api(api) => ask(api.clone(), account).boxed(),
            #[cfg(test)]
            Reviewer::Fake(fake) => fake(account),
        };
        async move {
            timeout_at(deadline, review)
                .await
                .unwrap_or_else(|_| Failure::TimedOut.into())
        }
        .boxed()
    }
}

impl fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reviewer::Api(_) => f.write_str("Api"),
            #[cfg(test)]
            Reviewer::Fake(_) => f.write_str("Fake"),
        }
    }
}

/// istiod's review: may `system:serviceaccount:NS:SA` `list` `secrets` in `NS`?
fn ask(
    api: Api<SubjectAccessReview>,
    account: &ServiceAccount,
) -> impl Future<Output = Verdict> + use<> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(account.namespace.to_string()),
                verb: Some("list".to_owned()),
                resource: Some("secrets".to_owned()),
                ..ResourceAttributes::default()
            }),
            user: Some(account.username()),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    async move {
        match api.create(&PostParams::default(), &review).await {
            Ok(answer) => match &answer.status {
                Some(status) => Verdict::from_status(status),
                None => Failure::NoStatus.into(),
            },
            Err(error) => Failure::Api(ApiError::from_client(error)).into(),
        }
    }
}

// === impl Reviews ===

impl Reviews {
    /// Reviews through the API server `client` talks to.
    pub(crate) fn new(client: Client) -> Self {
        Self::with(Reviewer::Api(Api::all(client)), MAX_CACHED)
    }

    pub(crate) fn with(reviewer: Reviewer, capacity: usize) -> Self {
        Self {
            reviewer,
            capacity: capacity.max(1),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Whether `account` may list the Secrets of its namespace: the cached answer while it
    /// lasts, else the answer of the review in flight for it, else of a new review.
    pub(crate) async fn verdict(&self, account: &ServiceAccount) -> Verdict {
        match self.lookup(account) {
            Lookup::Cached(verdict) => verdict,
            Lookup::Wait(id, review) => {
                let verdict = review.await;
                self.settle(account, id, &verdict);
                verdict
            }
        }
    }

    /// How many service accounts the cache holds (answers, expired or not, and reviews in
    /// flight).
    pub(crate) fn len(&self) -> usize {
        self.cache.lock().slots.len()
    }

    fn lookup(&self, account: &ServiceAccount) -> Lookup {
        let now = Instant::now();
        let mut cache = self.cache.lock();
        match cache.slots.get(account) {
            Some(Slot::Decided {
                expires, verdict, ..
            }) if now < *expires => return Lookup::Cached(verdict.clone()),
            // A review whose askers all went away is taken up again by the next, until its
            // deadline: then it has failed, and a new one starts.
            Some(Slot::Pending { id, since, verdict }) if now < *since + REVIEW_TIMEOUT => {
                return Lookup::Wait(*id, verdict.clone());
            }
            Some(_) => {}
            None => cache.make_room(self.capacity, now),
        }
        let id = cache.next_id;
        cache.next_id += 1;
        let verdict = self.reviewer.review(account, now + REVIEW_TIMEOUT).shared();
        tracing::debug!(service_account = %account, "asking the API server (SubjectAccessReview)");
        cache.slots.insert(
            account.clone(),
            Slot::Pending {
                id,
                since: now,
                verdict: verdict.clone(),
            },
        );
        Lookup::Wait(id, verdict)
    }

    /// Caches the answer of review `id`, unless a newer review replaced it or the slot was
    /// evicted (the cache stays within its bound). The first asker to see it does; the rest
    /// find it done.
    fn settle(&self, account: &ServiceAccount, id: u64, verdict: &Verdict) {
        let now = Instant::now();
        let mut cache = self.cache.lock();
        let Some(slot) = cache.slots.get_mut(account) else {
            return;
        };
        if matches!(slot, Slot::Pending { id: pending, .. } if *pending == id) {
            tracing::debug!(service_account = %account, ?verdict, "SubjectAccessReview answered");
            *slot = Slot::Decided {
                since: now,
                expires: now + verdict.ttl(),
                verdict: verdict.clone(),
            };
        }
    }
}

impl fmt::Debug for Reviews {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reviews")
            .field("reviewer", &self.reviewer)
            .field("capacity", &self.capacity)
            .field("cached", &self.len())
            .finish()
    }
}

// === impl Cache ===

impl Cache {
    /// Makes room for one more service account: drops expired answers and abandoned reviews
    /// first, then the oldest entries.
    fn make_room(&mut self, capacity: usize, now: Instant) {
        if self.slots.len() < capacity {
            return;
        }
        self.slots.retain(|_, slot| !slot.is_stale(now));
        while self.slots.len() >= capacity {
            let oldest = self
                .slots
                .iter()
                .min_by_key(|(_, slot)| slot.since())
                .map(|(account, _)| account.clone());
            match oldest {
                Some(account) => self.slots.remove(&account),
                None => break,
            };
        }
    }
}

// === impl Slot ===

impl Slot {
    fn since(&self) -> Instant {
        match self {
            Slot::Pending { since, .. } | Slot::Decided { since, .. } => *since,
        }
    }

    /// An expired answer, or a review past its deadline.
    fn is_stale(&self, now: Instant) -> bool {
        match self {
            Slot::Pending { since, .. } => now >= *since + REVIEW_TIMEOUT,
            Slot::Decided { expires, .. } => now >= *expires,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future;

    use super::*;

    fn account(namespace: &str, name: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Reviews answered by `answer` after `delay`, counting them.
    fn fake(
        capacity: usize,
        delay: Duration,
        answer: impl Fn(&ServiceAccount) -> Verdict + Send + Sync + 'static,
    ) -> (Reviews, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let reviewer = Reviewer::Fake(Arc::new(move |account: &ServiceAccount| {
            count.fetch_add(1, Ordering::SeqCst);
            let verdict = answer(account);
            async move {
                tokio::time::sleep(delay).await;
                verdict
            }
            .boxed()
        }));
        (Reviews::with(reviewer, capacity), asked)
    }

    const AT_ONCE: Duration = Duration::ZERO;
    /// Long enough for concurrent askers to overlap.
    const A_WHILE: Duration = Duration::from_millis(10);
    const MS: Duration = Duration::from_millis(1);

    fn is_allowed(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Allowed)
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_as_istiod_caches_them() {
        let (reviews, asked) = fake(10, AT_ONCE, |account| match &*account.namespace {
            "allowed" => Verdict::Allowed,
            "denied" => Verdict::Denied("no".into()),
            _ => Failure::NoStatus.into(),
        });
        let allowed = account("allowed", "gw");
        let denied = account("denied", "gw");
        let failing = account("failing", "gw");
        let asked_after = async |what: &ServiceAccount, wait: Duration| {
            tokio::time::advance(wait).await;
            reviews.verdict(what).await;
            asked.load(Ordering::SeqCst)
        };
        assert!(is_allowed(&reviews.verdict(&allowed).await));
        let d = reviews.verdict(&denied).await;
        assert!(matches!(&d, Verdict::Denied(reason) if &**reason == "no"));
        let f = reviews.verdict(&failing).await;
        assert!(
            matches!(&f, Verdict::Failed(reason) if &**reason == "the API server's answer has no status")
        );
        assert_eq!(asked.load(Ordering::SeqCst), 3);

        // A failure for 5 s, a denial for 1 min, an allowance for 5 min.
        assert_eq!(asked_after(&failing, FAILED_TTL - MS).await, 3);
        assert_eq!(asked_after(&failing, MS).await, 4);
        assert_eq!(asked_after(&denied, DENIED_TTL - FAILED_TTL - MS).await, 4);
        assert_eq!(asked_after(&denied, MS).await, 5);
        assert_eq!(
            asked_after(&allowed, ALLOWED_TTL - DENIED_TTL - MS).await,
            5
        );
        assert_eq!(asked_after(&allowed, MS).await, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_askers_share_one_review() {
        let (reviews, asked) = fake(10, A_WHILE, |_| Verdict::Allowed);
        let gw = account("apps", "gw");
        let other = account("apps", "other");
        let askers = (0..20).map(|_| reviews.verdict(&gw));
        let verdicts = future::join_all(askers.chain([reviews.verdict(&other)])).await;
        assert!(verdicts.iter().all(is_allowed));
        assert_eq!(
            asked.load(Ordering::SeqCst),
            2,
            "one review per service account"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_review_is_taken_up_or_replaced() {
        let (reviews, asked) = fake(10, A_WHILE, |_| Verdict::Allowed);
        let gw = account("apps", "gw");
        // The asker goes away before the answer.
        assert!(reviews.verdict(&gw).now_or_never().is_none());
        assert_eq!(reviews.len(), 1);
        // The next asker waits for the same review.
        assert!(is_allowed(&reviews.verdict(&gw).await));
        assert_eq!(asked.load(Ordering::SeqCst), 1);

        // Abandoned, then past its deadline: a new review.
        let other = account("apps", "other");
        assert!(reviews.verdict(&other).now_or_never().is_none());
        tokio::time::advance(REVIEW_TIMEOUT).await;
        assert!(is_allowed(&reviews.verdict(&other).await));
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_that_does_not_answer_fails() {
        let reviewer = Reviewer::Fake(Arc::new(|_: &ServiceAccount| future::pending().boxed()));
        let reviews = Reviews::with(reviewer, 10);
        let verdict = reviews.verdict(&account("apps", "gw")).await;
        assert!(
            matches!(&verdict, Verdict::Failed(reason) if &**reason == "the API server did not answer within 10 s"),
            "{verdict:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let (reviews, asked) = fake(3, AT_ONCE, |_| Verdict::Allowed);
        let accounts: Vec<_> = (0..4).map(|i| account("apps", &format!("gw{i}"))).collect();
        for account in &accounts[..3] {
            reviews.verdict(account).await;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(reviews.len(), 3);
        // Full: the oldest goes.
        reviews.verdict(&accounts[3]).await;
        assert_eq!(reviews.len(), 3);
        reviews.verdict(&accounts[1]).await;
        assert_eq!(asked.load(Ordering::SeqCst), 4, "gw1 is still cached");
        reviews.verdict(&accounts[0]).await;
        assert_eq!(asked.load(Ordering::SeqCst), 5, "gw0 was evicted");
        assert_eq!(reviews.len(), 3);

        // Expired answers go first, whatever their age.
        let (reviews, _) = fake(3, AT_ONCE, |account| match &*account.name {
            "denied" => Verdict::Denied("no".into()),
            _ => Verdict::Allowed,
        });
        reviews.verdict(&account("apps", "old")).await;
        reviews.verdict(&account("apps", "denied")).await;
        reviews.verdict(&account("apps", "young")).await;
        tokio::time::advance(DENIED_TTL).await;
        reviews.verdict(&account("apps", "new")).await;
        let cache = reviews.cache.lock();
        assert!(cache.slots.contains_key(&account("apps", "old")));
        assert!(!cache.slots.contains_key(&account("apps", "denied")));
    }

    #[test]
    fn denials_quote_the_api_server_escaped() {
        let status = SubjectAccessReviewStatus {
            allowed: false,
            denied: Some(true),
            reason: Some("webhook says\nno".to_owned()),
            evaluation_error: Some("x".repeat(2000)),
        };
        let Verdict::Denied(reason) = Verdict::from_status(&status) else {
            panic!("denied");
        };
        assert!(
            reason.starts_with("webhook says\\nno; evaluation error: xxx"),
            "{reason}"
        );
        assert!(reason.len() < 600, "{} bytes", reason.len());
        let silent = SubjectAccessReviewStatus::default();
        assert!(
            matches!(Verdict::from_status(&silent), Verdict::Denied(r) if &*r == "no reason given")
        );
        let allowed = SubjectAccessReviewStatus {
            allowed: true,
            ..SubjectAccessReviewStatus::default()
        };
        assert!(is_allowed(&Verdict::from_status(&allowed)));
    }
}
