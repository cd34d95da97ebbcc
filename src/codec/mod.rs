//! Image <-> latent code: pad to the latent grid, run the VAE (tiled for big
//! images), quantize the posterior mean per channel, entropy-code it and wrap
//! it in the wire format; and back.
//!
//! This is synchronous, CPU-heavy code. Async callers must reach it through
//! the bounded blocking pool, never from a runtime worker thread.

pub mod calibrate;
pub mod entropy;
pub mod gaussian;
pub mod hyperprior;
#[cfg(feature = "server")]
pub mod pool;
pub mod quality;

use crate::error::{Error, Result};
use crate::latent::wire::{self, Header, ModelId};
use crate::model::{Vae, DOWNSCALE};
use candle_core::{Device, Tensor};
use entropy::{EntropyModel, RANGE};
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The shipped weights, built into the binary so the codec works with no flags
/// and the client library needs no files.
pub static SHIPPED_WEIGHTS: &[u8] = include_bytes!("../../weights/vae.safetensors");

/// Images up to this many latent cells run in one pass; larger ones in tiles,
/// which bounds memory (a 4096x4096 image stays well under 1 GiB).
const SINGLE_PASS_CELLS: usize = 64 * 64;
/// Tile core size in latent cells (512 px).
const TILE: usize = 32;
/// Context around each tile, in latent cells: larger than the receptive field
/// of encoder and decoder (~5 cells), so tiled results equal one-pass results
/// away from float rounding.
const HALO: usize = 6;

/// Quality level used when none is given.
pub const DEFAULT_QUALITY: u8 = 3;

/// The VAE plus its entropy model: everything needed to encode and decode.
#[derive(Debug, Clone)]
pub struct Codec {
    vae: Vae,
    entropy: EntropyModel,
    id: ModelId,
}

/// The id of a weights file: the first 16 bytes of its SHA-256.
pub fn model_id(bytes: &[u8]) -> ModelId {
    let d = Sha256::digest(bytes);
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    ModelId(id)
}

impl Codec {
    /// The weights built into this binary.
    pub fn shipped() -> Result<Self> {
        Self::from_bytes(SHIPPED_WEIGHTS)
    }

