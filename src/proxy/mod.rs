//! The proxy service. One request goes through these phases, in order:
//!
//! 1. **ops**: `/_vaeproxy/...` is answered here (health, metrics) or by
//!    `samples` (sampled images, variations, interpolations);
//! 2. **route**: Host and path pick an [`upstream::Upstream`]; no match is a
//!    404, so absolute-form URIs or foreign Hosts never reach other servers;
//! 3. **cache lookup** (GET/HEAD): fresh -> hit; stale -> revalidate, or
//!    serve stale where RFC 9111 / RFC 5861 allow; miss -> fetch, one per key;
//! 4. **upstream**: the request with hop-by-hop headers removed, `Via` and
//!    `Forwarded` added, bodies streamed;
//! 5. **response filter**: storable responses are buffered and stored; image
//!    bodies go through [`transform`] on the model pool;
//! 6. **negotiate**: a stored latent image goes out as the latent code or the
//!    original bytes ([`negotiate`]); client conditionals are answered here;
//! 7. **log**: one line per request, and the metrics.
//!
//! Everything else (other methods, ranges, uncacheable responses) streams
//! through untouched, and unsafe methods invalidate what they touch.

pub mod negotiate;
mod samples;
pub mod transform;
pub mod upstream;

use crate::cache::freshness::{self, Directives, Freshness, Heuristic, Reuse};
use crate::cache::key::PrimaryKey;
use crate::cache::{self, Body as Stored, Cache, Entry, Flight};
use crate::codec::pool::Pool;
use crate::config::{Config, IpBlock, Reconstructions};
use crate::error::HttpError;
use crate::latent::wire::{ModelId, MIME};
use crate::metrics::Metrics;
use crate::sampler::Sampler;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri};
use negotiate::Choice;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use transform::{Guard, Memo, Transformed};
use upstream::{
    empty, find_source, full, holding, Budget, ClientBodyError, Collected, Held, OriginClient,
    ProxyBody, Stalled, Upstream, Watched,
};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What a client says about earlier hops; believed only from trusted proxies.
const FORWARDING: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
];

/// The proxy: routes, cache, model pool and metrics. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: Vec<Upstream>,
    client: OriginClient,
    cache: Cache,
    pool: Pool,
    model: ModelId,
    metrics: Metrics,
    cfg: Config,
    heuristic: Heuristic,
    sampler: Sampler,
    /// Peers whose forwarding headers are kept.
    trusted: Vec<IpBlock>,
    /// Bytes of origin bodies buffered for the cache, over all requests.
    budget: Budget,
    /// Encode results by content, so a refetch of the same bytes costs no model work.
    memo: Memo,
}

/// What a request needs from its route, carried through the phases.
struct Ctx<'a> {
    upstream: &'a Upstream,
    peer: SocketAddr,
    /// Host as the client named it (authority, lowercased).
    host: String,
    key: PrimaryKey,
    req_cc: Directives,
}

/// What the upstream phase produced for a cacheable request.
enum Fetched {
    /// A new stored entry (plus the original bytes in hand, for this client),
    /// the buffer budget its bytes hold, and the `Set-Cookie` values that
    /// were kept out of the stored copy but belong to this client.
    Stored(Arc<Entry>, Option<Bytes>, Held, Vec<HeaderValue>),
    /// The stored entry, freshened by a 304.
    Freshened(Arc<Entry>),
    /// The origin failed and the stale entry may stand in.
    StaleOnError(Arc<Entry>),
    /// Not storable: relay as is.
    Relay(Response<ProxyBody>),
}

