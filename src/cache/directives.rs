//! The cache headers as values: `Cache-Control` directives (RFC 9111 5.2),
//! `Age` (5.1), HTTP dates and `Surrogate-Control`, parsed once per message
//! and leniently where the RFC says a cache must (first occurrence wins, a
//! malformed delta is "invalid", not zero). The rules that use them are in
//! [`super::freshness`].

use hyper::header::{self, HeaderMap, HeaderName};
use std::time::SystemTime;

/// delta-seconds larger than this are taken as this (RFC 9111 1.2.2).
pub(crate) const MAX_DELTA: u64 = 2_147_483_648;

/// Parsed `Cache-Control` directives (response or request).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Directives {
    /// `no-store`: neither request nor response may be stored.
    pub no_store: bool,
    /// `no-cache` without field names: every use needs revalidation.
    pub no_cache: bool,
    /// `no-cache="a, b"` (RFC 9111 5.2.2.4): only these fields (lowercased)
    /// may not be reused without revalidation; the rest of the response may.
    pub no_cache_fields: Vec<String>,
    /// `private`: for one user's cache only; a shared cache does not store it.
    pub private: bool,
    /// `public`: storable even where it otherwise would not be (e.g. with `Authorization`).
    pub public: bool,
    /// `must-revalidate`: never served stale, even on origin errors.
    pub must_revalidate: bool,
    /// `proxy-revalidate`: `must-revalidate` for shared caches.
    pub proxy_revalidate: bool,
    /// `no-transform`: the body must reach the client as the origin sent it (no latent).
    pub no_transform: bool,
    /// `only-if-cached` (request): answer from the cache or with 504.
    pub only_if_cached: bool,
    /// `must-understand`: store only if the status code's caching rules are known.
    pub must_understand: bool,
    /// `Some(None)` marks a present but invalid value, which makes a response stale.
    pub max_age: Option<Option<u64>>,
    /// `s-maxage`, as `max_age`; overrides it in a shared cache.
    pub s_maxage: Option<Option<u64>>,
    /// Request `max-stale`: `Some(None)` = any staleness.
    pub max_stale: Option<Option<u64>>,
    /// `min-fresh` (request): seconds of freshness the client wants left.
    pub min_fresh: Option<u64>,
    /// `stale-while-revalidate` (RFC 5861), seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861), seconds.
    pub stale_if_error: Option<u64>,
}

/// Parses every `Cache-Control` line of `headers`. Unknown directives are
/// ignored; for duplicated ones the first occurrence is used (9111 4.2.1).
pub fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    for line in headers.get_all(header::CACHE_CONTROL) {
        let Ok(line) = line.to_str() else { continue };
        for (name, value) in split_directives(line) {
            if seen.contains(&name) {
                continue;
            }
            seen.push(name.clone());
            let secs = || value.as_deref().and_then(parse_delta);
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => match value.as_deref().map(str::trim) {
                    Some(fields) if !fields.is_empty() => d.no_cache_fields.extend(
                        fields
                            .split(',')
                            .map(|f| f.trim().to_ascii_lowercase())
                            .filter(|f| !f.is_empty()),
                    ),
                    _ => d.no_cache = true,
                },
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "no-transform" => d.no_transform = true,
                "only-if-cached" => d.only_if_cached = true,
                "must-understand" => d.must_understand = true,
                "max-age" => d.max_age = Some(secs()),
                "s-maxage" => d.s_maxage = Some(secs()),
                "max-stale" => d.max_stale = Some(secs()),
                "min-fresh" => d.min_fresh = secs(),
                "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                "stale-if-error" => d.stale_if_error = secs(),
                _ => {}
            }
        }
    }
    d
}

/// `a, b=1, c="x, y"` -> [(a, None), (b, Some(1)), (c, Some(x, y))], names lowercased.
fn split_directives(line: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c.to_ascii_lowercase());
            chars.next();
        }
        let name = name.trim().to_string();
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            let mut v = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(e) = chars.next() {
                                v.push(e)
                            }
                        }
                        c => v.push(c),
                    }
                }
                // Skip anything between the closing quote and the next comma.
                while chars.peek().is_some_and(|c| *c != ',') {
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    v.push(c);
                    chars.next();
                }
                v = v.trim().to_string();
            }
            value = Some(v);
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
}

/// delta-seconds: digits only, capped at 2^31.
fn parse_delta(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
}

/// An HTTP-date header's first line, if it is a valid HTTP-date.
pub fn date_header(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let v = values.next()?;
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

/// `Age`: `Ok(None)` when absent, `Ok(Some(secs))` for exactly one line
/// holding one delta-seconds, `Err(())` for anything else (a list, a second
/// line, a sign, a fraction, a parameter). Age is a singleton field (RFC 9111
/// 5.1), so an invalid one cannot be trusted and the response counts as stale.
#[allow(clippy::result_unit_err)]
pub fn age_header(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut lines = headers.get_all(header::AGE).iter();
    let Some(v) = lines.next() else {
        return Ok(None);
    };
    if lines.next().is_some() {
        return Err(());
    }
    let v = v.to_str().map_err(|_| ())?;
    parse_delta(v.trim()).map(Some).ok_or(())
}

/// `Surrogate-Control` (W3C Edge Architecture), untargeted directives only:
/// (no-store, max-age). It speaks to caches like this one, so it overrides
/// `Cache-Control` and `Expires` for freshness.
pub fn surrogate(headers: &HeaderMap) -> (bool, Option<u64>) {
    let mut no_store = false;
    let mut max_age = None;
    for line in headers.get_all("surrogate-control") {
        let Ok(line) = line.to_str() else { continue };
        for d in line.split(',') {
            let d = d.trim();
            // `max-age=60;device` targets another surrogate: not ours.
            if d.contains(';') {
                continue;
            }
            let (name, value) = match d.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (d, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("no-store", None) => no_store = true,
                ("max-age", Some(v)) if max_age.is_none() => {
                    // The note's grammar has no spaces and allows `+stale`.
                    let v = v.split('+').next().unwrap_or("");
                    max_age = parse_delta(v);
                }
                _ => {}
            }
        }
    }
    (no_store, max_age)
}

/// Headers from `(name, value)` pairs, repeats kept: for the cache's unit tests.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cache::directives::test_headers as h;

    #[test]
    fn parses_directives() {
        let d = directives(&h(&[
            ("cache-control", "Max-Age=60, no-cache=\"set-cookie, x\""),
            ("cache-control", "max-age=5, s-maxage=\"10\", private"),
        ]));
        assert_eq!(d.max_age, Some(Some(60)), "first occurrence wins");
        assert_eq!(d.s_maxage, Some(Some(10)), "quoted value accepted");
        assert!(
            !d.no_cache && d.private,
            "a qualified no-cache names fields"
        );
        assert_eq!(d.no_cache_fields, ["set-cookie", "x"]);
        assert!(directives(&h(&[("cache-control", "no-cache")])).no_cache);
        let bad = directives(&h(&[("cache-control", "max-age=-1")]));
        assert_eq!(bad.max_age, Some(None));
        let big = directives(&h(&[("cache-control", "max-age=99999999999999999999")]));
        assert_eq!(big.max_age, Some(Some(MAX_DELTA)));
    }
}
