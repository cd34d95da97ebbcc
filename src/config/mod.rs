//! The proxy's configuration: `config/vaeproxy.toml`, parsed with serde
//! (`deny_unknown_fields`, so a typo is an error and not a silent default),
//! then validated once. Every problem comes back as one message naming the
//! key and what is wrong with it.

mod locate;
mod net;
mod units;

pub use locate::{Source, SEARCH_PATH};
pub use net::{parse_origin, IpBlock, Origin};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration could not be used. The text names the file and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Which origin serves which requests; the first match wins.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    /// The HTTP cache.
    pub cache: CacheConfig,
    /// The image codec and its guards.
    pub codec: CodecConfig,
    /// Timeouts and size limits against slow or hostile peers.
    pub limits: Limits,
    /// Pools of images sampled from the VAE's prior, pre-generated at startup.
    /// Absent: the `default` pool; `samples = []` turns sampling off.
    pub samples: Vec<SamplePool>,
    /// Peers (IPs or CIDR blocks) whose `Forwarded`, `X-Forwarded-*` and
    /// `Via` are kept and appended to; from anyone else they are dropped, so a
    /// client cannot make the origin believe a forged address or host.
    pub trusted_proxies: Vec<String>,
    /// PEM file of extra CA certificates that `https://` origins may be
    /// signed by (a private CA), on top of the Mozilla roots.
    pub origin_ca_file: Option<PathBuf>,
    /// The operator's listener: health, metrics and purge.
    pub admin: AdminConfig,
    /// `text` (one line per event) or `json` (one object per line, for log pipelines).
    pub log_format: LogFormat,
    /// Variations and interpolations, which make the model work on request.
    pub generative: GenerativeConfig,
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The admin listener. Health, metrics and `PURGE` answer only here, never
/// on the public `listen`, so a site's visitors can neither read the
/// operator's numbers nor empty the cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Run the admin listener at all (off: no health, metrics or purge anywhere).
    pub enabled: bool,
    /// Where it listens; keep it on loopback or a private network.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: "127.0.0.1:9901".parse().expect("valid literal"),
        }
    }
}

/// On-demand generation (`/_vaeproxy/variations/...`, `/_vaeproxy/interpolate`).
/// Each new one costs up to seconds of model time, so both are off unless the
/// operator turns them on, and then bounded per client and in total.
/// Already made ones are served from the sampler's cache whatever the limits;
/// the pre-generated sample pools are never limited (no model work per request).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerativeConfig {
    /// Serve `/_vaeproxy/variations/{pool}`.
    pub variations: bool,
    /// Serve `/_vaeproxy/interpolate`.
    pub interpolations: bool,
    /// New variations/interpolations one client address may start per minute (429 beyond).
    pub per_ip_per_minute: u32,
    /// Model seconds all new variations/interpolations may use per minute
    /// (503 with Retry-After beyond), so live encodes keep the pool.
    pub model_seconds_per_minute: f64,
}

impl Default for GenerativeConfig {
    fn default() -> Self {
        GenerativeConfig {
            variations: false,
            interpolations: false,
            per_ip_per_minute: 10,
            model_seconds_per_minute: 20.0,
        }
    }
}

/// Output format of sampled images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    Png,
    Jpeg,
    Webp,
}

/// One pool of sampled images, served at `/_vaeproxy/samples/{name}/{index}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplePool {
    /// URL name of the pool: letters, digits, `-` and `_`.
    pub name: String,
    /// Image size in pixels.
    pub width: u32,
    pub height: u32,
    /// Number of images.
    pub count: u32,
    /// RNG seed: the same seed, size and weights give the same bytes.
    #[serde(default)]
    pub seed: u64,
    /// PNG (lossless), JPEG or WebP (lossless in the `image` crate).
    #[serde(default = "default_format")]
    pub format: SampleFormat,
    /// JPEG quality 1..=100.
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: u8,
    /// z ~ N(0, t^2 I); below 1 gives smoother, more typical pictures.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
}

fn default_format() -> SampleFormat {
    SampleFormat::Png
}

fn default_jpeg_quality() -> u8 {
    90
}

fn default_temperature() -> f32 {
    0.8
}

impl SamplePool {
    /// The pool the shipped config declares.
    pub fn default_pool() -> SamplePool {
        SamplePool {
            name: "default".into(),
            width: 256,
            height: 256,
            count: 64,
            seed: 0,
            format: SampleFormat::Png,
            jpeg_quality: default_jpeg_quality(),
            temperature: default_temperature(),
        }
    }
}

