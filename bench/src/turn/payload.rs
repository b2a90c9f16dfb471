//! The bench payload (sequence number and send timestamp) and the loss/RTT tally.

use hdrhistogram::Histogram;

/// Smallest payload the bench sends: client index (4), sequence number (4), send time (8).
pub const PAYLOAD_MIN: usize = 16;

/// What the receiver learns from an echoed payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Global client index that sent the packet.
    pub client: u32,
    /// Per-client sequence number.
    pub seq: u32,
    /// Send time, nanoseconds since the bench epoch.
    pub sent_ns: u64,
}

/// Writes a stamp at the front of `buf` (at least [`PAYLOAD_MIN`] bytes); the rest of the
/// buffer is left as it is (filler).
#[inline]
pub fn encode(buf: &mut [u8], s: Stamp) {
    buf[0..4].copy_from_slice(&s.client.to_be_bytes());
    buf[4..8].copy_from_slice(&s.seq.to_be_bytes());
    buf[8..16].copy_from_slice(&s.sent_ns.to_be_bytes());
}

/// Reads a stamp; `None` if the payload is too short.
#[inline]
pub fn decode(buf: &[u8]) -> Option<Stamp> {
    if buf.len() < PAYLOAD_MIN {
        return None;
    }
    Some(Stamp {
        client: u32::from_be_bytes(buf[0..4].try_into().ok()?),
        seq: u32::from_be_bytes(buf[4..8].try_into().ok()?),
        sent_ns: u64::from_be_bytes(buf[8..16].try_into().ok()?),
    })
}

/// A new RTT histogram: nanoseconds from 1 ns to 60 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Packets sent and echoed back, with their round-trip times.
#[derive(Clone, Debug)]
pub struct Tally {
    pub sent: u64,
    pub received: u64,
    /// Echoes that could not be decoded or came back to the wrong client.
    pub invalid: u64,
    pub rtt_ns: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            sent: 0,
            received: 0,
            invalid: 0,
            rtt_ns: new_histogram(),
        }
    }
}

impl Tally {
    /// Counts one echo received at `now_ns` (same epoch as the send stamps).
    #[inline]
    pub fn echo(&mut self, stamp: &Stamp, now_ns: u64) {
        self.received += 1;
        let rtt = now_ns
            .saturating_sub(stamp.sent_ns)
            .clamp(1, 60_000_000_000);
        self.rtt_ns.saturating_record(rtt);
    }

    pub fn merge(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.received += other.received;
        self.invalid += other.invalid;
        self.rtt_ns
            .add(&other.rtt_ns)
            .expect("histograms share bounds");
    }

    /// Lost packets: sent and never echoed (duplicates cannot make it negative).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// Loss in percent of packets sent (0 when nothing was sent).
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost() as f64 * 100.0 / self.sent as f64
        }
    }

    /// RTT quantile in microseconds (0 when nothing was received).
    pub fn rtt_us(&self, q: f64) -> f64 {
        if self.rtt_ns.is_empty() {
            0.0
        } else {
            self.rtt_ns.value_at_quantile(q) as f64 / 1000.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_short_payload_is_rejected() {
        let mut buf = [0xAAu8; 100];
        let s = Stamp {
            client: 9_999,
            seq: u32::MAX - 1,
            sent_ns: 123_456_789_012,
        };
        encode(&mut buf, s);
        assert_eq!(decode(&buf), Some(s));
        assert_eq!(decode(&buf[..PAYLOAD_MIN]), Some(s));
        assert_eq!(decode(&buf[..PAYLOAD_MIN - 1]), None);
        assert!(buf[PAYLOAD_MIN..].iter().all(|b| *b == 0xAA));
    }

    #[test]
    fn loss_and_rtt_accounting() {
        let mut a = Tally {
            sent: 1000,
            ..Default::default()
        };
        for i in 0..990u64 {
            let s = Stamp {
                client: 0,
                seq: i as u32,
                sent_ns: 1_000_000,
            };
            // RTT of 100 µs for most, 5 ms for the last ten.
            let rtt = if i >= 980 { 5_000_000 } else { 100_000 };
            a.echo(&s, 1_000_000 + rtt);
        }
        assert_eq!(a.lost(), 10);
        assert!((a.loss_pct() - 1.0).abs() < 1e-9);
        assert!((a.rtt_us(0.5) - 100.0).abs() < 0.2, "{}", a.rtt_us(0.5));
        assert!(
            (a.rtt_us(0.999) - 5000.0).abs() < 5.0,
            "{}",
            a.rtt_us(0.999)
        );
        let b = Tally {
            sent: 10,
            received: 12, // duplicates
            ..Default::default()
        };
        assert_eq!(b.lost(), 0);
        a.merge(&b);
        assert_eq!(a.sent, 1010);
        assert_eq!(a.received, 1002);
        assert_eq!(Tally::default().loss_pct(), 0.0);
        assert_eq!(Tally::default().rtt_us(0.99), 0.0);
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let mut t = Tally::default();
        let s = Stamp {
            client: 1,
            seq: 1,
            sent_ns: 10,
        };
        t.echo(&s, 5);
        assert_eq!(t.received, 1);
    }
}
