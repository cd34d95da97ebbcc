//! The defaults of every section: what a key means when the file leaves it
//! out (`config/vaeproxy.toml` documents the same values).

use super::*;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            routes: Vec::new(),
            cache: CacheConfig::default(),
            codec: CodecConfig::default(),
            limits: Limits::default(),
            samples: vec![SamplePool::default_pool()],
            trusted_proxies: Vec::new(),
            origin_ca_file: None,
            admin: AdminConfig::default(),
            log_format: LogFormat::Text,
            generative: GenerativeConfig::default(),
            tls: None,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity_bytes: 256 << 20,
            originals_bytes: 64 << 20,
            max_object_bytes: 16 << 20,
            samples_bytes: 64 << 20,
            derived_bytes: 32 << 20,
            keep_stale_secs: 3600,
            heuristic_fraction: 0.1,
            heuristic_max_secs: 86400,
            content_memo_bytes: 8 << 20,
            shared: None,
            shared_prefix: "vaeproxy:".into(),
            shared_timeout_ms: 50,
            shared_lock_ms: 10_000,
            shared_lock_wait_ms: 3_000,
        }
    }
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            enabled: true,
            weights: None,
            quality: crate::codec::DEFAULT_QUALITY,
            psnr_floor: 22.0,
            max_pixels: 24_000_000,
            max_image_bytes: 16 << 20,
            pool_threads: 1,
            pool_queue: 16,
            reconstructions: Reconstructions::Never,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout_ms: 3000,
            header_timeout_ms: 30_000,
            body_idle_timeout_ms: 30_000,
            max_request_body: 64 << 20,
            max_response_body: 1 << 30,
            max_header_bytes: 64 << 10,
            max_connections: 4096,
            max_connections_per_ip: 256,
            shutdown_grace_secs: 30,
            client_write_timeout_ms: 30_000,
            origin_body_deadline_ms: 120_000,
            max_buffered_bytes: 128 << 20,
            h2_max_streams: 32,
        }
    }
}
