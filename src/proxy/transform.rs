//! The response filter that turns an image body into a latent code, with the
//! guards that keep the original instead. `transform` runs on the model pool
//! (it is CPU work); `sniff` and `animated` are cheap byte checks.

use crate::codec::{quality, read_dynamic, Codec};
use crate::config::CodecConfig;
use crate::error::Error;
use bytes::Bytes;
use image::ImageFormat;

/// Why an image was kept as its original bytes (the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Over the byte or pixel limit, or the header claims a bomb.
    TooLarge,
    /// Sniffed as an image, but the bytes do not decode.
    Undecodable,
    /// Has an alpha channel that is actually used.
    Alpha,
    /// An animated GIF, PNG or WebP.
    Animated,
    /// The latent is not smaller than the original.
    NotSmaller,
    /// The reconstruction is below the PSNR floor: out of distribution.
    LowPsnr,
    /// The origin said `Cache-Control: no-transform`.
    NoTransform,
    /// The model pool was full; the image passed through unencoded.
    PoolFull,
    /// Labelled `image/*` but not a format this build decodes (AVIF, SVG,
    /// BMP, ...): passed through as it came.
    Unsupported,
}

impl Guard {
    /// Every guard, for metrics that start at zero.
    pub const ALL: [Guard; 9] = [
        Guard::TooLarge,
        Guard::Undecodable,
        Guard::Alpha,
        Guard::Animated,
        Guard::NotSmaller,
        Guard::LowPsnr,
        Guard::NoTransform,
        Guard::PoolFull,
        Guard::Unsupported,
    ];

    /// The `reason` label in `vaeproxy_guard_total`.
    pub fn label(self) -> &'static str {
        match self {
            Guard::TooLarge => "too_large",
            Guard::Undecodable => "undecodable",
            Guard::Alpha => "alpha",
            Guard::Animated => "animated",
            Guard::NotSmaller => "not_smaller",
            Guard::LowPsnr => "low_psnr",
            Guard::NoTransform => "no_transform",
            Guard::PoolFull => "pool_full",
            Guard::Unsupported => "unsupported_format",
        }
    }
}

/// The outcome of one encode job.
#[derive(Debug, Clone)]
pub enum Transformed {
    /// Encoded; `psnr` is the reconstruction's, dB.
    Latent {
        /// The `.vlat` bytes.
        code: Bytes,
        /// PSNR of the reconstruction against the original, dB.
        psnr: f64,
    },
    /// Kept as the original, for this reason.
    Kept(Guard),
}

/// Encode outcomes by the SHA-256 of the original bytes. Every outcome of
/// [`transform`] depends only on the bytes (the model is fixed for a
/// proxy's life; a reload that changes the codec settings clears the memo),
/// so a refetch that brings back the same
/// bytes (a client's `no-cache`, an invalidation by POST) reuses it instead
/// of paying the model again; clients can no longer force encodes at will.
#[derive(Clone)]
pub struct Memo {
    cache: Option<moka::future::Cache<[u8; 32], Transformed>>,
}

impl Memo {
    /// `bytes` of latent codes kept (0 = off).
    pub fn new(bytes: u64) -> Memo {
        let cache = (bytes > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_k, t: &Transformed| match t {
                    Transformed::Latent { code, .. } => (code.len() + 96) as u32,
                    Transformed::Kept(_) => 96,
                })
                .build()
        });
        Memo { cache }
    }

    /// SHA-256 of `bytes`; large bodies are hashed off the async threads.
    pub async fn digest(bytes: &Bytes) -> [u8; 32] {
        use sha2::Digest;
        if bytes.len() < 1 << 20 {
            return sha2::Sha256::digest(bytes).into();
        }
        let b = bytes.clone();
        match tokio::task::spawn_blocking(move || sha2::Sha256::digest(&b).into()).await {
            Ok(d) => d,
            Err(_) => sha2::Sha256::digest(bytes).into(),
        }
    }

    /// The earlier outcome for these original bytes (SHA-256).
    pub async fn get(&self, digest: &[u8; 32]) -> Option<Transformed> {
        self.cache.as_ref()?.get(digest).await
    }

    /// Forgets every outcome (a reload changed the codec settings they depend on).
    pub fn clear(&self) {
        if let Some(c) = &self.cache {
            c.invalidate_all();
        }
    }

    /// Remembers an outcome.
    pub async fn insert(&self, digest: [u8; 32], t: Transformed) {
        if let Some(c) = &self.cache {
            c.insert(digest, t).await;
        }
    }
}

/// The image format from the magic bytes; `None` for anything the codec does
/// not take (the Content-Type header is not trusted).
pub fn sniff(body: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(body).ok()? {
        f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif) => {
            Some(f)
        }
        _ => None,
    }
}

/// What the cheap checks on the async side decide, before any model work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precheck {
    /// Not an image at all: stored as it is, no guard counted.
    NotAnImage,
    /// An image kept as it came, for this reason.
    Keep(Guard),
    /// Worth a job on the model pool ([`transform`] checks the rest).
    Encode,
}

