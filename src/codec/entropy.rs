//! The probability model that ships with the weights, and the entropy coder.
//!
//! Per quality level, latent channel and *context*, a categorical distribution
//! over the quantized integers `-R..=R`, measured on the training photos by
//! `vaeproxy calibrate`. The context of an element is the size of its already
//! coded left and upper neighbours in the same channel: flat regions quantize
//! to runs of zeros and textured ones to large values, so conditioning on the
//! neighbourhood saves bits that a single per-channel histogram would spend.
//! Channels the KL term switched off always quantize to 0, get a probability
//! of ~1 there and so cost ~0 bits. Coding is ANS from `constriction`; the
//! models are rebuilt identically on both sides from the stored f32 tables.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use constriction::stream::model::DefaultContiguousCategoricalEntropyModel;
use constriction::stream::stack::DefaultAnsCoder;
use constriction::stream::Decode;
use std::collections::HashMap;

/// Quantized latents live in `-RANGE..=RANGE`; anything further out is clamped.
pub const RANGE: i32 = 63;
pub const SYMBOLS: usize = (2 * RANGE + 1) as usize;
/// Number of neighbourhood contexts, see [`context`].
pub const CONTEXTS: usize = 5;

type Model = DefaultContiguousCategoricalEntropyModel;

/// Context of element `(y, x)` of one channel's grid (`grid` is row-major with
/// width `w`; only already coded elements, left and above, are read).
pub fn context(grid: &[i32], w: usize, y: usize, x: usize) -> usize {
    let left = if x > 0 {
        grid[y * w + x - 1].unsigned_abs()
    } else {
        0
    };
    let up = if y > 0 {
        grid[(y - 1) * w + x].unsigned_abs()
    } else {
        0
    };
    match left + up {
        0 => 0,
        1 => 1,
        2 => 2,
        3..=4 => 3,
        _ => 4,
    }
}

/// Quantizer and probability tables for all quality levels.
#[derive(Debug, Clone)]
pub struct EntropyModel {
    /// Per-channel posterior scale (geometric mean sigma on the training set):
    /// the unit of the quantizer step, so that each channel is quantized
    /// relative to the noise the decoder was trained to tolerate.
    pub scale: Vec<f32>,
    /// Step multiplier per quality level, level 1 first (coarsest).
    pub steps: Vec<f32>,
    /// `[level][channel * CONTEXTS + context]` categorical models.
    models: Vec<Vec<Model>>,
    /// The f32 probabilities the models were built from, `[L, Z, CONTEXTS, SYMBOLS]`.
    pub pmf: Vec<f32>,
}

