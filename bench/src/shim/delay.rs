//! The delay line, sans-IO: when a datagram or chunk that arrived at `now` leaves, or whether
//! it is lost. Departures never reorder (a later arrival never leaves earlier), so jitter
//! delays a stream without reordering it, as a queue in a real path does.

use std::time::{Duration, Instant};

/// One direction of an emulated path.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Path {
    /// One-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from [0, jitter] per packet.
    pub jitter: Duration,
    /// Probability a datagram is dropped (0..=1; not applied to TCP).
    pub loss: f64,
}

pub struct DelayLine {
    path: Path,
    last: Option<Instant>,
}

impl DelayLine {
    pub fn new(path: Path) -> Self {
        DelayLine { path, last: None }
    }

    /// When something that arrived at `now` leaves; `None` when lost. `u_jitter` and `u_loss`
    /// are uniform draws in [0, 1) (the caller's random source; tests pass fixed values).
    pub fn depart(
        &mut self,
        now: Instant,
        u_jitter: f64,
        u_loss: f64,
        lossy: bool,
    ) -> Option<Instant> {
        if lossy && u_loss < self.path.loss {
            return None;
        }
        let at = now + self.path.delay + self.path.jitter.mul_f64(u_jitter.clamp(0.0, 1.0));
        let at = self.last.map_or(at, |l| at.max(l));
        self.last = Some(at);
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_by_the_configured_amount() {
        let t0 = Instant::now();
        let mut d = DelayLine::new(Path {
            delay: ms(40),
            jitter: ms(0),
            loss: 0.0,
        });
        assert_eq!(d.depart(t0, 0.5, 0.5, true), Some(t0 + ms(40)));
        assert_eq!(d.depart(t0 + ms(5), 0.9, 0.5, true), Some(t0 + ms(45)));
    }

    #[test]
    fn jitter_never_reorders() {
        let t0 = Instant::now();
        let mut d = DelayLine::new(Path {
            delay: ms(10),
            jitter: ms(20),
            loss: 0.0,
        });
        let a = d.depart(t0, 1.0, 0.0, true).unwrap(); // 30 ms
        let b = d.depart(t0 + ms(1), 0.0, 0.0, true).unwrap(); // would be 11 ms
        assert_eq!(a, t0 + ms(30));
        assert_eq!(b, a, "held behind the earlier packet");
        let c = d.depart(t0 + ms(100), 0.5, 0.0, true).unwrap();
        assert_eq!(c, t0 + ms(120));
    }

    #[test]
    fn loss_applies_to_datagrams_only() {
        let t0 = Instant::now();
        let mut d = DelayLine::new(Path {
            delay: ms(1),
            jitter: ms(0),
            loss: 0.25,
        });
        assert_eq!(d.depart(t0, 0.0, 0.1, true), None);
        assert!(d.depart(t0, 0.0, 0.3, true).is_some());
        assert!(
            d.depart(t0, 0.0, 0.1, false).is_some(),
            "a TCP chunk is never dropped"
        );
    }
}
