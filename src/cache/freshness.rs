//! RFC 9111 as pure functions over headers and times: which responses a
//! shared cache may store (section 3), how long they stay fresh (4.2.1,
//! heuristics 4.2.2), how old they are (4.2.3), and what a request's own
//! `Cache-Control` allows (5.2.1). No I/O here, so every rule is unit-tested.
//! The header values themselves are parsed in [`super::directives`].

use super::directives::{age_header, date_header, directives, surrogate, Directives};
use super::targeted::targeted;
use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode};
use std::time::{Duration, SystemTime};

/// Status codes a cache may store without explicit freshness (9110 15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether a shared cache may store this response to this request (9111 3, 3.5).
pub fn storable(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
) -> bool {
    if method != Method::GET {
        return false;
    }
    // 206 needs range merging, which this cache does not do; 1xx are not final.
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT {
        return false;
    }
    if status == StatusCode::NOT_MODIFIED {
        return false;
    }
    let req = directives(req_headers);
    let (resp, (surrogate_no_store, surrogate_max_age)) = response_directives(resp_headers);
    // must-understand: store only statuses whose caching rules we know, and
    // then it overrides no-store (9111 5.2.2.3).
    let understood = matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    );
    if resp.must_understand && !understood {
        return false;
    }
    let no_store = resp.no_store && !resp.must_understand;
    if req.no_store || no_store || resp.private || surrogate_no_store {
        return false;
    }
    if resp_headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |s| s.split(',').any(|f| f.trim() == "*"))
    }) {
        return false;
    }
    if req_headers.contains_key(header::AUTHORIZATION)
        && !(resp.must_revalidate || resp.public || resp.s_maxage.is_some())
    {
        return false;
    }
    resp.public
        || surrogate_max_age.is_some()
        || resp.max_age.is_some()
        || resp.s_maxage.is_some()
        || resp_headers.contains_key(header::EXPIRES)
        || heuristically_cacheable(status)
}

/// The response's directives for this cache: a valid `CDN-Cache-Control`
/// (RFC 9213) replaces `Cache-Control` and `Surrogate-Control` whole;
/// otherwise `Cache-Control`, with `Surrogate-Control`'s no-store and max-age.
fn response_directives(headers: &HeaderMap) -> (Directives, (bool, Option<u64>)) {
    match targeted(headers) {
        Some(d) => (d, (false, None)),
        None => (directives(headers), surrogate(headers)),
    }
}

/// How a stored response may be reused, fixed when it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    /// Freshness lifetime (4.2.1); zero when it must be revalidated.
    pub lifetime: Duration,
    /// corrected_initial_age (4.2.3), measured at `response_time`.
    pub initial_age: Duration,
    /// When the response was received.
    pub response_time: SystemTime,
    /// must-revalidate, proxy-revalidate or s-maxage: never serve stale (4.2.4).
    pub no_stale: bool,
    /// `no-cache`: revalidate before every use.
    pub always_revalidate: bool,
    /// The response's `stale-while-revalidate` window, seconds.
    pub stale_while_revalidate: Option<u64>,
    /// The response's `stale-if-error` window, seconds.
    pub stale_if_error: Option<u64>,
}

/// Heuristic freshness parameters from the config.
#[derive(Debug, Clone, Copy)]
pub struct Heuristic {
    /// Share of the time since `Last-Modified` taken as the lifetime (RFC 9111 4.2.2).
    pub fraction: f64,
    /// Upper bound of a heuristic lifetime.
    pub max: Duration,
}

impl Freshness {
    /// Computes freshness for a response received at `response_time` to a
    /// request sent at `request_time`.
    pub fn of(
        status: StatusCode,
        headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        heuristic: Heuristic,
    ) -> Freshness {
        let (d, (_, surrogate_max_age)) = response_directives(headers);
        let date = date_header(headers, &header::DATE).unwrap_or(response_time);
        let age = age_header(headers);
        let lifetime = match (d.s_maxage, d.max_age) {
            _ if age.is_err() => Duration::ZERO,
            _ if surrogate_max_age.is_some() => Duration::from_secs(surrogate_max_age.unwrap_or(0)),
            (Some(s), _) => Duration::from_secs(s.unwrap_or(0)),
            (None, Some(m)) => Duration::from_secs(m.unwrap_or(0)),
            (None, None) => {
                if headers.contains_key(header::EXPIRES) {
                    // An invalid or repeated Expires means "already expired".
                    let several = headers.get_all(header::EXPIRES).iter().count() > 1;
                    match date_header(headers, &header::EXPIRES) {
                        Some(exp) if !several => exp.duration_since(date).unwrap_or_default(),
                        _ => Duration::ZERO,
                    }
                } else if heuristically_cacheable(status) || d.public {
                    match date_header(headers, &header::LAST_MODIFIED) {
                        Some(lm) => {
                            let since = date.duration_since(lm).unwrap_or_default();
                            since.mul_f64(heuristic.fraction).min(heuristic.max)
                        }
                        None => Duration::ZERO,
                    }
                } else {
                    Duration::ZERO
                }
            }
        };
        let apparent_age = response_time.duration_since(date).unwrap_or_default();
        let response_delay = response_time
            .duration_since(request_time)
            .unwrap_or_default();
        let age_value = Duration::from_secs(age.ok().flatten().unwrap_or(0));
        let initial_age = apparent_age.max(age_value + response_delay);
        Freshness {
            lifetime,
            initial_age,
            response_time,
            no_stale: d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some(),
            always_revalidate: d.no_cache,
            stale_while_revalidate: d.stale_while_revalidate,
            stale_if_error: d.stale_if_error,
        }
    }

