//! The VAE as a generative model: images sampled from its prior, generated
//! ahead of time and served from their own moka cache, so a request never
//! waits on the model; and, made on first request and cached apart,
//! variations of a cached image (samples from its posterior) and
//! interpolations between two cached images.
//!
//! Sample `i` of a pool is a pure function of (seed, i, size, temperature,
//! weights): its latent is drawn from an RNG seeded with (seed, i), quantized
//! and entropy-coded like any other latent, and the image is the decoder's
//! output for exactly that code. A latent-capable client that decodes the
//! code gets the same pixels, and a restart regenerates the same bytes.
//! Variations and interpolations follow the same rule, with the source
//! latent codes as further inputs.

mod pools;
pub use pools::Sampler;

use crate::codec::Codec;
use crate::config::{SampleFormat, SamplePool};
use crate::model::DOWNSCALE;
use bytes::Bytes;
use candle_core::{Device, Tensor};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;

/// One generated picture: a sample, a variation, an interpolation frame or
/// a strip of them.
#[derive(Debug)]
pub struct Sample {
    /// The picture in the requested format.
    pub image: Bytes,
    /// Its media type.
    pub content_type: &'static str,
    /// The `.vlat` latent code the picture was decoded from; `None` for a
    /// strip (several latents side by side have no single code).
    pub latent: Option<Bytes>,
    /// Strong validator over the image bytes.
    pub etag: String,
}

impl Sample {
    fn new(img: &RgbImage, latent: Option<Vec<u8>>, out: Output) -> crate::Result<Sample> {
        let mut bytes = Vec::new();
        let (format, content_type) = match out.format {
            SampleFormat::Png => (image::ImageFormat::Png, "image/png"),
            SampleFormat::Jpeg => (image::ImageFormat::Jpeg, "image/jpeg"),
            SampleFormat::Webp => (image::ImageFormat::WebP, "image/webp"),
        };
        let write = if format == image::ImageFormat::Jpeg {
            let enc =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, out.jpeg_quality);
            img.write_with_encoder(enc)
        } else {
            img.write_to(&mut std::io::Cursor::new(&mut bytes), format)
        };
        write.map_err(|e| crate::Error::Image(format!("writing the picture: {e}")))?;
        let etag = format!("\"s-{:08x}-{}\"", crc32fast::hash(&bytes), bytes.len());
        Ok(Sample {
            image: Bytes::from(bytes),
            content_type,
            latent: latent.map(Bytes::from),
            etag,
        })
    }
}

/// The picture format of generated images.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Image format.
    pub format: SampleFormat,
    /// JPEG quality when the format is JPEG.
    pub jpeg_quality: u8,
}

impl Output {
    /// Lossless PNG.
    pub const PNG: Output = Output {
        format: SampleFormat::Png,
        jpeg_quality: 90,
    };

