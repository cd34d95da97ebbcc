//! Proxy behaviour over real sockets: header hygiene, routing (not an open
//! proxy), origin failures, limits, operations endpoints and graceful shutdown.

mod support;

use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echoes what the origin received as response headers `x-got-<name>`.
async fn echo_origin() -> Origin {
    start_origin(|req, _| {
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        for name in [
            "x-secret",
            "keep-alive",
            "via",
            "x-forwarded-for",
            "forwarded",
            "host",
            "te",
        ] {
            if let Some(v) = req.headers().get(name) {
                let key: &'static str = Box::leak(format!("x-got-{name}").into_boxed_str());
                headers.push((key, v.to_str().unwrap().to_string()));
            }
        }
        let mut r = Reply::ok(
            "echo",
            &[
                ("connection", "x-origin-private"),
                ("x-origin-private", "1"),
            ],
        );
        r.headers.extend(headers);
        r
    })
    .await
}

#[tokio::test]
async fn hop_by_hop_removed_and_proxy_headers_added() {
    let origin = echo_origin().await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let r = get(
        &proxy.url("/h"),
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-forwarded-for", "10.0.0.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-got-x-secret").is_none(),
        "Connection-named header must not pass"
    );
    assert!(r.header("x-got-te").is_none());
    assert_eq!(r.header("x-got-via"), Some("1.1 vaeproxy"));
    // The client is no trusted proxy: its X-Forwarded-For is dropped.
    assert_eq!(r.header("x-got-x-forwarded-for"), Some("127.0.0.1"));
    assert!(r
        .header("x-got-forwarded")
        .unwrap()
        .starts_with("for=127.0.0.1;host="));
    assert_eq!(
        r.header("x-got-host"),
        Some(origin.addr.to_string().as_str())
    );
    assert!(
        r.header("x-origin-private").is_none(),
        "origin's Connection-named header must not pass"
    );
    assert!(r.header("via").unwrap().contains("vaeproxy"));
}

#[tokio::test]
async fn not_an_open_proxy() {
    let origin = start_origin(|_, _| Reply::ok("origin", &[])).await;
    let toml = "samples = []\n[[route]]\nhost = \"images.test\"\norigin = \"{origin}\"\n";
    let proxy = start_proxy(toml, &origin.url()).await;
    let ok = get(&proxy.url("/x"), &[("host", "images.test")]).await;
    assert_eq!((ok.status, &ok.body[..]), (200, &b"origin"[..]));
    let other = get(&proxy.url("/x"), &[("host", "evil.test")]).await;
    assert_eq!(other.status, 404);
    assert!(String::from_utf8_lossy(&other.body).contains("no route for host \"evil.test\""));
    // An absolute-form request naming another server goes nowhere.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // An absolute-form URI for a routed host is served by that route's origin only.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET http://images.test/y HTTP/1.1\r\nHost: images.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert_eq!(origin.total(), 2);
}

#[tokio::test]
async fn origin_down_slow_and_reset() {
    // Down: nothing listens on the port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let proxy = start_proxy(BASIC, &dead_url).await;
    let r = get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 502);
    assert!(String::from_utf8_lossy(&r.body).contains("cannot connect to origin"));
    proxy.shutdown().await;

    let origin = start_origin(|req, _| match req.uri().path() {
        "/slow" => {
            let mut r = Reply::ok("late", &[]);
            r.delay = Duration::from_secs(3);
            r
        }
        _ => {
            let mut r = Reply::ok("", &[]);
            r.reset = true;
            r
        }
    })
    .await;
    let toml = format!("{BASIC}[limits]\nheader_timeout_ms = 300\n");
    let proxy = start_proxy(&toml, &origin.url()).await;
    let t = Instant::now();
    let r = get(&proxy.url("/slow"), &[]).await;
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(String::from_utf8_lossy(&r.body).contains("no response within 300 ms"));
    let r = get(&proxy.url("/reset"), &[]).await;
    assert_eq!(r.status, 502);
    // The proxy is still fine.
    assert_eq!(
        get(&proxy.admin_url("/_vaeproxy/healthz"), &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn request_body_limit() {
    let origin = start_origin(|_, _| Reply::ok("ok", &[])).await;
    let toml = format!("{BASIC}[limits]\nmax_request_body = 10\n");
    let proxy = start_proxy(&toml, &origin.url()).await;
    let r = send_body(
        "POST",
        &proxy.url("/p"),
        &[],
        bytes::Bytes::from(vec![b'x'; 100]),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(origin.total(), 0);
    let r = send_body(
        "POST",
        &proxy.url("/p"),
        &[],
        bytes::Bytes::from_static(b"small"),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn big_bodies_stream_through_uncached() {
    let big = bytes::Bytes::from(vec![7u8; 3 << 20]);
    let body = big.clone();
    let origin =
        start_origin(move |_, _| Reply::ok(body.clone(), &[("cache-control", "max-age=60")])).await;
    let toml = format!("{BASIC}[cache]\nmax_object_bytes = 1048576\n");
    let proxy = start_proxy(&toml, &origin.url()).await;
    let a = get(&proxy.url("/big"), &[]).await;
    assert_eq!(a.body, big);
    let b = get(&proxy.url("/big"), &[]).await;
    assert_eq!(b.body, big);
    assert_eq!(origin.count("/big"), 2);
}

#[tokio::test]
async fn healthz_and_metrics() {
    let origin = start_origin(|_, _| Reply::ok("ok", &[("cache-control", "max-age=60")])).await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    assert_eq!(
        &get(&proxy.admin_url("/_vaeproxy/healthz"), &[]).await.body[..],
        b"ok\n"
    );
    get(&proxy.url("/m"), &[]).await;
    get(&proxy.url("/m"), &[]).await;
    let m = metrics(&proxy).await;
    assert_eq!(m["vaeproxy_requests_total{outcome=\"miss\"}"], 1.0);
    assert_eq!(m["vaeproxy_requests_total{outcome=\"hit\"}"], 1.0);
    assert_eq!(m["vaeproxy_origin_requests_total"], 1.0);
    assert_eq!(m["vaeproxy_origin_bytes_total"], 2.0);
    assert_eq!(m["vaeproxy_cache_entries{tier=\"entries\"}"], 1.0);
    assert!(m["vaeproxy_cache_weighted_bytes{tier=\"entries\"}"] > 0.0);
    assert!(m.contains_key("vaeproxy_pool_queue_depth"));
    assert!(m.contains_key("vaeproxy_encode_seconds_count"));
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let origin = start_origin(|_, _| {
        let mut r = Reply::ok("finished", &[]);
        r.delay = Duration::from_millis(700);
        r
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let url = proxy.url("/slow");
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.shutdown().await;
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"finished"[..]));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
