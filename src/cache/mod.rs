//! The HTTP cache: storage, variants, and coalescing of concurrent misses.
//! Freshness rules live in [`freshness`], keys in [`key`]; this file only
//! stores and finds.
//!
//! Two moka tiers, each weighted by bytes:
//! - `entries`: every stored response, images held as latent codes;
//! - `originals`: original image bytes for ordinary clients, sized separately
//!   (0 turns it off and originals are refetched from the origin).
//!
//! All variants of a resource (its `Vary` selections) share one moka entry under
//! the primary key, so invalidating a URL drops every variant at once.

pub mod directives;
pub mod freshness;
pub mod key;
pub mod purge;
pub mod record;
pub mod shared;
pub mod targeted;

use crate::clock::Clock;
use bytes::Bytes;
use freshness::Freshness;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use key::{selected_value, PrimaryKey};
use moka::Expiry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// At most this many variants per URL: a client spraying header values can
/// not grow one resource without bound.
const MAX_VARIANTS: usize = 16;

/// What a stored response's body is.
#[derive(Debug, Clone)]
pub enum Body {
    /// The bytes as the origin sent them.
    Plain(Bytes),
    /// An image kept as a latent code; the original lives in the originals tier
    /// (or at the origin).
    Latent {
        /// The `.vlat` bytes.
        code: Bytes,
        /// Length of the original image body.
        original_len: u64,
    },
}

/// One stored response. Immutable: revalidation stores a new one.
#[derive(Debug)]
pub struct Entry {
    /// Unique per stored response; keys the originals tier.
    pub id: u64,
    /// The origin's status code.
    pub status: StatusCode,
    /// The origin's headers minus hop-by-hop ones; `Content-Length` is set on output.
    pub headers: HeaderMap,
    /// The body as stored: plain bytes or a latent code.
    pub body: Body,
    /// When it was made and how long it stays fresh.
    pub freshness: Freshness,
    /// Header names of the response's `Vary`, and the request's values for them.
    pub vary: Vec<(HeaderName, Option<String>)>,
}

impl Entry {
    /// A new entry with a fresh id; `request` gives the values of the fields `Vary` names.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Body,
        freshness: Freshness,
        req: &HeaderMap,
    ) -> Entry {
        let vary = key::vary_names(&headers)
            .into_iter()
            .map(|n| {
                let v = selected_value(req, &n);
                (n, v)
            })
            .collect();
        Entry::restored(status, headers, body, freshness, vary)
    }

    /// An entry another proxy stored (the shared tier), with its own `Vary`
    /// selection kept and a fresh local id.
    pub fn restored(
        status: StatusCode,
        headers: HeaderMap,
        body: Body,
        freshness: Freshness,
        vary: Vec<(HeaderName, Option<String>)>,
    ) -> Entry {
        Entry {
            id: next_id(),
            status,
            headers,
            body,
            freshness,
            vary,
        }
    }

    /// This entry with a 304's merged headers and new freshness (RFC 9111
    /// 4.3.4): the same id, so the originals tier keeps its original.
    pub fn freshened(&self, headers: HeaderMap, freshness: Freshness) -> Entry {
        Entry {
            id: self.id,
            status: self.status,
            headers,
            body: self.body.clone(),
            freshness,
            vary: self.vary.clone(),
        }
    }

    /// Whether this variant was stored for a request like `req`.
    pub fn matches(&self, req: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(n, v)| selected_value(req, n).as_deref() == v.as_deref())
    }

    fn same_variant(&self, other: &Entry) -> bool {
        self.vary == other.vary
    }

    /// Bytes this entry costs: body plus headers plus a fixed overhead.
    pub fn weight(&self) -> u64 {
        let body = match &self.body {
            Body::Plain(b) => b.len(),
            Body::Latent { code, .. } => code.len(),
        };
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (body + headers + 256) as u64
    }

    /// Whether the entry has an `ETag` or `Last-Modified` to revalidate with.
    pub fn has_validators(&self) -> bool {
        self.headers.contains_key(hyper::header::ETAG)
            || self.headers.contains_key(hyper::header::LAST_MODIFIED)
    }

    /// How long the cache keeps it: while fresh, plus a window for
    /// revalidating or serving stale when validators or stale-* allow it.
    fn keep_for(&self, keep_stale: Duration, now: SystemTime) -> Duration {
        let f = &self.freshness;
        let remaining = f.remaining(now);
        let mut extra = Duration::ZERO;
        if self.has_validators() {
            extra = keep_stale;
        }
        let swr = f.stale_while_revalidate.unwrap_or(0);
        let sie = f.stale_if_error.unwrap_or(0);
        extra = extra.max(Duration::from_secs(swr.max(sie)));
        remaining.saturating_add(extra)
    }
}

