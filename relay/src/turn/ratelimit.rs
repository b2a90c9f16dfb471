//! Token buckets: per source IP for unauthenticated requests, per allocation for bandwidth.

use std::net::IpAddr;
use std::time::Instant;

use rustc_hash::FxHashMap;

/// A token bucket refilled continuously at `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn full(burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes `cost` tokens if available.
    #[inline]
    pub fn take(&mut self, cost: f64, rate: f64, burst: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }
}

/// Per-source-IP limiter with a bounded table.
#[derive(Debug)]
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    buckets: FxHashMap<IpAddr, TokenBucket>,
    max_entries: usize,
}

impl SourceLimiter {
    pub fn new(rate: u32, burst: u32, max_entries: usize) -> Self {
        SourceLimiter {
            rate: rate as f64,
            burst: burst as f64,
            buckets: FxHashMap::default(),
            max_entries,
        }
    }

    /// Whether one more unauthenticated request from `ip` is accepted.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        if let Some(b) = self.buckets.get_mut(&ip) {
            return b.take(1.0, rate, burst, now);
        }
        if self.buckets.len() >= self.max_entries {
            self.sweep(now);
            if self.buckets.len() >= self.max_entries {
                // Table full of active sources: refuse newcomers rather than grow unbounded.
                return false;
            }
        }
        let mut b = TokenBucket::full(burst, now);
        let ok = b.take(1.0, rate, burst, now);
        self.buckets.insert(ip, b);
        ok
    }

    /// Forgets sources whose bucket has refilled completely.
    pub fn sweep(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| !b.is_full(rate, burst, now));
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_bursts_and_refills() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(2, 4, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..4 {
            assert!(l.allow(ip, t0));
        }
        assert!(!l.allow(ip, t0));
        assert!(l.allow(ip, t0 + Duration::from_millis(500)));
        assert!(!l.allow(ip, t0 + Duration::from_millis(500)));
        assert!(l.allow("192.0.2.2".parse().unwrap(), t0));
        l.sweep(t0 + Duration::from_secs(10));
        assert!(l.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1, 1, 2);
        assert!(l.allow("192.0.2.1".parse().unwrap(), t0));
        assert!(l.allow("192.0.2.2".parse().unwrap(), t0));
        assert!(!l.allow("192.0.2.3".parse().unwrap(), t0));
        assert_eq!(l.len(), 2);
        assert!(l.allow("192.0.2.3".parse().unwrap(), t0 + Duration::from_secs(5)));
    }
}
