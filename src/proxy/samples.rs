//! The generative routes. They are answered before routing and never reach
//! an origin:
//!
//! - `/_vaeproxy/samples/{pool}/{index}` and `.../random`: prior samples,
//!   generated in the background at startup;
//! - `/_vaeproxy/variations/{pool}?of=URL&n=K[&index=I]`: samples from the
//!   posterior of an image already in the cache;
//! - `/_vaeproxy/interpolate?a=URL&b=URL&steps=K[&index=I]`: frames along
//!   the straight line between two cached latents.
//!
//! Variations and interpolations are made on first request on the model pool
//! (one job per key however many clients ask) and then served from the
//! sampler's cache. Without `index` they are one strip of frames side by
//! side; with it, one frame, which is negotiated like a cached image: a
//! latent-capable client gets the frame's latent code.

use super::generation::Refusal;
use super::headers::request_host;
use super::respond::not_modified;
use super::upstream::{empty, full, ProxyBody};
use super::{error_response, negotiate, Proxy};
use crate::cache::directives;
use crate::cache::key::PrimaryKey;
use crate::cache::{self, Body as Stored};
use crate::error::HttpError;
use crate::latent::wire::{self, MIME};
use crate::sampler::{self, code_hash, DerivedError, Lookup, Output, Sample};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use std::net::SocketAddr;
use std::time::Instant;

