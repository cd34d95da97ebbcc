//! Budgets of the on-demand generative routes (variations, interpolations).
//! A new one costs up to seconds of model time on the pool that live encodes
//! need, so each client address may start only so many per minute, and all
//! of them together only so many model seconds per minute. Both windows are
//! fixed minutes: simple, and a burst can at most double a budget at a
//! window's edge.

use crate::config::GenerativeConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; beyond it the table starts over (a spray of
/// addresses must not grow memory, and a reset only forgives, never blocks).
const MAX_ADDRESSES: usize = 65_536;

/// Why a new generation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This address used its starts for this minute (429).
    PerIp { retry_after: Duration },
    /// The model seconds of this minute are spent (503).
    ModelTime { retry_after: Duration },
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerIp { .. } => "per_ip",
            Refusal::ModelTime { .. } => "model_time",
        }
    }
}

#[derive(Default)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Start of the current window, per address and for the model time.
    window: Option<Instant>,
    starts: HashMap<IpAddr, u32>,
    model_seconds: f64,
}

impl State {
    /// Starts a new window when the current one is over.
    fn roll(&mut self, now: Instant) -> Instant {
        match self.window {
            Some(w) if now.duration_since(w) < WINDOW => w,
            _ => {
                self.window = Some(now);
                self.starts.clear();
                self.model_seconds = 0.0;
                now
            }
        }
    }
}

impl Limiter {
    /// Admits one new generation for `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr, cfg: &GenerativeConfig, now: Instant) -> Result<(), Refusal> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let window = s.roll(now);
        let retry_after = WINDOW.saturating_sub(now.duration_since(window));
        if s.model_seconds >= cfg.model_seconds_per_minute {
            return Err(Refusal::ModelTime { retry_after });
        }
        if s.starts.len() >= MAX_ADDRESSES && !s.starts.contains_key(&ip) {
            s.starts.clear();
        }
        let n = s.starts.entry(ip).or_insert(0);
        if *n >= cfg.per_ip_per_minute {
            return Err(Refusal::PerIp { retry_after });
        }
        *n += 1;
        Ok(())
    }

    /// Charges the model time a generation took to the current window.
    pub fn charge(&self, took: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.model_seconds += took.as_secs_f64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(per_ip: u32, seconds: f64) -> GenerativeConfig {
        GenerativeConfig {
            variations: true,
            interpolations: true,
            per_ip_per_minute: per_ip,
            model_seconds_per_minute: seconds,
        }
    }

    #[test]
    fn per_address_starts_and_model_time() {
        let l = Limiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let c = cfg(2, 5.0);
        assert!(l.admit(a, &c, t0).is_ok());
        assert!(l.admit(a, &c, t0).is_ok());
        let r = l.admit(a, &c, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(r.label(), "per_ip");
        let Refusal::PerIp { retry_after } = r else {
            unreachable!()
        };
        assert_eq!(retry_after, Duration::from_secs(40));
        assert!(
            l.admit(b, &c, t0).is_ok(),
            "another address has its own count"
        );
        l.charge(Duration::from_secs(6));
        assert_eq!(l.admit(b, &c, t0).unwrap_err().label(), "model_time");
        // A new minute forgives both.
        let later = t0 + Duration::from_secs(61);
        assert!(l.admit(a, &c, later).is_ok());
    }
}
