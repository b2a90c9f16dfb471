//! Zero-copy STUN message parsing and verification.

use super::attr::{self, AttrError};
use super::integrity;
use super::{MessageType, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Why bytes are not a well-formed STUN message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes is shorter than the 20-byte STUN header")]
    TooShort(usize),
    #[error("the two most significant bits of the message type are not zero")]
    NotStun,
    #[error("magic cookie is 0x{0:08x}, expected 0x2112a442")]
    BadCookie(u32),
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(usize),
    #[error("message length {declared} exceeds the {available} bytes received after the header")]
    Truncated { declared: usize, available: usize },
    #[error("attribute 0x{typ:04x} at offset {offset} overruns the message")]
    AttributeOverrun { typ: u16, offset: usize },
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    #[error("MESSAGE-INTEGRITY has length {0}, expected 20")]
    IntegrityLength(usize),
    #[error("MESSAGE-INTEGRITY-SHA256 has length {0}, expected 16..=32 in steps of 4")]
    IntegritySha256Length(usize),
    #[error("FINGERPRINT has length {0}, expected 4")]
    FingerprintLength(usize),
    #[error("FINGERPRINT does not match the message")]
    FingerprintMismatch,
}

/// One attribute as it appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
}

/// A parsed STUN message borrowing the bytes it was parsed from.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    typ: MessageType,
    tid: TransactionId,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header, if present.
    integrity_sha256: Option<usize>,
    /// Whether a (verified) FINGERPRINT ends the message.
    fingerprint: bool,
    /// Attributes at or after this offset are ignored for content (they follow an integrity
    /// attribute, RFC 8489 §14.5/§14.6).
    content_end: usize,
}

/// The total length of the message at the front of `buf`, from its header, if `buf` holds at
/// least a header. Used for stream framing.
pub fn framed_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 {
        return None;
    }
    Some(HEADER_LEN + u16::from_be_bytes([buf[2], buf[3]]) as usize)
}

