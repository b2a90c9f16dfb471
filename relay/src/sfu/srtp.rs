//! SRTP/SRTCP (RFC 3711, RFC 7714) for the SFU's own send path.
//!
//! str0m encrypts what it sends itself; the media the SFU forwards to subscribe-only sessions
//! is encrypted here instead, once per subscriber, straight into the datagram (see
//! `direct.rs`). The keys come from the session's DTLS handshake (`dtls.rs` hands over the
//! RFC 5764 keying material). Profiles: AES-128-CM with HMAC-SHA1-80, AEAD AES-128-GCM and
//! AEAD AES-256-GCM, the three our DTLS offers.
//!
//! The receiving half only opens SRTCP (subscribers' NACKs); SRTP from peers goes to str0m.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256};
use aws_lc_rs::hmac;
use str0m::crypto::dtls::SrtpProfile;

/// The RTP fixed header; we never add CSRCs or extensions.
pub const RTP_HEADER_LEN: usize = 12;
const CM_TAG_LEN: usize = 10;
const GCM_TAG_LEN: usize = 16;
const SRTCP_INDEX_LEN: usize = 4;
/// The E bit of the SRTCP index word: the payload is encrypted.
const E_FLAG: u32 = 0x8000_0000;

// RFC 3711 §4.3.1 key derivation labels.
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Aes128CmSha1_80,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl Profile {
    pub fn from_str0m(p: SrtpProfile) -> Option<Self> {
        match p {
            SrtpProfile::AES128_CM_SHA1_80 => Some(Self::Aes128CmSha1_80),
            SrtpProfile::AEAD_AES_128_GCM => Some(Self::AeadAes128Gcm),
            SrtpProfile::AEAD_AES_256_GCM => Some(Self::AeadAes256Gcm),
            _ => None,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::Aes128CmSha1_80 | Self::AeadAes128Gcm => 16,
            Self::AeadAes256Gcm => 32,
        }
    }

    fn salt_len(self) -> usize {
        match self {
            Self::Aes128CmSha1_80 => 14,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => 12,
        }
    }

    /// Bytes SRTP adds to an RTP packet.
    pub fn rtp_overhead(self) -> usize {
        match self {
            Self::Aes128CmSha1_80 => CM_TAG_LEN,
            _ => GCM_TAG_LEN,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("keying material is {0} bytes, the profile needs {1}")]
    MaterialLength(usize, usize),
    #[error("the crypto library refused the key")]
    Key,
    #[error("packet too short for SRTCP")]
    Short,
    #[error("SRTCP authentication failed")]
    Auth,
    #[error("SRTCP packet is not encrypted (E flag clear)")]
    Unencrypted,
}

/// Master key and salt of one direction.
#[derive(Clone)]
pub struct MasterKey {
    profile: Profile,
    key: Vec<u8>,
    salt: Vec<u8>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// Splits RFC 5764 keying material (client key, server key, client salt, server salt) into
/// (ours, the peer's).
pub fn split_material(
    material: &[u8],
    profile: Profile,
    we_are_client: bool,
) -> Result<(MasterKey, MasterKey), SrtpError> {
    let (k, s) = (profile.key_len(), profile.salt_len());
    if material.len() != 2 * (k + s) {
        return Err(SrtpError::MaterialLength(material.len(), 2 * (k + s)));
    }
    let client = MasterKey {
        profile,
        key: material[..k].to_vec(),
        salt: material[2 * k..2 * k + s].to_vec(),
    };
    let server = MasterKey {
        profile,
        key: material[k..2 * k].to_vec(),
        salt: material[2 * k + s..].to_vec(),
    };
    Ok(if we_are_client {
        (client, server)
    } else {
        (server, client)
    })
}

/// The RFC 3711 §4.3 AES-CM PRF with a key derivation rate of 0: `len` bytes for `label`.
/// GCM's 12-byte master salt takes the same path, zero-padded (RFC 7714 §11).
fn derive(master: &MasterKey, label: u8, len: usize) -> Result<Vec<u8>, SrtpError> {
    let mut iv = [0u8; 16];
    iv[..master.salt.len()].copy_from_slice(&master.salt);
    iv[7] ^= label;
    let alg = if master.key.len() == 32 {
        &AES_256
    } else {
        &AES_128
    };
    let key = UnboundCipherKey::new(alg, &master.key).map_err(|_| SrtpError::Key)?;
    let key = EncryptingKey::ctr(key).map_err(|_| SrtpError::Key)?;
    let mut out = vec![0u8; len];
    key.less_safe_encrypt(&mut out, EncryptionContext::Iv128(iv.into()))
        .map_err(|_| SrtpError::Key)?;
    Ok(out)
}

struct CmKeys {
    key: EncryptingKey,
    salt: [u8; 14],
    auth: hmac::Key,
}

enum Cipher {
    Cm(Box<CmKeys>),
    Gcm { key: LessSafeKey, salt: [u8; 12] },
}

impl Cipher {
    fn new(master: &MasterKey, labels: [u8; 3]) -> Result<Self, SrtpError> {
        let [l_key, l_auth, l_salt] = labels;
        let p = master.profile;
        let session_key = derive(master, l_key, p.key_len())?;
        let session_salt = derive(master, l_salt, p.salt_len())?;
        Ok(match p {
            Profile::Aes128CmSha1_80 => {
                let auth = derive(master, l_auth, 20)?;
                let key = UnboundCipherKey::new(&AES_128, &session_key)
                    .and_then(EncryptingKey::ctr)
                    .map_err(|_| SrtpError::Key)?;
                let mut salt = [0u8; 14];
                salt.copy_from_slice(&session_salt);
                Cipher::Cm(Box::new(CmKeys {
                    key,
                    salt,
                    auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
                }))
            }
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => {
                let alg = if p == Profile::AeadAes256Gcm {
                    &AES_256_GCM
                } else {
                    &AES_128_GCM
                };
                let key = UnboundKey::new(alg, &session_key).map_err(|_| SrtpError::Key)?;
                let mut salt = [0u8; 12];
                salt.copy_from_slice(&session_salt);
                Cipher::Gcm {
                    key: LessSafeKey::new(key),
                    salt,
                }
            }
        })
    }

    /// AES-CM keystream IV (RFC 3711 §4.1.1): salt ⊕ SSRC·2^64 ⊕ index·2^16.
    fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        iv
    }

    /// GCM IV (RFC 7714 §8.1, §9.1): salt ⊕ (00 00 | SSRC | index as 6 bytes).
    fn gcm_iv(salt: &[u8; 12], ssrc: u32, index: u64) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
        for (b, s) in iv.iter_mut().zip(salt) {
            *b ^= s;
        }
        iv
    }
}