    /// current_age (4.2.3) at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Remaining freshness at `now` (zero when stale).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.lifetime.saturating_sub(self.age(now))
    }

    /// How far past its lifetime the response is at `now`.
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.age(now).saturating_sub(self.lifetime)
    }
}

/// What to do with a stored response for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it as is.
    Fresh,
    /// Serve it stale (the request's max-stale allows it).
    Stale,
    /// Serve it stale and revalidate in the background (stale-while-revalidate).
    StaleRevalidate,
    /// Revalidate with the origin before use.
    Revalidate,
}

/// Combines the stored response's freshness with the request's directives.
pub fn reuse(f: &Freshness, req: &Directives, req_pragma_no_cache: bool, now: SystemTime) -> Reuse {
    if f.always_revalidate || req.no_cache || req_pragma_no_cache {
        return Reuse::Revalidate;
    }
    let age = f.age(now).as_secs();
    if let Some(max_age) = req.max_age {
        if age > max_age.unwrap_or(0) {
            return Reuse::Revalidate;
        }
    }
    let remaining = f.remaining(now).as_secs();
    let fresh = f.lifetime.as_secs() > age;
    if fresh && req.min_fresh.is_none_or(|m| remaining >= m) {
        return Reuse::Fresh;
    }
    if f.no_stale {
        return Reuse::Revalidate;
    }
    let stale_for = f.staleness(now).as_secs();
    if let Some(max_stale) = req.max_stale {
        if max_stale.is_none_or(|m| stale_for <= m) && req.min_fresh.is_none() {
            return Reuse::Stale;
        }
    }
    if let Some(swr) = f.stale_while_revalidate {
        if !fresh && stale_for <= swr {
            return Reuse::StaleRevalidate;
        }
    }
    Reuse::Revalidate
}

