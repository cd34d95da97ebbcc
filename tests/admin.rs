//! The operator's surface over real sockets: ops only on the admin
//! listener, purge (URL, prefix, tag, soft), Cache-Status, metrics present
//! from startup, and the per-address connection cap.

mod support;

use std::time::Duration;
use support::*;

/// An origin whose responses are fresh for 10 minutes, carry an ETag and
/// `Surrogate-Key: <first path segment>`, and answer `If-None-Match` with 304.
async fn tagged_origin() -> Origin {
    start_origin(|req, _| {
        let path = req.uri().path().to_string();
        let tag = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if req.headers().contains_key("if-none-match") {
            let mut r = Reply::ok("", &[("etag", "\"v1\""), ("cache-control", "max-age=600")]);
            r.status = 304;
            return r;
        }
        Reply::ok(
            path.clone(),
            &[
                ("etag", "\"v1\""),
                ("cache-control", "max-age=600"),
                ("surrogate-key", &format!("{tag} all")),
            ],
        )
    })
    .await
}

#[tokio::test]
async fn ops_answer_only_on_the_admin_listener() {
    let origin = tagged_origin().await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    for path in ["/_vaeproxy/healthz", "/_vaeproxy/metrics"] {
        assert_eq!(
            get(&proxy.url(path), &[]).await.status,
            404,
            "{path} public"
        );
        assert_eq!(
            get(&proxy.admin_url(path), &[]).await.status,
            200,
            "{path} admin"
        );
    }
    // The admin listener proxies nothing.
    assert_eq!(get(&proxy.admin_url("/photos/a"), &[]).await.status, 404);
    assert_eq!(origin.total(), 0);
    // A PURGE on the public listener is just a method for the origin: it
    // reaches it and purges nothing by itself beyond RFC 9111's invalidation.
    get(&proxy.url("/photos/a"), &[]).await;
    send("PURGE", &proxy.url("/photos/b"), &[]).await;
    assert_eq!(origin.count("/photos/b"), 1, "relayed");
    assert_eq!(get(&proxy.url("/photos/a"), &[]).await.cache(), "hit");
}

#[tokio::test]
async fn purge_by_url_prefix_and_tag() {
    let origin = tagged_origin().await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let host = proxy.addr.to_string();
    let paths = ["/photos/a", "/photos/b", "/pages/x", "/pages/y"];
    for p in paths {
        get(&proxy.url(p), &[]).await;
    }
    let purge = |target: &str, headers: &'static [(&'static str, &'static str)]| {
        let url = proxy.admin_url(target);
        let host = host.clone();
        async move {
            let mut h: Vec<(&str, &str)> = headers.to_vec();
            h.push(("host", &host));
            let r = send("PURGE", &url, &h).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            String::from_utf8(r.body.to_vec()).unwrap()
        }
    };
    assert!(purge("/photos/a", &[]).await.contains("\"purged\":1"));
    assert_eq!(get(&proxy.url("/photos/a"), &[]).await.cache(), "miss");
    assert_eq!(get(&proxy.url("/photos/b"), &[]).await.cache(), "hit");

    assert!(purge("/photos/*", &[]).await.contains("\"purged\":2"));
    assert_eq!(get(&proxy.url("/photos/b"), &[]).await.cache(), "miss");
    assert_eq!(get(&proxy.url("/pages/x"), &[]).await.cache(), "hit");

    let r = purge("/", &[("vaeproxy-purge-tag", "pages")]).await;
    assert!(r.contains("\"purged\":2") && r.contains("\"tag\""), "{r}");
    assert_eq!(get(&proxy.url("/pages/y"), &[]).await.cache(), "miss");
    assert_eq!(origin.count("/pages/y"), 2);
    assert_eq!(
        metric(&proxy, "vaeproxy_purges_total{mode=\"prefix\"}").await,
        1.0
    );
}

#[tokio::test]
async fn soft_purge_revalidates_and_keeps_the_body() {
    let origin = tagged_origin().await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let host = proxy.addr.to_string();
    let first = get(&proxy.url("/photos/a"), &[]).await;
    let r = send(
        "PURGE",
        &proxy.admin_url("/photos/a"),
        &[("host", &host), ("vaeproxy-purge", "soft")],
    )
    .await;
    assert_eq!(r.status, 200);
    let again = get(&proxy.url("/photos/a"), &[]).await;
    assert_eq!(again.cache(), "revalidated");
    assert_eq!(again.body, first.body, "the 304 kept the stored body");
    assert_eq!(
        origin
            .last_headers("/photos/a")
            .get("if-none-match")
            .unwrap(),
        "\"v1\"",
        "the next request revalidated"
    );
    assert_eq!(get(&proxy.url("/photos/a"), &[]).await.cache(), "hit");
    let bad = send(
        "PURGE",
        &proxy.admin_url("/photos/a"),
        &[("host", &host), ("vaeproxy-purge", "gentle")],
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn cache_status_follows_the_origins() {
    let origin = start_origin(|_, _| {
        Reply::ok(
            "x",
            &[
                ("cache-control", "max-age=600"),
                ("cache-status", "origin-cdn; hit"),
            ],
        )
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let statuses = |g: &Got| -> Vec<String> {
        g.headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    let miss = get(&proxy.url("/a"), &[]).await;
    assert_eq!(statuses(&miss), ["origin-cdn; hit", "vaeproxy; fwd=miss"]);
    let hit = get(&proxy.url("/a"), &[]).await;
    assert_eq!(statuses(&hit).last().unwrap(), "vaeproxy; hit");
    let pass = send("POST", &proxy.url("/a"), &[]).await;
    assert_eq!(statuses(&pass).last().unwrap(), "vaeproxy; fwd=bypass");
}

#[tokio::test]
async fn labelled_metrics_exist_from_startup() {
    let origin = tagged_origin().await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let text = get(&proxy.admin_url("/_vaeproxy/metrics"), &[]).await.body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    for line in [
        "vaeproxy_origin_errors_total{kind=\"timeout\"} 0",
        "vaeproxy_guard_total{reason=\"low_psnr\"} 0",
        "vaeproxy_purges_total{mode=\"soft_tag\"} 0",
        "vaeproxy_generative_refused_total{reason=\"per_ip\"} 0",
        "vaeproxy_requests_total{outcome=\"hit\"} 0",
        "vaeproxy_request_duration_seconds_count{class=\"5xx\"} 0",
        "vaeproxy_reloads_total{result=\"error\"} 0",
    ] {
        assert!(text.contains(line), "missing {line}");
    }
    assert!(text.contains("vaeproxy_build_info{version="));
    // Port 9 refuses: an origin error is counted by kind.
    let down = start_proxy(BASIC, "http://127.0.0.1:9").await;
    assert_eq!(get(&down.url("/x"), &[]).await.status, 502);
    assert_eq!(
        metric(&down, "vaeproxy_origin_errors_total{kind=\"unreachable\"}").await,
        1.0
    );
    assert_eq!(
        metric(
            &down,
            "vaeproxy_request_duration_seconds_count{class=\"5xx\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = tagged_origin().await;
    let toml = format!("{BASIC}[limits]\nmax_connections_per_ip = 3\n");
    let proxy = start_proxy(&toml, &origin.url()).await;
    // Three idle connections hold the address's slots...
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /photos/a HTTP/1.1\r\nHost: h\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so the fourth is closed without an answer.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let _ = s
        .write_all(b"GET /photos/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    assert_eq!(
        metric(&proxy, "vaeproxy_connections_refused_total").await,
        1.0
    );
    // Freed slots are reusable.
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&proxy.url("/photos/a"), &[]).await.status, 200);
}
