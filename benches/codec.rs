//! Criterion benches of the codec on a 768x512 photo: encode and decode with
//! one thread and with the default thread count, and the entropy coder alone.
//!
//! `cargo bench --bench codec`. The photo is a held-out packaged photo from
//! tests/data, upscaled to Kodak's size (timing depends on size, not content).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use vaeproxy::codec::{self, Codec};

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

criterion_group!(benches, bench);
criterion_main!(benches);
