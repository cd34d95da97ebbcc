//! The accept loop: a connection limit, HTTP/1.1 and HTTP/2 (hyper-util's
//! auto builder), header-read timeouts, a write timeout toward clients that
//! stop reading, and graceful shutdown that lets in-flight requests finish.

use crate::config::Limits;
use crate::proxy::upstream::{BoxError, ProxyBody};
use crate::proxy::{Proxy, Role};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// Serves `proxy` on the public `listener` until `shutdown` completes, then
/// waits up to `limits.shutdown_grace_secs` for open requests.
pub async fn run(listener: TcpListener, proxy: Proxy, limits: &Limits, shutdown: impl Future) {
    serve(listener, proxy, limits, Role::Public, None, shutdown).await
}

/// [`run`] with TLS: every connection is handshaken with `tls`'s current
/// certificate (in its own task, under the header deadline) before HTTP/1.1
/// or HTTP/2 (by ALPN) is served on it.
pub async fn run_tls(
    listener: TcpListener,
    proxy: Proxy,
    limits: &Limits,
    tls: crate::tls::Acceptor,
    shutdown: impl Future,
) {
    serve(listener, proxy, limits, Role::Public, Some(tls), shutdown).await
}

/// Serves the operator's endpoints (health, metrics, purge) on `listener`,
/// with the same limits and shutdown as the public listener.
pub async fn run_admin(
    listener: TcpListener,
    proxy: Proxy,
    limits: &Limits,
    shutdown: impl Future,
) {
    serve(listener, proxy, limits, Role::Admin, None, shutdown).await
}

async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    limits: &Limits,
    role: Role,
    tls: Option<crate::tls::Acceptor>,
    shutdown: impl Future,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_timeout_ms))
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(limits.h2_max_streams);
    let write_timeout = Duration::from_millis(limits.client_write_timeout_ms);
    let handshake_timeout = Duration::from_millis(limits.header_timeout_ms);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        // Wait for a free connection slot first: beyond the limit, new
        // connections wait in the kernel's accept queue instead of in memory.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(5); x }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // One address may hold only so many connections: a slowloris from a
        // few hosts cannot take every slot. Trusted proxies carry many
        // clients' traffic and are exempt.
        let slot = match role {
            Role::Public => proxy.connection_slot(peer.ip()),
            Role::Admin => Some(proxy.unlimited_slot()),
        };
        let Some(per_ip) = slot else {
            proxy.metrics().ops.connections_refused.inc();
            tracing::debug!("connection from {peer} refused: per-address limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let p = proxy.clone();
        let progress = Arc::new(Progress::new());
        let io = Stalling::new(stream, Arc::clone(&progress), write_timeout, proxy.clone());
        let svc = service_fn(move |req| {
            let p = p.clone();
            let progress = Arc::clone(&progress);
            async move {
                let resp = p.handle(req, peer, role).await;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, progress).boxed()))
            }
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let tls = tls.as_ref().map(|t| t.current());
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(io), svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                        Ok(Ok(io)) => {
                            let conn = builder.serve_connection(TokioIo::new(io), svc);
                            watcher.watch(conn.into_owned()).await
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}").into()),
                        Err(_) => Err("TLS handshake: timed out".into()),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!("connection from {peer}: {e}");
            }
            drop((permit, per_ip));
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; dropping open connections"),
    }
}

/// Builds the proxy for `cfg`: the model pool, the metrics, and the demo
/// origin when a route names it.
pub async fn build(
    cfg: crate::config::Config,
    codec: Arc<crate::Codec>,
) -> Result<Proxy, crate::error::StartError> {
    build_with_clock(cfg, codec, crate::clock::Clock::system()).await
}

