//! The bytes of a shared-tier record: every variant stored for one primary
//! key, with its head, body (plain or latent), freshness, `Vary` selection
//! and, for latents, the original image, so that another proxy can serve it
//! exactly as the one that fetched it would. Whatever comes back from the
//! store is hostile until parsed: every length is bounds-checked, and bytes
//! that do not parse are no record at all.

use super::freshness::Freshness;
use super::{Body, Entry};
use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use std::time::{Duration, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"VPSH";
const VERSION: u8 = 1;
/// More variants than the cache keeps per key is garbage.
const MAX_VARIANTS: u32 = 64;
const MAX_HEADERS: u32 = 1024;

/// One variant as the shared tier holds it.
#[derive(Debug)]
pub struct Stored {
    /// The cache entry (a fresh local id is given when it is restored).
    pub entry: Entry,
    /// The original image behind a latent entry, when the originals tier had it.
    pub original: Option<Bytes>,
}

/// Serializes the variants of one key.
pub fn encode(variants: &[(&Entry, Option<&Bytes>)]) -> Vec<u8> {
    let mut w = Vec::with_capacity(
        64 + variants
            .iter()
            .map(|(e, o)| e.weight() as usize + o.map_or(0, |o| o.len()))
            .sum::<usize>(),
    );
    w.extend_from_slice(MAGIC);
    w.push(VERSION);
    put_u32(&mut w, variants.len() as u32);
    for (e, original) in variants {
        put_u32(&mut w, u32::from(e.status.as_u16()));
        put_u32(&mut w, e.headers.len() as u32);
        for (k, v) in &e.headers {
            put_bytes(&mut w, k.as_str().as_bytes());
            put_bytes(&mut w, v.as_bytes());
        }
        match &e.body {
            Body::Plain(b) => {
                w.push(0);
                put_bytes(&mut w, b);
            }
            Body::Latent { code, original_len } => {
                w.push(1);
                put_bytes(&mut w, code);
                put_u64(&mut w, *original_len);
            }
        }
        let f = &e.freshness;
        put_u64(&mut w, f.lifetime.as_millis() as u64);
        put_u64(&mut w, f.initial_age.as_millis() as u64);
        let since_epoch = f
            .response_time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        put_u64(&mut w, since_epoch.as_millis() as u64);
        w.push(u8::from(f.no_stale) | u8::from(f.always_revalidate) << 1);
        put_opt(&mut w, f.stale_while_revalidate);
        put_opt(&mut w, f.stale_if_error);
        put_u32(&mut w, e.vary.len() as u32);
        for (name, value) in &e.vary {
            put_bytes(&mut w, name.as_str().as_bytes());
            match value {
                Some(v) => {
                    w.push(1);
                    put_bytes(&mut w, v.as_bytes());
                }
                None => w.push(0),
            }
        }
        match original {
            Some(o) => {
                w.push(1);
                put_bytes(&mut w, o);
            }
            None => w.push(0),
        }
    }
    w
}

/// Parses a record; `None` for anything that is not one this build wrote.
pub fn decode(bytes: &Bytes) -> Option<Vec<Stored>> {
    let mut r = Reader { b: bytes, at: 0 };
    if r.take(4)? != MAGIC || r.u8()? != VERSION {
        return None;
    }
    let n = r.u32()?;
    if n == 0 || n > MAX_VARIANTS {
        return None;
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        out.push(r.variant()?);
    }
    (r.at == bytes.len()).then_some(out)
}

struct Reader<'a> {
    b: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    /// A length-prefixed slice, shared with the record (no copy).
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        let start = self.at;
        self.take(n)?;
        Some(self.b.slice(start..start + n))
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn opt(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u64()?)),
            _ => None,
        }
    }

    fn variant(&mut self) -> Option<Stored> {
        let status = StatusCode::from_u16(u16::try_from(self.u32()?).ok()?).ok()?;
        let n = self.u32()?;
        if n > MAX_HEADERS {
            return None;
        }
        let mut headers = HeaderMap::with_capacity(n as usize);
        for _ in 0..n {
            let name = HeaderName::from_bytes(&self.bytes()?).ok()?;
            let value = HeaderValue::from_maybe_shared(self.bytes()?).ok()?;
            headers.append(name, value);
        }
        let body = match self.u8()? {
            0 => Body::Plain(self.bytes()?),
            1 => Body::Latent {
                code: self.bytes()?,
                original_len: self.u64()?,
            },
            _ => return None,
        };
        let lifetime = Duration::from_millis(self.u64()?);
        let initial_age = Duration::from_millis(self.u64()?);
        let response_time = UNIX_EPOCH.checked_add(Duration::from_millis(self.u64()?))?;
        let flags = self.u8()?;
        if flags > 3 {
            return None;
        }
        let freshness = Freshness {
            lifetime,
            initial_age,
            response_time,
            no_stale: flags & 1 != 0,
            always_revalidate: flags & 2 != 0,
            stale_while_revalidate: self.opt()?,
            stale_if_error: self.opt()?,
        };
        let n = self.u32()?;
        if n > MAX_HEADERS {
            return None;
        }
        let mut vary = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let name = HeaderName::from_bytes(&self.bytes()?).ok()?;
            let value = match self.u8()? {
                0 => None,
                1 => Some(String::from_utf8(self.bytes()?.to_vec()).ok()?),
                _ => return None,
            };
            vary.push((name, value));
        }
        let original = match self.u8()? {
            0 => None,
            1 => Some(self.bytes()?),
            _ => return None,
        };
        Some(Stored {
            entry: Entry::restored(status, headers, body, freshness, vary),
            original,
        })
    }
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len() as u32);
    w.extend_from_slice(b);
}

