//! Codec v2's network: a rate-distortion autoencoder with a mean-scale
//! hyperprior (Ballé et al. 2018, Minnen et al. 2018) and per-level gain
//! vectors (Cui et al. 2021), as trained by `scripts/train_codec.py`.
//!
//! Four transforms, each one struct:
//! - [`Analysis`]: image -> `y` (C channels at 1/16);
//! - [`HyperAnalysis`]: `y` -> `z` (1/64), the side information;
//! - [`HyperSynthesis`]: rounded `z` -> the mean and log-scale of the
//!   Gaussian that codes each element of `y` (in the unscaled latent space);
//! - [`Synthesis`]: rounded `y` -> image, ending at full resolution with a
//!   residual 3x3 pair ([`Refine`]) that sees across the 2/4/8/16-px pattern
//!   the depth-to-space steps leave (the v1 decoder's block grid).
//!
//! A quality level `l` scales `y` by `exp(gain_enc[l])` before rounding and the
//! rounded latent by `exp(gain_dec[l])` before the synthesis, so one network
//! serves every rate. Weight names equal the `vb.pp` paths, which equal the
//! PyTorch state-dict keys.
//!
//! This is the forward pass only; entropy coding of `y` and `z` (integer
//! tables chosen by a scale index the decoder must reproduce bit for bit) is
//! the codec's business, not the network's.

use super::blocks::{conv, Down, Gdn, ResBlock, Up};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use std::collections::HashMap;

/// The latent grid `y` is this many times smaller than the image per side.
pub const Y_DOWNSCALE: usize = 16;
/// The side-information grid `z` is this many times smaller than the image.
pub const Z_DOWNSCALE: usize = 64;

/// Widths, stored in the safetensors metadata (`vaeproxy.config`):
/// `c1=32,c2=64,c3=128,c=128,n=96,zc=64,levels=8` for the trained model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Channels at 1/4, 1/8 and 1/16 resolution (1/2 uses `c1 / 2`).
    pub c1: usize,
    pub c2: usize,
    pub c3: usize,
    /// Latent channels of `y`.
    pub c: usize,
    /// Hidden channels of the hyper transforms.
    pub n: usize,
    /// Channels of `z`.
    pub zc: usize,
    /// Quality levels (rows of the gain tables).
    pub levels: usize,
}

impl Config {
    /// Parses `k=v,...`; every key is required and bounded, so a hostile
    /// weights file cannot ask for an absurd network.
    pub fn from_metadata(s: &str) -> std::result::Result<Self, String> {
        let mut kv = HashMap::new();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("bad config entry {part:?}"))?;
            let v: usize = v
                .trim()
                .parse()
                .map_err(|_| format!("bad number in config entry {part:?}"))?;
            if v == 0 || v > 1024 {
                return Err(format!("config entry {part:?} out of range 1..=1024"));
            }
            kv.insert(k.trim().to_string(), v);
        }
        let get = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| format!("config lacks {k}"))
        };
        let cfg = Self {
            c1: get("c1")?,
            c2: get("c2")?,
            c3: get("c3")?,
            c: get("c")?,
            n: get("n")?,
            zc: get("zc")?,
            levels: get("levels")?,
        };
        if cfg.c1 < 2 || !cfg.c1.is_multiple_of(2) {
            return Err("config entry c1 must be even".into());
        }
        Ok(cfg)
    }
}

/// Image in `[0, 1]`, `[N, 3, H, W]` with H and W multiples of 16 -> `y`.
#[derive(Debug, Clone)]
pub struct Analysis {
    stem: Conv2d,
    gdn0: Gdn,
    res0: ResBlock,
    down1: Down,
    res1: ResBlock,
    down2: Down,
    res2: ResBlock,
    head: Conv2d,
}

impl Analysis {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            stem: conv(vb.pp("stem"), 48, cfg.c1, 3)?,
            gdn0: Gdn::new(vb.pp("gdn0"), cfg.c1, false)?,
            res0: ResBlock::new(vb.pp("res0"), cfg.c1)?,
            down1: Down::new(vb.pp("down1"), cfg.c1, cfg.c2)?,
            res1: ResBlock::new(vb.pp("res1"), cfg.c2)?,
            down2: Down::new(vb.pp("down2"), cfg.c2, cfg.c3)?,
            res2: ResBlock::new(vb.pp("res2"), cfg.c3)?,
            head: conv(vb.pp("head"), cfg.c3, cfg.c, 3)?,
        })
    }
}

