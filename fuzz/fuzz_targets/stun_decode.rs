//! The STUN/ChannelData decoders on arbitrary bytes: never panic, and whatever parses
//! re-encodes to a message that parses the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_relay::stun::{attr, channel_data, Message, MessageBuilder};

fuzz_target!(|data: &[u8]| {
    let _ = channel_data::parse(data);
    let _ = channel_data::framed_len(data);
    let _ = meridian_relay::stun::framed_len(data);
    let Ok(m) = Message::parse(data) else { return };
    let mut b = MessageBuilder::new(m.message_type(), m.transaction_id());
    for a in m.attributes() {
        let _ = attr::decode_xor_address(a.typ, a.value, &m.transaction_id());
        let _ = attr::decode_address(a.typ, a.value);
        let _ = attr::decode_error_code(a.value);
        let _ = attr::decode_u32(a.typ, a.value);
        let _ = attr::decode_text(a.typ, a.value);
        let _ = attr::decode_channel_number(a.value);
        let _ = attr::decode_password_algorithm(a.value);
        b.attribute(a.typ, a.value);
    }
    let _ = m.verify_integrity(b"fuzz");
    let _ = m.unknown_required().count();
    let again = b.finish();
    let m2 = Message::parse(&again).expect("re-encoded message parses");
    assert_eq!(m2.message_type(), m.message_type());
    assert!(m2
        .attributes()
        .map(|a| (a.typ, a.value))
        .eq(m.attributes().map(|a| (a.typ, a.value))));
});