    /// Weights from a safetensors file on disk.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Weights from the bytes of a safetensors file (network + entropy model).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| Error::Weights(format!("not a safetensors file: {e}")))?;
        let entropy = EntropyModel::from_tensors(&tensors)?;
        let config = crate::model::config_from_safetensors(bytes)
            .map_err(|e| Error::Weights(e.to_string()))?;
        let vae = Vae::from_tensors(tensors, config).map_err(|e| Error::Weights(e.to_string()))?;
        if entropy.channels() != vae.config.z {
            return Err(Error::Weights(
                "entropy model and network disagree on Z".into(),
            ));
        }
        Ok(Self {
            vae,
            entropy,
            id: model_id(bytes),
        })
    }

    /// The id of the weights (a hash of the file): latents name it.
    pub fn id(&self) -> ModelId {
        self.id
    }

    /// The network.
    pub fn vae(&self) -> &Vae {
        &self.vae
    }

    /// The entropy model and quality levels.
    pub fn entropy(&self) -> &EntropyModel {
        &self.entropy
    }

    /// Number of quality levels; valid levels are `1..=levels()`.
    pub fn levels(&self) -> u8 {
        self.entropy.levels() as u8
    }

    fn check_level(&self, quality: u8) -> Result<usize> {
        if quality == 0 || quality > self.levels() {
            return Err(Error::Incompatible(format!(
                "quality {quality} not in 1..={}",
                self.levels()
            )));
        }
        Ok(quality as usize)
    }

    /// Encodes an image into a complete `.vlat` file.
    pub fn encode(&self, img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
        let level = self.check_level(quality)?;
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 || w > wire::MAX_SIDE || h > wire::MAX_SIDE {
            return Err(Error::Image(format!(
                "{w}x{h} is outside 1..={} per side",
                wire::MAX_SIDE
            )));
        }
        if w as u64 * h as u64 > wire::MAX_PIXELS {
            return Err(Error::Image(format!("{w}x{h} is over the 64 Mpx limit")));
        }
        let mu = self.latent_mean(img)?; // [Z, gh, gw]
        let (_, gh, gw) = mu.dims3()?;
        let symbols = self.quantize(&mu, level)?;
        let words = self.entropy.encode(level, &symbols, gh, gw)?;
        let header = Header::new(self.id, quality, w, h, self.vae.config.z as u16);
        Ok(wire::write(&header, &words))
    }

    /// Codes a `[Z, gh, gw]` latent (e.g. one drawn from the prior) as a
    /// `.vlat` file for a `width` x `height` picture.
    pub fn encode_latent(
        &self,
        z: &Tensor,
        quality: u8,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>> {
        let level = self.check_level(quality)?;
        let (_, gh, gw) = z.dims3()?;
        let s = DOWNSCALE as u32;
        if width.div_ceil(s) as usize != gw || height.div_ceil(s) as usize != gh {
            return Err(Error::Incompatible(format!(
                "a {gw}x{gh} latent grid does not fit {width}x{height} pixels"
            )));
        }
        let symbols = self.quantize(z, level)?;
        let words = self.entropy.encode(level, &symbols, gh, gw)?;
        let header = Header::new(self.id, quality, width, height, self.vae.config.z as u16);
        Ok(wire::write(&header, &words))
    }

    /// Decodes a `.vlat` file made by this model.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage> {
        let (latent, w, h) = self.dequantize_bytes(bytes)?;
        let img = self.decode_latent(&latent)?;
        Ok(crop(&img, w, h))
    }

    /// Parses and entropy-decodes a latent file into `([Z, gh, gw] latent, width, height)`.
    pub fn dequantize_bytes(&self, bytes: &[u8]) -> Result<(Tensor, u32, u32)> {
        let l = wire::parse(bytes)?;
        let h = l.header;
        if h.model != self.id {
            return Err(Error::ModelMismatch {
                expected: self.id,
                got: h.model,
            });
        }
        let level = self.check_level(h.quality)?;
        if h.channels as usize != self.vae.config.z {
            return Err(Error::Incompatible(format!(
                "{} latent channels, model has {}",
                h.channels, self.vae.config.z
            )));
        }
        let (gh, gw) = (h.latent_height as usize, h.latent_width as usize);
        let n = gh * gw;
        // The symbol count comes from dimensions `wire::check` has bounded, so
        // memory is bounded whatever the payload holds.
        let symbols = self
            .entropy
            .decode(level, wire::payload_words(l.payload), gh, gw)?;
        let z = self.vae.config.z;
        let mut vals = Vec::with_capacity(symbols.len());
        for c in 0..z {
            let step = self.entropy.step(level, c);
            vals.extend(symbols[c * n..(c + 1) * n].iter().map(|&q| q as f32 * step));
        }
        let t = Tensor::from_vec(vals, (z, gh, gw), &Device::Cpu)?;
        Ok((t, h.width, h.height))
    }

    /// Quantizes a `[Z, gh, gw]` posterior mean to channel-major symbols.
    pub fn quantize(&self, mu: &Tensor, level: usize) -> Result<Vec<i32>> {
        let (z, gh, gw) = mu.dims3()?;
        let data = mu.flatten_all()?.to_vec1::<f32>()?;
        let n = gh * gw;
        let mut out = Vec::with_capacity(z * n);
        for c in 0..z {
            let inv = 1.0 / self.entropy.step(level, c);
            out.extend(
                data[c * n..(c + 1) * n]
                    .iter()
                    .map(|&v| ((v * inv).round() as i32).clamp(-RANGE, RANGE)),
            );
        }
        Ok(out)
    }

    /// The posterior mean `[Z, gh, gw]` of an image (padded to the grid), tiled when big.
    pub fn latent_mean(&self, img: &RgbImage) -> Result<Tensor> {
        self.posterior(img, |mu, _| Ok(mu))
    }

    /// The posterior standard deviation `[Z, gh, gw]` of an image. Only the
    /// sampler needs it; encoding sends the mean alone.
    pub fn latent_sigma(&self, img: &RgbImage) -> Result<Tensor> {
        self.posterior(img, |_, logvar| (logvar * 0.5)?.exp())
    }

    /// Runs the encoder over `img` tile by tile; `pick(mu, logvar)` chooses
    /// what each tile contributes (both `[Z, th, tw]`).
    fn posterior<F>(&self, img: &RgbImage, pick: F) -> Result<Tensor>
    where
        F: Fn(Tensor, Tensor) -> candle_core::Result<Tensor>,
    {
        let x = image_to_tensor(img, DOWNSCALE); // [3, H, W], multiples of 16
        let (_, ph, pw) = x.dims3()?;
        let (gh, gw) = (ph / DOWNSCALE, pw / DOWNSCALE);
        tiled(gh, gw, self.vae.config.z, 1, |y0, x0, th, tw| {
            let s = DOWNSCALE;
            let t = x.narrow(1, y0 * s, th * s)?.narrow(2, x0 * s, tw * s)?;
            let (mu, logvar) = self.vae.encode(&t.unsqueeze(0)?)?;
            pick(mu.squeeze(0)?, logvar.squeeze(0)?)
        })
    }

    /// Decodes a `[Z, gh, gw]` latent to an image of the padded size, tiled when
    /// big. Each tile goes straight into the 8-bit output, so peak memory is
    /// one tile of floats plus the final image.
    pub fn decode_latent(&self, z: &Tensor) -> Result<RgbImage> {
        let (_, gh, gw) = z.dims3()?;
        let s = DOWNSCALE;
        let mut out = RgbImage::new((gw * s) as u32, (gh * s) as u32);
        for_each_tile(gh, gw, |y0, x0, th, tw, core| {
            let t = z.narrow(1, y0, th)?.narrow(2, x0, tw)?;
            let y = self.vae.decode(&t.unsqueeze(0)?)?.squeeze(0)?;
            let (cy, cx, ch, cw) = core;
            let y = y
                .narrow(1, (cy - y0) * s, ch * s)?
                .narrow(2, (cx - x0) * s, cw * s)?;
            let tile = tensor_to_image(&y).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            image::imageops::replace(&mut out, &tile, (cx * s) as i64, (cy * s) as i64);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Calls `f(y0, x0, th, tw, (core_y, core_x, core_h, core_w))` for each tile of
/// the latent grid: the region to compute (core plus halo) and the core to
/// keep. Small grids are one tile with no halo.
fn for_each_tile<F>(gh: usize, gw: usize, mut f: F) -> candle_core::Result<()>
where
    F: FnMut(usize, usize, usize, usize, (usize, usize, usize, usize)) -> candle_core::Result<()>,
{
    if gh * gw <= SINGLE_PASS_CELLS {
        return f(0, 0, gh, gw, (0, 0, gh, gw));
    }
    for ty in (0..gh).step_by(TILE) {
        for tx in (0..gw).step_by(TILE) {
            let (ch, cw) = (TILE.min(gh - ty), TILE.min(gw - tx));
            let (y0, x0) = (ty.saturating_sub(HALO), tx.saturating_sub(HALO));
            let (y1, x1) = ((ty + ch + HALO).min(gh), (tx + cw + HALO).min(gw));
            f(y0, x0, y1 - y0, x1 - x0, (ty, tx, ch, cw))?;
        }
    }
    Ok(())
}

/// Runs `f` over the latent grid `gh x gw` tile by tile and stitches the tile
/// cores into a `[c, gh*scale, gw*scale]` output. `f(y0, x0, th, tw)` gets a
/// region in latent cells and returns `[c, th*scale, tw*scale]`.
fn tiled<F>(gh: usize, gw: usize, c: usize, scale: usize, f: F) -> Result<Tensor>
where
    F: Fn(usize, usize, usize, usize) -> candle_core::Result<Tensor>,
{
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    let mut last_row = usize::MAX;
    for_each_tile(gh, gw, |y0, x0, th, tw, (cy, cx, ch, cw)| {
        let out = f(y0, x0, th, tw)?
            .narrow(1, (cy - y0) * scale, ch * scale)?
            .narrow(2, (cx - x0) * scale, cw * scale)?;
        if cy != last_row {
            rows.push(Vec::new());
            last_row = cy;
        }
        rows.last_mut().expect("pushed above").push(out);
        Ok(())
    })?;
    let rows = rows
        .iter()
        .map(|r| Tensor::cat(r, 2))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let out = Tensor::cat(&rows, 1)?;
    debug_assert_eq!(out.dims(), &[c, gh * scale, gw * scale]);
    Ok(out)
}

/// `[3, H', W']` f32 in `[0, 1]`, padded by edge replication to multiples of `m`
/// (edges, not zeros: a black border would cost bits and bleed into the picture).
pub fn image_to_tensor(img: &RgbImage, m: usize) -> Tensor {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (pw, ph) = (w.div_ceil(m) * m, h.div_ceil(m) * m);
    let mut data = vec![0f32; 3 * pw * ph];
    let raw = img.as_raw();
    for y in 0..ph {
        let sy = y.min(h - 1);
        for x in 0..pw {
            let sx = x.min(w - 1);
            let p = (sy * w + sx) * 3;
            for c in 0..3 {
                data[c * pw * ph + y * pw + x] = raw[p + c] as f32 / 255.0;
            }
        }
    }
    Tensor::from_vec(data, (3, ph, pw), &Device::Cpu).expect("shape matches data")
}

/// `[3, H, W]` (any range) to 8-bit RGB, clamped and rounded.
pub fn tensor_to_image(t: &Tensor) -> Result<RgbImage> {
    let (c, h, w) = t.dims3()?;
    if c != 3 {
        return Err(Error::Incompatible(format!("{c} output channels")));
    }
    let t = (t.clamp(0f32, 1f32)? * 255.0)?.round()?;
    let hwc = t.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?;
    let bytes = hwc.into_iter().map(|v| v as u8).collect();
    Ok(RgbImage::from_raw(w as u32, h as u32, bytes).expect("size matches"))
}

fn crop(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    image::imageops::crop_imm(img, 0, 0, w, h).to_image()
}

/// The image files in `dir` that [`read_image`] reads (by extension, any
/// case: PNG, JPEG, WebP, GIF), sorted by name; an error if there are none.
/// The one directory scan behind `train`, `calibrate`, `eval` and `eval-v2`.
pub fn image_files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let io = |source| Error::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if matches!(
            ext.as_deref(),
            Some("png" | "jpg" | "jpeg" | "webp" | "gif")
        ) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Image(format!(
            "{}: no PNG, JPEG, WebP or GIF files",
            dir.display()
        )));
    }
    Ok(files)
}

