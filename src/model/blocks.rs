//! The building blocks of the VAE, one struct per block.
//!
//! Every block takes its weights from a `VarBuilder` path, so the names in the
//! safetensors file are exactly the `vb.pp(..)` paths used here, and the
//! PyTorch trainer (`scripts/train_torch.py`) mirrors them one to one.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

/// A 2-D convolution with "same" padding for odd kernels.
pub fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    candle_nn::conv2d(cin, cout, k, cfg, vb)
}

/// Simplified generalized divisive normalization (Johnston et al. 2019):
/// `y = x / (beta + gamma * |x|)` per pixel, mixing channels through `gamma`.
///
/// Learned codecs use GDN instead of plain ReLUs because it decorrelates the
/// channels, which is what makes a per-channel entropy model cheap to code; the
/// "simplified" form has no square root, so it costs about one 1x1 conv.
/// `inverse` turns it into the decoder's IGDN (`y = x * (beta + gamma * |x|)`).
#[derive(Debug, Clone)]
pub struct Gdn {
    /// Channel-mixing weights, `[C, C, 1, 1]`, used as `|gamma|` to stay positive.
    gamma: Tensor,
    /// Per-channel offset, `[C]`, used as `|beta| + 1e-6` so the divisor never hits 0.
    beta: Tensor,
    inverse: bool,
}

impl Gdn {
    /// Weights under `vb` (`beta`, `gamma`); `inverse` for the decoder's IGDN.
    pub fn new(vb: VarBuilder, channels: usize, inverse: bool) -> Result<Self> {
        let beta = vb.get_with_hints(channels, "beta", candle_nn::Init::Const(1.0))?;
        let gamma = vb.get_with_hints(
            (channels, channels, 1, 1),
            "gamma",
            candle_nn::Init::Uniform { lo: 0.0, up: 0.02 },
        )?;
        Ok(Self {
            gamma,
            beta,
            inverse,
        })
    }
}

impl Module for Gdn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.beta.dim(0)?;
        let beta = (self.beta.abs()? + 1e-6)?.reshape((1, c, 1, 1))?;
        let norm = x
            .abs()?
            .conv2d(&self.gamma.abs()?, 0, 1, 1, 1)?
            .broadcast_add(&beta)?;
        if self.inverse {
            x * norm
        } else {
            x / norm
        }
    }
}

/// Two 3x3 convolutions with a ReLU between them and an identity skip: the
/// only place where the model spends FLOPs on spatial context, always at 1/8
/// or 1/16 resolution where a pixel of the feature map is cheap.
#[derive(Debug, Clone)]
pub struct ResBlock {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl ResBlock {
    /// Weights under `vb` (`conv1`, `conv2`).
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv1: conv(vb.pp("conv1"), channels, channels, 3)?,
            conv2: conv(vb.pp("conv2"), channels, channels, 3)?,
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(x)?.relu()?;
        x + self.conv2.forward(&h)?
    }
}

/// Space-to-depth by 2 followed by a 1x1 conv: a learned stride-2 downsampling
/// that costs a quarter of a strided 3x3 conv.
#[derive(Debug, Clone)]
pub struct Down {
    proj: Conv2d,
    gdn: Gdn,
}

impl Down {
    /// Weights under `vb` (`proj`, `gdn`).
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            proj: conv(vb.pp("proj"), cin * 4, cout, 1)?,
            gdn: Gdn::new(vb.pp("gdn"), cout, false)?,
        })
    }
}

impl Module for Down {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = candle_nn::ops::pixel_unshuffle(x, 2)?;
        self.gdn.forward(&self.proj.forward(&x)?)
    }
}

/// 1x1 conv to four times the channels followed by depth-to-space by 2: the
/// decoder's upsampling, the mirror of [`Down`].
#[derive(Debug, Clone)]
pub struct Up {
    proj: Conv2d,
    igdn: Gdn,
}

impl Up {
    /// Weights under `vb` (`proj`, `igdn`).
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            proj: conv(vb.pp("proj"), cin, cout * 4, 1)?,
            igdn: Gdn::new(vb.pp("igdn"), cout, true)?,
        })
    }
}

impl Module for Up {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = candle_nn::ops::pixel_shuffle(&self.proj.forward(x)?, 2)?;
        self.igdn.forward(&x)
    }
}
