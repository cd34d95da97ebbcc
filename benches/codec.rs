//! Criterion benches of the codec on a 768x512 photo: encode and decode with
//! one thread and with the default thread count, the entropy coder alone, and
//! the codec v2 network's transforms (trained widths, weights from a fresh
//! initialisation: the time depends on shapes, not values).
//!
//! `cargo bench --bench codec`. The photo is a held-out packaged photo from
//! tests/data, upscaled to Kodak's size (timing depends on size, not content).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use vaeproxy::codec::{self, Codec};
use vaeproxy::model::hyperprior::{Config, Hyperprior};

fn photo() -> image::RgbImage {
    let img = image::open("tests/data/twowings.png").unwrap().to_rgb8();
    image::imageops::resize(&img, 768, 512, image::imageops::FilterType::Triangle)
}

/// A rayon pool of `n` threads (default: all cores). candle's CPU ops run on
/// the current rayon pool and size their work split by RAYON_NUM_THREADS, so
/// both are set per bench.
fn pool(n: Option<usize>) -> (rayon::ThreadPool, String) {
    let n = n.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap();
    (p, format!("{n}t"))
}

fn bench(c: &mut Criterion) {
    let codec = Codec::shipped().unwrap();
    let img = photo();
    let q = codec::DEFAULT_QUALITY;
    let bytes = codec.encode(&img, q).unwrap();
    let mut g = c.benchmark_group("codec_768x512");
    g.sample_size(10);
    for threads in [Some(1), None] {
        let (p, t) = pool(threads);
        g.bench_function(format!("encode_{t}"), |b| {
            b.iter(|| p.install(|| codec.encode(black_box(&img), q).unwrap()))
        });
        g.bench_function(format!("decode_{t}"), |b| {
            b.iter(|| p.install(|| codec.decode(black_box(&bytes)).unwrap()))
        });
    }
    g.finish();

    let _ = pool(Some(1));
    let mu = codec.latent_mean(&img).unwrap();
    let (_, h, w) = mu.dims3().unwrap();
    let symbols = codec.quantize(&mu, q as usize).unwrap();
    let words = codec.entropy().encode(q as usize, &symbols, h, w).unwrap();
    let mut g = c.benchmark_group("entropy_768x512");
    g.bench_function("encode", |b| {
        b.iter(|| {
            codec
                .entropy()
                .encode(q as usize, black_box(&symbols), h, w)
                .unwrap()
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            codec
                .entropy()
                .decode(q as usize, black_box(words.clone()), h, w)
                .unwrap()
        })
    });
    g.finish();
}

/// Codec v2's network (`scripts/train_codec.py` widths) at 768x512, one thread.
fn bench_v2(c: &mut Criterion) {
    let (p, _) = pool(Some(1));
    let cfg = Config::from_metadata("c1=32,c2=64,c3=128,c=128,n=96,zc=64,levels=8").unwrap();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let m = Hyperprior::new(vb, cfg).unwrap();
    let x = Tensor::rand(0f32, 1., (1, 3, 512, 768), &Device::Cpu).unwrap();
    let y = m.analysis.forward(&x).unwrap();
    let z = m.hyper_analysis.forward(&y).unwrap().round().unwrap();
    let mut g = c.benchmark_group("v2_network_768x512_1t");
    g.sample_size(10);
    g.bench_function("analysis", |b| {
        b.iter(|| p.install(|| m.analysis.forward(black_box(&x)).unwrap()))
    });
    g.bench_function("hyper_analysis", |b| {
        b.iter(|| p.install(|| m.hyper_analysis.forward(black_box(&y)).unwrap()))
    });
    g.bench_function("hyper_synthesis", |b| {
        b.iter(|| p.install(|| m.hyper_synthesis.forward(black_box(&z)).unwrap()))
    });
    let (zh, zw) = (z.dim(2).unwrap(), z.dim(3).unwrap());
    let zv = z.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    g.bench_function("exact_hyper_synthesis", |b| {
        b.iter(|| m.exact_hyper_synthesis.forward(black_box(&zv), zh, zw))
    });
    g.bench_function("synthesis", |b| {
        b.iter(|| p.install(|| m.synthesis.forward(black_box(&y)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench, bench_v2);
criterion_main!(benches);
