//! The latent code on the wire: see [`wire`] and `docs/latent-format.md`.
pub mod wire;
