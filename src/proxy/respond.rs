//! Phase 6: a response from a stored entry, negotiated (latent, original or
//! reconstruction) and conditional; the original refetched when the
//! originals tier no longer holds it.

use super::headers::add_via;
use super::negotiate::{self, Choice};
use super::upstream::{empty, full, Collected, ProxyBody};
use super::{Ctx, Proxy};
use crate::cache::directives;
use crate::cache::{Body as Stored, Entry};
use crate::config::Reconstructions;
use crate::error::HttpError;
use crate::latent::wire::{ModelId, MIME};
use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};

impl Proxy {
    /// Phase 6: a response from a stored entry, negotiated and conditional.
    pub(super) async fn respond_from(
        &self,
        e: &Entry,
        parts: &Parts,
        ctx: &Ctx<'_>,
        original_in_hand: Option<Bytes>,
        outcome: &'static str,
    ) -> Result<(Response<ProxyBody>, &'static str), HttpError> {
        let inner = &self.inner;
        let mut headers = e.headers.clone();
        let age = e.freshness.age(self.inner.cache.clock().now()).as_secs();
        headers.insert(header::AGE, HeaderValue::from(age));
        let body: Bytes = match &e.body {
            Stored::Plain(b) => b.clone(),
            Stored::Latent { code, original_len } => {
                let policy = ctx.live.cfg.codec.reconstructions;
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
    pub(super) async fn refetch_original(
        &self,
        e: &Entry,
        parts: &Parts,
        ctx: &Ctx<'_>,
    ) -> Result<Bytes, HttpError> {
        let inner = &self.inner;
        inner.metrics.original_refetches.inc();
        let mut headers = parts.headers.clone();
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::RANGE,
        ] {
            headers.remove(h);
        }
        let req = self.origin_request(&Method::GET, &parts.uri, &headers, ctx, empty())?;
        let resp = self.send(req).await?;
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
    pub(super) async fn reconstruct(&self, code: Bytes) -> Option<Bytes> {
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
        self.inner.metrics.model.decodes.inc();
        Some(png)
    }
}

/// The latent representation's ETag, derived from the original's so that
/// revalidation stays tied to the origin's validator.
pub(super) fn latent_etag(original: Option<&HeaderValue>, model: &ModelId) -> Option<HeaderValue> {
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
pub(super) fn not_modified(req: &HeaderMap, resp: &HeaderMap) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = resp.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let mine = strip(etag);
        return inm.split(',').any(|t| t.trim() == "*" || strip(t) == mine);
    }
    let since = directives::date_header(req, &header::IF_MODIFIED_SINCE);
    // Without Last-Modified, the Date of the stored response is the best
    // lower bound of its modification time (RFC 9110 13.1.3).
    let lm = directives::date_header(resp, &header::LAST_MODIFIED)
        .or_else(|| directives::date_header(resp, &header::DATE));
    match (since, lm) {
        (Some(since), Some(lm)) => lm <= since,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