    /// The pool's format.
    pub fn of(pool: &SamplePool) -> Output {
        Output {
            format: pool.format,
            jpeg_quality: pool.jpeg_quality,
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// No pool of that name.
    NoPool,
    /// The index is past the pool's count.
    OutOfRange(u32),
    /// Not generated yet (or evicted and being regenerated).
    NotReady,
    /// The sample.
    Ready(Arc<Sample>),
}

/// Why an on-request generation gave nothing.
#[derive(Debug, Clone)]
pub enum DerivedError {
    /// The model pool is full: try again shortly.
    Busy,
    /// The model failed on the input.
    Failed(String),
}

/// One RNG per (seed, salt, index), so the order of generation does not
/// matter and a restart draws the same numbers.
fn rng(seed: u64, salt: u64, index: u32) -> StdRng {
    StdRng::seed_from_u64(seed ^ salt ^ (u64::from(index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// `n` draws of N(0, scale^2).
fn normal(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let e: f32 = StandardNormal.sample(rng);
            e * scale
        })
        .collect()
}

/// Codes `z` at the finest level and decodes that code: the picture is
/// exactly what a latent-capable client rebuilds from the code.
fn frame(codec: &Codec, z: &Tensor, width: u32, height: u32) -> crate::Result<(Vec<u8>, RgbImage)> {
    let latent = codec.encode_latent(z, codec.levels(), width, height)?;
    let img = codec.decode(&latent)?;
    Ok((latent, img))
}

/// Generates sample `index` of `pool` from the prior, z ~ N(0, t^2 I).
/// CPU work: call it on the model pool.
pub fn generate(codec: &Codec, pool: &SamplePool, index: u32) -> crate::Result<Sample> {
    let s = DOWNSCALE as u32;
    let (gh, gw) = (
        pool.height.div_ceil(s) as usize,
        pool.width.div_ceil(s) as usize,
    );
    let z = codec.vae().config.z;
    let vals = normal(&mut rng(pool.seed, 0, index), z * gh * gw, pool.temperature);
    let z = Tensor::from_vec(vals, (z, gh, gw), &Device::Cpu)?;
    let (latent, img) = frame(codec, &z, pool.width, pool.height)?;
    Sample::new(&img, Some(latent), Output::of(pool))
}

/// The approximate posterior of a cached image, for variations.
///
/// The cache holds the image as its latent code, not its pixels, so the mean
/// is the dequantized code and the spread is the encoder's sigma for the
/// code's own reconstruction. Both depend on the code alone: variations are
/// the same whether or not the original is still at hand.
#[derive(Debug)]
pub struct Posterior {
    mu: Tensor,
    sigma: Tensor,
    width: u32,
    height: u32,
    /// Distinguishes the noise of different sources under one seed.
    salt: u64,
}

impl Posterior {
    /// The posterior of a latent code made by `codec`.
    pub fn of_code(codec: &Codec, code: &[u8]) -> crate::Result<Posterior> {
        let (mu, width, height) = codec.dequantize_bytes(code)?;
        let recon = codec.decode_latent(&mu)?;
        let sigma = codec.latent_sigma(&recon)?;
        Ok(Posterior {
            mu,
            sigma,
            width,
            height,
            salt: code_hash(code),
        })
    }

    /// Bytes held (mean and sigma, f32).
    fn weight(&self) -> u32 {
        (self.mu.elem_count() * 8).min(u32::MAX as usize) as u32
    }

    /// Variation `index`: z = mu + t * sigma * eps, eps ~ N(0, I).
    fn draw(
        &self,
        codec: &Codec,
        seed: u64,
        t: f32,
        index: u32,
    ) -> crate::Result<(Vec<u8>, RgbImage)> {
        let eps = normal(&mut rng(seed, self.salt, index), self.mu.elem_count(), t);
        let eps = Tensor::from_vec(eps, self.mu.dims(), &Device::Cpu)?;
        let z = (&self.mu + (&self.sigma * eps)?)?;
        frame(codec, &z, self.width, self.height)
    }
}

/// A stable 64-bit name for a latent code.
pub fn code_hash(code: &[u8]) -> u64 {
    let d = sha2::Sha256::digest(code);
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Variations of a cached image: frame `index` alone, or the strip of
/// frames `0..n` side by side when `index` is `None`.
pub fn variations(
    codec: &Codec,
    post: &Posterior,
    pool: &SamplePool,
    n: u32,
    index: Option<u32>,
) -> crate::Result<Sample> {
    let draw = |i| post.draw(codec, pool.seed, pool.temperature, i);
    frames(draw, n, index, Output::of(pool))
}

/// Two cached latents and the straight line between them. Latents of
/// different sizes are cut to their common top-left grid, so the frames have
/// the smaller width and the smaller height of the two.
#[derive(Debug)]
pub struct Endpoints {
    a: Tensor,
    b: Tensor,
    width: u32,
    height: u32,
}

impl Endpoints {
    /// The two posteriors of codes `a` and `b`.
    pub fn of_codes(codec: &Codec, a: &[u8], b: &[u8]) -> crate::Result<Endpoints> {
        let (a, wa, ha) = codec.dequantize_bytes(a)?;
        let (b, wb, hb) = codec.dequantize_bytes(b)?;
        let (_, gha, gwa) = a.dims3()?;
        let (_, ghb, gwb) = b.dims3()?;
        let (gh, gw) = (gha.min(ghb), gwa.min(gwb));
        let cut = |t: Tensor| t.narrow(1, 0, gh)?.narrow(2, 0, gw);
        Ok(Endpoints {
            a: cut(a)?,
            b: cut(b)?,
            width: wa.min(wb),
            height: ha.min(hb),
        })
    }

    /// Frame `index` of `steps` (>= 2): z = (1 - s) a + s b, s = index / (steps - 1).
    fn at(&self, codec: &Codec, steps: u32, index: u32) -> crate::Result<(Vec<u8>, RgbImage)> {
        let s = f64::from(index) / f64::from(steps.max(2) - 1);
        let z = ((&self.a * (1.0 - s))? + (&self.b * s)?)?;
        frame(codec, &z, self.width, self.height)
    }
}

/// The interpolation from code `a` to code `b` in `steps` frames: frame
/// `index` alone, or the whole strip when `index` is `None`.
pub fn interpolation(
    codec: &Codec,
    a: &[u8],
    b: &[u8],
    steps: u32,
    index: Option<u32>,
    out: Output,
) -> crate::Result<Sample> {
    let ends = Endpoints::of_codes(codec, a, b)?;
    frames(|i| ends.at(codec, steps, i), steps, index, out)
}

/// Frame `index` with its latent, or frames `0..n` in one strip.
fn frames<F>(make: F, n: u32, index: Option<u32>, out: Output) -> crate::Result<Sample>
where
    F: Fn(u32) -> crate::Result<(Vec<u8>, RgbImage)>,
{
    if let Some(i) = index {
        let (latent, img) = make(i)?;
        return Sample::new(&img, Some(latent), out);
    }
    let imgs = (0..n).map(&make).collect::<crate::Result<Vec<_>>>()?;
    Sample::new(&strip(imgs.iter().map(|(_, img)| img)), None, out)
}

/// Pictures of one size side by side, left to right, with no gutter, so a
/// client can cut frame `i` at `x = i * width`.
pub fn strip<'a>(imgs: impl Iterator<Item = &'a RgbImage> + Clone) -> RgbImage {
    let (w, h) = imgs.clone().next().map_or((0, 0), |i| i.dimensions());
    let n = imgs.clone().count() as u32;
    let mut out = RgbImage::new(w * n, h);
    for (i, img) in imgs.enumerate() {
        image::imageops::replace(&mut out, img, i64::from(i as u32 * w), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_and_decode_to_themselves() {
        let codec = Codec::shipped().unwrap();
        let mut spec = SamplePool::default_pool();
        spec.width = 48;
        spec.height = 40;
        let a = generate(&codec, &spec, 3).unwrap();
        let b = generate(&codec, &spec, 3).unwrap();
        let c = generate(&codec, &spec, 4).unwrap();
        assert_eq!(a.image, b.image);
        assert_ne!(a.image, c.image);
        let img = image::load_from_memory(&a.image).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (48, 40));
        assert_eq!(
            codec.decode(a.latent.as_ref().unwrap()).unwrap(),
            img,
            "the latent decodes to the served pixels"
        );
        spec.seed = 1;
        assert_ne!(generate(&codec, &spec, 3).unwrap().image, a.image);
    }
}