/// [`build`] with the cache reading `clock` (tests step a
/// [`crate::clock::Clock::steppable`] instead of sleeping through a max-age).
pub async fn build_with_clock(
    cfg: crate::config::Config,
    codec: Arc<crate::Codec>,
    clock: crate::clock::Clock,
) -> Result<Proxy, crate::error::StartError> {
    let metrics = crate::metrics::Metrics::new()?;
    let pool = crate::codec::pool::Pool::new(
        codec,
        cfg.codec.pool_threads,
        cfg.codec.pool_queue,
        metrics.model.pool_queue_depth.clone(),
    )
    .map_err(crate::error::StartError::Pool)?;
    let demo = if cfg.routes.iter().any(|r| r.origin == "demo") {
        Some(
            crate::demo::start()
                .await
                .map_err(crate::error::StartError::Demo)?,
        )
    } else {
        None
    };
    let sampler = crate::sampler::Sampler::new(
        cfg.samples.clone(),
        cfg.cache.samples_bytes,
        cfg.cache.derived_bytes,
        pool.clone(),
        metrics.clone(),
    );
    let proxy = Proxy::new(cfg, pool, metrics, demo, sampler.clone(), clock)?;
    // Generation runs in the background; the proxy is ready before it ends.
    sampler.start();
    Ok(proxy)
}

/// Response progress on one client connection: how many responses are
/// being sent, and when one last handed a frame to the connection.
struct Progress {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` that hyper last polled a response body:
    /// it polls only when it can send more, so a poll is client progress.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A response body that reports to its connection's [`Progress`], handing
/// hyper at most [`PIECE`] bytes per frame. hyper takes the next frame only
/// when the previous ones have (mostly) left, HTTP/1 through its write buffer
/// and HTTP/2 through the flow-control window, so "no frame taken for a
/// while" means the client stopped reading, even for a body held as one
/// buffer.
struct Tracked {
    inner: ProxyBody,
    /// The rest of a data frame larger than one piece.
    rest: Bytes,
    progress: Arc<Progress>,
}

const PIECE: usize = 64 << 10;

impl Tracked {
    fn new(inner: ProxyBody, progress: Arc<Progress>) -> Tracked {
        // A response starts with a full window of its own.
        progress.touch();
        progress.in_flight.fetch_add(1, Ordering::Relaxed);
        Tracked {
            inner,
            rest: Bytes::new(),
            progress,
        }
    }

    fn piece(&mut self) -> Frame<Bytes> {
        let n = self.rest.len().min(PIECE);
        Frame::data(self.rest.split_to(n))
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.progress.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.progress.touch();
        if !self.rest.is_empty() {
            return Poll::Ready(Some(Ok(self.piece())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.len() > PIECE => {
                    self.rest = data;
                    Poll::Ready(Some(Ok(self.piece())))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            r => r,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(u) = inner.upper() {
            hint.set_upper(u + rest);
        }
        hint
    }
}

/// The client socket, failing with `TimedOut` once a response has been in
/// progress without taking a frame for `timeout`. hyper stops polling a body
/// while the client does not read (HTTP/1: the socket is full; HTTP/2: no
/// WINDOW_UPDATE), so the check lives here, where hyper always polls: the
/// connection then closes and drops what its responses hold.
struct Stalling {
    io: TcpStream,
    progress: Arc<Progress>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Since when the socket has refused every write (the client's receive
    /// window is full): covers the tail a finished body left in buffers.
    write_blocked: Option<Instant>,
    proxy: Proxy,
}

impl Stalling {
    fn new(io: TcpStream, progress: Arc<Progress>, timeout: Duration, proxy: Proxy) -> Stalling {
        Stalling {
            io,
            progress,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            write_blocked: None,
            proxy,
        }
    }

    /// Called when an I/O call is pending: the error to fail it with, if the
    /// responses in progress have stalled; otherwise arms the timer.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let responding = self.progress.in_flight.load(Ordering::Relaxed) > 0;
        let deadline = match (responding, self.write_blocked) {
            (true, Some(b)) => self.progress.last().min(b),
            (true, None) => self.progress.last(),
            (false, Some(b)) => b,
            (false, None) => return None,
        } + self.timeout;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.proxy.metrics().client_write_timeouts.inc();
                Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "client took no response bytes for {} ms",
                        self.timeout.as_millis()
                    ),
                ))
            }
            Poll::Pending => None,
        }
    }

    fn wrote(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Pending => {
                self.write_blocked.get_or_insert_with(Instant::now);
                match self.stalled(cx) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Pending,
                }
            }
            r => {
                self.write_blocked = None;
                r
            }
        }
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending => match self.stalled(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            r => r,
        }
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => match self.stalled(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
