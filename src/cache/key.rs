//! Cache keys. The primary key names the resource (method, scheme, host,
//! path and query) and keys one moka entry; the variants of a resource (the
//! request header values its `Vary` selects, RFC 9111 4.1) are stored in a
//! list inside that entry and told apart by [`selected_value`].

use hyper::header::{
    HeaderMap, HeaderName, ACCEPT_CHARSET, ACCEPT_ENCODING, ACCEPT_LANGUAGE, VARY,
};

/// Method, scheme, host and path+query of a cacheable request. HEAD uses the
/// GET key: a stored GET answers a HEAD (9111 4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrimaryKey(pub String);

impl PrimaryKey {
    /// The key of `scheme://host/path?query` (host lower-cased).
    pub fn new(scheme: &str, host: &str, path_and_query: &str) -> PrimaryKey {
        PrimaryKey(format!(
            "GET {scheme}://{}{path_and_query}",
            host.to_ascii_lowercase()
        ))
    }
}

/// The header names a response varies on, lowercased, in order.
pub fn vary_names(resp: &HeaderMap) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for v in resp.get_all(VARY) {
        let Ok(v) = v.to_str() else { continue };
        for n in v.split(',') {
            if let Ok(n) = HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    names
}

/// A request header's value as Vary compares it: all lines joined with ",",
/// whitespace around list members removed (9111 4.1 allows this normalisation).
/// Fields whose grammar is case-insensitive (language tags, content codings,
/// charsets) are lowercased, so `eN` and `en` select the same variant.
/// `None` when the header is absent, which differs from present-but-empty.
pub fn selected_value(req: &HeaderMap, name: &HeaderName) -> Option<String> {
    let fold = [ACCEPT_LANGUAGE, ACCEPT_ENCODING, ACCEPT_CHARSET].contains(name);
    let mut parts = Vec::new();
    let mut any = false;
    for v in req.get_all(name) {
        any = true;
        let s = String::from_utf8_lossy(v.as_bytes());
        parts.extend(s.split(',').map(|p| {
            let p = p.trim();
            if fold {
                p.to_ascii_lowercase()
            } else {
                p.to_string()
            }
        }));
    }
    any.then(|| parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn vary_selects_headers() {
        let p = PrimaryKey::new("http", "Example.COM", "/a?b=1");
        assert_eq!(p.0, "GET http://example.com/a?b=1");
        let mut resp = HeaderMap::new();
        resp.append(VARY, HeaderValue::from_static("Accept-Encoding, X-A"));
        resp.append(VARY, HeaderValue::from_static("x-a, X-B"));
        let names = vary_names(&resp);
        assert_eq!(names.len(), 3);
        let mut r1 = HeaderMap::new();
        r1.insert("x-a", HeaderValue::from_static("1, 2"));
        let mut r2 = HeaderMap::new();
        r2.append("x-a", HeaderValue::from_static("1"));
        r2.append("x-a", HeaderValue::from_static("2"));
        // one line with a list and the same list over two lines select alike
        assert_eq!(
            selected_value(&r1, &names[1]),
            selected_value(&r2, &names[1])
        );
        assert_eq!(selected_value(&r1, &names[2]), None);
        let mut r3 = r1.clone();
        r3.insert("x-b", HeaderValue::from_static(""));
        assert_eq!(selected_value(&r3, &names[2]).as_deref(), Some(""));
        let lang = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(ACCEPT_LANGUAGE, HeaderValue::from_static(v));
            selected_value(&h, &ACCEPT_LANGUAGE)
        };
        assert_eq!(
            lang("en, de"),
            lang("eN,De"),
            "language tags are case-insensitive"
        );
        assert_ne!(
            lang("en, de"),
            lang("de, en"),
            "order is the client's preference"
        );
    }
}