type Answer = Result<(Response<ProxyBody>, &'static str), HttpError>;

/// Most frames in one strip.
const MAX_FRAMES: u32 = 16;
/// Most pixels one request may make (frames x width x height): bounds the
/// model time a single request can ask for (~5 s on one core).
const MAX_OUTPUT_PIXELS: u64 = 8 << 20;
/// Made from cached codes that may change at the origin: short-lived
/// downstream, while our copy is keyed by the codes themselves.
const DERIVED_CC: &str = "public, max-age=300";
/// Frames per strip when the request does not say.
const DEFAULT_VARIATIONS: u32 = 4;
const DEFAULT_STEPS: u32 = 8;

impl Proxy {
    /// Answers a generative route, or `None` when the path is not one.
    pub(super) async fn generated(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Option<Answer> {
        let path = req.uri().path();
        let route = if let Some(rest) = path.strip_prefix("/_vaeproxy/samples/") {
            Route::Sample(rest)
        } else if let Some(pool) = path.strip_prefix("/_vaeproxy/variations/") {
            Route::Variations(pool)
        } else if path == "/_vaeproxy/interpolate" {
            Route::Interpolate
        } else {
            return None;
        };
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Some(Err(HttpError::MethodNotAllowed(
                "generated images are read-only: use GET or HEAD".into(),
            )));
        }
        let g = self.live().cfg.generative.clone();
        let (on, key) = match route {
            Route::Sample(_) => (true, ""),
            Route::Variations(_) => (g.variations, "variations"),
            Route::Interpolate => (g.interpolations, "interpolations"),
        };
        if !on {
            self.inner
                .metrics
                .ops
                .generative_refused
                .with_label_values(&["disabled"])
                .inc();
            return Some(Err(HttpError::NotFound(format!(
                "{path} is off on this proxy (the operator's [generative] {key} = true turns it on)"
            ))));
        }
        Some(match route {
            Route::Sample(rest) => self.sample(rest, req).await,
            Route::Variations(pool) => self.variations(pool, req, peer).await,
            Route::Interpolate => self.interpolate(req, peer).await,
        })
    }

    /// `/_vaeproxy/samples/{pool}/{index|random}`.
    async fn sample(&self, rest: &str, req: &Request<Incoming>) -> Answer {
        let (pool, which) = rest.split_once('/').ok_or_else(|| {
            HttpError::NotFound(format!(
                "no sample at {rest:?}: use /_vaeproxy/samples/POOL/INDEX"
            ))
        })?;
        let sampler = &self.inner.sampler;
        let count = sampler
            .pools()
            .iter()
            .find(|p| p.name == pool)
            .ok_or_else(|| no_pool(pool))?
            .count;
        if which == "random" {
            let i = rand::random_range(0..count);
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(
                header::LOCATION,
                cache::value(&format!("/_vaeproxy/samples/{pool}/{i}")),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok((r, "sample"));
        }
        let index: u32 = which.parse().map_err(|_| {
            HttpError::BadRequest(format!(
                "sample index {which:?} is not a number (or \"random\")"
            ))
        })?;
        match sampler.get(pool, index).await {
            Lookup::Ready(s) => Ok((self.picture(req, &s, "public, max-age=86400"), "sample")),
            Lookup::NotReady => Ok((
                busy(format!("sample {pool}/{index} is being generated")),
                "sample_pending",
            )),
            Lookup::OutOfRange(n) => Err(HttpError::NotFound(format!(
                "pool {pool:?} has samples 0..{n}, not {index}"
            ))),
            Lookup::NoPool => Err(no_pool(pool)),
        }
    }

    /// `/_vaeproxy/variations/{pool}?of=URL&n=K[&index=I]`: the pool gives
    /// the seed, the temperature and the output format.
    async fn variations(&self, pool: &str, req: &Request<Incoming>, peer: SocketAddr) -> Answer {
        let spec = self
            .inner
            .sampler
            .pools()
            .iter()
            .find(|p| p.name == pool)
            .ok_or_else(|| no_pool(pool))?
            .clone();
        let q = Query::of(req.uri());
        let of = q.required("of")?;
        let n = q.number("n", 1..=MAX_FRAMES)?.unwrap_or(DEFAULT_VARIATIONS);
        let index = q.number("index", 0..=MAX_FRAMES - 1)?;
        let code = self.cached_code("of", of, req).await?;
        let (w, h) = dimensions(&code)?;
        check_output("of", index.map_or(n, |_| 1), w, h)?;
        let which = index.map_or(format!("n{n}"), |i| format!("i{i}"));
        let key = format!("variations/{pool}/{:016x}/{which}", code_hash(&code));
        let sampler = &self.inner.sampler;
        // Served from the cache without touching the posterior when made before.
        if let Some(s) = sampler.derived(&key).await {
            return Ok((self.picture(req, &s, DERIVED_CC), "derived"));
        }
        if let Some(refused) = self.refusal(peer) {
            return Ok((refused, "refused"));
        }
        let post = match sampler.posterior(code).await {
            Ok(p) => p,
            Err(e) => return self.not_derived(e, "variation"),
        };
        let job = move |codec: &crate::Codec| sampler::variations(codec, &post, &spec, n, index);
        self.derived(req, key, "variation", job).await
    }

    /// `/_vaeproxy/interpolate?a=URL&b=URL&steps=K[&index=I]`, as PNG.
    async fn interpolate(&self, req: &Request<Incoming>, peer: SocketAddr) -> Answer {
        let q = Query::of(req.uri());
        let (a_url, b_url) = (q.required("a")?, q.required("b")?);
        let steps = q.number("steps", 2..=MAX_FRAMES)?.unwrap_or(DEFAULT_STEPS);
        let index = q.number("index", 0..=MAX_FRAMES - 1)?;
        if let Some(i) = index.filter(|&i| i >= steps) {
            return Err(HttpError::BadRequest(format!(
                "index={i} is not a frame of steps={steps} (0..{steps})"
            )));
        }
        let a = self.cached_code("a", a_url, req).await?;
        let b = self.cached_code("b", b_url, req).await?;
        let ((wa, ha), (wb, hb)) = (dimensions(&a)?, dimensions(&b)?);
        check_output("a", index.map_or(steps, |_| 1), wa.min(wb), ha.min(hb))?;
        let which = index.map_or("strip".to_string(), |i| format!("i{i}"));
        let key = format!(
            "interpolate/{:016x}/{:016x}/{steps}/{which}",
            code_hash(&a),
            code_hash(&b)
        );
        if let Some(s) = self.inner.sampler.derived(&key).await {
            return Ok((self.picture(req, &s, DERIVED_CC), "derived"));
        }
        if let Some(refused) = self.refusal(peer) {
            return Ok((refused, "refused"));
        }
        let job = move |codec: &crate::Codec| {
            sampler::interpolation(codec, &a, &b, steps, index, Output::PNG)
        };
        self.derived(req, key, "interpolation", job).await
    }

    /// Admits a new variation or interpolation from `peer` under the
    /// `[generative]` budgets (`None`), or gives the 429/503 that refuses it.
    fn refusal(&self, peer: SocketAddr) -> Option<Response<ProxyBody>> {
        let cfg = self.live().cfg.generative.clone();
        let refusal = match self.inner.generative.admit(peer.ip(), &cfg, Instant::now()) {
            Ok(()) => return None,
            Err(r) => r,
        };
        self.inner
            .metrics
            .ops
            .generative_refused
            .with_label_values(&[refusal.label()])
            .inc();
        let (e, wait) = match refusal {
            Refusal::PerIp { retry_after } => (
                HttpError::TooManyRequests(format!(
                    "this address started {} new generations this minute, the limit",
                    cfg.per_ip_per_minute
                )),
                retry_after,
            ),
            Refusal::ModelTime { retry_after } => (
                HttpError::Unavailable(format!(
                    "new generations used their {} model seconds this minute",
                    cfg.model_seconds_per_minute
                )),
                retry_after,
            ),
        };
        let mut r = error_response(&e);
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        Some(r)
    }

    /// Serves `key` from the sampler's cache, running `job` on a miss; the
    /// job's model time is charged to the generative budget.
    async fn derived<F>(
        &self,
        req: &Request<Incoming>,
        key: String,
        kind: &'static str,
        job: F,
    ) -> Answer
    where
        F: FnOnce(&crate::Codec) -> crate::Result<Sample> + Send + 'static,
    {
        let limiter = std::sync::Arc::clone(&self.inner.generative);
        let job = move |codec: &crate::Codec| {
            let started = Instant::now();
            let out = job(codec);
            limiter.charge(started.elapsed());
            out
        };
        match self.inner.sampler.derive(key, kind, job).await {
            Ok(s) => Ok((self.picture(req, &s, DERIVED_CC), "derived")),
            Err(e) => self.not_derived(e, kind),
        }
    }

    /// The answer when a variation or interpolation could not be made.
    fn not_derived(&self, e: DerivedError, kind: &str) -> Answer {
        match e {
            DerivedError::Busy => Ok((
                busy("the model pool is busy with live traffic".into()),
                "derived_busy",
            )),
            DerivedError::Failed(e) => {
                Err(HttpError::Internal(format!("generating the {kind}: {e}")))
            }
        }
    }

    /// The latent code stored for `url` (a path on this request's host, or an
    /// absolute `http://` URL), which must already be in the cache as an image.
    async fn cached_code(
        &self,
        param: &str,
        url: &str,
        req: &Request<Incoming>,
    ) -> Result<Bytes, HttpError> {
        let (host, path) = if url.starts_with('/') {
            (request_host(req)?, url.to_string())
        } else {
            let bad = || {
                HttpError::BadRequest(format!(
                    "{param}={url:?} is neither a path (/...) nor an http:// URL"
                ))
            };
            let uri: Uri = url.parse().map_err(|_| bad())?;
            if uri.scheme_str() != Some("http") {
                return Err(bad());
            }
            let host = uri
                .authority()
                .ok_or_else(bad)?
                .as_str()
                .to_ascii_lowercase();
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
            (host, path)
        };
        let key = PrimaryKey::new("http", &host, &path);
        let entry = self
            .inner
            .cache
            .lookup(&key, req.headers())
            .await
            .ok_or_else(|| {
                HttpError::NotFound(format!(
                    "{param}={url} is not in the cache: request it through the proxy first"
                ))
            })?;
        match &entry.body {
            Stored::Latent { code, .. } => Ok(code.clone()),
            Stored::Plain(_) => Err(HttpError::NotFound(format!(
                "{param}={url} is cached, but not as a latent image (not an image, or kept as \
                 its original bytes: see vaeproxy_guard_total)"
            ))),
        }
    }

    /// A generated picture, or its latent code for a latent-capable client.
    fn picture(
        &self,
        req: &Request<Incoming>,
        s: &Sample,
        cache_control: &'static str,
    ) -> Response<ProxyBody> {
        let mut headers = HeaderMap::new();
        let latent = s.latent.as_ref().filter(|_| {
            !directives::directives(req.headers()).no_transform
                && negotiate::accepts_latent(req.headers(), &self.inner.model)
        });
        let (body, ctype, etag) = match latent {
            Some(code) => (
                code.clone(),
                MIME,
                format!("\"{}.vlat\"", s.etag.trim_matches('"')),
            ),
            None => (s.image.clone(), s.content_type, s.etag.clone()),
        };
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        headers.insert(header::ETAG, cache::value(&etag));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        if s.latent.is_some() {
            headers.insert(header::VARY, HeaderValue::from_static("Accept"));
        }
        let mut r = Response::new(empty());
        if not_modified(req.headers(), &headers) {
            *r.status_mut() = StatusCode::NOT_MODIFIED;
        } else {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            if req.method() == Method::GET {
                *r.body_mut() = full(body);
            }
        }
        *r.headers_mut() = headers;
        r
    }
}

enum Route<'a> {
    Sample(&'a str),
    Variations(&'a str),
    Interpolate,
}

fn no_pool(pool: &str) -> HttpError {
    HttpError::NotFound(format!("no sample pool named {pool:?}"))
}

/// 503 with `Retry-After`: the work is under way or the pool is full.
fn busy(reason: String) -> Response<ProxyBody> {
    let mut r = error_response(&HttpError::Unavailable(reason));
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Picture size named in a code's header (the header is all that is read).
fn dimensions(code: &[u8]) -> Result<(u32, u32), HttpError> {
    let h = wire::parse(code)
        .map_err(|e| HttpError::Internal(format!("a cached latent code is unreadable: {e}")))?
        .header;
    Ok((h.width, h.height))
}

fn check_output(param: &str, frames: u32, w: u32, h: u32) -> Result<(), HttpError> {
    let pixels = u64::from(frames) * u64::from(w) * u64::from(h);
    if pixels > MAX_OUTPUT_PIXELS {
        return Err(HttpError::BadRequest(format!(
            "{frames} frame(s) of {w}x{h} ({param}) is {pixels} pixels, over the \
             {MAX_OUTPUT_PIXELS}-pixel limit per request: ask for fewer frames or one `index`"
        )));
    }
    Ok(())
}

/// The decoded query string. Unknown parameters are ignored (cache busters
/// stay harmless); a known one given twice is an error, not a guess.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(uri: &Uri) -> Query {
        Query(
            form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Result<Option<&str>, HttpError> {
        let mut found = self.0.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(HttpError::BadRequest(format!(
                "query parameter {name:?} given more than once"
            )));
        }
        Ok(first)
    }

    fn required(&self, name: &str) -> Result<&str, HttpError> {
        self.get(name)?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| HttpError::BadRequest(format!("missing query parameter {name:?}")))
    }

    fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<u32>, HttpError> {
        let Some(v) = self.get(name)? else {
            return Ok(None);
        };
        match v.parse::<u32>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(HttpError::BadRequest(format!(
                "{name}={v:?} is not a number in {}..={}",
                range.start(),
                range.end()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let uri: Uri = "/x?of=%2Fa.jpg%3Fw%3D1&n=3&n2=&junk".parse().unwrap();
        let q = Query::of(&uri);
        assert_eq!(q.required("of").unwrap(), "/a.jpg?w=1");
        assert_eq!(q.number("n", 1..=16).unwrap(), Some(3));
        assert_eq!(q.number("index", 0..=15).unwrap(), None);
        assert!(q.required("n2").is_err(), "empty is missing");
        assert!(q.number("n", 4..=16).is_err(), "out of range");
        let twice = Query::of(&"/x?n=1&n=2".parse().unwrap());
        assert!(twice.get("n").is_err());
        let junk = Query::of(&"/x?n=-1".parse().unwrap());
        assert!(junk.number("n", 0..=16).is_err());
    }

    #[test]
    fn output_limit() {
        assert!(check_output("a", 16, 768, 512).is_ok());
        assert!(check_output("a", 16, 1024, 1024).is_err());
        assert!(check_output("a", 1, 4096, 4096).is_err());
    }
}
