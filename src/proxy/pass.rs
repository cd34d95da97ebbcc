//! Everything that is not a cacheable GET/HEAD: streamed both ways, the
//! request body blamed on the client when it fails; unsafe methods
//! invalidate the target and its same-host Location/Content-Location.

use super::headers::{add_via, same_origin_key, strip_hop_by_hop};
use super::upstream::{self, ClientBodyError, ProxyBody, Watched};
use super::{log, Ctx, Proxy};
use crate::error::HttpError;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response};
use std::time::{Duration, Instant};

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
        let limits = &ctx.live.cfg.limits;
        let idle = Duration::from_millis(limits.body_idle_timeout_ms);
        let body = Limited::new(body, limits.max_request_body as usize);
        let body = Watched::new(body, idle, inner.metrics.request_bytes.clone())
            .map_err(|e| -> upstream::BoxError { Box::new(ClientBodyError(e)) })
            .boxed();
        let req = self.origin_request(&parts.method, &parts.uri, &parts.headers, ctx, body)?;
        let resp = self.send(req).await?;
        let unsafe_method = !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        if unsafe_method && (resp.status().is_success() || resp.status().is_redirection()) {
            self.invalidate(&ctx.key).await;
            for h in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(k) = resp
                    .headers()
                    .get(&h)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| same_origin_key(&ctx.host, v))
                {
                    self.invalidate(&k).await;
                }
            }
        }
        let (mut rparts, body) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        add_via(&mut rparts.headers);
        Ok((Response::from_parts(rparts, self.origin_body(body)), "pass"))
    }

    /// Phase 4: one request to an origin, counted, timed for the metrics
    /// and the access line, its failure counted by kind.
    pub(super) async fn send(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, HttpError> {
        let m = &self.inner.metrics;
        m.origin_requests.inc();
        let started = Instant::now();
        let r = self.inner.client.send(req).await;
        let took = started.elapsed();
        log::record_upstream(took);
        m.origin_seconds.observe(took.as_secs_f64());
        if let Err(e) = &r {
            let kind = match e {
                HttpError::GatewayTimeout(_) => "timeout",
                HttpError::BadGateway(_) => "unreachable",
                _ => "client_body",
            };
            m.origin_errors.with_label_values(&[kind]).inc();
        }
        r
    }

    /// An origin body with the idle timeout, size limit and byte count.
    pub(super) fn origin_body(&self, body: Incoming) -> ProxyBody {
        let inner = &self.inner;
        let live = self.live();
        let limits = &live.cfg.limits;
        let idle = Duration::from_millis(limits.body_idle_timeout_ms);
        let limited = Limited::new(body, limits.max_response_body as usize);
        Watched::new(limited, idle, inner.metrics.origin_bytes.clone()).boxed()
    }
}