impl EntropyModel {
    pub fn new(scale: Vec<f32>, steps: Vec<f32>, pmf: Vec<f32>) -> Result<Self> {
        let z = scale.len();
        if z == 0 || steps.is_empty() || steps.len() > 255 {
            return Err(Error::Weights(
                "entropy model has no channels or levels".into(),
            ));
        }
        if pmf.len() != steps.len() * z * CONTEXTS * SYMBOLS {
            return Err(Error::Weights("entropy.pmf has the wrong shape".into()));
        }
        if scale
            .iter()
            .chain(&steps)
            .any(|v| !v.is_finite() || *v <= 0.0)
        {
            return Err(Error::Weights("entropy scales must be positive".into()));
        }
        let models = pmf
            .chunks(z * CONTEXTS * SYMBOLS)
            .enumerate()
            .map(|(l, level)| {
                level
                    .chunks(SYMBOLS)
                    .enumerate()
                    .map(|(i, p)| {
                        Model::from_floating_point_probabilities_fast(p, None).map_err(|_| {
                            Error::Weights(format!(
                                "entropy.pmf level {l} table {i} is not a distribution"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            scale,
            steps,
            models,
            pmf,
        })
    }

    pub fn levels(&self) -> usize {
        self.steps.len()
    }

    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// Quantizer step of `channel` at 1-based `level`.
    pub fn step(&self, level: usize, channel: usize) -> f32 {
        self.steps[level - 1] * self.scale[channel]
    }

    /// Reads `entropy.scale`, `entropy.steps`, `entropy.pmf` from loaded tensors.
    pub fn from_tensors(t: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |k: &str| -> Result<Vec<f32>> {
            let v = t.get(k).ok_or_else(|| {
                Error::Weights(format!("missing tensor {k} (run vaeproxy calibrate)"))
            })?;
            Ok(v.flatten_all()?.to_vec1::<f32>()?)
        };
        Self::new(
            get("entropy.scale")?,
            get("entropy.steps")?,
            get("entropy.pmf")?,
        )
    }

    /// The tensors to store next to the network weights.
    pub fn to_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let (l, z) = (self.levels(), self.channels());
        Ok(vec![
            (
                "entropy.scale".into(),
                Tensor::new(self.scale.as_slice(), &Device::Cpu)?,
            ),
            (
                "entropy.steps".into(),
                Tensor::new(self.steps.as_slice(), &Device::Cpu)?,
            ),
            (
                "entropy.pmf".into(),
                Tensor::from_vec(self.pmf.clone(), (l, z, CONTEXTS, SYMBOLS), &Device::Cpu)?,
            ),
        ])
    }

    /// Entropy-codes a `[Z, h, w]` grid of symbols (channel-major), each in `-RANGE..=RANGE`.
    pub fn encode(&self, level: usize, symbols: &[i32], h: usize, w: usize) -> Result<Vec<u32>> {
        let models = &self.models[level - 1];
        let n = h * w;
        let mut coded = Vec::with_capacity(symbols.len());
        for (c, grid) in symbols.chunks(n).enumerate() {
            for y in 0..h {
                for x in 0..w {
                    let m = &models[c * CONTEXTS + context(grid, w, y, x)];
                    coded.push(((grid[y * w + x] + RANGE) as usize, m));
                }
            }
        }
        let mut coder = DefaultAnsCoder::new();
        // ANS is a stack: encoding in reverse lets the decoder run forwards.
        coder
            .encode_symbols_reverse(coded)
            .map_err(|e| Error::Payload(format!("entropy coder: {e:?}")))?;
        coder
            .into_compressed()
            .map_err(|e| Error::Payload(format!("entropy coder: {e:?}")))
    }

    /// Decodes a `[Z, h, w]` grid. Any word sequence decodes to *some* symbols;
    /// a payload that does not end exactly where the symbols end is corrupt.
    pub fn decode(&self, level: usize, words: Vec<u32>, h: usize, w: usize) -> Result<Vec<i32>> {
        let models = &self.models[level - 1];
        let n = h * w;
        let mut coder = DefaultAnsCoder::from_compressed(words)
            .map_err(|_| Error::Payload("payload ends with a zero word".into()))?;
        let mut out = vec![0i32; self.channels() * n];
        for (c, grid) in out.chunks_mut(n).enumerate() {
            for y in 0..h {
                for x in 0..w {
                    let m = &models[c * CONTEXTS + context(grid, w, y, x)];
                    let s = coder
                        .decode_symbol(m)
                        .map_err(|e| Error::Payload(format!("entropy decoder: {e:?}")))?;
                    grid[y * w + x] = s as i32 - RANGE;
                }
            }
        }
        if !coder.is_empty() {
            return Err(Error::Payload("payload longer than its symbols".into()));
        }
        Ok(out)
    }
}

/// Builds probabilities from symbol counts, with a floor so that no symbol is
/// impossible (a rare value must cost bits, not fail).
pub fn pmf_from_counts(counts: &[u64]) -> Vec<f32> {
    let total: u64 = counts.iter().sum();
    let floor = 1e-6f64;
    let mut p: Vec<f64> = counts
        .iter()
        .map(|&c| (c as f64 + 0.05) / (total as f64 + 0.05 * counts.len() as f64))
        .map(|p| p.max(floor))
        .collect();
    let s: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= s);
    p.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three channels: one switched off, two with a discretised Gaussian (var 4)
    /// in every context.
    fn model() -> EntropyModel {
        let z = 3;
        let mut pmf = Vec::new();
        for c in 0..z {
            for _ in 0..CONTEXTS {
                let mut counts = vec![0u64; SYMBOLS];
                if c == 0 {
                    counts[RANGE as usize] = 1_000_000;
                } else {
                    for (i, v) in counts.iter_mut().enumerate() {
                        let d = (i as i32 - RANGE) as f64;
                        *v = (1000.0 * (-d * d / 8.0).exp()) as u64;
                    }
                }
                pmf.extend(pmf_from_counts(&counts));
            }
        }
        EntropyModel::new(vec![1.0; z], vec![1.0], pmf).unwrap()
    }

    #[test]
    fn round_trip_and_dead_channel_is_free() {
        let m = model();
        let (h, w) = (32, 128);
        let n = h * w;
        let mut syms = vec![0i32; n];
        syms.extend((0..2 * n).map(|i| ((i * 7919) % 9) as i32 - 4));
        let words = m.encode(1, &syms, h, w).unwrap();
        assert_eq!(m.decode(1, words, h, w).unwrap(), syms);
        // all zeros: the live channels pay -log2 p(0) per symbol, the dead one ~nothing
        let only_zero = m.encode(1, &vec![0; 3 * n], h, w).unwrap();
        let live_bits: f64 = (1..3)
            .map(|c| -(m.pmf[c * CONTEXTS * SYMBOLS + RANGE as usize] as f64).log2() * n as f64)
            .sum();
        let dead_bits = 32.0 * only_zero.len() as f64 - live_bits;
        assert!(
            dead_bits < 64.0,
            "dead channel cost {dead_bits} bits for {n} symbols"
        );
    }

    #[test]
    fn contexts_read_only_coded_neighbours() {
        let g = vec![0, 3, -1, 0, 0, 2];
        assert_eq!(context(&g, 3, 0, 0), 0);
        assert_eq!(context(&g, 3, 0, 2), 3); // left 3
        assert_eq!(context(&[9, 0], 2, 0, 1), 4); // left 9
        assert_eq!(context(&g, 3, 1, 0), 0); // up 0
        assert_eq!(context(&g, 3, 1, 2), 1); // left 0, up -1
    }

    #[test]
    fn junk_words_never_panic() {
        let m = model();
        for seed in 0..200u32 {
            let words: Vec<u32> = (0..(seed % 17))
                .map(|i| i.wrapping_mul(2654435761).wrapping_add(seed))
                .collect();
            let _ = m.decode(1, words, 2, 5);
        }
    }
}
