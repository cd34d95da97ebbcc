//! The load bench: a real origin, a real `vaeproxy serve` (child process) and
//! a concurrent hyper client on loopback; optionally nginx (proxy_cache) in
//! front of the same origin, driven by the same client, alternating.
//!
//! `cargo bench --bench load [-- --seconds 8 --concurrency 16 ...]`;
//! `benches/compare-nginx.sh` for the side-by-side run. Every loop is bounded
//! in time and in count, and only loopback addresses are used.

mod drive;
mod origin;
mod servers;

use clap::Parser;
use drive::{drive, drive_open, probe, Pick, Picker, Run};
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use servers::Server;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Load bench: vaeproxy (and optionally nginx) on loopback")]
struct Args {
    /// Concurrent connections for the hit scenarios.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds per scenario (per server and round with --nginx).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Most requests per scenario run.
    #[arg(long, default_value_t = 500_000)]
    max_requests: u64,
    /// Images in the hit working set (384x256 JPEG crops).
    #[arg(long, default_value_t = 16)]
    images: usize,
    /// Distinct photos behind the encode and overload scenarios' URLs.
    #[arg(long, default_value_t = 300)]
    cold_images: usize,
    /// Objects in the Zipf working set (a quarter of them images).
    #[arg(long, default_value_t = 800)]
    zipf_objects: usize,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Scenarios, comma-separated: latent,original,small,samples,encode,overload,zipf.
    #[arg(
        long,
        default_value = "latent,original,small,samples,encode,overload,zipf"
    )]
    scenarios: String,
    /// Also run the hit scenarios against nginx at this path, alternating.
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// Alternating rounds per hit scenario with --nginx.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to write the results table as CSV.
    #[arg(long, default_value = "target/load/results.csv")]
    csv: PathBuf,
    /// Open loop: send at this fixed rate (requests/s) whatever the answers,
    /// with latency counted from each request's intended send time, so a
    /// server that falls behind shows its queue (no coordinated omission).
    /// Without it every scenario is closed-loop (`concurrency` clients, one
    /// request at a time each).
    #[arg(long)]
    rate: Option<f64>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The model pool of the bench's proxy: 1 thread + 4 queued = 5 jobs; the
/// encode scenario runs 4x that many clients.
const POOL_THREADS: usize = 1;
const POOL_QUEUE: usize = 4;

/// One printed row.
struct Row {
    scenario: String,
    server: &'static str,
    run: Run,
    cpu: f64,
    rss: f64,
    note: String,
}

