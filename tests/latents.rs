//! Images through the proxy: negotiation both ways, guards, one fetch and one
//! encode per key, decompression bombs, hits without model work.

mod support;

use bytes::Bytes;
use std::time::{Duration, Instant};
use support::*;
use vaeproxy::client::Decoder;
use vaeproxy::latent::wire::MIME;

fn photo_origin_reply(photo: &Bytes) -> Reply {
    Reply::ok(
        photo.clone(),
        &[
            ("cache-control", "public, max-age=600"),
            ("content-type", "image/jpeg"),
            ("etag", "\"p1\""),
        ],
    )
}

fn latent_accept() -> String {
    Decoder::shipped().unwrap().accept_header()
}

#[tokio::test]
async fn negotiation_both_ways() {
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| photo_origin_reply(&p)).await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let accept = latent_accept();

    // First an ordinary client: the original bytes, untouched.
    let plain = get(&proxy.url("/photo.jpg"), &[("accept", "image/*")]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body, photo);
    assert_eq!(plain.header("content-type"), Some("image/jpeg"));
    assert!(plain.header("vary").unwrap().contains("Accept"));

    // A decoder gets the latent, smaller, and decodes it.
    let lat = get(&proxy.url("/photo.jpg"), &[("accept", &accept)]).await;
    assert_eq!((lat.status, lat.cache()), (200, "hit"));
    assert_eq!(lat.header("content-type"), Some(MIME));
    assert!(lat.header("vary").unwrap().contains("Accept"));
    assert!(
        lat.body.len() * 4 < photo.len(),
        "{} vs {}",
        lat.body.len(),
        photo.len()
    );
    let etag = lat.header("etag").unwrap().to_string();
    assert_ne!(etag, "\"p1\"");
    let img = Decoder::shipped().unwrap().decode(&lat.body).unwrap();
    let orig = image::load_from_memory(&photo).unwrap();
    assert_eq!(img.dimensions(), (orig.width(), orig.height()));

    // Conditional requests work per representation.
    let again = get(
        &proxy.url("/photo.jpg"),
        &[("accept", &accept), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    let plain304 = get(&proxy.url("/photo.jpg"), &[("if-none-match", "\"p1\"")]).await;
    assert_eq!(plain304.status, 304);

    // Wrong model id, wildcard, or no-transform: the original.
    for h in [
        format!("{MIME}; model=00000000000000000000000000000000"),
        "*/*".to_string(),
    ] {
        let r = get(&proxy.url("/photo.jpg"), &[("accept", &h)]).await;
        assert_eq!(r.body, photo, "{h}");
    }
    let r = get(
        &proxy.url("/photo.jpg"),
        &[("accept", &accept), ("cache-control", "no-transform")],
    )
    .await;
    assert_eq!(r.body, photo);
    // Save-Data alone does not give ordinary clients a reconstruction (opt-in only).
    let r = get(&proxy.url("/photo.jpg"), &[("save-data", "on")]).await;
    assert_eq!(r.body, photo);

    assert_eq!(origin.total(), 1);
    assert_eq!(
        metric(&proxy, "vaeproxy_encodes_total").await,
        1.0,
        "hits never encode"
    );
    assert!(metric(&proxy, "vaeproxy_latent_bytes_saved_total").await > 0.0);
}

#[tokio::test]
async fn concurrent_misses_fetch_and_encode_once() {
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| {
        let mut r = photo_origin_reply(&p);
        r.delay = Duration::from_millis(100);
        r
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let accept = latent_accept();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let url = proxy.url("/same.jpg");
        let accept = accept.clone();
        tasks.push(tokio::spawn(async move {
            let h: Vec<(&str, &str)> = if i % 2 == 0 {
                vec![("accept", &accept)]
            } else {
                vec![]
            };
            get(&url, &h).await
        }));
    }
    let mut latents = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        if r.header("content-type") == Some(MIME) {
            latents += 1;
        } else {
            assert_eq!(r.body, photo);
        }
    }
    assert_eq!(latents, 32);
    assert_eq!(
        origin.count("/same.jpg"),
        1,
        "one origin request for 64 clients"
    );
    assert_eq!(
        metric(&proxy, "vaeproxy_encodes_total").await,
        1.0,
        "one encode for 64 clients"
    );
}

fn png(img: image::DynamicImage) -> Bytes {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    Bytes::from(out)
}

