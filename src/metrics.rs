//! Prometheus metrics: one registry per proxy instance (so tests running
//! several proxies in one process do not mix counts), rendered in the text
//! exposition format at `/_vaeproxy/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every counter the proxy keeps. Cheap to clone (the metrics are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by cache outcome (hit, miss, stale, revalidated, pass, ...).
    pub requests: IntCounterVec,
    /// Cache lookups by result: hit, miss, stale.
    pub lookups: IntCounterVec,
    /// Requests sent to origins (any method).
    pub origin_requests: IntCounter,
    /// Body bytes received from origins.
    pub origin_bytes: IntCounter,
    /// Body bytes sent to clients.
    pub client_bytes: IntCounter,
    /// Request body bytes relayed from clients to origins.
    pub request_bytes: IntCounter,
    /// Original size minus latent size, summed over latent responses sent.
    pub latent_bytes_saved: IntCounter,
    /// Images the model encoded (one per cache fill, never per hit).
    pub encodes: IntCounter,
    /// Encodes skipped because the same original bytes were encoded before.
    pub encodes_reused: IntCounter,
    /// Responses streamed through uncached because the buffer budget
    /// (`limits.max_buffered_bytes`) was spent.
    pub budget_exhausted: IntCounter,
    /// Client connections closed because a response made no progress
    /// within `limits.client_write_timeout_ms`.
    pub client_write_timeouts: IntCounter,
    /// Latents the model decoded for the proxy (the PSNR guard's check after
    /// each encode, reconstructions); samples count in `samples_generated`.
    pub decodes: IntCounter,
    /// Why an image was kept as its original bytes.
    pub guards: IntCounterVec,
    /// Seconds per encode job on a pool thread (encode + the PSNR check's
    /// decode; queue wait excluded).
    pub encode_seconds: Histogram,
    /// Jobs waiting for a pool thread.
    pub pool_queue_depth: IntGauge,
    /// Entries per cache tier.
    pub cache_entries: IntGaugeVec,
    /// Weighted bytes per cache tier.
    pub cache_bytes: IntGaugeVec,
    /// Originals an ordinary client needed that were refetched from the origin.
    pub original_refetches: IntCounter,
    /// Sampled images generated (startup and regeneration).
    pub samples_generated: IntCounter,
    /// Variations, interpolations and the posteriors behind variations,
    /// generated on request, by kind.
    pub derived_generated: IntCounterVec,
    /// Request duration by status class (`2xx`, ...), from head to response head.
    pub request_seconds: HistogramVec,
    /// Time from sending a request to an origin until its response head.
    pub origin_seconds: Histogram,
    /// Origin requests that failed, by kind (`timeout`, `unreachable`, `client_body`).
    pub origin_errors: IntCounterVec,
    /// Connections closed at accept: the address held `max_connections_per_ip`.
    pub connections_refused: IntCounter,
    /// New variations/interpolations refused, by reason (`disabled`, `per_ip`, `model_time`).
    pub generative_refused: IntCounterVec,
    /// Purges by mode (`url`, `prefix`, `tag`; `soft_` in front when soft).
    pub purges: IntCounterVec,
    /// Successful and failed configuration reloads (`ok`, `error`).
    pub reloads: IntCounterVec,
}

/// Buckets for request and origin latency: 1 ms to ~16 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0,
];

