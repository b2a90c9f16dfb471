//! The test vectors of RFC 5769 (and RFC 8489 appendix B.1) as unit tests.

use super::attr;
use super::{
    long_term_key, Class, Message, MessageBuilder, MessageType, Method, PasswordAlgorithm,
};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

// RFC 5769 §2.1
const SAMPLE_REQUEST: &str = "
    00010058 2112a442 b7e7a701 bc34d686 fa87dfae
    80220010 5354554e 20746573 7420636c 69656e74
    00240004 6e0001ff
    80290008 932ff9b1 51263b36
    00060009 6576746a 3a683676 59202020
    00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
    80280004 e57a3bcf";

// RFC 5769 §2.2
const SAMPLE_IPV4_RESPONSE: &str = "
    0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
    8022000b 74657374 20766563 746f7220
    00200008 0001a147 e112a643
    00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
    80280004 c07d4c96";

// RFC 5769 §2.3
const SAMPLE_IPV6_RESPONSE: &str = "
    01010048 2112a442 b7e7a701 bc34d686 fa87dfae
    8022000b 74657374 20766563 746f7220
    00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
    00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
    80280004 c8fb0b4c";

// RFC 5769 §2.4
const SAMPLE_LONG_TERM_REQUEST: &str = "
    00010060 2112a442 78ad3433 c6ad72c0 29da412e
    00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
    0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
    0014000b 6578616d 706c652e 6f726700
    00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666";

#[test]
fn sample_request_parses_and_verifies() {
    let bytes = hex(SAMPLE_REQUEST);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::BINDING, Class::Request)
    );
    assert!(m.has_fingerprint());
    assert_eq!(m.text(attr::SOFTWARE).unwrap().unwrap(), "STUN test client");
    assert_eq!(m.text(attr::USERNAME).unwrap().unwrap(), "evtj:h6vY");
    assert_eq!(
        attr::decode_u32(attr::PRIORITY, m.get(attr::PRIORITY).unwrap()).unwrap(),
        0x6e0001ff
    );
    assert!(m.verify_integrity(PASSWORD.as_bytes()));
    assert!(!m.verify_integrity(b"wrong"));
    assert_eq!(m.unknown_required().count(), 0);
}

#[test]
fn sample_responses_decode_mapped_addresses() {
    for (vector, expected) in [
        (SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853"),
        (
            SAMPLE_IPV6_RESPONSE,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let bytes = hex(vector);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            m.message_type(),
            MessageType::new(Method::BINDING, Class::Success)
        );
        assert!(m.has_fingerprint());
        assert_eq!(
            m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
            expected.parse().unwrap()
        );
        assert_eq!(m.text(attr::SOFTWARE).unwrap().unwrap(), "test vector");
        assert!(m.verify_integrity(PASSWORD.as_bytes()));
    }
}

#[test]
fn sample_responses_are_reproduced_byte_for_byte() {
    for (vector, addr) in [
        (SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853"),
        (
            SAMPLE_IPV6_RESPONSE,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let expected = hex(vector);
        let m = Message::parse(&expected).unwrap();
        let mut b = MessageBuilder::new(m.message_type(), m.transaction_id());
        b.text(attr::SOFTWARE, "test vector");
        b.xor_address(attr::XOR_MAPPED_ADDRESS, addr.parse().unwrap());
        let mut bytes = b.finish();
        // The RFC pads SOFTWARE with a space where our encoder writes a zero.
        bytes[20 + 4 + 11] = b' ';
        let mut b = MessageBuilder::from_encoded(bytes).unwrap();
        b.integrity_sha1(PASSWORD.as_bytes());
        assert_eq!(b.finish_with_fingerprint(), expected);
    }
}

#[test]
fn sample_long_term_request_verifies_with_saslprep_password() {
    let bytes = hex(SAMPLE_LONG_TERM_REQUEST);
    let m = Message::parse(&bytes).unwrap();
    let username = m.text(attr::USERNAME).unwrap().unwrap();
    assert_eq!(username, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
    let realm = m.text(attr::REALM).unwrap().unwrap();
    assert_eq!(realm, "example.org");
    assert_eq!(
        m.text(attr::NONCE).unwrap().unwrap(),
        "f//499k954d6OL34oL9FSTvy64sA"
    );
    let key = long_term_key(
        PasswordAlgorithm::Md5,
        username,
        realm,
        "The\u{00AD}M\u{00AA}tr\u{2168}",
    );
    assert!(m.verify_integrity(key.as_bytes()));
    let plain = long_term_key(PasswordAlgorithm::Md5, username, realm, "TheMatrIX");
    assert_eq!(key, plain);
}
