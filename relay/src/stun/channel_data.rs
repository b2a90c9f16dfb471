//! ChannelData messages (RFC 8656 §12.4): a 4-byte header (channel number, length) and the
//! application data, padded to a multiple of four over stream transports.

/// Bytes of header in front of the application data.
pub const HEADER_LEN: usize = 4;
/// The range of valid channel numbers (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x4FFF;

pub fn is_valid_channel(ch: u16) -> bool {
    (CHANNEL_MIN..=CHANNEL_MAX).contains(&ch)
}

/// Why bytes are not a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    #[error("ChannelData shorter than its 4-byte header")]
    TooShort,
    #[error("channel number 0x{0:04x} is outside 0x4000..=0x4fff")]
    BadChannel(u16),
    #[error("ChannelData length {declared} exceeds the {available} bytes present")]
    Truncated { declared: usize, available: usize },
}

/// Splits a ChannelData message into (channel, data). Bytes past the declared length
/// (UDP padding) are ignored.
#[inline]
pub fn parse(buf: &[u8]) -> Result<(u16, &[u8]), ChannelDataError> {
    if buf.len() < HEADER_LEN {
        return Err(ChannelDataError::TooShort);
    }
    let ch = u16::from_be_bytes([buf[0], buf[1]]);
    if !is_valid_channel(ch) {
        return Err(ChannelDataError::BadChannel(ch));
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let available = buf.len() - HEADER_LEN;
    if len > available {
        return Err(ChannelDataError::Truncated {
            declared: len,
            available,
        });
    }
    Ok((ch, &buf[HEADER_LEN..HEADER_LEN + len]))
}

/// Length of the ChannelData frame at the front of a stream buffer (header, data and the
/// padding to a multiple of 4 that stream transports require), if the header is present.
pub fn framed_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    Some(HEADER_LEN + ((len + 3) & !3))
}

/// Writes the header into the four bytes in front of data already in place.
#[inline]
pub fn write_header(header: &mut [u8], channel: u16, data_len: usize) {
    header[..2].copy_from_slice(&channel.to_be_bytes());
    header[2..4].copy_from_slice(&(data_len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            parse(&[0x40, 0x01, 0, 2, 7, 8, 0, 0]),
            Ok((0x4001, &[7u8, 8][..]))
        );
        assert_eq!(parse(&[0x40, 0x01]), Err(ChannelDataError::TooShort));
        assert_eq!(
            parse(&[0x50, 0x00, 0, 0]),
            Err(ChannelDataError::BadChannel(0x5000))
        );
        assert!(matches!(
            parse(&[0x40, 0, 0, 9, 1]),
            Err(ChannelDataError::Truncated { .. })
        ));
        assert_eq!(framed_len(&[0x40, 0, 0, 5]), Some(12));
        assert_eq!(framed_len(&[0x40, 0, 0, 8]), Some(12));
    }
}