fn main() {
    let args = Args::parse();
    let scenarios: Vec<String> = args.scenarios.split(',').map(str::to_string).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vaeproxy"));
    let t0 = Instant::now();

    let mut objects = origin::Objects::default();
    objects.add_images("img", args.images, 384, 256);
    objects.add_images("cold", args.cold_images, 256, 192);
    let zimages = args.zipf_objects / 4;
    objects.add_images("zimg", zimages, 256, 192);
    objects.add_documents("doc", 64, 2048);
    objects.add_documents("zdoc", args.zipf_objects - zimages, 4096);
    let (n_img, img_bytes) = objects.bytes_under("img");
    let origin = origin::start(objects);
    println!(
        "machine: {} cores, {}; origin {origin}; hit working set {n_img} images, {img_bytes} bytes",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );

    let accept: Arc<str> = Arc::from(
        vaeproxy::client::Decoder::shipped()
            .unwrap()
            .accept_header(),
    );
    let dur = Duration::from_secs_f64(args.seconds);
    let mut rows = Vec::new();
    let codec_toml = format!("[codec]\npool_threads = {POOL_THREADS}\npool_queue = {POOL_QUEUE}\n");

    let hits: Vec<&str> = ["latent", "original", "small", "samples"]
        .into_iter()
        .filter(|s| scenarios.iter().any(|x| x == s))
        .collect();
    if !hits.is_empty() {
        let samples = "[[samples]]\nname = \"bench\"\nwidth = 256\nheight = 256\ncount = 16\n";
        let mut proxy = Server::vaeproxy(&bin, origin, &format!("{codec_toml}{samples}"));
        proxy.wait_listening();
        let mut nginx = args.nginx.as_deref().map(|p| {
            let mut n = Server::nginx(p, origin);
            n.wait_listening();
            n
        });
        rt.block_on(warm(&proxy, &args, &accept, hits.contains(&"samples")));
        if let Some(n) = &nginx {
            rt.block_on(warm(n, &args, &accept, false));
        }
        for &sc in &hits {
            let rounds = if nginx.is_some() && sc != "samples" {
                args.rounds
            } else {
                1
            };
            let mut mine = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..rounds {
                let picker = hit_picker(sc, &args, &accept);
                let load = (args.concurrency, args.max_requests, args.rate);
                mine.push(measure(&rt, &proxy, load, dur, picker.clone()));
                if let Some(n) = nginx.as_mut().filter(|_| sc != "samples") {
                    theirs.push(measure(&rt, n, load, dur, picker));
                }
            }
            rows.push(row(sc, "vaeproxy", mine, String::new()));
            if !theirs.is_empty() {
                rows.push(row(sc, "nginx", theirs, String::new()));
            }
        }
    }

    for (name, factor) in [("encode", 1), ("overload", 4)] {
        if scenarios.iter().any(|s| s == name) {
            // A small cache: a stream of distinct misses must not grow memory.
            let toml = format!(
                "samples = []\n[cache]\ncapacity_bytes = 16777216\noriginals_bytes = 16777216\n\
                 {codec_toml}"
            );
            let proxy = (bin.as_path(), origin, toml.as_str());
            rows.push(encode_scenario(&rt, proxy, &args, &accept, name, factor));
        }
    }
    if scenarios.iter().any(|s| s == "zipf") {
        let proxy = (bin.as_path(), origin, codec_toml.as_str());
        rows.push(zipf_scenario(&rt, proxy, &args, &accept, zimages));
    }

    if let Some(r) = args.rate {
        // Open loop: the client count is irrelevant; say what ran.
        for row in &mut rows {
            row.note = format!(
                "open loop at {r} req/s, latency from the intended send; {}",
                row.note
            );
        }
    }
    print_table(&rows);
    if let Err(e) = write_csv(&args.csv, &rows) {
        eprintln!("{}: {e}", args.csv.display());
    }
    println!("total {:.0} s", t0.elapsed().as_secs_f64());
    if args.nginx.is_some() {
        let get = |server: &str| {
            rows.iter()
                .find(|r| r.scenario == "latent" && r.server == server)
        };
        if let (Some(v), Some(n)) = (get("vaeproxy"), get("nginx")) {
            println!(
                "ratio rps={:.2} p99={:.2}",
                v.run.rps() / n.run.rps(),
                v.run.ms(99.0) / n.run.ms(99.0)
            );
        }
    }
}

/// The request mix of a hit scenario.
fn hit_picker(scenario: &str, args: &Args, accept: &Arc<str>) -> Picker {
    let n = args.images;
    let accept = accept.clone();
    match scenario {
        "latent" => Arc::new(move |_, rng| Pick {
            path: format!("/img/{}.jpg", rng.random_range(0..n)),
            accept: Some(accept.clone()),
        }),
        "original" => Arc::new(move |_, rng| Pick {
            path: format!("/img/{}.jpg", rng.random_range(0..n)),
            accept: None,
        }),
        "small" => Arc::new(|_, rng| Pick {
            path: format!("/doc/{}.json", rng.random_range(0..64)),
            accept: None,
        }),
        "samples" => Arc::new(|_, rng| Pick {
            path: format!("/_vaeproxy/samples/bench/{}", rng.random_range(0..16)),
            accept: None,
        }),
        other => panic!("unknown scenario {other:?}"),
    }
}

