//! The trunk's wire format (sans-IO): media datagrams and control frames.
//!
//! - **Datagram** (one QUIC datagram): the flow id as a QUIC variable-length integer (1, 2 or 4
//!   bytes; RFC 9000 section 16), then one RTP packet exactly as the publisher sent it (QUIC
//!   encrypts it; the edge node protects it again with each subscriber's SRTP). A flow id
//!   names one layer of one track, announced on the control stream ([`Msg::Flows`]).
//! - **Control frame** (on the connection's one bidirectional stream, in order): a 4-byte
//!   big-endian length, then one JSON object, a [`Msg`] tagged by `"t"`.
//!
//! Documented in `docs/trunk.md`.

use serde::{Deserialize, Serialize};

/// The ALPN of the trunk; a peer that does not speak it is refused in the handshake.
pub const ALPN: &[u8] = b"meridian-trunk/1";
/// The protocol version in [`Msg::Hello`].
pub const VERSION: u32 = 1;
/// Largest control frame (a room message is at most the SFU's data-message limit, 256 KiB).
pub const MAX_FRAME: usize = 320 * 1024;
/// Largest flow id (30 bits: at most a 4-byte variable-length integer).
pub const MAX_FLOW: u32 = (1 << 30) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty datagram")]
    EmptyDatagram,
    #[error("datagram of {0} bytes is shorter than its flow id")]
    ShortDatagram(usize),
    #[error("8-byte flow ids are not used by this protocol")]
    LongFlowId,
    #[error("control frame of {0} bytes is over the {MAX_FRAME} byte limit")]
    FrameTooLarge(usize),
    #[error("bad control frame: {0}")]
    BadFrame(String),
}

/// Which members of a room a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    Devices,
    Players,
}

/// One layer's flow of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowDesc {
    pub flow: u32,
    /// The simulcast layer (RID); `None` for a track without layers.
    pub layer: Option<String>,
}

/// What an edge node needs to forward a remote track to its own subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackFormat {
    /// "audio" or "video".
    pub kind: String,
    /// Codec name as in SDP: "opus", "VP8", "H264", …
    pub codec: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
    /// The payload type on the trunk (the publisher's).
    pub pt: u8,
    /// The SDP format parameters ("a=fmtp" value), possibly empty.
    pub fmtp: String,
}

/// A track of a room as its home describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackDesc {
    pub track: String,
    pub name: String,
    /// Layer names (`[null]` without simulcast).
    pub layers: Vec<Option<String>>,
    pub format: TrackFormat,
}

/// A device of a room as its home describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDesc {
    pub identity: String,
    pub tracks: Vec<TrackDesc>,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    /// First frame each way: who is speaking (must match the certificate).
    Hello { node: String, version: u32 },
    /// Edge → home: forward these layers of a track (`[None]` for a track without layers).
    /// Idempotent; repeated as a refresh while the edge has subscribers.
    Subscribe {
        room: String,
        track: String,
        layers: Vec<Option<String>>,
    },
    /// Edge → home: the edge's last subscriber left.
    Unsubscribe { room: String, track: String },
    /// Home → edge: the flows of a subscription and the track's format.
    Flows {
        room: String,
        track: String,
        flows: Vec<FlowDesc>,
        format: TrackFormat,
    },
    /// Home → edge: a subscription cannot be served (no such track, …).
    Refused {
        room: String,
        track: String,
        reason: String,
    },
    /// Home → edge: the track ended (unpublished, publisher left).
    Ended { room: String, track: String },
    /// Edge → home: a keyframe is needed (at most one per second per track and layer).
    Keyframe {
        room: String,
        track: String,
        layer: Option<String>,
    },
    /// Edge → home: retransmit these packets of a flow (RTP sequence numbers) — only what
    /// the edge itself lost on the trunk.
    Nack { flow: u32, seqs: Vec<u16> },
    /// Edge → home: a sequenced room message from a session on the edge. `origin` identifies
    /// the sending session on the edge, `id` the client's message id (deduplication).
    RoomSend {
        room: String,
        from: String,
        origin: u64,
        id: Option<u64>,
        to: Audience,
        /// The message's `data`, as JSON text.
        data: String,
    },
    /// Home → edge: `RoomSend` was sequenced as `seq` (sent only after it was).
    RoomAck {
        room: String,
        origin: u64,
        id: Option<u64>,
        seq: u64,
    },
    /// Either way: a room message for the receiving node's members in `to`; `seq` is set for
    /// sequenced messages (from the home), unset for latest-wins input.
    RoomDeliver {
        room: String,
        seq: Option<u64>,
        from: String,
        to: Audience,
        data: String,
    },
    /// Edge → home: this node has members in `room`; send its state and messages.
    Watch { room: String },
    /// Edge → home: no more members here.
    Unwatch { room: String },
    /// Home → edge: the room's devices and their tracks (whole, on every change).
    RoomState {
        room: String,
        devices: Vec<DeviceDesc>,
    },
    /// Either way: a message could not be handled (unknown room, bad field, …).
    Error { reason: String },
}

