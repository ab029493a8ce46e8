//! Internals exposed for the workspace's fuzz targets (`fuzz/`, feature `__fuzz`). Not a
//! stable API: nothing outside this repository may use it.

use k8s_openapi::api::core::v1::Secret;
use sds_core::{UnixTime, Update};

use crate::{
    keys::Lean,
    store::{Change, Store},
};

/// The update the source yields once its one watch has listed `secrets` (as decoded from the
/// API server's answer), with bare names in `default_namespace`, validated at `now`.
pub fn listed(secrets: Vec<Secret>, default_namespace: &str, now: UnixTime) -> Update {
    let mut store = Store::new(default_namespace, 1);
    store.apply(0, Change::Relist);
    for secret in secrets {
        if let Some(lean) = Lean::from_secret(secret, default_namespace) {
            store.apply(0, Change::RelistItem(lean));
        }
    }
    store.apply(0, Change::RelistDone);
    update(&mut store, now)
}

/// The update the source yields once its one watch has listed nothing and then seen
/// `secrets` added one by one (watch events).
pub fn applied(secrets: Vec<Secret>, default_namespace: &str, now: UnixTime) -> Update {
    let mut store = Store::new(default_namespace, 1);
    store.apply(0, Change::Relist);
    store.apply(0, Change::RelistDone);
    for secret in secrets {
        if let Some(lean) = Lean::from_secret(secret, default_namespace) {
            store.apply(0, Change::Apply(lean));
        }
    }
    update(&mut store, now)
}

/// Parses what needs it, in place (the source parses off the runtime), and returns the update.
fn update(store: &mut Store, now: UnixTime) -> Update {
    let done = store.jobs().into_iter().map(|job| job.run(now)).collect();
    store.finish(done);
    store.update()
}
