//! The SFU's own media send path for subscribe-only sessions.
//!
//! str0m sends a packet through a per-subscriber send queue, pacer, TWCC register and
//! retransmission cache, then a poll; for one publisher fanned out to a hundred players that
//! bookkeeping costs five times the `sendmmsg` underneath. A player or viewer session's
//! non-simulcast media therefore skips it: once the session's DTLS is up, each forwarded packet
//! gets its rewritten header, is SRTP-protected straight into the datagram and goes to the
//! session's selected path. What str0m did for those streams the SFU does here:
//! - NACKs are answered from one packet cache per published track (`PacketCache`), shared by
//!   all its subscribers, as RTX when the subscriber negotiated it;
//! - sender reports (for every stream of the session, so str0m's are switched off for it)
//!   carry the RTP/NTP mapping for lip sync.
//!
//! Signaling, ICE, DTLS, data channels and keyframe requests stay with str0m, and so do
//! simulcast subscriptions, whose layer choice needs str0m's bandwidth estimate.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::srtp::{SrtcpRx, SrtpTx};

/// Sender reports go out this often per session (RFC 3550's minimum is 5 s; browsers use 1 s).
pub const SR_INTERVAL: Duration = Duration::from_secs(1);
/// Our SRTCP index starts here: str0m may send an early report of its own before it is told
/// to stop, and an index the receiver saw is a replay.
pub const FIRST_SRTCP_INDEX: u32 = 1 << 16;
/// NTP epoch (1900) to Unix epoch (1970), seconds.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One sent packet kept for retransmission.
#[derive(Debug)]
pub struct Cached {
    pub seq: u64,
    pub timestamp: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: std::sync::Arc<[u8]>,
}

/// The recent packets of one published (non-simulcast) track, by extended sequence number.
#[derive(Debug)]
pub struct PacketCache {
    slots: Vec<Option<Cached>>,
}

impl PacketCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity.max(1)).map(|_| None).collect(),
        }
    }

    pub fn insert(&mut self, c: Cached) {
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(c.seq % n) as usize];
        // An old packet arriving late does not evict a newer one.
        if slot.as_ref().is_none_or(|o| o.seq < c.seq) {
            *slot = Some(c);
        }
    }

    pub fn get(&self, seq: u64) -> Option<&Cached> {
        let n = self.slots.len() as u64;
        self.slots[(seq % n) as usize]
            .as_ref()
            .filter(|c| c.seq == seq)
    }
}

/// A session's keys and where its media goes.
pub struct DirectSession {
    pub tx: SrtpTx,
    pub rx: SrtcpRx,
    pub next_sr: Instant,
}

/// What a sender report says about one outgoing stream.
#[derive(Debug, Default, Clone)]
pub struct SrState {
    pub packets: u32,
    pub octets: u32,
    /// The last sent packet's RTP timestamp and when it was sent.
    pub last: Option<(u32, Instant)>,
}

impl SrState {
    pub fn on_sent(&mut self, timestamp: u32, payload: usize, now: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload as u32);
        if self.last.is_none_or(|(_, at)| now >= at) {
            self.last = Some((timestamp, now));
        }
    }
}

/// Wall clock for the SFU's monotonic `now` (fixed at start, as str0m does).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    base: Instant,
    unix: Duration,
}

