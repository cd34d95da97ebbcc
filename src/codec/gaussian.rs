//! Codec v2's entropy model as the coder sees it: integer probability tables,
//! so encoder and decoder agree bit for bit on every platform.
//!
//! - `y` (the latent): each element `q = round(y_l - mean_l)` is coded with
//!   the table of a zero-mean Gaussian whose scale is the hyper-decoder's
//!   `exp(log_scale + gain)`, discretised to one of [`ScaleIndex`]'s
//!   log-spaced scales. Only that index has to be reproduced exactly by the
//!   decoder; the mean only shifts the reconstruction.
//! - `z` (side information): one table per channel, the learned factorized
//!   density tabulated at export.
//!
//! Every table covers `-R..=R` and ends with an escape symbol; a value beyond
//! `R` is sent as the escape and then its excess in raw bits (uniform models),
//! so any integer round-trips while a sane one costs nothing extra. The
//! tables come from `scripts/train_codec.py --export` (probabilities summing
//! to 2^24, each at least 1); nothing here evaluates a CDF.

use crate::error::{Error, Result};
use constriction::stream::model::{DefaultContiguousCategoricalEntropyModel, DefaultUniformModel};
use constriction::stream::stack::DefaultAnsCoder;
use constriction::stream::{Decode, Encode};

type Model = DefaultContiguousCategoricalEntropyModel;

/// Bits of a value's excess beyond the table sent per raw chunk.
const RAW_BITS: u32 = 16;

/// A set of categorical tables over `-R..=R` plus an escape.
#[derive(Debug, Clone)]
pub struct Tables {
    models: Vec<Model>,
    radius: Vec<i32>,
}

impl Tables {
    /// `pmf` holds the tables one after another, table `i` with
    /// `2 * radius[i] + 2` entries (the last is the escape), each summing to 2^24.
    pub fn new(radius: &[i64], pmf: &[i64]) -> Result<Self> {
        let bad = |why: String| Error::Weights(format!("entropy table: {why}"));
        let (mut models, mut radii, mut at) = (Vec::new(), Vec::new(), 0usize);
        for (i, &r) in radius.iter().enumerate() {
            if !(1..=1 << 16).contains(&r) {
                return Err(bad(format!("table {i} has radius {r}")));
            }
            let n = 2 * r as usize + 2;
            let p = pmf
                .get(at..at + n)
                .ok_or_else(|| bad(format!("table {i} runs past the data")))?;
            let p: Vec<u32> = p
                .iter()
                .map(|&v| u32::try_from(v).ok().filter(|v| *v > 0))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("table {i} has a probability out of range")))?;
            let m = Model::from_nonzero_fixed_point_probabilities(&p, false)
                .map_err(|()| bad(format!("table {i} does not sum to 2^24")))?;
            models.push(m);
            radii.push(r as i32);
            at += n;
        }
        if at != pmf.len() || models.is_empty() {
            return Err(bad("sizes do not match the radii".into()));
        }
        Ok(Self {
            models,
            radius: radii,
        })
    }

    /// Number of tables.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether there are no tables.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Pushes `q` with table `t`. ANS is a stack: callers push in the reverse
    /// of the order they will pop.
    pub fn encode(&self, coder: &mut DefaultAnsCoder, t: usize, q: i32) -> Result<()> {
        let r = self.radius[t];
        let fail = |_| Error::Payload("entropy coder failed".into());
        if q.unsigned_abs() <= r as u32 {
            return coder
                .encode_symbol((q + r) as usize, &self.models[t])
                .map_err(fail);
        }
        // Escape: the excess |q| - r - 1 in RAW_BITS chunks, then their count
        // and the sign, each uniform (pushed so they pop after the escape).
        let excess = q.unsigned_abs() - r as u32 - 1;
        let chunks = if excess == 0 {
            1
        } else {
            (32 - excess.leading_zeros()).div_ceil(RAW_BITS)
        };
        let raw = DefaultUniformModel::new(1 << RAW_BITS);
        for i in 0..chunks {
            let chunk = (excess >> (i * RAW_BITS)) & ((1 << RAW_BITS) - 1);
            coder.encode_symbol(chunk as usize, raw).map_err(fail)?;
        }
        coder
            .encode_symbol((chunks - 1) as usize, DefaultUniformModel::new(2))
            .map_err(fail)?;
        coder
            .encode_symbol((q < 0) as usize, DefaultUniformModel::new(2))
            .map_err(fail)?;
        coder
            .encode_symbol(2 * r as usize + 1, &self.models[t])
            .map_err(fail)
    }

    /// Pops one value coded with table `t`.
    pub fn decode(&self, coder: &mut DefaultAnsCoder, t: usize) -> Result<i32> {
        let r = self.radius[t];
        let fail = |_| Error::Payload("entropy decoder ran out of data".into());
        let s = coder.decode_symbol(&self.models[t]).map_err(fail)? as i32;
        if s <= 2 * r {
            return Ok(s - r);
        }
        let negative = coder
            .decode_symbol(DefaultUniformModel::new(2))
            .map_err(fail)?
            == 1;
        let chunks = coder
            .decode_symbol(DefaultUniformModel::new(2))
            .map_err(fail)? as u32
            + 1;
        let raw = DefaultUniformModel::new(1 << RAW_BITS);
        let mut excess = 0u32;
        for i in (0..chunks).rev() {
            let chunk = coder.decode_symbol(raw).map_err(fail)? as u32;
            excess |= chunk << (i * RAW_BITS);
        }
        let magnitude = (excess as i64 + r as i64 + 1).min(i32::MAX as i64) as i32;
        Ok(if negative { -magnitude } else { magnitude })
    }
}

