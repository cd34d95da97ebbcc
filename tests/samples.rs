//! Sampled images over real sockets: generation in the background,
//! determinism across restarts, negotiation, regeneration, bad requests.

mod support;

use std::time::{Duration, Instant};
use support::*;
use vaeproxy::client::Decoder;
use vaeproxy::latent::wire::MIME;

fn pool_toml(name: &str, count: u32, extra: &str) -> String {
    format!(
        "[[route]]\norigin = \"{{origin}}\"\n[[samples]]\nname = \"{name}\"\nwidth = 64\nheight = 48\ncount = {count}\nseed = 7\n{extra}"
    )
}

/// GETs until the sample is ready (200) or 20 s pass.
async fn wait_ready(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let t = Instant::now();
    loop {
        let r = get(&proxy.url(path), headers).await;
        if r.status != 503 || t.elapsed() > Duration::from_secs(20) {
            return r;
        }
        assert_eq!(r.header("retry-after"), Some("1"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pending_then_served_from_the_cache() {
    let origin = start_origin(|_, _| Reply::ok("x", &[])).await;
    let proxy = start_proxy(&pool_toml("p", 300, ""), &origin.url()).await;
    // Ready at once, long before 300 samples exist.
    assert_eq!(get(&proxy.url("/_vaeproxy/healthz"), &[]).await.status, 200);
    let last = get(&proxy.url("/_vaeproxy/samples/p/299"), &[]).await;
    assert_eq!(last.status, 503);
    let r = wait_ready(&proxy, "/_vaeproxy/samples/p/0", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    let img = image::load_from_memory(&r.body).unwrap();
    assert_eq!((img.width(), img.height()), (64, 48));
    // Served again without model work: the generation counter does not move.
    let before = metric(&proxy, "vaeproxy_samples_generated_total").await;
    let decodes = metric(&proxy, "vaeproxy_decodes_total").await;
    let again = get(&proxy.url("/_vaeproxy/samples/p/0"), &[]).await;
    assert_eq!(again.body, r.body);
    let etag = again.header("etag").unwrap().to_string();
    assert_eq!(
        get(
            &proxy.url("/_vaeproxy/samples/p/0"),
            &[("if-none-match", &etag)]
        )
        .await
        .status,
        304
    );
    assert!(metric(&proxy, "vaeproxy_samples_generated_total").await <= before + 5.0);
    assert_eq!(metric(&proxy, "vaeproxy_decodes_total").await, decodes);
    assert_eq!(origin.total(), 0, "samples never touch the origin");
}

#[tokio::test]
async fn same_seed_same_bytes_across_restarts_and_latents_decode() {
    let origin = start_origin(|_, _| Reply::ok("x", &[])).await;
    let toml = pool_toml("d", 3, "format = \"jpeg\"\n");
    let a = start_proxy(&toml, &origin.url()).await;
    let first = wait_ready(&a, "/_vaeproxy/samples/d/2", &[]).await;
    assert_eq!(first.header("content-type"), Some("image/jpeg"));
    a.shutdown().await;
    let b = start_proxy(&toml, &origin.url()).await;
    let second = wait_ready(&b, "/_vaeproxy/samples/d/2", &[]).await;
    assert_eq!(first.body, second.body, "deterministic across restarts");
    let other = wait_ready(&b, "/_vaeproxy/samples/d/1", &[]).await;
    assert_ne!(other.body, second.body);
    // A decoder gets the latent and rebuilds the same picture the PNG pool would serve.
    let decoder = Decoder::shipped().unwrap();
    let lat = wait_ready(
        &b,
        "/_vaeproxy/samples/d/2",
        &[("accept", &decoder.accept_header())],
    )
    .await;
    assert_eq!(lat.header("content-type"), Some(MIME));
    assert!(lat.header("vary").unwrap().contains("Accept"));
    let img = decoder.decode(&lat.body).unwrap();
    assert_eq!(img.dimensions(), (64, 48));
    let png = start_proxy(&pool_toml("d", 3, ""), &origin.url()).await;
    let served = wait_ready(&png, "/_vaeproxy/samples/d/2", &[]).await;
    assert_eq!(
        image::load_from_memory(&served.body).unwrap().to_rgb8(),
        img
    );
}

#[tokio::test]
async fn bad_requests_get_reasons() {
    let origin = start_origin(|_, _| Reply::ok("x", &[])).await;
    let proxy = start_proxy(&pool_toml("p", 2, ""), &origin.url()).await;
    for (path, status, words) in [
        (
            "/_vaeproxy/samples/nope/0",
            404,
            "no sample pool named \"nope\"",
        ),
        ("/_vaeproxy/samples/p/2", 404, "samples 0..2"),
        ("/_vaeproxy/samples/p/-1", 400, "not a number"),
        ("/_vaeproxy/samples/p", 404, "no sample at"),
    ] {
        let r = get(&proxy.url(path), &[]).await;
        assert_eq!(r.status, status, "{path}");
        assert!(
            String::from_utf8_lossy(&r.body).contains(words),
            "{path}: {:?}",
            r.body
        );
    }
    let r = send("POST", &proxy.url("/_vaeproxy/samples/p/0"), &[]).await;
    assert_eq!(r.status, 405);
    let r = get(&proxy.url("/_vaeproxy/samples/p/random"), &[]).await;
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap();
    assert!(
        loc == "/_vaeproxy/samples/p/0" || loc == "/_vaeproxy/samples/p/1",
        "{loc}"
    );
}

#[tokio::test]
async fn evicted_samples_are_regenerated() {
    let origin = start_origin(|_, _| Reply::ok("x", &[])).await;
    // A budget far too small for 6 samples: most are evicted as others arrive.
    let toml =
        pool_toml("e", 6, "").replace("[[samples]]", "[cache]\nsamples_bytes = 30000\n[[samples]]");
    let proxy = start_proxy(&toml, &origin.url()).await;
    let mut bodies = Vec::new();
    for i in 0..6 {
        let r = wait_ready(&proxy, &format!("/_vaeproxy/samples/e/{i}"), &[]).await;
        assert_eq!(r.status, 200, "sample {i}");
        bodies.push(r.body);
    }
    let generated = metric(&proxy, "vaeproxy_samples_generated_total").await;
    assert!(generated > 6.0, "some were regenerated: {generated}");
    // Regenerated samples are the same bytes.
    let r = wait_ready(&proxy, "/_vaeproxy/samples/e/0", &[]).await;
    assert_eq!(r.body, bodies[0]);
}