/// The sending half of a session: SRTP for media, SRTCP for sender reports.
pub struct SrtpTx {
    profile: Profile,
    rtp: Cipher,
    rtcp: Cipher,
    /// The next SRTCP index (31 bits).
    rtcp_index: u32,
}

impl SrtpTx {
    /// `rtcp_index` is where our SRTCP index starts (str0m may have used the low ones).
    pub fn new(master: &MasterKey, rtcp_index: u32) -> Result<Self, SrtpError> {
        Ok(Self {
            profile: master.profile,
            rtp: Cipher::new(master, [LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT])?,
            rtcp: Cipher::new(master, [LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT])?,
            rtcp_index: rtcp_index & !E_FLAG,
        })
    }

    #[cfg(test)]
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Builds the SRTP packet for one RTP packet with extended sequence number `index`
    /// (ROC·2^16 + SEQ) into `out` (cleared first).
    #[allow(clippy::too_many_arguments)]
    pub fn protect_rtp(
        &self,
        out: &mut Vec<u8>,
        pt: u8,
        marker: bool,
        index: u64,
        timestamp: u32,
        ssrc: u32,
        prefix: &[u8],
        payload: &[u8],
    ) -> Result<(), SrtpError> {
        out.clear();
        out.reserve(RTP_HEADER_LEN + prefix.len() + payload.len() + self.profile.rtp_overhead());
        out.push(0x80);
        out.push((pt & 0x7f) | if marker { 0x80 } else { 0 });
        out.extend_from_slice(&(index as u16).to_be_bytes());
        out.extend_from_slice(&timestamp.to_be_bytes());
        out.extend_from_slice(&ssrc.to_be_bytes());
        out.extend_from_slice(prefix);
        out.extend_from_slice(payload);
        let (header, body) = out.split_at_mut(RTP_HEADER_LEN);
        match &self.rtp {
            Cipher::Cm(cm) => {
                let CmKeys { key, salt, auth } = &**cm;
                let iv = Cipher::cm_iv(salt, ssrc, index);
                key.less_safe_encrypt(body, EncryptionContext::Iv128(iv.into()))
                    .map_err(|_| SrtpError::Key)?;
                let mut ctx = hmac::Context::with_key(auth);
                ctx.update(header);
                ctx.update(body);
                ctx.update(&((index >> 16) as u32).to_be_bytes());
                let tag = ctx.sign();
                out.extend_from_slice(&tag.as_ref()[..CM_TAG_LEN]);
            }
            Cipher::Gcm { key, salt } => {
                let iv = Cipher::gcm_iv(salt, ssrc, index);
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(iv),
                        Aad::from(&*header),
                        body,
                    )
                    .map_err(|_| SrtpError::Key)?;
                out.extend_from_slice(tag.as_ref());
            }
        }
        Ok(())
    }

    /// Encrypts one compound RTCP packet (plain, at least 8 bytes) as SRTCP.
    pub fn protect_rtcp(&mut self, rtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if rtcp.len() < 8 {
            return Err(SrtpError::Short);
        }
        let index = self.rtcp_index;
        self.rtcp_index = (self.rtcp_index + 1) & !E_FLAG;
        let ssrc = u32::from_be_bytes([rtcp[4], rtcp[5], rtcp[6], rtcp[7]]);
        let word = (E_FLAG | index).to_be_bytes();
        let mut out = Vec::with_capacity(rtcp.len() + GCM_TAG_LEN + SRTCP_INDEX_LEN);
        out.extend_from_slice(rtcp);
        let (header, body) = out.split_at_mut(8);
        match &self.rtcp {
            Cipher::Cm(cm) => {
                let CmKeys { key, salt, auth } = &**cm;
                let iv = Cipher::cm_iv(salt, ssrc, index as u64);
                key.less_safe_encrypt(body, EncryptionContext::Iv128(iv.into()))
                    .map_err(|_| SrtpError::Key)?;
                out.extend_from_slice(&word);
                let tag = hmac::sign(auth, &out);
                out.extend_from_slice(&tag.as_ref()[..CM_TAG_LEN]);
            }
            Cipher::Gcm { key, salt } => {
                let iv = Cipher::gcm_iv(salt, ssrc, index as u64);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(header);
                aad[8..].copy_from_slice(&word);
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(iv),
                        Aad::from(aad),
                        body,
                    )
                    .map_err(|_| SrtpError::Key)?;
                out.extend_from_slice(tag.as_ref());
                out.extend_from_slice(&word);
            }
        }
        Ok(out)
    }
}

