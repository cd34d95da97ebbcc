//! `vaeproxy train`: the reference trainer, in candle on the CPU.
//!
//! Loss: distortion (MSE in 8-bit units) + beta * KL(q(z|x) || N(0, I)) in
//! bits per pixel, with z = mu + sigma * eps. The KL weight and the noise are
//! ramped in over `warmup` steps: with the full objective from step 0 the
//! model stalls at worse than predicting each image's mean colour.
//!
//! Every random draw at step `s` comes from an RNG seeded with `(seed, s)`, so
//! `--resume` continues exactly: the checkpoint holds the weights, the AdamW
//! moments and the step, and nothing else is needed to replay the future.

use crate::model::{Config, Vae};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Hyper-parameters of a training run (also the `vaeproxy train` flags).
#[derive(Debug, Clone, clap::Args)]
pub struct TrainConfig {
    #[arg(long, default_value_t = TrainConfig::default().steps)]
    /// Steps in all (a resumed run stops here too).
    pub steps: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch)]
    /// Crops per step.
    pub batch: usize,
    #[arg(long, default_value_t = TrainConfig::default().crop)]
    /// Crop side, pixels.
    pub crop: usize,
    /// Weight of the KL term (bits per pixel) against MSE in 8-bit units.
    #[arg(long, default_value_t = TrainConfig::default().beta)]
    pub beta: f64,
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    /// Peak learning rate (Adam), cosine-decayed to a tenth.
    pub lr: f64,
    /// Steps over which the KL weight and the sampling noise ramp from 0 to 1.
    #[arg(long, default_value_t = TrainConfig::default().warmup)]
    pub warmup: usize,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    /// Seed of crops and noise.
    pub seed: u64,
    /// Seconds between checkpoints.
    #[arg(long, default_value_t = TrainConfig::default().checkpoint_secs)]
    pub checkpoint_secs: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 20_000,
            batch: 16,
            crop: 128,
            beta: 150.0,
            lr: 3e-4,
            warmup: 2000,
            seed: 1,
            checkpoint_secs: 180,
        }
    }
}

/// Numbers reported after each step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// The step just taken.
    pub step: usize,
    /// Total loss.
    pub loss: f32,
    /// Reconstruction MSE in 8-bit units.
    pub mse255: f32,
    /// KL term, bits per pixel.
    pub kl_bpp: f32,
    /// Learning rate used.
    pub lr: f64,
}

/// AdamW with its moments kept as named tensors, so they can be checkpointed.
struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
}

impl AdamW {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(varmap: &VarMap) -> Result<Self> {
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            // a poisoned lock still holds every variable: the map is only read here
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { vars, m, v, t: 0 })
    }

    fn step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        let grads = loss.backward()?;
        self.t += 1;
        let (bc1, bc2) = (
            1.0 - Self::B1.powi(self.t as i32),
            1.0 - Self::B2.powi(self.t as i32),
        );
        // global-norm clipping at 5, as the PyTorch trainer does
        let mut sq = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let clip = (5.0 / (sq.sqrt() + 1e-6)).min(1.0);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * clip)?;
            self.m[i] = ((&self.m[i] * Self::B1)? + (&g * (1.0 - Self::B1))?)?;
            self.v[i] = ((&self.v[i] * Self::B2)? + (g.sqr()? * (1.0 - Self::B2))?)?;
            let mh = (&self.m[i] / bc1)?;
            let vh = (&self.v[i] / bc2)?;
            let upd = (mh / (vh.sqrt()? + Self::EPS)?)?;
            var.set(&(var.as_tensor() - (upd * lr)?)?)?;
        }
        Ok(())
    }
}

/// Learning rate: constant through warmup, then cosine decay to 10 %.
fn lr_at(cfg: &TrainConfig, step: usize) -> f64 {
    if step <= cfg.warmup {
        return cfg.lr;
    }
    let p = step as f64 / cfg.steps.max(1) as f64;
    cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// Loads every image of [`crate::codec::image_files`] in `dir` as RGB.
pub fn load_images(dir: &Path) -> crate::Result<Vec<RgbImage>> {
    crate::codec::image_files(dir)?
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).map_err(|source| crate::Error::Io {
                path: f.display().to_string(),
                source,
            })?;
            crate::codec::read_image(&bytes, crate::codec::DEFAULT_MAX_PIXELS)
                .map_err(|e| crate::Error::Image(format!("{}: {e}", f.display())))
        })
        .collect()
}

