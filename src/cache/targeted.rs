//! Targeted cache control (RFC 9213): `CDN-Cache-Control` speaks to caches
//! like this one (a reverse proxy or CDN) and, when present and valid,
//! replaces `Cache-Control` for them, so an origin can say "browsers: one
//! minute; the proxy: a day". The field is a Structured Field dictionary
//! (RFC 8941); one that does not parse as one is ignored whole, and
//! `Cache-Control` applies as if it were absent. The field is forwarded
//! unchanged (a cache further down may be targeted too).

use super::directives::{Directives, MAX_DELTA};
use hyper::header::HeaderMap;

/// The directives of a valid `CDN-Cache-Control`, or `None` when it is
/// absent or not a valid dictionary (then `Cache-Control` rules).
pub fn targeted(headers: &HeaderMap) -> Option<Directives> {
    let mut lines = headers.get_all("cdn-cache-control").iter().peekable();
    lines.peek()?;
    // several lines form one dictionary (RFC 8941 3.2: combined with commas)
    let mut text = String::new();
    for (i, l) in lines.enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(l.to_str().ok()?);
    }
    let mut d = Directives::default();
    for (key, value) in dictionary(&text)? {
        let secs = || match value {
            Value::Integer(n) if n >= 0 => Some((n as u64).min(MAX_DELTA)),
            _ => None,
        };
        let flag = matches!(value, Value::True);
        match key.as_str() {
            // a directive of the wrong type makes the field invalid
            "max-age" => d.max_age = Some(Some(secs()?)),
            "s-maxage" => d.s_maxage = Some(Some(secs()?)),
            "stale-while-revalidate" => d.stale_while_revalidate = Some(secs()?),
            "stale-if-error" => d.stale_if_error = Some(secs()?),
            "no-store" if flag => d.no_store = true,
            "no-cache" if flag => d.no_cache = true,
            "private" if flag => d.private = true,
            "public" if flag => d.public = true,
            "must-revalidate" if flag => d.must_revalidate = true,
            "proxy-revalidate" if flag => d.proxy_revalidate = true,
            "no-store" | "no-cache" | "private" | "public" | "must-revalidate"
            | "proxy-revalidate" => return None,
            _ => {} // extensions are allowed and ignored
        }
    }
    Some(d)
}

/// The value types a cache directive can have.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Integer(i64),
    True,
    Other,
}

/// RFC 8941 3.2 dictionary: `key[=item][;params], ...`. Only what the
/// directives need is kept; everything is checked.
fn dictionary(s: &str) -> Option<Vec<(String, Value)>> {
    let b = s.as_bytes();
    let mut i = skip_sp(b, 0);
    let mut out = Vec::new();
    if i == b.len() {
        return Some(out);
    }
    loop {
        let (key, next) = key(b, i)?;
        i = next;
        let value = if b.get(i) == Some(&b'=') {
            let (v, next) = item(b, i + 1)?;
            i = next;
            v
        } else {
            Value::True
        };
        i = params(b, i)?;
        out.push((key, value));
        i = skip_ows(b, i);
        if i == b.len() {
            return Some(out);
        }
        if b[i] != b',' {
            return None;
        }
        i = skip_ows(b, i + 1);
        if i == b.len() {
            return None; // a trailing comma
        }
    }
}

fn skip_sp(b: &[u8], mut i: usize) -> usize {
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    i
}

fn skip_ows(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
fn key(b: &[u8], i: usize) -> Option<(String, usize)> {
    let first = *b.get(i)?;
    if !(first.is_ascii_lowercase() || first == b'*') {
        return None;
    }
    let mut j = i + 1;
    while b
        .get(j)
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(c))
    {
        j += 1;
    }
    Some((String::from_utf8(b[i..j].to_vec()).ok()?, j))
}

/// A bare item: integer, decimal, string, token, byte sequence or boolean.
fn item(b: &[u8], i: usize) -> Option<(Value, usize)> {
    let c = *b.get(i)?;
    match c {
        b'-' | b'0'..=b'9' => {
            let mut j = i + usize::from(c == b'-');
            let start = j;
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            if j == start {
                return None;
            }
            if b.get(j) == Some(&b'.') {
                let frac = j + 1;
                j = frac;
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                let ok = j > frac && j - frac <= 3 && frac - 1 - start <= 12;
                return ok.then_some((Value::Other, j));
            }
            if j - start > 15 {
                return None;
            }
            let n: i64 = std::str::from_utf8(&b[i..j]).ok()?.parse().ok()?;
            Some((Value::Integer(n), j))
        }
        b'"' => {
            let mut j = i + 1;
            loop {
                match *b.get(j)? {
                    b'"' => return Some((Value::Other, j + 1)),
                    b'\\' => {
                        if !matches!(b.get(j + 1), Some(b'"' | b'\\')) {
                            return None;
                        }
                        j += 2;
                    }
                    0x20..=0x7e => j += 1,
                    _ => return None,
                }
            }
        }
        b'?' => match b.get(i + 1) {
            Some(b'1') => Some((Value::True, i + 2)),
            Some(b'0') => Some((Value::Other, i + 2)),
            _ => None,
        },
        b':' => {
            let mut j = i + 1;
            while b
                .get(j)
                .is_some_and(|c| c.is_ascii_alphanumeric() || b"+/=".contains(c))
            {
                j += 1;
            }
            (b.get(j) == Some(&b':')).then_some((Value::Other, j + 1))
        }
        c if c.is_ascii_alphabetic() || c == b'*' => {
            let mut j = i + 1;
            while b
                .get(j)
                .is_some_and(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(c))
            {
                j += 1;
            }
            Some((Value::Other, j))
        }
        _ => None,
    }
}

