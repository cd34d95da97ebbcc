//! The HTTP cache over real sockets: hits, freshness, revalidation, Vary,
//! invalidation, stale handling.

mod support;

use std::time::Duration;
use support::*;

#[tokio::test]
async fn miss_then_hit_with_age() {
    let origin =
        start_origin(|_, n| Reply::ok(format!("v{n}"), &[("cache-control", "max-age=60")])).await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let a = get(&proxy.url("/a"), &[]).await;
    assert_eq!(
        (a.status, a.cache(), &a.body[..]),
        (200, "miss", &b"v1"[..])
    );
    let b = get(&proxy.url("/a"), &[]).await;
    assert_eq!((b.cache(), &b.body[..]), ("hit", &b"v1"[..]));
    assert!(b.header("age").is_some());
    assert_eq!(origin.count("/a"), 1);
    // HEAD is answered from the stored GET.
    let h = send("HEAD", &proxy.url("/a"), &[]).await;
    assert_eq!((h.status, h.cache(), h.body.len()), (200, "hit", 0));
    assert_eq!(h.header("content-length"), Some("2"));
    assert_eq!(origin.count("/a"), 1);
    // The query is part of the key.
    get(&proxy.url("/a?x=1"), &[]).await;
    assert_eq!(origin.count("/a?x=1"), 1);
    assert_eq!(
        metric(&proxy, "vaeproxy_cache_lookups_total{result=\"hit\"}").await,
        2.0
    );
}

