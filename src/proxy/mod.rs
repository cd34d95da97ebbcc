//! The proxy service. One request goes through these phases, in order, each
//! in its own file as an `impl Proxy` block:
//!
//! 1. **ops** (`ops.rs`): `/_vaeproxy/...` (health, metrics) and `OPTIONS *`
//!    are answered here, or by `samples.rs` (sampled images, variations,
//!    interpolations);
//! 2. **route** (this file): the target is normalised (`headers.rs`), then
//!    Host and path pick an [`upstream::Upstream`]; no match is a 404, so
//!    absolute-form URIs or foreign Hosts never reach other servers;
//! 3. **cache lookup** (`lookup.rs`, GET/HEAD without a body): fresh -> hit;
//!    stale -> revalidate, or serve stale where RFC 9111 / RFC 5861 allow;
//!    miss -> fetch, one per key;
//! 4. **upstream** (`headers.rs`, `upstream.rs`): the request with hop-by-hop
//!    and untrusted forwarding headers removed, `Via` and `Forwarded` added,
//!    the URI built from parts and the framing from the body sent;
//! 5. **response filter** (`lookup.rs`): storable responses are buffered
//!    within the budget and stored; image bodies go through [`transform`] on
//!    the model pool;
//! 6. **negotiate** (`respond.rs`): a stored latent image goes out as the
//!    latent code or the original bytes ([`negotiate`]); client conditionals
//!    are answered here;
//! 7. **log** (this file): one line per request, and the metrics.
//!
//! Everything else (other methods, ranges, bodies on GET, uncacheable
//! responses) streams through (`pass.rs`), and unsafe methods invalidate what
//! they touch.

mod headers;
mod lookup;
pub mod negotiate;
mod ops;
mod pass;
mod respond;
mod samples;
pub mod transform;
pub mod upstream;

pub use headers::strip_hop_by_hop;

use crate::cache::freshness::{self, Directives, Heuristic};
use crate::cache::key::PrimaryKey;
use crate::cache::{Cache, Entry};
use crate::codec::pool::Pool;
use crate::config::{Config, IpBlock};
use crate::error::{HttpError, StartError};
use crate::latent::wire::ModelId;
use crate::metrics::Metrics;
use crate::sampler::Sampler;
use bytes::Bytes;
use headers::{add_via, content_length, normalize_target, request_host, strip_port};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use transform::Memo;
use upstream::{full, Budget, Held, OriginClient, ProxyBody, Upstream, Watched};

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
    ) -> Result<Proxy, StartError> {
        let upstreams = cfg
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                Upstream::from_route(r, demo).map_err(|reason| StartError::Route { index, reason })
            })
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
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::TrustedProxy)?;
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
            return Ok((ops::asterisk(&req)?, "internal"));
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
}

pub(super) fn error_response(e: &HttpError) -> Response<ProxyBody> {
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
