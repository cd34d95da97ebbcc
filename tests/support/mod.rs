//! Real sockets for the proxy tests: an origin server on 127.0.0.1:0 whose
//! answers each test scripts, the proxy in front of it, and a small client.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use vaeproxy::config::Config;
use vaeproxy::Codec;

/// One scripted origin answer.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Wait this long before sending the head.
    pub delay: Duration,
    /// Close the connection instead of answering.
    pub reset: bool,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>, headers: &[(&'static str, &str)]) -> Reply {
        Reply {
            status: 200,
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            body: body.into(),
            delay: Duration::ZERO,
            reset: false,
        }
    }
}

type Handler = dyn Fn(&Request<Incoming>, usize) -> Reply + Send + Sync;

/// A scripted origin: counts requests per path and keeps their headers.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Origin {
    /// Requests the origin received for `path` (path+query).
    pub fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }

    pub fn total(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Headers of the last request for `path`.
    pub fn last_headers(&self, path: &str) -> HeaderMap {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts an origin; `handler` gets the request and its 1-based number for that path.
pub async fn start_origin(
    handler: impl Fn(&Request<Incoming>, usize) -> Reply + Send + Sync + 'static,
) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(String, HeaderMap)>>> = Arc::default();
    let handler: Arc<Handler> = Arc::new(handler);
    let origin = Origin {
        addr,
        seen: Arc::clone(&seen),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    let handler = Arc::clone(&handler);
                    async move {
                        let path = req.uri().path_and_query().unwrap().as_str().to_string();
                        let n = {
                            let mut s = seen.lock().unwrap();
                            s.push((path.clone(), req.headers().clone()));
                            s.iter().filter(|(p, _)| *p == path).count()
                        };
                        let reply = handler(&req, n);
                        if !reply.delay.is_zero() {
                            tokio::time::sleep(reply.delay).await;
                        }
                        if reply.reset {
                            return Err("reset".to_string());
                        }
                        let mut r = Response::new(Full::new(reply.body));
                        *r.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                        for (k, v) in reply.headers {
                            r.headers_mut()
                                .append(k, HeaderValue::from_str(&v).unwrap());
                        }
                        Ok::<_, String>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    origin
}

/// A running proxy: the public listener and the admin listener.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The cache's clock: `advance` it instead of sleeping through a max-age.
    pub clock: vaeproxy::clock::Clock,
    shutdown: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL on the admin listener (health, metrics, purge).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Sends the shutdown signal and waits until the server has stopped.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap();
    }
}

/// The shipped codec, loaded once per test binary.
pub fn codec() -> Arc<Codec> {
    static CODEC: OnceLock<Arc<Codec>> = OnceLock::new();
    Arc::clone(CODEC.get_or_init(|| Arc::new(Codec::shipped().unwrap())))
}

/// Starts the proxy from TOML text; `{origin}` in it is replaced by `origin`.
pub async fn start_proxy(toml: &str, origin: &str) -> Proxy {
    let toml = toml.replace("{origin}", origin);
    let cfg = Config::from_toml(&toml).unwrap();
    let limits = cfg.limits.clone();
    let clock = vaeproxy::clock::Clock::steppable();
    let proxy = vaeproxy::server::build_with_clock(cfg, codec(), clock.clone())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let stop = vaeproxy::shutdown::Trigger::new();
        let admin_run =
            vaeproxy::server::run_admin(admin_listener, proxy.clone(), &limits, stop.wait());
        let public = vaeproxy::server::run(listener, proxy, &limits, async {
            let _ = rx.await;
            stop.fire();
        });
        tokio::join!(public, admin_run);
    });
    Proxy {
        addr,
        admin,
        clock,
        shutdown: Some(tx),
        done: Some(done),
    }
}

/// The simplest config: one catch-all route to `{origin}`, no sample pools
/// (so no background generation competes with the test).
pub const BASIC: &str = "samples = []\n[[route]]\norigin = \"{origin}\"\n";

/// A response as the tests look at it.
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn cache(&self) -> &str {
        self.header("x-vaeproxy-cache").unwrap_or("")
    }
}

/// GET/HEAD/... with extra headers over a fresh client.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    send_body(method, url, headers, Bytes::new()).await
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    send("GET", url, headers).await
}

pub async fn send_body(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(HeaderName::from_bytes(k.as_bytes()).unwrap(), *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

/// Value of one metric line (`name` including labels) from /_vaeproxy/metrics.
pub async fn metric(proxy: &Proxy, name: &str) -> f64 {
    let text = get(&proxy.admin_url("/_vaeproxy/metrics"), &[]).await.body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// All metric lines, for assertions messages.
pub async fn metrics(proxy: &Proxy) -> HashMap<String, f64> {
    let text = get(&proxy.admin_url("/_vaeproxy/metrics"), &[]).await.body;
    String::from_utf8(text.to_vec())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0.0)))
        })
        .collect()
}

pub fn data(name: &str) -> Bytes {
    Bytes::from(std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap())
}

pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// A hand-written HTTP/1.1 origin that behaves as nginx does with a request
/// body it does not want: it answers first, then reads and discards the
/// declared bytes, so a declared length without the bytes behind it
/// desynchronises the connection. It records every request line it parses;
/// each response body is the request's path.
pub struct RawOrigin {
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl RawOrigin {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

pub async fn start_discarding_origin() -> RawOrigin {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&lines);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("?").to_string();
                    seen.lock().unwrap().push(line);
                    let (mut len, mut chunked) = (0usize, false);
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if h.starts_with("transfer-encoding:") && h.contains("chunked") {
                            chunked = true;
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: max-age=60\r\n\r\n{path}",
                        path.len()
                    );
                    if r.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    if chunked {
                        loop {
                            let mut size = String::new();
                            if r.read_line(&mut size).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                            let mut skip = vec![0u8; n + 2];
                            if r.read_exact(&mut skip).await.is_err() {
                                return;
                            }
                            if n == 0 {
                                break;
                            }
                        }
                    } else {
                        let mut skip = vec![0u8; len];
                        if r.read_exact(&mut skip).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    RawOrigin { addr, lines }
}

/// Writes `request` on a new connection to `addr` and reads until the peer
/// closes (send `Connection: close`).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}
