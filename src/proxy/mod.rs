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

mod fleet;
mod generation;
mod headers;
mod log;
mod lookup;
pub mod negotiate;
mod ops;
mod pass;
mod reload;
mod respond;
mod samples;
pub mod transform;
pub mod upstream;

pub use headers::strip_hop_by_hop;

use crate::cache::directives::{self, Directives};
use crate::cache::freshness::Heuristic;
use crate::cache::key::PrimaryKey;
use crate::cache::shared::Shared;
use crate::cache::{Cache, Entry};
use crate::clock::Clock;
use crate::codec::pool::Pool;
use crate::config::{Config, IpBlock};
use crate::error::{HttpError, StartError};
use crate::latent::wire::ModelId;
use crate::metrics::Metrics;
use crate::sampler::Sampler;
use bytes::Bytes;
use headers::{
    add_cache_status, add_via, content_length, normalize_target, request_host, strip_port,
};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use log::{status_class, AccessLog};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;
use transform::Memo;
use upstream::{full, Budget, Held, OriginClient, ProxyBody, Upstream, Watched};

/// The proxy: routes, cache, model pool and metrics. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The site's visitors: routes, the cache, the generative routes.
    Public,
    /// The operator: health, metrics, purge; nothing is proxied.
    Admin,
}

struct Inner {
    /// What a SIGHUP may replace: each request reads one snapshot.
    live: RwLock<Arc<Live>>,
    client: OriginClient,
    cache: Cache,
    pool: Pool,
    model: ModelId,
    metrics: Metrics,
    sampler: Sampler,
    /// The demo origin's address, fixed for the process's life.
    demo: Option<SocketAddr>,
    /// Bytes of origin bodies buffered for the cache, over all requests.
    budget: Budget,
    /// Encode results by content, so a refetch of the same bytes costs no model work.
    memo: Memo,
    /// Open connections per client address (`limits.max_connections_per_ip`).
    conns: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Budgets of the on-demand generative routes.
    generative: Arc<generation::Limiter>,
    /// The fleet's shared tier under `cache`, when `cache.shared` is set.
    shared: Option<Shared>,
}

/// The configuration in force and what is derived from it.
struct Live {
    cfg: Config,
    upstreams: Vec<Upstream>,
    heuristic: Heuristic,
    /// Peers whose forwarding headers are kept.
    trusted: Vec<IpBlock>,
}

impl Live {
    fn new(cfg: Config, demo: Option<SocketAddr>) -> Result<Live, StartError> {
        let upstreams = cfg
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                Upstream::from_route(r, demo).map_err(|reason| StartError::Route { index, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trusted = cfg
            .trusted_proxies
            .iter()
            .map(|p| IpBlock::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::TrustedProxy)?;
        let heuristic = Heuristic {
            fraction: cfg.cache.heuristic_fraction,
            max: Duration::from_secs(cfg.cache.heuristic_max_secs),
        };
        Ok(Live {
            cfg,
            upstreams,
            heuristic,
            trusted,
        })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|b| b.contains(ip))
    }
}

/// A client connection's place in the per-address count; freed on drop.
pub struct ConnectionSlot {
    ip: Option<IpAddr>,
    conns: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut map = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// What a request needs from its route, carried through the phases.
struct Ctx<'a> {
    upstream: &'a Upstream,
    peer: SocketAddr,
    /// Host as the client named it (authority, lowercased).
    host: String,
    key: PrimaryKey,
    req_cc: Directives,
    /// The configuration this request runs under.
    live: &'a Live,
}

/// What the upstream phase produced for a cacheable request.
enum Fetched {
    /// A new stored entry (plus the original bytes in hand, for this client),
    /// the buffer budget its bytes hold, and the fields kept out of the
    /// stored copy that still belong to this client (`Set-Cookie`, fields
    /// named by a qualified `no-cache`).
    Stored(
        Arc<Entry>,
        Option<Bytes>,
        Held,
        Vec<(header::HeaderName, HeaderValue)>,
    ),
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
        clock: Clock,
    ) -> Result<Proxy, StartError> {
        let cache = Cache::new(
            cfg.cache.capacity_bytes,
            cfg.cache.originals_bytes,
            Duration::from_secs(cfg.cache.keep_stale_secs),
        )
        .with_clock(clock);
        let (cfg_budget, cfg_memo) = (cfg.limits.max_buffered_bytes, cfg.cache.content_memo_bytes);
        for g in transform::Guard::ALL {
            metrics.model.guards.with_label_values(&[g.label()]);
        }
        let client = OriginClient::new(&cfg.limits, cfg.origin_ca_file.as_deref())?;
        let shared = cfg.cache.shared_config().map(|c| {
            let ops = &metrics.ops;
            let model = pool.codec().id().to_hex();
            Shared::start(c, &model, ops.shared.clone(), ops.shared_errors.clone())
        });
        let live = Live::new(cfg, demo)?;
        Ok(Proxy {
            inner: Arc::new(Inner {
                live: RwLock::new(Arc::new(live)),
                client,
                cache,
                model: pool.codec().id(),
                pool,
                metrics,
                sampler,
                demo,
                budget: Budget::new(cfg_budget),
                memo: Memo::new(cfg_memo),
                conns: Arc::default(),
                generative: Arc::default(),
                shared,
            }),
        })
    }

