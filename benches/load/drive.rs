//! The load generator, two ways. Closed loop ([`drive`]): `concurrency`
//! HTTP/1.1 keep-alive connections, each sending one request at a time,
//! until a deadline or a request count; its percentiles hide queueing (a
//! slow answer delays the next send). Open loop ([`drive_open`]): requests
//! go out at a fixed rate whatever the answers, each timed from when it was
//! *meant* to be sent, so queueing shows. The same code drives vaeproxy and nginx.

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

/// Most requests in flight in open loop; beyond it a send is counted as an
/// error instead of growing the client without bound.
const MAX_IN_FLIGHT: usize = 4096;

/// Open loop: request `i` is due at `start + i / rate`; each is sent on an
/// idle keep-alive connection (or a new one) at its due time, and its
/// latency runs from that due time, not from when a connection was free.
/// Latencies are kept whole and sorted (exact percentiles).
pub async fn drive_open(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    max: u64,
    pick: Picker,
) -> Run {
    let idle: Arc<std::sync::Mutex<Vec<Sender>>> = Arc::default();
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut rng = StdRng::seed_from_u64(0x0BE7);
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    let mut refused = 0u64;
    let total = ((duration.as_secs_f64() * rate) as u64).min(max);
    for n in 0..total {
        let due = start + period.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        if in_flight.load(Ordering::Relaxed) as usize >= MAX_IN_FLIGHT {
            refused += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let p = pick(n, &mut rng);
        let (idle, in_flight) = (Arc::clone(&idle), Arc::clone(&in_flight));
        tasks.push(tokio::spawn(async move {
            let pooled = idle.lock().expect("idle pool").pop();
            let sender = match pooled {
                Some(s) if !s.is_closed() => Some(s),
                _ => connect(addr).await,
            };
            let out = match sender {
                None => Err(false),
                Some(mut sender) => match send(&mut sender, addr, &p).await {
                    Ok(answer) => {
                        idle.lock().expect("idle pool").push(sender);
                        Ok(answer)
                    }
                    Err(timed_out) => Err(timed_out),
                },
            };
            in_flight.fetch_sub(1, Ordering::Relaxed);
            (out, due.elapsed())
        }));
    }
    let mut run = Run {
        errors: refused,
        ..Run::default()
    };
    for t in tasks {
        let (out, latency) = t.await.expect("request task");
        match out {
            Ok((ok, len)) => {
                run.latencies
                    .push(latency.as_micros().min(u32::MAX as u128) as u32);
                run.bytes += len as u64;
                if !ok {
                    run.errors += 1;
                }
            }
            Err(true) => run.timeouts += 1,
            Err(false) => run.errors += 1,
        }
    }
    run.latencies.sort_unstable();
    run.elapsed = start.elapsed();
    run
}

/// One request on `sender`: (status < 400, body length), or whether it
/// failed by timing out.
async fn send(sender: &mut Sender, addr: SocketAddr, p: &Pick) -> Result<(bool, usize), bool> {
    let mut req = Request::get(p.path.as_str()).header("host", addr.to_string());
    if let Some(a) = &p.accept {
        req = req.header("accept", &**a);
    }
    let req = req.body(Empty::new()).expect("request");
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let resp = sender.send_request(req).await?;
        let ok = resp.status().as_u16() < 400;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((ok, body.len()))
    })
    .await;
    match answer {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
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
        let t = Instant::now();
        match send(sender, addr, &p).await {
            Ok((ok, len)) => {
                run.latencies
                    .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                run.bytes += len as u64;
                if !ok {
                    run.errors += 1;
                }
            }
            Err(false) => {
                run.errors += 1;
                tx = None;
            }
            Err(true) => {
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