/// Largest image a caller may hand to [`read_image`] by default: 64 Mpx.
pub const DEFAULT_MAX_PIXELS: u64 = wire::MAX_PIXELS;

/// Decodes JPEG/PNG/WebP/GIF bytes into RGB under limits: the format is sniffed
/// from the bytes (not trusted from a name or a header), and the declared
/// dimensions are checked before the pixel buffer is allocated, so a
/// decompression bomb fails fast with a small footprint.
pub fn read_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    Ok(read_dynamic(bytes, max_pixels)?.to_rgb8())
}

/// [`read_image`] without the conversion to RGB, for callers that look at
/// alpha. Errors over a limit say "limit" so they can be told from corrupt data.
pub fn read_dynamic(bytes: &[u8], max_pixels: u64) -> Result<image::DynamicImage> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(Error::Image("not a JPEG, PNG, WebP or GIF image".into()));
    };
    // GIF decoders allocate the whole logical screen per frame: read its
    // declared size from the bytes before any decoder sees them.
    if format == image::ImageFormat::Gif {
        let (w, h) =
            gif_screen(bytes).ok_or_else(|| Error::Image("truncated GIF header".into()))?;
        check_pixels(w, h, max_pixels)?;
    }
    reader.limits(limits_for(max_pixels));
    let (w, h) = reader.into_dimensions().map_err(image_error)?;
    check_pixels(w, h, max_pixels)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(e.to_string()))?;
    reader.limits(limits_for(max_pixels));
    reader.decode().map_err(image_error)
}

fn check_pixels(w: u32, h: u32, max_pixels: u64) -> Result<()> {
    if w as u64 * h as u64 > max_pixels {
        return Err(Error::ImageTooLarge(format!(
            "{w}x{h} is over the {max_pixels}-pixel limit"
        )));
    }
    Ok(())
}

fn image_error(e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::ImageTooLarge(format!("over a memory limit: {l}")),
        e => Error::Image(e.to_string()),
    }
}

/// The logical screen size a GIF declares (bytes 6-9), if the header is there.
pub fn gif_screen(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 10 || !bytes.starts_with(b"GIF8") {
        return None;
    }
    let w = u16::from_le_bytes([bytes[6], bytes[7]]);
    let h = u16::from_le_bytes([bytes[8], bytes[9]]);
    Some((w as u32, h as u32))
}

/// Decoded RGBA8 worst case plus decoder scratch.
fn limits_for(max_pixels: u64) -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(wire::MAX_SIDE);
    limits.max_image_height = Some(wire::MAX_SIDE);
    limits.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(64 << 20));
    limits
}
