//! Phase 7: the access log line. One `info` event per request on the
//! `vaeproxy::access` target, with fields an operator greps or a log
//! pipeline indexes; `log_format = "json"` turns every event into one JSON
//! object (set up by the binary, not here).

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// What the line needs from the request, taken before the request is consumed.
pub(super) struct AccessLog {
    method: Method,
    peer: SocketAddr,
    host: String,
    path: String,
    query: String,
    user_agent: String,
}

impl AccessLog {
    pub(super) fn of(req: &Request<Incoming>, peer: SocketAddr) -> AccessLog {
        let text = |h: &HeaderMap, name: header::HeaderName| {
            // Clipped: a client's header is not the log's to grow without bound.
            let v = h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
            v.chars().take(256).collect::<String>()
        };
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| text(req.headers(), header::HOST));
        AccessLog {
            method: req.method().clone(),
            peer,
            host,
            path: req.uri().path().chars().take(2048).collect(),
            query: req.uri().query().unwrap_or("").chars().take(2048).collect(),
            user_agent: text(req.headers(), header::USER_AGENT),
        }
    }

    /// `upstream` is the time to the origin's response head, when one was asked.
    pub(super) fn write<B>(
        self,
        resp: &Response<B>,
        outcome: &str,
        elapsed: Duration,
        upstream: Option<Duration>,
    ) {
        let bytes = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let upstream_ms = upstream.map_or(-1, |t| t.as_millis() as i64);
        tracing::info!(
            target: "vaeproxy::access",
            client = %self.peer.ip(),
            method = %self.method,
            host = self.host,
            path = self.path,
            query = self.query,
            status = resp.status().as_u16(),
            cache = outcome,
            bytes,
            ms = elapsed.as_millis() as u64,
            upstream_ms,
            user_agent = self.user_agent,
        );
    }
}

tokio::task_local! {
    /// Time to the origin's response head(s) in the request being served.
    static UPSTREAM: Cell<Option<Duration>>;
}

/// Runs `f` (one request) with room for [`record_upstream`]; returns what
/// it returned and the time the origin took, if it was asked.
pub(super) async fn timed<F: Future>(f: F) -> (F::Output, Option<Duration>) {
    UPSTREAM
        .scope(Cell::new(None), async {
            let out = f.await;
            (out, UPSTREAM.with(Cell::get))
        })
        .await
}

/// Adds an origin round trip to the current request's upstream time.
pub(super) fn record_upstream(d: Duration) {
    let _ = UPSTREAM.try_with(|c| c.set(Some(c.get().unwrap_or_default() + d)));
}

/// `2xx`, `4xx`, ...: the request-duration histogram's label.
pub(super) fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
