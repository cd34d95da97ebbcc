//! Header and target hygiene on the way to the origin: hop-by-hop fields,
//! forwarding headers (trusted only from configured proxies), the request's
//! host, path normalisation, and the origin request built from parts.

use super::negotiate;
use super::upstream::ProxyBody;
use super::{Ctx, Proxy};
use crate::cache::key::PrimaryKey;
use crate::cache::{self, Body as Stored, Entry};
use crate::error::HttpError;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Uri};
use std::borrow::Cow;

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
pub(super) const HOP_BY_HOP: [&str; 9] = [
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
pub(super) const FORWARDING: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
];

impl Proxy {
    /// The request sent to the origin: hop-by-hop removed, proxy headers
    /// added, the URI built from parts (never by pasting strings), and the
    /// framing taken from the body actually sent, never from the client.
    pub(super) fn origin_request(
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
            .scheme(if o.tls { "https" } else { "http" })
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
        let trusted = ctx.live.is_trusted(ip);
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
}

/// The authority the client asked for: from an absolute-form URI (HTTP/2, or
/// a proxy-style request line), else from Host.
pub(super) fn request_host(req: &Request<Incoming>) -> Result<String, HttpError> {
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
pub(super) fn normalize_target(uri: &mut Uri) -> Result<(), HttpError> {
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
pub(super) fn remove_dot_segments(path: &str) -> Cow<'_, str> {
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

pub(super) fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split(']').next().map_or(authority, |h| &h[1..]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

pub(super) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

pub(super) fn pragma_no_cache(h: &HeaderMap) -> bool {
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

/// Adds this cache's member to `Cache-Status` (RFC 9211), after any that
/// the origin or caches behind it sent, as the RFC orders them.
pub(super) fn add_cache_status(h: &mut HeaderMap, outcome: &str) {
    let member = match outcome {
        "hit" => "vaeproxy; hit",
        // Served from the cache while stale (stale-while-revalidate,
        // stale-if-error): still a hit, with why.
        "stale" => "vaeproxy; hit; detail=stale",
        "sample" | "derived" => "vaeproxy; hit; detail=generated",
        "miss" => "vaeproxy; fwd=miss",
        "revalidated" => "vaeproxy; fwd=stale",
        "pass" => "vaeproxy; fwd=bypass",
        "sample_pending" | "derived_busy" => "vaeproxy; detail=busy",
        "error" => "vaeproxy; detail=error",
        _ => "vaeproxy",
    };
    h.append(
        header::HeaderName::from_static("cache-status"),
        HeaderValue::from_static(member),
    );
}

pub(super) fn add_via(h: &mut HeaderMap) {
    h.append(header::VIA, HeaderValue::from_static("1.1 vaeproxy"));
}

/// The cache key a Location/Content-Location names, if on the same host.
pub(super) fn same_origin_key(host: &str, loc: &str) -> Option<PrimaryKey> {
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

pub(super) fn parts_clone(p: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

pub(super) fn is_latent(e: &Entry) -> bool {
    matches!(e.body, Stored::Latent { .. })
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
