//! The `vaeproxy` command: wires the library's parts to a CLI and does nothing else.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use vaeproxy::client::Decoder;
use vaeproxy::codec::{self, calibrate, quality, Codec};
use vaeproxy::model::train::{self, TrainConfig, Trainer};
use vaeproxy::model::Vae;

#[derive(Parser)]
#[command(
    name = "vaeproxy",
    version,
    about = "A caching reverse proxy that keeps images as VAE latent codes"
)]
struct Cli {
    /// Weights file (safetensors with the entropy model); default: the weights built into the binary.
    #[arg(long, global = true)]
    weights: Option<PathBuf>,
    /// Configuration file [default: $VAEPROXY_CONFIG, then config/vaeproxy.toml,
    /// then /etc/vaeproxy/vaeproxy.toml]; before or after the subcommand.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Default: `serve` with `config/vaeproxy.toml`.
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the caching reverse proxy (the default when no command is given).
    /// SIGHUP re-reads the configuration; SIGTERM or Ctrl-C stops it.
    Serve(ServeArgs),
    /// Validate the configuration (as `serve` and a reload would read it) and exit.
    Check(ServeArgs),
    /// Generate a sample pool from the config (as the proxy would) and write a contact sheet.
    Sample {
        /// Pool name from the config's [[samples]].
        #[arg(long, default_value = "default")]
        pool: String,
        /// Output PNG: the pool's images in a grid.
        #[arg(long)]
        grid: PathBuf,
        /// Images per row.
        #[arg(long, default_value_t = 8)]
        columns: u32,
        /// Add a row interpolating between these two photos (encoded at the
        /// config's quality, as the proxy would cache them).
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        interpolate: Option<Vec<PathBuf>>,
        /// Frames in the interpolation row, endpoints included.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=16))]
        steps: u32,
    },
    /// Encode an image (JPEG/PNG/WebP/GIF still) into a .vlat latent file.
    Encode {
        input: PathBuf,
        output: PathBuf,
        /// 1 (smallest files) to the number of levels of the weights.
        #[arg(long, short, default_value_t = codec::DEFAULT_QUALITY)]
        quality: u8,
    },
    /// Print the model id, architecture and quality levels of the weights.
    Info,
    /// Decode a .vlat latent file into a PNG.
    Decode { input: PathBuf, output: PathBuf },
    /// Encode and decode every image in a directory; print size and quality.
    Eval {
        #[arg(long)]
        images: PathBuf,
        #[arg(long, short, default_value_t = codec::DEFAULT_QUALITY)]
        quality: u8,
        /// Also write the per-image rows to this CSV file.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write reconstructions as PNGs into this directory.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Codec v2 (in training): every level of an exported network on a
    /// directory of images, with real coded sizes (ANS words + a 16-byte header).
    EvalV2 {
        /// From `scripts/train_codec.py --export`.
        #[arg(long)]
        network: PathBuf,
        #[arg(long)]
        images: PathBuf,
    },
    /// Train the VAE on a directory of photos (never Kodak), then calibrate it.
    Train {
        #[arg(long)]
        data: PathBuf,
        /// Held-out photos for calibrating the quality levels.
        #[arg(long)]
        val: Option<PathBuf>,
        /// Output name: writes OUT.safetensors, OUT.ckpt.safetensors and OUT.csv.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        config: TrainConfig,
        /// Continue from OUT.ckpt.safetensors.
        #[arg(long)]
        resume: bool,
    },
    /// Measure the entropy model of trained network weights and write the shippable file.
    Calibrate {
        /// Network weights (from `train` or scripts/train_torch.py).
        #[arg(long)]
        network: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        val: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Use at most this many training photos.
        #[arg(long, default_value_t = 120)]
        max_images: usize,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Listen address, overriding the config's `listen` and $VAEPROXY_LISTEN.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Replace the config's routes with one catch-all route to this origin
    /// (http://host:port); also $VAEPROXY_ORIGIN.
    #[arg(long)]
    origin: Option<String>,
}

fn main() -> ExitCode {
    // candle re-reads /proc/cpuinfo on every thread-count lookup when this is unset.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("vaeproxy: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// A pool's samples in a grid, `columns` wide, with an optional full-width
/// row (an interpolation strip) below.
fn contact_sheet(
    codec: &Codec,
    spec: &vaeproxy::config::SamplePool,
    columns: u32,
    row: Option<image::RgbImage>,
) -> Result<image::RgbImage, String> {
    const GAP: u32 = 4;
    let columns = columns.clamp(1, spec.count);
    let rows = spec.count.div_ceil(columns);
    let width = columns * (spec.width + GAP) + GAP;
    let row = row.map(|r| {
        let w = width - 2 * GAP;
        let h = (u64::from(r.height()) * u64::from(w) / u64::from(r.width().max(1))).max(1);
        image::imageops::resize(&r, w, h as u32, image::imageops::FilterType::Lanczos3)
    });
    let grid_h = rows * (spec.height + GAP) + GAP;
    let height = grid_h + row.as_ref().map_or(0, |r| r.height() + GAP);
    let mut sheet = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    for i in 0..spec.count {
        let s =
            vaeproxy::sampler::generate(codec, spec, i).map_err(|e| format!("sample {i}: {e}"))?;
        let img = codec::read_image(&s.image, codec::DEFAULT_MAX_PIXELS)
            .map_err(|e| format!("sample {i}: {e}"))?;
        let (x, y) = (i % columns, i / columns);
        image::imageops::replace(
            &mut sheet,
            &img,
            i64::from(GAP + x * (spec.width + GAP)),
            i64::from(GAP + y * (spec.height + GAP)),
        );
    }
    if let Some(r) = row {
        image::imageops::replace(&mut sheet, &r, i64::from(GAP), i64::from(grid_h));
    }
    Ok(sheet)
}

/// The strip the proxy's `/_vaeproxy/interpolate` serves for photos `a`, `b`.
fn interpolation_row(
    codec: &Codec,
    a: &Path,
    b: &Path,
    steps: u32,
    quality: u8,
) -> Result<image::RgbImage, String> {
    let code = |p: &Path| {
        let img = codec::read_image(&read_file(p)?, codec::DEFAULT_MAX_PIXELS)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        codec
            .encode(&img, quality)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (a, b) = (code(a)?, code(b)?);
    let strip = vaeproxy::sampler::interpolation(
        codec,
        &a,
        &b,
        steps,
        None,
        vaeproxy::sampler::Output::PNG,
    )
    .map_err(|e| format!("interpolating: {e}"))?;
    codec::read_image(&strip.image, codec::DEFAULT_MAX_PIXELS)
        .map_err(|e| format!("interpolating: {e}"))
}

fn load_codec(weights: Option<&Path>) -> Result<Codec, String> {
    match weights {
        Some(p) => Codec::load(p).map_err(|e| format!("{}: {e}", p.display())),
        None => Codec::shipped().map_err(|e| format!("built-in weights: {e}")),
    }
}

fn read_file(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display()))
}

/// The configuration as `serve`, `check` and a reload read it.
fn config_source(
    args: &ServeArgs,
    config: Option<&Path>,
) -> Result<vaeproxy::config::Source, String> {
    vaeproxy::config::Source::find(config, args.listen, args.origin.clone())
        .map_err(|e| e.to_string())
}

fn check(args: ServeArgs, config: Option<&Path>, weights: Option<PathBuf>) -> Result<(), String> {
    let source = config_source(&args, config)?;
    let cfg = source.load().map_err(|e| e.to_string())?;
    let codec = load_codec(weights.or_else(|| cfg.codec.weights.clone()).as_deref())?;
    check_quality(&cfg, &codec)?;
    let admin = if cfg.admin.enabled {
        cfg.admin.listen.to_string()
    } else {
        "off".into()
    };
    println!(
        "{}: ok: listen {}, admin {admin}, {} route(s), {} sample pool(s), model {}",
        source.describe(),
        cfg.listen,
        cfg.routes.len(),
        cfg.samples.len(),
        codec.id().to_hex()
    );
    Ok(())
}

fn check_quality(cfg: &vaeproxy::config::Config, codec: &Codec) -> Result<(), String> {
    if usize::from(cfg.codec.quality) > usize::from(codec.levels()) {
        return Err(format!(
            "codec.quality: {} but the weights have {} levels",
            cfg.codec.quality,
            codec.levels()
        ));
    }
    Ok(())
}

fn serve(args: ServeArgs, config: Option<&Path>, weights: Option<PathBuf>) -> Result<(), String> {
    use vaeproxy::config::LogFormat;
    let source = config_source(&args, config)?;
    let cfg = source.load().map_err(|e| e.to_string())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cfg.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
    }
    let weights = weights.or_else(|| cfg.codec.weights.clone());
    let codec = std::sync::Arc::new(load_codec(weights.as_deref())?);
    check_quality(&cfg, &codec)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(vaeproxy::daemon::run(cfg, source, codec))
        .map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    let config = cli.config.as_deref();
    let Some(cmd) = cli.cmd else {
        return serve(ServeArgs::default(), config, cli.weights);
    };
    match cmd {
        Cmd::Serve(args) => serve(args, config, cli.weights),
        Cmd::Check(args) => check(args, config, cli.weights),
        Cmd::Sample {
            pool,
            grid,
            columns,
            interpolate,
            steps,
        } => {
            let source = config_source(&ServeArgs::default(), config)?;
            let cfg = source.load().map_err(|e| e.to_string())?;
            let spec = cfg.samples.iter().find(|p| p.name == pool).ok_or_else(|| {
                format!("{}: no [[samples]] pool named {pool:?}", source.describe())
            })?;
            let codec = load_codec(cli.weights.as_deref())?;
            let row = match interpolate.as_deref() {
                Some([a, b]) => Some(interpolation_row(&codec, a, b, steps, cfg.codec.quality)?),
                _ => None,
            };
            let sheet = contact_sheet(&codec, spec, columns, row)?;
            sheet
                .save(&grid)
                .map_err(|e| format!("{}: {e}", grid.display()))
        }
        Cmd::Encode {
            input,
            output,
            quality,
        } => {
            let codec = load_codec(cli.weights.as_deref())?;
            let img = codec::read_image(&read_file(&input)?, codec::DEFAULT_MAX_PIXELS)
                .map_err(|e| format!("{}: {e}", input.display()))?;
            let bytes = codec
                .encode(&img, quality)
                .map_err(|e| format!("{}: {e}", input.display()))?;
            write_file(&output, &bytes)
        }
        Cmd::Info => {
            let codec = load_codec(cli.weights.as_deref())?;
            let c = codec.vae().config;
            println!("model_id={}", codec.id());
            println!("config c1={} c2={} c3={} z={}", c.c1, c.c2, c.c3, c.z);
            println!("levels={}", codec.levels());
            for (i, s) in codec.entropy().steps.iter().enumerate() {
                println!("level {} step_multiplier={s:.4}", i + 1);
            }
            Ok(())
        }
        Cmd::Decode { input, output } => {
            // the CLI decodes through the same library apps embed
            let decoder = match cli.weights.as_deref() {
                Some(p) => Decoder::from_path(p).map_err(|e| format!("{}: {e}", p.display()))?,
                None => Decoder::shipped().map_err(|e| format!("built-in weights: {e}"))?,
            };
            let img = decoder
                .decode(&read_file(&input)?)
                .map_err(|e| format!("{}: {e}", input.display()))?;
            // the format follows the extension: PNG bytes in a .jpg file
            // would fool every program that trusts the name
            let format = match image::ImageFormat::from_path(&output) {
                Ok(
                    f @ (image::ImageFormat::Png
                    | image::ImageFormat::Jpeg
                    | image::ImageFormat::WebP),
                ) => f,
                _ => {
                    return Err(format!(
                        "{}: unknown output format; name it .png, .jpg or .webp",
                        output.display()
                    ))
                }
            };
            img.save_with_format(&output, format)
                .map_err(|e| format!("{}: {e}", output.display()))
        }
        Cmd::Eval {
            images,
            quality,
            csv,
            save,
        } => eval(
            cli.weights.as_deref(),
            &images,
            quality,
            csv.as_deref(),
            save.as_deref(),
        ),
        Cmd::EvalV2 { network, images } => eval_v2(&network, &images),
        Cmd::Train {
            data,
            val,
            out,
            config,
            resume,
        } => train_cmd(config, &data, val.as_deref(), &out, resume),
        Cmd::Calibrate {
            network,
            data,
            val,
            out,
            max_images,
        } => {
            let bytes = read_file(&network)?;
            let vae =
                Vae::from_safetensors(&bytes).map_err(|e| format!("{}: {e}", network.display()))?;
            calibrate_and_save(&vae, &bytes, &data, &val, &out, max_images)
        }
    }
}

fn calibrate_and_save(
    vae: &Vae,
    network: &[u8],
    data: &Path,
    val: &Path,
    out: &Path,
    max_images: usize,
) -> Result<(), String> {
    let mut train_imgs = train::load_images(data)?;
    // an even spread over the sorted list, so every package is represented
    let stride = train_imgs.len().div_ceil(max_images.max(1));
    train_imgs = train_imgs.into_iter().step_by(stride.max(1)).collect();
    let val_imgs = train::load_images(val)?;
    eprintln!(
        "calibrating on {} training and {} validation photos",
        train_imgs.len(),
        val_imgs.len()
    );
    let (em, frontier) =
        calibrate::calibrate(vae, &train_imgs, &val_imgs, &calibrate::DEFAULT_TARGETS)
            .map_err(|e| e.to_string())?;
    eprintln!("rate-distortion frontier (validation bpp, PSNR of centre crops):");
    for p in &frontier {
        let level = em.steps.iter().position(|&s| s == p.m);
        let mark = level.map_or(String::new(), |l| format!("  <- level {}", l + 1));
        eprintln!(
            "  step x{:.3}: bpp {:.4}, psnr {:.2} dB{mark}",
            p.m, p.bpp, p.psnr
        );
    }
    let mut tensors = candle_core::safetensors::load_buffer(network, &candle_core::Device::Cpu)
        .map_err(|e| e.to_string())?;
    tensors.retain(|k, _| !k.starts_with("entropy."));
    for (k, t) in em.to_tensors().map_err(|e| e.to_string())? {
        tensors.insert(k, t);
    }
    train::save_with_config(&tensors, &vae.config, out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let id = codec::model_id(&read_file(out)?);
    eprintln!("wrote {} (model id {id})", out.display());
    Ok(())
}

fn train_cmd(
    cfg: TrainConfig,
    data: &Path,
    val: Option<&Path>,
    out: &Path,
    resume: bool,
) -> Result<(), String> {
    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::Write;
    let images = train::load_images(data)?;
    let mut trainer = Trainer::new(cfg.clone(), out, resume).map_err(|e| e.to_string())?;
    let csv_path = PathBuf::from(format!("{}.csv", out.display()));
    let fresh = !resume || !csv_path.exists();
    let mut csv = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&csv_path)
        .map_err(|e| format!("{}: {e}", csv_path.display()))?;
    if fresh {
        writeln!(csv, "step,loss,mse255,psnr,kl_bpp,lr,img_per_s").map_err(|e| e.to_string())?;
    }
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    bar.set_position(trainer.step as u64);
    let started = Instant::now();
    let first = trainer.step;
    let mut last_ckpt = Instant::now();
    while trainer.step < cfg.steps {
        let s = trainer.train_step(&images).map_err(|e| e.to_string())?;
        let ips = ((s.step - first) * cfg.batch) as f64 / started.elapsed().as_secs_f64();
        let psnr = 10.0 * (255.0f64 * 255.0 / s.mse255.max(1e-9) as f64).log10();
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
        .map_err(|e| e.to_string())?;
        if last_ckpt.elapsed().as_secs() >= cfg.checkpoint_secs || trainer.step == cfg.steps {
            trainer.checkpoint().map_err(|e| e.to_string())?;
            last_ckpt = Instant::now();
        }
    }
    bar.finish();
    let net = PathBuf::from(format!("{}.network.safetensors", out.display()));
    trainer.export_network(&net).map_err(|e| e.to_string())?;
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

fn eval_v2(network: &Path, dir: &Path) -> Result<(), String> {
    use vaeproxy::codec::hyperprior::HyperCodec;
    let codec = HyperCodec::from_safetensors(&read_file(network)?)
        .map_err(|e| format!("{}: {e}", network.display()))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no images", dir.display()));
    }
    let images = files
        .iter()
        .map(|f| {
            codec::read_image(&read_file(f)?, codec::DEFAULT_MAX_PIXELS)
                .map_err(|e| format!("{}: {e}", f.display()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    println!(
        "level  bpp     psnr   ms_ssim  enc_ms  dec_ms  grid4  grid8  grid16  ({} images)",
        images.len()
    );
    for level in 0..codec.levels() {
        let mut sum = [0f64; 8];
        for img in &images {
            let t = Instant::now();
            let (coded, _) = codec.encode(img, level).map_err(|e| e.to_string())?;
            let enc = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let out = codec.decode(&coded).map_err(|e| e.to_string())?;
            let dec = t.elapsed().as_secs_f64() * 1e3;
            let bytes = coded.words.len() * 4 + 16;
            let px = img.width() as f64 * img.height() as f64;
            for (s, v) in sum.iter_mut().zip([
                bytes as f64 * 8.0 / px,
                codec::quality::psnr(img, &out),
                codec::quality::ms_ssim(img, &out),
                enc,
                dec,
                codec::quality::grid_excess(img, &out, 4),
                codec::quality::grid_excess(img, &out, 8),
                codec::quality::grid_excess(img, &out, 16),
            ]) {
                *s += v / images.len() as f64;
            }
        }
        println!(
            "{:>5}  {:.4}  {:.2}  {:.4}  {:>6.0}  {:>6.0}  {:.3}  {:.3}  {:.3}",
            level + 1,
            sum[0],
            sum[1],
            sum[2],
            sum[3],
            sum[4],
            sum[5],
            sum[6],
            sum[7]
        );
    }
    Ok(())
}

fn eval(
    weights: Option<&Path>,
    dir: &Path,
    quality: u8,
    csv: Option<&Path>,
    save: Option<&Path>,
) -> Result<(), String> {
    let codec = load_codec(weights)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("png" | "jpg" | "jpeg" | "webp" | "gif")
            )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no images", dir.display()));
    }
    let mut rows = vec!["image,bytes,bpp,psnr,ms_ssim,enc_ms,dec_ms".to_string()];
    let mut sum = [0f64; 5];
    println!(
        "{:<16} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "image", "bytes", "bpp", "psnr", "ms_ssim", "enc_ms", "dec_ms"
    );
    for f in &files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let img = codec::read_image(&read_file(f)?, codec::DEFAULT_MAX_PIXELS)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        let t = Instant::now();
        let bytes = codec
            .encode(&img, quality)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        let enc_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let rec = codec
            .decode(&bytes)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        let dec_ms = t.elapsed().as_secs_f64() * 1e3;
        let bpp = bytes.len() as f64 * 8.0 / (img.width() as f64 * img.height() as f64);
        let (p, m) = (quality::psnr(&img, &rec), quality::ms_ssim(&img, &rec));
        println!(
            "{name:<16} {:>8} {bpp:>7.4} {p:>7.2} {m:>8.4} {enc_ms:>8.1} {dec_ms:>8.1}",
            bytes.len()
        );
        rows.push(format!(
            "{name},{},{bpp:.5},{p:.3},{m:.5},{enc_ms:.1},{dec_ms:.1}",
            bytes.len()
        ));
        for (s, v) in sum.iter_mut().zip([bpp, p, m, enc_ms, dec_ms]) {
            *s += v;
        }
        if let Some(dir) = save {
            let out = dir.join(format!(
                "{}.q{quality}.png",
                f.file_stem().unwrap_or_default().to_string_lossy()
            ));
            rec.save(&out)
                .map_err(|e| format!("{}: {e}", out.display()))?;
        }
    }
    if let Some(csv) = csv {
        write_file(csv, (rows.join("\n") + "\n").as_bytes())?;
    }
    let n = files.len() as f64;
    println!(
        "mean bpp={:.4} psnr={:.2} ms_ssim={:.4} enc_ms={:.1} dec_ms={:.1}",
        sum[0] / n,
        sum[1] / n,
        sum[2] / n,
        sum[3] / n,
        sum[4] / n
    );
    Ok(())
}
