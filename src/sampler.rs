//! Images sampled from the VAE's prior, generated ahead of time and served
//! from their own moka cache, so a request never waits on the model.
//!
//! Sample `i` of a pool is a pure function of (seed, i, size, temperature,
//! weights): its latent is drawn from an RNG seeded with (seed, i), quantized
//! and entropy-coded like any other latent, and the image is the decoder's
//! output for exactly that code. A latent-capable client that decodes the
//! code gets the same pixels, and a restart regenerates the same bytes.

use crate::codec::pool::Pool;
use crate::codec::Codec;
use crate::config::{SampleFormat, SamplePool};
use crate::metrics::Metrics;
use bytes::Bytes;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::sync::Arc;
use std::time::Duration;

/// One generated sample.
#[derive(Debug)]
pub struct Sample {
    /// The picture in the pool's format.
    pub image: Bytes,
    pub content_type: &'static str,
    /// The `.vlat` latent code the picture was decoded from.
    pub latent: Bytes,
    /// Strong validator over the image bytes.
    pub etag: String,
}

/// What a lookup found.
pub enum Lookup {
    NoPool,
    OutOfRange(u32),
    /// Not generated yet (or evicted and being regenerated).
    NotReady,
    Ready(Arc<Sample>),
}

/// Quality level used to code sampled latents: the finest, since the pixels
/// come from the coded latent and should look their best.
fn sample_level(codec: &Codec) -> u8 {
    codec.levels()
}

/// Generates sample `index` of `pool`. CPU work: call it on the model pool.
pub fn generate(codec: &Codec, pool: &SamplePool, index: u32) -> crate::Result<Sample> {
    let s = 16;
    let (gh, gw) = (
        pool.height.div_ceil(s) as usize,
        pool.width.div_ceil(s) as usize,
    );
    let z = codec.vae().config.z;
    // One RNG per sample, so the order of generation does not matter.
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        pool.seed ^ (u64::from(index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let vals: Vec<f32> = (0..z * gh * gw)
        .map(|_| {
            let e: f32 = StandardNormal.sample(&mut rng);
            e * pool.temperature
        })
        .collect();
    let z = Tensor::from_vec(vals, (z, gh, gw), &Device::Cpu)?;
    let latent = codec.encode_latent(&z, sample_level(codec), pool.width, pool.height)?;
    let img = codec.decode(&latent)?;
    let mut out = Vec::new();
    let (format, content_type) = match pool.format {
        SampleFormat::Png => (image::ImageFormat::Png, "image/png"),
        SampleFormat::Jpeg => (image::ImageFormat::Jpeg, "image/jpeg"),
        SampleFormat::Webp => (image::ImageFormat::WebP, "image/webp"),
    };
    let write = if format == image::ImageFormat::Jpeg {
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, pool.jpeg_quality);
        img.write_with_encoder(enc)
    } else {
        img.write_to(&mut std::io::Cursor::new(&mut out), format)
    };
    write.map_err(|e| crate::Error::Image(format!("writing the sample: {e}")))?;
    let etag = format!("\"s-{:08x}-{}\"", crc32fast::hash(&out), out.len());
    Ok(Sample {
        image: Bytes::from(out),
        content_type,
        latent: Bytes::from(latent),
        etag,
    })
}

/// The pools, their store and the background generator. Cheap to clone.
#[derive(Clone)]
pub struct Sampler {
    pools: Arc<Vec<SamplePool>>,
    store: moka::future::Cache<(usize, u32), Arc<Sample>>,
    pool: Pool,
    metrics: Metrics,
}

impl Sampler {
    /// `budget`: bytes for samples, apart from the HTTP cache.
    pub fn new(pools: Vec<SamplePool>, budget: u64, pool: Pool, metrics: Metrics) -> Sampler {
        let store = moka::future::Cache::builder()
            .max_capacity(budget)
            .weigher(|_k, s: &Arc<Sample>| {
                (s.image.len() + s.latent.len() + 128).min(u32::MAX as usize) as u32
            })
            .build();
        Sampler {
            pools: Arc::new(pools),
            store,
            pool,
            metrics,
        }
    }

    pub fn pools(&self) -> &[SamplePool] {
        &self.pools
    }

    /// Starts the background generation of every pool. It submits one job at
    /// a time and only when the model pool is idle, so live traffic comes first.
    pub fn start(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            for p in 0..me.pools.len() {
                for i in 0..me.pools[p].count {
                    me.fill(p, i).await;
                }
            }
            tracing::info!("sample pools generated");
        });
    }

    /// Generates (p, i) unless present; waits politely for an idle pool.
    async fn fill(&self, p: usize, i: u32) {
        if self.store.contains_key(&(p, i)) {
            return;
        }
        loop {
            if self.pool.is_idle() {
                let spec = self.pools[p].clone();
                // A full pool (live traffic won the race) means: wait and retry.
                if let Ok(rx) = self.pool.try_run(move |codec| generate(codec, &spec, i)) {
                    match rx.await {
                        Ok(Ok(sample)) => {
                            self.metrics.samples_generated.inc();
                            self.store.insert((p, i), Arc::new(sample)).await;
                        }
                        Ok(Err(e)) => tracing::warn!("sample {}/{i}: {e}", self.pools[p].name),
                        Err(_) => tracing::warn!("sample {}/{i}: job failed", self.pools[p].name),
                    }
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Finds sample `index` of pool `name`. A sample that was evicted is
    /// regenerated in the background and reported as not ready.
    pub async fn get(&self, name: &str, index: u32) -> Lookup {
        let Some(p) = self.pools.iter().position(|q| q.name == name) else {
            return Lookup::NoPool;
        };
        if index >= self.pools[p].count {
            return Lookup::OutOfRange(self.pools[p].count);
        }
        match self.store.get(&(p, index)).await {
            Some(s) => Lookup::Ready(s),
            None => {
                let me = self.clone();
                tokio::spawn(async move { me.fill(p, index).await });
                Lookup::NotReady
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_and_decode_to_themselves() {
        let codec = Codec::shipped().unwrap();
        let mut spec = SamplePool::default_pool();
        spec.width = 48;
        spec.height = 40;
        let a = generate(&codec, &spec, 3).unwrap();
        let b = generate(&codec, &spec, 3).unwrap();
        let c = generate(&codec, &spec, 4).unwrap();
        assert_eq!(a.image, b.image);
        assert_ne!(a.image, c.image);
        let img = image::load_from_memory(&a.image).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (48, 40));
        assert_eq!(
            codec.decode(&a.latent).unwrap(),
            img,
            "the latent decodes to the served pixels"
        );
        spec.seed = 1;
        assert_ne!(generate(&codec, &spec, 3).unwrap().image, a.image);
    }
}
