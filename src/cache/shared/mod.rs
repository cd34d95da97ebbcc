//! The shared tier: Redis (or a Redis Cluster) under the moka cache, so that
//! a fleet of proxies behind one load balancer fetches and encodes each image
//! once, and a restarted proxy starts warm. The store is an optimisation,
//! never a dependency: every call is bounded by `cache.shared_timeout_ms`,
//! every failure (down, slow, full, restarted, garbage) counts in
//! `vaeproxy_shared_errors_total{kind}` and answers "not there", and the
//! proxy goes on from moka and the origin as if there were no shared tier.
//! The connection is made in the background and remade by redis-rs itself.
//!
//! Keys are `PREFIX` + the model id + `:` + the primary key, so proxies
//! running different weights never serve each other's latents. Purges by
//! prefix or tag reach the store too (`purge`).

mod purge;

use super::key::PrimaryKey;
use super::record::{self, Stored};
use bytes::Bytes;
use prometheus::IntCounterVec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where the shared tier is and how long to wait for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedConfig {
    /// One `redis://` URL, or several seed nodes of a Redis Cluster.
    pub nodes: Vec<String>,
    /// Treat `nodes` as a Redis Cluster (also when only one seed is given).
    pub cluster: bool,
    /// Put before every key (several fleets can share one Redis).
    pub prefix: String,
    /// Longest wait for any one Redis call.
    pub timeout: Duration,
    /// How long a fetch lock lives if its holder dies.
    pub lock_ttl: Duration,
    /// Longest a proxy waits for another proxy's fetch of the same key
    /// before fetching itself.
    pub lock_wait: Duration,
}

