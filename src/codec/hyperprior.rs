//! Codec v2, image <-> coded latent, with the hyperprior network
//! ([`crate::model::hyperprior`]) and the integer tables ([`super::gaussian`]).
//!
//! Encode: `y = analysis(x)`, `z = round(hyper_analysis(y))`; the hyper
//! decoder gives each element of `y` a mean and a scale; at level `l` the
//! symbol is `round(g_l * y - g_l * mean)`, coded with the table of scale
//! `exp(log_scale + log g_l)`. `z` is coded first (one table per channel),
//! then `y`, channel-major, in one ANS stream.
//!
//! Decode: `z` first, the hyper decoder again, then each symbol with the same
//! table index; `y_hat = (q + g_l * mean) * g'_l` goes to the synthesis.
//!
//! The hyper decoder runs in its fixed-order form
//! ([`crate::model::hyperprior::ExactHyperSynthesis`]), so the table index of
//! every element is the same bits on every platform. Not wired into the wire
//! format or the proxy yet: the model is still training.

use super::gaussian::{ScaleIndex, Tables};
use super::{crop, image_to_tensor, tensor_to_image};
use crate::error::{Error, Result};
use crate::model::hyperprior::{Hyperprior, Z_DOWNSCALE};
use candle_core::{DType, Device, Module, Tensor};
use constriction::stream::stack::DefaultAnsCoder;
use image::RgbImage;

/// The network with its coding tables.
#[derive(Debug, Clone)]
pub struct HyperCodec {
    net: Hyperprior,
    y_tables: Tables,
    z_tables: Tables,
    scales: ScaleIndex,
    /// `[levels][C]` log-gains, encoder side, as stored (the index uses them).
    log_gain: Vec<Vec<f32>>,
}

/// A coded image: the ANS words and the sizes needed to read them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coded {
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// 0-based quality level.
    pub level: usize,
    /// The ANS words (z then y).
    pub words: Vec<u32>,
}