    /// The configuration in force (one snapshot; a reload swaps it whole).
    fn live(&self) -> Arc<Live> {
        Arc::clone(&self.inner.live.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.live().cfg.clone()
    }

    /// A slot outside the per-address count (the admin listener's).
    pub fn unlimited_slot(&self) -> ConnectionSlot {
        ConnectionSlot {
            ip: None,
            conns: Arc::clone(&self.inner.conns),
        }
    }

    /// A slot for a new connection from `ip`, or `None` when that address
    /// already holds `limits.max_connections_per_ip`.
    pub fn connection_slot(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        let live = self.live();
        let conns = Arc::clone(&self.inner.conns);
        if live.is_trusted(ip) {
            return Some(ConnectionSlot { ip: None, conns });
        }
        let max = live.cfg.limits.max_connections_per_ip;
        let mut map = conns.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        drop(map);
        Some(ConnectionSlot {
            ip: Some(ip),
            conns,
        })
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The model pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Serves one request that came in on `role`'s listener; never fails
    /// (errors become responses with a reason).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        role: Role,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        // The access log's fields cost allocations: only when it is on.
        let log = tracing::enabled!(tracing::Level::INFO).then(|| AccessLog::of(&req, peer));
        // one span per request, so a model job's TRACE span and any warning
        // name the request they belong to
        let span = tracing::debug_span!("request", method = %req.method(), path = req.uri().path());
        let (served, upstream) = log::timed(async {
            match role {
                Role::Public => self.serve(req, peer).await,
                Role::Admin => self.admin(req).await,
            }
        })
        .instrument(span)
        .await;
        let (mut resp, outcome) = served.unwrap_or_else(|e| (error_response(&e), "error"));
        if role == Role::Public {
            add_cache_status(resp.headers_mut(), outcome);
        }
        let m = &self.inner.metrics;
        m.requests.with_label_values(&[outcome]).inc();
        let elapsed = start.elapsed();
        m.request_seconds
            .with_label_values(&[status_class(resp.status())])
            .observe(elapsed.as_secs_f64());
        if let Some(log) = log {
            log.write(&resp, outcome, elapsed, upstream);
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
        if let Some(r) = self.generated(&req, peer).await {
            return r;
        }
        if req.uri().path().starts_with("/_vaeproxy/") {
            // Health, metrics and purge are the admin listener's alone.
            return Err(HttpError::NotFound(format!(
                "no public endpoint {}",
                req.uri().path()
            )));
        }
        if req.uri().path() == "*" {
            return Ok((ops::asterisk(&req)?, "internal"));
        }
        let live = self.live();
        let host = request_host(&req)?;
        let mut req = req;
        normalize_target(req.uri_mut())?;
        let path = req.uri().path().to_string();
        let host_only = strip_port(&host);
        let upstream = live
            .upstreams
            .iter()
            .find(|u| u.matches(host_only, &path))
            .ok_or_else(|| {
                HttpError::NoRoute(format!("no route for host {host_only:?} and path {path:?}"))
            })?;
        let max_body = live.cfg.limits.max_request_body;
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
            req_cc: directives::directives(req.headers()),
            live: &live,
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

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("ConnectionSlot").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}
