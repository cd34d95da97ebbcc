//! Criterion micro-benches of the pieces every cache hit goes through: the
//! cache lookup (alone and with 2/4/8 tasks contending on one key space),
//! inserts, request header parsing and negotiation, and the wire format.
//!
//! `cargo bench --bench hotpath`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::StatusCode;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use vaeproxy::cache::directives;
use vaeproxy::cache::freshness::{Freshness, Heuristic};
use vaeproxy::cache::key::PrimaryKey;
use vaeproxy::cache::{Body, Cache, Entry};
use vaeproxy::config::Reconstructions;
use vaeproxy::latent::wire::{self, Header, ModelId};
use vaeproxy::proxy::negotiate;

const KEYS: usize = 1024;

fn entry(i: usize, req: &HeaderMap) -> Arc<Entry> {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("image/jpeg"));
    h.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert("etag", HeaderValue::from_str(&format!("\"{i}\"")).unwrap());
    let now = SystemTime::now();
    let heuristic = Heuristic {
        fraction: 0.1,
        max: Duration::from_secs(86400),
    };
    let f = Freshness::of(StatusCode::OK, &h, now, now, heuristic);
    let body = Body::Latent {
        code: Bytes::from(vec![7u8; 2500]),
        original_len: 25_000,
    };
    Arc::new(Entry::new(StatusCode::OK, h, body, f, req))
}

fn keys() -> Vec<PrimaryKey> {
    (0..KEYS)
        .map(|i| PrimaryKey::new("http", "example.com", &format!("/img/{i}.jpg")))
        .collect()
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let req = HeaderMap::new();
    let keys = Arc::new(keys());
    let cache = Cache::new(256 << 20, 0, Duration::from_secs(3600));
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            cache.store(k, entry(i, &req)).await;
        }
    });
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup_hit", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            rt.block_on(cache.lookup(&keys[i], &req)).unwrap()
        })
    });
    // `tasks` tasks each doing lookups on the same 1024 keys; time per lookup.
    for tasks in [2usize, 4, 8] {
        g.bench_with_input(
            BenchmarkId::new("lookup_contended", tasks),
            &tasks,
            |b, &tasks| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(tasks as u64) as usize;
                    let start = Instant::now();
                    rt.block_on(async {
                        let handles: Vec<_> = (0..tasks)
                            .map(|t| {
                                let (cache, keys) = (cache.clone(), Arc::clone(&keys));
                                tokio::spawn(async move {
                                    let req = HeaderMap::new();
                                    for n in 0..per {
                                        let k = &keys[(n * 7 + t * 131) % KEYS];
                                        black_box(cache.lookup(k, &req).await);
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.unwrap();
                        }
                    });
                    start.elapsed()
                })
            },
        );
    }
    g.bench_function("insert", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            rt.block_on(cache.store(&keys[i], entry(i, &req)))
        })
    });
    g.finish();
}

fn headers(c: &mut Criterion) {
    let model = ModelId([0xa5; 16]);
    let mut browser = HeaderMap::new();
    browser.insert(
        "accept",
        HeaderValue::from_static(
            "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
        ),
    );
    browser.insert("cache-control", HeaderValue::from_static("max-age=0"));
    let mut decoder = HeaderMap::new();
    decoder.insert(
        "accept",
        HeaderValue::from_str(&format!("{}; model={}", wire::MIME, model.to_hex())).unwrap(),
    );
    let mut g = c.benchmark_group("headers");
    for (name, h) in [("browser", &browser), ("decoder", &decoder)] {
        g.bench_function(BenchmarkId::new("negotiate", name), |b| {
            b.iter(|| {
                let d = directives::directives(black_box(h));
                negotiate::choose(h, d.no_transform, &model, Reconstructions::Never)
            })
        });
    }
    let mut resp = HeaderMap::new();
    resp.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600, stale-while-revalidate=60"),
    );
    resp.insert(
        "date",
        HeaderValue::from_static("Mon, 23 Nov 2026 10:00:00 GMT"),
    );
    resp.insert(
        "last-modified",
        HeaderValue::from_static("Mon, 02 Nov 2026 00:00:00 GMT"),
    );
    resp.insert("age", HeaderValue::from_static("12"));
    let heuristic = Heuristic {
        fraction: 0.1,
        max: Duration::from_secs(86400),
    };
    g.bench_function("freshness_of_response", |b| {
        let now = SystemTime::now();
        b.iter(|| Freshness::of(StatusCode::OK, black_box(&resp), now, now, heuristic))
    });
    g.finish();
}

fn wire_format(c: &mut Criterion) {
    // A 768x512 image's latent: 48x32 cells; ~2.5 KB of payload words.
    let header = Header::new(ModelId([1; 16]), 3, 768, 512, 32);
    let words: Vec<u32> = (0..640u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let bytes = wire::write(&header, &words);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("write", |b| {
        b.iter(|| wire::write(black_box(&header), black_box(&words)))
    });
    g.bench_function("parse", |b| {
        b.iter(|| wire::parse(black_box(&bytes)).unwrap().header)
    });
    g.finish();
}

criterion_group!(benches, cache, headers, wire_format);
criterion_main!(benches);
