//! STUN message codec (RFC 8489), with the TURN attributes of RFC 8656 and RFC 6156.
//!
//! Decoding is zero-copy: [`Message::parse`] validates the framing of a datagram and hands out
//! attribute values as slices of the input. Encoding goes through [`MessageBuilder`], which
//! appends attributes and finishes with MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT.
//! ChannelData framing (RFC 8656 §12) lives in [`channel_data`].

pub mod attr;
pub mod channel_data;
mod decode;
mod encode;
mod integrity;
#[cfg(test)]
mod rfc5769;

pub use decode::{framed_len, DecodeError, Message, RawAttribute};
pub use encode::MessageBuilder;
pub use integrity::{long_term_key, LongTermKey, PasswordAlgorithm};

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;

/// A STUN method (the 12 method bits of the message type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);

    /// A short lowercase name, for logs and metric labels (bounded set).
    pub fn name(self) -> &'static str {
        match self {
            Method::BINDING => "binding",
            Method::ALLOCATE => "allocate",
            Method::REFRESH => "refresh",
            Method::SEND => "send",
            Method::DATA => "data",
            Method::CREATE_PERMISSION => "create_permission",
            Method::CHANNEL_BIND => "channel_bind",
            _ => "other",
        }
    }
}

/// The class bits of a message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Method and class, as packed into the first 16 bits of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    pub const fn new(method: Method, class: Class) -> Self {
        MessageType { method, class }
    }

    /// Packs method and class into the 14 type bits (RFC 8489 §5, figure 3).
    pub fn to_u16(self) -> u16 {
        let m = self.method.0 & 0x0FFF;
        let c: u16 = match self.class {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        };
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }

    /// Unpacks the 14 type bits; `None` if the two most significant bits are set.
    pub fn from_u16(v: u16) -> Option<Self> {
        if v & 0xC000 != 0 {
            return None;
        }
        let method = (v & 0x000F) | ((v >> 1) & 0x0070) | ((v >> 2) & 0x0F80);
        let class = match ((v >> 4) & 1) | ((v >> 7) & 2) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        Some(MessageType {
            method: Method(method),
            class,
        })
    }
}

/// The 96-bit transaction identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    pub fn random() -> Self {
        TransactionId(rand::random())
    }
}

/// What the first byte of a datagram or stream frame says it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Stun,
    ChannelData,
    Other,
}

/// Classifies a frame by its first byte (RFC 7983 demultiplexing, TURN subset).
pub fn frame_kind(first_byte: u8) -> FrameKind {
    match first_byte {
        0..=3 => FrameKind::Stun,
        0x40..=0x4F => FrameKind::ChannelData,
        _ => FrameKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips_all_methods_and_classes() {
        for m in 0..0x1000u16 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = MessageType::new(Method(m), class);
                assert_eq!(MessageType::from_u16(t.to_u16()), Some(t));
            }
        }
    }

    #[test]
    fn known_type_values() {
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Request).to_u16(),
            0x0001
        );
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Success).to_u16(),
            0x0101
        );
        assert_eq!(
            MessageType::new(Method::ALLOCATE, Class::Error).to_u16(),
            0x0113
        );
        assert_eq!(
            MessageType::new(Method::SEND, Class::Indication).to_u16(),
            0x0016
        );
        assert_eq!(
            MessageType::new(Method::DATA, Class::Indication).to_u16(),
            0x0017
        );
        assert_eq!(MessageType::from_u16(0xC001), None);
    }
}