impl WallClock {
    pub fn new(now: Instant) -> Self {
        Self {
            base: now,
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// 64-bit NTP timestamp (RFC 3550 §4) of `now`.
    pub fn ntp(&self, now: Instant) -> u64 {
        let t = self.unix + now.saturating_duration_since(self.base);
        let secs = t.as_secs() + NTP_UNIX_OFFSET;
        let frac = ((t.subsec_nanos() as u64) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }
}

/// Appends one RTCP sender report (no report blocks) for `ssrc` at `now`.
pub fn push_sr(
    out: &mut Vec<u8>,
    ssrc: u32,
    st: &SrState,
    clock_rate: u32,
    ntp: u64,
    now: Instant,
) {
    let rtp_time = match st.last {
        Some((ts, at)) => {
            let ticks = now.saturating_duration_since(at).as_micros() as u64 * clock_rate as u64
                / 1_000_000;
            ts.wrapping_add(ticks as u32)
        }
        None => 0,
    };
    // V=2, RC=0, PT=200 (SR), length 6 (28 bytes).
    out.extend_from_slice(&[0x80, 200, 0, 6]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&ntp.to_be_bytes());
    out.extend_from_slice(&rtp_time.to_be_bytes());
    out.extend_from_slice(&st.packets.to_be_bytes());
    out.extend_from_slice(&st.octets.to_be_bytes());
}

/// True when a datagram is (S)RTCP rather than RTP, DTLS or STUN (RFC 5761 §4, RFC 7983).
pub fn is_rtcp(d: &[u8]) -> bool {
    d.len() >= 8 && (128..=191).contains(&d[0]) && (192..=223).contains(&d[1])
}

/// Generic NACKs (RFC 4585 §6.2.1) in a plain compound RTCP packet: each lost sequence number
/// with the media SSRC it is for. Malformed packets end the walk; what was read is kept.
pub fn nacks(rtcp: &[u8], out: &mut Vec<(u32, u16)>) {
    let mut rest = rtcp;
    while rest.len() >= 4 {
        if rest[0] >> 6 != 2 {
            return;
        }
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        if len > rest.len() {
            return;
        }
        let (pkt, next) = rest.split_at(len);
        let fmt = pkt[0] & 0x1f;
        if pkt[1] == 205 && fmt == 1 && pkt.len() >= 12 {
            let media = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
            for fci in pkt[12..].chunks_exact(4) {
                let pid = u16::from_be_bytes([fci[0], fci[1]]);
                let blp = u16::from_be_bytes([fci[2], fci[3]]);
                out.push((media, pid));
                for bit in 0..16u16 {
                    if blp & (1 << bit) != 0 {
                        out.push((media, pid.wrapping_add(bit + 1)));
                    }
                }
            }
        }
        rest = next;
    }
}

/// The extended sequence number closest to `near` whose low 16 bits are `seq`.
pub fn extend_seq(seq: u16, near: u64) -> u64 {
    let base = near & !0xffff;
    let candidates = [
        base.wrapping_sub(0x1_0000) | seq as u64,
        base | seq as u64,
        base.wrapping_add(0x1_0000) | seq as u64,
    ];
    candidates
        .into_iter()
        .filter(|c| *c < (1u64 << 48))
        .min_by_key(|c| c.abs_diff(near))
        .unwrap_or(seq as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keeps_the_newest_packet_per_slot() {
        let mut c = PacketCache::new(4);
        let pkt = |seq| Cached {
            seq,
            timestamp: seq as u32 * 10,
            pt: 96,
            marker: false,
            payload: vec![seq as u8].into(),
        };
        for s in 10..16 {
            c.insert(pkt(s));
        }
        assert!(c.get(10).is_none(), "evicted by 14");
        assert_eq!(&*c.get(15).unwrap().payload, &[15]);
        // A late old packet does not replace a newer one.
        c.insert(pkt(11));
        assert!(c.get(11).is_none());
        assert_eq!(c.get(15).unwrap().timestamp, 150);
    }

    #[test]
    fn nacks_expand_the_bitmask_and_skip_other_feedback() {
        // RR (empty), then a NACK for SSRC 0x01020304: PID 100 with BLP bits 0 and 2,
        // then a PLI.
        let mut rtcp = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        rtcp.extend_from_slice(&[0x81, 205, 0, 3, 0, 0, 0, 9, 1, 2, 3, 4, 0, 100, 0, 0b101]);
        rtcp.extend_from_slice(&[0x81, 206, 0, 2, 0, 0, 0, 9, 1, 2, 3, 4]);
        let mut out = Vec::new();
        nacks(&rtcp, &mut out);
        assert_eq!(
            out,
            vec![(0x01020304, 100), (0x01020304, 101), (0x01020304, 103)]
        );
        // A length past the end stops the walk without reading out of bounds.
        let mut out = Vec::new();
        nacks(&[0x81, 205, 0, 9, 0, 0], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn sequence_numbers_extend_across_wraps() {
        assert_eq!(extend_seq(5, 0x1_fff0), 0x2_0005);
        assert_eq!(extend_seq(0xfff0, 0x2_0005), 0x1_fff0);
        assert_eq!(extend_seq(7, 3), 7);
        assert_eq!(extend_seq(0xffff, 3), 0xffff);
    }

    #[test]
    fn sender_report_extrapolates_rtp_time_from_the_last_packet() {
        let t0 = Instant::now();
        let mut st = SrState::default();
        st.on_sent(90_000, 1000, t0);
        st.on_sent(93_000, 500, t0);
        let mut out = Vec::new();
        push_sr(
            &mut out,
            0xabcd,
            &st,
            90_000,
            0x1122_3344_5566_7788,
            t0 + Duration::from_millis(100),
        );
        assert_eq!(out.len(), 28);
        assert_eq!(&out[..8], &[0x80, 200, 0, 6, 0, 0, 0xab, 0xcd]);
        assert_eq!(&out[8..16], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(
            u32::from_be_bytes(out[16..20].try_into().unwrap()),
            93_000 + 9_000
        );
        assert_eq!(u32::from_be_bytes(out[20..24].try_into().unwrap()), 2);
        assert_eq!(u32::from_be_bytes(out[24..28].try_into().unwrap()), 1500);
        assert!(is_rtcp(&out));
        assert!(!is_rtcp(&[0x80, 96, 0, 1, 0, 0, 0, 0]));
    }

    #[test]
    fn ntp_time_follows_the_monotonic_clock() {
        let t0 = Instant::now();
        let w = WallClock::new(t0);
        let a = w.ntp(t0);
        let b = w.ntp(t0 + Duration::from_millis(1500));
        let elapsed = (b - a) as f64 / (1u64 << 32) as f64;
        assert!((elapsed - 1.5).abs() < 1e-6, "{elapsed}");
        assert!((a >> 32) > NTP_UNIX_OFFSET);
    }
}