/// `*( ";" *SP key [ "=" bare-item ] )`
fn params(b: &[u8], mut i: usize) -> Option<usize> {
    while b.get(i) == Some(&b';') {
        i = skip_sp(b, i + 1);
        let (_, next) = key(b, i)?;
        i = next;
        if b.get(i) == Some(&b'=') {
            i = item(b, i + 1)?.1;
        }
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::freshness::{storable, Freshness, Heuristic};
    use hyper::header::HeaderValue;
    use hyper::{Method, StatusCode};
    use std::time::{Duration, SystemTime};

    fn t(v: &str) -> Option<Directives> {
        let mut h = HeaderMap::new();
        h.insert("cdn-cache-control", HeaderValue::from_str(v).unwrap());
        targeted(&h)
    }

    #[test]
    fn valid_fields_are_read() {
        assert_eq!(t("max-age=3600").unwrap().max_age, Some(Some(3600)));
        let d = t("foobar, max-age=60, stale-if-error=30;x=1").unwrap();
        assert_eq!((d.max_age, d.stale_if_error), (Some(Some(60)), Some(30)));
        assert_eq!(
            t("max-age=99999999999").unwrap().max_age,
            Some(Some(MAX_DELTA))
        );
        assert!(t("no-store").unwrap().no_store);
        assert!(t("private").unwrap().private);
        assert!(t("no-cache, max-age=5").unwrap().no_cache);
        assert!(
            t("foo").unwrap().max_age.is_none(),
            "extensions only: valid, nothing said"
        );
        assert!(targeted(&HeaderMap::new()).is_none());
    }

    #[test]
    fn invalid_fields_are_ignored_whole() {
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age =100",
            "max-age= 100",
            "MaX-aGe=3600",
            "max-age=-1",
            "max-age=1.5",
            "no-store=1",
            "max-age=60,",
            "max-age=1234567890123456",
        ] {
            assert!(t(bad).is_none(), "{bad}");
        }
    }

    use crate::cache::directives::test_headers as h;

    const H: Heuristic = Heuristic {
        fraction: 0.1,
        max: Duration::from_secs(86400),
    };

    #[test]
    fn cdn_cache_control_targets_this_cache() {
        let now = SystemTime::now();
        let f = |hs: &[(&str, &str)]| Freshness::of(StatusCode::OK, &h(hs), now, now, H).lifetime;
        let store =
            |hs: &[(&str, &str)]| storable(&Method::GET, &HeaderMap::new(), StatusCode::OK, &h(hs));
        // a short targeted lifetime beats a long Cache-Control one, and a long one a short
        assert_eq!(
            f(&[
                ("cache-control", "max-age=3600"),
                ("cdn-cache-control", "max-age=1")
            ])
            .as_secs(),
            1
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=1"),
                ("cdn-cache-control", "max-age=3600")
            ])
            .as_secs(),
            3600
        );
        // Cache-Control's no-store does not speak to a targeted cache; the targeted one does
        assert!(store(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=100")
        ]));
        assert!(!store(&[
            ("cache-control", "max-age=100"),
            ("cdn-cache-control", "no-store")
        ]));
        assert!(!store(&[
            ("cache-control", "max-age=100"),
            ("cdn-cache-control", "private")
        ]));
        // an invalid field is ignored whole: Cache-Control applies
        assert!(!store(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=10000, &&&&&")
        ]));
        assert_eq!(
            f(&[
                ("cache-control", "max-age=1"),
                ("cdn-cache-control", "max-age =100")
            ])
            .as_secs(),
            1
        );
        // Age still counts against the targeted lifetime
        let old = Freshness::of(
            StatusCode::OK,
            &h(&[("cdn-cache-control", "max-age=3600"), ("age", "7200")]),
            now,
            now,
            H,
        );
        assert_eq!(old.remaining(now), Duration::ZERO);
    }
}