impl Module for Analysis {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = candle_nn::ops::pixel_unshuffle(&(x - 0.5)?, 4)?;
        let x = self
            .res0
            .forward(&self.gdn0.forward(&self.stem.forward(&x)?)?)?;
        let x = self.res1.forward(&self.down1.forward(&x)?)?;
        let x = self.res2.forward(&self.down2.forward(&x)?)?;
        self.head.forward(&x)
    }
}

/// The decoder's last step at full resolution: `x + conv2(relu(conv1(x)))`
/// on the RGB output, 3 -> 8 -> 3 channels (~900 FLOP per pixel).
#[derive(Debug, Clone)]
pub struct Refine {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl Refine {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(vb.pp("conv1"), 3, 8, 3)?,
            conv2: conv(vb.pp("conv2"), 8, 3, 3)?,
        })
    }
}

impl Module for Refine {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x + self.conv2.forward(&self.conv1.forward(x)?.relu()?)?
    }
}

/// Rounded, gain-scaled `y` -> image (roughly `[0, 1]`; callers clamp).
#[derive(Debug, Clone)]
pub struct Synthesis {
    head: Conv2d,
    res2: ResBlock,
    up2: Up,
    res1: ResBlock,
    up1: Up,
    res0: ResBlock,
    up0: Up,
    out: Conv2d,
    refine: Refine,
}

impl Synthesis {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let half = cfg.c1 / 2;
        Ok(Self {
            head: conv(vb.pp("head"), cfg.c, cfg.c3, 3)?,
            res2: ResBlock::new(vb.pp("res2"), cfg.c3)?,
            up2: Up::new(vb.pp("up2"), cfg.c3, cfg.c2)?,
            res1: ResBlock::new(vb.pp("res1"), cfg.c2)?,
            up1: Up::new(vb.pp("up1"), cfg.c2, cfg.c1)?,
            res0: ResBlock::new(vb.pp("res0"), cfg.c1)?,
            up0: Up::new(vb.pp("up0"), cfg.c1, half)?,
            out: conv(vb.pp("out"), half, 12, 3)?,
            refine: Refine::new(vb.pp("refine"))?,
        })
    }
}

impl Module for Synthesis {
    fn forward(&self, y: &Tensor) -> Result<Tensor> {
        let x = self.res2.forward(&self.head.forward(y)?)?;
        let x = self.res1.forward(&self.up2.forward(&x)?)?;
        let x = self.res0.forward(&self.up1.forward(&x)?)?;
        let x = self.out.forward(&self.up0.forward(&x)?)?;
        let x = candle_nn::ops::pixel_shuffle(&x, 2)?;
        self.refine.forward(&x)? + 0.5
    }
}

/// `y` (1/16) -> `z` (1/64).
#[derive(Debug, Clone)]
pub struct HyperAnalysis {
    conv0: Conv2d,
    conv1: Conv2d,
    conv2: Conv2d,
}

impl HyperAnalysis {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            conv0: conv(vb.pp("conv0"), cfg.c, cfg.n, 3)?,
            conv1: conv(vb.pp("conv1"), 4 * cfg.n, cfg.n, 3)?,
            conv2: conv(vb.pp("conv2"), 4 * cfg.n, cfg.zc, 1)?,
        })
    }
}

impl Module for HyperAnalysis {
    fn forward(&self, y: &Tensor) -> Result<Tensor> {
        let h = self.conv0.forward(y)?.relu()?;
        let h = candle_nn::ops::pixel_unshuffle(&h, 2)?;
        let h = self.conv1.forward(&h)?.relu()?;
        self.conv2.forward(&candle_nn::ops::pixel_unshuffle(&h, 2)?)
    }
}

/// Rounded `z` -> `(mean, log_scale)` of `y`, each `[N, C, H/16, W/16]`.
#[derive(Debug, Clone)]
pub struct HyperSynthesis {
    conv0: Conv2d,
    up1: Conv2d,
    conv1: Conv2d,
    up2: Conv2d,
    conv2: Conv2d,
    c: usize,
}

