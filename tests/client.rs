//! The client decode library on real latent files: every truncation, every
//! bit flip, wrong magic/version/model, absurd sizes, and the worked example
//! printed in docs/latent-format.md.

use vaeproxy::client::{DecodeError, Decoder};
use vaeproxy::latent::wire;

fn real_latent(d: &Decoder) -> Vec<u8> {
    // encoding goes through the same weights the decoder holds
    let codec = vaeproxy::Codec::shipped().unwrap();
    assert_eq!(codec.id(), d.model_id());
    let img = image::open("tests/data/canyon.jpg").unwrap().to_rgb8();
    codec.encode(&img, 1).unwrap()
}

#[test]
fn decodes_a_real_file() {
    let d = Decoder::shipped().unwrap();
    let img = d.decode(&real_latent(&d)).unwrap();
    assert_eq!(img.dimensions(), (320, 160));
    assert!(d
        .accept_header()
        .starts_with("application/vnd.vaeproxy.latent; model="));
}

#[test]
fn every_truncation_is_an_error() {
    let d = Decoder::shipped().unwrap();
    let good = real_latent(&d);
    for n in 0..good.len() {
        assert!(d.decode(&good[..n]).is_err(), "prefix of {n} bytes decoded");
    }
}

#[test]
fn every_bit_flip_is_an_error() {
    let d = Decoder::shipped().unwrap();
    let good = real_latent(&d);
    for bit in 0..good.len() * 8 {
        let mut b = good.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(d.decode(&b).is_err(), "flip of bit {bit} decoded");
    }
}

#[test]
fn wrong_magic_version_model_and_sizes() {
    let d = Decoder::shipped().unwrap();
    let good = real_latent(&d);
    let l = wire::parse(&good).unwrap();
    let words = wire::payload_words(l.payload);

    let mut b = good.clone();
    b[..4].copy_from_slice(b"JFIF");
    assert!(matches!(
        d.decode(&b),
        Err(DecodeError::Wire(wire::WireError::BadMagic))
    ));
    let mut b = good.clone();
    b[4] = 2;
    assert!(matches!(
        d.decode(&b),
        Err(DecodeError::Wire(wire::WireError::UnsupportedVersion(2)))
    ));

    let mut h = l.header;
    h.model = wire::ModelId([0x55; 16]);
    let e = d.decode(&wire::write(&h, &words)).unwrap_err();
    assert!(matches!(e, DecodeError::ModelMismatch { .. }));
    assert!(e.to_string().contains("5555"), "{e}");

    for (w, hh) in [
        (0, 10),
        (10, 0),
        (16385, 10),
        (16384, 16384),
        (u32::MAX, u32::MAX),
    ] {
        let h = wire::Header::new(d.model_id(), 1, w.min(16384 * 4), hh.min(16384 * 4), 32);
        let h = wire::Header {
            width: w,
            height: hh,
            ..h
        };
        assert!(
            matches!(
                d.decode(&wire::write(&h, &words)),
                Err(DecodeError::Wire(_))
            ),
            "{w}x{hh}"
        );
    }
}

/// The hex dump in docs/latent-format.md decodes to the image the document says.
#[test]
fn worked_example_from_the_document() {
    let doc = std::fs::read_to_string("docs/latent-format.md").unwrap();
    let start = doc.find("```hex").expect("the document has a ```hex block") + 6;
    let end = start + doc[start..].find("```").unwrap();
    let bytes: Vec<u8> = doc[start..end]
        .split_whitespace()
        .filter(|t| t.len() == 2)
        .map(|t| u8::from_str_radix(t, 16).unwrap())
        .collect();
    let d = Decoder::shipped().unwrap();
    let img = d.decode(&bytes).unwrap();
    let line = doc.lines().find(|l| l.starts_with("Decodes to:")).unwrap();
    let want = format!(
        "Decodes to: {}x{} pixels, mean RGB",
        img.width(),
        img.height()
    );
    assert!(line.starts_with(&want), "{line} vs {want}");
    let n = (img.width() * img.height()) as f64;
    let mean: Vec<f64> = (0..3)
        .map(|c| img.pixels().map(|p| p.0[c] as f64).sum::<f64>() / n)
        .collect();
    let text = format!("({:.1}, {:.1}, {:.1})", mean[0], mean[1], mean[2]);
    assert!(line.contains(&text), "{line} vs {text}");
}

/// A one-file origin on 127.0.0.1:0 that answers every request with `body`
/// and `content_type`, and records the Accept header it saw.
async fn origin(
    body: Vec<u8>,
    content_type: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<String>>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (body, seen) = (body.clone(), s2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let accept = req
                            .headers()
                            .get("accept")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        *seen.lock().unwrap() = accept;
                        let resp = hyper::Response::builder()
                            .header("content-type", content_type)
                            .body(Full::new(Bytes::from(body.clone())))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}/photo"), seen)
}

#[tokio::test]
async fn fetch_decodes_latents_and_passes_images_through() {
    use std::sync::Arc;
    let d = Arc::new(Decoder::shipped().unwrap());
    let latent = real_latent(&d);
    let (url, seen) = origin(latent, "application/vnd.vaeproxy.latent").await;
    let img = vaeproxy::client::fetch_image(d.clone(), &url)
        .await
        .unwrap();
    assert_eq!(img.dimensions(), (320, 160));
    assert!(seen
        .lock()
        .unwrap()
        .contains(&format!("model={}", d.model_id())));

    let jpeg = std::fs::read("tests/data/canyon.jpg").unwrap();
    let (url, _) = origin(jpeg, "image/jpeg").await;
    let img = vaeproxy::client::fetch_image(d.clone(), &url)
        .await
        .unwrap();
    assert_eq!(img.dimensions(), (320, 160));

    let (url, _) = origin(b"garbage".to_vec(), "application/vnd.vaeproxy.latent").await;
    assert!(vaeproxy::client::fetch_image(d.clone(), &url)
        .await
        .is_err());
    assert!(vaeproxy::client::fetch_image(d, "http://127.0.0.1:1/x")
        .await
        .is_err());
}

/// A `Fetcher` keeps one pooled client: three fetches, one connection.
#[tokio::test]
async fn fetcher_reuses_its_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let jpeg = hyper::body::Bytes::from(std::fs::read("tests/data/canyon.jpg").unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a2 = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            a2.fetch_add(1, Ordering::SeqCst);
            let jpeg = jpeg.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let resp = hyper::Response::builder()
                        .header("content-type", "image/jpeg")
                        .body(http_body_util::Full::new(jpeg.clone()))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let f = vaeproxy::client::Fetcher::new(Arc::new(Decoder::shipped().unwrap()));
    for _ in 0..3 {
        let img = f.fetch(&format!("http://{addr}/p.jpg")).await.unwrap();
        assert_eq!(img.dimensions(), (320, 160));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