fn put_opt(w: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            w.push(1);
            put_u64(w, v);
        }
        None => w.push(0),
    }
}

/// Seconds a record lives in the store: as long as the moka tier would keep
/// its longest-kept variant.
pub fn ttl(keep: Duration) -> u64 {
    keep.as_secs().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: Body) -> Entry {
        let mut h = HeaderMap::new();
        h.insert("etag", HeaderValue::from_static("\"v1\""));
        h.append("x-many", HeaderValue::from_static("a"));
        h.append("x-many", HeaderValue::from_static("b"));
        h.insert("vary", HeaderValue::from_static("accept-language"));
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let f = Freshness {
            lifetime: Duration::from_secs(60),
            initial_age: Duration::from_millis(1500),
            response_time: now,
            no_stale: true,
            always_revalidate: false,
            stale_while_revalidate: Some(30),
            stale_if_error: None,
        };
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_static("de"));
        Entry::new(StatusCode::OK, h, body, f, &req)
    }

    #[test]
    fn round_trip_keeps_everything_but_the_id() {
        let plain = entry(Body::Plain(Bytes::from_static(b"hello")));
        let latent = entry(Body::Latent {
            code: Bytes::from_static(b"VLAT...."),
            original_len: 12345,
        });
        let orig = Bytes::from_static(b"\xff\xd8 a jpeg");
        let bytes = Bytes::from(encode(&[(&plain, None), (&latent, Some(&orig))]));
        let back = decode(&bytes).expect("parses");
        assert_eq!(back.len(), 2);
        for (b, a) in back.iter().zip([&plain, &latent]) {
            let e = &b.entry;
            assert_ne!(e.id, a.id, "a restored entry gets its own id");
            assert_eq!(e.status, a.status);
            assert_eq!(e.headers, a.headers);
            assert_eq!(e.vary, a.vary);
            assert_eq!(e.freshness, a.freshness);
            match (&e.body, &a.body) {
                (Body::Plain(x), Body::Plain(y)) => assert_eq!(x, y),
                (
                    Body::Latent {
                        code: x,
                        original_len: m,
                    },
                    Body::Latent {
                        code: y,
                        original_len: n,
                    },
                ) => {
                    assert_eq!((x, m), (y, n))
                }
                _ => panic!("body kind changed"),
            }
        }
        assert!(back[0].original.is_none());
        assert_eq!(back[1].original.as_ref(), Some(&orig));
    }

    #[test]
    fn garbage_is_no_record() {
        let good = encode(&[(&entry(Body::Plain(Bytes::from_static(b"x"))), None)]);
        // every truncation, and a byte more
        for n in 0..good.len() {
            assert!(
                decode(&Bytes::copy_from_slice(&good[..n])).is_none(),
                "cut at {n}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&Bytes::from(longer)).is_none());
        // a flipped version, an absurd count, a huge length
        let mut v = good.clone();
        v[4] = 9;
        assert!(decode(&Bytes::from(v)).is_none());
        let mut v = good.clone();
        v[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&Bytes::from(v)).is_none());
        let mut v = good;
        v[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&Bytes::from(v)).is_none());
        assert!(decode(&Bytes::from_static(b"OK")).is_none());
    }
}