impl<'a> Message<'a> {
    /// Parses and structurally validates one message at the front of `buf`. Bytes after the
    /// declared length are not part of the message. A FINGERPRINT, if present, is verified.
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::TooShort(buf.len()));
        }
        let type_bits = u16::from_be_bytes([buf[0], buf[1]]);
        let typ = MessageType::from_u16(type_bits).ok_or(DecodeError::NotStun)?;
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let cookie = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(DecodeError::BadCookie(cookie));
        }
        if !len.is_multiple_of(4) {
            return Err(DecodeError::UnalignedLength(len));
        }
        if HEADER_LEN + len > buf.len() {
            return Err(DecodeError::Truncated {
                declared: len,
                available: buf.len() - HEADER_LEN,
            });
        }
        let raw = &buf[..HEADER_LEN + len];
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&raw[8..20]);

        let mut msg = Message {
            raw,
            typ,
            tid: TransactionId(tid),
            integrity: None,
            integrity_sha256: None,
            fingerprint: false,
            content_end: raw.len(),
        };
        let mut off = HEADER_LEN;
        while off < raw.len() {
            if off + 4 > raw.len() {
                return Err(DecodeError::AttributeOverrun {
                    typ: 0,
                    offset: off,
                });
            }
            let at = u16::from_be_bytes([raw[off], raw[off + 1]]);
            let alen = u16::from_be_bytes([raw[off + 2], raw[off + 3]]) as usize;
            let padded = (alen + 3) & !3;
            if off + 4 + padded > raw.len() {
                return Err(DecodeError::AttributeOverrun {
                    typ: at,
                    offset: off,
                });
            }
            if msg.fingerprint {
                return Err(DecodeError::FingerprintNotLast);
            }
            match at {
                attr::MESSAGE_INTEGRITY
                    if msg.integrity.is_none() && msg.integrity_sha256.is_none() =>
                {
                    if alen != 20 {
                        return Err(DecodeError::IntegrityLength(alen));
                    }
                    msg.integrity = Some(off);
                    msg.content_end = msg.content_end.min(off);
                }
                attr::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256.is_none() => {
                    if !(16..=32).contains(&alen) || !alen.is_multiple_of(4) {
                        return Err(DecodeError::IntegritySha256Length(alen));
                    }
                    msg.integrity_sha256 = Some(off);
                    msg.content_end = msg.content_end.min(off);
                }
                attr::FINGERPRINT => {
                    if alen != 4 {
                        return Err(DecodeError::FingerprintLength(alen));
                    }
                    let got = u32::from_be_bytes([
                        raw[off + 4],
                        raw[off + 5],
                        raw[off + 6],
                        raw[off + 7],
                    ]);
                    if integrity::fingerprint(raw, off) != got {
                        return Err(DecodeError::FingerprintMismatch);
                    }
                    msg.fingerprint = true;
                    msg.content_end = msg.content_end.min(off);
                }
                _ => {}
            }
            off += 4 + padded;
        }
        Ok(msg)
    }

    pub fn message_type(&self) -> MessageType {
        self.typ
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// The exact bytes of the message.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether the message ended with a valid FINGERPRINT.
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }

    pub fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    /// Attributes that count for content: those before MESSAGE-INTEGRITY(-SHA256) and
    /// FINGERPRINT. Integrity and fingerprint attributes themselves are not yielded.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            raw: &self.raw[..self.content_end],
            off: HEADER_LEN,
        }
    }

    /// The first content attribute of the given type.
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.typ == typ).map(|a| a.value)
    }

    /// Every content attribute of the given type (e.g. several XOR-PEER-ADDRESS).
    pub fn get_all(&self, typ: u16) -> impl Iterator<Item = &'a [u8]> {
        self.attributes()
            .filter(move |a| a.typ == typ)
            .map(|a| a.value)
    }

    /// Comprehension-required attribute types this codec does not understand.
    pub fn unknown_required(&self) -> impl Iterator<Item = u16> + 'a {
        self.attributes()
            .map(|a| a.typ)
            .filter(|t| !attr::is_understood(*t))
    }

    /// A text attribute, with UTF-8 checked.
    pub fn text(&self, typ: u16) -> Option<Result<&'a str, AttrError>> {
        self.get(typ).map(|v| attr::decode_text(typ, v))
    }

    /// An XOR address attribute.
    pub fn xor_address(&self, typ: u16) -> Option<Result<std::net::SocketAddr, AttrError>> {
        self.get(typ)
            .map(|v| attr::decode_xor_address(typ, v, &self.tid))
    }

    /// Verifies the message's integrity with `key` (a long-term key's bytes or a short-term
    /// password). MESSAGE-INTEGRITY-SHA256 is checked when present, otherwise
    /// MESSAGE-INTEGRITY (RFC 8489 §9.2.4). False when neither is present or it is wrong.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        match (self.integrity_sha256, self.integrity) {
            (Some(off), _) => integrity::verify_sha256(self.raw, off, key),
            (None, Some(off)) => integrity::verify_sha1(self.raw, off, key),
            (None, None) => false,
        }
    }
}

/// Iterator over content attributes.
#[derive(Clone)]
pub struct Attributes<'a> {
    raw: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // Structure was validated by `Message::parse`, so the bounds hold.
        if self.off + 4 > self.raw.len() {
            return None;
        }
        let r = self.raw;
        let typ = u16::from_be_bytes([r[self.off], r[self.off + 1]]);
        let len = u16::from_be_bytes([r[self.off + 2], r[self.off + 3]]) as usize;
        let value = &r[self.off + 4..self.off + 4 + len];
        self.off += 4 + ((len + 3) & !3);
        Some(RawAttribute { typ, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(
            Message::parse(&[0; 10]).unwrap_err(),
            DecodeError::TooShort(10)
        );
        let mut m = [0u8; 20];
        m[0] = 0x80;
        assert_eq!(Message::parse(&m).unwrap_err(), DecodeError::NotStun);
        let mut m = [0u8; 20];
        m[1] = 1;
        assert!(matches!(
            Message::parse(&m).unwrap_err(),
            DecodeError::BadCookie(0)
        ));
        m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m[3] = 2;
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            DecodeError::UnalignedLength(2)
        );
        m[3] = 4;
        assert!(matches!(
            Message::parse(&m).unwrap_err(),
            DecodeError::Truncated { .. }
        ));
    }

    #[test]
    fn rejects_attribute_overrun() {
        let mut m = vec![0u8; 28];
        m[1] = 1;
        m[3] = 8;
        m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m[20..22].copy_from_slice(&attr::SOFTWARE.to_be_bytes());
        m[22..24].copy_from_slice(&100u16.to_be_bytes());
        assert!(matches!(
            Message::parse(&m).unwrap_err(),
            DecodeError::AttributeOverrun { .. }
        ));
    }
}
