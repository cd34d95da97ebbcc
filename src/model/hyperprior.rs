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
    /// Channels at 1/8.
    pub c2: usize,
    /// Channels at 1/16.
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
    pub fn from_metadata(s: &str) -> std::result::Result<Self, super::MetadataError> {
        let kv = super::parse_metadata(s)?;
        let get = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| super::MetadataError(format!("config lacks {k}")))
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
            return Err(super::MetadataError("config entry c1 must be even".into()));
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
    /// Weights under `vb` (`enc.*`).
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
    /// Weights under `vb` (`dec.refine.*`).
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
    /// Weights under `vb` (`dec.*`).
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
    /// Weights under `vb` (`hyper_enc.*`).
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
    /// Weights under `vb` (`hyper_dec.*`).
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

    /// `z` (rounded) to the (mean, log-scale) of `y`.
    pub fn forward(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.conv0.forward(z)?.relu()?;
        let h = candle_nn::ops::pixel_shuffle(&self.up1.forward(&h)?, 2)?.relu()?;
        let h = self.conv1.forward(&h)?.relu()?;
        let h = candle_nn::ops::pixel_shuffle(&self.up2.forward(&h)?, 2)?.relu()?;
        let p = self.conv2.forward(&h)?;
        Ok((p.narrow(1, 0, self.c)?, p.narrow(1, self.c, self.c)?))
    }
}

/// One convolution's weights for [`ExactHyperSynthesis`], laid out
/// `[ci][ky][kx][co]` so the innermost loop runs over output channels.
#[derive(Debug, Clone)]
struct ExactConv {
    w: Vec<f32>,
    b: Vec<f32>,
    cin: usize,
    cout: usize,
    k: usize,
}

impl ExactConv {
    fn new(vb: &VarBuilder, cin: usize, cout: usize, k: usize) -> Result<Self> {
        let w = vb.get((cout, cin, k, k), "weight")?;
        let b = vb.get(cout, "bias")?.to_vec1::<f32>()?;
        let w = w.permute((1, 2, 3, 0))?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { w, b, cin, cout, k })
    }

    /// `x`: `[cin][h][w]` -> `[cout][h][w]`, "same" padding. Each output is
    /// the bias plus the products over the in-bounds taps in (ci, ky, kx)
    /// order, each a separate IEEE multiply and add: the same bits on every
    /// machine. The loop over output channels carries no dependency between
    /// lanes, so the compiler may vectorise it without reordering any sum.
    fn forward(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (k, p, co) = (self.k, self.k / 2, self.cout);
        let mut out = vec![0f32; co * h * w];
        let mut acc = vec![0f32; co];
        for y in 0..h {
            for xx in 0..w {
                acc.copy_from_slice(&self.b);
                for ci in 0..self.cin {
                    let plane = &x[ci * h * w..(ci + 1) * h * w];
                    for ky in 0..k {
                        let Some(sy) = (y + ky).checked_sub(p).filter(|v| *v < h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(sx) = (xx + kx).checked_sub(p).filter(|v| *v < w) else {
                                continue;
                            };
                            let v = plane[sy * w + sx];
                            let taps = &self.w[((ci * k + ky) * k + kx) * co..][..co];
                            for (a, t) in acc.iter_mut().zip(taps) {
                                *a += *t * v;
                            }
                        }
                    }
                }
                for (c, a) in acc.iter().enumerate() {
                    out[(c * h + y) * w + xx] = *a;
                }
            }
        }
        out
    }
}

fn relu(v: &mut [f32]) {
    for x in v {
        *x = x.max(0.0);
    }
}

/// Depth-to-space by 2 of `[4c][h][w]` (channel `4c' + 2i + j` goes to
/// pixel `(2y + i, 2x + j)` of channel `c'`, as `pixel_shuffle`).
fn depth_to_space(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for ch in 0..c {
        for i in 0..2 {
            for j in 0..2 {
                let src = &x[(ch * 4 + i * 2 + j) * h * w..][..h * w];
                for y in 0..h {
                    for xx in 0..w {
                        out[(ch * 2 * h + 2 * y + i) * 2 * w + 2 * xx + j] = src[y * w + xx];
                    }
                }
            }
        }
    }
    out
}

/// [`HyperSynthesis`] computed in a fixed order in plain f32 (see
/// `ExactConv::forward`: bias plus products in (ci, ky, kx) order, no FMA): what picks each element's probability table must
/// come out bit-identical in the encoder and in every decoder (x86-64, arm64,
/// wasm32), or one flipped table index garbles the rest of the stream.
/// candle's kernels may sum in other orders on other targets; this may not.
/// `z` is 1/64 of the image, so the cost is small next to the synthesis.
#[derive(Debug, Clone)]
pub struct ExactHyperSynthesis {
    conv0: ExactConv,
    up1: ExactConv,
    conv1: ExactConv,
    up2: ExactConv,
    conv2: ExactConv,
    n: usize,
    c: usize,
}

