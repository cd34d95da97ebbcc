//! Phases 3-5 for GET/HEAD: cache lookup (fresh, stale, revalidate, one
//! fetch per key), the conditional or full fetch from the origin, buffering
//! within the size limit, the buffer budget and the deadline, and the image
//! filter that turns a stored body into a latent on the model pool.

use super::fleet::FleetMiss;
use super::headers::{
    add_via, is_latent, parts_clone, pragma_no_cache, strip_hop_by_hop, HOP_BY_HOP,
};
use super::transform::{self, Guard, Memo, Transformed};
use super::upstream::{self, empty, find_source, holding, Collected, ProxyBody, Stalled};
use super::{Ctx, Fetched, Proxy};
use crate::cache::directives::{self, Directives};
use crate::cache::freshness::{self, Freshness, Reuse};
use crate::cache::{self, Body as Stored, Entry, Flight};
use crate::error::HttpError;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

impl Proxy {
    /// Phase 3 for GET/HEAD: lookup, then hit, stale, revalidate or fetch.
    pub(super) async fn cached(
        &self,
        req: Request<Incoming>,
        ctx: &Ctx<'_>,
    ) -> Result<(Response<ProxyBody>, &'static str), HttpError> {
        let (parts, _body) = req.into_parts();
        let m = &self.inner.metrics;
        let pragma = pragma_no_cache(&parts.headers);
        let (mut followed, mut asked_fleet) = (false, false);
        loop {
            let now = self.inner.cache.clock().now();
            let entry = self.inner.cache.lookup(&ctx.key, &parts.headers).await;
            let stale = match entry {
                Some(e) => match freshness::reuse(&e.freshness, &ctx.req_cc, pragma, now) {
                    Reuse::Fresh => {
                        m.lookups.with_label_values(&["hit"]).inc();
                        return self.respond_from(&e, &parts, ctx, None, "hit").await;
                    }
                    Reuse::Stale => {
                        m.lookups.with_label_values(&["stale"]).inc();
                        return self.respond_from(&e, &parts, ctx, None, "stale").await;
                    }
                    Reuse::StaleRevalidate => {
                        m.lookups.with_label_values(&["stale"]).inc();
                        self.revalidate_in_background(&parts, ctx, &e);
                        return self.respond_from(&e, &parts, ctx, None, "stale").await;
                    }
                    Reuse::Revalidate => Some(e),
                },
                None => None,
            };
            if ctx.req_cc.only_if_cached {
                m.lookups.with_label_values(&["miss"]).inc();
                return Err(HttpError::GatewayTimeout(
                    "only-if-cached: no usable stored response".into(),
                ));
            }
            // One fetch per key: the leader fetches, the rest wait and look again.
            let guard = if followed {
                None
            } else {
                match self.inner.cache.join(&ctx.key) {
                    Flight::Leader(g) => Some(g),
                    Flight::Follower(rx) => {
                        cache::wait(rx).await;
                        followed = true;
                        continue;
                    }
                }
            };
            m.lookups
                .with_label_values(&[if stale.is_some() { "stale" } else { "miss" }])
                .inc();
            let revalidating = stale.is_some();
            let mut fleet_lock = None;
            if !revalidating && !asked_fleet {
                asked_fleet = true;
                match self.fleet_miss(&ctx.key).await {
                    FleetMiss::Filled => {
                        drop(guard);
                        continue;
                    }
                    FleetMiss::Fetch(lock) => fleet_lock = lock,
                }
            }
            let fetched = self.fetch(&parts, ctx, stale).await;
            self.fleet_done(fleet_lock).await;
            drop(guard);
            return self
                .respond_fetched(fetched?, &parts, ctx, revalidating)
                .await;
        }
    }