/// The receiving half, for SRTCP only.
pub struct SrtcpRx {
    rtcp: Cipher,
}

impl SrtcpRx {
    pub fn new(master: &MasterKey) -> Result<Self, SrtpError> {
        Ok(Self {
            rtcp: Cipher::new(master, [LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT])?,
        })
    }

    /// Authenticates and decrypts one SRTCP packet into plain compound RTCP.
    pub fn unprotect_rtcp(&self, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        match &self.rtcp {
            Cipher::Cm(cm) => {
                let CmKeys { key, salt, auth } = &**cm;
                if srtcp.len() < 8 + SRTCP_INDEX_LEN + CM_TAG_LEN {
                    return Err(SrtpError::Short);
                }
                let (signed, tag) = srtcp.split_at(srtcp.len() - CM_TAG_LEN);
                let expected = hmac::sign(auth, signed);
                if !constant_time_eq(&expected.as_ref()[..CM_TAG_LEN], tag) {
                    return Err(SrtpError::Auth);
                }
                let (packet, word) = signed.split_at(signed.len() - SRTCP_INDEX_LEN);
                let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
                let mut out = packet.to_vec();
                if word & E_FLAG == 0 {
                    return Err(SrtpError::Unencrypted);
                }
                let ssrc = u32::from_be_bytes([out[4], out[5], out[6], out[7]]);
                let iv = Cipher::cm_iv(salt, ssrc, (word & !E_FLAG) as u64);
                // CTR decryption is encryption.
                key.less_safe_encrypt(&mut out[8..], EncryptionContext::Iv128(iv.into()))
                    .map_err(|_| SrtpError::Key)?;
                Ok(out)
            }
            Cipher::Gcm { key, salt } => {
                if srtcp.len() < 8 + GCM_TAG_LEN + SRTCP_INDEX_LEN {
                    return Err(SrtpError::Short);
                }
                let (sealed, word) = srtcp.split_at(srtcp.len() - SRTCP_INDEX_LEN);
                let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
                if word & E_FLAG == 0 {
                    return Err(SrtpError::Unencrypted);
                }
                let ssrc = u32::from_be_bytes([sealed[4], sealed[5], sealed[6], sealed[7]]);
                let iv = Cipher::gcm_iv(salt, ssrc, (word & !E_FLAG) as u64);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&sealed[..8]);
                aad[8..].copy_from_slice(&word.to_be_bytes());
                let mut body = sealed[8..].to_vec();
                let plain_len = key
                    .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut body)
                    .map_err(|_| SrtpError::Auth)?
                    .len();
                let mut out = Vec::with_capacity(8 + plain_len);
                out.extend_from_slice(&sealed[..8]);
                out.extend_from_slice(&body[..plain_len]);
                Ok(out)
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn key_derivation_matches_rfc3711_appendix_b3() {
        let master = MasterKey {
            profile: Profile::Aes128CmSha1_80,
            key: hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            salt: hex("0EC675AD498AFEEBB6960B3AABE6"),
        };
        assert_eq!(
            derive(&master, LABEL_RTP_KEY, 16).unwrap(),
            hex("C61E7A93744F39EE10734AFE3FF7A087")
        );
        assert_eq!(
            derive(&master, LABEL_RTP_SALT, 14).unwrap(),
            hex("30CBBC08863D8C85D49DB34A9AE1")
        );
        assert_eq!(
            derive(&master, LABEL_RTP_AUTH, 20).unwrap()[..16],
            hex("CEBE321F6FF7716B6FD4AB49AF256A15")[..]
        );
    }

    #[test]
    fn keying_material_splits_by_dtls_role() {
        // 16-byte keys, 14-byte salts: client key, server key, client salt, server salt.
        let m: Vec<u8> = (0..60).collect();
        let (ours, theirs) = split_material(&m, Profile::Aes128CmSha1_80, true).unwrap();
        assert_eq!(ours.key, (0..16).collect::<Vec<u8>>());
        assert_eq!(ours.salt, (32..46).collect::<Vec<u8>>());
        assert_eq!(theirs.key, (16..32).collect::<Vec<u8>>());
        assert_eq!(theirs.salt, (46..60).collect::<Vec<u8>>());
        let (ours, _) = split_material(&m, Profile::Aes128CmSha1_80, false).unwrap();
        assert_eq!(ours.key, (16..32).collect::<Vec<u8>>());
        assert_eq!(
            split_material(&m, Profile::AeadAes256Gcm, true).unwrap_err(),
            SrtpError::MaterialLength(60, 88)
        );
    }

    fn pair(profile: Profile) -> (SrtpTx, SrtcpRx) {
        let n = 2 * (profile.key_len() + profile.salt_len());
        let m: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(37)).collect();
        let (a, _) = split_material(&m, profile, true).unwrap();
        (SrtpTx::new(&a, 7).unwrap(), SrtcpRx::new(&a).unwrap())
    }

