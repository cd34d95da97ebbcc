//! SIGHUP's half inside the proxy: a validated configuration replaces the
//! live snapshot whole (requests in flight keep the one they started with);
//! what only a restart can change is named, not half-applied.

use super::{Live, Proxy};
use crate::config::Config;
use crate::error::StartError;
use std::sync::Arc;

impl Proxy {
    /// Replaces the configuration for the next requests: routes, trusted
    /// proxies, the codec's per-request settings, limits, the generative
    /// routes. Keys that only a restart can change are returned by name (the
    /// running values stay). On error nothing changes.
    pub fn reload(&self, cfg: Config) -> Result<Vec<&'static str>, StartError> {
        let levels = self.inner.pool.codec().levels();
        if usize::from(cfg.codec.quality) > usize::from(levels) {
            return Err(StartError::Config(format!(
                "codec.quality: {} but the weights have {levels} levels",
                cfg.codec.quality
            )));
        }
        let old = self.live();
        let restart = restart_only_changes(&old.cfg, &cfg);
        let live = Live::new(cfg, self.inner.demo)?;
        let (a, b) = (&old.cfg.codec, &live.cfg.codec);
        if (a.enabled, a.quality, a.max_pixels, a.max_image_bytes)
            != (b.enabled, b.quality, b.max_pixels, b.max_image_bytes)
            || a.psnr_floor != b.psnr_floor
        {
            // Remembered outcomes were decided under the old settings.
            self.inner.memo.clear();
        }
        *self.inner.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        Ok(restart)
    }
}

/// Keys whose new values a running proxy cannot take (listeners, cache
/// sizes, the model pool, the sample pools, origin timeouts): named in the
/// reload's log line so the operator knows to restart.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("listen", old.listen != new.listen);
    check("origin_ca_file", old.origin_ca_file != new.origin_ca_file);
    check(
        "admin",
        (old.admin.enabled, old.admin.listen) != (new.admin.enabled, new.admin.listen),
    );
    let (a, b) = (&old.cache, &new.cache);
    check(
        "cache sizes",
        (
            a.capacity_bytes,
            a.originals_bytes,
            a.samples_bytes,
            a.derived_bytes,
        ) != (
            b.capacity_bytes,
            b.originals_bytes,
            b.samples_bytes,
            b.derived_bytes,
        ) || a.keep_stale_secs != b.keep_stale_secs
            || a.content_memo_bytes != b.content_memo_bytes,
    );
    let (a, b) = (&old.codec, &new.codec);
    check(
        "codec.weights/pool_threads/pool_queue",
        a.weights != b.weights || a.pool_threads != b.pool_threads || a.pool_queue != b.pool_queue,
    );
    check(
        "samples",
        format!("{:?}", old.samples) != format!("{:?}", new.samples),
    );
    let (a, b) = (&old.limits, &new.limits);
    check(
        "limits (connections, timeouts toward clients and origins, buffers)",
        (
            a.connect_timeout_ms,
            a.header_timeout_ms,
            a.max_header_bytes,
            a.max_connections,
        ) != (
            b.connect_timeout_ms,
            b.header_timeout_ms,
            b.max_header_bytes,
            b.max_connections,
        ) || (
            a.client_write_timeout_ms,
            a.max_buffered_bytes,
            a.h2_max_streams,
        ) != (
            b.client_write_timeout_ms,
            b.max_buffered_bytes,
            b.h2_max_streams,
        ) || a.shutdown_grace_secs != b.shutdown_grace_secs,
    );
    changed
}
