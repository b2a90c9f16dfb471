//! Which simulcast layer a subscriber gets: a pure function of what the publisher sends, what
//! the subscriber asked for, and what its downlink can carry (the TWCC bandwidth estimate).

/// One simulcast layer as the chooser sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerView {
    /// The RTP stream id (`a=rid`), `None` for a track without simulcast.
    pub rid: Option<String>,
    /// Measured over the last second.
    pub bitrate_bps: u64,
    /// Media arrived recently on this layer.
    pub active: bool,
    /// Declared by the publisher (`publish` message), when it did.
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// What a subscriber asked for (`subscribe` message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerPrefs {
    /// `low`, `medium`, `high`, or a rid the publisher uses. `None` means "best that fits".
    pub layer: Option<String>,
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
}

/// Share of the estimate a layer may use, leaving room for audio, RTX and probing.
const HEADROOM_NUM: u64 = 85;
const HEADROOM_DEN: u64 = 100;

/// Orders layers from lowest to highest quality: by declared size when every layer declared
/// one, else by measured bitrate (the publisher's encoder allocates more to larger layers).
pub fn order(layers: &mut [LayerView]) {
    let all_sized = layers
        .iter()
        .all(|l| l.width.is_some() && l.height.is_some());
    if all_sized {
        layers.sort_by_key(|l| (l.width.unwrap_or(0) as u64) * (l.height.unwrap_or(0) as u64));
    } else {
        layers.sort_by_key(|l| l.bitrate_bps);
    }
}

/// Picks the layer (index into `layers`, which must be ordered by [`order`]) to forward.
/// Returns `None` only when no layer is active.
pub fn choose(
    layers: &[LayerView],
    prefs: &LayerPrefs,
    estimate_bps: Option<u64>,
) -> Option<usize> {
    let active: Vec<usize> = (0..layers.len()).filter(|&i| layers[i].active).collect();
    let (&lowest, &highest) = (active.first()?, active.last()?);
    // The highest layer the preferences allow.
    let mut cap = highest;
    if let Some(name) = &prefs.layer {
        let by_name = active
            .iter()
            .copied()
            .rfind(|&i| layers[i].rid.as_deref() == Some(name.as_str()));
        let by_rank = match name.as_str() {
            "low" | "l" | "q" => Some(lowest),
            "medium" | "m" => Some(active[active.len() / 2]),
            "high" | "f" => Some(highest),
            _ => None,
        };
        if let Some(i) = by_name.or(by_rank) {
            cap = i;
        }
    }
    if prefs.max_width.is_some() || prefs.max_height.is_some() {
        let fits = |l: &LayerView| match (l.width, l.height) {
            (Some(w), Some(h)) => {
                prefs.max_width.is_none_or(|m| w <= m) && prefs.max_height.is_none_or(|m| h <= m)
            }
            _ => true,
        };
        let fitting = active
            .iter()
            .copied()
            .rfind(|&i| i <= cap && fits(&layers[i]));
        cap = fitting.unwrap_or(lowest);
    }
    let Some(estimate) = estimate_bps else {
        return Some(cap);
    };
    let budget = estimate * HEADROOM_NUM / HEADROOM_DEN;
    let best = active
        .iter()
        .copied()
        .rfind(|&i| i <= cap && layers[i].bitrate_bps <= budget);
    Some(best.unwrap_or(lowest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(rid: &str, kbps: u64, size: Option<(u32, u32)>) -> LayerView {
        LayerView {
            rid: Some(rid.into()),
            bitrate_bps: kbps * 1000,
            active: true,
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
        }
    }

    fn three() -> Vec<LayerView> {
        let mut v = vec![
            layer("f", 2500, None),
            layer("q", 150, None),
            layer("h", 600, None),
        ];
        order(&mut v);
        v
    }

    fn rid(layers: &[LayerView], i: Option<usize>) -> Option<&str> {
        i.and_then(|i| layers[i].rid.as_deref())
    }

    #[test]
    fn orders_by_bitrate_or_declared_size() {
        let v = three();
        assert_eq!(rid(&v, Some(0)), Some("q"));
        assert_eq!(rid(&v, Some(2)), Some("f"));
        // Declared sizes win over bitrates.
        let mut s = vec![
            layer("a", 100, Some((1280, 720))),
            layer("b", 900, Some((320, 180))),
        ];
        order(&mut s);
        assert_eq!(s[0].rid.as_deref(), Some("b"));
    }

    #[test]
    fn estimate_picks_highest_layer_that_fits() {
        let v = three();
        let p = LayerPrefs::default();
        assert_eq!(rid(&v, choose(&v, &p, None)), Some("f"));
        assert_eq!(rid(&v, choose(&v, &p, Some(5_000_000))), Some("f"));
        assert_eq!(rid(&v, choose(&v, &p, Some(1_000_000))), Some("h"));
        // 600 kbps does not fit in 85 % of 700 kbps.
        assert_eq!(rid(&v, choose(&v, &p, Some(700_000))), Some("q"));
        // Nothing fits: the lowest layer rather than nothing.
        assert_eq!(rid(&v, choose(&v, &p, Some(50_000))), Some("q"));
    }

    #[test]
    fn preferences_cap_the_choice() {
        let v = three();
        let named = |n: &str| LayerPrefs {
            layer: Some(n.into()),
            ..Default::default()
        };
        assert_eq!(
            rid(&v, choose(&v, &named("low"), Some(9_000_000))),
            Some("q")
        );
        assert_eq!(
            rid(&v, choose(&v, &named("medium"), Some(9_000_000))),
            Some("h")
        );
        assert_eq!(rid(&v, choose(&v, &named("h"), Some(9_000_000))), Some("h"));
        // A preference never forces more than the estimate allows.
        assert_eq!(
            rid(&v, choose(&v, &named("high"), Some(200_000))),
            Some("q")
        );
        // An unknown name leaves the choice to the estimate.
        assert_eq!(
            rid(&v, choose(&v, &named("zz"), Some(9_000_000))),
            Some("f")
        );
    }

    #[test]
    fn max_size_uses_declared_dimensions() {
        let mut v = vec![
            layer("q", 150, Some((320, 180))),
            layer("h", 600, Some((640, 360))),
            layer("f", 2500, Some((1280, 720))),
        ];
        order(&mut v);
        let p = LayerPrefs {
            max_width: Some(700),
            ..Default::default()
        };
        assert_eq!(rid(&v, choose(&v, &p, None)), Some("h"));
        let tiny = LayerPrefs {
            max_height: Some(100),
            ..Default::default()
        };
        assert_eq!(rid(&v, choose(&v, &tiny, None)), Some("q"));
    }

    #[test]
    fn inactive_layers_are_skipped() {
        let mut v = three();
        v[2].active = false; // f stopped (publisher's uplink dropped it)
        assert_eq!(rid(&v, choose(&v, &LayerPrefs::default(), None)), Some("h"));
        for l in &mut v {
            l.active = false;
        }
        assert_eq!(choose(&v, &LayerPrefs::default(), None), None);
    }

    #[test]
    fn single_layer_track() {
        let v = vec![LayerView {
            rid: None,
            bitrate_bps: 1_000_000,
            active: true,
            width: None,
            height: None,
        }];
        assert_eq!(choose(&v, &LayerPrefs::default(), Some(10_000)), Some(0));
    }
}
