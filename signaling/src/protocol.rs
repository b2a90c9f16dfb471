//! The signaling protocol, version 1: JSON messages over one WebSocket. Documented message by
//! message in docs/signaling.md; this module is the single place that parses client messages
//! and names error and close codes.

use serde::Deserialize;
use serde_json::{json, Value};

use meridian_geo::RegionRtt;
use meridian_relay::sfu::{Notice, ParticipantInfo, TrackInfo};

/// The protocol version this node speaks.
pub const VERSION: u32 = 1;

/// WebSocket close codes (4000–4999 are application-defined).
pub mod close {
    /// The token was refused (expired, forged, wrong room, unknown key …).
    pub const UNAUTHORIZED: u16 = 4001;
    /// The first message was not `join`, or it did not come in time.
    pub const JOIN_REQUIRED: u16 = 4002;
    /// The client asked for a protocol version this node does not speak.
    pub const UNSUPPORTED_VERSION: u16 = 4005;
    /// The client kept exceeding the message rate limit.
    pub const RATE_LIMITED: u16 = 4008;
    /// The media session failed (ICE timed out, DTLS failed).
    pub const MEDIA_FAILED: u16 = 4010;
    /// Sent after a `redirect` message: reconnect to the URL it names.
    pub const REDIRECT: u16 = 4302;
    /// The join was redirected too many times (the nodes' views of the cluster disagree).
    pub const REDIRECT_LOOP: u16 = 4011;
    /// The node is draining or stopping; reconnect (to another node).
    pub const GOING_AWAY: u16 = 1001;
    /// A message over the hard size cap.
    pub const TOO_BIG: u16 = 1009;
    pub const NORMAL: u16 = 1000;
}

/// A message from the client, after parsing.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Join {
        token: String,
        v: u32,
        resume_from: Option<u64>,
        /// The RTTs the client measured to each region (empty: place it here).
        regions: Vec<RegionRtt>,
        /// How many times this join was redirected already.
        redirects: u32,
    },
    Offer {
        sdp: String,
    },
    Candidate {
        candidate: Option<String>,
    },
    Publish {
        mid: String,
        name: Option<String>,
        layers: Vec<(String, Option<u32>, Option<u32>)>,
    },
    Unpublish {
        track: String,
    },
    Subscribe {
        /// The track id, or the publisher whose first track of a kind is meant.
        target: SubscribeTarget,
        mid: String,
        layer: Option<String>,
        max_width: Option<u32>,
        max_height: Option<u32>,
    },
    Unsubscribe {
        track: String,
    },
    Mute {
        track: String,
        muted: bool,
    },
    Leave,
    Ping,
}

/// What a `subscribe` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTarget {
    Track(String),
    /// The first track of `kind` ("video" or "audio") that `identity` publishes in the room.
    Publisher {
        identity: String,
        kind: String,
    },
}

/// Why a client message was not understood. `code` is the documented error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
    /// The request id, when the message carried one.
    pub req: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    token: String,
    #[serde(default)]
    v: Option<u32>,
    #[serde(default)]
    resume_from: Option<u64>,
    #[serde(default)]
    regions: Vec<RegionBody>,
    #[serde(default)]
    redirects: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionBody {
    region: String,
    rtt_ms: f64,
}