/// Ids are unique in this process (they key the originals tier); entries
/// from the shared tier get one here too, never the storing proxy's.
fn next_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The variants stored for one primary key, newest first.
#[derive(Debug, Clone)]
pub struct Variants {
    list: Vec<Arc<Entry>>,
    keep: Duration,
}

struct KeepFor;

impl Expiry<PrimaryKey, Arc<Variants>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &PrimaryKey,
        value: &Arc<Variants>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep)
    }

    fn expire_after_update(
        &self,
        _key: &PrimaryKey,
        value: &Arc<Variants>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

/// A fetch for one key that other requests may wait on.
pub enum Flight {
    /// This request fetches; dropping the guard releases the waiters (also on
    /// error or cancellation, so nobody waits forever).
    Leader(FlightGuard),
    /// Another request is fetching; wait, then look again.
    Follower(watch::Receiver<()>),
}

/// Held by the one request fetching a key; dropping it wakes the followers
/// and frees the key for the next fetch.
pub struct FlightGuard {
    key: PrimaryKey,
    inflight: Arc<Mutex<HashMap<PrimaryKey, watch::Receiver<()>>>>,
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&self.key);
    }
}

/// Waits until the leader's guard is dropped.
pub async fn wait(mut rx: watch::Receiver<()>) {
    // `changed` fails once the sender is gone, which is the signal.
    while rx.changed().await.is_ok() {}
}

/// The HTTP cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    entries: moka::future::Cache<PrimaryKey, Arc<Variants>>,
    originals: Option<moka::future::Cache<u64, Bytes>>,
    inflight: Arc<Mutex<HashMap<PrimaryKey, watch::Receiver<()>>>>,
    keep_stale: Duration,
    clock: Clock,
}

impl Cache {
    /// `capacity` bytes for entries; `originals` bytes for original images (0 = none).
    pub fn new(capacity: u64, originals: u64, keep_stale: Duration) -> Cache {
        let entries = moka::future::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k, v: &Arc<Variants>| {
                let w: u64 = v.list.iter().map(|e| e.weight()).sum();
                w.min(u32::MAX as u64) as u32
            })
            .expire_after(KeepFor)
            .build();
        let originals = (originals > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(originals)
                .weigher(|_k, v: &Bytes| (v.len() + 64).min(u32::MAX as usize) as u32)
                .build()
        });
        Cache {
            entries,
            originals,
            inflight: Arc::default(),
            keep_stale,
            clock: Clock::system(),
        }
    }

    /// The same cache reading `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Cache {
        self.clock = clock;
        self
    }

    /// The clock ages and freshness are computed from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The newest stored variant matching the request's headers.
    pub async fn lookup(&self, key: &PrimaryKey, req: &HeaderMap) -> Option<Arc<Entry>> {
        let v = self.entries.get(key).await?;
        v.list.iter().find(|e| e.matches(req)).cloned()
    }

    /// Stores `entry`, replacing the variant with the same selection.
    pub async fn store(&self, key: &PrimaryKey, entry: Arc<Entry>) {
        let now = self.clock.now();
        let mut list = vec![Arc::clone(&entry)];
        if let Some(old) = self.entries.get(key).await {
            for e in old.list.iter() {
                // A 304 freshens an entry in place (same id): its original
                // stays, and the old copy is simply replaced.
                if e.id == entry.id {
                    continue;
                }
                let vary_changed = e
                    .vary
                    .iter()
                    .map(|(n, _)| n)
                    .ne(entry.vary.iter().map(|(n, _)| n));
                if e.same_variant(&entry) || vary_changed {
                    self.drop_original(e.id).await;
                } else if list.len() < MAX_VARIANTS {
                    list.push(Arc::clone(e));
                }
            }
        }
        let keep = list
            .iter()
            .map(|e| e.keep_for(self.keep_stale, now))
            .max()
            .unwrap_or_default();
        if keep.is_zero() {
            self.entries.invalidate(key).await;
            return;
        }
        self.entries
            .insert(key.clone(), Arc::new(Variants { list, keep }))
            .await;
    }

    /// Every variant stored for `key`, newest first, and how long the cache
    /// keeps them (what the shared tier publishes).
    pub async fn variants(&self, key: &PrimaryKey) -> Option<(Vec<Arc<Entry>>, Duration)> {
        let v = self.entries.get(key).await?;
        Some((v.list.clone(), v.keep))
    }

    /// Drops every variant of `key` (unsafe methods, 9111 4.4).
    pub async fn invalidate(&self, key: &PrimaryKey) {
        if let Some(old) = self.entries.remove(key).await {
            for e in old.list.iter() {
                self.drop_original(e.id).await;
            }
        }
    }

    async fn drop_original(&self, id: u64) {
        if let Some(o) = &self.originals {
            o.invalidate(&id).await;
        }
    }

    /// Keeps the original bytes of a latent entry, if the originals tier exists.
    pub async fn store_original(&self, id: u64, bytes: Bytes) {
        if let Some(o) = &self.originals {
            o.insert(id, bytes).await;
        }
    }

    /// The original image bytes behind latent entry `id`, if the originals tier still holds them.
    pub async fn original(&self, id: u64) -> Option<Bytes> {
        self.originals.as_ref()?.get(&id).await
    }

    /// Joins or starts the fetch for `key`.
    pub fn join(&self, key: &PrimaryKey) -> Flight {
        // Poisoning cannot leave the map half-changed (one insert or remove
        // under the lock), so a panic elsewhere must not stop every fetch.
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            return Flight::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.clone(), rx);
        Flight::Leader(FlightGuard {
            key: key.clone(),
            inflight: Arc::clone(&self.inflight),
            _done: tx,
        })
    }

    /// (entries, weighted bytes) of the entries tier and the originals tier.
    pub async fn sizes(&self) -> [(u64, u64); 2] {
        self.entries.run_pending_tasks().await;
        let e = (self.entries.entry_count(), self.entries.weighted_size());
        let o = match &self.originals {
            Some(o) => {
                o.run_pending_tasks().await;
                (o.entry_count(), o.weighted_size())
            }
            None => (0, 0),
        };
        [e, o]
    }
}

