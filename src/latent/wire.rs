//! The `.vlat` wire format (`application/vnd.vaeproxy.latent`), version 1.
//!
//! This module knows bytes and nothing else (no model, no runtime), so a
//! second implementation can be written from `docs/latent-format.md` alone.
//! Parsing is `check` (cheap, bounds every field before anything is
//! allocated) then `parse` (borrows the payload).
//!
//! ```text
//! offset size  field
//!  0      4    magic "VLAT"
//!  4      1    version (1)
//!  5      1    quality level (1..=255; the model says how many it has)
//!  6      2    reserved, must be 0
//!  8     16    model id: first 16 bytes of SHA-256 of the weights file
//! 24      4    image width   (u32 LE, 1..=MAX_SIDE)
//! 28      4    image height  (u32 LE, 1..=MAX_SIDE)
//! 32      2    latent channels (u16 LE)
//! 34      2    latent height   (u16 LE) = ceil(height / 16)
//! 36      2    latent width    (u16 LE) = ceil(width / 16)
//! 38      2    reserved, must be 0
//! 40      4    payload length in bytes (u32 LE, multiple of 4)
//! 44      N    payload: entropy-coded latent (u32 LE words)
//! 44+N    4    CRC-32 (IEEE) of bytes 0..44+N, u32 LE
//! ```

use std::fmt;

/// The first four bytes of every latent file.
pub const MAGIC: [u8; 4] = *b"VLAT";
/// The format version this build reads and writes.
pub const VERSION: u8 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 44;
/// Bytes of the CRC-32 trailer.
pub const TRAILER_LEN: usize = 4;
/// The media type of a latent response.
pub const MIME: &str = "application/vnd.vaeproxy.latent";
/// Largest image side a latent may declare. Decoding allocates in proportion to
/// width x height, so this is checked before anything else is believed.
pub const MAX_SIDE: u32 = 16384;
/// Largest image area (pixels) a latent may declare: 64 Mpx.
pub const MAX_PIXELS: u64 = 64 << 20;
/// The latent grid is the image size divided by this, rounded up.
pub const GRID: u32 = 16;

/// A model id: the first 16 bytes of the SHA-256 of the weights file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelId(pub [u8; 16]);

impl ModelId {
    /// Lower-case hex, as used in `Accept: ...; model=<hex>`.
    pub fn to_hex(&self) -> String {
        // On every latent response's path: no formatting machinery.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    /// Parses 64 hex digits (either case); `None` otherwise.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in s.chunks(2).enumerate() {
            let hex = |c: u8| (c as char).to_digit(16);
            out[i] = (hex(pair[0])? * 16 + hex(pair[1])?) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({})", self.to_hex())
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The header fields of a latent file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1-based quality level.
    pub quality: u8,
    /// The weights that made it; a decoder with other weights refuses it.
    pub model: ModelId,
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// Latent channels.
    pub channels: u16,
    /// Latent grid rows (image height / 16, rounded up).
    pub latent_height: u16,
    /// Latent grid columns (image width / 16, rounded up).
    pub latent_width: u16,
}

impl Header {
    /// Header for an image of `width` x `height` with `channels` latent channels.
    pub fn new(model: ModelId, quality: u8, width: u32, height: u32, channels: u16) -> Self {
        Self {
            quality,
            model,
            width,
            height,
            channels,
            latent_height: height.div_ceil(GRID) as u16,
            latent_width: width.div_ceil(GRID) as u16,
        }
    }
}

/// A parsed latent file borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latent<'a> {
    /// The header fields.
    pub header: Header,
    /// The entropy-coded words, little-endian u32s.
    pub payload: &'a [u8],
}

/// Why bytes are not a valid latent file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header + declared payload + CRC.
    Truncated {
        /// Bytes the file must have.
        needed: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The first bytes are not `VLAT`.
    BadMagic,
    /// A version this build does not read.
    UnsupportedVersion(u8),
    /// A field is outside what the format allows.
    BadField(&'static str),
    /// The CRC does not match: bytes were damaged in transit or storage.
    Checksum,
    /// Bytes after the CRC.
    TrailingBytes(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { needed, got } => {
                write!(f, "truncated latent: need {needed} bytes, got {got}")
            }
            WireError::BadMagic => write!(f, "not a vaeproxy latent (bad magic)"),
            WireError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported latent format version {v} (this build reads {VERSION})"
                )
            }
            WireError::BadField(what) => write!(f, "invalid latent header: {what}"),
            WireError::Checksum => write!(f, "latent checksum mismatch (corrupted bytes)"),
            WireError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the latent"),
        }
    }
}