#[derive(Clone)]
enum Conn {
    One(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// A handle on the shared tier; cheap to clone.
#[derive(Clone)]
pub struct Shared {
    conn: Arc<RwLock<Option<Conn>>>,
    up: Arc<AtomicBool>,
    /// `prefix` + model id + `:`.
    namespace: String,
    cfg: SharedConfig,
    /// `vaeproxy_shared_total{event}`: hit, miss, store, lock_wait, ...
    events: IntCounterVec,
    /// `vaeproxy_shared_errors_total{kind}`: timeout, redis, garbage.
    errors: IntCounterVec,
}

/// A fetch lock held in the shared tier; [`Shared::unlock`] gives it back.
#[derive(Debug)]
pub struct Lock {
    key: String,
    token: String,
}

/// What asking for the fetch lock of a key found.
#[derive(Debug)]
pub enum Claim {
    /// This proxy fetches; others wait for its record.
    Mine(Lock),
    /// Another proxy is fetching it.
    Theirs,
    /// The store did not answer: fetch without a lock.
    Unknown,
}

impl Shared {
    /// A handle for `model`'s keys; connects in the background (and keeps
    /// retrying), so a Redis that is down at startup delays nothing.
    pub fn start(
        cfg: SharedConfig,
        model: &str,
        events: IntCounterVec,
        errors: IntCounterVec,
    ) -> Shared {
        let shared = Shared {
            conn: Arc::default(),
            up: Arc::default(),
            namespace: format!("{}{model}:", cfg.prefix),
            cfg,
            events,
            errors,
        };
        let me = shared.clone();
        tokio::spawn(async move { me.connect().await });
        shared
    }

    async fn connect(&self) {
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(2), self.open()).await;
            match attempt {
                Ok(Ok(conn)) => {
                    *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                    self.up.store(true, Ordering::Relaxed);
                    tracing::info!("shared cache: connected to {}", self.cfg.nodes.join(", "));
                    return;
                }
                Ok(Err(e)) if !warned => {
                    tracing::warn!(
                        "shared cache: {}: {e}; serving without it until it answers",
                        self.cfg.nodes.join(", ")
                    );
                    warned = true;
                }
                Err(_) if !warned => {
                    tracing::warn!(
                        "shared cache: {}: no answer; serving without it until it answers",
                        self.cfg.nodes.join(", ")
                    );
                    warned = true;
                }
                _ => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn open(&self) -> redis::RedisResult<Conn> {
        if self.cfg.cluster {
            let client = redis::cluster::ClusterClient::new(self.cfg.nodes.clone())?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let client = redis::Client::open(self.cfg.nodes[0].as_str())?;
            Ok(Conn::One(client.get_connection_manager().await?))
        }
    }

    /// Whether the last call reached the store (for `/healthz` detail).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn key(&self, key: &PrimaryKey) -> String {
        format!("{}{}", self.namespace, key.0)
    }

    fn lock_key(&self, key: &PrimaryKey) -> String {
        format!("{}lock:{}", self.namespace, key.0)
    }

    /// One command, bounded by the timeout; every failure is counted and
    /// comes back as `None`.
    async fn call<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let conn = self
            .conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let run = async move {
            match conn {
                Conn::One(mut c) => cmd.query_async::<T>(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async::<T>(&mut c).await,
            }
        };
        match tokio::time::timeout(self.cfg.timeout, run).await {
            Ok(Ok(v)) => {
                self.up.store(true, Ordering::Relaxed);
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::debug!("shared cache: {e}");
                self.errors.with_label_values(&["redis"]).inc();
                self.up.store(false, Ordering::Relaxed);
                None
            }
            Err(_) => {
                self.errors.with_label_values(&["timeout"]).inc();
                self.up.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// The variants another proxy stored for `key`, if any.
    pub async fn get(&self, key: &PrimaryKey) -> Option<Vec<Stored>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(key));
        let found: Option<Vec<u8>> = self.call(cmd).await?;
        let Some(bytes) = found else {
            self.events.with_label_values(&["miss"]).inc();
            return None;
        };
        self.parse(bytes)
    }

    /// A record read back, counted as a hit, or as garbage when it does not parse.
    fn parse(&self, bytes: Vec<u8>) -> Option<Vec<Stored>> {
        let parsed = record::decode(&Bytes::from(bytes));
        let (counter, label) = match parsed {
            Some(_) => (&self.events, "hit"),
            None => (&self.errors, "garbage"),
        };
        counter.with_label_values(&[label]).inc();
        parsed
    }

    /// Stores a record for `key` that lives `ttl`, listed under its
    /// surrogate keys `tags` for tag purges. Awaited (within the timeout)
    /// before the fetch lock is given back, so a proxy waiting on the lock
    /// finds the record as soon as the lock is gone.
    pub async fn put(&self, key: &PrimaryKey, value: Vec<u8>, ttl: Duration, tags: &[String]) {
        let secs = record::ttl(ttl);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("EX").arg(secs);
        if self.call::<()>(cmd).await.is_some() {
            self.events.with_label_values(&["store"]).inc();
            self.index_tags(key, tags, secs).await;
        }
    }

    /// Removes `key`'s record (unsafe methods, purges).
    pub async fn remove(&self, key: &PrimaryKey) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(key));
        if self.call::<i64>(cmd).await.is_some() {
            self.events.with_label_values(&["invalidate"]).inc();
        }
    }

    /// Asks for the fleet-wide fetch lock of `key` (`SET NX PX`).
    pub async fn claim(&self, key: &PrimaryKey) -> Claim {
        let lock = Lock {
            key: self.lock_key(key),
            token: format!("{:016x}", rand::random::<u64>()),
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(&lock.key)
            .arg(&lock.token)
            .arg("NX")
            .arg("PX")
            .arg(self.cfg.lock_ttl.as_millis() as u64);
        match self.call::<Option<String>>(cmd).await {
            Some(Some(_)) => {
                self.events.with_label_values(&["lock_won"]).inc();
                Claim::Mine(lock)
            }
            Some(None) => Claim::Theirs,
            None => Claim::Unknown,
        }
    }

    /// Gives a lock back, only if it is still ours (it may have expired and
    /// gone to another proxy).
    pub async fn unlock(&self, lock: Lock) {
        const UNLOCK: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                              return redis.call('del', KEYS[1]) else return 0 end";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(UNLOCK).arg(1).arg(&lock.key).arg(&lock.token);
        let _ = self.call::<i64>(cmd).await;
    }

    /// Waits (polling) for the proxy holding `key`'s lock to store its
    /// record, at most `lock_wait`; `None` if it did not come in time or the
    /// lock went without a record (the response was not storable).
    pub async fn wait_for(&self, key: &PrimaryKey) -> Option<Vec<Stored>> {
        self.events.with_label_values(&["lock_wait"]).inc();
        let deadline = tokio::time::Instant::now() + self.cfg.lock_wait;
        let mut step = Duration::from_millis(10);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(step).await;
            step = (step * 2).min(Duration::from_millis(100));
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.key(key));
            let found: Option<Vec<u8>> = self.call(cmd).await?;
            let Some(bytes) = found else {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(self.lock_key(key));
                if self.call::<i64>(cmd).await? == 0 {
                    return None;
                }
                continue;
            };
            return self.parse(bytes);
        }
        None
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("nodes", &self.cfg.nodes)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}