impl Proxy {
    /// `demo` is the address of the built-in demo origin, if one runs.
    pub fn new(
        cfg: Config,
        pool: Pool,
        metrics: Metrics,
        demo: Option<SocketAddr>,
        sampler: Sampler,
    ) -> Result<Proxy, String> {
        let upstreams = cfg
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Upstream::from_route(r, demo).map_err(|e| format!("route[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let cache = Cache::new(
            cfg.cache.capacity_bytes,
            cfg.cache.originals_bytes,
            Duration::from_secs(cfg.cache.keep_stale_secs),
        );
        let heuristic = Heuristic {
            fraction: cfg.cache.heuristic_fraction,
            max: Duration::from_secs(cfg.cache.heuristic_max_secs),
        };
        let trusted = cfg
            .trusted_proxies
            .iter()
            .map(|p| IpBlock::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let (cfg_budget, cfg_memo) = (cfg.limits.max_buffered_bytes, cfg.cache.content_memo_bytes);
        Ok(Proxy {
            inner: Arc::new(Inner {
                upstreams,
                client: OriginClient::new(&cfg.limits),
                cache,
                model: pool.codec().id(),
                pool,
                metrics,
                cfg,
                heuristic,
                sampler,
                trusted,
                budget: Budget::new(cfg_budget),
                memo: Memo::new(cfg_memo),
            }),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Serves one request; never fails (errors become responses with a reason).
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let start = Instant::now();
        // The access log's fields cost allocations: only when it is on.
        let log = tracing::enabled!(tracing::Level::INFO)
            .then(|| (req.method().clone(), req.uri().path().to_string()));
        let (resp, outcome) = match self.serve(req, peer).await {
            Ok(r) => r,
            Err(e) => (error_response(&e), "error"),
        };
        let m = &self.inner.metrics;
        m.requests.with_label_values(&[outcome]).inc();
        if let Some((method, path)) = log {
            let bytes = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info!(
                %method,
                path,
                status = resp.status().as_u16(),
                cache = outcome,
                bytes,
                ms = start.elapsed().as_millis() as u64,
            );
        }
        // Bodies here are either in memory or an origin body that already has
        // the idle timer: counting is all that is left to do.
        resp.map(|b| Watched::counting(b, m.client_bytes.clone()).boxed())
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<(Response<ProxyBody>, &'static str), HttpError> {
        if let Some(r) = self.generated(&req).await {
            return r;
        }
        if req.uri().path().starts_with("/_vaeproxy/") {
            return Ok((self.ops(req.uri().path()).await, "internal"));
        }
        if req.uri().path() == "*" {
            // `OPTIONS *` asks about the server itself: answered here, never
            // turned into an origin URL.
            if req.method() == Method::OPTIONS {
                let mut r = Response::new(empty());
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"),
                );
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                add_via(r.headers_mut());
                return Ok((r, "internal"));
            }
            return Err(HttpError::BadRequest(format!(
                "request target * is only for OPTIONS, not {}",
                req.method()
            )));
        }
        let host = request_host(&req)?;
        let mut req = req;
        normalize_target(req.uri_mut())?;
        let path = req.uri().path().to_string();
        let host_only = strip_port(&host);
        let upstream = self
            .inner
            .upstreams
            .iter()
            .find(|u| u.matches(host_only, &path))
            .ok_or_else(|| {
                HttpError::NoRoute(format!("no route for host {host_only:?} and path {path:?}"))
            })?;
        let max_body = self.inner.cfg.limits.max_request_body;
        if let Some(len) = content_length(req.headers()) {
            if len > max_body {
                return Err(HttpError::TooLarge(format!(
                    "request body of {len} bytes is over the {max_body}-byte limit"
                )));
            }
        }
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let ctx = Ctx {
            upstream,
            peer,
            key: PrimaryKey::new("http", &host, &pq),
            host,
            req_cc: freshness::directives(req.headers()),
        };
        // A GET/HEAD with a body is forwarded with its body, uncached: the
        // cache path sends none, and a declared length without the bytes
        // would desynchronise the origin connection (request smuggling).
        let cacheable_request = matches!(*req.method(), Method::GET | Method::HEAD)
            && req.body().is_end_stream()
            && !req.headers().contains_key(header::RANGE)
            && !req.headers().contains_key(header::UPGRADE);
        if cacheable_request {
            self.cached(req, &ctx).await
        } else {
            self.pass(req, &ctx).await
        }
    }

    /// Phase 3 for GET/HEAD: lookup, then hit, stale, revalidate or fetch.
    async fn cached(
        &self,
        req: Request<Incoming>,
        ctx: &Ctx<'_>,
    ) -> Result<(Response<ProxyBody>, &'static str), HttpError> {
        let (parts, _body) = req.into_parts();
        let m = &self.inner.metrics;
        let pragma = pragma_no_cache(&parts.headers);
        let mut followed = false;
        loop {
            let now = SystemTime::now();
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
                        if let Flight::Leader(guard) = self.inner.cache.join(&ctx.key) {
                            let me = self.clone();
                            let (p, up, peer, host, key, e2) = (
                                parts_clone(&parts),
                                ctx.upstream.clone(),
                                ctx.peer,
                                ctx.host.clone(),
                                ctx.key.clone(),
                                Arc::clone(&e),
                            );
                            tokio::spawn(async move {
                                let ctx = Ctx {
                                    upstream: &up,
                                    peer,
                                    host,
                                    key,
                                    req_cc: Directives::default(),
                                };
                                let _ = me.fetch(&p, &ctx, Some(e2)).await;
                                drop(guard);
                            });
                        }
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
            let fetched = self.fetch(&parts, ctx, stale).await;
            drop(guard);
            return match fetched? {
                Fetched::Stored(e, original, held, cookies) => {
                    let (r, outcome) = self.respond_from(&e, &parts, ctx, original, "miss").await?;
                    let (mut rp, body) = r.into_parts();
                    for c in cookies {
                        rp.headers.append(header::SET_COOKIE, c);
                    }
                    Ok((Response::from_parts(rp, holding(body, held)), outcome))
                }
                Fetched::Freshened(e) => {
                    self.respond_from(&e, &parts, ctx, None, "revalidated")
                        .await
                }
                Fetched::StaleOnError(e) => self.respond_from(&e, &parts, ctx, None, "stale").await,
                Fetched::Relay(mut r) => {
                    if parts.method == Method::HEAD {
                        *r.body_mut() = empty();
                    }
                    Ok((r, if revalidating { "revalidated" } else { "pass" }))
                }
            };
        }
    }

    /// Phases 4-5 for a cacheable request: ask the origin (conditionally when
    /// `stale` has validators), store what may be stored.
    async fn fetch(
        &self,
        parts: &Parts,
        ctx: &Ctx<'_>,
        stale: Option<Arc<Entry>>,
    ) -> Result<Fetched, HttpError> {
        let inner = &self.inner;
        let mut headers = parts.headers.clone();
        // Ask for the full response so it can be stored; the client's own
        // conditionals are answered from it afterwards.
        headers.remove(header::IF_NONE_MATCH);
        headers.remove(header::IF_MODIFIED_SINCE);
        if let Some(e) = &stale {
            if let Some(v) = e.headers.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, v.clone());
            }
            if let Some(v) = e.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, v.clone());
            }
        }
        let req = self.origin_request(&Method::GET, &parts.uri, &headers, ctx, empty())?;
        let request_time = SystemTime::now();
        inner.metrics.origin_requests.inc();
        let resp = match inner.client.send(req).await {
            Ok(r) => r,
            Err(err) => {
                return match stale {
                    Some(e)
                        if freshness::may_serve_on_error(
                            &e.freshness,
                            &ctx.req_cc,
                            SystemTime::now(),
                        ) =>
                    {
                        Ok(Fetched::StaleOnError(e))
                    }
                    _ => Err(err),
                }
            }
        };
        let response_time = SystemTime::now();
        let status = resp.status();
        if let Some(e) = &stale {
            if status == StatusCode::NOT_MODIFIED {
                let freshened = self.freshen(e, resp.headers(), request_time, response_time);
                inner.cache.store(&ctx.key, Arc::clone(&freshened)).await;
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
                inner.cache.invalidate(&ctx.key).await;
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
        let cookies: Vec<HeaderValue> = rparts
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        rparts.headers.remove(header::SET_COOKIE);
        let f = Freshness::of(
            status,
            &rparts.headers,
            request_time,
            response_time,
            inner.heuristic,
        );
        let (body, original) = self.filter(status, &rparts.headers, bytes).await;
        rparts.headers.remove(header::CONTENT_LENGTH);
        let entry = Arc::new(Entry::new(status, rparts.headers, body, f, &parts.headers));
        if let Some(o) = &original {
            inner.cache.store_original(entry.id, o.clone()).await;
        }
        inner.cache.store(&ctx.key, Arc::clone(&entry)).await;
        Ok(Fetched::Stored(entry, original, held, cookies))
    }

    /// Buffers an origin body for the cache, within the size limit, the
    /// buffer budget and the overall deadline (a trickling origin must not
    /// hold the requests coalesced behind it forever).
    async fn collect(&self, body: ProxyBody) -> Result<Collected, HttpError> {
        let inner = &self.inner;
        let deadline = Duration::from_millis(inner.cfg.limits.origin_body_deadline_ms);
        let limit = inner.cfg.cache.max_object_bytes;
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
    async fn filter(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        bytes: Bytes,
    ) -> (Stored, Option<Bytes>) {
        let inner = &self.inner;
        let m = &inner.metrics;
        let keep = |g: Guard, bytes: Bytes| {
            m.guards.with_label_values(&[g.label()]).inc();
            (Stored::Plain(bytes), None)
        };
        if status != StatusCode::OK || !inner.cfg.codec.enabled {
            return (Stored::Plain(bytes), None);
        }
        if transform::sniff(&bytes).is_none() {
            let labelled_image = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("image/"));
            if labelled_image {
                return keep(Guard::Unsupported, bytes);
            }
            return (Stored::Plain(bytes), None);
        }
        if freshness::directives(headers).no_transform {
            return keep(Guard::NoTransform, bytes);
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
        let cfg = inner.cfg.codec.clone();
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
    fn freshen(
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
            self.inner.heuristic,
        );
        Arc::new(Entry {
            id: e.id,
            status: e.status,
            headers,
            body: e.body.clone(),
            freshness: f,
            vary: e.vary.clone(),
        })
    }

    /// Phase 6: a response from a stored entry, negotiated and conditional.
    async fn respond_from(
        &self,
        e: &Entry,
        parts: &Parts,
        ctx: &Ctx<'_>,
        original_in_hand: Option<Bytes>,
        outcome: &'static str,
    ) -> Result<(Response<ProxyBody>, &'static str), HttpError> {
        let inner = &self.inner;
        let mut headers = e.headers.clone();
        let age = e.freshness.age(SystemTime::now()).as_secs();
        headers.insert(header::AGE, HeaderValue::from(age));
        let body: Bytes = match &e.body {
            Stored::Plain(b) => b.clone(),
            Stored::Latent { code, original_len } => {
                let policy = inner.cfg.codec.reconstructions;
                let choice = negotiate::choose(
                    &parts.headers,
                    ctx.req_cc.no_transform,
                    &inner.model,
                    policy,
                );
                let mut vary = vec!["Accept"];
                if policy == Reconstructions::SaveData {
                    vary.push("Save-Data");
                }
                negotiate::add_vary(&mut headers, &vary);
                match choice {
                    Choice::Latent => {
                        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(MIME));
                        if let Some(tag) = latent_etag(headers.get(header::ETAG), &inner.model) {
                            headers.insert(header::ETAG, tag);
                        }
                        if parts.method == Method::GET {
                            inner
                                .metrics
                                .latent_bytes_saved
                                .inc_by(original_len.saturating_sub(code.len() as u64));
                        }
                        code.clone()
                    }
                    Choice::Original => match original_in_hand {
                        Some(b) => b,
                        None => match inner.cache.original(e.id).await {
                            Some(b) => b,
                            None => self.refetch_original(e, parts, ctx).await?,
                        },
                    },
                    Choice::Reconstruction => match self.reconstruct(code.clone()).await {
                        Some(png) => {
                            headers.insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("image/png"),
                            );
                            headers.remove(header::ETAG);
                            png
                        }
                        None => match inner.cache.original(e.id).await {
                            Some(b) => b,
                            None => self.refetch_original(e, parts, ctx).await?,
                        },
                    },
                }
            }
        };
        headers.insert(
            HeaderName::from_static("x-vaeproxy-cache"),
            HeaderValue::from_static(outcome),
        );
        add_via(&mut headers);
        if e.status == StatusCode::OK && not_modified(&parts.headers, &headers) {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [
                header::ETAG,
                header::CACHE_CONTROL,
                header::EXPIRES,
                header::DATE,
                header::VARY,
                header::CONTENT_LOCATION,
                header::LAST_MODIFIED,
                header::AGE,
                header::VIA,
            ] {
                for v in headers.get_all(&name) {
                    r.headers_mut().append(name.clone(), v.clone());
                }
            }
            return Ok((r, outcome));
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut r = Response::new(if parts.method == Method::HEAD {
            empty()
        } else {
            full(body)
        });
        *r.status_mut() = e.status;
        *r.headers_mut() = headers;
        Ok((r, outcome))
    }

    /// The original of a latent entry when the originals tier does not hold it.
    async fn refetch_original(
        &self,
        e: &Entry,
        parts: &Parts,
        ctx: &Ctx<'_>,
    ) -> Result<Bytes, HttpError> {
        let inner = &self.inner;
        inner.metrics.original_refetches.inc();
        inner.metrics.origin_requests.inc();
        let mut headers = parts.headers.clone();
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::RANGE,
        ] {
            headers.remove(h);
        }
        let req = self.origin_request(&Method::GET, &parts.uri, &headers, ctx, empty())?;
        let resp = inner.client.send(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(HttpError::BadGateway(format!(
                "refetching the original image: origin answered {}",
                resp.status()
            )));
        }
        let body = self.origin_body(resp.into_body());
        let bytes = match self.collect(body).await? {
            // The budget is released once the bytes are in the originals
            // tier (or handed to this one client).
            Collected::Whole(b, _held) => b,
            Collected::Over { .. } => {
                return Err(HttpError::Unavailable(
                    "the original is over the cache's object limit or the proxy's buffer budget is spent; try again".into(),
                ))
            }
        };
        inner.cache.store_original(e.id, bytes.clone()).await;
        Ok(bytes)
    }

    /// A PNG of the latent's reconstruction (operator opt-in), or `None` when
    /// the pool is full or decoding fails.
    async fn reconstruct(&self, code: Bytes) -> Option<Bytes> {
        let rx = self
            .inner
            .pool
            .try_run(move |codec| {
                let img = codec.decode(&code).ok()?;
                let mut out = Vec::new();
                img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                    .ok()?;
                Some(Bytes::from(out))
            })
            .ok()?;
        let png = rx.await.ok()??;
        self.inner.metrics.decodes.inc();
        Some(png)
    }

    /// Everything that is not a cacheable GET/HEAD: streamed both ways.
    /// Unsafe methods invalidate the target and its Location/Content-Location.
    async fn pass(
        &self,
        req: Request<Incoming>,
        ctx: &Ctx<'_>,
    ) -> Result<(Response<ProxyBody>, &'static str), HttpError> {
        let inner = &self.inner;
        let (parts, body) = req.into_parts();
        let idle = Duration::from_millis(inner.cfg.limits.body_idle_timeout_ms);
        let body = Limited::new(body, inner.cfg.limits.max_request_body as usize);
        let body = Watched::new(body, idle, inner.metrics.request_bytes.clone())
            .map_err(|e| -> upstream::BoxError { Box::new(ClientBodyError(e)) })
            .boxed();
        let req = self.origin_request(&parts.method, &parts.uri, &parts.headers, ctx, body)?;
        inner.metrics.origin_requests.inc();
        let resp = inner.client.send(req).await?;
        let unsafe_method = !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        if unsafe_method && (resp.status().is_success() || resp.status().is_redirection()) {
            inner.cache.invalidate(&ctx.key).await;
            for h in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(k) = resp
                    .headers()
                    .get(&h)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| same_origin_key(&ctx.host, v))
                {
                    inner.cache.invalidate(&k).await;
                }
            }
        }
        let (mut rparts, body) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        add_via(&mut rparts.headers);
        Ok((Response::from_parts(rparts, self.origin_body(body)), "pass"))
    }

    /// The request sent to the origin: hop-by-hop removed, proxy headers
    /// added, the URI built from parts (never by pasting strings), and the
    /// framing taken from the body actually sent, never from the client.
    fn origin_request(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        ctx: &Ctx<'_>,
        body: ProxyBody,
    ) -> Result<Request<ProxyBody>, HttpError> {
        let o = &ctx.upstream.origin;
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        if !pq.starts_with('/') {
            return Err(HttpError::BadRequest(format!(
                "request target {pq:?} is not a path"
            )));
        }
        let target = Uri::builder()
            .scheme("http")
            .authority(o.authority.as_str())
            .path_and_query(format!("{}{}", o.base_path, pq))
            .build()
            .map_err(|e| HttpError::BadRequest(format!("request target {pq:?}: {e}")))?;
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = target;
        let h = req.headers_mut();
        *h = headers.clone();
        strip_hop_by_hop(h);
        // hyper frames the request from the body: a copied Content-Length
        // with no bytes behind it is how a GET smuggles a request.
        h.remove(header::CONTENT_LENGTH);
        let host = if ctx.upstream.preserve_host {
            ctx.host.clone()
        } else {
            o.authority.clone()
        };
        h.insert(header::HOST, cache::value(&host));
        let ip = ctx.peer.ip();
        let trusted = self.inner.trusted.iter().any(|b| b.contains(ip));
        if !trusted {
            for name in FORWARDING {
                h.remove(name);
            }
        }
        add_via(h);
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        h.insert("x-forwarded-for", cache::value(&xff));
        h.insert("x-forwarded-host", cache::value(&ctx.host));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        let for_ = if ip.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.to_string()
        };
        h.append(
            header::FORWARDED,
            cache::value(&format!("for={for_};host=\"{}\";proto=http", ctx.host)),
        );
        Ok(req)
    }

    /// An origin body with the idle timeout, size limit and byte count.
    fn origin_body(&self, body: Incoming) -> ProxyBody {
        let inner = &self.inner;
        let idle = Duration::from_millis(inner.cfg.limits.body_idle_timeout_ms);
        let limited = Limited::new(body, inner.cfg.limits.max_response_body as usize);
        Watched::new(limited, idle, inner.metrics.origin_bytes.clone()).boxed()
    }

    async fn ops(&self, path: &str) -> Response<ProxyBody> {
        let text = |status: StatusCode, ct: &'static str, body: String| {
            let mut r = Response::new(full(body));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        };
        match path {
            "/_vaeproxy/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
            "/_vaeproxy/metrics" => {
                let m = &self.inner.metrics;
                let sizes = self.inner.cache.sizes().await;
                for (tier, (entries, bytes)) in ["entries", "originals"].into_iter().zip(sizes) {
                    m.cache_entries
                        .with_label_values(&[tier])
                        .set(entries as i64);
                    m.cache_bytes.with_label_values(&[tier]).set(bytes as i64);
                }
                text(StatusCode::OK, "text/plain; version=0.0.4", m.render())
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no internal endpoint {path}\n"),
            ),
        }
    }
}

