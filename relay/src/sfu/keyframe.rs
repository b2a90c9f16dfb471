//! Where a decoder can start: does this RTP payload begin a keyframe?
//!
//! The SFU only switches a subscriber onto a stream (first subscription, simulcast layer
//! change) at a packet for which this answers yes; anything else would hand the decoder
//! references it never saw. Each check reads the codec's RTP payload header only, never the
//! bitstream behind it, and a payload too short to tell is "no".

use str0m::format::Codec;

/// True when `payload` (the RTP payload, header stripped) is the first packet of a keyframe.
/// Audio codecs have no inter-frame dependencies, so every packet qualifies.
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::Av1 => av1(payload),
        c if c.is_audio() => true,
        _ => false,
    }
}

/// RFC 7741 §4.2: payload descriptor, then (at a partition start) the VP8 frame tag whose
/// lowest bit is 0 for a key frame.
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        // X: extension byte with I, L, T, K.
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // I: picture id, 7 or 15 bits (M flag).
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // T or K: TID/Y/KEYIDX
        }
    }
    matches!(p.get(i), Some(tag) if tag & 0x01 == 0)
}

/// RFC 9628 §4.2: B (start of frame) set and P (inter-picture predicted) clear.
fn vp9(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let predicted = b0 & 0x40 != 0;
    let begins = b0 & 0x08 != 0;
    begins && !predicted
}

/// RFC 6184: an IDR slice (5) or a sequence parameter set (7), alone, in a STAP-A, or at the
/// start of an FU-A.
fn h264(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        5 | 7 => true,
        24 => {
            // STAP-A: [16-bit size][NAL unit]...
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                let Some(&nal) = p.get(i + 2) else {
                    return false;
                };
                if matches!(nal & 0x1f, 5 | 7) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => {
            // FU-A: FU header carries S (start) and the fragmented NAL type.
            let Some(&fu) = p.get(1) else { return false };
            fu & 0x80 != 0 && matches!(fu & 0x1f, 5 | 7)
        }
        _ => false,
    }
}

/// AV1 RTP payload format §4.4: N set on the first packet of a coded video sequence.
fn av1(p: &[u8]) -> bool {
    matches!(p.first(), Some(b0) if b0 & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_and_delta_frames() {
        // S=1, PID=0, no extension, frame tag with P=0 (key).
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x10, 0x02, 0x00]));
        // Same but P=1 (inter frame).
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x11, 0x02, 0x00]));
        // Not the start of a partition.
        assert!(!starts_keyframe(Codec::Vp8, &[0x00, 0x10]));
        // X with I (15-bit picture id), L and T: tag is at index 6.
        let p = [0x90, 0xe0, 0x80 | 0x12, 0x34, 0x05, 0x20, 0x50];
        assert!(starts_keyframe(Codec::Vp8, &p));
        let mut q = p;
        q[6] = 0x51;
        assert!(!starts_keyframe(Codec::Vp8, &q));
        // Truncated descriptors are "no", not a panic.
        for n in 0..p.len() {
            assert!(!starts_keyframe(Codec::Vp8, &p[..n]));
        }
    }

    #[test]
    fn vp9_begin_and_predicted_bits() {
        assert!(starts_keyframe(Codec::Vp9, &[0x08]));
        assert!(!starts_keyframe(Codec::Vp9, &[0x48]));
        assert!(!starts_keyframe(Codec::Vp9, &[0x00]));
        assert!(!starts_keyframe(Codec::Vp9, &[]));
    }

    #[test]
    fn h264_single_stap_and_fu() {
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88])); // IDR
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42])); // SPS
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a])); // non-IDR slice
                                                               // STAP-A with an SPS second.
        let stap = [0x78, 0x00, 0x02, 0x09, 0xf0, 0x00, 0x02, 0x67, 0x42];
        assert!(starts_keyframe(Codec::H264, &stap));
        let stap_delta = [0x78, 0x00, 0x02, 0x09, 0xf0, 0x00, 0x02, 0x41, 0x42];
        assert!(!starts_keyframe(Codec::H264, &stap_delta));
        // STAP-A whose size runs past the end.
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0xff, 0xff, 0x09]));
        // FU-A start of IDR, and a continuation.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c]));
    }

    #[test]
    fn av1_new_sequence_bit() {
        assert!(starts_keyframe(Codec::Av1, &[0x18]));
        assert!(!starts_keyframe(Codec::Av1, &[0x10]));
    }

    #[test]
    fn audio_always_and_unknown_never() {
        assert!(starts_keyframe(Codec::Opus, &[0xfc]));
        assert!(!starts_keyframe(Codec::H265, &[0x26, 0x01]));
    }
}