/// One route: requests whose Host and path match go to `origin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Host (without port) this route answers for; absent = any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix this route answers for; absent = every path.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// `http://host[:port][/base]`, or `demo` for the built-in demo origin.
    pub origin: String,
    /// Send the client's Host to the origin instead of the origin's own.
    #[serde(default)]
    pub preserve_host: bool,
    /// Store responses that carry `Set-Cookie` (with the header removed from
    /// the stored copy, so no client ever gets another's cookie). Off: such
    /// responses are relayed to the client that asked and never stored.
    #[serde(default)]
    pub store_set_cookie: bool,
}

/// The HTTP cache's budgets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes for cached responses, with images held as latent codes.
    #[serde(deserialize_with = "units::bytes")]
    pub capacity_bytes: u64,
    /// Bytes for original image bytes kept for ordinary clients; 0 = always
    /// refetch originals from the origin (the latent tier alone is kept).
    #[serde(deserialize_with = "units::bytes")]
    pub originals_bytes: u64,
    /// Largest single response body that is cached; bigger ones stream through.
    #[serde(deserialize_with = "units::bytes")]
    pub max_object_bytes: u64,
    /// Bytes for sampled images, apart from ordinary traffic so it cannot evict them.
    #[serde(deserialize_with = "units::bytes")]
    pub samples_bytes: u64,
    /// Bytes for variations and interpolations made on request.
    #[serde(deserialize_with = "units::bytes")]
    pub derived_bytes: u64,
    /// How long a stale response with validators is kept for revalidation.
    #[serde(deserialize_with = "units::secs")]
    pub keep_stale_secs: u64,
    /// Heuristic freshness as a fraction of (Date - Last-Modified), RFC 9111 4.2.2.
    pub heuristic_fraction: f64,
    /// Upper bound of heuristic freshness.
    #[serde(deserialize_with = "units::secs")]
    pub heuristic_max_secs: u64,
    /// Bytes for encode results keyed by the SHA-256 of the original image:
    /// a refetch (client `no-cache`, an invalidation) that brings back the
    /// same bytes reuses the latent instead of paying the model again.
    #[serde(deserialize_with = "units::bytes")]
    pub content_memo_bytes: u64,
}

/// When ordinary (non-latent) clients may get a VAE reconstruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reconstructions {
    /// Ordinary clients always get the original bytes.
    Never,
    /// Only clients that send `Save-Data: on`.
    SaveData,
    /// Every ordinary client (the operator accepts lossy pictures).
    Always,
}

/// The codec as the proxy uses it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodecConfig {
    /// Turn images into latents at all.
    pub enabled: bool,
    /// Weights file; absent = the weights built into the binary.
    pub weights: Option<PathBuf>,
    /// Quality level, 1 (smallest) to the number of levels of the weights.
    pub quality: u8,
    /// Reconstructions below this PSNR (dB) keep the original: the VAE's error
    /// is the out-of-distribution alarm for screenshots, text and line art.
    pub psnr_floor: f64,
    /// Images with more pixels than this are not decoded (decompression bombs).
    pub max_pixels: u64,
    /// Image bodies larger than this are not decoded.
    #[serde(deserialize_with = "units::bytes")]
    pub max_image_bytes: u64,
    /// Threads that run the model. Each also uses candle's own threads.
    pub pool_threads: usize,
    /// Jobs that may wait for a thread; beyond it images pass through unencoded.
    pub pool_queue: usize,
    /// Whether ordinary clients may get reconstructions (off by default).
    pub reconstructions: Reconstructions,
}

