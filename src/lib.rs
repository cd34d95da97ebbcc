//! vaeproxy: a caching reverse HTTP proxy that keeps images as VAE latent codes.
//!
//! # Layout
//!
//! - [`model`]: the convolutional VAE in candle (encoder, decoder, blocks) and
//!   its trainer (`model::train`, server builds only); `model::hyperprior`,
//!   codec v2's network (in training, not shipped).
//! - [`codec`]: image <-> latent file: padding, tiling, quantization, the
//!   entropy model (`codec::entropy`), calibration and quality metrics;
//!   codec v2's coder (`codec::gaussian` tables, `codec::hyperprior`).
//! - [`latent::wire`]: the `.vlat` wire format; depends on nothing else here.
//! - [`client`]: the decode library for apps (`Decoder`).
//! - [`error`]: the codec's error type, the proxy's `HttpError` and
//!   `StartError` (building the proxy from a config).
//!
//! The proxy (feature `server`):
//! - [`config`]: `config/vaeproxy.toml`, found on a search path, with units
//!   and env overrides; validated at startup and at every reload.
//! - [`daemon`]: the proxy as a process: both listeners, SIGHUP reloads,
//!   one shutdown for both.
//! - [`server`]: accept loop, connection limits, graceful shutdown ([`shutdown`]);
//!   [`tls`]: TLS toward clients (certificate files, ALPN, swapped on reload).
//! - [`proxy`]: the request phases (route, cache, upstream, transform,
//!   negotiate, log); `proxy::upstream` (origins, client, bodies),
//!   `proxy::negotiate` (latent or original), `proxy::transform` (image
//!   -> latent with guards), `proxy::samples` (the generative routes,
//!   budgeted by `proxy::generation`), `proxy::ops` (the admin listener:
//!   health, metrics, purge), `proxy::log` (the access line).
//! - [`clock`]: the wall clock the cache reads (steppable in tests).
//! - [`cache`]: the moka-backed HTTP cache; `cache::freshness` (RFC 9111
//!   rules), `cache::key` (primary key and Vary), `cache::purge`.
//! - `codec::pool`: the bounded model pool, the only path from async code to candle.
//! - [`sampler`]: the VAE as a generator: prior sample pools (pre-generated),
//!   posterior variations and interpolations (made on request), their caches.
//! - [`metrics`]: Prometheus counters; [`demo`]: the built-in demo origin.
//! - [`tools`]: the binary's offline commands (contact sheet, eval, train,
//!   calibrate) as library functions; `main.rs` only parses arguments.
//!
//! CPU-heavy work (encode, decode, sampling) is synchronous: async code must
//! reach it through a bounded blocking pool, never call it on a runtime thread.

#![warn(missing_docs, missing_debug_implementations)]

pub mod client;
pub mod codec;
pub mod error;
pub mod latent;
pub mod model;

#[cfg(feature = "server")]
pub mod cache;
#[cfg(feature = "server")]
pub mod clock;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod daemon;
#[cfg(feature = "server")]
pub mod demo;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod proxy;
#[cfg(feature = "server")]
pub mod sampler;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod shutdown;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub mod tools;

pub use codec::Codec;
pub use error::{Error, Result};
