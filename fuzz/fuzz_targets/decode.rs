//! Raw bytes straight into the client decoder: framing, checks, CRC.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vaeproxy::client::Decoder;

fn decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| Decoder::shipped().expect("shipped weights load"))
}

fuzz_target!(|data: &[u8]| {
    let _ = decoder().decode(data);
});
