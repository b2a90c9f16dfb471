//! Attribute types and typed views of attribute values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{TransactionId, MAGIC_COOKIE};

// RFC 8489
pub const MAPPED_ADDRESS: u16 = 0x0001;
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
pub const USERHASH: u16 = 0x001E;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
pub const SOFTWARE: u16 = 0x8022;
pub const ALTERNATE_SERVER: u16 = 0x8023;
pub const FINGERPRINT: u16 = 0x8028;
// RFC 8656 (TURN)
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const EVEN_PORT: u16 = 0x0018;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const DONT_FRAGMENT: u16 = 0x001A;
pub const RESERVATION_TOKEN: u16 = 0x0022;
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
pub const ICMP: u16 = 0x8004;
// RFC 8445 (ICE) — understood so that ICE connectivity checks sent to us are not refused.
pub const PRIORITY: u16 = 0x0024;
pub const USE_CANDIDATE: u16 = 0x0025;
pub const ICE_CONTROLLED: u16 = 0x8029;
pub const ICE_CONTROLLING: u16 = 0x802A;

/// Comprehension-required attributes (type < 0x8000) this codec understands. Any other
/// comprehension-required attribute in a request earns a 420 (RFC 8489 §7.3.1).
pub fn is_understood(typ: u16) -> bool {
    matches!(
        typ,
        MAPPED_ADDRESS
            | USERNAME
            | MESSAGE_INTEGRITY
            | ERROR_CODE
            | UNKNOWN_ATTRIBUTES
            | REALM
            | NONCE
            | MESSAGE_INTEGRITY_SHA256
            | PASSWORD_ALGORITHM
            | USERHASH
            | XOR_MAPPED_ADDRESS
            | CHANNEL_NUMBER
            | LIFETIME
            | XOR_PEER_ADDRESS
            | DATA
            | XOR_RELAYED_ADDRESS
            | REQUESTED_ADDRESS_FAMILY
            | REQUESTED_TRANSPORT
            | DONT_FRAGMENT
            | PRIORITY
            | USE_CANDIDATE
    ) || typ >= 0x8000
}

/// Address family codes used by (XOR-)address attributes and REQUESTED-ADDRESS-FAMILY.
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// Why an attribute value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    #[error("attribute 0x{typ:04x} has length {len}, expected {expected}")]
    Length {
        typ: u16,
        len: usize,
        expected: &'static str,
    },
    #[error("address attribute has unknown family 0x{0:02x}")]
    Family(u8),
    #[error("attribute 0x{0:04x} is not valid UTF-8")]
    Utf8(u16),
    #[error("ERROR-CODE class {0} is outside 3..=6")]
    ErrorClass(u8),
}

fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m[4..].copy_from_slice(&tid.0);
    m
}

/// Decodes an XOR-MAPPED-ADDRESS / XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS value.
pub fn decode_xor_address(
    typ: u16,
    v: &[u8],
    tid: &TransactionId,
) -> Result<SocketAddr, AttrError> {
    let plain = decode_address(typ, v)?;
    let mask = xor_mask(tid);
    let port = plain.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match plain.ip() {
        IpAddr::V4(a) => {
            let mut o = a.octets();
            o.iter_mut().zip(&mask[..4]).for_each(|(b, m)| *b ^= m);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o.iter_mut().zip(&mask).for_each(|(b, m)| *b ^= m);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Decodes a plain (MAPPED-ADDRESS style) address value.
pub fn decode_address(typ: u16, v: &[u8]) -> Result<SocketAddr, AttrError> {
    if v.len() < 4 {
        return Err(AttrError::Length {
            typ,
            len: v.len(),
            expected: "8 (IPv4) or 20 (IPv6)",
        });
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    match v[1] {
        FAMILY_IPV4 if v.len() == 8 => Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
            port,
        )),
        FAMILY_IPV6 if v.len() == 20 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[4..20]);
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        FAMILY_IPV4 | FAMILY_IPV6 => Err(AttrError::Length {
            typ,
            len: v.len(),
            expected: "8 (IPv4) or 20 (IPv6)",
        }),
        f => Err(AttrError::Family(f)),
    }
}

/// Writes a plain address value into `out` (8 or 20 bytes), returning the length written.
pub fn encode_address(addr: SocketAddr, out: &mut [u8; 20]) -> usize {
    out[0] = 0;
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => {
            out[1] = FAMILY_IPV4;
            out[4..8].copy_from_slice(&a.octets());
            8
        }
        IpAddr::V6(a) => {
            out[1] = FAMILY_IPV6;
            out[4..20].copy_from_slice(&a.octets());
            20
        }
    }
}