/// A batch of random crops (randomly downscaled 1-2x first, randomly flipped).
fn make_batch(images: &[RgbImage], cfg: &TrainConfig, rng: &mut impl Rng) -> Result<Tensor> {
    let s = cfg.crop;
    let mut data = Vec::with_capacity(cfg.batch * 3 * s * s);
    for _ in 0..cfg.batch {
        let im = &images[rng.random_range(0..images.len())];
        let (w, h) = (im.width() as usize, im.height() as usize);
        let max_scale = 2.0f64
            .min(w as f64 / s as f64)
            .min(h as f64 / s as f64)
            .max(1.0);
        let scale = rng.random_range(1.0..=max_scale);
        let side = ((s as f64 * scale) as usize).min(w).min(h);
        let (x0, y0) = (
            rng.random_range(0..=w - side),
            rng.random_range(0..=h - side),
        );
        let mut crop =
            image::imageops::crop_imm(im, x0 as u32, y0 as u32, side as u32, side as u32)
                .to_image();
        if side != s {
            crop = image::imageops::resize(
                &crop,
                s as u32,
                s as u32,
                image::imageops::FilterType::Triangle,
            );
        }
        if rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut crop);
        }
        if rng.random_bool(0.5) {
            image::imageops::flip_vertical_in_place(&mut crop);
        }
        let raw = crop.as_raw();
        for c in 0..3 {
            data.extend((0..s * s).map(|i| raw[i * 3 + c] as f32 / 255.0));
        }
    }
    Tensor::from_vec(data, (cfg.batch, 3, s, s), &Device::Cpu)
}

/// The beta-VAE loss of one batch: `(loss, mse255, kl_bpp)`.
pub fn vae_loss(
    vae: &Vae,
    x: &Tensor,
    beta: f64,
    noise: f64,
    eps: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (mu, logvar) = vae.encode(x)?;
    let logvar = logvar.clamp(-12f32, 6f32)?;
    let sigma = (&logvar * 0.5)?.exp()?;
    let z = (&mu + ((sigma * eps)? * noise)?)?;
    let y = vae.decode(&z)?;
    let mse255 = ((y - x)?.sqr()?.mean_all()? * (255.0 * 255.0))?;
    let kl = ((((mu.sqr()? + logvar.exp()?)? - 1.0)? - &logvar)? * 0.5)?;
    let (n, _, h, w) = x.dims4()?;
    let kl_bpp = (kl.sum_all()? / (std::f64::consts::LN_2 * (n * h * w) as f64))?;
    let loss = (&mse255 + (&kl_bpp * beta)?)?;
    Ok((loss, mse255, kl_bpp))
}

/// A training run in progress. `run` drives it; checkpoints go to `<out>.ckpt.safetensors`.
pub struct Trainer {
    /// The run's hyper-parameters.
    pub cfg: TrainConfig,
    /// The network being trained.
    pub vae: Vae,
    varmap: VarMap,
    opt: AdamW,
    /// Steps taken so far.
    pub step: usize,
    out: PathBuf,
}

impl Trainer {
    /// A fresh model, or the checkpoint at `<out>.ckpt.safetensors` when `resume`.
    pub fn new(cfg: TrainConfig, out: &Path, resume: bool) -> Result<Self> {
        let varmap = VarMap::new();
        // Initialise deterministically from the seed.
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let vae = Vae::new(vb, Config::default())?;
        let mut init_rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        {
            let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for name in names {
                let var = &data[name];
                let t = var.as_tensor();
                let n = t.elem_count();
                if name.ends_with(".beta") {
                    continue; // GDN offsets start at 1
                }
                // PyTorch's default: uniform in +-1/sqrt(fan_in) for conv weights and
                // biases (fan_in of the layer), GDN gammas small and positive.
                let fan_in = match t.rank() {
                    4 => t.dims()[1] * t.dims()[2] * t.dims()[3],
                    _ => bias_fan_in(&data, name),
                };
                let bound = (1.0 / fan_in as f64).sqrt();
                let vals: Vec<f32> = if name.ends_with("gamma") {
                    (0..n).map(|_| init_rng.random_range(0.0..0.02)).collect()
                } else {
                    (0..n)
                        .map(|_| init_rng.random_range(-bound..bound) as f32)
                        .collect()
                };
                var.set(&Tensor::from_vec(vals, t.shape(), &Device::Cpu)?)?;
            }
        }
        let mut opt = AdamW::new(&varmap)?;
        let mut step = 0;
        let ckpt = ckpt_path(out);
        if resume && ckpt.exists() {
            let t = candle_core::safetensors::load(&ckpt, &Device::Cpu)?;
            for (i, (name, var)) in opt.vars.iter().enumerate() {
                let get = |k: String| {
                    t.get(&k)
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {k}")))
                };
                var.set(&get(name.clone())?)?;
                opt.m[i] = get(format!("adam.m.{name}"))?;
                opt.v[i] = get(format!("adam.v.{name}"))?;
            }
            step = get_step(&t)?;
            opt.t = step;
        }
        Ok(Self {
            cfg,
            vae,
            varmap,
            opt,
            step,
            out: out.to_path_buf(),
        })
    }

