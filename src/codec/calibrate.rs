//! `vaeproxy calibrate`: measures the entropy model that ships with the weights.
//!
//! 1. The per-channel quantizer unit is the geometric-mean posterior sigma on
//!    the training photos: the decoder was trained to tolerate noise of that
//!    size, so a step proportional to it costs little distortion.
//! 2. For a grid of step multipliers, histograms of the quantized training
//!    latents give per-channel probabilities, and the cross-entropy of the
//!    held-out photos under them predicts the bit rate.
//! 3. One multiplier per target rate becomes a quality level.
//!
//! Only training and validation photos are used; never Kodak.

use crate::codec::entropy::{pmf_from_counts, EntropyModel, RANGE, SYMBOLS};
use crate::codec::image_to_tensor;
use crate::error::Result;
use crate::model::{Vae, DOWNSCALE};
use image::RgbImage;

/// Default target rates (bits per pixel on the validation photos), one per level.
pub const DEFAULT_TARGETS: [f64; 5] = [0.08, 0.13, 0.20, 0.30, 0.45];

/// Posterior means and log-variances, channel-major, for a set of images.
struct Latents {
    z: usize,
    /// `mu[c]` holds all values of channel `c` over all images.
    mu: Vec<Vec<f32>>,
    pixels: u64,
}

fn collect(vae: &Vae, images: &[RgbImage], logvar_sum: Option<&mut Vec<f64>>) -> Result<Latents> {
    let z = vae.config.z;
    let mut mu_all = vec![Vec::new(); z];
    let mut lv_acc = vec![0f64; z];
    let mut pixels = 0u64;
    for img in images {
        let x = image_to_tensor(img, DOWNSCALE).unsqueeze(0)?;
        let (mu, lv) = vae.encode(&x)?;
        let (mu, lv) = (
            mu.squeeze(0)?.flatten_from(1)?,
            lv.squeeze(0)?.flatten_from(1)?,
        );
        for c in 0..z {
            mu_all[c].extend(mu.get(c)?.to_vec1::<f32>()?);
            lv_acc[c] += lv
                .get(c)?
                .to_vec1::<f32>()?
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
        pixels += img.width() as u64 * img.height() as u64;
    }
    if let Some(out) = logvar_sum {
        *out = lv_acc;
    }
    Ok(Latents {
        z,
        mu: mu_all,
        pixels,
    })
}

fn counts(mu: &[f32], step: f32) -> Vec<u64> {
    let mut c = vec![0u64; SYMBOLS];
    for &v in mu {
        let q = ((v / step).round() as i32).clamp(-RANGE, RANGE);
        c[(q + RANGE) as usize] += 1;
    }
    c
}

/// Estimated bpp of `val` under probabilities fit on `train` at multiplier `m`.
fn rate(train: &Latents, val: &Latents, scale: &[f32], m: f32) -> (f64, Vec<f32>) {
    let mut bits = 0f64;
    let mut pmf = Vec::with_capacity(train.z * SYMBOLS);
    for ((tmu, vmu), &unit) in train.mu.iter().zip(&val.mu).zip(scale) {
        let step = m * unit;
        let p = pmf_from_counts(&counts(tmu, step));
        let vc = counts(vmu, step);
        bits += vc
            .iter()
            .zip(&p)
            .map(|(&n, &p)| -(n as f64) * (p as f64).log2())
            .sum::<f64>();
        pmf.extend(p);
    }
    (bits / val.pixels as f64, pmf)
}

/// Fits the entropy model for `vae` on `train`, choosing levels on `val`.
/// Returns the model and, per level, the predicted validation bpp.
pub fn calibrate(
    vae: &Vae,
    train: &[RgbImage],
    val: &[RgbImage],
    targets: &[f64],
) -> Result<(EntropyModel, Vec<f64>)> {
    let mut lv_sum = Vec::new();
    let tl = collect(vae, train, Some(&mut lv_sum))?;
    let vl = collect(vae, val, None)?;
    let per_channel = tl.mu[0].len() as f64;
    let scale: Vec<f32> = lv_sum
        .iter()
        .map(|s| ((0.5 * s / per_channel).exp() as f32).max(1e-4))
        .collect();
    // geometric grid of step multipliers, coarse to fine
    let grid: Vec<f32> = (0..60).map(|i| 24.0 * 0.9f32.powi(i)).collect();
    let rates: Vec<(f32, f64, Vec<f32>)> = grid
        .iter()
        .map(|&m| {
            let (r, p) = rate(&tl, &vl, &scale, m);
            (m, r, p)
        })
        .collect();
    let mut steps = Vec::new();
    let mut pmf = Vec::new();
    let mut predicted = Vec::new();
    for &t in targets {
        let best = rates
            .iter()
            .min_by(|a, b| (a.1 - t).abs().total_cmp(&(b.1 - t).abs()))
            .expect("grid is not empty");
        steps.push(best.0);
        pmf.extend_from_slice(&best.2);
        predicted.push(best.1);
    }
    Ok((EntropyModel::new(scale, steps, pmf)?, predicted))
}