    /// RFC 5861 stale-while-revalidate: one background refresh per key (the
    /// flight's leader), while this client gets the stale entry now.
    fn revalidate_in_background(&self, parts: &Parts, ctx: &Ctx<'_>, e: &Arc<Entry>) {
        let Flight::Leader(guard) = self.inner.cache.join(&ctx.key) else {
            return;
        };
        let me = self.clone();
        let (p, up, peer, host, key, e2) = (
            parts_clone(parts),
            ctx.upstream.clone(),
            ctx.peer,
            ctx.host.clone(),
            ctx.key.clone(),
            Arc::clone(e),
        );
        tokio::spawn(async move {
            let live = me.live();
            let ctx = Ctx {
                upstream: &up,
                peer,
                host,
                key,
                req_cc: Directives::default(),
                live: &live,
            };
            let _ = me.fetch(&p, &ctx, Some(e2)).await;
            drop(guard);
        });
    }

    /// The client's answer from what [`Proxy::fetch`] did.
    async fn respond_fetched(
        &self,
        fetched: Fetched,
        parts: &Parts,
        ctx: &Ctx<'_>,
        revalidating: bool,
    ) -> Result<(Response<ProxyBody>, &'static str), HttpError> {
        match fetched {
            Fetched::Stored(e, original, held, withheld) => {
                let (r, outcome) = self.respond_from(&e, parts, ctx, original, "miss").await?;
                let (mut rp, body) = r.into_parts();
                for (name, v) in withheld {
                    rp.headers.append(name, v);
                }
                Ok((Response::from_parts(rp, holding(body, held)), outcome))
            }
            Fetched::Freshened(e) => self.respond_from(&e, parts, ctx, None, "revalidated").await,
            Fetched::StaleOnError(e) => self.respond_from(&e, parts, ctx, None, "stale").await,
            Fetched::Relay(mut r) => {
                if parts.method == Method::HEAD {
                    *r.body_mut() = empty();
                }
                Ok((r, if revalidating { "revalidated" } else { "pass" }))
            }
        }
    }

    /// Phases 4-5 for a cacheable request: ask the origin (conditionally when
    /// `stale` has validators), store what may be stored.
    pub(super) async fn fetch(
        &self,
        parts: &Parts,
        ctx: &Ctx<'_>,
        stale: Option<Arc<Entry>>,
    ) -> Result<Fetched, HttpError> {
        let inner = &self.inner;
        let headers = origin_conditionals(&parts.headers, stale.as_deref());
        let req = self.origin_request(&Method::GET, &parts.uri, &headers, ctx, empty())?;
        let clock = self.inner.cache.clock();
        let request_time = clock.now();
        let resp = match self.send(req).await {
            Ok(r) => r,
            // RFC 5861 stale-if-error: the stored response beats an error page
            Err(err) => match stale {
                Some(e)
                    if freshness::may_serve_on_error(&e.freshness, &ctx.req_cc, clock.now()) =>
                {
                    return Ok(Fetched::StaleOnError(e))
                }
                _ => return Err(err),
            },
        };
        let response_time = clock.now();
        let status = resp.status();
        if let Some(e) = &stale {
            if status == StatusCode::NOT_MODIFIED {
                let freshened = self.freshen(e, resp.headers(), request_time, response_time);
                inner.cache.store(&ctx.key, Arc::clone(&freshened)).await;
                self.publish(&ctx.key).await;
                return Ok(Fetched::Freshened(freshened));
            }
            if status.is_server_error()
                && freshness::may_serve_on_error(&e.freshness, &ctx.req_cc, response_time)
            {
                return Ok(Fetched::StaleOnError(Arc::clone(e)));
            }
        }
        let (mut rparts, body) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        // Set-Cookie is per client: such responses are not stored unless the
        // route opts in, and then the stored copy goes without the header.
        let has_cookie = rparts.headers.contains_key(header::SET_COOKIE);
        let storable = !ctx.req_cc.no_store
            && (!has_cookie || ctx.upstream.store_set_cookie)
            && freshness::storable(&Method::GET, &parts.headers, status, &rparts.headers);
        let body = self.origin_body(body);
        if !storable {
            if stale.is_some() && !status.is_server_error() {
                // The stored response was replaced by one we may not store.
                self.invalidate(&ctx.key).await;
            }
            add_via(&mut rparts.headers);
            return Ok(Fetched::Relay(Response::from_parts(rparts, body)));
        }
        let (bytes, held) = match self.collect(body).await? {
            Collected::Whole(b, held) => (b, held),
            Collected::Over {
                prefix,
                rest,
                held,
                budget_spent,
            } => {
                // Too big to cache, or the buffer budget is spent: stream it
                // through instead.
                if budget_spent {
                    inner.metrics.budget_exhausted.inc();
                }
                add_via(&mut rparts.headers);
                let body = holding(upstream::prefixed(prefix, rest), held);
                return Ok(Fetched::Relay(Response::from_parts(rparts, body)));
            }
        };
        let times = (request_time, response_time);
        self.store_fetched(rparts, bytes, held, times, parts, ctx)
            .await
    }

