//! The probability model that ships with the weights, and the entropy coder.
//!
//! Per quality level and latent channel, a categorical distribution over the
//! quantized integers `-R..=R`, measured on the training photos by
//! `vaeproxy calibrate`. Channels the KL term switched off always quantize to
//! 0, get a probability of ~1 there and so cost ~0 bits. Coding is ANS from
//! `constriction`; the models are rebuilt identically on both sides from the
//! stored f32 probabilities.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use constriction::stream::model::DefaultContiguousCategoricalEntropyModel;
use constriction::stream::stack::DefaultAnsCoder;
use constriction::stream::Decode;
use std::collections::HashMap;

/// Quantized latents live in `-RANGE..=RANGE`; anything further out is clamped.
pub const RANGE: i32 = 63;
pub const SYMBOLS: usize = (2 * RANGE + 1) as usize;

/// Quantizer and probability tables for all quality levels.
#[derive(Debug, Clone)]
pub struct EntropyModel {
    /// Per-channel posterior scale (geometric mean sigma on the training set):
    /// the unit of the quantizer step, so that each channel is quantized
    /// relative to the noise the decoder was trained to tolerate.
    pub scale: Vec<f32>,
    /// Step multiplier per quality level, level 1 first (coarsest).
    pub steps: Vec<f32>,
    /// `[level][channel]` categorical models.
    models: Vec<Vec<DefaultContiguousCategoricalEntropyModel>>,
    /// The f32 probabilities the models were built from, `[L, Z, SYMBOLS]`.
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
        if pmf.len() != steps.len() * z * SYMBOLS {
            return Err(Error::Weights("entropy.pmf has the wrong shape".into()));
        }
        if scale
            .iter()
            .chain(&steps)
            .any(|v| !v.is_finite() || *v <= 0.0)
        {
            return Err(Error::Weights("entropy scales must be positive".into()));
        }
        let mut models = Vec::with_capacity(steps.len());
        for l in 0..steps.len() {
            let mut per_channel = Vec::with_capacity(z);
            for c in 0..z {
                let p = &pmf[(l * z + c) * SYMBOLS..(l * z + c + 1) * SYMBOLS];
                let m = DefaultContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast(
                    p, None,
                )
                .map_err(|_| Error::Weights(format!("entropy.pmf level {l} channel {c} is not a distribution")))?;
                per_channel.push(m);
            }
            models.push(per_channel);
        }
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
                Tensor::from_vec(self.pmf.clone(), (l, z, SYMBOLS), &Device::Cpu)?,
            ),
        ])
    }

    /// Entropy-codes symbols laid out channel-major (`[Z][n]`), each in `-RANGE..=RANGE`.
    pub fn encode(&self, level: usize, symbols: &[i32]) -> Result<Vec<u32>> {
        let z = self.channels();
        let n = symbols.len() / z;
        let mut coder = DefaultAnsCoder::new();
        // ANS is a stack: encode the last channel first so decoding runs forwards.
        for c in (0..z).rev() {
            let syms = symbols[c * n..(c + 1) * n]
                .iter()
                .map(|&q| (q + RANGE) as usize);
            coder
                .encode_iid_symbols_reverse(syms, &self.models[level - 1][c])
                .map_err(|e| Error::Payload(format!("entropy coder: {e:?}")))?;
        }
        coder
            .into_compressed()
            .map_err(|e| Error::Payload(format!("entropy coder: {e:?}")))
    }

    /// Decodes `n` symbols per channel. Any word sequence decodes to *some*
    /// symbols; a payload that does not end exactly where the symbols end is
    /// reported as corrupt.
    pub fn decode(&self, level: usize, words: Vec<u32>, n: usize) -> Result<Vec<i32>> {
        let z = self.channels();
        let mut coder = DefaultAnsCoder::from_compressed(words)
            .map_err(|_| Error::Payload("payload ends with a zero word".into()))?;
        let mut out = Vec::with_capacity(z * n);
        for c in 0..z {
            for s in coder.decode_iid_symbols(n, &self.models[level - 1][c]) {
                let s = s.map_err(|e| Error::Payload(format!("entropy decoder: {e:?}")))?;
                out.push(s as i32 - RANGE);
            }
        }
        if !coder.is_empty() {
            return Err(Error::Payload("payload longer than its symbols".into()));
        }
        Ok(out)
    }
}

/// Builds per-channel probabilities from symbol counts, with a floor so that
/// no symbol is impossible (a rare value must cost bits, not fail).
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

    fn model() -> EntropyModel {
        let z = 3;
        let mut pmf = Vec::new();
        for c in 0..z {
            let mut counts = vec![0u64; SYMBOLS];
            if c == 0 {
                counts[RANGE as usize] = 1_000_000; // a switched-off channel
            } else {
                for (i, v) in counts.iter_mut().enumerate() {
                    let d = (i as i32 - RANGE) as f64;
                    *v = (1000.0 * (-d * d / 8.0).exp()) as u64;
                }
            }
            pmf.extend(pmf_from_counts(&counts));
        }
        EntropyModel::new(vec![1.0; z], vec![1.0], pmf).unwrap()
    }

    #[test]
    fn round_trip_and_dead_channel_is_free() {
        let m = model();
        let n = 4096;
        let mut syms = vec![0i32; n];
        syms.extend((0..2 * n).map(|i| ((i * 7919) % 9) as i32 - 4));
        let words = m.encode(1, &syms).unwrap();
        assert_eq!(m.decode(1, words.clone(), n).unwrap(), syms);
        // all zeros: the live channels pay -log2 p(0) per symbol, the dead one ~nothing
        let only_zero = m.encode(1, &vec![0; 3 * n]).unwrap();
        let live_bits: f64 = (1..3)
            .map(|c| -(m.pmf[c * SYMBOLS + RANGE as usize] as f64).log2() * n as f64)
            .sum();
        let dead_bits = 32.0 * only_zero.len() as f64 - live_bits;
        assert!(
            dead_bits < 64.0,
            "dead channel cost {dead_bits} bits for {n} symbols"
        );
    }

    #[test]
    fn junk_words_never_panic() {
        let m = model();
        for seed in 0..200u32 {
            let words: Vec<u32> = (0..(seed % 17))
                .map(|i| i.wrapping_mul(2654435761).wrapping_add(seed))
                .collect();
            let _ = m.decode(1, words, 10);
        }
    }
}
