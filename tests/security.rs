//! Regression tests for attacks on the proxy, over real sockets: request
//! smuggling into the cache (HTTP/1.1 and h2), decompression bombs, `OPTIONS *`,
//! revalidation refetches, Set-Cookie replay, path tricks, forged forwarding
//! headers, status codes that blame the right party, clients that stop
//! reading, and clients forcing model work.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request line that only an attacker's bytes could make the origin parse.
fn smuggled(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            !["GET /a ", "GET /b ", "HEAD /a "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn get_with_body_cannot_smuggle_over_http1() {
    let origin = start_discarding_origin().await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let body = "X".repeat(45);
    let a = format!(
        "GET /a HTTP/1.1\r\nHost: t\r\nContent-Length: 45\r\nConnection: close\r\n\r\n{body}"
    );
    let got = raw(proxy.addr, a.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    for _ in 0..3 {
        let b =
            "GET /b HTTP/1.1\r\nHost: t\r\nX-S: GET /admin HTTP/1.1\r\nConnection: close\r\n\r\n";
        let got = raw(proxy.addr, b.as_bytes()).await;
        assert!(got.ends_with("/b"), "{got}");
    }
    // A HEAD with a body, and a GET with a chunked body, the same way.
    let h = "HEAD /a HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\nConnection: close\r\n\r\nGET /admin HTTP/1.1\r";
    raw(proxy.addr, h.as_bytes()).await;
    let c = "GET /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    raw(proxy.addr, c.as_bytes()).await;
    let b = "GET /b HTTP/1.1\r\nHost: t\r\nX-S: GET /admin HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert!(raw(proxy.addr, b.as_bytes()).await.ends_with("/b"));
    let lines = origin.lines();
    assert!(smuggled(&lines).is_empty(), "origin parsed {lines:?}");
    let got = get(&proxy.url("/b"), &[]).await;
    assert_eq!(&got.body[..], b"/b");
}

#[tokio::test]
async fn get_with_body_cannot_smuggle_over_h2() {
    let origin = start_discarding_origin().await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::get(proxy.url("/a"))
        .header("content-length", "45")
        .body(Full::new(Bytes::from(vec![b'X'; 45])))
        .unwrap();
    let r = client.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    for _ in 0..3 {
        let req = Request::get(proxy.url("/b"))
            .header("x-s", "GET /admin HTTP/1.1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = client.request(req).await.unwrap();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"/b");
    }
    let lines = origin.lines();
    assert!(smuggled(&lines).is_empty(), "origin parsed {lines:?}");
}

/// A 35-byte GIF: a `w` x `h` logical screen with one 1x1 frame.
fn gif_bomb(w: u16, h: u16) -> Vec<u8> {
    let mut b = b"GIF89a".to_vec();
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&[0x80, 0, 0]); // 2-entry global table
    b.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    b.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
    b.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3b]);
    b
}

#[tokio::test]
async fn gif_bomb_is_refused_before_decoding() {
    assert_eq!(gif_bomb(1, 1).len(), 35);
    let small = vaeproxy::codec::read_image(&gif_bomb(1, 1), 1000).unwrap();
    assert_eq!(small.dimensions(), (1, 1), "the test GIF is a real GIF");
    let bomb = Bytes::from(gif_bomb(65535, 65535));
    let served = bomb.clone();
    let origin = start_origin(move |_, _| {
        Reply::ok(
            served.clone(),
            &[
                ("content-type", "image/gif"),
                ("cache-control", "max-age=60"),
            ],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    for path in ["/bomb1.gif", "/bomb2.gif"] {
        let r = get(&proxy.url(path), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, bomb, "kept as the original bytes");
    }
    let m = metrics(&proxy).await;
    assert_eq!(m["vaeproxy_guard_total{reason=\"too_large\"}"], 2.0);
    assert_eq!(
        get(&proxy.admin_url("/_vaeproxy/healthz"), &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn options_star_is_answered_here() {
    let origin = start_origin(|_, _| Reply::ok("origin", &[])).await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let got = raw(
        proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.to_ascii_lowercase().contains("allow: get"), "{got}");
    let got = raw(
        proxy.addr,
        b"GET * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn revalidation_keeps_the_original() {
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |req, _| {
        if req.headers().get("if-none-match").is_some() {
            let mut r = Reply::ok("", &[("etag", "\"v1\""), ("cache-control", "max-age=0")]);
            r.status = 304;
            return r;
        }
        Reply::ok(
            p.clone(),
            &[
                ("content-type", "image/jpeg"),
                ("etag", "\"v1\""),
                ("cache-control", "max-age=0"),
            ],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    for i in 0..6 {
        let r = get(&proxy.url("/c.jpg"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, photo, "request {i}");
    }
    // One full fetch, then one conditional request per revalidation.
    assert_eq!(origin.count("/c.jpg"), 6);
    assert_eq!(
        metric(&proxy, "vaeproxy_original_refetches_total").await,
        0.0
    );
}

#[tokio::test]
async fn set_cookie_is_never_replayed() {
    let origin = start_origin(|_, n| {
        let cookie = format!("session=client{n}");
        let mut r = Reply::ok("page", &[("cache-control", "max-age=60")]);
        r.headers.push(("set-cookie", cookie));
        r
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let a = get(&proxy.url("/p"), &[]).await;
    let b = get(&proxy.url("/p"), &[]).await;
    assert_eq!(a.header("set-cookie"), Some("session=client1"));
    assert_eq!(b.header("set-cookie"), Some("session=client2"));
    assert_eq!(origin.count("/p"), 2, "not stored");

    // Opted in: stored without the cookie; only the fetching client gets it.
    let toml = "samples = []\n[[route]]\norigin = \"{origin}\"\nstore_set_cookie = true\n";
    let proxy = start_proxy(toml, &origin.url()).await;
    let a = get(&proxy.url("/q"), &[]).await;
    let b = get(&proxy.url("/q"), &[]).await;
    assert_eq!(a.header("set-cookie"), Some("session=client1"));
    assert_eq!(b.cache(), "hit");
    assert!(b.header("set-cookie").is_none(), "replayed a cookie");
    assert_eq!(origin.count("/q"), 1);
}

#[tokio::test]
async fn dot_segments_and_encoded_slashes() {
    let origin = start_discarding_origin().await;
    let toml = "samples = []\n[[route]]\npath_prefix = \"/pub/\"\norigin = \"{origin}\"\n";
    let proxy = start_proxy(toml, &origin.url()).await;
    let req = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
    };
    for path in ["/pub/../secret", "/pub/%2e%2e/secret", "/pub/.%2E/secret"] {
        let got = raw(proxy.addr, &req(path)).await;
        assert!(got.starts_with("HTTP/1.1 404"), "{path}: {got}");
    }
    for path in ["/pub/..%2fsecret", "/pub/a%2Fb", "/pub/a%5c..%5csecret"] {
        let got = raw(proxy.addr, &req(path)).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{path}: {got}");
    }
    let got = raw(proxy.addr, &req("/pub/a/./b/../c?x=1")).await;
    assert!(got.ends_with("/pub/a/c?x=1"), "{got}");
    // The cache key is the normalised path: the plain form is now a hit.
    let got = raw(proxy.addr, &req("/pub/a/c?x=1")).await;
    assert!(got.contains("x-vaeproxy-cache: hit"), "{got}");
    let lines = origin.lines();
    assert_eq!(lines, vec!["GET /pub/a/c?x=1 HTTP/1.1".to_string()]);
}

/// Echoes the forwarding headers the origin received.
async fn forwarding_echo() -> Origin {
    start_origin(|req, _| {
        let mut r = Reply::ok("echo", &[]);
        for name in [
            "forwarded",
            "x-forwarded-for",
            "via",
            "x-forwarded-host",
            "x-real-ip",
        ] {
            let all: Vec<&str> = req
                .headers()
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            if !all.is_empty() {
                let key: &'static str = Box::leak(format!("x-got-{name}").into_boxed_str());
                r.headers.push((key, all.join(" | ")));
            }
        }
        r
    })
    .await
}

#[tokio::test]
async fn forwarding_headers_from_clients_are_not_trusted() {
    let forged = [
        ("forwarded", "for=1.2.3.4;host=evil.example"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "evil.example"),
        ("x-real-ip", "1.2.3.4"),
        ("via", "1.1 evil"),
    ];
    let origin = forwarding_echo().await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let r = get(&proxy.url("/f"), &forged).await;
    let host = proxy.addr.to_string();
    assert_eq!(
        r.header("x-got-forwarded").unwrap(),
        format!("for=127.0.0.1;host=\"{host}\";proto=http")
    );
    assert_eq!(r.header("x-got-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-got-x-forwarded-host"), Some(host.as_str()));
    assert_eq!(r.header("x-got-via"), Some("1.1 vaeproxy"));
    assert!(r.header("x-got-x-real-ip").is_none());

    // From a trusted proxy they are kept and appended to.
    let toml = format!("trusted_proxies = [\"127.0.0.0/8\"]\n{BASIC}");
    let proxy = start_proxy(&toml, &origin.url()).await;
    let r = get(&proxy.url("/f"), &forged).await;
    assert!(r
        .header("x-got-forwarded")
        .unwrap()
        .starts_with("for=1.2.3.4;host=evil.example | for=127.0.0.1"));
    assert_eq!(
        r.header("x-got-x-forwarded-for"),
        Some("10.0.0.1, 127.0.0.1")
    );
    assert_eq!(r.header("x-got-via"), Some("1.1 evil | 1.1 vaeproxy"));
}

#[tokio::test]
async fn malformed_request_body_is_the_clients_fault() {
    let origin = start_origin(|_, _| Reply::ok("ok", &[])).await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let got = raw(
        proxy.addr,
        b"POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nnot a chunk\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("request body"), "{got}");
}

/// An origin that sends a head declaring `declared` bytes, then `chunks`
/// pieces of one byte each, `gap` apart, then stalls.
async fn trickling_origin(declared: usize, chunks: usize, gap: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {declared}\r\ncache-control: max-age=60\r\n\r\n"
                );
                let _ = s.write_all(head.as_bytes()).await;
                for _ in 0..chunks {
                    if s.write_all(b"x").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn stalled_and_trickling_origins_time_out_with_504() {
    let stalled = trickling_origin(100, 10, Duration::ZERO).await;
    let toml = format!("{BASIC}[limits]\nbody_idle_timeout_ms = 300\n");
    let proxy = start_proxy(&toml, &stalled).await;
    let r = get(&proxy.url("/s"), &[]).await;
    assert_eq!(r.status, 504, "{:?}", r.body);

    // One byte every 100 ms never trips the idle timeout; the deadline ends it.
    let trickle = trickling_origin(1000, 1000, Duration::from_millis(100)).await;
    let toml =
        format!("{BASIC}[limits]\nbody_idle_timeout_ms = 2000\norigin_body_deadline_ms = 600\n");
    let proxy = start_proxy(&toml, &trickle).await;
    let url = proxy.url("/t");
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await.status })
        })
        .collect();
    for w in waiting {
        assert_eq!(w.await.unwrap(), 504, "coalesced requests end too");
    }
}

#[tokio::test]
async fn refetching_the_same_bytes_costs_no_encode() {
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| {
        Reply::ok(
            p.clone(),
            &[
                ("content-type", "image/jpeg"),
                ("cache-control", "max-age=600"),
            ],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    for _ in 0..5 {
        let r = get(&proxy.url("/c.jpg"), &[("cache-control", "no-cache")]).await;
        assert_eq!(r.body, photo);
    }
    // An unsafe method invalidates; the next GET refetches the same bytes.
    send_body("POST", &proxy.url("/c.jpg"), &[], Bytes::from_static(b"x")).await;
    let r = get(&proxy.url("/c.jpg"), &[("accept", &latent_accept())]).await;
    assert_eq!(r.header("content-type"), Some(vaeproxy::latent::wire::MIME));
    assert_eq!(origin.count("/c.jpg"), 7);
    let m = metrics(&proxy).await;
    assert_eq!(m["vaeproxy_encodes_total"], 1.0);
    assert_eq!(m["vaeproxy_encodes_reused_total"], 5.0);
}

fn latent_accept() -> String {
    vaeproxy::client::Decoder::shipped()
        .unwrap()
        .accept_header()
}

#[tokio::test]
async fn clients_that_stop_reading_are_dropped() {
    let big = Bytes::from(vec![7u8; 20 << 20]);
    let b = big.clone();
    let origin =
        start_origin(move |_, _| Reply::ok(b.clone(), &[("cache-control", "max-age=60")])).await;
    let toml = format!(
        "{BASIC}[cache]\nmax_object_bytes = 33554432\n[limits]\nclient_write_timeout_ms = 500\n"
    );
    let proxy = start_proxy(&toml, &origin.url()).await;
    // HTTP/1.1: ask, never read.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    // h2: a stream whose body is never read, so no WINDOW_UPDATE is sent.
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let resp = client
        .request(
            Request::get(proxy.url("/big"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        get(&proxy.admin_url("/_vaeproxy/healthz"), &[])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        metric(&proxy, "vaeproxy_client_write_timeouts_total").await >= 5.0,
        "{:?}",
        metrics(&proxy).await
    );
    // The stalled h2 body now fails instead of hanging.
    let read = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
    assert!(matches!(read, Ok(Err(_))), "h2 body should end in an error");
    // Each HTTP/1.1 connection was closed: reading reaches its end.
    for mut s in idle {
        let mut sink = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        assert!(r.is_ok(), "connection still open");
        assert!(sink.len() < big.len());
    }
}

#[tokio::test]
async fn buffer_budget_streams_misses_through() {
    let big = Bytes::from(vec![3u8; 6 << 20]);
    let b = big.clone();
    let origin = start_origin(move |req, _| {
        let body = if req.uri().path() == "/s" {
            Bytes::from_static(b"s")
        } else {
            b.clone()
        };
        Reply::ok(body, &[("cache-control", "max-age=60")])
    })
    .await;
    let toml = format!("{BASIC}[limits]\nmax_buffered_bytes = 4194304\n");
    let proxy = start_proxy(&toml, &origin.url()).await;
    let r = get(&proxy.url("/b1"), &[]).await;
    assert_eq!(r.body, big);
    let r = get(&proxy.url("/b1"), &[]).await;
    assert_eq!(r.body, big);
    assert_eq!(origin.count("/b1"), 2, "not stored");
    assert_eq!(
        metric(&proxy, "vaeproxy_buffer_budget_exhausted_total").await,
        2.0
    );
    // The budget comes back once responses are sent: small ones are cached.
    get(&proxy.url("/s"), &[]).await;
    assert_eq!(get(&proxy.url("/s"), &[]).await.cache(), "hit");
}

#[tokio::test]
async fn origin_failures_keep_their_detail_in_the_log() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = start_proxy(BASIC, &format!("http://{addr}")).await;
    let r = get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 502);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(body.trim(), "cannot connect to origin");
    assert!(!body.contains(&addr.port().to_string()), "{body}");
}

#[tokio::test]
async fn unsupported_image_types_are_counted() {
    // An AVIF (ftyp box) and an SVG: labelled images, not decodable here.
    let origin = start_origin(|req, _| {
        let (ct, body): (&str, &[u8]) = if req.uri().path() == "/a.avif" {
            ("image/avif", b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf")
        } else {
            (
                "image/svg+xml",
                b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            )
        };
        Reply::ok(
            Bytes::from_static(body),
            &[("content-type", ct), ("cache-control", "max-age=60")],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    for p in ["/a.avif", "/b.svg"] {
        assert_eq!(get(&proxy.url(p), &[]).await.status, 200);
    }
    let m = metrics(&proxy).await;
    assert_eq!(
        m["vaeproxy_guard_total{reason=\"unsupported_format\"}"],
        2.0
    );
    // and the decode library no longer asks origins for AVIF
    assert!(!latent_accept().contains("avif"));
}