/// Fills a server's cache with the hit working set, one request at a time
/// (so every image is encoded, not passed through a busy pool), and waits
/// for the sample pool.
async fn warm(server: &Server, args: &Args, accept: &Arc<str>, samples: bool) {
    let mut paths: Vec<(String, Option<&str>)> = Vec::new();
    for i in 0..args.images {
        paths.push((format!("/img/{i}.jpg"), Some(accept)));
        paths.push((format!("/img/{i}.jpg"), None));
    }
    paths.extend((0..64).map(|i| (format!("/doc/{i}.json"), None)));
    for (p, a) in &paths {
        probe(server.addr, p, *a).await.expect("warming");
    }
    // Every object must now be a cache hit, or the comparison is void.
    for (p, a) in &paths {
        let (status, h, _) = probe(server.addr, p, *a).await.expect("checking");
        let cache = h
            .get("x-vaeproxy-cache")
            .or_else(|| h.get("x-cache"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_ascii_lowercase();
        assert!(
            status == 200 && cache == "hit",
            "{}: {p} not a cache hit after warming ({status}, {cache})",
            server.name
        );
        if a.is_some() && server.name == "vaeproxy" {
            let ct = h.get("content-type").and_then(|v| v.to_str().ok());
            assert_eq!(ct, Some(vaeproxy::latent::wire::MIME), "{p} not encoded");
        }
    }
    if samples {
        let t = Instant::now();
        for i in 0..16 {
            let p = format!("/_vaeproxy/samples/bench/{i}");
            while probe(server.addr, &p, None).await.map(|r| r.0) != Some(200) {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "samples not generated"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One timed run with the server's CPU and peak memory around it.
fn measure(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    (concurrency, max, rate): (usize, u64, Option<f64>),
    dur: Duration,
    pick: Picker,
) -> (Run, f64, f64) {
    server.reset_peak();
    let cpu = server.cpu_seconds();
    let run = match rate {
        None => rt.block_on(drive(server.addr, concurrency, dur, max, pick)),
        Some(r) => rt.block_on(drive_open(server.addr, r, dur, max, pick)),
    };
    (run, server.cpu_seconds() - cpu, server.peak_rss_mib())
}

fn row(scenario: &str, server: &'static str, runs: Vec<(Run, f64, f64)>, note: String) -> Row {
    let cpu = runs.iter().map(|r| r.1).sum();
    let rss = runs.iter().map(|r| r.2).fold(0.0, f64::max);
    Row {
        scenario: scenario.to_string(),
        server,
        run: Run::merge(runs.into_iter().map(|r| r.0).collect()),
        cpu,
        rss,
        note,
    }
}

/// Misses that encode: distinct cold images from latent clients, `factor`
/// times the model pool's capacity in flight (1: the encode path's
/// throughput; 4: overload, where answers must all come back, as originals
/// when the pool is full).
fn encode_scenario(
    rt: &tokio::runtime::Runtime,
    (bin, origin, toml): (&Path, SocketAddr, &str),
    args: &Args,
    accept: &Arc<str>,
    name: &str,
    factor: usize,
) -> Row {
    let accept = accept.clone();
    let cold = args.cold_images as u64;
    // Every request a new URL (the query makes it one; the origin serves by
    // path), so the run is all misses for as long as it lasts.
    let pick: Picker = Arc::new(move |n, _| Pick {
        path: format!("/cold/{}.jpg?miss={n}", n % cold),
        accept: Some(accept.clone()),
    });
    let concurrency = factor * (POOL_THREADS + POOL_QUEUE);
    let load = (concurrency, args.max_requests, args.rate);
    // At capacity the rate is low, so it runs longer; overload answers fast.
    let secs = args.seconds * if factor == 1 { 1.5 } else { 1.0 };
    let (m, metrics) = on_fresh_proxy(rt, (bin, origin, toml), load, secs, pick);
    let encodes = metrics
        .get("vaeproxy_encodes_total")
        .copied()
        .unwrap_or(0.0);
    let full = metrics
        .get("vaeproxy_guard_total{reason=\"pool_full\"}")
        .copied()
        .unwrap_or(0.0);
    let enc_s = metrics
        .get("vaeproxy_encode_seconds_sum")
        .copied()
        .unwrap_or(0.0);
    let note = format!(
        "{concurrency} clients, every request a new URL, cache 16 + 16 MiB, pool \
         {POOL_THREADS}+{POOL_QUEUE}: {encodes:.0} encoded ({:.1} encodes/s, {:.0} ms each), \
         {full:.0} passed through (pool full)",
        encodes / m.0.elapsed.as_secs_f64(),
        1000.0 * enc_s / encodes.max(1.0)
    );
    row(name, "vaeproxy", vec![m], note)
}

/// A Zipf-distributed mix over a working set larger than the cache: a
/// quarter images, the rest 4 KB documents; half the clients decode latents.
fn zipf_scenario(
    rt: &tokio::runtime::Runtime,
    (bin, origin, codec_toml): (&Path, SocketAddr, &str),
    args: &Args,
    accept: &Arc<str>,
    zimages: usize,
) -> Row {
    let toml = format!(
        "samples = []\n[cache]\ncapacity_bytes = 1048576\noriginals_bytes = 1048576\n{codec_toml}"
    );
    let n = args.zipf_objects;
    let zipf = Zipf::new(n as f64, args.zipf_s).expect("zipf parameters");
    let accept = accept.clone();
    // Object k (1 = most popular) is an image when k % 4 == 1.
    let pick: Picker = Arc::new(move |_, rng| {
        let k = zipf.sample(rng) as usize;
        let path = if k % 4 == 1 && (k / 4) < zimages {
            format!("/zimg/{}.jpg", k / 4)
        } else {
            // The rank among the documents: k minus the images ranked before it.
            format!(
                "/zdoc/{}.json",
                (k - 1 - ((k - 2) / 4 + 1)).min(n - zimages - 1)
            )
        };
        let latent = rng.random_bool(0.5);
        Pick {
            path,
            accept: latent.then(|| accept.clone()),
        }
    });
    let load = (args.concurrency, args.max_requests, args.rate);
    let secs = args.seconds * 1.5;
    let (m, mx) = on_fresh_proxy(rt, (bin, origin, &toml), load, secs, pick);
    let get = |k: &str| mx.get(k).copied().unwrap_or(0.0);
    let hits = get("vaeproxy_cache_lookups_total{result=\"hit\"}");
    let looked = hits
        + get("vaeproxy_cache_lookups_total{result=\"miss\"}")
        + get("vaeproxy_cache_lookups_total{result=\"stale\"}");
    let note = format!(
        "{n} objects, s={}, cache 1 MiB + 1 MiB originals: hit ratio {:.1} %, \
         latent bytes saved {:.1} MB, origin {:.1} MB, to clients {:.1} MB, {:.0} encodes",
        args.zipf_s,
        100.0 * hits / looked.max(1.0),
        get("vaeproxy_latent_bytes_saved_total") / 1e6,
        get("vaeproxy_origin_bytes_total") / 1e6,
        get("vaeproxy_client_bytes_total") / 1e6,
        get("vaeproxy_encodes_total"),
    );
    row("zipf", "vaeproxy", vec![m], note)
}

/// One measured run on a proxy started for it (a cold cache), and the
/// proxy's metrics afterwards.
fn on_fresh_proxy(
    rt: &tokio::runtime::Runtime,
    (bin, origin, toml): (&Path, SocketAddr, &str),
    load: (usize, u64, Option<f64>),
    secs: f64,
    pick: Picker,
) -> ((Run, f64, f64), HashMap<String, f64>) {
    let mut proxy = Server::vaeproxy(bin, origin, toml);
    proxy.wait_listening();
    let m = measure(rt, &proxy, load, Duration::from_secs_f64(secs), pick);
    let metrics = rt.block_on(metrics(
        proxy.admin.expect("vaeproxy has an admin listener"),
    ));
    (m, metrics)
}

/// The proxy's Prometheus metrics, as name{labels} -> value.
async fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let (_, _, text) = probe(addr, "/_vaeproxy/metrics", None)
        .await
        .expect("metrics");
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<9} {:<9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6} {:>6}",
        "scenario",
        "server",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "MB/s",
        "errors",
        "cpu s",
        "RSS MB"
    );
    for r in rows {
        println!(
            "{:<9} {:<9} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.1} {:>7} {:>6.1} {:>6.1}",
            r.scenario,
            r.server,
            r.run.rps(),
            r.run.ms(50.0),
            r.run.ms(90.0),
            r.run.ms(99.0),
            r.run.ms(99.9),
            r.run.bytes as f64 / 1e6 / r.run.elapsed.as_secs_f64(),
            r.run.errors + r.run.timeouts,
            r.cpu,
            r.rss,
        );
        if !r.note.is_empty() {
            println!("          {}", r.note);
        }
    }
}

fn write_csv(path: &Path, rows: &[Row]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "scenario,server,requests,seconds,rps,p50_ms,p90_ms,p99_ms,p999_ms,bytes,errors,timeouts,cpu_s,peak_rss_mib"
    )?;
    for r in rows {
        writeln!(
            f,
            "{},{},{},{:.3},{:.1},{:.4},{:.4},{:.4},{:.4},{},{},{},{:.2},{:.1}",
            r.scenario,
            r.server,
            r.run.requests(),
            r.run.elapsed.as_secs_f64(),
            r.run.rps(),
            r.run.ms(50.0),
            r.run.ms(90.0),
            r.run.ms(99.0),
            r.run.ms(99.9),
            r.run.bytes,
            r.run.errors,
            r.run.timeouts,
            r.cpu,
            r.rss
        )?;
    }
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
