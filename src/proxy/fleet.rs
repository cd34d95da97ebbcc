//! Phase 3b, between the local cache and the origin: the fleet's shared
//! tier (`cache::shared`). A local miss asks the shared tier; a miss there
//! takes the fleet-wide fetch lock, so concurrent misses on different
//! proxies make one origin fetch and one encode; what this proxy stores it
//! publishes; what it invalidates it removes. Every step is bounded and a
//! failing store reads as a miss, so the shared tier can only save work.

use super::Proxy;
use crate::cache::key::PrimaryKey;
use crate::cache::shared::{Claim, Lock};
use crate::cache::{purge, record};
use std::sync::Arc;

/// What the shared tier did for one local miss.
pub(super) enum FleetMiss {
    /// The record came from the shared tier and is in the local cache now.
    Filled,
    /// This proxy fetches (holding the fleet lock, when it got one).
    Fetch(Option<Lock>),
}

impl Proxy {
    /// A local miss on `key`: fill from the shared tier, or wait for the
    /// proxy already fetching it, or take the lock and fetch.
    pub(super) async fn fleet_miss(&self, key: &PrimaryKey) -> FleetMiss {
        let Some(shared) = &self.inner.shared else {
            return FleetMiss::Fetch(None);
        };
        if let Some(found) = shared.get(key).await {
            self.fill(key, found).await;
            return FleetMiss::Filled;
        }
        match shared.claim(key).await {
            Claim::Mine(lock) => FleetMiss::Fetch(Some(lock)),
            Claim::Unknown => FleetMiss::Fetch(None),
            Claim::Theirs => match shared.wait_for(key).await {
                Some(found) => {
                    self.fill(key, found).await;
                    FleetMiss::Filled
                }
                // it did not store one in time (or could not): fetch here
                None => FleetMiss::Fetch(None),
            },
        }
    }

    /// Gives the fleet lock back after the fetch (and its publish).
    pub(super) async fn fleet_done(&self, lock: Option<Lock>) {
        if let (Some(shared), Some(lock)) = (&self.inner.shared, lock) {
            shared.unlock(lock).await;
        }
    }

    async fn fill(&self, key: &PrimaryKey, found: Vec<record::Stored>) {
        let cache = &self.inner.cache;
        for s in found {
            let entry = Arc::new(s.entry);
            if let Some(o) = s.original {
                cache.store_original(entry.id, o).await;
            }
            cache.store(key, entry).await;
        }
    }

    /// Publishes every variant this proxy holds for `key`, with the
    /// originals it has, to live as long as the local cache keeps them.
    pub(super) async fn publish(&self, key: &PrimaryKey) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        let cache = &self.inner.cache;
        let Some((variants, keep)) = cache.variants(key).await else {
            return;
        };
        let mut originals = Vec::with_capacity(variants.len());
        for e in &variants {
            originals.push(cache.original(e.id).await);
        }
        let parts: Vec<_> = variants
            .iter()
            .zip(&originals)
            .map(|(e, o)| (e.as_ref(), o.as_ref()))
            .collect();
        let mut tags: Vec<String> = variants
            .iter()
            .flat_map(|e| purge::tags(&e.headers).map(str::to_string))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        shared.put(key, record::encode(&parts), keep, &tags).await;
    }

    /// Drops `key` here and in the shared tier (unsafe methods, purges, a
    /// replacement that may not be stored). Other proxies' local copies live
    /// until their own freshness ends, as in any two-tier cache.
    pub(super) async fn invalidate(&self, key: &PrimaryKey) {
        self.inner.cache.invalidate(key).await;
        if let Some(shared) = &self.inner.shared {
            shared.remove(key).await;
        }
    }
}