#[tokio::test]
async fn freshness_runs_out() {
    let origin = start_origin(|req, n| match req.uri().path() {
        "/short" => Reply::ok(format!("v{n}"), &[("cache-control", "max-age=1")]),
        "/old" => Reply::ok(
            format!("v{n}"),
            &[("cache-control", "max-age=100"), ("age", "200")],
        ),
        "/nostore" => Reply::ok(format!("v{n}"), &[("cache-control", "no-store")]),
        "/private" => Reply::ok(format!("v{n}"), &[("cache-control", "private, max-age=60")]),
        "/expires" => {
            let exp =
                httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
            Reply::ok(format!("v{n}"), &[("expires", &exp)])
        }
        "/smax" => Reply::ok(
            format!("v{n}"),
            &[("cache-control", "max-age=0, s-maxage=60")],
        ),
        _ => Reply::ok("?", &[]),
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    for p in [
        "/short", "/old", "/nostore", "/private", "/expires", "/smax",
    ] {
        get(&proxy.url(p), &[]).await;
        get(&proxy.url(p), &[]).await;
    }
    assert_eq!(origin.count("/short"), 1, "fresh for a second");
    assert_eq!(origin.count("/old"), 2, "Age beyond max-age: stale at once");
    assert_eq!(origin.count("/nostore"), 2);
    assert_eq!(
        origin.count("/private"),
        2,
        "a shared cache never stores private"
    );
    assert_eq!(origin.count("/expires"), 1);
    assert_eq!(origin.count("/smax"), 1, "s-maxage wins for a shared cache");
    proxy.clock.advance(Duration::from_secs(2));
    let r = get(&proxy.url("/short"), &[]).await;
    assert_eq!(&r.body[..], b"v2");
    assert_eq!(origin.count("/short"), 2);
}

#[tokio::test]
async fn revalidates_with_validators() {
    let origin = start_origin(|req, n| {
        let etag = "\"e1\"";
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == etag)
        {
            let mut r = Reply::ok(
                "",
                &[
                    ("cache-control", "max-age=0"),
                    ("etag", etag),
                    ("x-fresh", &n.to_string()),
                ],
            );
            r.status = 304;
            return r;
        }
        Reply::ok(
            "body",
            &[
                ("cache-control", "max-age=0"),
                ("etag", etag),
                ("x-fresh", &n.to_string()),
            ],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let a = get(&proxy.url("/r"), &[]).await;
    assert_eq!(a.cache(), "miss");
    let b = get(&proxy.url("/r"), &[]).await;
    assert_eq!(
        (b.status, b.cache(), &b.body[..]),
        (200, "revalidated", &b"body"[..])
    );
    // The origin saw our conditional request and its 304 headers were merged.
    assert_eq!(
        origin.last_headers("/r").get("if-none-match").unwrap(),
        "\"e1\""
    );
    assert_eq!(b.header("x-fresh"), Some("2"));
    // A client's own conditional gets a 304 from the proxy.
    let c = get(&proxy.url("/r"), &[("if-none-match", "\"e1\"")]).await;
    assert_eq!(c.status, 304);
    assert!(c.body.is_empty());
    assert_eq!(c.header("etag"), Some("\"e1\""));
}

#[tokio::test]
async fn client_conditionals_on_a_hit() {
    let lm = "Tue, 15 Nov 1994 12:45:26 GMT";
    let origin = start_origin(move |_, _| {
        Reply::ok(
            "x",
            &[
                ("cache-control", "max-age=60"),
                ("etag", "W/\"t\""),
                ("last-modified", lm),
            ],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    // Even on a miss the client's conditional is answered (after storing the full response).
    let a = get(&proxy.url("/c"), &[("if-none-match", "\"t\"")]).await;
    assert_eq!(a.status, 304);
    let b = get(&proxy.url("/c"), &[("if-modified-since", lm)]).await;
    assert_eq!(b.status, 304);
    let c = get(
        &proxy.url("/c"),
        &[("if-modified-since", "Tue, 15 Nov 1994 12:45:25 GMT")],
    )
    .await;
    assert_eq!(c.status, 200);
    let d = get(&proxy.url("/c"), &[("if-none-match", "\"other\"")]).await;
    assert_eq!(d.status, 200);
    assert_eq!(origin.count("/c"), 1);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let origin = start_origin(|req, _| {
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_string());
        Reply::ok(
            lang.unwrap_or("none".into()),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let en = get(&proxy.url("/v"), &[("accept-language", "en")]).await;
    let de = get(&proxy.url("/v"), &[("accept-language", "de")]).await;
    let none = get(&proxy.url("/v"), &[]).await;
    assert_eq!(
        (&en.body[..], &de.body[..], &none.body[..]),
        (&b"en"[..], &b"de"[..], &b"none"[..])
    );
    assert_eq!(origin.count("/v"), 3);
    let en2 = get(&proxy.url("/v"), &[("accept-language", "en")]).await;
    let de2 = get(&proxy.url("/v"), &[("accept-language", "de")]).await;
    assert_eq!((en2.cache(), &en2.body[..]), ("hit", &b"en"[..]));
    assert_eq!((de2.cache(), &de2.body[..]), ("hit", &b"de"[..]));
    assert_eq!(origin.count("/v"), 3);
}

#[tokio::test]
async fn unsafe_methods_invalidate() {
    let origin = start_origin(|req, n| {
        if req.method() == hyper::Method::POST {
            return Reply::ok("posted", &[("location", "/other")]);
        }
        Reply::ok(format!("v{n}"), &[("cache-control", "max-age=60")])
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    get(&proxy.url("/u"), &[]).await;
    get(&proxy.url("/other"), &[]).await;
    assert_eq!(get(&proxy.url("/u"), &[]).await.cache(), "hit");
    let p = send_body(
        "POST",
        &proxy.url("/u"),
        &[],
        bytes::Bytes::from_static(b"data"),
    )
    .await;
    assert_eq!((p.status, &p.body[..]), (200, &b"posted"[..]));
    let after = get(&proxy.url("/u"), &[]).await;
    assert_eq!((after.cache(), &after.body[..]), ("miss", &b"v3"[..]));
    // Location on the same host is invalidated too.
    assert_eq!(get(&proxy.url("/other"), &[]).await.cache(), "miss");
}

#[tokio::test]
async fn request_directives() {
    let origin =
        start_origin(|_, n| Reply::ok(format!("v{n}"), &[("cache-control", "max-age=60")])).await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let r = get(&proxy.url("/q"), &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.status, 504);
    get(&proxy.url("/q"), &[]).await;
    let r = get(&proxy.url("/q"), &[("cache-control", "no-cache")]).await;
    assert_eq!(&r.body[..], b"v2", "no-cache goes to the origin");
    let r = get(&proxy.url("/q"), &[("pragma", "no-cache")]).await;
    assert_eq!(&r.body[..], b"v3");
    // max-age=0 refuses anything older than 0 s: step the clock so it is.
    proxy.clock.advance(Duration::from_secs(2));
    let r = get(&proxy.url("/q"), &[("cache-control", "max-age=0")]).await;
    assert_eq!(&r.body[..], b"v4");
    let r = get(&proxy.url("/q"), &[("cache-control", "only-if-cached")]).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"v4"[..]));
}

#[tokio::test]
async fn stale_if_error_and_must_revalidate() {
    let origin = start_origin(|req, n| match (req.uri().path(), n) {
        ("/sie", 1) => Reply::ok(
            "good",
            &[
                ("cache-control", "max-age=0, stale-if-error=60"),
                ("etag", "\"a\""),
            ],
        ),
        ("/mr", 1) => Reply::ok(
            "good",
            &[
                ("cache-control", "max-age=0, must-revalidate"),
                ("etag", "\"a\""),
            ],
        ),
        _ => {
            let mut r = Reply::ok("broken", &[]);
            r.status = 500;
            r
        }
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    get(&proxy.url("/sie"), &[]).await;
    let r = get(&proxy.url("/sie"), &[]).await;
    assert_eq!(
        (r.status, &r.body[..], r.cache()),
        (200, &b"good"[..], "stale")
    );
    get(&proxy.url("/mr"), &[]).await;
    let r = get(&proxy.url("/mr"), &[]).await;
    assert_eq!((r.status, &r.body[..]), (500, &b"broken"[..]));
}

/// `no-cache="x-secret"` (RFC 9111 5.2.2.4): the response is reused, but
/// never with the field it names; the client that fetched it gets it whole.
#[tokio::test]
async fn qualified_no_cache_withholds_only_its_fields() {
    let origin = start_origin(|_, _| {
        Reply::ok(
            "body",
            &[
                ("cache-control", "max-age=600, no-cache=\"x-secret\""),
                ("x-secret", "for the first client"),
                ("x-public", "kept"),
            ],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let first = get(&proxy.url("/q"), &[]).await;
    assert_eq!(first.header("x-secret"), Some("for the first client"));
    let second = get(&proxy.url("/q"), &[]).await;
    assert_eq!(second.cache(), "hit", "the rest of the response is reused");
    assert_eq!(second.header("x-secret"), None);
    assert_eq!(second.header("x-public"), Some("kept"));
    assert_eq!(origin.count("/q"), 1);
}
