//! The proxy's own endpoints: `/_vaeproxy/healthz`, `/_vaeproxy/metrics`,
//! and `OPTIONS *` (about the server itself, never an origin URL).

use super::headers::add_via;
use super::upstream::{empty, full, ProxyBody};
use super::Proxy;
use crate::error::HttpError;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

impl Proxy {
    pub(super) async fn ops(&self, path: &str) -> Response<ProxyBody> {
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
