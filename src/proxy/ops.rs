//! The proxy's own endpoints. On the admin listener only: `/_vaeproxy/healthz`,
//! `/_vaeproxy/metrics` and `PURGE`. On the public one: `OPTIONS *` (about
//! the server itself, never an origin URL).

use super::headers::{add_via, normalize_target, request_host};
use super::upstream::{empty, full, ProxyBody};
use super::Proxy;
use crate::cache::key::PrimaryKey;
use crate::cache::purge::Selector;
use crate::error::HttpError;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

impl Proxy {
    /// The admin listener: nothing here is proxied or cached.
    pub(super) async fn admin(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Response<ProxyBody>, &'static str), HttpError> {
        if req.method().as_str() == "PURGE" {
            return Ok((self.purge(&req).await?, "internal"));
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(HttpError::MethodNotAllowed(format!(
                "the admin listener takes GET, HEAD and PURGE, not {}",
                req.method()
            )));
        }
        Ok((self.ops(req.uri().path()).await, "internal"))
    }

    /// `PURGE /path` (every variant of that URL on the request's Host),
    /// `PURGE /prefix/*` (every URL under it), or any target with
    /// `Vaeproxy-Purge-Tag: a b` (every response tagged `a` or `b`, any host).
    /// `Vaeproxy-Purge: soft` marks stale instead of dropping.
    async fn purge(&self, req: &Request<Incoming>) -> Result<Response<ProxyBody>, HttpError> {
        let h = req.headers();
        let soft = match h.get("vaeproxy-purge").map(|v| v.to_str().unwrap_or("?")) {
            None | Some("hard") => false,
            Some("soft") => true,
            Some(v) => {
                return Err(HttpError::BadRequest(format!(
                    "Vaeproxy-Purge: {v:?} is neither \"soft\" nor \"hard\""
                )))
            }
        };
        let tags: Vec<String> = h
            .get_all("vaeproxy-purge-tag")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([' ', ',']))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let sel = if !tags.is_empty() {
            Selector::Tags(tags)
        } else {
            let host = request_host(req)?;
            let mut uri = req.uri().clone();
            normalize_target(&mut uri)?;
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            match pq.strip_suffix('*') {
                Some(prefix) => Selector::Prefix(PrimaryKey::new("http", &host, prefix)),
                None => Selector::Url(PrimaryKey::new("http", &host, pq)),
            }
        };
        let n = self.inner.cache.purge(&sel, soft).await;
        // The fleet's copies go too, soft purges included: a shared record
        // is fresh by its own clock and would fill the next miss (here or on
        // another proxy) with what was just purged. The local stale copy of
        // a soft purge stays for revalidation.
        let shared = match &self.inner.shared {
            None => None,
            Some(shared) => Some(match &sel {
                Selector::Url(k) => {
                    shared.remove(k).await;
                    1
                }
                Selector::Prefix(p) => shared.purge_prefix(p).await,
                Selector::Tags(t) => shared.purge_tags(t).await,
            }),
        };
        let mode = sel.mode(soft);
        self.inner
            .metrics
            .ops
            .purges
            .with_label_values(&[mode])
            .inc();
        tracing::info!(mode, purged = n, shared, target = %req.uri(), "purge");
        let body = match shared {
            Some(m) => format!("{{\"purged\":{n},\"mode\":\"{mode}\",\"shared\":{m}}}\n"),
            None => format!("{{\"purged\":{n},\"mode\":\"{mode}\"}}\n"),
        };
        let mut r = Response::new(full(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(r)
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
            "/_vaeproxy/healthz" => {
                // the shared tier is detail, never a failed check: the proxy
                // serves without it
                let detail = match &self.inner.shared {
                    Some(s) if s.is_up() => "ok\nshared: up\n",
                    Some(_) => "ok\nshared: down (serving without it)\n",
                    None => "ok\n",
                };
                text(StatusCode::OK, "text/plain", detail.into())
            }
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

/// The answer to a request whose target is `*`: `OPTIONS *` is about the
/// server and answered here; `*` with any other method is malformed.
pub(super) fn asterisk(req: &Request<Incoming>) -> Result<Response<ProxyBody>, HttpError> {
    if req.method() != Method::OPTIONS {
        return Err(HttpError::BadRequest(format!(
            "request target * is only for OPTIONS, not {}",
            req.method()
        )));
    }
    let mut r = Response::new(empty());
    r.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    add_via(r.headers_mut());
    Ok(r)
}
