//! The built-in demo origin: a tiny web server with a few packaged photos
//! (licences in `config/demo/SOURCES.md`), so `cargo run --release` shows the
//! proxy working with no origin of your own. It is a real HTTP server on a
//! loopback port; the proxy reaches it like any other origin.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// (path, content type, bytes) of everything the demo serves.
const PHOTOS: [(&str, &[u8]); 4] = [
    (
        "canyon01.jpg",
        include_bytes!("../config/demo/canyon01.jpg"),
    ),
    ("lava3.jpg", include_bytes!("../config/demo/lava3.jpg")),
    ("sea8.jpg", include_bytes!("../config/demo/sea8.jpg")),
    (
        "life_by_aitzol_berasategi.jpg",
        include_bytes!("../config/demo/life_by_aitzol_berasategi.jpg"),
    ),
];

/// A fixed date, so validators stay the same across restarts.
const LAST_MODIFIED: &str = "Mon, 02 Nov 2026 00:00:00 GMT";

/// Binds 127.0.0.1 on a free port and serves until the runtime stops.
pub async fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(serve))
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn serve(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let (ctype, body, cc): (&str, Bytes, &str) = if path == "/" {
        (
            "text/html; charset=utf-8",
            Bytes::from(index()),
            "max-age=60",
        )
    } else if let Some((_, bytes)) = path
        .strip_prefix("/photos/")
        .and_then(|name| PHOTOS.iter().find(|(n, _)| *n == name))
    {
        (
            "image/jpeg",
            Bytes::from_static(bytes),
            "public, max-age=3600",
        )
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    };
    let etag = format!("\"{:08x}\"", crc32fast::hash(&body));
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = Response::new(if matches {
        Full::new(Bytes::new())
    } else {
        Full::new(body)
    });
    if matches {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = r.headers_mut();
    if !matches {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static(LAST_MODIFIED),
    );
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is ASCII"),
    );
    Ok(r)
}

fn index() -> String {
    let mut s = String::from(
        "<!doctype html><title>vaeproxy demo origin</title><h1>vaeproxy demo origin</h1><ul>",
    );
    for (name, bytes) in PHOTOS {
        s.push_str(&format!(
            "<li><a href=\"/photos/{name}\">{name}</a> ({} bytes)</li>",
            bytes.len()
        ));
    }
    s.push_str("</ul>\n");
    s
}
