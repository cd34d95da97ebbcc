//! The proxy's hand-written parsers of hostile text: Accept, Cache-Control
//! and the Age/Date/Surrogate-Control fields a response's freshness is built
//! from, and the configuration file (values with units included). None may
//! panic; the first byte picks the parser, the rest is its input.
#![no_main]
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use vaeproxy::cache::directives;
use vaeproxy::cache::freshness::{Freshness, Heuristic};
use vaeproxy::config::Config;
use vaeproxy::proxy::negotiate;

/// `text` as the value of every field a response's freshness reads.
fn headers(text: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in text.split('\n') {
        let Ok(v) = HeaderValue::from_str(line) else { continue };
        for name in ["cache-control", "age", "date", "expires", "last-modified", "surrogate-control", "accept"] {
            h.append(HeaderName::from_static(name), v.clone());
        }
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match which % 3 {
        0 => {
            let _ = negotiate::parse_accept(&text);
            let h = headers(&text);
            let _ = negotiate::save_data(&h);
            let _ = negotiate::list_members(&h, hyper::header::VARY);
        }
        1 => {
            let h = headers(&text);
            let _ = directives::directives(&h);
            let _ = directives::age_header(&h);
            let _ = directives::surrogate(&h);
            let now = SystemTime::now();
            let heuristic = Heuristic {
                fraction: 0.1,
                max: Duration::from_secs(86_400),
            };
            let f = Freshness::of(StatusCode::OK, &h, now, now, heuristic);
            let _ = f.remaining(now);
            let _ = f.staleness(now + Duration::from_secs(3600));
        }
        _ => {
            let _ = Config::from_toml(&text);
        }
    }
});
