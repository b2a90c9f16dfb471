//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, FINGERPRINT and long-term credential keys.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use super::HEADER_LEN;

const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// How a long-term key is derived from the password (PASSWORD-ALGORITHM, RFC 8489 §18.5).
/// Independent of which HMAC (MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256) a message uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// MD5(username:realm:password), the RFC 5389 key.
    Md5,
    /// SHA-256(username:realm:password).
    Sha256,
}

/// A long-term credential key (RFC 8489 §9.2.2): MD5 (16 bytes) or SHA-256 (32 bytes) of
/// `username:realm:password`.
#[derive(Clone, PartialEq, Eq)]
pub struct LongTermKey {
    pub algorithm: PasswordAlgorithm,
    bytes: [u8; 32],
}

impl LongTermKey {
    pub fn as_bytes(&self) -> &[u8] {
        match self.algorithm {
            PasswordAlgorithm::Md5 => &self.bytes[..16],
            PasswordAlgorithm::Sha256 => &self.bytes[..32],
        }
    }
}

impl std::fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LongTermKey({:?}, <redacted>)", self.algorithm)
    }
}

/// Derives the long-term key. The password is prepared with SASLprep (RFC 4013) when that
/// succeeds, as RFC 5389 clients do; otherwise it is used as given.
pub fn long_term_key(
    algorithm: PasswordAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
) -> LongTermKey {
    let password = stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
    let mut bytes = [0u8; 32];
    match algorithm {
        PasswordAlgorithm::Md5 => {
            let mut h = Md5::new();
            h.update(username.as_bytes());
            h.update(b":");
            h.update(realm.as_bytes());
            h.update(b":");
            h.update(password.as_bytes());
            bytes[..16].copy_from_slice(&h.finalize());
        }
        PasswordAlgorithm::Sha256 => {
            let mut h = Sha256::new();
            h.update(username.as_bytes());
            h.update(b":");
            h.update(realm.as_bytes());
            h.update(b":");
            h.update(password.as_bytes());
            bytes.copy_from_slice(&h.finalize());
        }
    }
    LongTermKey { algorithm, bytes }
}

/// The header with its length field rewritten to end at `end` (an offset in the message).
fn adjusted_header(raw: &[u8], end: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&raw[..HEADER_LEN]);
    h[2..4].copy_from_slice(&((end - HEADER_LEN) as u16).to_be_bytes());
    h
}

/// HMAC-SHA1 over `raw[..off]` as MESSAGE-INTEGRITY at `off` would cover it.
pub(crate) fn hmac_sha1(raw: &[u8], off: usize, key: &[u8]) -> [u8; 20] {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&adjusted_header(raw, off + 24));
    mac.update(&raw[HEADER_LEN..off]);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 over `raw[..off]` as MESSAGE-INTEGRITY-SHA256 of `len` bytes at `off` would.
pub(crate) fn hmac_sha256(raw: &[u8], off: usize, len: usize, key: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&adjusted_header(raw, off + 4 + len));
    mac.update(&raw[HEADER_LEN..off]);
    mac.finalize().into_bytes().into()
}

pub(crate) fn verify_sha1(raw: &[u8], off: usize, key: &[u8]) -> bool {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&adjusted_header(raw, off + 24));
    mac.update(&raw[HEADER_LEN..off]);
    mac.verify_slice(&raw[off + 4..off + 24]).is_ok()
}

pub(crate) fn verify_sha256(raw: &[u8], off: usize, key: &[u8]) -> bool {
    let len = u16::from_be_bytes([raw[off + 2], raw[off + 3]]) as usize;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&adjusted_header(raw, off + 4 + len));
    mac.update(&raw[HEADER_LEN..off]);
    mac.verify_truncated_left(&raw[off + 4..off + 4 + len])
        .is_ok()
}

/// The FINGERPRINT value for an attribute at `off`.
pub(crate) fn fingerprint(raw: &[u8], off: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&adjusted_header(raw, off + 8));
    h.update(&raw[HEADER_LEN..off]);
    h.finalize() ^ FINGERPRINT_XOR
}
