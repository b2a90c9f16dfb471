//! Building STUN messages.

use std::net::SocketAddr;

use super::attr;
use super::integrity;
use super::{MessageType, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Appends attributes to a message and finishes it with integrity and fingerprint.
///
/// ```
/// use meridian_relay::stun::{attr, Class, Message, MessageBuilder, MessageType, Method, TransactionId};
/// let tid = TransactionId([1; 12]);
/// let mut b = MessageBuilder::new(MessageType::new(Method::BINDING, Class::Success), tid);
/// b.xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:3478".parse().unwrap());
/// let bytes = b.finish_with_fingerprint();
/// let m = Message::parse(&bytes).unwrap();
/// assert!(m.has_fingerprint());
/// ```
#[derive(Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    tid: TransactionId,
}

impl MessageBuilder {
    pub fn new(typ: MessageType, tid: TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&typ.to_u16().to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid.0);
        MessageBuilder { buf, tid }
    }

    /// Resumes building after the attributes of an encoded message (which must parse and
    /// carry no integrity or fingerprint yet).
    pub fn from_encoded(buf: Vec<u8>) -> Result<Self, super::DecodeError> {
        let m = super::Message::parse(&buf)?;
        let tid = m.transaction_id();
        Ok(MessageBuilder { buf, tid })
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute with its padding.
    pub fn attribute(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        debug_assert!(value.len() <= u16::MAX as usize);
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = (4 - value.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.set_len();
        self
    }

    pub fn u32(&mut self, typ: u16, v: u32) -> &mut Self {
        self.attribute(typ, &v.to_be_bytes())
    }

    pub fn text(&mut self, typ: u16, s: &str) -> &mut Self {
        self.attribute(typ, s.as_bytes())
    }

    pub fn xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = attr::encode_xor_address(addr, &self.tid, &mut v);
        self.attribute(typ, &v[..n])
    }

    pub fn address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = attr::encode_address(addr, &mut v);
        self.attribute(typ, &v[..n])
    }

    /// ERROR-CODE (or ADDRESS-ERROR-CODE when `typ` says so) with a reason phrase.
    pub fn error_code_attr(&mut self, typ: u16, family: u8, code: u16, reason: &str) -> &mut Self {
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[family, 0, (code / 100) as u8, (code % 100) as u8]);
        v.extend_from_slice(reason.as_bytes());
        self.attribute(typ, &v)
    }

    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        self.error_code_attr(attr::ERROR_CODE, 0, code, reason)
    }

    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let v: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
        self.attribute(attr::UNKNOWN_ATTRIBUTES, &v)
    }

    pub fn channel_number(&mut self, ch: u16) -> &mut Self {
        let b = ch.to_be_bytes();
        self.attribute(attr::CHANNEL_NUMBER, &[b[0], b[1], 0, 0])
    }

    /// Appends MESSAGE-INTEGRITY computed with `key` (any HMAC key: a long-term key's bytes or
    /// a short-term password).
    pub fn integrity_sha1(&mut self, key: &[u8]) -> &mut Self {
        let off = self.buf.len();
        // Reserve the attribute so the header length already covers it, then fill it in.
        self.attribute(attr::MESSAGE_INTEGRITY, &[0u8; 20]);
        let mac = integrity::hmac_sha1(&self.buf, off, key);
        self.buf[off + 4..off + 24].copy_from_slice(&mac);
        self
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes).
    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let off = self.buf.len();
        self.attribute(attr::MESSAGE_INTEGRITY_SHA256, &[0u8; 32]);
        let mac = integrity::hmac_sha256(&self.buf, off, 32, key);
        self.buf[off + 4..off + 36].copy_from_slice(&mac);
        self
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 when `sha256`, otherwise MESSAGE-INTEGRITY.
    pub fn integrity(&mut self, key: &[u8], sha256: bool) -> &mut Self {
        if sha256 {
            self.integrity_sha256(key)
        } else {
            self.integrity_sha1(key)
        }
    }

    /// Returns the message without a FINGERPRINT.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// Appends FINGERPRINT and returns the message.
    pub fn finish_with_fingerprint(mut self) -> Vec<u8> {
        let off = self.buf.len();
        self.attribute(attr::FINGERPRINT, &[0u8; 4]);
        let fp = integrity::fingerprint(&self.buf, off);
        self.buf[off + 4..off + 8].copy_from_slice(&fp.to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::super::{long_term_key, Class, Message, Method, PasswordAlgorithm};
    use super::*;

    #[test]
    fn integrity_round_trips_both_algorithms() {
        let tid = TransactionId([9; 12]);
        for alg in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            for sha256 in [false, true] {
                let key = long_term_key(alg, "user", "realm", "pass");
                let typ = MessageType::new(Method::ALLOCATE, Class::Request);
                let mut b = MessageBuilder::new(typ, tid);
                b.text(attr::USERNAME, "user")
                    .integrity(key.as_bytes(), sha256);
                let bytes = b.finish_with_fingerprint();
                let m = Message::parse(&bytes).unwrap();
                assert_eq!(m.has_integrity_sha256(), sha256);
                assert!(m.verify_integrity(key.as_bytes()));
                let wrong = long_term_key(alg, "user", "realm", "nope");
                assert!(!m.verify_integrity(wrong.as_bytes()));
            }
        }
    }

    #[test]
    fn corrupted_fingerprint_is_rejected() {
        let b = MessageBuilder::new(
            MessageType::new(Method::BINDING, Class::Request),
            TransactionId([3; 12]),
        );
        let mut bytes = b.finish_with_fingerprint();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        assert!(matches!(
            Message::parse(&bytes),
            Err(super::super::DecodeError::FingerprintMismatch)
        ));
    }
}