impl HyperSynthesis {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            conv0: conv(vb.pp("conv0"), cfg.zc, cfg.n, 3)?,
            up1: conv(vb.pp("up1"), cfg.n, 4 * cfg.n, 1)?,
            conv1: conv(vb.pp("conv1"), cfg.n, cfg.n, 3)?,
            up2: conv(vb.pp("up2"), cfg.n, 4 * cfg.n, 1)?,
            conv2: conv(vb.pp("conv2"), cfg.n, 2 * cfg.c, 3)?,
            c: cfg.c,
        })
    }

    pub fn forward(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.conv0.forward(z)?.relu()?;
        let h = candle_nn::ops::pixel_shuffle(&self.up1.forward(&h)?, 2)?.relu()?;
        let h = self.conv1.forward(&h)?.relu()?;
        let h = candle_nn::ops::pixel_shuffle(&self.up2.forward(&h)?, 2)?.relu()?;
        let p = self.conv2.forward(&h)?;
        Ok((p.narrow(1, 0, self.c)?, p.narrow(1, self.c, self.c)?))
    }
}

/// The whole network.
#[derive(Debug, Clone)]
pub struct Hyperprior {
    pub analysis: Analysis,
    pub synthesis: Synthesis,
    pub hyper_analysis: HyperAnalysis,
    pub hyper_synthesis: HyperSynthesis,
    /// Log-gains `[levels, C]`: `y * exp(gain_enc[l])` is what gets rounded.
    gain_enc: Tensor,
    /// Log-gains `[levels, C]` applied to the rounded latent before synthesis.
    gain_dec: Tensor,
    pub config: Config,
}

impl Hyperprior {
    pub const METADATA_KEY: &'static str = "vaeproxy.config";

    pub fn new(vb: VarBuilder, config: Config) -> Result<Self> {
        let gains = (config.levels, config.c);
        Ok(Self {
            analysis: Analysis::new(vb.pp("enc"), &config)?,
            synthesis: Synthesis::new(vb.pp("dec"), &config)?,
            hyper_analysis: HyperAnalysis::new(vb.pp("hyper_enc"), &config)?,
            hyper_synthesis: HyperSynthesis::new(vb.pp("hyper_dec"), &config)?,
            gain_enc: vb.get(gains, "gain_enc")?,
            gain_dec: vb.get(gains, "gain_dec")?,
            config,
        })
    }

    /// Loads from the bytes of a safetensors file; the config comes from its
    /// metadata and every tensor's shape is checked against it.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| candle_core::Error::Msg(format!("not a safetensors file: {e}")))?;
        let cfg = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(Self::METADATA_KEY))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("weights lack the {} metadata", Self::METADATA_KEY))
            })?;
        let config = Config::from_metadata(cfg).map_err(candle_core::Error::Msg)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Self::new(vb, config)
    }

    /// The gain vectors of `level` as `[1, C, 1, 1]` multipliers (encoder
    /// side, decoder side).
    pub fn gains(&self, level: usize) -> Result<(Tensor, Tensor)> {
        if level >= self.config.levels {
            candle_core::bail!("level {level} is beyond the model's {}", self.config.levels);
        }
        let shape = (1, self.config.c, 1, 1);
        let enc = self.gain_enc.get(level)?.exp()?.reshape(shape)?;
        let dec = self.gain_dec.get(level)?.exp()?.reshape(shape)?;
        Ok((enc, dec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn shapes() {
        let cfg = Config::from_metadata("c1=8,c2=8,c3=16,c=8,n=8,zc=4,levels=3").unwrap();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = Hyperprior::new(vb, cfg).unwrap();
        let x = Tensor::rand(0f32, 1., (1, 3, 128, 64), &Device::Cpu).unwrap();
        let y = m.analysis.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 8, 8, 4]);
        let z = m.hyper_analysis.forward(&y).unwrap();
        assert_eq!(z.dims(), &[1, 4, 2, 1]);
        let (mean, log_scale) = m.hyper_synthesis.forward(&z.round().unwrap()).unwrap();
        assert_eq!(mean.dims(), y.dims());
        assert_eq!(log_scale.dims(), y.dims());
        assert_eq!(m.synthesis.forward(&y).unwrap().dims(), x.dims());
        assert!(m.gains(3).is_err());
        assert_eq!(m.gains(2).unwrap().0.dims(), &[1, 8, 1, 1]);
    }

    #[test]
    fn config_is_bounded() {
        assert!(Config::from_metadata("c1=8,c2=8,c3=16,c=8,n=8,zc=4").is_err());
        assert!(Config::from_metadata("c1=7,c2=8,c3=16,c=8,n=8,zc=4,levels=3").is_err());
        assert!(Config::from_metadata("c1=8,c2=8,c3=9999,c=8,n=8,zc=4,levels=3").is_err());
    }
}