/// The guards that need no decoding: the bytes' format (a response labelled
/// `image/*` that is none of ours counts as `unsupported_format`) and the
/// origin's `no-transform`.
pub fn precheck(headers: &hyper::HeaderMap, body: &[u8]) -> Precheck {
    if sniff(body).is_none() {
        let labelled_image = headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("image/"));
        return if labelled_image {
            Precheck::Keep(Guard::Unsupported)
        } else {
            Precheck::NotAnImage
        };
    }
    if crate::cache::directives::directives(headers).no_transform {
        return Precheck::Keep(Guard::NoTransform);
    }
    Precheck::Encode
}

/// Whether the file holds more than one frame, read from the bytes alone
/// (no decoder runs, so nothing is allocated): PNG's `acTL` chunk (before the
/// image data), WebP's VP8X animation flag, a second GIF image descriptor.
pub fn animated(format: ImageFormat, body: &[u8]) -> bool {
    match format {
        ImageFormat::Png => png_has_actl(body),
        ImageFormat::WebP => body.len() > 20 && &body[12..16] == b"VP8X" && body[20] & 0x02 != 0,
        ImageFormat::Gif => gif_frames(body) > 1,
        _ => false,
    }
}

/// Image descriptors in a GIF, counting to 2 at most, by walking its blocks
/// (GIF89a: header, screen descriptor, colour tables, extension and image
/// blocks made of length-prefixed sub-blocks).
fn gif_frames(b: &[u8]) -> usize {
    fn table(flags: u8) -> usize {
        if flags & 0x80 != 0 {
            3 << ((flags & 7) + 1)
        } else {
            0
        }
    }
    fn skip_sub_blocks(b: &[u8], mut i: usize) -> Option<usize> {
        loop {
            let n = *b.get(i)? as usize;
            i += 1 + n;
            if n == 0 {
                return Some(i);
            }
        }
    }
    if b.len() < 13 {
        return 0;
    }
    let mut i = 13 + table(b[10]);
    let mut frames = 0;
    loop {
        let next = match b.get(i) {
            Some(0x21) => skip_sub_blocks(b, i + 2),
            Some(0x2C) => {
                frames += 1;
                if frames > 1 {
                    return frames;
                }
                match b.get(i + 9) {
                    // descriptor, local table, LZW code size, then the data
                    Some(&flags) => skip_sub_blocks(b, i + 10 + table(flags) + 1),
                    None => None,
                }
            }
            _ => None,
        };
        match next {
            Some(n) => i = n,
            None => return frames,
        }
    }
}

fn png_has_actl(b: &[u8]) -> bool {
    let mut i = 8;
    while i + 8 <= b.len() {
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let ty = &b[i + 4..i + 8];
        if ty == b"acTL" {
            return true;
        }
        if ty == b"IDAT" {
            return false;
        }
        i = i.saturating_add(12).saturating_add(len);
    }
    false
}

/// Decodes, checks and encodes one image. Never panics on bad bytes.
pub fn transform(codec: &Codec, body: &[u8], cfg: &CodecConfig) -> Transformed {
    let Some(format) = sniff(body) else {
        return Transformed::Kept(Guard::Undecodable);
    };
    if body.len() as u64 > cfg.max_image_bytes {
        return Transformed::Kept(Guard::TooLarge);
    }
    if animated(format, body) {
        return Transformed::Kept(Guard::Animated);
    }
    let img = match read_dynamic(body, cfg.max_pixels) {
        Ok(img) => img,
        Err(Error::ImageTooLarge(_)) => return Transformed::Kept(Guard::TooLarge),
        Err(_) => return Transformed::Kept(Guard::Undecodable),
    };
    if img.color().has_alpha() && has_meaningful_alpha(&img) {
        return Transformed::Kept(Guard::Alpha);
    }
    let rgb = img.to_rgb8();
    drop(img);
    let code = match codec.encode(&rgb, cfg.quality.min(codec.levels())) {
        Ok(c) => c,
        Err(_) => return Transformed::Kept(Guard::Undecodable),
    };
    if code.len() >= body.len() {
        return Transformed::Kept(Guard::NotSmaller);
    }
    let psnr = match codec.decode(&code) {
        Ok(recon) => quality::psnr(&rgb, &recon),
        Err(_) => return Transformed::Kept(Guard::Undecodable),
    };
    if psnr < cfg.psnr_floor {
        return Transformed::Kept(Guard::LowPsnr);
    }
    Transformed::Latent {
        code: Bytes::from(code),
        psnr,
    }
}

