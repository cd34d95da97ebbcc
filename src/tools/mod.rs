//! The offline commands of the `vaeproxy` binary (contact sheets, evaluation,
//! training and calibration) as library functions, so that the binary only
//! parses arguments and every step can be called and tested from Rust.

pub mod eval;
pub mod sheet;
pub mod train;

use crate::codec::Codec;
use std::path::{Path, PathBuf};

/// Why an offline command failed; each variant names the file or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Weights, an image or a latent were refused by the codec.
    #[error("{context}: {source}")]
    Codec {
        /// What was being read or made (a path, "sample 3", "built-in weights").
        context: String,
        /// The codec's reason.
        source: crate::Error,
    },
    /// An image could not be written.
    #[error("{}: {source}", path.display())]
    Save {
        /// The output file.
        path: PathBuf,
        /// The encoder's reason.
        source: image::ImageError,
    },
    /// The configuration is invalid or missing.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The command line asks for something the inputs cannot give.
    #[error("{0}")]
    Usage(String),
    /// A tensor operation failed (a bug or out of memory, not bad input).
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    /// The proxy could not start or stopped on an error.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// The async runtime could not start.
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl ToolError {
    /// Wraps a codec error with what was being worked on.
    pub fn codec(context: impl std::fmt::Display) -> impl FnOnce(crate::Error) -> ToolError {
        let context = context.to_string();
        move |source| ToolError::Codec { context, source }
    }

    /// Wraps an I/O error with its path.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
        move |source| ToolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result of an offline command.
pub type Result<T> = std::result::Result<T, ToolError>;

/// The weights at `path`, or the ones built into the binary.
pub fn load_codec(weights: Option<&Path>) -> Result<Codec> {
    match weights {
        Some(p) => Codec::load(p).map_err(ToolError::codec(p.display())),
        None => Codec::shipped().map_err(ToolError::codec("built-in weights")),
    }
}

/// The whole file.
pub fn read_file(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(ToolError::io(p))
}

/// Writes (replaces) the whole file.
pub fn write_file(p: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(p, bytes).map_err(ToolError::io(p))
}

/// An image file, decoded with the same limits the proxy applies.
pub fn read_image(p: &Path) -> Result<image::RgbImage> {
    crate::codec::read_image(&read_file(p)?, crate::codec::DEFAULT_MAX_PIXELS)
        .map_err(ToolError::codec(p.display()))
}

/// Every image in `dir` (see [`crate::codec::image_files`]), decoded.
pub fn read_images(dir: &Path) -> Result<Vec<(PathBuf, image::RgbImage)>> {
    let files = crate::codec::image_files(dir).map_err(ToolError::codec(dir.display()))?;
    files
        .into_iter()
        .map(|f| read_image(&f).map(|img| (f, img)))
        .collect()
}