fn is_latent(e: &Entry) -> bool {
    matches!(e.body, Stored::Latent { .. })
}

/// The latent representation's ETag, derived from the original's so that
/// revalidation stays tied to the origin's validator.
fn latent_etag(original: Option<&HeaderValue>, model: &ModelId) -> Option<HeaderValue> {
    let tag = original?.to_str().ok()?;
    let (weak, opaque) = match tag.strip_prefix("W/") {
        Some(rest) => ("W/", rest),
        None => ("", tag),
    };
    let inner = opaque.trim_matches('"');
    let id = &model.to_hex()[..8];
    HeaderValue::from_str(&format!("{weak}\"{inner}.vlat-{id}\"")).ok()
}

/// Whether a client's If-None-Match / If-Modified-Since is satisfied by the
/// representation about to be sent (RFC 9110 13.2.2: INM first).
fn not_modified(req: &HeaderMap, resp: &HeaderMap) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = resp.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let mine = strip(etag);
        return inm.split(',').any(|t| t.trim() == "*" || strip(t) == mine);
    }
    let since = freshness::date_header(req, &header::IF_MODIFIED_SINCE);
    // Without Last-Modified, the Date of the stored response is the best
    // lower bound of its modification time (RFC 9110 13.1.3).
    let lm = freshness::date_header(resp, &header::LAST_MODIFIED)
        .or_else(|| freshness::date_header(resp, &header::DATE));
    match (since, lm) {
        (Some(since), Some(lm)) => lm <= since,
        _ => false,
    }
}

