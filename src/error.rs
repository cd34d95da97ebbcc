//! One error type for the codec boundary. Every variant names what went wrong
//! in words a CLI user or an HTTP client can act on.

use crate::latent::wire::{ModelId, WireError};

/// Errors of loading weights, encoding and decoding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a valid latent file.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The latent was made with other weights; decoding it would give a wrong picture.
    #[error("latent was encoded by model {got}, but this decoder has model {expected}")]
    /// Decoding with other weights would give a wrong picture.
    ModelMismatch {
        /// This decoder's model.
        expected: ModelId,
        /// The latent's model.
        got: ModelId,
    },
    /// The latent's quality level or shape does not fit the loaded model.
    #[error("latent does not fit this model: {0}")]
    Incompatible(String),
    /// The entropy-coded payload is damaged.
    #[error("corrupt latent payload: {0}")]
    Payload(String),
    /// The weights file is unusable.
    #[error("bad weights: {0}")]
    Weights(String),
    /// The input image could not be read.
    #[error("bad image: {0}")]
    Image(String),
    /// The image declares more pixels or memory than the limit allows (a
    /// decompression bomb, or just too big): refused before decoding.
    #[error("image too large: {0}")]
    ImageTooLarge(String),
    /// A tensor operation failed (a bug or an out-of-memory, not bad input).
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    /// A file could not be read or written.
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Result of the codec.
pub type Result<T> = std::result::Result<T, Error>;

/// Why the proxy could not be built from a (validated) configuration.
#[cfg(feature = "server")]
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A route's origin does not parse, or names the demo origin when none runs.
    #[error("route[{index}]: {reason}")]
    /// Route `index` is unusable for `reason`.
    Route {
        /// 0-based position in the config's `[[route]]` list.
        index: usize,
        /// What is wrong with it.
        reason: crate::proxy::upstream::RouteError,
    },
    /// An entry of `trusted_proxies` is not an IP or CIDR block.
    /// The configuration is valid alone but not for this running proxy.
    #[error("{0}")]
    Config(String),
    #[error("trusted_proxies: {0}")]
    /// An entry of `trusted_proxies` is not an IP or CIDR block.
    TrustedProxy(#[from] crate::config::AddrError),
    /// A metric could not be registered (a duplicate name: a bug).
    #[error("registering the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The origin client (its TLS roots) could not be built.
    #[error(transparent)]
    Client(#[from] crate::proxy::upstream::ClientError),
    /// The model pool's threads could not be started.
    #[error("starting the model pool: {0}")]
    Pool(#[source] std::io::Error),
    /// The built-in demo origin could not bind its loopback port.
    #[error("starting the demo origin: {0}")]
    Demo(#[source] std::io::Error),
}

/// Why the proxy answered a request itself instead of relaying the origin.
/// Each variant knows its HTTP status; the text is the reason sent to the client.
#[cfg(feature = "server")]
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// The request is malformed or breaks a limit (400).
    #[error("{0}")]
    BadRequest(String),
    /// The client's request body stalled (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// No route serves this host/path: the proxy is not an open proxy (404).
    #[error("{0}")]
    NoRoute(String),
    /// No such internal resource (404).
    #[error("{0}")]
    NotFound(String),
    /// The method does not apply to this resource (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// This client asked for too much too fast (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// Not ready yet; try again shortly (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request body is over the configured limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The origin could not be reached or broke the protocol (502).
    #[error("{0}")]
    BadGateway(String),
    /// The origin took too long (504), or only-if-cached missed.
    #[error("{0}")]
    GatewayTimeout(String),
    /// The proxy itself failed (500), e.g. the model on a code it made.
    #[error("{0}")]
    Internal(String),
}

#[cfg(feature = "server")]
impl HttpError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode as S;
        match self {
            HttpError::BadRequest(_) => S::BAD_REQUEST,
            HttpError::RequestTimeout(_) => S::REQUEST_TIMEOUT,
            HttpError::NoRoute(_) | HttpError::NotFound(_) => S::NOT_FOUND,
            HttpError::MethodNotAllowed(_) => S::METHOD_NOT_ALLOWED,
            HttpError::TooManyRequests(_) => S::TOO_MANY_REQUESTS,
            HttpError::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            HttpError::TooLarge(_) => S::PAYLOAD_TOO_LARGE,
            HttpError::BadGateway(_) => S::BAD_GATEWAY,
            HttpError::GatewayTimeout(_) => S::GATEWAY_TIMEOUT,
            HttpError::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}
