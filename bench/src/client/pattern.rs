//! A moving test pattern in I420 (what the device simulator encodes): colour bars with fresh
//! grain every frame (so the encoder has to spend its whole bitrate, as with a real game
//! scene), a bar that sweeps across once a second, and a frame counter in binary blocks.

/// One I420 frame: Y plane then U and V at quarter size.
pub fn frame(width: usize, height: usize, n: u64, fps: u32) -> Vec<u8> {
    let (w, h) = (width, height);
    let mut yuv = vec![0u8; w * h * 3 / 2];
    // (Y, U, V) of eight classic bars.
    const BARS: [(u8, u8, u8); 8] = [
        (235, 128, 128),
        (210, 16, 146),
        (170, 166, 16),
        (145, 54, 34),
        (106, 202, 222),
        (81, 90, 240),
        (41, 240, 110),
        (16, 128, 128),
    ];
    let sweep = ((n % fps.max(1) as u64) as usize * w) / fps.max(1) as usize;
    let (y_plane, uv) = yuv.split_at_mut(w * h);
    let (u_plane, v_plane) = uv.split_at_mut(w * h / 4);
    let mut seed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for row in 0..h {
        for col in 0..w {
            let bar = BARS[(col * 8 / w).min(7)];
            // xorshift grain, ±24 around the bar's luma.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let grain = (seed % 49) as i16 - 24;
            let mut y = (bar.0 as i16 + grain).clamp(16, 235) as u8;
            if col.abs_diff(sweep) < w / 64 + 1 {
                y = 255 - y;
            }
            y_plane[row * w + col] = y;
        }
    }
    for row in 0..h / 2 {
        for col in 0..w / 2 {
            let bar = BARS[((col * 2) * 8 / w).min(7)];
            u_plane[row * (w / 2) + col] = bar.1;
            v_plane[row * (w / 2) + col] = bar.2;
        }
    }
    // Frame counter: 16 bits as blocks along the bottom.
    let block = (w / 32).max(2);
    for bit in 0..16 {
        let on = (n >> bit) & 1 == 1;
        let x0 = bit * block * 2;
        for row in h.saturating_sub(block * 2)..h.saturating_sub(block) {
            for col in x0..(x0 + block).min(w) {
                y_plane[row * w + col] = if on { 235 } else { 16 };
            }
        }
    }
    yuv
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_have_the_right_size_and_differ() {
        let a = super::frame(320, 180, 0, 30);
        let b = super::frame(320, 180, 1, 30);
        assert_eq!(a.len(), 320 * 180 * 3 / 2);
        assert_ne!(a, b);
    }
}