/// Registers `c` in `registry` and hands it back: the one place a metric can
/// fail to register (a duplicate name, a bad label), as an error, not a panic.
fn register<C>(registry: &Registry, c: C) -> prometheus::Result<C>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let ns = |name: &str, help: &str| Opts::new(name, help).namespace("vaeproxy");
        let counter =
            |name: &str, help: &str| register(&registry, IntCounter::with_opts(ns(name, help))?);
        let counter_vec = |name: &str, help: &str, label: &str| {
            register(&registry, IntCounterVec::new(ns(name, help), &[label])?)
        };
        let gauge_vec = |name: &str, help: &str| {
            register(&registry, IntGaugeVec::new(ns(name, help), &["tier"])?)
        };
        let requests = counter_vec(
            "requests_total",
            "Client requests by cache outcome",
            "outcome",
        )?;
        let lookups = counter_vec("cache_lookups_total", "Cache lookups by result", "result")?;
        let guards = counter_vec(
            "guard_total",
            "Images kept as original bytes, by reason",
            "reason",
        )?;
        let encode_seconds = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "encode_seconds",
                    "Encode job duration on a pool thread, queue wait excluded",
                )
                .namespace("vaeproxy")
                .buckets(vec![
                    0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6,
                ]),
            )?,
        )?;
        let pool_queue_depth = register(
            &registry,
            IntGauge::with_opts(ns("pool_queue_depth", "Model jobs waiting for a thread"))?,
        )?;
        let derived_generated = counter_vec(
            "derived_generated_total",
            "Variations, interpolations and posteriors generated (cache fills, not hits)",
            "kind",
        )?;
        let request_seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "Client requests by status class",
                )
                .namespace("vaeproxy")
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["class"],
            )?,
        )?;
        let origin_seconds = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "origin_duration_seconds",
                    "Origin requests, until the response head",
                )
                .namespace("vaeproxy")
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
        )?;
        // Which build answers: a constant 1 with the version as a label.
        let build_info = register(
            &registry,
            IntGaugeVec::new(ns("build_info", "The running build"), &["version"])?,
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = Metrics {
            request_seconds,
            origin_seconds,
            origin_errors: counter_vec("origin_errors_total", "Failed origin requests", "kind")?,
            connections_refused: counter(
                "connections_refused_total",
                "Connections closed at accept by the per-address limit",
            )?,
            generative_refused: counter_vec(
                "generative_refused_total",
                "New variations/interpolations refused",
                "reason",
            )?,
            purges: counter_vec("purges_total", "Purge requests by mode", "mode")?,
            reloads: counter_vec("reloads_total", "Configuration reloads", "result")?,
            requests,
            lookups,
            origin_requests: counter("origin_requests_total", "Requests sent to origins")?,
            origin_bytes: counter("origin_bytes_total", "Body bytes received from origins")?,
            client_bytes: counter("client_bytes_total", "Body bytes sent to clients")?,
            request_bytes: counter(
                "request_bytes_total",
                "Request body bytes relayed to origins",
            )?,
            latent_bytes_saved: counter(
                "latent_bytes_saved_total",
                "Original minus latent bytes over latent responses",
            )?,
            encodes: counter("encodes_total", "Images encoded by the model")?,
            encodes_reused: counter(
                "encodes_reused_total",
                "Encodes skipped: the same original bytes were encoded before",
            )?,
            budget_exhausted: counter(
                "buffer_budget_exhausted_total",
                "Responses streamed uncached because the buffer budget was spent",
            )?,
            client_write_timeouts: counter(
                "client_write_timeouts_total",
                "Client connections closed for taking no response bytes in time",
            )?,
            decodes: counter("decodes_total", "Latents decoded by the model")?,
            guards,
            encode_seconds,
            pool_queue_depth,
            cache_entries: gauge_vec("cache_entries", "Entries per cache tier")?,
            cache_bytes: gauge_vec("cache_weighted_bytes", "Weighted bytes per cache tier")?,
            original_refetches: counter(
                "original_refetches_total",
                "Originals refetched from the origin for ordinary clients",
            )?,
            samples_generated: counter(
                "samples_generated_total",
                "Images sampled from the prior and stored",
            )?,
            derived_generated,
            registry,
        };
        // Every labelled series exists from the start, so a dashboard's rate()
        // sees its first event instead of a series appearing from nothing.
        let zero = |v: &IntCounterVec, labels: &[&str]| {
            for l in labels {
                v.with_label_values(&[l]);
            }
        };
        zero(
            &m.requests,
            &[
                "hit",
                "miss",
                "stale",
                "revalidated",
                "pass",
                "error",
                "internal",
                "sample",
                "derived",
            ],
        );
        zero(&m.lookups, &["hit", "miss", "stale"]);
        zero(&m.origin_errors, &["timeout", "unreachable", "client_body"]);
        zero(&m.generative_refused, &["disabled", "per_ip", "model_time"]);
        zero(
            &m.purges,
            &[
                "url",
                "prefix",
                "tag",
                "soft_url",
                "soft_prefix",
                "soft_tag",
            ],
        );
        zero(&m.reloads, &["ok", "error"]);
        zero(
            &m.derived_generated,
            &["variation", "interpolation", "posterior"],
        );
        for class in ["2xx", "3xx", "4xx", "5xx"] {
            m.request_seconds.with_label_values(&[class]);
        }
        Ok(m)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["hit"]).inc();
        m.encode_seconds.observe(0.3);
        let text = m.render();
        assert!(
            text.contains("vaeproxy_requests_total{outcome=\"hit\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("vaeproxy_encode_seconds_bucket{le=\"0.4\"} 1"),
            "{text}"
        );
    }
}