#[tokio::test]
async fn guards_keep_originals() {
    let photo = data("canyon.jpg");
    let mut rgba = image::RgbaImage::new(96, 96);
    for (x, _, p) in rgba.enumerate_pixels_mut() {
        *p = image::Rgba([30, 90, 200, if x < 48 { 0 } else { 255 }]);
    }
    let alpha = png(rgba.into());
    let text = png(image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(
        256,
        256,
        |x, y| {
            if (x / 2 + y / 3) % 2 == 0 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        },
    )));
    let (a, t, p) = (alpha.clone(), text.clone(), photo.clone());
    let origin = start_origin(move |req, _| {
        let cc = [("cache-control", "max-age=600")];
        match req.uri().path() {
            "/alpha.png" => Reply::ok(a.clone(), &cc),
            "/lineart.png" => Reply::ok(t.clone(), &cc),
            "/nt.jpg" => Reply::ok(p.clone(), &[("cache-control", "max-age=600, no-transform")]),
            "/lying.txt" => Reply::ok(
                p.clone(),
                &[
                    ("cache-control", "max-age=600"),
                    ("content-type", "text/plain"),
                ],
            ),
            _ => Reply::ok(
                "not an image",
                &[
                    ("cache-control", "max-age=600"),
                    ("content-type", "image/jpeg"),
                ],
            ),
        }
    })
    .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let accept = latent_accept();
    for (path, want) in [
        ("/alpha.png", &alpha),
        ("/lineart.png", &text),
        ("/nt.jpg", &photo),
    ] {
        get(&proxy.url(path), &[]).await;
        let r = get(&proxy.url(path), &[("accept", &accept)]).await;
        assert_eq!((r.cache(), &r.body), ("hit", want), "{path}");
        assert_ne!(r.header("content-type"), Some(MIME), "{path}");
    }
    // The bytes decide, not Content-Type: a JPEG served as text/plain is encoded...
    get(&proxy.url("/lying.txt"), &[]).await;
    let r = get(&proxy.url("/lying.txt"), &[("accept", &accept)]).await;
    assert_eq!(r.header("content-type"), Some(MIME));
    // ...and text served as image/jpeg is left alone.
    let r = get(&proxy.url("/fake.jpg"), &[("accept", &accept)]).await;
    assert_eq!(&r.body[..], b"not an image");
    let m = metrics(&proxy).await;
    assert_eq!(m["vaeproxy_guard_total{reason=\"alpha\"}"], 1.0);
    assert_eq!(m["vaeproxy_guard_total{reason=\"no_transform\"}"], 1.0);
    let odd = m
        .get("vaeproxy_guard_total{reason=\"low_psnr\"}")
        .copied()
        .unwrap_or(0.0)
        + m.get("vaeproxy_guard_total{reason=\"not_smaller\"}")
            .copied()
            .unwrap_or(0.0);
    assert_eq!(odd, 1.0, "line art is refused: {m:?}");
}

#[tokio::test]
async fn decompression_bomb_is_refused_quickly() {
    // A valid PNG header claiming 60000x60000 pixels, a few bytes long.
    let mut b = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    b.extend_from_slice(&60000u32.to_be_bytes());
    b.extend_from_slice(&60000u32.to_be_bytes());
    b.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32fast::hash(&b[12..29]);
    b.extend_from_slice(&crc.to_be_bytes());
    b.extend_from_slice(&[0u8; 4096]);
    let bomb = Bytes::from(b);
    let body = bomb.clone();
    let origin =
        start_origin(move |_, _| Reply::ok(body.clone(), &[("cache-control", "max-age=600")]))
            .await;
    let proxy = start_proxy(BASIC, &origin.url()).await;
    let t = Instant::now();
    let r = get(&proxy.url("/bomb.png"), &[("accept", &latent_accept())]).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!((r.status, &r.body), (200, &bomb));
    assert_eq!(
        metric(&proxy, "vaeproxy_guard_total{reason=\"too_large\"}").await,
        1.0
    );
}

#[tokio::test]
async fn saturated_pool_passes_images_through() {
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| photo_origin_reply(&p)).await;
    let toml = format!("{BASIC}[codec]\npool_threads = 1\npool_queue = 0\n");
    let proxy = start_proxy(&toml, &origin.url()).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = proxy.url(&format!("/p{i}.jpg"));
        tasks.push(tokio::spawn(async move { get(&url, &[]).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, &r.body), (200, &photo));
    }
    let m = metrics(&proxy).await;
    let full = m
        .get("vaeproxy_guard_total{reason=\"pool_full\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(full >= 1.0, "{m:?}");
    assert_eq!(full + m["vaeproxy_encodes_total"], 6.0);
}

#[tokio::test]
async fn originals_tier_off_refetches_for_ordinary_clients() {
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| photo_origin_reply(&p)).await;
    let toml = format!("{BASIC}[cache]\noriginals_bytes = 0\n");
    let proxy = start_proxy(&toml, &origin.url()).await;
    let accept = latent_accept();
    let first = get(&proxy.url("/o.jpg"), &[]).await;
    assert_eq!(
        first.body, photo,
        "the filling request gets the bytes in hand"
    );
    let lat = get(&proxy.url("/o.jpg"), &[("accept", &accept)]).await;
    assert_eq!(lat.header("content-type"), Some(MIME));
    assert_eq!(origin.count("/o.jpg"), 1);
    let plain = get(&proxy.url("/o.jpg"), &[]).await;
    assert_eq!(plain.body, photo);
    assert_eq!(origin.count("/o.jpg"), 2, "only latents are kept");
    assert_eq!(
        metric(&proxy, "vaeproxy_original_refetches_total").await,
        1.0
    );
}

#[tokio::test]
async fn reconstructions_are_an_opt_in() {
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| photo_origin_reply(&p)).await;
    let toml = format!("{BASIC}[codec]\nreconstructions = \"save-data\"\n");
    let proxy = start_proxy(&toml, &origin.url()).await;
    get(&proxy.url("/s.jpg"), &[]).await;
    let r = get(&proxy.url("/s.jpg"), &[("save-data", "on")]).await;
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert!(r.header("vary").unwrap().contains("Save-Data"));
    image::load_from_memory(&r.body).unwrap();
    let r = get(&proxy.url("/s.jpg"), &[]).await;
    assert_eq!(r.body, photo);
}
