//! The `vaeproxy` command: wires the library's parts to a CLI and does nothing else.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vaeproxy::client::Decoder;
use vaeproxy::codec::{self, Codec};
use vaeproxy::model::train::TrainConfig;
use vaeproxy::model::Vae;
use vaeproxy::tools::{self, eval, load_codec, read_file, read_image, write_file, ToolError};

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
    /// A shared cache tier (`redis://host:port/`), overriding `cache.shared`.
    #[arg(long)]
    shared_cache: Option<String>,
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
        Err(e) => {
            eprintln!("vaeproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration as `serve`, `check` and a reload read it.
fn config_source(
    args: &ServeArgs,
    config: Option<&Path>,
) -> tools::Result<vaeproxy::config::Source> {
    Ok(vaeproxy::config::Source::find(
        config,
        args.listen,
        args.origin.clone(),
    )?)
}

/// The configuration with the command line's overrides that the source does not carry.
fn load(
    args: &ServeArgs,
    source: &vaeproxy::config::Source,
) -> tools::Result<vaeproxy::config::Config> {
    let mut cfg = source.load()?;
    if let Some(url) = &args.shared_cache {
        cfg.cache.shared = Some(vaeproxy::config::SharedNodes::One(url.clone()));
        cfg.validate()?;
    }
    Ok(cfg)
}

fn check(args: ServeArgs, config: Option<&Path>, weights: Option<PathBuf>) -> tools::Result<()> {
    let source = config_source(&args, config)?;
    let cfg = load(&args, &source)?;
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

fn check_quality(cfg: &vaeproxy::config::Config, codec: &Codec) -> tools::Result<()> {
    if usize::from(cfg.codec.quality) > usize::from(codec.levels()) {
        return Err(ToolError::Usage(format!(
            "codec.quality: {} but the weights have {} levels",
            cfg.codec.quality,
            codec.levels()
        )));
    }
    Ok(())
}

fn serve(args: ServeArgs, config: Option<&Path>, weights: Option<PathBuf>) -> tools::Result<()> {
    use vaeproxy::config::LogFormat;
    let source = config_source(&args, config)?;
    let cfg = load(&args, &source)?;
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
        .map_err(ToolError::Runtime)?;
    Ok(rt.block_on(vaeproxy::daemon::run(cfg, source, codec))?)
}

fn sample(
    config: Option<&Path>,
    weights: Option<&Path>,
    pool: &str,
    grid: &Path,
    columns: u32,
    interpolate: Option<&[PathBuf]>,
    steps: u32,
) -> tools::Result<()> {
    let source = config_source(&ServeArgs::default(), config)?;
    let cfg = source.load()?;
    let spec = cfg.samples.iter().find(|p| p.name == pool).ok_or_else(|| {
        ToolError::Usage(format!(
            "{}: no [[samples]] pool named {pool:?}",
            source.describe()
        ))
    })?;
    let codec = load_codec(weights)?;
    let row = match interpolate {
        Some([a, b]) => Some(tools::sheet::interpolation_row(
            &codec,
            a,
            b,
            steps,
            cfg.codec.quality,
        )?),
        _ => None,
    };
    let sheet = tools::sheet::contact_sheet(&codec, spec, columns, row)?;
    sheet.save(grid).map_err(|source| ToolError::Save {
        path: grid.to_path_buf(),
        source,
    })
}

fn info(weights: Option<&Path>) -> tools::Result<()> {
    let codec = load_codec(weights)?;
    let c = codec.vae().config;
    println!("model_id={}", codec.id());
    println!("config c1={} c2={} c3={} z={}", c.c1, c.c2, c.c3, c.z);
    println!("levels={}", codec.levels());
    for (i, s) in codec.entropy().steps.iter().enumerate() {
        println!("level {} step_multiplier={s:.4}", i + 1);
    }
    Ok(())
}

fn decode(weights: Option<&Path>, input: &Path, output: &Path) -> tools::Result<()> {
    // the CLI decodes through the same library apps embed
    let decoder = match weights {
        Some(p) => Decoder::from_path(p).map_err(ToolError::codec(p.display()))?,
        None => Decoder::shipped().map_err(ToolError::codec("built-in weights"))?,
    };
    let img = decoder
        .decode(&read_file(input)?)
        .map_err(ToolError::codec(input.display()))?;
    // the format follows the extension: PNG bytes in a .jpg file would fool
    // every program that trusts the name
    use image::ImageFormat as F;
    let format = match F::from_path(output) {
        Ok(f @ (F::Png | F::Jpeg | F::WebP)) => f,
        _ => {
            return Err(ToolError::Usage(format!(
                "{}: unknown output format; name it .png, .jpg or .webp",
                output.display()
            )))
        }
    };
    img.save_with_format(output, format)
        .map_err(|source| ToolError::Save {
            path: output.to_path_buf(),
            source,
        })
}

fn eval_v1(
    weights: Option<&Path>,
    dir: &Path,
    quality: u8,
    csv: Option<&Path>,
    save: Option<&Path>,
) -> tools::Result<()> {
    let codec = load_codec(weights)?;
    let images = tools::read_images(dir)?;
    println!(
        "{:<16} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "image", "bytes", "bpp", "psnr", "ms_ssim", "enc_ms", "dec_ms"
    );
    let rows = eval::eval(&codec, &images, quality, save, |r| {
        println!(
            "{:<16} {:>8} {:>7.4} {:>7.2} {:>8.4} {:>8.1} {:>8.1}",
            r.name, r.bytes, r.bpp, r.psnr, r.ms_ssim, r.enc_ms, r.dec_ms
        )
    })?;
    if let Some(csv) = csv {
        let mut text = eval::ImageRow::CSV_HEADER.to_string() + "\n";
        for r in &rows {
            text += &(r.csv() + "\n");
        }
        write_file(csv, text.as_bytes())?;
    }
    let n = rows.len() as f64;
    let mean = |f: fn(&eval::ImageRow) -> f64| rows.iter().map(f).sum::<f64>() / n;
    println!(
        "mean bpp={:.4} psnr={:.2} ms_ssim={:.4} enc_ms={:.1} dec_ms={:.1}",
        mean(|r| r.bpp),
        mean(|r| r.psnr),
        mean(|r| r.ms_ssim),
        mean(|r| r.enc_ms),
        mean(|r| r.dec_ms)
    );
    Ok(())
}

fn eval_v2(network: &Path, dir: &Path) -> tools::Result<()> {
    let codec = vaeproxy::codec::hyperprior::HyperCodec::from_safetensors(&read_file(network)?)
        .map_err(ToolError::codec(network.display()))?;
    let images = tools::read_images(dir)?;
    println!(
        "level  bpp     psnr   ms_ssim  enc_ms  dec_ms  grid4  grid8  grid16  ({} images)",
        images.len()
    );
    eval::eval_v2(&codec, &images, |r| {
        println!(
            "{:>5}  {:.4}  {:.2}  {:.4}  {:>6.0}  {:>6.0}  {:.3}  {:.3}  {:.3}",
            r.level, r.bpp, r.psnr, r.ms_ssim, r.enc_ms, r.dec_ms, r.grid[0], r.grid[1], r.grid[2]
        )
    })?;
    Ok(())
}

fn run(cli: Cli) -> tools::Result<()> {
    let config = cli.config.as_deref();
    let weights = cli.weights.as_deref();
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
        } => sample(
            config,
            weights,
            &pool,
            &grid,
            columns,
            interpolate.as_deref(),
            steps,
        ),
        Cmd::Encode {
            input,
            output,
            quality,
        } => {
            let codec = load_codec(weights)?;
            let bytes = codec
                .encode(&read_image(&input)?, quality)
                .map_err(ToolError::codec(input.display()))?;
            write_file(&output, &bytes)
        }
        Cmd::Info => info(weights),
        Cmd::Decode { input, output } => decode(weights, &input, &output),
        Cmd::Eval {
            images,
            quality,
            csv,
            save,
        } => eval_v1(weights, &images, quality, csv.as_deref(), save.as_deref()),
        Cmd::EvalV2 { network, images } => eval_v2(&network, &images),
        Cmd::Train {
            data,
            val,
            out,
            config,
            resume,
        } => tools::train::train(config, &data, val.as_deref(), &out, resume),
        Cmd::Calibrate {
            network,
            data,
            val,
            out,
            max_images,
        } => {
            let bytes = read_file(&network)?;
            let vae = Vae::from_safetensors(&bytes)
                .map_err(|e| ToolError::codec(network.display())(e.into()))?;
            tools::train::calibrate_and_save(&vae, &bytes, &data, &val, &out, max_images)
        }
    }
}
