//! Token-bucket pacing for the senders.

use std::time::{Duration, Instant};

/// Grants packets at `rate` per second with at most `burst` saved up. A rate of 0 means no
/// limit (flat out).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst: burst.max(1.0),
            tokens: 0.0,
            last: now,
        }
    }

    pub fn unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Takes up to `want` whole tokens and returns how many were granted.
    pub fn take(&mut self, want: usize, now: Instant) -> usize {
        if self.unlimited() {
            return want;
        }
        self.refill(now);
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }

    /// How long until at least one token is available.
    pub fn wait(&mut self, now: Instant) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_at_rate_and_caps_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 50.0, t0);
        assert_eq!(b.take(10, t0), 0);
        // 10 ms at 1000/s = 10 tokens.
        assert_eq!(b.take(100, t0 + Duration::from_millis(10)), 10);
        assert_eq!(b.take(100, t0 + Duration::from_millis(10)), 0);
        // A long idle period is capped by the burst.
        assert_eq!(b.take(1000, t0 + Duration::from_secs(10)), 50);
        let w = b.wait(t0 + Duration::from_secs(10));
        assert!(w > Duration::ZERO && w <= Duration::from_millis(1), "{w:?}");
        // Partial grants keep the remainder.
        let t1 = t0 + Duration::from_secs(10) + Duration::from_millis(5);
        assert_eq!(b.take(3, t1), 3);
        assert_eq!(b.take(10, t1), 2);
    }

    #[test]
    fn total_over_a_second_matches_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(25_000.0, 64.0, t0);
        let mut total = 0;
        for ms in 1..=1000u64 {
            total += b.take(64, t0 + Duration::from_millis(ms));
        }
        assert!((24_990..=25_000).contains(&total), "{total}");
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, 1.0, t0);
        assert_eq!(b.take(64, t0), 64);
        assert_eq!(b.wait(t0), Duration::ZERO);
    }
}