    /// One optimisation step on a batch drawn from `images`.
    pub fn train_step(&mut self, images: &[RgbImage]) -> Result<StepStats> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.cfg.seed ^ (self.step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let x = make_batch(images, &self.cfg, &mut rng)?;
        let c = self.cfg.crop / crate::model::DOWNSCALE;
        let n = self.cfg.batch * self.vae.config.z * c * c;
        let eps: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        let eps = Tensor::from_vec(eps, (self.cfg.batch, self.vae.config.z, c, c), &Device::Cpu)?;
        let ramp = (self.step as f64 / self.cfg.warmup.max(1) as f64).min(1.0);
        let (loss, mse, kl) = vae_loss(&self.vae, &x, self.cfg.beta * ramp, ramp, &eps)?;
        let lr = lr_at(&self.cfg, self.step);
        self.opt.step(&loss, lr)?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss: loss.to_scalar()?,
            mse255: mse.to_scalar()?,
            kl_bpp: kl.to_scalar()?,
            lr,
        })
    }

    /// Writes the checkpoint atomically (temp file + rename): a run killed
    /// mid-write keeps the previous checkpoint.
    pub fn checkpoint(&self) -> Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, var)) in self.opt.vars.iter().enumerate() {
            t.insert(name.clone(), var.as_tensor().clone());
            t.insert(format!("adam.m.{name}"), self.opt.m[i].clone());
            t.insert(format!("adam.v.{name}"), self.opt.v[i].clone());
        }
        t.insert(
            "train.step".into(),
            Tensor::new(&[self.step as u32], &Device::Cpu)?,
        );
        let path = ckpt_path(&self.out);
        let tmp = path.with_extension("tmp");
        candle_core::safetensors::save(&t, &tmp)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The network weights alone, with the config in the metadata.
    pub fn export_network(&self, path: &Path) -> Result<()> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let tensors: HashMap<String, Tensor> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        save_with_config(&tensors, &self.vae.config, path)
    }
}

/// The fan-in of the conv a bias belongs to (its sibling `weight`).
fn bias_fan_in(vars: &HashMap<String, Var>, bias: &str) -> usize {
    let w = format!("{}weight", bias.trim_end_matches("bias"));
    vars.get(&w)
        .map(|v| v.dims().iter().skip(1).product())
        .unwrap_or(1)
}

fn get_step(t: &HashMap<String, Tensor>) -> Result<usize> {
    let s = t
        .get("train.step")
        .ok_or_else(|| candle_core::Error::Msg("checkpoint lacks train.step".into()))?;
    Ok(s.to_vec1::<u32>()?[0] as usize)
}

/// Path of the resumable checkpoint for an output name.
pub fn ckpt_path(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ckpt.safetensors", out.display()))
}

/// Saves tensors as safetensors with the model config in the metadata.
pub fn save_with_config(
    tensors: &HashMap<String, Tensor>,
    cfg: &Config,
    path: &Path,
) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let views: Vec<(String, Tensor)> = names
        .iter()
        .map(|k| Ok(((*k).clone(), tensors[*k].contiguous()?)))
        .collect::<Result<_>>()?;
    let meta = HashMap::from([(Config::METADATA_KEY.to_string(), cfg.to_metadata())]);
    let tmp = path.with_extension("tmp");
    let bytes = safetensors::serialize(views.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the optimiser state is megabytes of tensors: the position is what matters
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}
