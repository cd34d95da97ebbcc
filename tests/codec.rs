//! The codec with the shipped weights on real photos (held-out packaged
//! photos in tests/data, never Kodak).

use vaeproxy::codec::{self, quality, Codec};
use vaeproxy::latent::wire;
use vaeproxy::Error;

fn photo() -> image::RgbImage {
    image::open("tests/data/twowings.png").unwrap().to_rgb8()
}

#[test]
fn round_trip_every_level_is_monotonic() {
    let c = Codec::shipped().unwrap();
    assert!(c.levels() >= 3);
    let img = photo();
    let mut last = (0usize, 0f64);
    for q in 1..=c.levels() {
        let bytes = c.encode(&img, q).unwrap();
        let rec = c.decode(&bytes).unwrap();
        assert_eq!(rec.dimensions(), img.dimensions());
        let p = quality::psnr(&img, &rec);
        assert!(
            bytes.len() > last.0,
            "level {q} not larger than level {}",
            q - 1
        );
        assert!(
            p > last.1 - 0.2,
            "level {q} psnr {p} below level {} ({})",
            q - 1,
            last.1
        );
        last = (bytes.len(), p);
    }
    // the best level must be a usable picture, far above a flat mean colour (~14 dB)
    assert!(last.1 > 24.0, "psnr {} at the top level", last.1);
}

#[test]
fn odd_sizes_and_jpeg_input() {
    let c = Codec::shipped().unwrap();
    let jpg = std::fs::read("tests/data/canyon.jpg").unwrap();
    let img = codec::read_image(&jpg, codec::DEFAULT_MAX_PIXELS).unwrap();
    for (w, h) in [(1, 1), (17, 5), (37, 53), (320, 160)] {
        let sub = image::imageops::crop_imm(&img, 0, 0, w, h).to_image();
        let rec = c
            .decode(&c.encode(&sub, codec::DEFAULT_QUALITY).unwrap())
            .unwrap();
        assert_eq!(rec.dimensions(), (w, h));
    }
}

#[test]
fn deterministic_bytes() {
    let c = Codec::shipped().unwrap();
    let img = photo();
    assert_eq!(c.encode(&img, 2).unwrap(), c.encode(&img, 2).unwrap());
}

#[test]
fn tiled_matches_single_pass() {
    // 1280x1088 is 80x68 latent cells: above the one-pass limit, so tiled.
    let c = Codec::shipped().unwrap();
    let img = image::imageops::resize(&photo(), 1280, 1088, image::imageops::FilterType::Triangle);
    let tiled = c.latent_mean(&img).unwrap();
    let x = codec::image_to_tensor(&img, 16).unsqueeze(0).unwrap();
    let (whole, _) = c.vae().encode(&x).unwrap();
    let d = (tiled - whole.squeeze(0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-3, "tiled latent differs by {d}");

    // decoding in tiles writes the same pixels as one pass (up to rounding)
    let z = c.latent_mean(&img).unwrap();
    let tiled = c.decode_latent(&z).unwrap();
    let whole = c.vae().decode(&z.unsqueeze(0).unwrap()).unwrap();
    let whole = codec::tensor_to_image(&whole.squeeze(0).unwrap()).unwrap();
    let worst = tiled
        .as_raw()
        .iter()
        .zip(whole.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "tiled decode differs by {worst} levels");
}

#[test]
fn hostile_latents_are_errors() {
    let c = Codec::shipped().unwrap();
    let good = c.encode(&photo(), 2).unwrap();
    for n in [0, 3, 10, 44, good.len() / 2, good.len() - 1] {
        assert!(c.decode(&good[..n]).is_err());
    }
    // a payload for other weights
    let mut other = wire::parse(&good).unwrap().header;
    other.model = wire::ModelId([9; 16]);
    let words = wire::payload_words(wire::parse(&good).unwrap().payload);
    let foreign = wire::write(&other, &words);
    assert!(matches!(
        c.decode(&foreign),
        Err(Error::ModelMismatch { .. })
    ));
    // a quality level the model does not have
    let mut h = wire::parse(&good).unwrap().header;
    h.quality = 200;
    assert!(matches!(
        c.decode(&wire::write(&h, &words)),
        Err(Error::Incompatible(_))
    ));
    // junk payload with a valid frame: never a panic
    let mut h = wire::parse(&good).unwrap().header;
    h.quality = 1;
    for seed in 1..50u32 {
        let junk: Vec<u32> = (0..seed)
            .map(|i| i.wrapping_mul(0x9e37_79b9) ^ seed)
            .collect();
        let _ = c.decode(&wire::write(&h, &junk));
    }
}

#[test]
fn bad_images_are_errors() {
    assert!(matches!(
        codec::read_image(b"not an image", 1 << 20),
        Err(Error::Image(_))
    ));
    let png = std::fs::read("tests/data/twowings.png").unwrap();
    assert!(matches!(
        codec::read_image(&png[..png.len() / 3], 1 << 24),
        Err(Error::Image(_))
    ));
    // the declared size is checked before any pixels are allocated
    assert!(matches!(
        codec::read_image(&png, 1000),
        Err(Error::ImageTooLarge(_))
    ));
}

/// A PNG header declaring 60000x60000 pixels in a few dozen bytes is refused
/// from the header alone.
#[test]
fn decompression_bomb_header_is_refused() {
    let mut png = Vec::new();
    png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32fast::hash(&ihdr).to_be_bytes());
    let t = std::time::Instant::now();
    assert!(matches!(
        codec::read_image(&png, codec::DEFAULT_MAX_PIXELS),
        Err(Error::ImageTooLarge(_))
    ));
    assert!(t.elapsed().as_secs() < 5);
}

/// Codec v2's coder on the narrow fixture network (random weights, real
/// tables from `scripts/train_codec.py`'s export): every level round-trips,
/// the decoder rebuilds exactly the encoder's reconstruction, and a damaged
/// stream is an error or a picture, never a panic.
#[test]
fn hyperprior_codec_round_trips() {
    use vaeproxy::codec::hyperprior::{Coded, HyperCodec};
    let bytes = std::fs::read("tests/data/hyperprior-parity.safetensors").unwrap();
    let codec = HyperCodec::from_safetensors(&bytes).unwrap();
    let img = codec::read_image(&std::fs::read("tests/data/canyon.jpg").unwrap(), 1 << 24).unwrap();
    let mut sizes = Vec::new();
    for level in 0..codec.levels() {
        let (coded, recon) = codec.encode(&img, level).unwrap();
        assert_eq!(recon.dimensions(), img.dimensions());
        let back = codec.decode(&coded).unwrap();
        assert!(
            back == recon,
            "level {level}: decoder differs from the encoder's reconstruction"
        );
        sizes.push(coded.words.len());
    }
    assert!(codec.encode(&img, codec.levels()).is_err());
    let (coded, _) = codec.encode(&img, 0).unwrap();
    let mut cut = coded.clone();
    cut.words.truncate(cut.words.len() / 2);
    let _ = codec.decode(&cut);
    for i in 0..coded.words.len().min(64) {
        let mut bad = coded.clone();
        bad.words[i] ^= 0x5a5a_5a5a;
        let _ = codec.decode(&bad);
    }
    let huge = Coded {
        width: 1 << 20,
        height: 1 << 20,
        ..coded.clone()
    };
    assert!(codec.decode(&huge).is_err());
    assert!(codec
        .decode(&Coded {
            words: vec![],
            ..coded
        })
        .is_err());
}
