//! The decode library for apps: turn `.vlat` bytes into pixels.
//!
//! ```no_run
//! let decoder = vaeproxy::client::Decoder::shipped()?;
//! let bytes = std::fs::read("photo.vlat").unwrap();
//! let img: image::RgbImage = decoder.decode(&bytes)?;
//! # Ok::<(), vaeproxy::client::DecodeError>(())
//! ```
//!
//! Builds without the proxy: `vaeproxy = { default-features = false, features = ["client"] }`.

use crate::codec::Codec;
use crate::latent::wire::{ModelId, MIME};
use std::path::Path;

/// Why a latent could not be decoded (or the weights could not be loaded).
pub type DecodeError = crate::error::Error;

/// A latent decoder bound to one set of weights.
#[derive(Debug, Clone)]
pub struct Decoder {
    codec: Codec,
}

impl Decoder {
    /// The weights built into this library.
    pub fn shipped() -> Result<Self, DecodeError> {
        Ok(Self {
            codec: Codec::shipped()?,
        })
    }

    /// Weights from a safetensors file.
    pub fn from_path(path: &Path) -> Result<Self, DecodeError> {
        Ok(Self {
            codec: Codec::load(path)?,
        })
    }

    /// Weights from the bytes of a safetensors file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(Self {
            codec: Codec::from_bytes(bytes)?,
        })
    }

    /// The id a latent must carry to be decoded by these weights.
    pub fn model_id(&self) -> ModelId {
        self.codec.id()
    }

    /// The `Accept` header value that asks a vaeproxy for latents made by these
    /// weights, falling back to ordinary images.
    pub fn accept_header(&self) -> String {
        format!(
            "{MIME}; model={}, image/webp, image/jpeg, image/png, image/gif;q=0.8",
            self.model_id()
        )
    }

    /// Decodes a complete `.vlat` file. Any byte string gives `Ok` or an error
    /// naming the problem; declared sizes are capped (`wire::MAX_PIXELS`)
    /// before anything is allocated.
    pub fn decode(&self, bytes: &[u8]) -> Result<image::RgbImage, DecodeError> {
        self.codec.decode(bytes)
    }
}

#[cfg(feature = "client")]
pub use fetch::{fetch_image, FetchError, Fetcher};

#[cfg(feature = "client")]
mod fetch {
    //! Fetching an image through a vaeproxy: ask for a latent, accept an
    //! ordinary image, always hand back pixels.

    use super::{DecodeError, Decoder};
    use crate::latent::wire::MIME;
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::sync::Arc;

    /// Largest response body `fetch_image` reads (64 MiB).
    pub const MAX_BODY: usize = 64 << 20;

    /// Why `fetch_image` produced no picture.
    #[derive(Debug, thiserror::Error)]
    pub enum FetchError {
        /// The URL could not be parsed or used (only `http://` is supported).
        #[error("bad url: {0}")]
        Url(String),
        /// Connecting, sending or reading the body failed (or the body passed `MAX_BODY`).
        #[error("request failed: {0}")]
        Http(String),
        /// The server answered with a non-2xx status.
        #[error("server answered {0}")]
        Status(hyper::StatusCode),
        /// The body was neither a decodable latent nor a decodable image.
        #[error(transparent)]
        Decode(#[from] DecodeError),
    }

    /// A decoder with one pooled HTTP client: repeated fetches reuse
    /// connections. Cheap to clone.
    #[derive(Clone)]
    pub struct Fetcher {
        decoder: Arc<Decoder>,
        client: Client<HttpConnector, Empty<Bytes>>,
    }

    impl std::fmt::Debug for Fetcher {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Fetcher").finish_non_exhaustive()
        }
    }

    impl Fetcher {
        /// Must be created inside the tokio runtime that will use it (its
        /// pooled connections live there).
        pub fn new(decoder: Arc<Decoder>) -> Self {
            let client = Client::builder(TokioExecutor::new()).build_http();
            Self { decoder, client }
        }

        /// GETs `url` (plain `http://`) with the decoder's `Accept`. A latent
        /// response is decoded on tokio's blocking pool (decoding is CPU work
        /// and must not stall the runtime); any other image response is
        /// decoded with the `image` crate under the same pixel limit.
        pub async fn fetch(&self, url: &str) -> Result<image::RgbImage, FetchError> {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| FetchError::Url(format!("{url}: {e}")))?;
            let req = hyper::Request::get(uri)
                .header(hyper::header::ACCEPT, self.decoder.accept_header())
                .body(Empty::<Bytes>::new())
                .map_err(|e| FetchError::Url(e.to_string()))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Http(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(FetchError::Status(resp.status()));
            }
            let is_latent = resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case(MIME)
                });
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Http(format!("reading body: {e}")))?
                .to_bytes();
            let decoder = Arc::clone(&self.decoder);
            tokio::task::spawn_blocking(move || {
                if is_latent {
                    decoder.decode(&body)
                } else {
                    crate::codec::read_image(&body, crate::codec::DEFAULT_MAX_PIXELS)
                }
            })
            .await
            .map_err(|e| FetchError::Http(format!("decode task: {e}")))?
            .map_err(FetchError::Decode)
        }
    }

    /// One fetch with a client of its own; for many, keep a [`Fetcher`].
    pub async fn fetch_image(
        decoder: Arc<Decoder>,
        url: &str,
    ) -> Result<image::RgbImage, FetchError> {
        Fetcher::new(decoder).fetch(url).await
    }
}