/// Alpha that changes the picture: more than 0.1% of pixels below 250.
fn has_meaningful_alpha(img: &image::DynamicImage) -> bool {
    let rgba = img.to_rgba8();
    let see_through = rgba.pixels().filter(|p| p.0[3] < 250).count();
    see_through * 1000 > rgba.pixels().len()
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Memo").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn prechecks_need_no_decoding() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(precheck(&h, b"<html>"), Precheck::NotAnImage);
        h.insert("content-type", "image/avif".parse().unwrap());
        assert_eq!(
            precheck(&h, b"\0\0\0\x1cftypavif"),
            Precheck::Keep(Guard::Unsupported)
        );
        let png = b"\x89PNG\r\n\x1a\n....";
        assert_eq!(precheck(&h, png), Precheck::Encode);
        h.insert("cache-control", "no-transform".parse().unwrap());
        assert_eq!(precheck(&h, png), Precheck::Keep(Guard::NoTransform));
    }

    #[test]
    fn sniffs_bytes_not_names() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some(ImageFormat::Png));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"<html>"), None);
        assert_eq!(sniff(b"BM......"), None, "BMP is not taken");
    }

    #[test]
    fn guards() {
        let codec = Codec::shipped().unwrap();
        let cfg = CodecConfig::default();
        // Transparent image: kept.
        let mut rgba = image::RgbaImage::new(64, 64);
        for (x, _, p) in rgba.enumerate_pixels_mut() {
            *p = image::Rgba([200, 100, 50, if x < 32 { 0 } else { 255 }]);
        }
        let t = transform(&codec, &png(rgba.into()), &cfg);
        assert!(matches!(t, Transformed::Kept(Guard::Alpha)), "{t:?}");
        // Line art (a hard checkerboard) is below the PSNR floor.
        let art = image::RgbImage::from_fn(256, 256, |x, y| {
            if (x / 2 + y / 2) % 2 == 0 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let t = transform(&codec, &png(art.into()), &cfg);
        assert!(
            matches!(t, Transformed::Kept(Guard::LowPsnr | Guard::NotSmaller)),
            "{t:?}"
        );
        // Garbage after a PNG signature.
        let t = transform(&codec, b"\x89PNG\r\n\x1a\nnot really", &cfg);
        assert!(matches!(t, Transformed::Kept(Guard::Undecodable)), "{t:?}");
        // A photo becomes a latent.
        let photo = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/canyon.jpg"
        ))
        .unwrap();
        match transform(&codec, &photo, &cfg) {
            Transformed::Latent { code, psnr } => {
                assert!(code.len() < photo.len());
                assert!(psnr > cfg.psnr_floor);
            }
            t => panic!("{t:?}"),
        }
    }

    /// A GIF with a `w` x `h` screen and `frames` 1x1 frames.
    fn gif(w: u16, h: u16, frames: usize) -> Vec<u8> {
        let mut b = b"GIF89a".to_vec();
        b.extend_from_slice(&w.to_le_bytes());
        b.extend_from_slice(&h.to_le_bytes());
        b.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
        for _ in 0..frames {
            // a graphic control extension, then the image
            b.extend_from_slice(&[0x21, 0xf9, 4, 0, 10, 0, 0, 0]);
            b.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 0x01, 0]);
        }
        b.push(0x3b);
        b
    }

    #[test]
    fn gif_frames_are_counted_from_the_bytes() {
        assert_eq!(gif_frames(&gif(4, 4, 1)), 1);
        assert_eq!(gif_frames(&gif(4, 4, 3)), 2, "counts to two at most");
        assert!(animated(ImageFormat::Gif, &gif(4, 4, 2)));
        assert!(!animated(ImageFormat::Gif, &gif(4, 4, 1)));
        let truncated = gif(4, 4, 2);
        assert_eq!(gif_frames(&truncated[..30]), 1);
        assert_eq!(gif_frames(b"GIF89a"), 0);
        // The decoder agrees that these are real GIFs.
        assert!(crate::codec::read_image(&gif(4, 4, 1), 100).is_ok());
    }

    #[test]
    fn gif_bomb_is_too_large_before_any_decoder() {
        let codec = Codec::shipped().unwrap();
        for (w, h) in [(16000, 16000), (65535, 65535)] {
            let t = transform(&codec, &gif(w, h, 1), &CodecConfig::default());
            assert!(matches!(t, Transformed::Kept(Guard::TooLarge)), "{t:?}");
            let e = crate::codec::read_image(&gif(w, h, 1), 24_000_000).unwrap_err();
            assert!(matches!(e, Error::ImageTooLarge(_)), "{e}");
        }
    }

    #[test]
    fn bomb_header_is_too_large() {
        // A valid PNG header claiming 60000x60000, then nothing.
        let mut b = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        b.extend_from_slice(&60000u32.to_be_bytes());
        b.extend_from_slice(&60000u32.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0]);
        let crc = crc32fast::hash(&b[12..29]);
        b.extend_from_slice(&crc.to_be_bytes());
        let codec = Codec::shipped().unwrap();
        let t = transform(&codec, &b, &CodecConfig::default());
        assert!(matches!(t, Transformed::Kept(Guard::TooLarge)), "{t:?}");
    }
}
