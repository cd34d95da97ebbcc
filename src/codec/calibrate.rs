//! `vaeproxy calibrate`: measures the entropy model that ships with the weights.
//!
//! 1. The per-channel quantizer unit is the geometric-mean posterior sigma on
//!    the training photos: the decoder was trained to tolerate noise of that
//!    size, so a step proportional to it costs little distortion.
//! 2. For a grid of step multipliers, histograms of the quantized training
//!    latents per channel and context give the probability tables, and the
//!    cross-entropy of the held-out photos under them predicts the bit rate.
//! 3. One multiplier per target rate becomes a quality level.
//!
//! Only training and validation photos are used; never Kodak.

use crate::codec::entropy::{
    for_each_context, pmf_from_counts, EntropyModel, CONTEXTS, RANGE, SYMBOLS,
};
use crate::codec::image_to_tensor;
use crate::error::Result;
use crate::model::{Vae, DOWNSCALE};
use image::RgbImage;

/// Default target rates (bits per pixel on the validation photos), one per level.
pub const DEFAULT_TARGETS: [f64; 5] = [0.085, 0.13, 0.19, 0.26, 0.34];

/// Posterior means of a set of images, one `[Z, h, w]` grid per image.
struct Latents {
    z: usize,
    grids: Vec<(Vec<f32>, usize, usize)>,
    pixels: u64,
}

fn collect(
    vae: &Vae,
    images: &[RgbImage],
    logvar_sum: &mut [f64],
    count: &mut u64,
) -> Result<Latents> {
    let z = vae.config.z;
    let mut grids = Vec::with_capacity(images.len());
    let mut pixels = 0u64;
    for img in images {
        let x = image_to_tensor(img, DOWNSCALE).unsqueeze(0)?;
        let (mu, lv) = vae.encode(&x)?;
        let (_, _, h, w) = mu.dims4()?;
        let lv = lv.squeeze(0)?.flatten_from(1)?.to_vec2::<f32>()?;
        for (acc, row) in logvar_sum.iter_mut().zip(&lv) {
            *acc += row.iter().map(|&v| v as f64).sum::<f64>();
        }
        *count += (h * w) as u64;
        grids.push((mu.flatten_all()?.to_vec1::<f32>()?, h, w));
        pixels += img.width() as u64 * img.height() as u64;
    }
    Ok(Latents { z, grids, pixels })
}

/// Counts `[Z][CONTEXTS][SYMBOLS]` of the latents quantized with `steps[c]`.
fn counts(l: &Latents, steps: &[f32]) -> Vec<u64> {
    let mut out = vec![0u64; l.z * CONTEXTS * SYMBOLS];
    for (mu, h, w) in &l.grids {
        let n = h * w;
        let mut q: Vec<i32> = mu
            .iter()
            .enumerate()
            .map(|(i, &v)| ((v / steps[i / n]).round() as i32).clamp(-RANGE, RANGE))
            .collect();
        for_each_context(&mut q, *h, *w, |c, grid, i, k| {
            out[(c * CONTEXTS + k) * SYMBOLS + (grid[i] + RANGE) as usize] += 1;
            Ok(())
        })
        // invariant: the closure above never returns an error
        .expect("counting never fails");
    }
    out
}

/// Estimated bpp of `val` under tables fit on `train` at multiplier `m`, and the tables.
fn rate(train: &Latents, val: &Latents, scale: &[f32], m: f32) -> (f64, Vec<f32>) {
    let steps: Vec<f32> = scale.iter().map(|s| m * s).collect();
    let pmf: Vec<f32> = counts(train, &steps)
        .chunks(SYMBOLS)
        .flat_map(pmf_from_counts)
        .collect();
    let bits: f64 = counts(val, &steps)
        .iter()
        .zip(&pmf)
        .map(|(&n, &p)| -(n as f64) * (p as f64).log2())
        .sum();
    (bits / val.pixels as f64, pmf)
}

