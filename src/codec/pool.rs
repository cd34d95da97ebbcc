//! The bounded blocking pool: the only way async code reaches the model.
//!
//! Encoding a photo takes ~150 ms of CPU. Run on a tokio worker it would stall
//! every connection that worker serves, and `spawn_blocking` would queue
//! without bound under load. So the model gets a fixed set of OS threads and a
//! fixed-size queue; when the queue is full, `try_run` says so at once and the
//! caller degrades (passes the original image through) instead of waiting.

use super::Codec;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&Codec) + Send>;

/// The pool was full (or is shutting down); the job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("model pool is saturated")]
pub struct Saturated;

/// A fixed number of model threads behind a bounded queue. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    tx: SyncSender<Job>,
    codec: Arc<Codec>,
    queued: IntGauge,
    /// Jobs accepted and not finished (running or waiting), at most `capacity`.
    in_pool: Arc<AtomicUsize>,
    capacity: usize,
}

impl Pool {
    /// Starts `threads` workers sharing `codec`, with room for `queue` waiting jobs.
    pub fn new(
        codec: Arc<Codec>,
        threads: usize,
        queue: usize,
        queued: IntGauge,
    ) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let capacity = threads + queue;
        // The channel never fills: `in_pool` admits at most `capacity` jobs.
        let (tx, rx) = sync_channel::<Job>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let codec = Arc::clone(&codec);
            let queued = queued.clone();
            std::thread::Builder::new()
                .name(format!("vaeproxy-model-{i}"))
                .spawn(move || worker(&rx, &codec, &queued))?;
        }
        Ok(Pool {
            tx,
            codec,
            queued,
            in_pool: Arc::default(),
            capacity,
        })
    }

    /// The codec the workers use (for its id and level count; never call its
    /// encode/decode from async code).
    pub fn codec(&self) -> &Arc<Codec> {
        &self.codec
    }

    /// Queues `f`; the receiver yields its result. Never blocks: a full queue
    /// is `Err(Saturated)`.
    pub fn try_run<T, F>(&self, f: F) -> Result<oneshot::Receiver<T>, Saturated>
    where
        T: Send + 'static,
        F: FnOnce(&Codec) -> T + Send + 'static,
    {
        if self.in_pool.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.in_pool.fetch_sub(1, Ordering::AcqRel);
            return Err(Saturated);
        }
        // Released when the job is done, panics or is dropped unrun.
        let slot = Slot(Arc::clone(&self.in_pool));
        let (done, rx) = oneshot::channel();
        // the job runs on a pool thread, inside the span of the request that asked
        let span = tracing::Span::current();
        let job: Job = Box::new(move |codec| {
            let out = span.in_scope(|| f(codec));
            // Freed before the result is sent, so a caller that submits again
            // the moment it hears back always finds its place.
            drop(slot);
            // The caller may have gone away (client disconnected); nothing to do then.
            let _ = done.send(out);
        });
        self.queued.inc();
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.dec();
                Err(Saturated)
            }
        }
    }

    /// Whether no job is waiting for a thread: background work (the sampler)
    /// submits only then, so live traffic comes first.
    pub fn is_idle(&self) -> bool {
        self.queued.get() == 0
    }
}

/// One admitted job's place in the pool.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, codec: &Codec, queued: &IntGauge) {
    loop {
        // The lock is held only while taking one job, not while running it.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        queued.dec();
        // A panic inside the model must not shrink the pool.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(codec)));
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a handle over shared state: its contents are the metrics' business
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_is_refused_not_queued() {
        let codec = Arc::new(Codec::shipped().unwrap());
        let gauge = IntGauge::new("q", "q").unwrap();
        let pool = Pool::new(codec, 1, 1, gauge.clone()).unwrap();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        // One job occupies the thread, one waits in the queue...
        let first = pool
            .try_run(move |_| {
                hold_rx.recv().ok();
                1
            })
            .unwrap();
        // Give the worker time to take the first job off the queue.
        while gauge.get() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let second = pool.try_run(|c| c.levels()).unwrap();
        // ...so a third is refused at once.
        assert_eq!(pool.try_run(|_| 3).unwrap_err(), Saturated);
        assert_eq!(gauge.get(), 1);
        hold_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1);
        assert!(second.await.unwrap() >= 3);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_kill_the_pool() {
        let codec = Arc::new(Codec::shipped().unwrap());
        let pool = Pool::new(codec, 1, 4, IntGauge::new("q", "q").unwrap()).unwrap();
        for _ in 0..8 {
            let rx = pool.try_run(|_| -> u8 { panic!("boom") }).unwrap();
            assert!(rx.await.is_err());
        }
        // Panicked jobs gave their places back.
        assert_eq!(pool.try_run(|_| 7).unwrap().await.unwrap(), 7);
    }
}