    #[test]
    fn srtcp_round_trips_and_rejects_tampering_for_every_profile() {
        for profile in [
            Profile::Aes128CmSha1_80,
            Profile::AeadAes128Gcm,
            Profile::AeadAes256Gcm,
        ] {
            let (mut tx, rx) = pair(profile);
            let rtcp = hex("80c80006 11223344 aabbccdd eeff0011 22334455 66778899 aabbccdd");
            let sealed = tx.protect_rtcp(&rtcp).unwrap();
            assert_ne!(&sealed[8..rtcp.len()], &rtcp[8..], "{profile:?} encrypts");
            assert_eq!(rx.unprotect_rtcp(&sealed).unwrap(), rtcp, "{profile:?}");
            // The index advances and lands in the trailer with the E flag.
            let second = tx.protect_rtcp(&rtcp).unwrap();
            let at = match profile {
                Profile::Aes128CmSha1_80 => second.len() - CM_TAG_LEN - 4,
                _ => second.len() - 4,
            };
            assert_eq!(&second[at..at + 4], &(E_FLAG | 8).to_be_bytes());
            let mut bad = sealed.clone();
            bad[10] ^= 1;
            assert_eq!(rx.unprotect_rtcp(&bad), Err(SrtpError::Auth), "{profile:?}");
            assert_eq!(rx.unprotect_rtcp(&sealed[..6]), Err(SrtpError::Short));
        }
    }

    #[test]
    fn srtp_header_is_clear_and_payload_is_not() {
        for profile in [Profile::Aes128CmSha1_80, Profile::AeadAes256Gcm] {
            let (tx, _) = pair(profile);
            let mut out = Vec::new();
            let payload = [0x5au8; 100];
            let index = (3u64 << 16) | 0xfffe;
            tx.protect_rtp(
                &mut out,
                96,
                true,
                index,
                9000,
                0xdeadbeef,
                &[1, 2],
                &payload,
            )
            .unwrap();
            assert_eq!(out.len(), 12 + 2 + 100 + profile.rtp_overhead());
            assert_eq!(&out[..12], &hex("80e0fffe 00002328 deadbeef")[..]);
            assert_ne!(&out[14..114], &payload[..]);
            // A different ROC gives a different ciphertext for the same SEQ.
            let mut other = Vec::new();
            tx.protect_rtp(
                &mut other,
                96,
                true,
                0xfffe,
                9000,
                0xdeadbeef,
                &[1, 2],
                &payload,
            )
            .unwrap();
            assert_ne!(out, other);
        }
    }
}
