//! The load generator: `concurrency` HTTP/1.1 keep-alive connections, each
//! sending one request at a time, until a deadline or a request count. The
//! same code drives vaeproxy and nginx.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request to send: path and, for latent-capable clients, an Accept value.
pub struct Pick {
    pub path: String,
    pub accept: Option<Arc<str>>,
}

/// Chooses request `n` (a global sequence number) with a per-connection RNG.
pub type Picker = Arc<dyn Fn(u64, &mut StdRng) -> Pick + Send + Sync>;

/// What one load run measured.
#[derive(Default)]
pub struct Run {
    /// Latency of each answered request, microseconds, sorted.
    pub latencies: Vec<u32>,
    pub bytes: u64,
    /// Transport errors and non-2xx/3xx answers.
    pub errors: u64,
    /// Requests without an answer within the per-request timeout.
    pub timeouts: u64,
    pub elapsed: Duration,
}

impl Run {
    pub fn requests(&self) -> u64 {
        self.latencies.len() as u64
    }

    pub fn rps(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    /// Percentile `p` (0-100) in milliseconds.
    pub fn ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        f64::from(self.latencies[i]) / 1000.0
    }

    /// Merges runs of the same scenario (latencies re-sorted, times added).
    pub fn merge(runs: Vec<Run>) -> Run {
        let mut out = Run::default();
        for r in runs {
            out.latencies.extend(r.latencies);
            out.bytes += r.bytes;
            out.errors += r.errors;
            out.timeouts += r.timeouts;
            out.elapsed += r.elapsed;
        }
        out.latencies.sort_unstable();
        out
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Drives `addr` for at most `duration` and `max` requests.
pub async fn drive(
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
    max: u64,
    pick: Picker,
) -> Run {
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (sent, pick) = (Arc::clone(&sent), Arc::clone(&pick));
            tokio::spawn(worker(addr, w as u64, deadline, max, sent, pick))
        })
        .collect();
    let mut runs = Vec::new();
    for w in workers {
        runs.push(w.await.expect("worker"));
    }
    let mut run = Run::merge(runs);
    run.elapsed = start.elapsed();
    run
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (tx, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(tx)
}

async fn worker(
    addr: SocketAddr,
    id: u64,
    deadline: Instant,
    max: u64,
    sent: Arc<AtomicU64>,
    pick: Picker,
) -> Run {
    let mut rng = StdRng::seed_from_u64(0x5EED ^ id);
    let mut run = Run::default();
    let mut tx: Option<Sender> = None;
    let host = addr.to_string();
    while Instant::now() < deadline {
        let n = sent.fetch_add(1, Ordering::Relaxed);
        if n >= max {
            break;
        }
        let p = pick(n, &mut rng);
        if tx.as_ref().is_none_or(|t| t.is_closed()) {
            tx = connect(addr).await;
        }
        let Some(sender) = tx.as_mut() else {
            run.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut req = Request::get(p.path.as_str()).header("host", host.as_str());
        if let Some(a) = &p.accept {
            req = req.header("accept", &**a);
        }
        let req = req.body(Empty::new()).expect("request");
        let t = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = sender.send_request(req).await?;
            let ok = resp.status().as_u16() < 400;
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((ok, body.len()))
        })
        .await;
        match answer {
            Ok(Ok((ok, len))) => {
                run.latencies
                    .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                run.bytes += len as u64;
                if !ok {
                    run.errors += 1;
                }
            }
            Ok(Err(_)) => {
                run.errors += 1;
                tx = None;
            }
            Err(_) => {
                run.timeouts += 1;
                tx = None;
            }
        }
    }
    run
}

/// One request on a fresh connection: status, headers and body.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> Option<(u16, hyper::HeaderMap, Bytes)> {
    let mut tx = connect(addr).await?;
    let mut req = Request::get(path).header("host", addr.to_string());
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = tx.send_request(req.body(Empty::new()).ok()?).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((parts.status.as_u16(), parts.headers, body))
}