impl HyperCodec {
    /// From an exported file (`scripts/train_codec.py --export`).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let net = Hyperprior::from_safetensors(bytes)?;
        let t = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let ints = |k: &str| -> Result<Vec<i64>> {
            let v = t
                .get(k)
                .ok_or_else(|| Error::Weights(format!("missing tensor {k}")))?;
            Ok(v.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?)
        };
        let floats = |k: &str| -> Result<Vec<f32>> {
            let v = t
                .get(k)
                .ok_or_else(|| Error::Weights(format!("missing tensor {k}")))?;
            Ok(v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let y_tables = Tables::new(&ints("entropy.gauss_radius")?, &ints("entropy.gauss_pmf")?)?;
        let z_tables = Tables::new(&ints("entropy.z_radius")?, &ints("entropy.z_pmf")?)?;
        let log_scales = floats("entropy.log_scales")?;
        if log_scales.len() != y_tables.len() {
            return Err(Error::Weights(
                "entropy.log_scales and the Gaussian tables differ in number".into(),
            ));
        }
        let cfg = net.config;
        if z_tables.len() != cfg.zc {
            return Err(Error::Weights(format!(
                "{} z tables for {} channels",
                z_tables.len(),
                cfg.zc
            )));
        }
        let log_gain = floats("gain_enc")?
            .chunks(cfg.c)
            .map(<[f32]>::to_vec)
            .collect();
        Ok(Self {
            net,
            y_tables,
            z_tables,
            scales: ScaleIndex::new(&log_scales)?,
            log_gain,
        })
    }

    /// Number of quality levels.
    pub fn levels(&self) -> usize {
        self.net.config.levels
    }

    /// Codes `img` at 0-based `level`; also returns the reconstruction the
    /// decoder will produce from the code.
    pub fn encode(&self, img: &RgbImage, level: usize) -> Result<(Coded, RgbImage)> {
        let _span =
            tracing::trace_span!("v2.encode", w = img.width(), h = img.height(), level).entered();
        if level >= self.levels() {
            return Err(Error::Incompatible(format!(
                "level {level} is beyond the model's {}",
                self.levels()
            )));
        }
        let x = image_to_tensor(img, Z_DOWNSCALE).unsqueeze(0)?;
        let y = self.net.analysis.forward(&x)?;
        let z = self.net.hyper_analysis.forward(&y)?.round()?;
        let zs = z.flatten_all()?.to_vec1::<f32>()?;
        let (mean, ls) = self.hyper(&zs, z.dim(2)?, z.dim(3)?)?;
        let (g, _) = self.net.gains(level)?;
        let q = ((y.broadcast_mul(&g)? - mean.broadcast_mul(&g)?)?).round()?;
        let (c, h, w) = q.squeeze(0)?.dims3()?;
        let qs = q.flatten_all()?.to_vec1::<f32>()?;
        let zn = zs.len() / self.net.config.zc;
        let mut coder = DefaultAnsCoder::new();
        // ANS pops in reverse push order: y last-to-first, then z likewise.
        for i in (0..qs.len()).rev() {
            let t = self.scales.of(ls[i] + self.log_gain[level][i / (h * w)]);
            self.y_tables.encode(&mut coder, t, qs[i] as i32)?;
        }
        for i in (0..zs.len()).rev() {
            self.z_tables.encode(&mut coder, i / zn, zs[i] as i32)?;
        }
        let words = coder
            .into_compressed()
            .map_err(|_| Error::Payload("entropy coder failed".into()))?;
        let recon = self.synthesize(&q, &mean, level, img.width(), img.height())?;
        debug_assert_eq!(qs.len(), c * h * w);
        Ok((
            Coded {
                width: img.width(),
                height: img.height(),
                level,
                words,
            },
            recon,
        ))
    }

    /// Decodes what [`encode`](Self::encode) made. Sizes are checked before
    /// anything is allocated; a damaged stream is an error, never a panic.
    pub fn decode(&self, coded: &Coded) -> Result<RgbImage> {
        let _span = tracing::trace_span!("v2.decode", w = coded.width, h = coded.height).entered();
        let (width, height, level) = (coded.width, coded.height, coded.level);
        if coded.words.is_empty() {
            return Err(Error::Payload("empty stream".into()));
        }
        if level >= self.levels() || width == 0 || height == 0 {
            return Err(Error::Incompatible("bad level or size".into()));
        }
        if width as u64 * height as u64 > crate::latent::wire::MAX_PIXELS {
            return Err(Error::Incompatible(format!(
                "{width}x{height} is too large"
            )));
        }
        let m = Z_DOWNSCALE;
        let (zh, zw) = ((height as usize).div_ceil(m), (width as usize).div_ceil(m));
        let (yh, yw) = (zh * 4, zw * 4);
        let cfg = self.net.config;
        let mut coder = DefaultAnsCoder::from_compressed(coded.words.clone())
            .map_err(|_| Error::Payload("empty or damaged stream".into()))?;
        let zn = zh * zw;
        let mut zs = Vec::with_capacity(cfg.zc * zn);
        for i in 0..cfg.zc * zn {
            zs.push(self.z_tables.decode(&mut coder, i / zn)? as f32);
        }
        let (mean, ls) = self.hyper(&zs, zh, zw)?;
        let yn = yh * yw;
        let mut qs = Vec::with_capacity(cfg.c * yn);
        for (i, &l) in ls.iter().enumerate() {
            let t = self.scales.of(l + self.log_gain[level][i / yn]);
            qs.push(self.y_tables.decode(&mut coder, t)? as f32);
        }
        // A valid stream ends exactly where the encoder started: anything else
        // is damage (ANS decodes past the end without complaint).
        if !coder.is_empty() {
            return Err(Error::Payload(
                "damaged stream (it does not end where it should)".into(),
            ));
        }
        let q = Tensor::from_vec(qs, (1, cfg.c, yh, yw), &Device::Cpu)?;
        self.synthesize(&q, &mean, level, width, height)
    }

    /// The hyper decoder in its fixed-order form: the mean as a tensor for
    /// the synthesis, the log-scales as the exact values the indices use.
    fn hyper(&self, z: &[f32], h: usize, w: usize) -> Result<(Tensor, Vec<f32>)> {
        let (mean, ls) = self.net.exact_hyper_synthesis.forward(z, h, w);
        let mean = Tensor::from_vec(mean, (1, self.net.config.c, 4 * h, 4 * w), &Device::Cpu)?;
        Ok((mean, ls))
    }

    fn synthesize(
        &self,
        q: &Tensor,
        mean: &Tensor,
        level: usize,
        w: u32,
        h: u32,
    ) -> Result<RgbImage> {
        let (g, gd) = self.net.gains(level)?;
        let y_hat = (q + mean.broadcast_mul(&g)?)?.broadcast_mul(&gd)?;
        let x = self.net.synthesis.forward(&y_hat)?.squeeze(0)?;
        Ok(crop(&tensor_to_image(&x)?, w, h))
    }
}
