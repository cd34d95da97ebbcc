//! `vaeproxy eval` and `eval-v2`: size and quality of the codec on a
//! directory of images, with real coded sizes (what a client receives).

use super::{Result, ToolError};
use crate::codec::hyperprior::HyperCodec;
use crate::codec::{quality, Codec};
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One image through the shipped codec at one quality.
#[derive(Debug, Clone)]
pub struct ImageRow {
    /// File name.
    pub name: String,
    /// The `.vlat` file's length.
    pub bytes: usize,
    /// Bits per pixel of that file.
    pub bpp: f64,
    /// PSNR of the reconstruction, dB.
    pub psnr: f64,
    /// MS-SSIM of the reconstruction.
    pub ms_ssim: f64,
    /// Encode time, ms.
    pub enc_ms: f64,
    /// Decode time, ms.
    pub dec_ms: f64,
}

impl ImageRow {
    /// The CSV header matching [`ImageRow::csv`].
    pub const CSV_HEADER: &'static str = "image,bytes,bpp,psnr,ms_ssim,enc_ms,dec_ms";

    /// The row as one CSV line.
    pub fn csv(&self) -> String {
        format!(
            "{},{},{:.5},{:.3},{:.5},{:.1},{:.1}",
            self.name, self.bytes, self.bpp, self.psnr, self.ms_ssim, self.enc_ms, self.dec_ms
        )
    }
}

/// Encodes and decodes each image at `quality`; with `save`, writes each
/// reconstruction there as `NAME.qQUALITY.png`. `on_row` sees each result as
/// it is made (a run over a directory takes a while).
pub fn eval(
    codec: &Codec,
    images: &[(PathBuf, RgbImage)],
    quality: u8,
    save: Option<&Path>,
    mut on_row: impl FnMut(&ImageRow),
) -> Result<Vec<ImageRow>> {
    let mut rows = Vec::with_capacity(images.len());
    for (path, img) in images {
        let context = || ToolError::codec(path.display());
        let (bytes, enc_ms) = timed(|| codec.encode(img, quality).map_err(context()))?;
        let (rec, dec_ms) = timed(|| codec.decode(&bytes).map_err(context()))?;
        let row = ImageRow {
            name: file_name(path),
            bytes: bytes.len(),
            bpp: bytes.len() as f64 * 8.0 / pixels(img),
            psnr: quality::psnr(img, &rec),
            ms_ssim: quality::ms_ssim(img, &rec),
            enc_ms,
            dec_ms,
        };
        if let Some(dir) = save {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let out = dir.join(format!("{stem}.q{quality}.png"));
            rec.save(&out)
                .map_err(|source| ToolError::Save { path: out, source })?;
        }
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Means of one codec-v2 level over a set of images.
#[derive(Debug, Clone, Default)]
pub struct LevelRow {
    /// 1-based level.
    pub level: usize,
    /// Bits per pixel of the ANS words plus a 16-byte header.
    pub bpp: f64,
    /// PSNR, dB.
    pub psnr: f64,
    /// MS-SSIM.
    pub ms_ssim: f64,
    /// Encode time, ms.
    pub enc_ms: f64,
    /// Decode time, ms.
    pub dec_ms: f64,
    /// [`quality::grid_excess`] at periods 4, 8 and 16.
    pub grid: [f64; 3],
}

/// Every level of a codec-v2 network on `images` (means per level).
pub fn eval_v2(
    codec: &HyperCodec,
    images: &[(PathBuf, RgbImage)],
    mut on_row: impl FnMut(&LevelRow),
) -> Result<Vec<LevelRow>> {
    if images.is_empty() {
        return Err(ToolError::Usage("no images to evaluate".into()));
    }
    let n = images.len() as f64;
    let mut out = Vec::with_capacity(codec.levels());
    for level in 0..codec.levels() {
        let mut row = LevelRow {
            level: level + 1,
            ..LevelRow::default()
        };
        for (path, img) in images {
            let context = || ToolError::codec(path.display());
            let ((coded, _), enc_ms) = timed(|| codec.encode(img, level).map_err(context()))?;
            let (rec, dec_ms) = timed(|| codec.decode(&coded).map_err(context()))?;
            let bytes = coded.words.len() * 4 + 16;
            row.bpp += bytes as f64 * 8.0 / pixels(img) / n;
            row.psnr += quality::psnr(img, &rec) / n;
            row.ms_ssim += quality::ms_ssim(img, &rec) / n;
            row.enc_ms += enc_ms / n;
            row.dec_ms += dec_ms / n;
            for (g, period) in row.grid.iter_mut().zip([4, 8, 16]) {
                *g += quality::grid_excess(img, &rec, period) / n;
            }
        }
        on_row(&row);
        out.push(row);
    }
    Ok(out)
}

/// `f`'s result and how long it took, in ms.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let out = f()?;
    Ok((out, t.elapsed().as_secs_f64() * 1e3))
}

fn pixels(img: &RgbImage) -> f64 {
    f64::from(img.width()) * f64::from(img.height())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_measures_what_the_codec_does() {
        let codec = Codec::shipped().unwrap();
        // a smooth gradient: the codec must keep it well above 25 dB
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])
        });
        let dir = std::env::temp_dir().join(format!("vaeproxy-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let images = vec![(PathBuf::from("grad.png"), img)];
        let mut seen = 0;
        let rows = eval(&codec, &images, 2, Some(&dir), |_| seen += 1).unwrap();
        assert_eq!(seen, 1);
        let r = &rows[0];
        assert_eq!(r.name, "grad.png");
        assert!(r.bytes > 16 && r.bpp > 0.0, "{r:?}");
        assert!(r.psnr > 25.0 && r.ms_ssim > 0.8, "{r:?}");
        assert!(r.csv().starts_with("grad.png,"));
        assert!(dir.join("grad.q2.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
