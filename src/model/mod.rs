//! The convolutional VAE: an encoder from RGB to a latent grid at 1/16 of the
//! resolution (a mean and a log-variance per element) and a decoder back.
//!
//! All heavy lifting happens at 1/4, 1/8 and 1/16 resolution: the image is
//! folded space-to-depth by 4 on the way in and unfolded depth-to-space on the
//! way out, because candle's CPU convolution costs ~100 ms per GFLOP per
//! thread and full-resolution convs would blow the 300 ms budget.
//!
//! Weight names equal the `vb.pp` paths (`enc.stem.weight`, `dec.res1.conv2.bias`,
//! ...), which is also what `scripts/train_torch.py` exports.

mod blocks;
pub mod hyperprior;
#[cfg(feature = "server")]
pub mod train;

pub use blocks::{Down, Gdn, ResBlock, Up};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use std::collections::HashMap;

/// The latent grid is this many times smaller than the image on each side.
pub const DOWNSCALE: usize = 16;

/// Channel widths. Stored in the safetensors metadata under `vaeproxy.config`
/// so a weights file always carries the shape of the network it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Channels at 1/4 resolution.
    pub c1: usize,
    /// Channels at 1/8 resolution.
    pub c2: usize,
    /// Channels at 1/16 resolution.
    pub c3: usize,
    /// Latent channels (Z).
    pub z: usize,
}

/// The shipped weights' architecture (`vaeproxy info` prints it), so a
/// fresh `train` run makes a drop-in replacement.
impl Default for Config {
    fn default() -> Self {
        Self {
            c1: 32,
            c2: 64,
            c3: 128,
            z: 64,
        }
    }
}

impl Config {
    /// The safetensors metadata key of [`Config`].
    pub const METADATA_KEY: &'static str = "vaeproxy.config";

    /// `c1=..,c2=..,c3=..,z=..`, as stored in the weights.
    pub fn to_metadata(&self) -> String {
        format!("c1={},c2={},c3={},z={}", self.c1, self.c2, self.c3, self.z)
    }

    /// Parses `c1=..,c2=..,c3=..,z=..`; every key is required and bounded so a
    /// hostile weights file cannot ask for an absurd network.
    pub fn from_metadata(s: &str) -> std::result::Result<Self, MetadataError> {
        let kv = parse_metadata(s)?;
        let get = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| MetadataError(format!("config lacks {k}")))
        };
        Ok(Self {
            c1: get("c1")?,
            c2: get("c2")?,
            c3: get("c3")?,
            z: get("z")?,
        })
    }
}

/// A weights file's architecture string (`vaeproxy.config`) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("weights metadata: {0}")]
pub struct MetadataError(pub String);

/// Parses a `k=v,...` architecture string from a weights file's metadata;
/// every value is bounded to 1..=1024, so a hostile file cannot ask for an
/// absurd network.
pub(crate) fn parse_metadata(
    s: &str,
) -> std::result::Result<HashMap<String, usize>, MetadataError> {
    let mut kv = HashMap::new();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| MetadataError(format!("bad config entry {part:?}")))?;
        let v: usize = v
            .trim()
            .parse()
            .map_err(|_| MetadataError(format!("bad number in config entry {part:?}")))?;
        if v == 0 || v > 1024 {
            return Err(MetadataError(format!(
                "config entry {part:?} out of range 1..=1024"
            )));
        }
        kv.insert(k.trim().to_string(), v);
    }
    Ok(kv)
}

/// Image (centred, `[N, 3, H, W]`, H and W multiples of 16) to posterior
/// parameters.
#[derive(Debug, Clone)]
pub struct Encoder {
    stem: Conv2d,
    gdn0: Gdn,
    down1: Down,
    res1: ResBlock,
    down2: Down,
    res2: ResBlock,
    head: Conv2d,
    z: usize,
}

impl Encoder {
    /// Weights under `vb` (`enc.*`).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            stem: blocks::conv(vb.pp("stem"), 48, cfg.c1, 3)?,
            gdn0: Gdn::new(vb.pp("gdn0"), cfg.c1, false)?,
            down1: Down::new(vb.pp("down1"), cfg.c1, cfg.c2)?,
            res1: ResBlock::new(vb.pp("res1"), cfg.c2)?,
            down2: Down::new(vb.pp("down2"), cfg.c2, cfg.c3)?,
            res2: ResBlock::new(vb.pp("res2"), cfg.c3)?,
            head: blocks::conv(vb.pp("head"), cfg.c3, 2 * cfg.z, 3)?,
            z: cfg.z,
        })
    }

    /// Returns `(mu, logvar)`, each `[N, Z, H/16, W/16]`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = candle_nn::ops::pixel_unshuffle(x, 4)?;
        let x = self.gdn0.forward(&self.stem.forward(&x)?)?;
        let x = self.res1.forward(&self.down1.forward(&x)?)?;
        let x = self.res2.forward(&self.down2.forward(&x)?)?;
        let h = self.head.forward(&x)?;
        let mu = h.narrow(1, 0, self.z)?;
        let logvar = h.narrow(1, self.z, self.z)?;
        Ok((mu, logvar))
    }
}

