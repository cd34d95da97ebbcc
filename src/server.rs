//! The accept loop: a connection limit, HTTP/1.1 and HTTP/2 (hyper-util's
//! auto builder), header-read timeouts, and graceful shutdown that lets
//! in-flight requests finish.

use crate::config::Limits;
use crate::proxy::Proxy;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Serves `proxy` on `listener` until `shutdown` completes, then waits up to
/// `limits.shutdown_grace_secs` for open requests.
pub async fn run(listener: TcpListener, proxy: Proxy, limits: &Limits, shutdown: impl Future) {
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
        .max_header_list_size(limits.max_header_bytes as u32);
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
        let _ = stream.set_nodelay(true);
        let p = proxy.clone();
        let svc = service_fn(move |req| {
            let p = p.clone();
            async move { Ok::<_, Infallible>(p.handle(req, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
            drop(permit);
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
pub async fn build(cfg: crate::config::Config, codec: Arc<crate::Codec>) -> Result<Proxy, String> {
    let metrics = crate::metrics::Metrics::new();
    let pool = crate::codec::pool::Pool::new(
        codec,
        cfg.codec.pool_threads,
        cfg.codec.pool_queue,
        metrics.pool_queue_depth.clone(),
    );
    let demo = if cfg.routes.iter().any(|r| r.origin == "demo") {
        Some(
            crate::demo::start()
                .await
                .map_err(|e| format!("starting the demo origin: {e}"))?,
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
    let proxy = Proxy::new(cfg, pool, metrics, demo, sampler.clone())?;
    // Generation runs in the background; the proxy is ready before it ends.
    sampler.start();
    Ok(proxy)
}