/// Writes `flow` as a QUIC variable-length integer, then the packet.
pub fn encode_datagram(flow: u32, packet: &[u8], out: &mut Vec<u8>) {
    debug_assert!(flow <= MAX_FLOW);
    out.clear();
    out.reserve(4 + packet.len());
    if flow < 1 << 6 {
        out.push(flow as u8);
    } else if flow < 1 << 14 {
        out.extend_from_slice(&((flow as u16) | 0x4000).to_be_bytes());
    } else {
        out.extend_from_slice(&((flow & MAX_FLOW) | 0x8000_0000).to_be_bytes());
    }
    out.extend_from_slice(packet);
}

/// Splits a datagram into its flow id and the packet.
pub fn decode_datagram(d: &[u8]) -> Result<(u32, &[u8]), WireError> {
    let first = *d.first().ok_or(WireError::EmptyDatagram)?;
    let len = match first >> 6 {
        0 => 1,
        1 => 2,
        2 => 4,
        _ => return Err(WireError::LongFlowId),
    };
    if d.len() < len {
        return Err(WireError::ShortDatagram(d.len()));
    }
    let mut v = u32::from(first & 0x3f);
    for b in &d[1..len] {
        v = (v << 8) | u32::from(*b);
    }
    Ok((v, &d[len..]))
}

/// One control frame: the length, then the JSON.
pub fn encode_frame(msg: &Msg) -> Vec<u8> {
    let json = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Reassembles control frames from stream reads.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame. `Err(FrameTooLarge)` is fatal for the stream (the rest cannot
    /// be framed); `Err(BadFrame)` skips that frame only.
    pub fn next_msg(&mut self) -> Result<Option<Msg>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(WireError::FrameTooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let parsed = serde_json::from_slice::<Msg>(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        parsed
            .map(Some)
            .map_err(|e| WireError::BadFrame(e.to_string()))
    }

    /// Bytes buffered of an incomplete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_ids_round_trip_at_every_length() {
        let mut out = Vec::new();
        for (flow, len) in [
            (0, 1),
            (63, 1),
            (64, 2),
            (16383, 2),
            (16384, 4),
            (MAX_FLOW, 4),
        ] {
            encode_datagram(flow, b"\x80\x60rtp", &mut out);
            assert_eq!(out.len(), len + 5, "flow {flow}");
            assert_eq!(decode_datagram(&out), Ok((flow, &b"\x80\x60rtp"[..])));
        }
    }

    #[test]
    fn bad_datagrams_are_errors() {
        assert_eq!(decode_datagram(&[]), Err(WireError::EmptyDatagram));
        assert_eq!(decode_datagram(&[0x40]), Err(WireError::ShortDatagram(1)));
        assert_eq!(
            decode_datagram(&[0x80, 0, 1]),
            Err(WireError::ShortDatagram(3))
        );
        assert_eq!(decode_datagram(&[0xc0; 9]), Err(WireError::LongFlowId));
        // A flow id with nothing after it is a (useless) empty packet, not a panic.
        assert_eq!(decode_datagram(&[5]), Ok((5, &[][..])));
    }

    #[test]
    fn frames_reassemble_across_reads() {
        let a = Msg::Subscribe {
            room: "arena".into(),
            track: "cam".into(),
            layers: vec![None],
        };
        let b = Msg::RoomSend {
            room: "arena".into(),
            from: "p1".into(),
            origin: 7,
            id: Some(3),
            to: Audience::Devices,
            data: r#"{"button":"A"}"#.into(),
        };
        let mut bytes = encode_frame(&a);
        bytes.extend(encode_frame(&b));
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            r.push(chunk);
            while let Some(m) = r.next_msg().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, [a, b]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_bad_frame_is_skipped_and_an_oversized_one_is_fatal() {
        let mut r = FrameReader::default();
        r.push(&5u32.to_be_bytes());
        r.push(b"{\"t\":");
        r.push(&encode_frame(&Msg::Error { reason: "x".into() }));
        assert!(matches!(r.next_msg(), Err(WireError::BadFrame(_))));
        assert_eq!(r.next_msg(), Ok(Some(Msg::Error { reason: "x".into() })));
        // An unknown message type is a bad frame too, not a panic.
        r.push(&encode_frame(&Msg::Error { reason: "y".into() })[..4]);
        let mut r = FrameReader::default();
        let junk = br#"{"t":"launch_missiles"}"#;
        r.push(&(junk.len() as u32).to_be_bytes());
        r.push(junk);
        assert!(matches!(r.next_msg(), Err(WireError::BadFrame(_))));
        r.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert_eq!(r.next_msg(), Err(WireError::FrameTooLarge(MAX_FRAME + 1)));
    }

    #[test]
    fn messages_are_tagged_json() {
        let m = Msg::Keyframe {
            room: "r".into(),
            track: "t".into(),
            layer: Some("h".into()),
        };
        let f = encode_frame(&m);
        assert_eq!(
            std::str::from_utf8(&f[4..]).unwrap(),
            r#"{"t":"keyframe","room":"r","track":"t","layer":"h"}"#
        );
    }
}