/// Latents `[N, Z, h, w]` to a centred image `[N, 3, 16h, 16w]`.
#[derive(Debug, Clone)]
pub struct Decoder {
    head: Conv2d,
    res2: ResBlock,
    up2: Up,
    res1: ResBlock,
    up1: Up,
    out: Conv2d,
}

impl Decoder {
    /// Weights under `vb` (`dec.*`).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            head: blocks::conv(vb.pp("head"), cfg.z, cfg.c3, 3)?,
            res2: ResBlock::new(vb.pp("res2"), cfg.c3)?,
            up2: Up::new(vb.pp("up2"), cfg.c3, cfg.c2)?,
            res1: ResBlock::new(vb.pp("res1"), cfg.c2)?,
            up1: Up::new(vb.pp("up1"), cfg.c2, cfg.c1)?,
            out: blocks::conv(vb.pp("out"), cfg.c1, 48, 3)?,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let x = self.res2.forward(&self.head.forward(z)?)?;
        let x = self.res1.forward(&self.up2.forward(&x)?)?;
        let x = self.out.forward(&self.up1.forward(&x)?)?;
        candle_nn::ops::pixel_shuffle(&x, 4)
    }
}

/// The whole VAE. Images enter and leave as `[N, 3, H, W]` f32 in `[0, 1]`.
#[derive(Debug, Clone)]
pub struct Vae {
    /// Image to posterior.
    pub encoder: Encoder,
    /// Latent to image.
    pub decoder: Decoder,
    /// The widths.
    pub config: Config,
}

impl Vae {
    /// The network from weights under `vb`.
    pub fn new(vb: VarBuilder, config: Config) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(vb.pp("enc"), &config)?,
            decoder: Decoder::new(vb.pp("dec"), &config)?,
            config,
        })
    }

    /// Loads from the bytes of a safetensors file (the config comes from its metadata).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        Self::from_tensors(tensors, config_from_safetensors(bytes)?)
    }

    /// Builds the network from already loaded tensors (extra tensors are ignored).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, config: Config) -> Result<Self> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Self::new(vb, config)
    }

    /// Posterior mean and log-variance of images in `[0, 1]`.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        // the costliest work in the proxy: a TRACE span shows it per job
        let _span = tracing::trace_span!("vae.encode", shape = ?x.dims()).entered();
        self.encoder.forward(&(x - 0.5)?)
    }

    /// Images in (roughly) `[0, 1]`; callers clamp.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("vae.decode", shape = ?z.dims()).entered();
        self.decoder.forward(z)? + 0.5
    }
}

/// Reads [`Config`] from a safetensors header.
pub fn config_from_safetensors(bytes: &[u8]) -> Result<Config> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| candle_core::Error::Msg(format!("not a safetensors file: {e}")))?;
    let s = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(Config::METADATA_KEY))
        .ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "weights lack the {} metadata",
                Config::METADATA_KEY
            ))
        })?;
    Config::from_metadata(s).map_err(candle_core::Error::wrap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn shapes_round_trip() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let vae = Vae::new(vb, Config::default()).unwrap();
        let x = Tensor::rand(0f32, 1., (2, 3, 64, 48), &Device::Cpu).unwrap();
        let (mu, lv) = vae.encode(&x).unwrap();
        assert_eq!(mu.dims(), &[2, 64, 4, 3]);
        assert_eq!(lv.dims(), &[2, 64, 4, 3]);
        let y = vae.decode(&mu).unwrap();
        assert_eq!(y.dims(), &[2, 3, 64, 48]);
    }

    #[test]
    fn the_default_is_the_shipped_architecture() {
        let shipped = crate::codec::Codec::shipped().unwrap();
        assert_eq!(shipped.vae().config, Config::default());
    }

    #[test]
    fn config_metadata_round_trips_and_rejects_junk() {
        let c = Config::default();
        assert_eq!(Config::from_metadata(&c.to_metadata()).unwrap(), c);
        assert!(Config::from_metadata("c1=32,c2=64").is_err());
        assert!(Config::from_metadata("c1=32,c2=64,c3=999999,z=4").is_err());
        assert!(Config::from_metadata("garbage").is_err());
    }
}
