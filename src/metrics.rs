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
    /// Responses streamed through uncached because the buffer budget
    /// (`limits.max_buffered_bytes`) was spent.
    pub budget_exhausted: IntCounter,
    /// Client connections closed because a response made no progress
    /// within `limits.client_write_timeout_ms`.
    pub client_write_timeouts: IntCounter,
    /// Entries per cache tier.
    pub cache_entries: IntGaugeVec,
    /// Weighted bytes per cache tier.
    pub cache_bytes: IntGaugeVec,
    /// Originals an ordinary client needed that were refetched from the origin.
    pub original_refetches: IntCounter,
    /// Request duration by status class (`2xx`, ...), from head to response head.
    pub request_seconds: HistogramVec,
    /// Time from sending a request to an origin until its response head.
    pub origin_seconds: Histogram,
    /// Origin requests that failed, by kind (`timeout`, `unreachable`, `client_body`).
    pub origin_errors: IntCounterVec,
    /// What the model did: encodes, decodes, guards, samples.
    pub model: ModelMetrics,
    /// Operator-facing events: refusals, purges, reloads.
    pub ops: OpsMetrics,
}

/// Refusals, purges and reloads: what an operator's alerts watch.
#[derive(Clone)]
pub struct OpsMetrics {
    /// Connections closed at accept: the address held `max_connections_per_ip`.
    pub connections_refused: IntCounter,
    /// New variations/interpolations refused, by reason (`disabled`, `per_ip`, `model_time`).
    pub generative_refused: IntCounterVec,
    /// Purges by mode (`url`, `prefix`, `tag`; `soft_` in front when soft).
    pub purges: IntCounterVec,
    /// Successful and failed configuration reloads (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// Shared-tier events: `hit`, `miss`, `store`, `lock_won`, `lock_wait`, `invalidate`,
    /// `purged` (records a prefix or tag purge removed).
    pub shared: IntCounterVec,
    /// Shared-tier calls that failed, by kind (`timeout`, `redis`, `garbage`).
    pub shared_errors: IntCounterVec,
}

/// The model's work, apart from the traffic counters.
#[derive(Clone)]
pub struct ModelMetrics {
    /// Images the model encoded (one per cache fill, never per hit).
    pub encodes: IntCounter,
    /// Encodes skipped because the same original bytes were encoded before.
    pub encodes_reused: IntCounter,
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
    /// Sampled images generated (startup and regeneration).
    pub samples_generated: IntCounter,
    /// Variations, interpolations and the posteriors behind variations,
    /// generated on request, by kind.
    pub derived_generated: IntCounterVec,
}

/// Buckets for request and origin latency: 1 ms to ~16 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0,
];

/// The one place a metric is made and registered: a duplicate name or a bad
/// label is an error here, not a panic; labelled series are created at zero
/// from the start, so a dashboard's rate() sees the first event instead of a
/// series appearing from nothing.
struct Reg(Registry);

impl Reg {
    fn add<C>(&self, c: C) -> prometheus::Result<C>
    where
        C: prometheus::core::Collector + Clone + 'static,
    {
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn opts(name: &str, help: &str) -> Opts {
        Opts::new(name, help).namespace("vaeproxy")
    }

    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.add(IntCounter::with_opts(Self::opts(name, help))?)
    }

    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let v = self.add(IntCounterVec::new(Self::opts(name, help), &[label])?)?;
        for l in values {
            v.with_label_values(&[l]);
        }
        Ok(v)
    }

    fn gauge_vec(&self, name: &str, help: &str, label: &str) -> prometheus::Result<IntGaugeVec> {
        self.add(IntGaugeVec::new(Self::opts(name, help), &[label])?)
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(name, help)
            .namespace("vaeproxy")
            .buckets(LATENCY_BUCKETS.to_vec());
        let v = self.add(HistogramVec::new(opts, &[label])?)?;
        for l in values {
            v.with_label_values(&[l]);
        }
        Ok(v)
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
        let opts = HistogramOpts::new(name, help)
            .namespace("vaeproxy")
            .buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts)?)
    }
}

/// Cache outcomes of `requests_total`.
const OUTCOMES: [&str; 9] = [
    "hit",
    "miss",
    "stale",
    "revalidated",
    "pass",
    "error",
    "internal",
    "sample",
    "derived",
];
/// Modes of `purges_total`.
const PURGE_MODES: [&str; 6] = [
    "url",
    "prefix",
    "tag",
    "soft_url",
    "soft_prefix",
    "soft_tag",
];
const ENCODE_BUCKETS: [f64; 11] = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6];