/// PSNR of `val` crops reconstructed from latents quantized with `steps`.
fn distortion(
    vae: &Vae,
    crops: &[RgbImage],
    mus: &[candle_core::Tensor],
    steps: &[f32],
) -> Result<f64> {
    let mut se = 0f64;
    let mut n = 0f64;
    let st = candle_core::Tensor::new(steps, &candle_core::Device::Cpu)?.reshape((
        1,
        steps.len(),
        1,
        1,
    ))?;
    for (img, mu) in crops.iter().zip(mus) {
        let q = mu
            .broadcast_div(&st)?
            .round()?
            .clamp(-RANGE as f32, RANGE as f32)?
            .broadcast_mul(&st)?;
        let rec = crate::codec::tensor_to_image(&vae.decode(&q)?.squeeze(0)?)?;
        for (a, b) in img.as_raw().iter().zip(rec.as_raw()) {
            let d = *a as f64 - *b as f64;
            se += d * d;
        }
        n += img.as_raw().len() as f64;
    }
    Ok(crate::codec::quality::psnr_from_mse((se / n).max(1e-12)))
}

/// A step multiplier on the rate-distortion frontier, measured on the
/// validation photos (bpp of whole photos, PSNR of centre crops).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Step multiplier of the quantizer.
    pub m: f32,
    /// Mean bits per pixel on the validation photos.
    pub bpp: f64,
    /// Mean PSNR of the centre crops, dB.
    pub psnr: f64,
}

/// One candidate quantizer: its point and its tables.
struct Candidate {
    point: Point,
    pmf: Vec<f32>,
}

/// Fits the entropy model for `vae` on `train` and chooses the quality levels
/// on `val`: among step multipliers on the rate-distortion frontier (more bits
/// must buy at least `MIN_SLOPE` dB per bpp, so no level wastes bits the
/// decoder cannot turn into quality), the ones nearest each target rate.
/// Returns the model and the whole frontier, coarse to fine (the levels are
/// the points whose `m` is in the model's `steps`).
pub fn calibrate(
    vae: &Vae,
    train: &[RgbImage],
    val: &[RgbImage],
    targets: &[f64],
) -> Result<(EntropyModel, Vec<Point>)> {
    const MIN_SLOPE: f64 = 2.5;
    let z = vae.config.z;
    let mut lv_sum = vec![0f64; z];
    let mut per_channel = 0u64;
    let tl = collect(vae, train, &mut lv_sum, &mut per_channel)?;
    let vl = collect(vae, val, &mut vec![0f64; z], &mut 0)?;
    let scale: Vec<f32> = lv_sum
        .iter()
        .map(|s| ((0.5 * s / per_channel as f64).exp() as f32).max(1e-4))
        .collect();
    // centre crops of the validation photos for the distortion measurements
    let crops: Vec<RgbImage> = val
        .iter()
        .map(|im| {
            let (w, h) = (
                im.width().min(384) / 16 * 16,
                im.height().min(384) / 16 * 16,
            );
            image::imageops::crop_imm(im, (im.width() - w) / 2, (im.height() - h) / 2, w, h)
                .to_image()
        })
        .collect();
    let mus = crops
        .iter()
        .map(|c| Ok(vae.encode(&image_to_tensor(c, DOWNSCALE).unsqueeze(0)?)?.0))
        .collect::<Result<Vec<_>>>()?;
    // geometric grid of step multipliers, coarse to fine
    let mut frontier: Vec<Candidate> = Vec::new();
    for i in 0..44 {
        let m = 64.0 * 0.88f32.powi(i);
        let (bpp, pmf) = rate(&tl, &vl, &scale, m);
        let steps: Vec<f32> = scale.iter().map(|s| m * s).collect();
        let psnr = distortion(vae, &crops, &mus, &steps)?;
        if let Some(last) = frontier.last().map(|c| c.point) {
            if (psnr - last.psnr) / (bpp - last.bpp).max(1e-9) < MIN_SLOPE {
                continue;
            }
        }
        frontier.push(Candidate {
            point: Point { m, bpp, psnr },
            pmf,
        });
    }
    let mut chosen: Vec<usize> = Vec::new();
    for &t in targets {
        let best = (0..frontier.len())
            .min_by(|&a, &b| {
                (frontier[a].point.bpp - t)
                    .abs()
                    .total_cmp(&(frontier[b].point.bpp - t).abs())
            })
            .expect("frontier is not empty");
        if !chosen.contains(&best) {
            chosen.push(best);
        }
    }
    chosen.sort_unstable();
    let steps = chosen.iter().map(|&i| frontier[i].point.m).collect();
    let pmf = chosen
        .iter()
        .flat_map(|&i| frontier[i].pmf.clone())
        .collect();
    let points = frontier.iter().map(|c| c.point).collect();
    Ok((EntropyModel::new(scale, steps, pmf)?, points))
}
