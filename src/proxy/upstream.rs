//! Origins as data and the pooled client that talks to them, with the
//! timeouts that turn a dead or slow origin into a 502/504 with a reason.

use crate::config::{parse_origin, Limits, Origin, Route};
use crate::error::HttpError;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Any body error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends or relays.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body of these bytes.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A route with its origin parsed.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Matches only this `Host` (any when `None`).
    pub host: Option<String>,
    /// Matches only paths under this prefix.
    pub path_prefix: Option<String>,
    /// Where requests go.
    pub origin: Origin,
    /// Send the client's `Host` instead of the origin's.
    pub preserve_host: bool,
    /// Store responses with `Set-Cookie` (the header itself is never stored).
    pub store_set_cookie: bool,
}

impl Upstream {
    /// `demo_addr` replaces the `demo` origin (the built-in demo server).
    pub fn from_route(
        r: &Route,
        demo_addr: Option<std::net::SocketAddr>,
    ) -> Result<Self, RouteError> {
        let origin = match (r.origin.as_str(), demo_addr) {
            ("demo", Some(a)) => parse_origin(&format!("http://{a}"))?,
            ("demo", None) => return Err(RouteError::NoDemo),
            (o, _) => parse_origin(o)?,
        };
        Ok(Upstream {
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path_prefix: r.path_prefix.clone(),
            origin,
            preserve_host: r.preserve_host,
            store_set_cookie: r.store_set_cookie,
        })
    }

    /// Whether a request for `host` and `path` takes this route.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

/// Why a route cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// Its origin URL does not parse.
    #[error(transparent)]
    Origin(#[from] crate::config::AddrError),
    /// It names `demo` but this process runs no demo origin.
    #[error("the demo origin is not running")]
    NoDemo,
}

/// Why the origin client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `origin_ca_file` is unreadable or holds no usable certificate.
    #[error("origin_ca_file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the client configuration.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The pooled HTTP/1.1 client to every origin, plain or TLS.
#[derive(Clone)]
pub struct OriginClient {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    header_timeout: Duration,
}

impl OriginClient {
    /// `ca_file`: extra PEM roots for `https://` origins (a private CA).
    pub fn new(limits: &Limits, ca_file: Option<&Path>) -> Result<OriginClient, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(p) = ca_file {
            let ca = |reason: String| ClientError::CaFile {
                path: p.to_path_buf(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca("no certificates in it".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| ca(e.to_string()))?;
            }
        }
        // ring, not the platform's crypto: nothing to install, same on every machine.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_millis(limits.connect_timeout_ms)));
        conn.set_nodelay(true);
        conn.enforce_http(false);
        let conn = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn);
        Ok(OriginClient {
            client,
            header_timeout: Duration::from_millis(limits.header_timeout_ms),
        })
    }

    /// Sends `req` and waits for the response head, within the header timeout.
    /// The client gets a short reason; the cause (DNS, refused, reset, ...)
    /// goes to the log at `warn`, since it names internal hosts and addresses.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, HttpError> {
        let origin = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match tokio::time::timeout(self.header_timeout, self.client.request(req)).await {
            Err(_) => {
                tracing::warn!(origin, "origin sent no response head in time");
                Err(HttpError::GatewayTimeout(format!(
                    "origin sent no response within {} ms",
                    self.header_timeout.as_millis()
                )))
            }
            Ok(Err(e)) => {
                // The client's own body failed (malformed chunking, a stall):
                // the client's fault, not the origin's.
                if let Some(cb) = find_source::<ClientBodyError>(&e) {
                    return Err(if find_source::<Stalled>(cb).is_some() {
                        HttpError::RequestTimeout(format!("request body: {}", cb.0))
                    } else {
                        HttpError::BadRequest(format!("request body: {}", cb.0))
                    });
                }
                let cause = error_chain(&e);
                tracing::warn!(origin, cause, "origin request failed");
                let timed_out = find_source::<std::io::Error>(&e)
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                Err(if e.is_connect() && timed_out {
                    HttpError::GatewayTimeout("connecting to the origin timed out".into())
                } else if e.is_connect() {
                    HttpError::BadGateway("cannot connect to origin".into())
                } else {
                    HttpError::BadGateway("origin failed to answer".into())
                })
            }
            Ok(Ok(r)) => Ok(r),
        }
    }
}

/// The first error of type `T` in `e`'s source chain (itself included).
pub fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// A body produced no frame within its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body stalled for {0} ms")]
pub struct Stalled(pub u128);