/// Which Gaussian table codes an element: the first of the log-spaced scales
/// at or above its scale (rounding up wastes a little rate; rounding down
/// would make large values expensive). Computed in plain f32 from the stored
/// values, in the same order on every platform, so the decoder's index is the
/// encoder's.
#[derive(Debug, Clone, Copy)]
pub struct ScaleIndex {
    first: f32,
    per_step: f32,
    last: usize,
}

impl ScaleIndex {
    /// `log_scales`: the natural logs of the tables' scales, evenly spaced, ascending.
    pub fn new(log_scales: &[f32]) -> Result<Self> {
        let n = log_scales.len();
        let ok = n >= 2
            && log_scales.iter().all(|v| v.is_finite())
            && log_scales.windows(2).all(|w| w[1] > w[0]);
        if !ok {
            return Err(Error::Weights(
                "entropy.log_scales must be finite and ascending".into(),
            ));
        }
        Ok(Self {
            first: log_scales[0],
            per_step: (n - 1) as f32 / (log_scales[n - 1] - log_scales[0]),
            last: n - 1,
        })
    }

    /// The table for an element whose scale is `exp(log_scale)`.
    pub fn of(&self, log_scale: f32) -> usize {
        let t = ((log_scale - self.first) * self.per_step).ceil();
        if t.is_nan() || t <= 0.0 {
            0
        } else if t >= self.last as f32 {
            self.last
        } else {
            t as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tables: a peaked one (radius 1) and a flat one (radius 3).
    fn tables() -> Tables {
        let total = 1i64 << 24;
        let peaked = [100, total - 300, 100, 100];
        let flat: Vec<i64> = (0..8)
            .map(|i| {
                if i == 0 {
                    total - 7 * (total / 8)
                } else {
                    total / 8
                }
            })
            .collect();
        let pmf: Vec<i64> = peaked.iter().copied().chain(flat).collect();
        Tables::new(&[1, 3], &pmf).unwrap()
    }

    #[test]
    fn values_round_trip_with_escapes() {
        let t = tables();
        let values: Vec<(usize, i32)> = [0, 1, -1, 2, -2, 3, 70_000, -5, i32::MAX, -i32::MAX, 4]
            .iter()
            .enumerate()
            .map(|(i, &q)| (i % 2, q))
            .collect();
        let mut coder = DefaultAnsCoder::new();
        for &(ti, q) in values.iter().rev() {
            t.encode(&mut coder, ti, q).unwrap();
        }
        let words = coder.into_compressed().unwrap();
        let mut dec = DefaultAnsCoder::from_compressed(words).unwrap();
        for &(ti, q) in &values {
            assert_eq!(t.decode(&mut dec, ti).unwrap(), q);
        }
    }

    #[test]
    fn tables_are_checked() {
        let total = 1i64 << 24;
        assert!(Tables::new(&[1], &[1, total - 3, 1, 1]).is_ok());
        assert!(Tables::new(&[1], &[1, total - 3, 1, 2]).is_err(), "sum");
        assert!(Tables::new(&[1], &[0, total - 2, 1, 1]).is_err(), "zero");
        assert!(Tables::new(&[1], &[1, total - 3, 1]).is_err(), "short");
        assert!(Tables::new(&[0], &[total]).is_err(), "radius");
        assert!(Tables::new(&[1], &[1, total - 3, 1, 1, 5]).is_err(), "long");
    }

    #[test]
    fn scale_index_rounds_up_and_clamps() {
        let ls: Vec<f32> = (0..5).map(|i| i as f32 * 0.5 - 1.0).collect(); // -1, -0.5, 0, 0.5, 1
        let s = ScaleIndex::new(&ls).unwrap();
        assert_eq!(s.of(-3.0), 0);
        assert_eq!(s.of(-1.0), 0);
        assert_eq!(s.of(-0.9), 1);
        assert_eq!(s.of(0.0), 2);
        assert_eq!(s.of(0.1), 3);
        assert_eq!(s.of(9.0), 4);
        assert_eq!(s.of(f32::NAN), 0);
        assert!(ScaleIndex::new(&[0.0, 0.0]).is_err());
    }
}