/// Whether a stale response may stand in for an origin error (RFC 5861 4).
pub fn may_serve_on_error(f: &Freshness, req: &Directives, now: SystemTime) -> bool {
    if f.no_stale {
        return false;
    }
    let stale_for = f.staleness(now).as_secs();
    f.stale_if_error.is_some_and(|s| stale_for <= s)
        || req.stale_if_error.is_some_and(|s| stale_for <= s)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cache::directives::test_headers as h;

    const H: Heuristic = Heuristic {
        fraction: 0.1,
        max: Duration::from_secs(86400),
    };

    #[test]
    fn lifetime_precedence() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let exp = httpdate::fmt_http_date(now + Duration::from_secs(100));
        let f = |hs: &[(&str, &str)]| Freshness::of(StatusCode::OK, &h(hs), now, now, H).lifetime;
        assert_eq!(
            f(&[("cache-control", "max-age=10, s-maxage=20")]).as_secs(),
            20
        );
        assert_eq!(
            f(&[("cache-control", "max-age=10"), ("expires", &exp)]).as_secs(),
            10
        );
        assert_eq!(f(&[("date", &date), ("expires", &exp)]).as_secs(), 100);
        assert_eq!(f(&[("date", &date), ("expires", "0")]).as_secs(), 0);
        let lm = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        assert_eq!(f(&[("date", &date), ("last-modified", &lm)]).as_secs(), 100);
        // No heuristics for a status that is not heuristically cacheable.
        let f302 = Freshness::of(
            StatusCode::FOUND,
            &h(&[("date", &date), ("last-modified", &lm)]),
            now,
            now,
            H,
        );
        assert_eq!(f302.lifetime, Duration::ZERO);
    }

    #[test]
    fn invalid_age_is_stale() {
        let now = SystemTime::now();
        for bad in [
            &[("age", "abc")][..],
            &[("age", "0, 0")],
            &[("age", "1"), ("age", "1")],
            &[("age", "5;x=1")],
        ] {
            let mut hs = vec![("cache-control", "max-age=100")];
            hs.extend_from_slice(bad);
            let f = Freshness::of(StatusCode::OK, &h(&hs), now, now, H);
            assert_eq!(f.lifetime, Duration::ZERO, "{bad:?}");
        }
    }

    #[test]
    fn surrogate_control_overrides() {
        let now = SystemTime::now();
        let f = |hs: &[(&str, &str)]| Freshness::of(StatusCode::OK, &h(hs), now, now, H).lifetime;
        assert_eq!(
            f(&[
                ("cache-control", "max-age=1"),
                ("surrogate-control", "max-age=60")
            ])
            .as_secs(),
            60
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "max-age= 5")
            ])
            .as_secs(),
            60
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "max-age=5;cdn")
            ])
            .as_secs(),
            60
        );
    }

    #[test]
    fn age_counts_upstream_age_and_delay() {
        let now = SystemTime::now();
        let sent = now - Duration::from_secs(2);
        let f = Freshness::of(
            StatusCode::OK,
            &h(&[("cache-control", "max-age=100"), ("age", "30")]),
            sent,
            now,
            H,
        );
        assert_eq!(f.age(now).as_secs(), 32);
        assert_eq!(f.remaining(now).as_secs(), 68);
    }

    #[test]
    fn storability() {
        let none = HeaderMap::new();
        let get = Method::GET;
        let ok = StatusCode::OK;
        assert!(storable(
            &get,
            &none,
            ok,
            &h(&[("cache-control", "max-age=1")])
        ));
        assert!(!storable(
            &get,
            &none,
            ok,
            &h(&[("cache-control", "private, max-age=1")])
        ));
        assert!(!storable(
            &get,
            &none,
            ok,
            &h(&[("cache-control", "no-store")])
        ));
        assert!(!storable(&get, &none, ok, &h(&[("vary", "*")])));
        assert!(!storable(
            &Method::POST,
            &none,
            ok,
            &h(&[("cache-control", "max-age=1")])
        ));
        assert!(!storable(&get, &none, StatusCode::FOUND, &none));
        assert!(storable(
            &get,
            &none,
            StatusCode::BAD_GATEWAY,
            &h(&[("cache-control", "max-age=1")])
        ));
        assert!(!storable(
            &get,
            &none,
            ok,
            &h(&[
                ("surrogate-control", "no-store"),
                ("cache-control", "max-age=9")
            ])
        ));
        assert!(storable(
            &get,
            &none,
            StatusCode::FOUND,
            &h(&[("cache-control", "max-age=1")])
        ));
        let auth = h(&[("authorization", "Basic eA==")]);
        assert!(!storable(
            &get,
            &auth,
            ok,
            &h(&[("cache-control", "max-age=1")])
        ));
        assert!(storable(
            &get,
            &auth,
            ok,
            &h(&[("cache-control", "public, max-age=1")])
        ));
    }

    #[test]
    fn reuse_rules() {
        let now = SystemTime::now();
        let f = |cc: &str, age: &str| {
            Freshness::of(
                StatusCode::OK,
                &h(&[("cache-control", cc), ("age", age)]),
                now,
                now,
                H,
            )
        };
        let none = Directives::default();
        assert_eq!(
            reuse(&f("max-age=10", "0"), &none, false, now),
            Reuse::Fresh
        );
        assert_eq!(
            reuse(&f("max-age=10", "20"), &none, false, now),
            Reuse::Revalidate
        );
        assert_eq!(
            reuse(&f("max-age=10", "0"), &none, true, now),
            Reuse::Revalidate
        );
        let stale_ok = directives(&h(&[("cache-control", "max-stale=60")]));
        assert_eq!(
            reuse(&f("max-age=10", "20"), &stale_ok, false, now),
            Reuse::Stale
        );
        assert_eq!(
            reuse(
                &f("max-age=10, must-revalidate", "20"),
                &stale_ok,
                false,
                now
            ),
            Reuse::Revalidate
        );
        assert_eq!(
            reuse(
                &f("max-age=10, stale-while-revalidate=60", "20"),
                &none,
                false,
                now
            ),
            Reuse::StaleRevalidate
        );
        let young = directives(&h(&[("cache-control", "max-age=5")]));
        assert_eq!(
            reuse(&f("max-age=100", "10"), &young, false, now),
            Reuse::Revalidate
        );
        assert!(may_serve_on_error(
            &f("max-age=1, stale-if-error=60", "10"),
            &none,
            now
        ));
        assert!(!may_serve_on_error(&f("max-age=1", "10"), &none, now));
    }
}