fn error_response(e: &HttpError) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("{e}\n")));
    *r.status_mut() = e.status();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    add_via(h);
    r
}

/// The authority the client asked for: from an absolute-form URI (HTTP/2, or
/// a proxy-style request line), else from Host.
fn request_host(req: &Request<Incoming>) -> Result<String, HttpError> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_ascii_lowercase());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .ok_or_else(|| HttpError::BadRequest("request has no Host header".into()))?
        .to_str()
        .map_err(|_| HttpError::BadRequest("Host header is not ASCII".into()))?;
    let host: hyper::http::uri::Authority = host
        .parse()
        .map_err(|_| HttpError::BadRequest(format!("Host header {host:?} is not a host")))?;
    Ok(host.as_str().to_ascii_lowercase())
}

/// Normalises the request path (RFC 3986 5.2.4, with `%2E` read as `.`) so
/// that routing, the cache key and the origin all see the same path; an
/// encoded `/` or `\` is refused, since origins disagree on what it means.
fn normalize_target(uri: &mut Uri) -> Result<(), HttpError> {
    let path = uri.path();
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(HttpError::BadRequest(format!(
            "path {path:?} has an encoded slash or backslash"
        )));
    }
    let normal = remove_dot_segments(path);
    if let Cow::Borrowed(_) = normal {
        return Ok(());
    }
    let pq = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal.into_owned(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| HttpError::BadRequest(format!("path {pq:?} is not valid")))?,
    );
    *uri = Uri::from_parts(parts)
        .map_err(|_| HttpError::BadRequest(format!("path {pq:?} is not valid")))?;
    Ok(())
}