/// Writes an XOR address value into `out`, returning the length written.
pub fn encode_xor_address(addr: SocketAddr, tid: &TransactionId, out: &mut [u8; 20]) -> usize {
    let n = encode_address(addr, out);
    let mask = xor_mask(tid);
    out[2] ^= mask[0];
    out[3] ^= mask[1];
    out[4..n].iter_mut().zip(&mask).for_each(|(b, m)| *b ^= m);
    n
}

/// A u32 attribute value (LIFETIME, PRIORITY, ...).
pub fn decode_u32(typ: u16, v: &[u8]) -> Result<u32, AttrError> {
    let b: [u8; 4] = v.try_into().map_err(|_| AttrError::Length {
        typ,
        len: v.len(),
        expected: "4",
    })?;
    Ok(u32::from_be_bytes(b))
}

/// CHANNEL-NUMBER: a u16 followed by two RFFU bytes.
pub fn decode_channel_number(v: &[u8]) -> Result<u16, AttrError> {
    if v.len() != 4 {
        return Err(AttrError::Length {
            typ: CHANNEL_NUMBER,
            len: v.len(),
            expected: "4",
        });
    }
    Ok(u16::from_be_bytes([v[0], v[1]]))
}

/// REQUESTED-TRANSPORT: the IANA protocol number in the first byte.
pub fn decode_requested_transport(v: &[u8]) -> Result<u8, AttrError> {
    if v.len() != 4 {
        return Err(AttrError::Length {
            typ: REQUESTED_TRANSPORT,
            len: v.len(),
            expected: "4",
        });
    }
    Ok(v[0])
}

/// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY: the family in the first byte.
pub fn decode_family(typ: u16, v: &[u8]) -> Result<u8, AttrError> {
    if v.len() != 4 {
        return Err(AttrError::Length {
            typ,
            len: v.len(),
            expected: "4",
        });
    }
    Ok(v[0])
}

/// A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE).
pub fn decode_text(typ: u16, v: &[u8]) -> Result<&str, AttrError> {
    std::str::from_utf8(v).map_err(|_| AttrError::Utf8(typ))
}

/// ERROR-CODE: (code, reason phrase).
pub fn decode_error_code(v: &[u8]) -> Result<(u16, &str), AttrError> {
    if v.len() < 4 {
        return Err(AttrError::Length {
            typ: ERROR_CODE,
            len: v.len(),
            expected: "at least 4",
        });
    }
    let class = v[2] & 0x07;
    if !(3..=6).contains(&class) {
        return Err(AttrError::ErrorClass(class));
    }
    let code = class as u16 * 100 + v[3] as u16;
    let reason = decode_text(ERROR_CODE, &v[4..])?;
    Ok((code, reason))
}

/// Password algorithm numbers (RFC 8489 §18.5).
pub const ALGORITHM_MD5: u16 = 0x0001;
pub const ALGORITHM_SHA256: u16 = 0x0002;

/// PASSWORD-ALGORITHM: the algorithm number (parameters must be empty for MD5 and SHA-256).
pub fn decode_password_algorithm(v: &[u8]) -> Result<u16, AttrError> {
    if v.len() < 4 {
        return Err(AttrError::Length {
            typ: PASSWORD_ALGORITHM,
            len: v.len(),
            expected: "4",
        });
    }
    Ok(u16::from_be_bytes([v[0], v[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_address_round_trip_v4_and_v6() {
        let tid = TransactionId([7; 12]);
        for addr in ["192.0.2.1:32853", "[2001:db8::1]:443"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut buf = [0u8; 20];
            let n = encode_xor_address(addr, &tid, &mut buf);
            assert_eq!(
                decode_xor_address(XOR_PEER_ADDRESS, &buf[..n], &tid),
                Ok(addr)
            );
        }
    }

    #[test]
    fn bad_address_values_are_errors() {
        assert!(decode_address(XOR_PEER_ADDRESS, &[0, 1, 0]).is_err());
        assert_eq!(
            decode_address(XOR_PEER_ADDRESS, &[0, 3, 0, 0, 1, 2, 3, 4]),
            Err(AttrError::Family(3))
        );
        assert!(decode_address(XOR_PEER_ADDRESS, &[0, 2, 0, 0, 1, 2, 3, 4]).is_err());
    }

    #[test]
    fn error_code_parses() {
        assert_eq!(decode_error_code(&[0, 0, 4, 38, b'x']), Ok((438, "x")));
        assert!(decode_error_code(&[0, 0, 7, 0]).is_err());
    }
}
