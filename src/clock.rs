//! The wall clock the cache reads: ages, freshness and stale windows are
//! computed from it. Injectable so that tests step time forward instead of
//! sleeping through a max-age; the proxy uses the system clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The system clock, optionally plus an offset that can only grow (so time
/// never runs backwards for the cache). Cheap to clone; clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system time; `None` for the plain system clock.
    offset_ms: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock, which [`Clock::advance`] cannot move.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock plus an offset that starts at zero and that
    /// [`Clock::advance`] moves forward: for tests.
    pub fn steppable() -> Clock {
        Clock {
            offset_ms: Some(Arc::default()),
        }
    }

    /// Now, by this clock.
    pub fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        match &self.offset_ms {
            None => now,
            Some(o) => now + Duration::from_millis(o.load(Ordering::Relaxed)),
        }
    }

    /// Moves a steppable clock forward by `d` (whole milliseconds); returns
    /// false, and changes nothing, on the system clock.
    pub fn advance(&self, d: Duration) -> bool {
        match &self.offset_ms {
            None => false,
            Some(o) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                o.fetch_add(ms, Ordering::Relaxed);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_forward_and_shares_the_offset() {
        let c = Clock::steppable();
        let twin = c.clone();
        assert!(c.advance(Duration::from_secs(3600)));
        let ahead = twin.now().duration_since(SystemTime::now()).unwrap();
        assert!(ahead >= Duration::from_secs(3599), "{ahead:?}");
        assert!(!Clock::system().advance(Duration::from_secs(1)));
        let behind = SystemTime::now().duration_since(Clock::system().now());
        assert!(behind.is_err() || behind.unwrap() < Duration::from_secs(1));
    }
}