/// RFC 3986 5.2.4 for an absolute path; borrowed when nothing changes.
fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    let is_dot = |seg: &str, dots: usize| {
        let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
        decoded.len() == dots && decoded.bytes().all(|b| b == b'.')
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Cow::Borrowed(path);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if !segments.iter().any(|s| is_dot(s, 1) || is_dot(s, 2)) {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if is_dot(seg, 1) {
        } else if is_dot(seg, 2) {
            out.pop();
        } else {
            out.push(seg);
            continue;
        }
        // "/a/.." and "/a/." name a directory: keep the trailing slash.
        if i == last {
            out.push("");
        }
    }
    Cow::Owned(format!("/{}", out.join("/")))
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split(']').next().map_or(authority, |h| &h[1..]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn pragma_no_cache(h: &HeaderMap) -> bool {
    !h.contains_key(header::CACHE_CONTROL)
        && h.get_all(header::PRAGMA).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("no-cache"))
        })
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named = negotiate::list_members(h, header::CONNECTION);
    for n in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        h.remove(n);
    }
}

fn add_via(h: &mut HeaderMap) {
    h.append(header::VIA, HeaderValue::from_static("1.1 vaeproxy"));
}

/// The cache key a Location/Content-Location names, if on the same host.
fn same_origin_key(host: &str, loc: &str) -> Option<PrimaryKey> {
    let uri: Uri = loc.parse().ok()?;
    match uri.authority() {
        Some(a) if !a.as_str().eq_ignore_ascii_case(host) => None,
        _ => {
            let pq = uri.path_and_query()?.as_str();
            pq.starts_with('/')
                .then(|| PrimaryKey::new("http", host, pq))
        }
    }
}

