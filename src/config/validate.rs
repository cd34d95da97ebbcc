//! What serde cannot check: URLs, ranges and consistency between sections.
//! Every error names the key (`route[2].origin`, `limits.max_header_bytes`)
//! so an operator can find the line.

use super::{
    parse_origin, CacheConfig, CodecConfig, Config, ConfigError, IpBlock, Limits, Route,
    SamplePool, SharedNodes,
};

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

impl Config {
    /// Checks what serde cannot: URLs, ranges, consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() {
            return err("route: no [[route]] given, so the proxy would answer nothing");
        }
        for (i, r) in self.routes.iter().enumerate() {
            route(i, r)?;
        }
        codec(&self.codec)?;
        for (i, p) in self.samples.iter().enumerate() {
            sample_pool(i, p, &self.samples[..i])?;
        }
        shared(&self.cache)?;
        if !(0.0..=1.0).contains(&self.cache.heuristic_fraction) {
            return err("cache.heuristic_fraction: must be within 0..1");
        }
        limits(&self.limits)?;
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            IpBlock::parse(p).map_err(|e| ConfigError(format!("trusted_proxies[{i}]: {e}")))?;
        }
        if let Some(p) = &self.origin_ca_file {
            if !p.is_file() {
                return err(format!("origin_ca_file: {} does not exist", p.display()));
            }
        }
        if self.admin.enabled && self.admin.listen == self.listen {
            return err(format!(
                "admin.listen: {} is also `listen`; the admin listener needs its own address",
                self.listen
            ));
        }
        if let Some(t) = &self.tls {
            for (key, p) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
                if !p.is_file() {
                    return err(format!("{key}: {} does not exist", p.display()));
                }
            }
        }
        let g = &self.generative;
        if !(g.model_seconds_per_minute.is_finite() && g.model_seconds_per_minute >= 0.0) {
            return err("generative.model_seconds_per_minute: must be a number of seconds >= 0");
        }
        Ok(())
    }
}

fn route(i: usize, r: &Route) -> Result<(), ConfigError> {
    if r.origin != "demo" {
        parse_origin(&r.origin).map_err(|e| ConfigError(format!("route[{i}].origin: {e}")))?;
    }
    if let Some(p) = &r.path_prefix {
        if !p.starts_with('/') {
            return err(format!("route[{i}].path_prefix: {p:?} must start with '/'"));
        }
    }
    if let Some(h) = &r.host {
        if h.is_empty() || h.contains(['/', ' ']) {
            return err(format!("route[{i}].host: {h:?} is not a host name"));
        }
    }
    Ok(())
}

fn codec(c: &CodecConfig) -> Result<(), ConfigError> {
    if c.quality == 0 {
        return err("codec.quality: levels start at 1");
    }
    if c.pool_threads == 0 {
        return err("codec.pool_threads: must be at least 1");
    }
    if !(0.0..=100.0).contains(&c.psnr_floor) {
        return err(format!(
            "codec.psnr_floor: {} dB is outside 0..100",
            c.psnr_floor
        ));
    }
    if c.max_pixels == 0 || c.max_pixels > crate::latent::wire::MAX_PIXELS {
        return err(format!(
            "codec.max_pixels: must be 1..={}",
            crate::latent::wire::MAX_PIXELS
        ));
    }
    if let Some(w) = &c.weights {
        if !w.is_file() {
            return err(format!("codec.weights: {} does not exist", w.display()));
        }
    }
    Ok(())
}

/// Pool `i`, with the pools before it (names must be unique).
fn sample_pool(i: usize, p: &SamplePool, before: &[SamplePool]) -> Result<(), ConfigError> {
    let key = format!("samples[{i}]");
    let ok_name = !p.name.is_empty()
        && p.name.len() <= 64
        && p.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok_name {
        return err(format!(
            "{key}.name: {:?} must be 1-64 letters, digits, '-' or '_'",
            p.name
        ));
    }
    if before.iter().any(|q| q.name == p.name) {
        return err(format!("{key}.name: {:?} is used twice", p.name));
    }
    if !(16..=2048).contains(&p.width) || !(16..=2048).contains(&p.height) {
        return err(format!(
            "{key}: {}x{} is outside 16..=2048 pixels a side",
            p.width, p.height
        ));
    }
    if !(1..=4096).contains(&p.count) {
        return err(format!("{key}.count: must be 1..=4096"));
    }
    if !(p.temperature.is_finite() && (0.0..=4.0).contains(&p.temperature)) {
        return err(format!("{key}.temperature: must be within 0..=4"));
    }
    if !(1..=100).contains(&p.jpeg_quality) {
        return err(format!("{key}.jpeg_quality: must be 1..=100"));
    }
    Ok(())
}

fn shared(c: &CacheConfig) -> Result<(), ConfigError> {
    let nodes = match &c.shared {
        None => return Ok(()),
        Some(SharedNodes::One(u)) => std::slice::from_ref(u),
        Some(SharedNodes::Cluster(v)) => v.as_slice(),
    };
    if nodes.is_empty() {
        return err("cache.shared: an empty list names no Redis node");
    }
    for (i, u) in nodes.iter().enumerate() {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) || u.len() > 2048 {
            return err(format!(
                "cache.shared[{i}]: {u:?} is not a redis:// or rediss:// URL"
            ));
        }
    }
    if c.shared_prefix.len() > 256 || c.shared_prefix.contains(char::is_whitespace) {
        return err("cache.shared_prefix: at most 256 characters, no spaces");
    }
    for (key, v) in [
        ("shared_timeout_ms", c.shared_timeout_ms),
        ("shared_lock_ms", c.shared_lock_ms),
    ] {
        if v == 0 {
            return err(format!("cache.{key}: must be at least 1"));
        }
    }
    Ok(())
}

fn limits(l: &Limits) -> Result<(), ConfigError> {
    if l.max_header_bytes < 8192 {
        return err("limits.max_header_bytes: must be at least 8192");
    }
    for (key, v) in [
        ("max_connections", l.max_connections as u64),
        ("max_connections_per_ip", l.max_connections_per_ip as u64),
        ("h2_max_streams", u64::from(l.h2_max_streams)),
        ("client_write_timeout_ms", l.client_write_timeout_ms),
        ("origin_body_deadline_ms", l.origin_body_deadline_ms),
    ] {
        if v == 0 {
            return err(format!("limits.{key}: must be at least 1"));
        }
    }
    Ok(())
}