    /// Phase 5: the buffered response becomes a cache entry (the image
    /// filter runs here), stored under the request's key.
    async fn store_fetched(
        &self,
        mut rparts: hyper::http::response::Parts,
        bytes: Bytes,
        held: upstream::Held,
        (request_time, response_time): (SystemTime, SystemTime),
        parts: &Parts,
        ctx: &Ctx<'_>,
    ) -> Result<Fetched, HttpError> {
        let inner = &self.inner;
        let status = rparts.status;
        let withheld = withhold(&mut rparts.headers);
        let f = Freshness::of(
            status,
            &rparts.headers,
            request_time,
            response_time,
            ctx.live.heuristic,
        );
        let (body, original) = self.filter(status, &rparts.headers, bytes).await;
        rparts.headers.remove(header::CONTENT_LENGTH);
        let entry = Arc::new(Entry::new(status, rparts.headers, body, f, &parts.headers));
        if let Some(o) = &original {
            inner.cache.store_original(entry.id, o.clone()).await;
        }
        inner.cache.store(&ctx.key, Arc::clone(&entry)).await;
        self.publish(&ctx.key).await;
        Ok(Fetched::Stored(entry, original, held, withheld))
    }

    /// Buffers an origin body for the cache, within the size limit, the
    /// buffer budget and the overall deadline (a trickling origin must not
    /// hold the requests coalesced behind it forever).
    pub(super) async fn collect(&self, body: ProxyBody) -> Result<Collected, HttpError> {
        let inner = &self.inner;
        let live = self.live();
        let deadline = Duration::from_millis(live.cfg.limits.origin_body_deadline_ms);
        let limit = live.cfg.cache.max_object_bytes;
        match tokio::time::timeout(
            deadline,
            upstream::collect_up_to(body, limit, &inner.budget),
        )
        .await
        {
            Err(_) => Err(HttpError::GatewayTimeout(format!(
                "origin body not complete within {} ms",
                deadline.as_millis()
            ))),
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "reading an origin body failed");
                Err(if find_source::<Stalled>(&*e).is_some() {
                    HttpError::GatewayTimeout("the origin's body stalled".into())
                } else {
                    HttpError::BadGateway("the origin's body failed".into())
                })
            }
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// Phase 5: an image body becomes a latent unless a guard keeps it.
    /// Returns the body to store and, for latents, the original bytes.
    pub(super) async fn filter(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        bytes: Bytes,
    ) -> (Stored, Option<Bytes>) {
        let inner = &self.inner;
        let m = &inner.metrics.model;
        let keep = |g: Guard, bytes: Bytes| {
            m.guards.with_label_values(&[g.label()]).inc();
            (Stored::Plain(bytes), None)
        };
        let cfg = self.live().cfg.codec.clone();
        if status != StatusCode::OK || !cfg.enabled {
            return (Stored::Plain(bytes), None);
        }
        match transform::precheck(headers, &bytes) {
            transform::Precheck::NotAnImage => return (Stored::Plain(bytes), None),
            transform::Precheck::Keep(g) => return keep(g, bytes),
            transform::Precheck::Encode => {}
        }
        let digest = Memo::digest(&bytes).await;
        if let Some(t) = inner.memo.get(&digest).await {
            m.encodes_reused.inc();
            return match t {
                Transformed::Latent { code, .. } => {
                    let original_len = bytes.len() as u64;
                    (Stored::Latent { code, original_len }, Some(bytes))
                }
                Transformed::Kept(g) => keep(g, bytes),
            };
        }
        let job_bytes = bytes.clone();
        // Timed on the pool thread: the histogram is the model's cost, and the
        // queue wait shows in request latency instead.
        let rx = match inner.pool.try_run(move |codec| {
            let started = Instant::now();
            let t = transform::transform(codec, &job_bytes, &cfg);
            (t, started.elapsed())
        }) {
            Ok(rx) => rx,
            Err(_) => return keep(Guard::PoolFull, bytes),
        };
        let done = rx.await;
        if let Ok((t, _)) = &done {
            inner.memo.insert(digest, t.clone()).await;
        }
        match done {
            Ok((Transformed::Latent { code, psnr }, took)) => {
                m.encodes.inc();
                m.decodes.inc();
                m.encode_seconds.observe(took.as_secs_f64());
                tracing::debug!(psnr, latent = code.len(), original = bytes.len(), "encoded");
                let original_len = bytes.len() as u64;
                (Stored::Latent { code, original_len }, Some(bytes))
            }
            Ok((Transformed::Kept(g), took)) => {
                if matches!(g, Guard::NotSmaller | Guard::LowPsnr) {
                    m.encodes.inc();
                    m.encode_seconds.observe(took.as_secs_f64());
                }
                keep(g, bytes)
            }
            // The job panicked: keep the original, the pool lives on.
            Err(_) => keep(Guard::Undecodable, bytes),
        }
    }

