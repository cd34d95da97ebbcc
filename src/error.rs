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
    ModelMismatch { expected: ModelId, got: ModelId },
    /// The latent's quality level or shape does not fit the loaded model.
    #[error("latent does not fit this model: {0}")]
    Incompatible(String),
    /// The entropy-coded payload is damaged.
    #[error("corrupt latent payload: {0}")]
    Payload(String),
    /// The weights file is unusable.
    #[error("bad weights: {0}")]
    Weights(String),
    /// The input image could not be read or breaks a limit.
    #[error("bad image: {0}")]
    Image(String),
    /// A tensor operation failed (a bug or an out-of-memory, not bad input).
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
