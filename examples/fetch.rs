//! Fetch an image through a vaeproxy and write it as PNG.
//!
//! `cargo run --release --example fetch -- http://127.0.0.1:8080/photos/lava3.jpg out.png`
//! (with `cargo run --release` serving the demo origin on port 8080)
//!
//! The request asks for a latent made by the built-in weights; a proxy that
//! has one answers with it (a fraction of the bytes) and it is decoded here.
//! Any other image answer is decoded as an ordinary image, so the program
//! works against any HTTP server.

use std::sync::Arc;
use vaeproxy::client::{fetch_image, Decoder};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, out] = args.as_slice() else {
        eprintln!("usage: fetch URL OUT.png");
        return std::process::ExitCode::FAILURE;
    };
    let result = async {
        let decoder = Arc::new(Decoder::shipped()?);
        let img = fetch_image(decoder, url).await?;
        img.save(out)?;
        eprintln!("{url} -> {out} ({}x{})", img.width(), img.height());
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    match result.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fetch: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