    /// A stored entry updated with a 304's headers (RFC 9111 3.2, 4.3.4).
    pub(super) fn freshen(
        &self,
        e: &Entry,
        new: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Arc<Entry> {
        let mut headers = e.headers.clone();
        let mut replaced: Vec<HeaderName> = Vec::new();
        for (name, value) in new.iter() {
            let n = name.as_str();
            // A 304 describes the stored representation; fields that would
            // change what the stored body *is* are not taken from it.
            const KEEP: [&str; 5] = [
                "content-length",
                "content-encoding",
                "content-range",
                "content-md5",
                "etag",
            ];
            if HOP_BY_HOP.contains(&n) || KEEP.contains(&n) || n == "content-type" && is_latent(e) {
                continue;
            }
            if !replaced.contains(name) {
                headers.remove(name);
                replaced.push(name.clone());
            }
            headers.append(name.clone(), value.clone());
        }
        let f = Freshness::of(
            e.status,
            &headers,
            request_time,
            response_time,
            self.live().heuristic,
        );
        Arc::new(e.freshened(headers, f))
    }
}

/// The client's headers as sent to the origin for a cacheable GET: the
/// client's own conditionals go (the full response is wanted, to store it;
/// they are answered from it afterwards), the stale entry's validators come.
fn origin_conditionals(client: &HeaderMap, stale: Option<&Entry>) -> HeaderMap {
    let mut headers = client.clone();
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    if let Some(e) = stale {
        if let Some(v) = e.headers.get(header::ETAG) {
            headers.insert(header::IF_NONE_MATCH, v.clone());
        }
        if let Some(v) = e.headers.get(header::LAST_MODIFIED) {
            headers.insert(header::IF_MODIFIED_SINCE, v.clone());
        }
    }
    headers
}

/// Removes from a response about to be stored the fields that belong to
/// this one client or this one exchange, and returns them for the client
/// that asked: `Set-Cookie`, and the fields a qualified `no-cache="..."`
/// names (RFC 9111 5.2.2.4: not to be reused without revalidation, so the
/// stored copy never has them). Freshness fields are never withheld.
fn withhold(headers: &mut HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut names = vec![header::SET_COOKIE];
    for f in directives::directives(headers).no_cache_fields {
        match HeaderName::from_bytes(f.as_bytes()) {
            Ok(n)
                if ![
                    header::CACHE_CONTROL,
                    header::AGE,
                    header::DATE,
                    header::EXPIRES,
                ]
                .contains(&n) =>
            {
                names.push(n)
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for n in names {
        for v in headers.get_all(&n) {
            out.push((n.clone(), v.clone()));
        }
        headers.remove(&n);
    }
    out
}
