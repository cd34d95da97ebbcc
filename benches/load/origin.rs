//! The bench's origin: a hyper server on its own runtime thread, serving a
//! fixed set of objects from memory. Images are distinct crops of the
//! packaged photos (real photographs, distinct bytes per URL), re-encoded as
//! JPEG; the rest is small JSON and HTML.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

const PHOTOS: [&str; 6] = [
    "config/demo/canyon01.jpg",
    "config/demo/lava3.jpg",
    "config/demo/sea8.jpg",
    "config/demo/life_by_aitzol_berasategi.jpg",
    "tests/data/twowings.png",
    "tests/data/canyon.jpg",
];

/// One stored object.
pub struct Object {
    pub body: Bytes,
    pub content_type: &'static str,
}

/// Everything the origin serves, by path.
#[derive(Default)]
pub struct Objects(pub HashMap<String, Object>);

impl Objects {
    /// `count` JPEG crops of `w` x `h` under `/{prefix}/{i}.jpg`, all different.
    pub fn add_images(&mut self, prefix: &str, count: usize, w: u32, h: u32) {
        let photos: Vec<image::RgbImage> = PHOTOS
            .iter()
            .map(|p| image::open(p).expect("packaged photo").to_rgb8())
            .collect();
        let mut made = 0;
        'outer: for step in [24u32, 16, 8, 4, 2, 1] {
            for oy in (0..).step_by(step as usize) {
                let mut any = false;
                for (k, p) in photos.iter().enumerate() {
                    if p.width() < w || p.height() < h || oy + h > p.height() {
                        continue;
                    }
                    any = true;
                    for ox in (0..=p.width() - w).step_by(step as usize * 3) {
                        if made == count {
                            break 'outer;
                        }
                        let crop = image::imageops::crop_imm(p, ox, oy, w, h).to_image();
                        let mut out = Vec::new();
                        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(
                            &mut out,
                            85 + (k as u8 % 3) + (step % 3) as u8,
                        );
                        crop.write_with_encoder(enc).expect("jpeg in memory");
                        self.0.insert(
                            format!("/{prefix}/{made}.jpg"),
                            Object {
                                body: Bytes::from(out),
                                content_type: "image/jpeg",
                            },
                        );
                        made += 1;
                    }
                }
                if !any {
                    break;
                }
            }
        }
        assert_eq!(made, count, "not enough distinct crops for {prefix}");
    }

    /// `count` small documents under `/{prefix}/{i}.json` of about `size` bytes.
    pub fn add_documents(&mut self, prefix: &str, count: usize, size: usize) {
        for i in 0..count {
            let mut s = format!("{{\"id\":{i},\"items\":[");
            let mut j = 0;
            while s.len() + 20 < size {
                s.push_str(&format!("{{\"n\":{j},\"v\":{}}},", (i * 31 + j) % 997));
                j += 1;
            }
            s.push_str("{}]}");
            self.0.insert(
                format!("/{prefix}/{i}.json"),
                Object {
                    body: Bytes::from(s),
                    content_type: "application/json",
                },
            );
        }
    }

    pub fn bytes_under(&self, prefix: &str) -> (usize, u64) {
        let p = format!("/{prefix}/");
        let v: Vec<_> = self.0.iter().filter(|(k, _)| k.starts_with(&p)).collect();
        (v.len(), v.iter().map(|(_, o)| o.body.len() as u64).sum())
    }
}

/// Starts the origin on a thread of its own; returns its address.
pub fn start(objects: Objects) -> SocketAddr {
    let objects = Arc::new(objects);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("origin runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let objects = Arc::clone(&objects);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(Arc::clone(&objects), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().expect("origin started")
}

async fn serve(
    objects: Arc<Objects>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(o) = objects.0.get(req.uri().path()) else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    };
    let mut r = Response::new(Full::new(o.body.clone()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(o.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    let tag = format!("\"{:08x}\"", crc32fast::hash(&o.body));
    h.insert(header::ETAG, HeaderValue::from_str(&tag).unwrap());
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static("Mon, 02 Nov 2026 00:00:00 GMT"),
    );
    Ok(r)
}