impl ExactHyperSynthesis {
    /// The same weights as [`HyperSynthesis::new`].
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            conv0: ExactConv::new(&vb.pp("conv0"), cfg.zc, cfg.n, 3)?,
            up1: ExactConv::new(&vb.pp("up1"), cfg.n, 4 * cfg.n, 1)?,
            conv1: ExactConv::new(&vb.pp("conv1"), cfg.n, cfg.n, 3)?,
            up2: ExactConv::new(&vb.pp("up2"), cfg.n, 4 * cfg.n, 1)?,
            conv2: ExactConv::new(&vb.pp("conv2"), cfg.n, 2 * cfg.c, 3)?,
            n: cfg.n,
            c: cfg.c,
        })
    }

    /// `z`: `[zc][h][w]` (rounded) -> `(mean, log_scale)`, each `[c][4h][4w]`.
    pub fn forward(&self, z: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
        let mut t = self.conv0.forward(z, h, w);
        relu(&mut t);
        let mut t = depth_to_space(&self.up1.forward(&t, h, w), self.n, h, w);
        relu(&mut t);
        let (h, w) = (2 * h, 2 * w);
        let mut t = self.conv1.forward(&t, h, w);
        relu(&mut t);
        let mut t = depth_to_space(&self.up2.forward(&t, h, w), self.n, h, w);
        relu(&mut t);
        let (h, w) = (2 * h, 2 * w);
        let mut p = self.conv2.forward(&t, h, w);
        let log_scale = p.split_off(self.c * h * w);
        (p, log_scale)
    }
}

/// The whole network.
#[derive(Debug, Clone)]
pub struct Hyperprior {
    /// Image to `y`.
    pub analysis: Analysis,
    /// `y` to image.
    pub synthesis: Synthesis,
    /// `y` to `z`.
    pub hyper_analysis: HyperAnalysis,
    /// `z` to the entropy parameters of `y`.
    pub hyper_synthesis: HyperSynthesis,
    /// The same transform in a fixed order, for the coder's table indices.
    pub exact_hyper_synthesis: ExactHyperSynthesis,
    /// Log-gains `[levels, C]`: `y * exp(gain_enc[l])` is what gets rounded.
    gain_enc: Tensor,
    /// Log-gains `[levels, C]` applied to the rounded latent before synthesis.
    gain_dec: Tensor,
    /// The widths the weights were made with.
    pub config: Config,
}

impl Hyperprior {
    /// The safetensors metadata key of [`Config`].
    pub const METADATA_KEY: &'static str = "vaeproxy.config";

    /// The network from weights under `vb`.
    pub fn new(vb: VarBuilder, config: Config) -> Result<Self> {
        let gains = (config.levels, config.c);
        Ok(Self {
            analysis: Analysis::new(vb.pp("enc"), &config)?,
            synthesis: Synthesis::new(vb.pp("dec"), &config)?,
            hyper_analysis: HyperAnalysis::new(vb.pp("hyper_enc"), &config)?,
            hyper_synthesis: HyperSynthesis::new(vb.pp("hyper_dec"), &config)?,
            exact_hyper_synthesis: ExactHyperSynthesis::new(vb.pp("hyper_dec"), &config)?,
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
        let config = Config::from_metadata(cfg).map_err(candle_core::Error::wrap)?;
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
        // the fixed-order path agrees with candle's
        let zr = z.round().unwrap();
        let (h, w) = (zr.dim(2).unwrap(), zr.dim(3).unwrap());
        let zv = zr.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (em, el) = m.exact_hyper_synthesis.forward(&zv, h, w);
        let close = |a: &[f32], b: &Tensor| {
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4)
        };
        assert!(close(&em, &mean) && close(&el, &log_scale));
        assert_eq!(m.gains(2).unwrap().0.dims(), &[1, 8, 1, 1]);
    }

    #[test]
    fn config_is_bounded() {
        assert!(Config::from_metadata("c1=8,c2=8,c3=16,c=8,n=8,zc=4").is_err());
        assert!(Config::from_metadata("c1=7,c2=8,c3=16,c=8,n=8,zc=4,levels=3").is_err());
        assert!(Config::from_metadata("c1=8,c2=8,c3=9999,c=8,n=8,zc=4,levels=3").is_err());
    }
}
