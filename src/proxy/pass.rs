//! Everything that is not a cacheable GET/HEAD: streamed both ways, the
//! request body blamed on the client when it fails; unsafe methods
//! invalidate the target and its same-host Location/Content-Location.

use super::headers::{add_via, same_origin_key, strip_hop_by_hop};
use super::upstream::{self, ClientBodyError, ProxyBody, Watched};
use super::{Ctx, Proxy};
use crate::error::HttpError;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response};
use std::time::Duration;

impl Proxy {
    /// Everything that is not a cacheable GET/HEAD: streamed both ways.
    /// Unsafe methods invalidate the target and its Location/Content-Location.
    pub(super) async fn pass(
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

    /// An origin body with the idle timeout, size limit and byte count.
    pub(super) fn origin_body(&self, body: Incoming) -> ProxyBody {
        let inner = &self.inner;
        let idle = Duration::from_millis(inner.cfg.limits.body_idle_timeout_ms);
        let limited = Limited::new(body, inner.cfg.limits.max_response_body as usize);
        Watched::new(limited, idle, inner.metrics.origin_bytes.clone()).boxed()
    }
}
