//! `vaeproxy train` and `calibrate`: the v1 VAE's trainer loop with its CSV
//! log and checkpoints, and the entropy-model calibration that makes a
//! shippable weights file.

use super::{read_file, Result, ToolError};
use crate::codec::{self, calibrate, quality};
use crate::model::train::{self, TrainConfig, Trainer};
use crate::model::Vae;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Measures the entropy model of `vae` (whose safetensors bytes are
/// `network`) on up to `max_images` training photos from `data`, picks the
/// quality levels on the held-out photos in `val`, and writes the weights
/// file to `out`. Prints the frontier it measured to stderr.
pub fn calibrate_and_save(
    vae: &Vae,
    network: &[u8],
    data: &Path,
    val: &Path,
    out: &Path,
    max_images: usize,
) -> Result<()> {
    let mut train_imgs = train::load_images(data).map_err(ToolError::codec(data.display()))?;
    // an even spread over the sorted list, so every package is represented
    let stride = train_imgs.len().div_ceil(max_images.max(1));
    train_imgs = train_imgs.into_iter().step_by(stride.max(1)).collect();
    let val_imgs = train::load_images(val).map_err(ToolError::codec(val.display()))?;
    eprintln!(
        "calibrating on {} training and {} validation photos",
        train_imgs.len(),
        val_imgs.len()
    );
    let (em, frontier) =
        calibrate::calibrate(vae, &train_imgs, &val_imgs, &calibrate::DEFAULT_TARGETS)
            .map_err(ToolError::codec("calibrating"))?;
    eprintln!("rate-distortion frontier (validation bpp, PSNR of centre crops):");
    for p in &frontier {
        let level = em.steps.iter().position(|&s| s == p.m);
        let mark = level.map_or(String::new(), |l| format!("  <- level {}", l + 1));
        eprintln!(
            "  step x{:.3}: bpp {:.4}, psnr {:.2} dB{mark}",
            p.m, p.bpp, p.psnr
        );
    }
    let mut tensors = candle_core::safetensors::load_buffer(network, &candle_core::Device::Cpu)?;
    tensors.retain(|k, _| !k.starts_with("entropy."));
    let entropy = em
        .to_tensors()
        .map_err(ToolError::codec("the entropy model"))?;
    tensors.extend(entropy);
    train::save_with_config(&tensors, &vae.config, out)?;
    let id = codec::model_id(&read_file(out)?);
    eprintln!("wrote {} (model id {id})", out.display());
    Ok(())
}

/// Trains from `out`'s checkpoint (with `resume`) or from scratch until
/// `cfg.steps`, appending one CSV row per step to `OUT.csv` and
/// checkpointing every `cfg.checkpoint_secs`; then exports the network and,
/// with `val`, calibrates it into `OUT.safetensors`.
pub fn train(
    cfg: TrainConfig,
    data: &Path,
    val: Option<&Path>,
    out: &Path,
    resume: bool,
) -> Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    let images = train::load_images(data).map_err(ToolError::codec(data.display()))?;
    let mut trainer = Trainer::new(cfg.clone(), out, resume)?;
    let csv_path = PathBuf::from(format!("{}.csv", out.display()));
    let fresh = !resume || !csv_path.exists();
    let mut csv = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&csv_path)
        .map_err(ToolError::io(&csv_path))?;
    if fresh {
        writeln!(csv, "step,loss,mse255,psnr,kl_bpp,lr,img_per_s")
            .map_err(ToolError::io(&csv_path))?;
    }
    let bar = ProgressBar::new(cfg.steps as u64);
    // a constant template: it parses, or the build's own test fails
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    bar.set_position(trainer.step as u64);
    let started = Instant::now();
    let first = trainer.step;
    let mut last_ckpt = Instant::now();
    while trainer.step < cfg.steps {
        let s = trainer.train_step(&images)?;
        let ips = ((s.step - first) * cfg.batch) as f64 / started.elapsed().as_secs_f64();
        let psnr = quality::psnr_from_mse(f64::from(s.mse255).max(1e-9));
        bar.set_position(s.step as u64);
        bar.set_message(format!(
            "loss {:.2} mse {:.1} ({psnr:.2} dB) kl {:.3} bpp {ips:.1} img/s",
            s.loss, s.mse255, s.kl_bpp
        ));
        writeln!(
            csv,
            "{},{},{},{psnr:.3},{},{:e},{ips:.2}",
            s.step, s.loss, s.mse255, s.kl_bpp, s.lr
        )
        .map_err(ToolError::io(&csv_path))?;
        if last_ckpt.elapsed().as_secs() >= cfg.checkpoint_secs || trainer.step == cfg.steps {
            trainer.checkpoint()?;
            last_ckpt = Instant::now();
        }
    }
    bar.finish();
    let net = PathBuf::from(format!("{}.network.safetensors", out.display()));
    trainer.export_network(&net)?;
    let final_path = PathBuf::from(format!("{}.safetensors", out.display()));
    match val {
        Some(val) => {
            calibrate_and_save(&trainer.vae, &read_file(&net)?, data, val, &final_path, 120)
        }
        None => {
            eprintln!(
                "no --val: wrote network only to {}; run vaeproxy calibrate",
                net.display()
            );
            Ok(())
        }
    }
}