fn parts_clone(p: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn conditionals() {
        let mut resp = HeaderMap::new();
        resp.insert(header::ETAG, HeaderValue::from_static("\"a\""));
        resp.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Tue, 15 Nov 1994 12:45:26 GMT"),
        );
        let mut req = HeaderMap::new();
        req.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"a\", \"b\""),
        );
        assert!(not_modified(&req, &resp));
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"b\""));
        assert!(!not_modified(&req, &resp));
        let mut req = HeaderMap::new();
        req.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Tue, 15 Nov 1994 12:45:26 GMT"),
        );
        assert!(not_modified(&req, &resp));
    }

    #[test]
    fn latent_etags_follow_the_original() {
        let id = ModelId([0xab; 16]);
        let t = latent_etag(Some(&HeaderValue::from_static("W/\"x1\"")), &id).unwrap();
        assert_eq!(t, "W/\"x1.vlat-abababab\"");
        assert!(latent_etag(None, &id).is_none());
    }

    #[test]
    fn dot_segments() {
        for (path, want) in [
            ("/a/b/c", "/a/b/c"),
            ("/a/./b/../c", "/a/c"),
            ("/pub/../secret", "/secret"),
            ("/pub/%2e%2E/secret", "/secret"),
            ("/../../x", "/x"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
            ("/a//b", "/a//b"),
            ("/a/...b/.c", "/a/...b/.c"),
        ] {
            assert_eq!(remove_dot_segments(path), want, "{path}");
        }
        assert!(matches!(remove_dot_segments("/plain"), Cow::Borrowed(_)));
        let mut uri: Uri = "/x/..%2Fy".parse().unwrap();
        assert!(normalize_target(&mut uri).is_err());
        let mut uri: Uri = "/x/../y?q=/../".parse().unwrap();
        normalize_target(&mut uri).unwrap();
        assert_eq!(uri, "/y?q=/../", "the query is left alone");
    }

    #[test]
    fn hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
        assert!(same_origin_key("h:1", "http://other/x").is_none());
        assert_eq!(
            same_origin_key("h:1", "/x?y").unwrap().0,
            "GET http://h:1/x?y"
        );
    }
}