/// A header value that is always valid (for values we compose).
pub fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FlightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("FlightGuard").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Flight").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshness::Heuristic;

    fn entry(cc: &str, vary: Option<&str>, req: &HeaderMap, body: &'static [u8]) -> Arc<Entry> {
        let mut h = HeaderMap::new();
        h.insert("cache-control", value(cc));
        h.insert("etag", value("\"x\""));
        if let Some(v) = vary {
            h.insert("vary", value(v));
        }
        let now = SystemTime::now();
        let heur = Heuristic {
            fraction: 0.1,
            max: Duration::from_secs(1),
        };
        let f = Freshness::of(StatusCode::OK, &h, now, now, heur);
        Arc::new(Entry::new(
            StatusCode::OK,
            h,
            Body::Plain(Bytes::from_static(body)),
            f,
            req,
        ))
    }

    #[tokio::test]
    async fn variants_and_invalidation() {
        let cache = Cache::new(1 << 20, 0, Duration::from_secs(60));
        let key = PrimaryKey::new("http", "h", "/a");
        let mut en = HeaderMap::new();
        en.insert("accept-language", value("en"));
        let mut de = HeaderMap::new();
        de.insert("accept-language", value("de"));
        cache
            .store(
                &key,
                entry("max-age=60", Some("Accept-Language"), &en, b"en"),
            )
            .await;
        cache
            .store(
                &key,
                entry("max-age=60", Some("Accept-Language"), &de, b"de"),
            )
            .await;
        let got = |e: Option<Arc<Entry>>| match e.map(|e| e.body.clone()) {
            Some(Body::Plain(b)) => Some(b),
            _ => None,
        };
        assert_eq!(got(cache.lookup(&key, &en).await).unwrap(), "en");
        assert_eq!(got(cache.lookup(&key, &de).await).unwrap(), "de");
        assert!(cache.lookup(&key, &HeaderMap::new()).await.is_none());
        cache.invalidate(&key).await;
        assert!(cache.lookup(&key, &en).await.is_none());
    }

    #[tokio::test]
    async fn one_leader_per_key() {
        let cache = Cache::new(1 << 20, 0, Duration::from_secs(60));
        let key = PrimaryKey::new("http", "h", "/a");
        let Flight::Leader(guard) = cache.join(&key) else {
            panic!("first is leader")
        };
        let Flight::Follower(rx) = cache.join(&key) else {
            panic!("second follows")
        };
        let waiter = tokio::spawn(wait(rx));
        drop(guard);
        waiter.await.unwrap();
        assert!(matches!(cache.join(&key), Flight::Leader(_)));
    }
}
