//! Gets past the CRC so the fuzzer explores the entropy decoder and the
//! network: the input supplies quality, a small image size and the payload;
//! the header is made valid for the shipped model and the CRC is computed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vaeproxy::client::Decoder;
use vaeproxy::latent::wire;

fn decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| Decoder::shipped().expect("shipped weights load"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let d = decoder();
    // small images keep each run fast; the framing target covers big headers
    let (q, w, h) = (data[0] % 8, 1 + data[1] as u32 % 96, 1 + data[2] as u32 % 96);
    let words: Vec<u32> = data[3..]
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        })
        .collect();
    let header = wire::Header::new(d.model_id(), q, w, h, 32);
    let _ = d.decode(&wire::write(&header, &words));
});
