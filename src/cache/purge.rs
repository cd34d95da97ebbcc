//! Purging, as Varnish and nginx-cache-purge users expect: one URL (every
//! variant), every URL under a prefix, or every response tagged with a
//! surrogate key (`Surrogate-Key` or `Cache-Tag` from the origin). A hard
//! purge drops the entries and their originals; a soft purge marks them
//! stale, so the next request revalidates with the origin (a 304 keeps the
//! stored body and the encode) while `stale-if-error` can still stand in
//! if the origin is down.

use super::key::PrimaryKey;
use super::{Cache, Entry, Variants};
use hyper::header::{HeaderMap, HeaderName};
use std::sync::Arc;
use std::time::Duration;

/// What a purge selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One primary key: every variant of one URL.
    Url(PrimaryKey),
    /// Every primary key that starts with this one (`.../photos/*`).
    Prefix(PrimaryKey),
    /// Every entry tagged with any of these surrogate keys.
    Tags(Vec<String>),
}

impl Selector {
    /// The metric's label.
    pub fn mode(&self, soft: bool) -> &'static str {
        match (self, soft) {
            (Selector::Url(_), false) => "url",
            (Selector::Prefix(_), false) => "prefix",
            (Selector::Tags(_), false) => "tag",
            (Selector::Url(_), true) => "soft_url",
            (Selector::Prefix(_), true) => "soft_prefix",
            (Selector::Tags(_), true) => "soft_tag",
        }
    }
}

/// The surrogate keys a stored response carries (space- or comma-separated).
pub fn tags(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    [
        HeaderName::from_static("surrogate-key"),
        HeaderName::from_static("cache-tag"),
    ]
    .into_iter()
    .flat_map(move |n| headers.get_all(n).into_iter())
    .filter_map(|v| v.to_str().ok())
    .flat_map(|v| v.split([' ', ',']))
    .filter(|t| !t.is_empty())
}

impl Cache {
    /// Purges what `sel` selects; returns how many stored responses (variants) it touched.
    pub async fn purge(&self, sel: &Selector, soft: bool) -> usize {
        let keys: Vec<PrimaryKey> = match sel {
            Selector::Url(k) => vec![k.clone()],
            Selector::Prefix(p) => self
                .entries
                .iter()
                .filter(|(k, _)| k.0.starts_with(&p.0))
                .map(|(k, _)| (*k).clone())
                .collect(),
            Selector::Tags(want) => self
                .entries
                .iter()
                .filter(|(_, v)| {
                    v.list
                        .iter()
                        .any(|e| tags(&e.headers).any(|t| want.iter().any(|w| w == t)))
                })
                .map(|(k, _)| (*k).clone())
                .collect(),
        };
        let mut touched = 0;
        for key in keys {
            let Some(old) = self.entries.get(&key).await else {
                continue;
            };
            touched += old.list.len();
            if soft {
                self.mark_stale(&key, &old).await;
            } else {
                self.invalidate(&key).await;
            }
        }
        touched
    }

    /// Replaces every variant of `key` by a copy that is stale now (same id,
    /// so its original stays).
    async fn mark_stale(&self, key: &PrimaryKey, old: &Variants) {
        let list: Vec<Arc<Entry>> = old
            .list
            .iter()
            .map(|e| {
                let mut f = e.freshness.clone();
                f.lifetime = Duration::ZERO;
                // The next request must go to the origin, not be answered
                // stale while a background revalidation runs.
                f.stale_while_revalidate = None;
                Arc::new(e.freshened(e.headers.clone(), f))
            })
            .collect();
        let keep = old.keep;
        self.entries
            .insert(key.clone(), Arc::new(Variants { list, keep }))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::freshness::{Freshness, Heuristic};
    use crate::cache::Body;
    use bytes::Bytes;
    use hyper::header::HeaderValue;
    use hyper::StatusCode;
    use std::time::SystemTime;

    fn entry(tag: Option<&str>) -> Arc<Entry> {
        let mut h = HeaderMap::new();
        h.insert("etag", HeaderValue::from_static("\"1\""));
        if let Some(t) = tag {
            h.insert("surrogate-key", HeaderValue::from_str(t).unwrap());
        }
        let now = SystemTime::now();
        let heuristic = Heuristic {
            fraction: 0.1,
            max: Duration::from_secs(60),
        };
        let mut f = Freshness::of(StatusCode::OK, &h, now, now, heuristic);
        f.lifetime = Duration::from_secs(600);
        Arc::new(Entry::new(
            StatusCode::OK,
            h,
            Body::Plain(Bytes::from_static(b"x")),
            f,
            &HeaderMap::new(),
        ))
    }

    #[tokio::test]
    async fn url_prefix_tag_and_soft() {
        let c = Cache::new(1 << 20, 0, Duration::from_secs(60));
        let k = |p: &str| PrimaryKey::new("http", "site", p);
        c.store(&k("/photos/a.jpg"), entry(Some("photos cats")))
            .await;
        c.store(&k("/photos/b.jpg"), entry(None)).await;
        c.store(&k("/about"), entry(Some("pages,cats"))).await;
        let none = HeaderMap::new();
        let fresh = |e: Option<Arc<Entry>>| {
            e.unwrap().freshness.remaining(SystemTime::now()) > Duration::ZERO
        };

        assert_eq!(c.purge(&Selector::Url(k("/photos/b.jpg")), true).await, 1);
        let soft = c.lookup(&k("/photos/b.jpg"), &none).await;
        assert!(
            soft.is_some() && !fresh(soft),
            "soft purge keeps the entry, stale"
        );

        assert_eq!(
            c.purge(&Selector::Tags(vec!["cats".into()]), false).await,
            2
        );
        assert!(c.lookup(&k("/photos/a.jpg"), &none).await.is_none());
        assert!(c.lookup(&k("/about"), &none).await.is_none());

        c.store(&k("/photos/a.jpg"), entry(None)).await;
        assert_eq!(c.purge(&Selector::Prefix(k("/photos/")), false).await, 2);
        assert!(c.lookup(&k("/photos/a.jpg"), &none).await.is_none());
        assert_eq!(c.purge(&Selector::Url(k("/nothing")), false).await, 0);
    }
}
