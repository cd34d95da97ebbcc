//! Sampled images over real sockets: generation in the background,
//! determinism across restarts, negotiation, regeneration, bad requests.

mod support;

use bytes::Bytes;
use std::time::{Duration, Instant};
use support::*;
use vaeproxy::client::Decoder;
use vaeproxy::latent::wire::MIME;

/// On-demand generation on, with budgets no test reaches.
const GENERATIVE: &str = "[generative]\nvariations = true\ninterpolations = true\nper_ip_per_minute = 10000\nmodel_seconds_per_minute = 10000.0\n";

fn pool_toml(name: &str, count: u32, extra: &str) -> String {
    format!(
        "{GENERATIVE}[[route]]\norigin = \"{{origin}}\"\n[[samples]]\nname = \"{name}\"\nwidth = 64\nheight = 48\ncount = {count}\nseed = 7\n{extra}"
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
    assert_eq!(
        get(&proxy.admin_url("/_vaeproxy/healthz"), &[])
            .await
            .status,
        200
    );
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

/// Each (path, status, words): GET path answers status with words in the body.
async fn expect_reasons(proxy: &Proxy, cases: &[(&str, u16, &str)]) {
    for &(path, status, words) in cases {
        let r = get(&proxy.url(path), &[]).await;
        assert_eq!(r.status, status, "{path}");
        assert!(
            String::from_utf8_lossy(&r.body).contains(words),
            "{path}: {:?}",
            r.body
        );
    }
}

#[tokio::test]
async fn bad_requests_get_reasons() {
    let origin = start_origin(|_, _| Reply::ok("x", &[])).await;
    let proxy = start_proxy(&pool_toml("p", 2, ""), &origin.url()).await;
    let cases = [
        (
            "/_vaeproxy/samples/nope/0",
            404,
            "no sample pool named \"nope\"",
        ),
        ("/_vaeproxy/samples/p/2", 404, "samples 0..2"),
        ("/_vaeproxy/samples/p/-1", 400, "not a number"),
        ("/_vaeproxy/samples/p", 404, "no sample at"),
    ];
    expect_reasons(&proxy, &cases).await;
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

/// An origin with two photos (320x160 JPEG, 384x240 PNG) and a text file.
async fn photo_origin() -> Origin {
    let (a, b) = (data("canyon.jpg"), data("twowings.png"));
    start_origin(move |req, _| {
        let (body, ctype) = match req.uri().path() {
            "/a.jpg" => (a.clone(), "image/jpeg"),
            "/b.png" => (b.clone(), "image/png"),
            _ => (Bytes::from_static(b"just text"), "text/plain"),
        };
        Reply::ok(
            body,
            &[("content-type", ctype), ("cache-control", "max-age=600")],
        )
    })
    .await
}

fn rgb(body: &[u8]) -> image::RgbImage {
    image::load_from_memory(body).unwrap().to_rgb8()
}

fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let se: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    10.0 * (255.0f64.powi(2) / (se / a.as_raw().len() as f64)).log10()
}

#[tokio::test]
async fn variations_and_interpolations_are_made_once_then_cached() {
    let origin = photo_origin().await;
    let proxy = start_proxy(&pool_toml("v", 1, ""), &origin.url()).await;
    let decoder = Decoder::shipped().unwrap();
    let accept = decoder.accept_header();
    let vars = "/_vaeproxy/variations/v?of=%2Fa.jpg";
    let r = get(&proxy.url(vars), &[]).await;
    assert_eq!(r.status, 404, "not fetched yet");
    assert!(String::from_utf8_lossy(&r.body).contains("not in the cache"));

    // Cache both photos; keep the latent code of the first.
    let a_code = get(&proxy.url("/a.jpg"), &[("accept", &accept)]).await;
    assert_eq!(a_code.header("content-type"), Some(MIME));
    let a_recon = decoder.decode(&a_code.body).unwrap();
    let b_code = get(&proxy.url("/b.png"), &[("accept", &accept)]).await;
    assert_eq!(b_code.header("content-type"), Some(MIME));
    let b_recon = decoder.decode(&b_code.body).unwrap();
    let origin_requests = origin.total();

    // A strip of 3 variations, each near its source and different from the others.
    let strip = get(&proxy.url(&format!("{vars}&n=3")), &[]).await;
    assert_eq!(
        strip.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&strip.body)
    );
    assert_eq!(strip.header("content-type"), Some("image/png"));
    let strip_img = rgb(&strip.body);
    assert_eq!(strip_img.dimensions(), (3 * 320, 160));
    let frame = |img: &image::RgbImage, i: u32, w: u32, h: u32| {
        image::imageops::crop_imm(img, i * w, 0, w, h).to_image()
    };
    let f0 = frame(&strip_img, 0, 320, 160);
    let f1 = frame(&strip_img, 1, 320, 160);
    assert_ne!(f0, f1);
    for f in [&f0, &f1] {
        let p = psnr(f, &a_recon);
        assert!(
            (15.0..60.0).contains(&p),
            "a variation is near, not equal: {p}"
        );
    }
    let m = metric(
        &proxy,
        "vaeproxy_derived_generated_total{kind=\"variation\"}",
    )
    .await;
    assert_eq!(m, 1.0);

    // Again: the same bytes from the cache, no model work; 304 on the ETag.
    let again = get(&proxy.url(&format!("{vars}&n=3")), &[]).await;
    assert_eq!(again.body, strip.body);
    let etag = again.header("etag").unwrap().to_string();
    let cond = get(
        &proxy.url(&format!("{vars}&n=3")),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(cond.status, 304);
    assert_eq!(
        metric(
            &proxy,
            "vaeproxy_derived_generated_total{kind=\"variation\"}"
        )
        .await,
        1.0
    );

    // One frame: the same pixels as in the strip, or its latent code for a decoder.
    let one = get(&proxy.url(&format!("{vars}&index=1")), &[]).await;
    assert_eq!(rgb(&one.body), f1);
    assert!(one.header("vary").unwrap().contains("Accept"));
    let lat = get(
        &proxy.url(&format!("{vars}&index=1")),
        &[("accept", &accept)],
    )
    .await;
    assert_eq!(lat.header("content-type"), Some(MIME));
    assert_eq!(decoder.decode(&lat.body).unwrap(), f1);
    // The absolute form names the same cached image.
    let host = proxy.url("").trim_end_matches('/').to_string();
    let abs = get(
        &proxy.url(&format!("/_vaeproxy/variations/v?index=1&of={host}/a.jpg")),
        &[],
    )
    .await;
    assert_eq!(abs.body, one.body);
    // The strip and the single frames shared one posterior of the source.
    let post = "vaeproxy_derived_generated_total{kind=\"posterior\"}";
    assert_eq!(metric(&proxy, post).await, 1.0);

    // Interpolation between images of different sizes: the common 320x160.
    let lerp = "/_vaeproxy/interpolate?a=/a.jpg&b=/b.png&steps=3";
    let r = get(&proxy.url(lerp), &[]).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let img = rgb(&r.body);
    assert_eq!(img.dimensions(), (3 * 320, 160));
    let b_cut = image::imageops::crop_imm(&b_recon, 0, 0, 320, 160).to_image();
    let (first, last) = (frame(&img, 0, 320, 160), frame(&img, 2, 320, 160));
    assert!(psnr(&first, &a_recon) > 30.0, "frame 0 is a");
    assert!(psnr(&last, &b_cut) > 30.0, "the last frame is b");
    let mid = frame(&img, 1, 320, 160);
    assert!(psnr(&mid, &a_recon) < psnr(&first, &a_recon));
    let single = get(&proxy.url(&format!("{lerp}&index=1")), &[]).await;
    assert_eq!(rgb(&single.body), mid);
    get(&proxy.url(lerp), &[]).await;
    assert_eq!(
        metric(
            &proxy,
            "vaeproxy_derived_generated_total{kind=\"interpolation\"}"
        )
        .await,
        2.0,
        "strip + one frame; the repeat was a hit"
    );
    assert_eq!(origin.total(), origin_requests, "no origin traffic");
}

#[tokio::test]
async fn bad_generation_parameters_get_reasons() {
    let origin = photo_origin().await;
    let proxy = start_proxy(&pool_toml("v", 1, ""), &origin.url()).await;
    get(&proxy.url("/a.jpg"), &[]).await;
    get(&proxy.url("/notes.txt"), &[]).await;
    let cases = [
        (
            "/_vaeproxy/variations/v",
            400,
            "missing query parameter \"of\"",
        ),
        (
            "/_vaeproxy/variations/nope?of=/a.jpg",
            404,
            "no sample pool",
        ),
        (
            "/_vaeproxy/variations/v?of=/notes.txt",
            404,
            "not as a latent image",
        ),
        (
            "/_vaeproxy/variations/v?of=/missing.jpg",
            404,
            "not in the cache",
        ),
        (
            "/_vaeproxy/variations/v?of=ftp://x/a.jpg",
            400,
            "neither a path",
        ),
        ("/_vaeproxy/variations/v?of=/a.jpg&n=0", 400, "n=\"0\""),
        ("/_vaeproxy/variations/v?of=/a.jpg&n=17", 400, "1..=16"),
        (
            "/_vaeproxy/variations/v?of=/a.jpg&n=2&n=3",
            400,
            "more than once",
        ),
        (
            "/_vaeproxy/variations/v?of=/a.jpg&index=x",
            400,
            "index=\"x\"",
        ),
        ("/_vaeproxy/interpolate?a=/a.jpg", 400, "\"b\""),
        (
            "/_vaeproxy/interpolate?a=/a.jpg&b=/a.jpg&steps=1",
            400,
            "2..=16",
        ),
        (
            "/_vaeproxy/interpolate?a=/a.jpg&b=/a.jpg&steps=3&index=3",
            400,
            "not a frame",
        ),
        (
            "/_vaeproxy/interpolate?a=/a.jpg&b=/missing.jpg",
            404,
            "b=/missing.jpg",
        ),
    ];
    expect_reasons(&proxy, &cases).await;
    let r = send(
        "POST",
        &proxy.url("/_vaeproxy/interpolate?a=/a.jpg&b=/a.jpg"),
        &[],
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(
        metrics(&proxy)
            .await
            .get("vaeproxy_derived_generated_total{kind=\"variation\"}"),
        Some(&0.0),
        "no bad request made the model work"
    );
}

#[tokio::test]
async fn on_demand_generation_is_opt_in_and_bounded() {
    let origin = photo_origin().await;
    let pool = "[[samples]]\nname = \"v\"\nwidth = 64\nheight = 48\ncount = 1\n";
    // The defaults: both routes off, sample pools on.
    let off = start_proxy(
        &format!("[[route]]\norigin = \"{{origin}}\"\n{pool}"),
        &origin.url(),
    )
    .await;
    get(&off.url("/a.jpg"), &[]).await;
    let r = get(&off.url("/_vaeproxy/variations/v?of=/a.jpg"), &[]).await;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("[generative] variations"));
    let r = get(&off.url("/_vaeproxy/interpolate?a=/a.jpg&b=/a.jpg"), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        wait_ready(&off, "/_vaeproxy/samples/v/0", &[]).await.status,
        200
    );
    assert_eq!(
        metric(
            &off,
            "vaeproxy_generative_refused_total{reason=\"disabled\"}"
        )
        .await,
        2.0
    );

    // On, two new ones per address per minute: the third is a 429, while a
    // made one is still served.
    let toml = format!(
        "[generative]\nvariations = true\ninterpolations = true\nper_ip_per_minute = 2\n\
         [[route]]\norigin = \"{{origin}}\"\n{pool}"
    );
    let on = start_proxy(&toml, &origin.url()).await;
    get(&on.url("/a.jpg"), &[]).await;
    get(&on.url("/b.png"), &[]).await;
    let made = "/_vaeproxy/variations/v?of=/a.jpg&n=1";
    assert_eq!(get(&on.url(made), &[]).await.status, 200);
    let lerp = "/_vaeproxy/interpolate?a=/a.jpg&b=/b.png&steps=2";
    assert_eq!(get(&on.url(lerp), &[]).await.status, 200);
    let third = get(&on.url("/_vaeproxy/variations/v?of=/b.png&n=1"), &[]).await;
    assert_eq!(third.status, 429);
    assert!(third.header("retry-after").is_some());
    assert_eq!(
        get(&on.url(made), &[]).await.status,
        200,
        "made ones are served"
    );

    // A model-time budget of zero refuses every new one with a 503.
    let toml = toml.replace("per_ip_per_minute = 2", "model_seconds_per_minute = 0.0");
    let spent = start_proxy(&toml, &origin.url()).await;
    get(&spent.url("/a.jpg"), &[]).await;
    let r = get(&spent.url(made), &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        metric(
            &spent,
            "vaeproxy_generative_refused_total{reason=\"model_time\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn concurrent_requests_for_one_variation_make_it_once() {
    let origin = photo_origin().await;
    let proxy = start_proxy(&pool_toml("v", 1, ""), &origin.url()).await;
    get(&proxy.url("/a.jpg"), &[]).await;
    let url = proxy.url("/_vaeproxy/variations/v?of=/a.jpg&n=2");
    let all = futures_join(16, || {
        let url = url.clone();
        async move { get(&url, &[]).await }
    })
    .await;
    for r in &all {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, all[0].body);
    }
    assert_eq!(
        metric(
            &proxy,
            "vaeproxy_derived_generated_total{kind=\"variation\"}"
        )
        .await,
        1.0,
        "16 clients, one model job"
    );
}

/// Runs `n` copies of `f()` at once and collects their results.
async fn futures_join<F, Fut>(n: usize, f: F) -> Vec<Got>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Got> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(f())).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
