//! The proxy's configuration: `config/vaeproxy.toml`, parsed with serde
//! (`deny_unknown_fields`, so a typo is an error and not a silent default),
//! then validated once. Every problem comes back as one message naming the
//! key and what is wrong with it.

mod defaults;
mod locate;
mod net;
mod units;
mod validate;

pub use locate::{Source, SEARCH_PATH};
pub use net::{parse_origin, AddrError, IpBlock, Origin};
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
    /// TLS toward clients on `listen` (absent: plain HTTP). The admin
    /// listener stays plain: it is meant for loopback.
    pub tls: Option<crate::tls::TlsConfig>,
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
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
    /// PNG (lossless; largest).
    Png,
    /// JPEG at `jpeg_quality`.
    Jpeg,
    /// Lossless WebP.
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
    /// Height of each image, pixels.
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
    /// A shared tier under this cache, so a fleet encodes each image once:
    /// `"redis://host:6379/"`, or a list of Redis Cluster seed nodes.
    /// Absent: none. `--shared-cache URL` overrides it.
    pub shared: Option<SharedNodes>,
    /// Put before every shared-tier key (fleets sharing one Redis).
    pub shared_prefix: String,
    /// Longest wait for one shared-tier call; then it counts as a miss.
    #[serde(deserialize_with = "units::millis")]
    pub shared_timeout_ms: u64,
    /// Life of a fleet-wide fetch lock whose holder died.
    #[serde(deserialize_with = "units::millis")]
    pub shared_lock_ms: u64,
    /// Longest a proxy waits for another proxy's fetch of the same URL.
    #[serde(deserialize_with = "units::millis")]
    pub shared_lock_wait_ms: u64,
}

/// `cache.shared`: one Redis URL, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SharedNodes {
    /// One Redis (`redis://` or `rediss://`).
    One(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

impl CacheConfig {
    /// The shared tier's settings, if one is configured.
    pub fn shared_config(&self) -> Option<crate::cache::shared::SharedConfig> {
        let (nodes, cluster) = match self.shared.as_ref()? {
            SharedNodes::One(u) => (vec![u.clone()], false),
            SharedNodes::Cluster(v) => (v.clone(), true),
        };
        Some(crate::cache::shared::SharedConfig {
            nodes,
            cluster,
            prefix: self.shared_prefix.clone(),
            timeout: std::time::Duration::from_millis(self.shared_timeout_ms),
            lock_ttl: std::time::Duration::from_millis(self.shared_lock_ms),
            lock_wait: std::time::Duration::from_millis(self.shared_lock_wait_ms),
        })
    }
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
