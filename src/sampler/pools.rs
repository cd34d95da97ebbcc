//! The sampler's async side: the pools generated ahead of time on the model
//! pool and held in their own moka cache, and the on-request variations and
//! interpolations with their cache; the pure generation is in the parent.

use super::*;
use crate::codec::pool::Pool;
use crate::metrics::Metrics;

/// The pools, their stores and the background generator. Cheap to clone.
#[derive(Clone)]
pub struct Sampler {
    pools: Arc<Vec<SamplePool>>,
    store: moka::future::Cache<(usize, u32), Arc<Sample>>,
    /// Variations and interpolations, by request; a budget of its own so
    /// on-request work cannot evict the pools.
    derived: moka::future::Cache<String, Arc<Sample>>,
    /// Posteriors of cached codes (by `code_hash`), shared by every variation
    /// of one source: each costs a decode and an encoder pass to make.
    posteriors: moka::future::Cache<u64, Arc<Posterior>>,
    pool: Pool,
    metrics: Metrics,
}

fn store<K>(budget: u64) -> moka::future::Cache<K, Arc<Sample>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::future::Cache::builder()
        .max_capacity(budget)
        .weigher(|_k, s: &Arc<Sample>| {
            let latent = s.latent.as_ref().map_or(0, Bytes::len);
            (s.image.len() + latent + 128).min(u32::MAX as usize) as u32
        })
        .build()
}

impl Sampler {
    /// `budget`: bytes for pool samples, `derived_budget`: bytes for
    /// variations and interpolations; both apart from the HTTP cache.
    pub fn new(
        pools: Vec<SamplePool>,
        budget: u64,
        derived_budget: u64,
        pool: Pool,
        metrics: Metrics,
    ) -> Sampler {
        Sampler {
            pools: Arc::new(pools),
            store: store(budget),
            derived: store(derived_budget),
            posteriors: moka::future::Cache::builder()
                .max_capacity(derived_budget / 4)
                .weigher(|_k, p: &Arc<Posterior>| p.weight())
                .build(),
            pool,
            metrics,
        }
    }

    /// The result cached under `key`, if any (no work either way).
    pub async fn derived(&self, key: &str) -> Option<Arc<Sample>> {
        self.derived.get(key).await
    }

    /// The posterior of a cached latent `code`, made once on the model pool
    /// and shared by every variation of that source.
    pub async fn posterior(&self, code: Bytes) -> Result<Arc<Posterior>, DerivedError> {
        let hash = code_hash(&code);
        let metrics = self.metrics.clone();
        let made = on_pool(self.pool.clone(), move |codec| {
            Posterior::of_code(codec, &code)
        });
        let fill = async move {
            let post = made.await?;
            metrics
                .model
                .derived_generated
                .with_label_values(&["posterior"])
                .inc();
            Ok(Arc::new(post))
        };
        self.posteriors
            .try_get_with(hash, fill)
            .await
            .map_err(|e: Arc<DerivedError>| (*e).clone())
    }

    /// The cached result under `key`, or `job`'s, run on the model pool once
    /// however many requests ask at the same time. A full pool is `Busy`,
    /// not a queue: the caller answers 503 and the client retries.
    pub async fn derive<F>(
        &self,
        key: String,
        kind: &'static str,
        job: F,
    ) -> Result<Arc<Sample>, DerivedError>
    where
        F: FnOnce(&Codec) -> crate::Result<Sample> + Send + 'static,
    {
        let metrics = self.metrics.clone();
        let made = on_pool(self.pool.clone(), job);
        let fill = async move {
            let made = made.await?;
            metrics
                .model
                .derived_generated
                .with_label_values(&[kind])
                .inc();
            Ok(Arc::new(made))
        };
        self.derived
            .try_get_with(key, fill)
            .await
            .map_err(|e: Arc<DerivedError>| (*e).clone())
    }

    /// The configured pools.
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
                            self.metrics.model.samples_generated.inc();
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

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

/// Runs `job` on the model pool: `Busy` at once when it is full (the caller
/// answers 503), never a queue. Lazy: nothing is submitted until polled, so
/// a cache fill that another caller wins costs nothing.
async fn on_pool<T, F>(pool: Pool, job: F) -> Result<T, DerivedError>
where
    T: Send + 'static,
    F: FnOnce(&Codec) -> crate::Result<T> + Send + 'static,
{
    pool.try_run(job)
        .map_err(|_| DerivedError::Busy)?
        .await
        .map_err(|_| DerivedError::Failed("the model job died".into()))?
        .map_err(|e| DerivedError::Failed(e.to_string()))
}