impl std::error::Error for WireError {}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Validates the header and framing without allocating; returns the total length.
pub fn check(b: &[u8]) -> Result<usize, WireError> {
    if b.len() < HEADER_LEN {
        // Report a wrong magic before a short read so junk gets the better message.
        let n = b.len().min(4);
        if b[..n] != MAGIC[..n] {
            return Err(WireError::BadMagic);
        }
        return Err(WireError::Truncated {
            needed: HEADER_LEN + TRAILER_LEN,
            got: b.len(),
        });
    }
    if b[0..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if b[4] != VERSION {
        return Err(WireError::UnsupportedVersion(b[4]));
    }
    if b[5] == 0 {
        return Err(WireError::BadField("quality level 0"));
    }
    if u16_at(b, 6) != 0 || u16_at(b, 38) != 0 {
        return Err(WireError::BadField("reserved bytes are not zero"));
    }
    let (w, h) = (u32_at(b, 24), u32_at(b, 28));
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(WireError::BadField("image size out of range"));
    }
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(WireError::BadField("image area over the 64 Mpx limit"));
    }
    if u16_at(b, 32) == 0 {
        return Err(WireError::BadField("zero latent channels"));
    }
    if u16_at(b, 34) as u32 != h.div_ceil(GRID) || u16_at(b, 36) as u32 != w.div_ceil(GRID) {
        return Err(WireError::BadField("latent grid does not match image size"));
    }
    let n = u32_at(b, 40) as usize;
    if !n.is_multiple_of(4) {
        return Err(WireError::BadField("payload length not a multiple of 4"));
    }
    let total = HEADER_LEN
        .checked_add(n)
        .and_then(|t| t.checked_add(TRAILER_LEN))
        .ok_or(WireError::BadField("payload length overflows"))?;
    if b.len() < total {
        return Err(WireError::Truncated {
            needed: total,
            got: b.len(),
        });
    }
    if b.len() > total {
        return Err(WireError::TrailingBytes(b.len() - total));
    }
    if crc32fast::hash(&b[..total - TRAILER_LEN]) != u32_at(b, total - TRAILER_LEN) {
        return Err(WireError::Checksum);
    }
    Ok(total)
}

/// Checks then parses `b`, which must hold exactly one latent file.
pub fn parse(b: &[u8]) -> Result<Latent<'_>, WireError> {
    let total = check(b)?;
    let mut model = [0u8; 16];
    model.copy_from_slice(&b[8..24]);
    Ok(Latent {
        header: Header {
            quality: b[5],
            model: ModelId(model),
            width: u32_at(b, 24),
            height: u32_at(b, 28),
            channels: u16_at(b, 32),
            latent_height: u16_at(b, 34),
            latent_width: u16_at(b, 36),
        },
        payload: &b[HEADER_LEN..total - TRAILER_LEN],
    })
}

/// Serialises a header and payload words into one latent file.
pub fn write(h: &Header, payload: &[u32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + 4 * payload.len() + TRAILER_LEN);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    b.push(h.quality);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&h.model.0);
    b.extend_from_slice(&h.width.to_le_bytes());
    b.extend_from_slice(&h.height.to_le_bytes());
    b.extend_from_slice(&h.channels.to_le_bytes());
    b.extend_from_slice(&h.latent_height.to_le_bytes());
    b.extend_from_slice(&h.latent_width.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&((4 * payload.len()) as u32).to_le_bytes());
    for w in payload {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The payload as u32 words.
pub fn payload_words(payload: &[u8]) -> Vec<u32> {
    payload
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let h = Header::new(ModelId([7; 16]), 2, 100, 40, 32);
        write(&h, &[1, 2, 0xdead_beef])
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let l = parse(&b).unwrap();
        assert_eq!(l.header.width, 100);
        assert_eq!(l.header.latent_width, 7);
        assert_eq!(l.header.latent_height, 3);
        assert_eq!(payload_words(l.payload), vec![1, 2, 0xdead_beef]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = sample();
        for n in 0..b.len() {
            assert!(parse(&b[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn every_bit_flip_is_an_error() {
        let b = sample();
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(parse(&c).is_err(), "flip of bit {i} parsed");
        }
    }

    #[test]
    fn hostile_headers() {
        let mut b = sample();
        b[0] = b'X';
        assert_eq!(parse(&b), Err(WireError::BadMagic));
        let mut b = sample();
        b[4] = 9;
        assert_eq!(parse(&b), Err(WireError::UnsupportedVersion(9)));
        // absurd size with a valid checksum
        let h = Header {
            width: u32::MAX,
            ..Header::new(ModelId([0; 16]), 1, 16, 16, 4)
        };
        assert!(matches!(
            parse(&write(&h, &[])),
            Err(WireError::BadField(_))
        ));
        let mut long = sample();
        long.push(0);
        assert_eq!(parse(&long), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn model_id_hex() {
        let id = ModelId([0xab; 16]);
        assert_eq!(ModelId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ModelId::from_hex("zz"), None);
        assert_eq!(ModelId::from_hex(&"g".repeat(32)), None);
    }
}