impl ModelMetrics {
    fn new(r: &Reg) -> prometheus::Result<Self> {
        Ok(ModelMetrics {
            encodes: r.counter("encodes_total", "Images encoded by the model")?,
            encodes_reused: r.counter(
                "encodes_reused_total",
                "Encodes skipped: the same original bytes were encoded before",
            )?,
            decodes: r.counter("decodes_total", "Latents decoded by the model")?,
            guards: r.counter_vec(
                "guard_total",
                "Images kept as original bytes, by reason",
                "reason",
                &[],
            )?,
            encode_seconds: r.histogram(
                "encode_seconds",
                "Encode job duration on a pool thread, queue wait excluded",
                &ENCODE_BUCKETS,
            )?,
            pool_queue_depth: r.add(IntGauge::with_opts(Reg::opts(
                "pool_queue_depth",
                "Model jobs waiting for a thread",
            ))?)?,
            samples_generated: r.counter(
                "samples_generated_total",
                "Images sampled from the prior and stored",
            )?,
            derived_generated: r.counter_vec(
                "derived_generated_total",
                "Variations, interpolations and posteriors generated (cache fills, not hits)",
                "kind",
                &["variation", "interpolation", "posterior"],
            )?,
        })
    }
}

impl OpsMetrics {
    fn new(r: &Reg) -> prometheus::Result<Self> {
        // Which build answers: a constant 1 with the version as a label.
        r.gauge_vec("build_info", "The running build", "version")?
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(OpsMetrics {
            connections_refused: r.counter(
                "connections_refused_total",
                "Connections closed at accept by the per-address limit",
            )?,
            generative_refused: r.counter_vec(
                "generative_refused_total",
                "New variations/interpolations refused",
                "reason",
                &["disabled", "per_ip", "model_time"],
            )?,
            purges: r.counter_vec(
                "purges_total",
                "Purge requests by mode",
                "mode",
                &PURGE_MODES,
            )?,
            reloads: r.counter_vec(
                "reloads_total",
                "Configuration reloads",
                "result",
                &["ok", "error"],
            )?,
            shared: r.counter_vec(
                "shared_total",
                "Shared-tier events",
                "event",
                &[
                    "hit",
                    "miss",
                    "store",
                    "lock_wait",
                    "lock_won",
                    "invalidate",
                    "purged",
                ],
            )?,
            shared_errors: r.counter_vec(
                "shared_errors_total",
                "Failed shared-tier calls",
                "kind",
                &["timeout", "redis", "garbage"],
            )?,
        })
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> prometheus::Result<Self> {
        let r = Reg(Registry::new());
        Ok(Metrics {
            requests: r.counter_vec(
                "requests_total",
                "Client requests by cache outcome",
                "outcome",
                &OUTCOMES,
            )?,
            lookups: r.counter_vec(
                "cache_lookups_total",
                "Cache lookups by result",
                "result",
                &["hit", "miss", "stale"],
            )?,
            request_seconds: r.histogram_vec(
                "request_duration_seconds",
                "Client requests by status class",
                "class",
                &["2xx", "3xx", "4xx", "5xx"],
            )?,
            origin_seconds: r.histogram(
                "origin_duration_seconds",
                "Origin requests, until the response head",
                &LATENCY_BUCKETS,
            )?,
            origin_errors: r.counter_vec(
                "origin_errors_total",
                "Failed origin requests",
                "kind",
                &["timeout", "unreachable", "client_body"],
            )?,
            origin_requests: r.counter("origin_requests_total", "Requests sent to origins")?,
            origin_bytes: r.counter("origin_bytes_total", "Body bytes received from origins")?,
            client_bytes: r.counter("client_bytes_total", "Body bytes sent to clients")?,
            request_bytes: r.counter(
                "request_bytes_total",
                "Request body bytes relayed to origins",
            )?,
            latent_bytes_saved: r.counter(
                "latent_bytes_saved_total",
                "Original minus latent bytes over latent responses",
            )?,
            budget_exhausted: r.counter(
                "buffer_budget_exhausted_total",
                "Responses streamed uncached because the buffer budget was spent",
            )?,
            client_write_timeouts: r.counter(
                "client_write_timeouts_total",
                "Client connections closed for taking no response bytes in time",
            )?,
            cache_entries: r.gauge_vec("cache_entries", "Entries per cache tier", "tier")?,
            cache_bytes: r.gauge_vec(
                "cache_weighted_bytes",
                "Weighted bytes per cache tier",
                "tier",
            )?,
            original_refetches: r.counter(
                "original_refetches_total",
                "Originals refetched from the origin for ordinary clients",
            )?,
            model: ModelMetrics::new(&r)?,
            ops: OpsMetrics::new(&r)?,
            registry: r.0,
        })
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

impl std::fmt::Debug for ModelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("ModelMetrics").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OpsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("OpsMetrics").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["hit"]).inc();
        m.model.encode_seconds.observe(0.3);
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
