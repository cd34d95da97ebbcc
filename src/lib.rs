//! vaeproxy: a caching reverse HTTP proxy that keeps images as VAE latent codes.
//!
//! # Layout
//!
//! - [`model`]: the convolutional VAE in candle (encoder, decoder, blocks) and
//!   its trainer (`model::train`, server builds only).
//! - [`codec`]: image <-> latent file: padding, tiling, quantization, the
//!   entropy model (`codec::entropy`), calibration and quality metrics.
//! - [`latent::wire`]: the `.vlat` wire format; depends on nothing else here.
//! - [`client`]: the decode library for apps (`Decoder`).
//! - [`error`]: the codec's error type.
//!
//! CPU-heavy work (encode, decode, sampling) is synchronous: async code must
//! reach it through a bounded blocking pool, never call it on a runtime thread.

pub mod client;
pub mod codec;
pub mod error;
pub mod latent;
pub mod model;

pub use codec::Codec;
pub use error::{Error, Result};