/// An error of the client's request body, so that forwarding it can be
/// answered as the client's fault (400/408), never as the origin's (502).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientBodyError(pub BoxError);

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A body that counts its bytes into a metric and, with an idle timeout,
/// fails if no frame arrives within it (a stalled peer must not hold a
/// connection forever).
pub struct Watched<B> {
    inner: B,
    idle: Duration,
    /// `None` for counting only: bodies already in memory, or relays whose
    /// origin side has its own timer.
    timer: Option<Pin<Box<Sleep>>>,
    counter: IntCounter,
}

impl<B> Watched<B> {
    /// Wraps `inner`; `counter` counts bodies closed for idling longer than `idle`.
    pub fn new(inner: B, idle: Duration, counter: IntCounter) -> Self {
        Watched {
            inner,
            idle,
            timer: Some(Box::pin(tokio::time::sleep(idle))),
            counter,
        }
    }

    /// Counts bytes without a timer.
    pub fn counting(inner: B, counter: IntCounter) -> Self {
        Watched {
            inner,
            idle: Duration::ZERO,
            timer: None,
            counter,
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.counter.inc_by(d.len() as u64);
                }
                let deadline = Instant::now() + self.idle;
                if let Some(t) = self.timer.as_mut() {
                    t.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    Poll::Ready(Some(Err(Box::new(Stalled(self.idle.as_millis())))))
                }
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The bytes of origin bodies being buffered for the cache, over all
/// requests (`limits.max_buffered_bytes`). Counted in KiB; what a response
/// holds is released when its body is dropped (sent, or the client gone), so
/// slow readers cannot pile up buffered bodies beyond it.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
}

/// Budget held by one buffered body.
#[derive(Debug, Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    /// KiB of the budget this holds.
    pub fn kib(&self) -> u32 {
        self.0.as_ref().map_or(0, |p| p.num_permits() as u32)
    }
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Budget {
        let kib = (bytes / 1024).min(Semaphore::MAX_PERMITS as u64) as usize;
        Budget {
            sem: Arc::new(Semaphore::new(kib)),
        }
    }

    /// Adds `bytes` to `held`; false (and nothing taken) when the budget is spent.
    fn take(&self, held: &mut Held, bytes: usize) -> bool {
        let kib = bytes.div_ceil(1024).min(u32::MAX as usize) as u32;
        match Arc::clone(&self.sem).try_acquire_many_owned(kib) {
            Ok(p) => {
                match held.0.as_mut() {
                    Some(h) => h.merge(p),
                    None => held.0 = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }

    /// KiB not in use.
    pub fn available_kib(&self) -> usize {
        self.sem.available_permits()
    }
}

/// What [`collect_up_to`] read.
pub enum Collected {
    /// The whole body, and the budget it holds.
    Whole(Bytes, Held),
    /// Over the size limit or the budget: what was read, and the rest, to be
    /// streamed through instead of cached.
    Over {
        /// The chunks read before the limit.
        prefix: Vec<Bytes>,
        /// The unread rest of the body.
        rest: ProxyBody,
        /// The budget the prefix holds.
        held: Held,
        /// The budget was spent (rather than the size limit reached).
        budget_spent: bool,
    },
}

/// Reads a body up to `limit` bytes, taking each piece from `budget`.
pub async fn collect_up_to(
    mut body: ProxyBody,
    limit: u64,
    budget: &Budget,
) -> Result<Collected, BoxError> {
    let mut parts = Vec::new();
    let mut len = 0u64;
    let mut held = Held::default();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            let within_budget = budget.take(&mut held, data.len());
            parts.push(data);
            if len > limit || !within_budget {
                return Ok(Collected::Over {
                    prefix: parts,
                    rest: body,
                    held,
                    budget_spent: !within_budget,
                });
            }
        }
    }
    if parts.len() == 1 {
        return Ok(Collected::Whole(parts.pop().expect("one part"), held));
    }
    let mut all = Vec::with_capacity(len as usize);
    for p in parts {
        all.extend_from_slice(&p);
    }
    Ok(Collected::Whole(Bytes::from(all), held))
}

/// `body` holding `held` until it is dropped (the closure owns it).
pub fn holding(body: ProxyBody, held: Held) -> ProxyBody {
    if held.0.is_none() {
        return body;
    }
    body.map_frame(move |f| {
        let _ = &held;
        f
    })
    .boxed()
}

/// `prefix` then the rest of `body`, as one body.
pub fn prefixed(prefix: Vec<Bytes>, body: ProxyBody) -> ProxyBody {
    Prefixed {
        head: prefix.into(),
        rest: body,
    }
    .boxed()
}

struct Prefixed {
    head: std::collections::VecDeque<Bytes>,
    rest: ProxyBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(b) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Collected").finish_non_exhaustive()
    }
}

impl<B> std::fmt::Debug for Watched<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Watched").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OriginClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("OriginClient").finish_non_exhaustive()
    }
}
