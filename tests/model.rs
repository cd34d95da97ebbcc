//! The candle model against PyTorch, and the candle trainer's guarantees.

use candle_core::{DType, Device, Tensor};
use std::path::Path;
use vaeproxy::model::train::{ckpt_path, TrainConfig, Trainer};
use vaeproxy::model::Vae;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (
        a.to_dtype(DType::F32).unwrap(),
        b.to_dtype(DType::F32).unwrap(),
    );
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// tests/data/parity.safetensors comes from scripts/make_parity_fixture.py:
/// PyTorch weights, an input and PyTorch's outputs under the same names.
#[test]
fn candle_forward_matches_pytorch() {
    let bytes = std::fs::read("tests/data/parity.safetensors").unwrap();
    let vae = Vae::from_safetensors(&bytes).unwrap();
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let (mu, logvar) = vae.encode(&t["test.x"]).unwrap();
    assert!(max_diff(&mu, &t["test.mu"]) < 1e-4, "mu differs");
    assert!(
        max_diff(&logvar, &t["test.logvar"]) < 1e-4,
        "logvar differs"
    );
    let y = vae.decode(&mu).unwrap();
    assert!(max_diff(&y, &t["test.y"]) < 1e-4, "decoded image differs");
}

/// tests/data/hyperprior-parity.safetensors comes from
/// scripts/make_hyperprior_fixture.py: a narrow codec v2 network from
/// scripts/train_codec.py, an input and PyTorch's output of each transform.
#[test]
fn hyperprior_forward_matches_pytorch() {
    use candle_core::Module;
    use vaeproxy::model::hyperprior::Hyperprior;
    let bytes = std::fs::read("tests/data/hyperprior-parity.safetensors").unwrap();
    let m = Hyperprior::from_safetensors(&bytes).unwrap();
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let y = m.analysis.forward(&t["test.x"]).unwrap();
    assert!(max_diff(&y, &t["test.y"]) < 1e-4, "y differs");
    let z = m.hyper_analysis.forward(&y).unwrap();
    assert!(max_diff(&z, &t["test.z"]) < 1e-4, "z differs");
    let (mean, log_scale) = m
        .hyper_synthesis
        .forward(&t["test.z"].round().unwrap())
        .unwrap();
    assert!(max_diff(&mean, &t["test.mean"]) < 1e-4, "mean differs");
    assert!(
        max_diff(&log_scale, &t["test.log_scale"]) < 1e-4,
        "log-scale differs"
    );
    // the fixed-order hyper decoder the coder uses agrees with PyTorch too
    let zr = t["test.z"].round().unwrap();
    let (zh, zw) = (zr.dim(2).unwrap(), zr.dim(3).unwrap());
    let zv = zr.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (em, el) = m.exact_hyper_synthesis.forward(&zv, zh, zw);
    let as_t = |v: Vec<f32>| Tensor::from_vec(v, mean.shape(), &Device::Cpu).unwrap();
    assert!(
        max_diff(&as_t(em), &t["test.mean"]) < 1e-4,
        "exact mean differs"
    );
    assert!(
        max_diff(&as_t(el), &t["test.log_scale"]) < 1e-4,
        "exact log-scale differs"
    );
    let x_hat = m.synthesis.forward(&t["test.y"]).unwrap();
    assert!(max_diff(&x_hat, &t["test.x_hat"]) < 1e-4, "image differs");
    let (g, _) = m.gains(1).unwrap();
    let want = t["gain_enc"].get(1).unwrap().exp().unwrap();
    assert!(max_diff(&g.flatten_all().unwrap(), &want) < 1e-6);
}

fn tiny_cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch: 2,
        crop: 32,
        warmup: 3,
        checkpoint_secs: 3600,
        ..TrainConfig::default()
    }
}

fn images() -> Vec<image::RgbImage> {
    vaeproxy::model::train::load_images(Path::new("tests/data")).unwrap()
}

fn weights(out: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(ckpt_path(out), &Device::Cpu).unwrap()
}

/// Stopping after 2 steps and resuming for 2 more gives bit-identical weights
/// and optimiser state to 4 uninterrupted steps.
#[test]
fn resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = images();
    let straight = dir.path().join("straight");
    let mut t = Trainer::new(tiny_cfg(4), &straight, false).unwrap();
    for _ in 0..4 {
        t.train_step(&imgs).unwrap();
    }
    t.checkpoint().unwrap();

    let split = dir.path().join("split");
    let mut t = Trainer::new(tiny_cfg(4), &split, false).unwrap();
    for _ in 0..2 {
        t.train_step(&imgs).unwrap();
    }
    t.checkpoint().unwrap();
    drop(t);
    let mut t = Trainer::new(tiny_cfg(4), &split, true).unwrap();
    assert_eq!(t.step, 2);
    for _ in 0..2 {
        t.train_step(&imgs).unwrap();
    }
    t.checkpoint().unwrap();

    let (a, b) = (weights(&straight), weights(&split));
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert_eq!(max_diff(v, &b[k]), 0.0, "{k} differs after resume");
    }
}

/// A short run reduces the reconstruction error well below where it starts.
#[test]
fn training_learns() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = images();
    let cfg = TrainConfig {
        steps: 60,
        batch: 4,
        crop: 32,
        warmup: 30,
        lr: 2e-3,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(cfg, &dir.path().join("m"), false).unwrap();
    let first = t.train_step(&imgs).unwrap().mse255;
    let mut last = Vec::new();
    for _ in 0..59 {
        last.push(t.train_step(&imgs).unwrap().mse255);
    }
    let tail: f32 = last[49..].iter().sum::<f32>() / 10.0;
    assert!(tail < first * 0.5, "mse went from {first} to {tail}");
}

/// `train_codec.py --export` stores the network in f16 (issue 20's size bar);
/// the loader widens it, the forward passes stay within f16's rounding of
/// the f32 ones, and the coder still decodes exactly what it encoded.
#[test]
fn hyperprior_loads_f16_weights() {
    use candle_core::Module;
    use vaeproxy::codec::hyperprior::HyperCodec;
    use vaeproxy::model::hyperprior::Hyperprior;
    let bytes = std::fs::read("tests/data/hyperprior-parity.safetensors").unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let narrowed: Vec<(String, Tensor)> = t
        .iter()
        .map(|(k, v)| {
            let keep = k.starts_with("gain_") || k.starts_with("test.") || v.dtype() != DType::F32;
            let v = if keep {
                v.clone()
            } else {
                v.to_dtype(DType::F16).unwrap()
            };
            (k.clone(), v)
        })
        .collect();
    let half = safetensors::serialize(narrowed, meta.metadata().clone()).unwrap();
    assert!(half.len() < bytes.len());
    let m32 = Hyperprior::from_safetensors(&bytes).unwrap();
    let m16 = Hyperprior::from_safetensors(&half).unwrap();
    let x_hat32 = m32.synthesis.forward(&t["test.y"]).unwrap();
    let x_hat16 = m16.synthesis.forward(&t["test.y"]).unwrap();
    let d = max_diff(&x_hat16, &x_hat32);
    assert!(d > 0.0 && d < 2e-2, "f16 weights moved the output by {d}");
    let codec = HyperCodec::from_safetensors(&half).unwrap();
    let img =
        vaeproxy::codec::read_image(&std::fs::read("tests/data/canyon.jpg").unwrap(), 1 << 24)
            .unwrap();
    let (coded, recon) = codec.encode(&img, 1).unwrap();
    assert!(codec.decode(&coded).unwrap() == recon);
}