/// Most regions a join may rank.
pub const MAX_RANKED_REGIONS: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SdpBody {
    sdp: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateBody {
    candidate: Option<String>,
    #[serde(default, rename = "sdpMid")]
    _sdp_mid: Option<Value>,
    #[serde(default, rename = "sdpMLineIndex")]
    _sdp_mline_index: Option<Value>,
    #[serde(default, rename = "usernameFragment")]
    _ufrag: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerDecl {
    rid: String,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    mid: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    layers: Vec<LayerDecl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackBody {
    track: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    #[serde(default)]
    track: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    mid: String,
    #[serde(default)]
    layer: Option<String>,
    #[serde(default)]
    max_width: Option<u32>,
    #[serde(default)]
    max_height: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    track: String,
    muted: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<(Option<u64>, ClientMessage), ParseError> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| ParseError {
        code: "bad_json",
        message: format!("not JSON: {e}"),
        req: None,
    })?;
    let Some(obj) = v.as_object_mut() else {
        return Err(ParseError {
            code: "bad_json",
            message: "expected a JSON object".into(),
            req: None,
        });
    };
    let req = match obj.remove("req") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(_) => {
            return Err(ParseError {
                code: "bad_request",
                message: "\"req\" must be a non-negative integer".into(),
                req: None,
            })
        }
    };
    let typ = match obj.remove("type") {
        Some(Value::String(s)) => s,
        _ => {
            return Err(ParseError {
                code: "bad_request",
                message: "missing \"type\" (a string)".into(),
                req,
            })
        }
    };
    let bad = |e: serde_json::Error| ParseError {
        code: "bad_request",
        message: format!("{typ}: {e}"),
        req,
    };
    let msg = match typ.as_str() {
        "join" => {
            let b: JoinBody = serde_json::from_value(v).map_err(bad)?;
            let invalid = |message: String| ParseError {
                code: "bad_request",
                message,
                req,
            };
            if b.regions.len() > MAX_RANKED_REGIONS {
                return Err(invalid(format!(
                    "join: {} regions ranked; at most {MAX_RANKED_REGIONS}",
                    b.regions.len()
                )));
            }
            if let Some(r) = b.regions.iter().find(|r| {
                r.region.is_empty() || r.region.len() > 64 || !r.rtt_ms.is_finite() || r.rtt_ms < 0.0
            }) {
                return Err(invalid(format!(
                    "join: regions[]: region must be 1..=64 bytes and rtt_ms a finite number >= 0 (got {:?}, {})",
                    r.region.chars().take(64).collect::<String>(),
                    r.rtt_ms
                )));
            }
            ClientMessage::Join {
                token: b.token,
                v: b.v.unwrap_or(VERSION),
                resume_from: b.resume_from,
                regions: b
                    .regions
                    .into_iter()
                    .map(|r| RegionRtt {
                        region: r.region,
                        rtt_ms: r.rtt_ms,
                    })
                    .collect(),
                redirects: b.redirects.unwrap_or(0),
            }
        }
        "offer" => ClientMessage::Offer {
            sdp: serde_json::from_value::<SdpBody>(v).map_err(bad)?.sdp,
        },
        "candidate" => ClientMessage::Candidate {
            candidate: serde_json::from_value::<CandidateBody>(v)
                .map_err(bad)?
                .candidate
                .filter(|c| !c.is_empty()),
        },
        "publish" => {
            let b: PublishBody = serde_json::from_value(v).map_err(bad)?;
            ClientMessage::Publish {
                mid: b.mid,
                name: b.name,
                layers: b.layers.into_iter().map(|l| (l.rid, l.width, l.height)).collect(),
            }
        }
        "unpublish" => ClientMessage::Unpublish {
            track: serde_json::from_value::<TrackBody>(v).map_err(bad)?.track,
        },
        "subscribe" => {
            let b: SubscribeBody = serde_json::from_value(v).map_err(bad)?;
            let invalid = |message: &str| ParseError {
                code: "bad_request",
                message: format!("subscribe: {message}"),
                req,
            };
            let target = match (b.track, b.identity, b.kind) {
                (Some(t), None, None) => SubscribeTarget::Track(t),
                (None, Some(identity), kind) => {
                    let kind = kind.unwrap_or_else(|| "video".into());
                    if kind != "video" && kind != "audio" {
                        return Err(invalid("kind must be \"video\" or \"audio\""));
                    }
                    SubscribeTarget::Publisher { identity, kind }
                }
                (Some(_), Some(_), _) => return Err(invalid("name either track or identity, not both")),
                (Some(_), None, Some(_)) => return Err(invalid("kind goes with identity, not with track")),
                (None, None, _) => return Err(invalid("missing field `track` (or `identity`)")),
            };
            ClientMessage::Subscribe {
                target,
                mid: b.mid,
                layer: b.layer,
                max_width: b.max_width,
                max_height: b.max_height,
            }
        }
        "unsubscribe" => ClientMessage::Unsubscribe {
            track: serde_json::from_value::<TrackBody>(v).map_err(bad)?.track,
        },
        "mute" => {
            let b: MuteBody = serde_json::from_value(v).map_err(bad)?;
            ClientMessage::Mute {
                track: b.track,
                muted: b.muted,
            }
        }
        "leave" => {
            serde_json::from_value::<Empty>(v).map_err(bad)?;
            ClientMessage::Leave
        }
        "ping" => {
            serde_json::from_value::<Empty>(v).map_err(bad)?;
            ClientMessage::Ping
        }
        other => {
            return Err(ParseError {
                code: "unknown_type",
                message: format!(
                    "unknown message type {:?}; expected join, offer, candidate, publish, unpublish, subscribe, unsubscribe, mute, leave or ping",
                    other.chars().take(64).collect::<String>()
                ),
                req,
            })
        }
    };
    Ok((req, msg))
}

pub fn error(req: Option<u64>, code: &str, message: &str) -> String {
    json!({"type": "error", "req": req, "code": code, "message": message}).to_string()
}

pub fn participant_json(p: &ParticipantInfo) -> Value {
    json!({"id": p.id, "identity": p.identity, "role": p.role.as_str()})
}

pub fn track_json(t: &TrackInfo) -> Value {
    json!({
        "id": t.id, "publisher": t.publisher, "kind": t.kind, "name": t.name,
        "layers": t.layers, "codec": t.codec, "muted": t.muted,
    })
}

/// The server event for an SFU notice.
pub fn notice_json(n: &Notice) -> Value {
    match n {
        Notice::Connected => json!({"type": "connected"}),
        Notice::Disconnected { reason } => json!({"type": "disconnected", "reason": reason}),
        Notice::ParticipantJoined(p) => {
            json!({"type": "participant_joined", "participant": participant_json(p)})
        }
        Notice::ParticipantLeft { id, identity } => {
            json!({"type": "participant_left", "id": id, "identity": identity})
        }
        Notice::TrackPublished(t) => json!({"type": "track_published", "track": track_json(t)}),
        Notice::TrackUnpublished { track } => json!({"type": "track_unpublished", "track": track}),
        Notice::TrackMuted { track, muted } => {
            json!({"type": "track_muted", "track": track, "muted": muted})
        }
        Notice::Published { track, mid } => {
            json!({"type": "published", "track": track, "mid": mid})
        }
        Notice::Subscribed { track, mid } => {
            json!({"type": "subscribed", "track": track, "mid": mid})
        }
        Notice::Unsubscribed { track } => json!({"type": "unsubscribed", "track": track}),
        Notice::LayerChanged { track, layer } => {
            json!({"type": "layer_changed", "track": track, "layer": layer})
        }
        Notice::TrackStalled { track, stalled } => {
            json!({"type": "track_stalled", "track": track, "stalled": stalled})
        }
        Notice::Error { code, message } => {
            json!({"type": "error", "req": null, "code": code, "message": message})
        }
    }
}

/// The `redirect` server message: reconnect to `node`'s signaling and join again.
pub fn redirect_json(
    req: Option<u64>,
    node: &meridian_geo::NodeInfo,
    reason: meridian_geo::Reason,
    rtt_ms: Option<f64>,
) -> String {
    json!({
        "type": "redirect", "req": req, "url": node.ws_url(), "node": node.id,
        "region": node.region, "reason": reason.as_str(), "rtt_ms": rtt_ms,
    })
    .to_string()
}

/// The `move` event: the node drains and the session should move to `node`
/// make-before-break (join there, then leave here), within `deadline_ms`.
pub fn move_json(
    node: &meridian_geo::NodeInfo,
    reason: meridian_geo::rehome::MoveReason,
    deadline: std::time::Duration,
) -> String {
    json!({
        "type": "move", "url": node.ws_url(), "node": node.id, "region": node.region,
        "reason": reason.as_str(), "deadline_ms": deadline.as_millis() as u64,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_message_type() {
        let (req, m) = parse(r#"{"type":"join","token":"t","req":1}"#).unwrap();
        assert_eq!(req, Some(1));
        assert_eq!(
            m,
            ClientMessage::Join {
                token: "t".into(),
                v: 1,
                resume_from: None,
                regions: vec![],
                redirects: 0,
            }
        );
        let (_, m) = parse(
            r#"{"type":"join","token":"t","regions":[{"region":"eu","rtt_ms":21.5}],"redirects":1}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Join { regions, redirects: 1, .. }
                if regions == vec![RegionRtt { region: "eu".into(), rtt_ms: 21.5 }]
        ));
        assert!(matches!(
            parse(r#"{"type":"offer","sdp":"v=0"}"#).unwrap().1,
            ClientMessage::Offer { .. }
        ));
        assert_eq!(
            parse(r#"{"type":"candidate","candidate":"","sdpMid":"0"}"#)
                .unwrap()
                .1,
            ClientMessage::Candidate { candidate: None }
        );
        assert!(matches!(
            parse(r#"{"type":"publish","mid":"0","layers":[{"rid":"h","width":640}]}"#).unwrap().1,
            ClientMessage::Publish { layers, .. } if layers == vec![("h".to_string(), Some(640), None)]
        ));
        assert!(matches!(
            parse(r#"{"type":"subscribe","track":"t","mid":"1","layer":"low"}"#).unwrap().1,
            ClientMessage::Subscribe { layer: Some(l), .. } if l == "low"
        ));
        assert_eq!(
            parse(r#"{"type":"subscribe","identity":"rig","mid":"1"}"#)
                .unwrap()
                .1,
            ClientMessage::Subscribe {
                target: SubscribeTarget::Publisher {
                    identity: "rig".into(),
                    kind: "video".into()
                },
                mid: "1".into(),
                layer: None,
                max_width: None,
                max_height: None,
            }
        );
        for (bad, why) in [
            (
                r#"{"type":"subscribe","mid":"1"}"#,
                "missing field `track` (or `identity`)",
            ),
            (
                r#"{"type":"subscribe","track":"t","identity":"rig","mid":"1"}"#,
                "either track or identity",
            ),
            (
                r#"{"type":"subscribe","identity":"rig","kind":"data","mid":"1"}"#,
                "kind must be",
            ),
            (
                r#"{"type":"subscribe","track":"t","kind":"video","mid":"1"}"#,
                "kind goes with identity",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, "bad_request", "{bad}");
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
        assert!(matches!(
            parse(r#"{"type":"mute","track":"t","muted":true}"#)
                .unwrap()
                .1,
            ClientMessage::Mute { muted: true, .. }
        ));
        assert_eq!(
            parse(r#"{"type":"leave"}"#).unwrap().1,
            ClientMessage::Leave
        );
        assert_eq!(
            parse(r#"{"type":"ping","req":9}"#).unwrap(),
            (Some(9), ClientMessage::Ping)
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse("{nope").unwrap_err().code, "bad_json");
        assert_eq!(parse("[1,2]").unwrap_err().code, "bad_json");
        assert_eq!(parse(r#"{"req":3}"#).unwrap_err().code, "bad_request");
        let e = parse(r#"{"type":"dance","req":4}"#).unwrap_err();
        assert_eq!((e.code, e.req), ("unknown_type", Some(4)));
        let e = parse(r#"{"type":"subscribe","track":"t","req":5}"#).unwrap_err();
        assert_eq!(e.code, "bad_request");
        assert!(e.message.contains("mid"), "{}", e.message);
        for bad in [
            r#"{"type":"join","token":"t","regions":[{"region":"eu","rtt_ms":-1}]}"#,
            r#"{"type":"join","token":"t","regions":[{"region":"","rtt_ms":1}]}"#,
            r#"{"type":"join","token":"t","regions":[{"region":"eu"}]}"#,
            r#"{"type":"join","token":"t","regions":"eu"}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, "bad_request", "{bad}");
        }
        let many: Vec<String> = (0..33)
            .map(|i| format!(r#"{{"region":"r{i}","rtt_ms":1}}"#))
            .collect();
        let e = parse(&format!(
            r#"{{"type":"join","token":"t","regions":[{}]}}"#,
            many.join(",")
        ))
        .unwrap_err();
        assert!(e.message.contains("at most 32"), "{}", e.message);
        let e = parse(r#"{"type":"ping","extra":1}"#).unwrap_err();
        assert!(e.message.contains("extra"), "{}", e.message);
        assert_eq!(
            parse(r#"{"type":"ping","req":-1}"#).unwrap_err().code,
            "bad_request"
        );
    }
}