/// Timeouts and sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connecting to an origin.
    #[serde(deserialize_with = "units::millis")]
    pub connect_timeout_ms: u64,
    /// From sending the request to the origin's response head.
    #[serde(deserialize_with = "units::millis")]
    pub header_timeout_ms: u64,
    /// Longest pause between two pieces of a body, either direction.
    #[serde(deserialize_with = "units::millis")]
    pub body_idle_timeout_ms: u64,
    /// Largest request body accepted from a client.
    #[serde(deserialize_with = "units::bytes")]
    pub max_request_body: u64,
    /// Largest response body accepted from an origin.
    #[serde(deserialize_with = "units::bytes")]
    pub max_response_body: u64,
    /// Largest request head (request line + headers) from a client.
    #[serde(deserialize_with = "units::bytes")]
    pub max_header_bytes: usize,
    /// Client connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Open connections one client address may hold (slowloris from a few
    /// hosts cannot take every slot); `trusted_proxies` are exempt.
    pub max_connections_per_ip: usize,
    /// How long shutdown waits for in-flight requests.
    #[serde(deserialize_with = "units::secs")]
    pub shutdown_grace_secs: u64,
    /// A connection with a response in progress that takes no response bytes
    /// for this long (a client that stopped reading, an HTTP/2 peer that
    /// sends no WINDOW_UPDATE) is closed, freeing what it holds.
    #[serde(deserialize_with = "units::millis")]
    pub client_write_timeout_ms: u64,
    /// Longest time to receive a whole origin body that is being buffered
    /// for the cache (requests coalesced behind it wait on it); past it: 504.
    #[serde(deserialize_with = "units::millis")]
    pub origin_body_deadline_ms: u64,
    /// Bytes of origin bodies buffered for the cache at once, over every
    /// request; beyond it, responses stream through uncached.
    #[serde(deserialize_with = "units::bytes")]
    pub max_buffered_bytes: u64,
    /// Concurrent HTTP/2 streams per client connection.
    pub h2_max_streams: u32,
}

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

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg = Self::parse(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text without validating it.
    fn parse(text: &str) -> Result<Config, ConfigError> {
        // toml's message names the key and shows the line with a caret
        // under the problem: kept whole, line breaks and all.
        toml::from_str(text).map_err(|e| ConfigError(e.to_string().trim_end().to_string()))
    }

    /// Reads and parses `path` (not validated); errors name the file.
    pub fn parse_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Checks what serde cannot: URLs, ranges, consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() {
            return Err(ConfigError(
                "route: no [[route]] given, so the proxy would answer nothing".into(),
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.origin != "demo" {
                parse_origin(&r.origin)
                    .map_err(|e| ConfigError(format!("route[{i}].origin: {e}")))?;
            }
            if let Some(p) = &r.path_prefix {
                if !p.starts_with('/') {
                    return Err(ConfigError(format!(
                        "route[{i}].path_prefix: {p:?} must start with '/'"
                    )));
                }
            }
            if let Some(h) = &r.host {
                if h.is_empty() || h.contains(['/', ' ']) {
                    return Err(ConfigError(format!(
                        "route[{i}].host: {h:?} is not a host name"
                    )));
                }
            }
        }
        let c = &self.codec;
        if c.quality == 0 {
            return Err(ConfigError("codec.quality: levels start at 1".into()));
        }
        if c.pool_threads == 0 {
            return Err(ConfigError("codec.pool_threads: must be at least 1".into()));
        }
        if !(0.0..=100.0).contains(&c.psnr_floor) {
            return Err(ConfigError(format!(
                "codec.psnr_floor: {} dB is outside 0..100",
                c.psnr_floor
            )));
        }
        if c.max_pixels == 0 || c.max_pixels > crate::latent::wire::MAX_PIXELS {
            return Err(ConfigError(format!(
                "codec.max_pixels: must be 1..={}",
                crate::latent::wire::MAX_PIXELS
            )));
        }
        if let Some(w) = &c.weights {
            if !w.is_file() {
                return Err(ConfigError(format!(
                    "codec.weights: {} does not exist",
                    w.display()
                )));
            }
        }
        for (i, p) in self.samples.iter().enumerate() {
            let key = format!("samples[{i}]");
            let ok_name = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok_name {
                return Err(ConfigError(format!(
                    "{key}.name: {:?} must be 1-64 letters, digits, '-' or '_'",
                    p.name
                )));
            }
            if self.samples[..i].iter().any(|q| q.name == p.name) {
                return Err(ConfigError(format!(
                    "{key}.name: {:?} is used twice",
                    p.name
                )));
            }
            if !(16..=2048).contains(&p.width) || !(16..=2048).contains(&p.height) {
                return Err(ConfigError(format!(
                    "{key}: {}x{} is outside 16..=2048 pixels a side",
                    p.width, p.height
                )));
            }
            if !(1..=4096).contains(&p.count) {
                return Err(ConfigError(format!("{key}.count: must be 1..=4096")));
            }
            if !(p.temperature.is_finite() && (0.0..=4.0).contains(&p.temperature)) {
                return Err(ConfigError(format!(
                    "{key}.temperature: must be within 0..=4"
                )));
            }
            if !(1..=100).contains(&p.jpeg_quality) {
                return Err(ConfigError(format!("{key}.jpeg_quality: must be 1..=100")));
            }
        }
        if !(0.0..=1.0).contains(&self.cache.heuristic_fraction) {
            return Err(ConfigError(
                "cache.heuristic_fraction: must be within 0..1".into(),
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError(
                "limits.max_connections: must be at least 1".into(),
            ));
        }
        if self.limits.max_connections_per_ip == 0 {
            return Err(ConfigError(
                "limits.max_connections_per_ip: must be at least 1".into(),
            ));
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(ConfigError(
                "limits.max_header_bytes: must be at least 8192".into(),
            ));
        }
        if self.limits.h2_max_streams == 0 {
            return Err(ConfigError(
                "limits.h2_max_streams: must be at least 1".into(),
            ));
        }
        for (key, v) in [
            (
                "client_write_timeout_ms",
                self.limits.client_write_timeout_ms,
            ),
            (
                "origin_body_deadline_ms",
                self.limits.origin_body_deadline_ms,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("limits.{key}: must be at least 1")));
            }
        }
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            IpBlock::parse(p).map_err(|e| ConfigError(format!("trusted_proxies[{i}]: {e}")))?;
        }
        if let Some(p) = &self.origin_ca_file {
            if !p.is_file() {
                return Err(ConfigError(format!(
                    "origin_ca_file: {} does not exist",
                    p.display()
                )));
            }
        }
        if self.admin.enabled && self.admin.listen == self.listen {
            return Err(ConfigError(format!(
                "admin.listen: {} is also `listen`; the admin listener needs its own address",
                self.listen
            )));
        }
        let g = &self.generative;
        if !(g.model_seconds_per_minute.is_finite() && g.model_seconds_per_minute >= 0.0) {
            return Err(ConfigError(
                "generative.model_seconds_per_minute: must be a number of seconds >= 0".into(),
            ));
        }
        Ok(())
    }

    /// `--origin URL`: one catch-all route to that origin.
    pub fn with_single_origin(mut self, origin: &str) -> Result<Config, ConfigError> {
        self.routes = vec![Route {
            host: None,
            path_prefix: None,
            origin: origin.to_string(),
            preserve_host: false,
            store_set_cookie: false,
        }];
        self.validate()
            .map_err(|e| ConfigError(e.0.replace("route[0].origin", "--origin")))?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[[route]]\norigin = \"http://127.0.0.1:9000\"\n";

    #[test]
    fn shipped_config_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vaeproxy.toml");
        let cfg = Config::load(&p).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml(&format!("{MIN}[cache]\ncapacity = 5\n")).unwrap_err();
        assert!(e.0.contains("capacity"), "{e}");
    }

    #[test]
    fn bad_origin_is_named() {
        let e = Config::from_toml("[[route]]\norigin = \"ftp://x\"\n").unwrap_err();
        assert!(
            e.0.contains("route[0].origin") && e.0.contains("ftp"),
            "{e}"
        );
        let e = Config::from_toml("[[route]]\norigin = \"not a url\"\n").unwrap_err();
        assert!(e.0.contains("route[0].origin"), "{e}");
    }

    #[test]
    fn missing_weights_are_named() {
        let e = Config::from_toml(&format!("{MIN}[codec]\nweights = \"/nope.safetensors\"\n"))
            .unwrap_err();
        assert!(e.0.contains("codec.weights"), "{e}");
    }

    #[test]
    fn sample_pools() {
        let cfg = Config::from_toml(MIN).unwrap();
        assert_eq!(cfg.samples.len(), 1, "the default pool when none is given");
        let cfg = Config::from_toml(&format!("samples = []\n{MIN}")).unwrap();
        assert!(cfg.samples.is_empty());
        let bad = format!("{MIN}[[samples]]\nname = \"a/b\"\nwidth = 64\nheight = 64\ncount = 2\n");
        let e = Config::from_toml(&bad).unwrap_err();
        assert!(e.0.contains("samples[0].name"), "{e}");
        let bad =
            format!("{MIN}[[samples]]\nname = \"a\"\nwidth = 99999\nheight = 64\ncount = 2\n");
        assert!(Config::from_toml(&bad)
            .unwrap_err()
            .0
            .contains("samples[0]"));
    }
}
