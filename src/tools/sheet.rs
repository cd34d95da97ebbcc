//! `vaeproxy sample --grid`: a pool's samples as one contact sheet.

use super::{Result, ToolError};
use crate::codec::{self, Codec};
use crate::config::SamplePool;
use crate::sampler;
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use std::path::Path;

const GAP: u32 = 4;

/// A pool's samples in a grid, `columns` wide, with an optional full-width
/// row (an interpolation strip) below. Each sample is made exactly as the
/// proxy makes it, so the sheet shows what the pool serves.
pub fn contact_sheet(
    codec: &Codec,
    spec: &SamplePool,
    columns: u32,
    row: Option<RgbImage>,
) -> Result<RgbImage> {
    let columns = columns.clamp(1, spec.count.max(1));
    let rows = spec.count.div_ceil(columns);
    let width = columns * (spec.width + GAP) + GAP;
    let row = row.map(|r| {
        let w = width - 2 * GAP;
        let h = (u64::from(r.height()) * u64::from(w) / u64::from(r.width().max(1))).max(1);
        imageops::resize(&r, w, h as u32, FilterType::Lanczos3)
    });
    let grid_h = rows * (spec.height + GAP) + GAP;
    let height = grid_h + row.as_ref().map_or(0, |r| r.height() + GAP);
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for i in 0..spec.count {
        let context = format!("sample {i}");
        let s = sampler::generate(codec, spec, i).map_err(ToolError::codec(&context))?;
        let img = codec::read_image(&s.image, codec::DEFAULT_MAX_PIXELS)
            .map_err(ToolError::codec(&context))?;
        let (x, y) = (i % columns, i / columns);
        imageops::replace(
            &mut sheet,
            &img,
            i64::from(GAP + x * (spec.width + GAP)),
            i64::from(GAP + y * (spec.height + GAP)),
        );
    }
    if let Some(r) = row {
        imageops::replace(&mut sheet, &r, i64::from(GAP), i64::from(grid_h));
    }
    Ok(sheet)
}

/// The strip the proxy's `/_vaeproxy/interpolate` serves for photos `a` and
/// `b`, each encoded at `quality` as the proxy would cache it.
pub fn interpolation_row(
    codec: &Codec,
    a: &Path,
    b: &Path,
    steps: u32,
    quality: u8,
) -> Result<RgbImage> {
    let code = |p: &Path| {
        let img = super::read_image(p)?;
        codec
            .encode(&img, quality)
            .map_err(ToolError::codec(p.display()))
    };
    let (a, b) = (code(a)?, code(b)?);
    let strip = sampler::interpolation(codec, &a, &b, steps, None, sampler::Output::PNG)
        .map_err(ToolError::codec("interpolating"))?;
    codec::read_image(&strip.image, codec::DEFAULT_MAX_PIXELS)
        .map_err(ToolError::codec("interpolating"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_holds_every_sample_and_the_row() {
        let codec = Codec::shipped().unwrap();
        let mut spec = SamplePool::default_pool();
        spec.count = 3;
        spec.width = 32;
        spec.height = 32;
        let row = RgbImage::from_pixel(64, 8, Rgb([0, 0, 0]));
        let sheet = contact_sheet(&codec, &spec, 2, Some(row)).unwrap();
        // two columns of 32 px with 4 px gaps; two rows; the strip scaled to 68 px wide
        assert_eq!(sheet.width(), 2 * 36 + 4);
        let strip_h = 8 * 68 / 64;
        assert_eq!(sheet.height(), 2 * 36 + 4 + strip_h + 4);
        // the sample cells are not left white, the strip is black
        assert_ne!(sheet.get_pixel(GAP + 16, GAP + 16), &Rgb([255, 255, 255]));
        assert_eq!(sheet.get_pixel(GAP + 1, 2 * 36 + 4 + 1), &Rgb([0, 0, 0]));
    }
}
