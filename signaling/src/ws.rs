//! One WebSocket signaling connection: `join` with a token, then requests and SFU events until
//! either side leaves. A bad message gets an `error` and the connection stays open; only a
//! refused token, a missing join, persistent flooding or a failed media session close it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use meridian_geo::rehome::{plan_drain, Kind, Leaving};
use meridian_geo::{Home, Reason};
use meridian_relay::net::Session;
use meridian_relay::sfu::layer::LayerPrefs;
use meridian_relay::sfu::{Notice, Role as SfuRole, SfuError};
use serde_json::json;

use crate::protocol::{self, close, ClientMessage, SubscribeTarget};
use crate::state::{unix_now, Signaling};
use crate::token::Role;

/// Redirects a join may have taken before this node serves or refuses it.
const MAX_REDIRECTS: u32 = 3;

/// How long an edge session waits for its room's state from the home before it joins
/// without it (a trunk round trip, normally).
const EDGE_MIRROR_WAIT: Duration = Duration::from_secs(2);

/// Rate-limit violations in a row after which the connection is closed.
const MAX_VIOLATIONS: u32 = 200;

fn count_error(code: &str) {
    metrics::counter!("meridian_signaling_errors_total", "code" => code.to_string()).increment(1);
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    count_error(match code {
        close::UNAUTHORIZED => "unauthorized",
        close::JOIN_REQUIRED => "join_required",
        close::UNSUPPORTED_VERSION => "unsupported_version",
        close::RATE_LIMITED => "rate_limited_closed",
        close::MEDIA_FAILED => "media_failed",
        close::GOING_AWAY => "going_away",
        close::TOO_BIG => "too_large",
        close::REDIRECT_LOOP => "redirect_loop",
        _ => "closed",
    });
    // Close reasons are limited to 123 bytes.
    let mut r = reason.to_string();
    while r.len() > 123 {
        r.pop();
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(r),
        })))
        .await;
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .is_ok()
}

/// Sends a `redirect` to `node` (counted by reason), with the RTT the client reported for
/// its region; false when the socket is gone.
async fn redirect(
    socket: &mut WebSocket,
    req: Option<u64>,
    node: &meridian_geo::NodeInfo,
    reason: Reason,
    regions: &[meridian_geo::RegionRtt],
) -> bool {
    metrics::counter!("meridian_route_redirects_total", "reason" => reason.as_str()).increment(1);
    let rtt = regions
        .iter()
        .filter(|r| r.region == node.region)
        .map(|r| r.rtt_ms)
        .reduce(f64::min);
    send(socket, protocol::redirect_json(req, node, reason, rtt)).await
}

/// Token bucket over messages.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
    violations: u32,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.violations = 0;
            true
        } else {
            self.violations += 1;
            false
        }
    }
}

pub async fn session(
    mut socket: WebSocket,
    st: Arc<Signaling>,
    peer: SocketAddr,
    host: Option<String>,
) {
    let cfg = &st.cfg;
    // 1. The first message must be `join`, in time.
    let deadline = Duration::from_secs(cfg.join_timeout_secs);
    let first = match tokio::time::timeout(deadline, next_text(&mut socket)).await {
        Err(_) => {
            let why = format!("send join within {} s", cfg.join_timeout_secs);
            return close_with(&mut socket, close::JOIN_REQUIRED, &why).await;
        }
        Ok(None) => return,
        Ok(Some(t)) => t,
    };
    if first.len() > cfg.max_message_bytes {
        let why = format!(
            "join of {} bytes is over the {} byte limit",
            first.len(),
            cfg.max_message_bytes
        );
        return close_with(&mut socket, close::JOIN_REQUIRED, &why).await;
    }
    let join_started = Instant::now();
    let (req, token, v, resume_from, regions, redirects) = match protocol::parse(&first) {
        Ok((
            req,
            ClientMessage::Join {
                token,
                v,
                resume_from,
                regions,
                redirects,
            },
        )) => (req, token, v, resume_from, regions, redirects),
        Ok(_) => {
            return close_with(
                &mut socket,
                close::JOIN_REQUIRED,
                "the first message must be join",
            )
            .await
        }
        Err(e) => {
            let why = format!("the first message must be join ({}: {})", e.code, e.message);
            return close_with(&mut socket, close::JOIN_REQUIRED, &why).await;
        }
    };
    if v != protocol::VERSION {
        let why = format!(
            "protocol version {v} is not supported; this node speaks {}",
            protocol::VERSION
        );
        return close_with(&mut socket, close::UNSUPPORTED_VERSION, &why).await;
    }
    let now = unix_now();
    let claims = match st.verifier.verify(&token, now, None) {
        Ok(c) => c,
        Err(e) => return close_with(&mut socket, close::UNAUTHORIZED, &e.to_string()).await,
    };
    if !st.accepting() {
        // Draining: sent where the drain would move the session (its nearest healthy node),
        // or, with none (or only one that would send it back), away.
        let me = st.dir.me().to_string();
        let kind = if claims.role == Role::Device {
            Kind::Device
        } else {
            Kind::Watcher
        };
        let leaving = Leaving {
            id: String::new(),
            room: claims.room.clone(),
            kind,
            ranking: regions.clone(),
        };
        let homed_here = st.dir.is_home(&claims.room);
        let to = st.dir.with_view(|v| {
            let to = plan_drain(v, &me, std::slice::from_ref(&leaving))
                .moves
                .pop()?
                .to?;
            // A room homed here is still served only here unless the target serves it over
            // the trunk: anywhere else would send the session straight back.
            let homed_here = homed_here || v.room_home(&claims.room).is_some_and(|h| h.id == me);
            let trunked = v.node(&me).is_some_and(|n| n.trunk.is_some()) && to.trunk.is_some();
            (!homed_here || (trunked && kind == Kind::Watcher)).then_some(to)
        });
        match to {
            Some(node) if redirects < MAX_REDIRECTS => {
                if redirect(&mut socket, req, &node, Reason::Draining, &regions).await {
                    close_with(
                        &mut socket,
                        close::REDIRECT,
                        &format!("draining; go to {}", node.id),
                    )
                    .await;
                }
                return;
            }
            _ => {
                return close_with(
                    &mut socket,
                    close::GOING_AWAY,
                    "the node is draining; connect to another",
                )
                .await;
            }
        }
    }
    // 2. Placement: the room's home, else the nearest region the client measured. With a
    // trunk, a player or viewer of a room homed elsewhere stays on its nearest node, which
    // serves the room over the trunk (an edge).
    let edge_capable = st.trunk.is_some() && claims.role != Role::Device;
    // A device takes its room along from a draining home (see `drain`).
    let device = claims.role == Role::Device;
    let placement =
        st.dir
            .place_session(&claims.room, &regions, redirects == 0, edge_capable, device);
    let remote_home = st.dir.with_view(|v| {
        v.room_home(&claims.room)
            .filter(|h| h.id != st.dir.me() && h.trunk.is_some())
            .map(|h| h.id.clone())
    });
    let mut edge = None;
    let target = if !placement.here {
        Some((placement.node.clone(), placement.reason))
    } else if let (true, Some(home), Some(trunk)) = (edge_capable, &remote_home, &st.trunk) {
        edge = Some(trunk.watch(&claims.room, home));
        None
    } else {
        match st.dir.claim_with(&claims.room, device).await {
            Home::Here => None,
            Home::Elsewhere(node) => Some((*node, Reason::RoomHome)),
        }
    };
    if let Some((node, reason)) = target {
        if redirects >= MAX_REDIRECTS {
            let why = format!(
                "redirected {redirects} times already; room {:?} is on node {} but the nodes disagree",
                claims.room, node.id
            );
            return close_with(&mut socket, close::REDIRECT_LOOP, &why).await;
        }
        tracing::debug!(%peer, room = %claims.room, to = %node.id, reason = reason.as_str(), "redirected");
        if redirect(&mut socket, req, &node, reason, &regions).await {
            close_with(&mut socket, close::REDIRECT, &format!("go to {}", node.id)).await;
        }
        return;
    }
    metrics::counter!("meridian_route_sessions_total", "reason" => placement.reason.as_str())
        .increment(1);
    if let Some(rtt) = placement.rtt_ms {
        metrics::histogram!("meridian_route_rtt_seconds").record(rtt / 1000.0);
    }
    let role = match claims.role {
        Role::Device => SfuRole::Device,
        Role::Player => SfuRole::Player,
        Role::Viewer => SfuRole::Viewer,
    };
    // An edge session joins once the room's devices and tracks are mirrored here: its
    // `joined` lists them and a subscription right behind the join finds them.
    if let Some(e) = edge.as_mut() {
        if !e.mirrored(EDGE_MIRROR_WAIT).await {
            metrics::counter!("meridian_trunk_edge_mirror_timeouts_total").increment(1);
            tracing::debug!(%peer, room = %claims.room, "the room's home sent no room state in time; joining without it");
        }
    }
    let edge_home = if edge.is_some() { remote_home } else { None };
    let Ok(mut session) = st
        .sfu
        .join_at(&claims.room, &claims.sub, role, resume_from, edge_home)
        .await
    else {
        return close_with(&mut socket, close::GOING_AWAY, "the node is stopping").await;
    };
    tracing::debug!(%peer, room = %claims.room, identity = %claims.sub, role = role.as_str(), "joined");
    let _edge = edge;
    let (sid, room, who, role_name) = (
        session.id.to_string(),
        &claims.room,
        &claims.sub,
        role.as_str(),
    );
    let _record = if _edge.is_some() {
        st.dir.edge_session(sid, room, who, role_name)
    } else {
        st.dir.session(sid, room, who, role_name)
    };
    // Built and dropped before the session's loop: the room snapshot is only for this
    // message, and a session lives for hours.
    let joined = json!({
        "type": "joined", "req": req, "v": protocol::VERSION,
        "participant": session.id.to_string(), "identity": claims.sub, "role": role.as_str(),
        "room": claims.room, "expires": claims.exp,
        "node": placement.node.id, "region": placement.node.region,
        "route": {
            "reason": placement.reason.as_str(), "rtt_ms": placement.rtt_ms,
            "redirects": redirects,
            "regions": regions.iter().map(|r| json!({"region": r.region, "rtt_ms": r.rtt_ms})).collect::<Vec<_>>(),
        },
        "ice_servers": st.ice.for_session(&claims.sub, now, claims.exp, host.as_deref()),
        "last_seq": session.last_seq,
        "participants": std::mem::take(&mut session.participants).iter().map(protocol::participant_json).collect::<Vec<_>>(),
        "tracks": std::mem::take(&mut session.tracks).iter().map(protocol::track_json).collect::<Vec<_>>(),
    })
    .to_string();
    if !send(&mut socket, joined).await {
        return;
    }

    // 3. Requests and events.
    let mut bucket = Bucket {
        tokens: cfg.message_burst as f64,
        rate: cfg.messages_per_sec as f64,
        burst: cfg.message_burst as f64,
        at: Instant::now(),
        violations: 0,
    };
    let mut connected = false;
    let kind = if device { Kind::Device } else { Kind::Watcher };
    let (_movable, mut moves) = st.movers.register(&claims.room, kind, &regions);
    let token_expiry = Duration::from_secs(claims.exp.saturating_sub(now));
    let expired = tokio::time::sleep(token_expiry);
    tokio::pin!(expired);
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let frame = match msg {
                    Some(Ok(Message::Text(t))) => Ok(t),
                    Some(Ok(Message::Binary(_))) => Err(()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) => {
                        // Complete the closing handshake (the reply is queued by the library).
                        let _ = futures_util::SinkExt::flush(&mut socket).await;
                        break;
                    }
                    None => break,
                    Some(Err(e)) => {
                        // Over the hard size cap, or a broken frame: nothing more can be read.
                        tracing::debug!(%peer, "websocket error: {e}");
                        close_with(&mut socket, close::TOO_BIG, "message too large or malformed frame").await;
                        break;
                    }
                };
                // Every frame, even a bad one, costs a token.
                if !bucket.take(Instant::now()) {
                    count_error("rate_limited");
                    if bucket.violations >= MAX_VIOLATIONS {
                        close_with(&mut socket, close::RATE_LIMITED, "too many messages").await;
                        break;
                    }
                    let why = format!("over {} messages/s; message dropped", cfg.messages_per_sec);
                    if !send(&mut socket, protocol::error(None, "rate_limited", &why)).await {
                        break;
                    }
                    continue;
                }
                let Ok(text) = frame else {
                    count_error("bad_json");
                    if !send(&mut socket, protocol::error(None, "bad_json", "binary frames are not part of the protocol; send JSON text")).await {
                        break;
                    }
                    continue;
                };
                if text.len() > cfg.max_message_bytes {
                    count_error("too_large");
                    let why = format!("message of {} bytes is over the {} byte limit", text.len(), cfg.max_message_bytes);
                    if !send(&mut socket, protocol::error(None, "too_large", &why)).await {
                        break;
                    }
                    continue;
                }
                match handle(&session, role, text.as_str()).await {
                    Reply::Send(out) => {
                        if !send(&mut socket, out).await {
                            break;
                        }
                    }
                    Reply::Leave => {
                        close_with(&mut socket, close::NORMAL, "left").await;
                        break;
                    }
                }
            }
            n = session.notices.recv() => {
                let Some(n) = n else {
                    close_with(&mut socket, close::GOING_AWAY, "the node is stopping").await;
                    break;
                };
                if n == Notice::Connected && !connected {
                    connected = true;
                    metrics::histogram!("meridian_signaling_join_seconds").record(join_started.elapsed().as_secs_f64());
                }
                let failed = match &n {
                    Notice::Disconnected { reason } => Some(reason.clone()),
                    _ => None,
                };
                if !send(&mut socket, protocol::notice_json(&n).to_string()).await {
                    break;
                }
                if let Some(reason) = failed {
                    close_with(&mut socket, close::MEDIA_FAILED, &format!("media session ended: {reason}")).await;
                    break;
                }
            }
            Some(m) = moves.recv() => {
                // The node drains: the client joins `to` and leaves here once media flows
                // there; the node closes what is left at the deadline.
                if !send(&mut socket, protocol::move_json(&m.to, m.reason, m.deadline)).await {
                    break;
                }
            }
            _ = &mut expired => {
                close_with(&mut socket, close::UNAUTHORIZED, "token expired").await;
                break;
            }
        }
    }
    drop(session);
}

enum Reply {
    Send(String),
    Leave,
}

/// Reads until a text frame (or the end).
async fn next_text(socket: &mut WebSocket) -> Option<String> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Binary(_)) => return Some(String::new()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn sfu_error(req: Option<u64>, e: &SfuError) -> String {
    count_error(e.code());
    protocol::error(req, e.code(), &e.to_string())
}

fn ok(req: Option<u64>, what: &str) -> String {
    json!({"type": "ok", "req": req, "for": what}).to_string()
}

async fn handle(session: &Session, role: SfuRole, text: &str) -> Reply {
    let (req, msg) = match protocol::parse(text) {
        Ok(x) => x,
        Err(e) => {
            count_error(e.code);
            return Reply::Send(protocol::error(e.req, e.code, &e.message));
        }
    };
    let out = match msg {
        ClientMessage::Join { .. } => {
            count_error("already_joined");
            protocol::error(req, "already_joined", "this connection has joined already")
        }
        ClientMessage::Offer { sdp } => match session.offer(sdp).await {
            Ok(answer) => json!({"type": "answer", "req": req, "sdp": answer}).to_string(),
            Err(e) => sfu_error(req, &e),
        },
        ClientMessage::Candidate { candidate: None } => ok(req, "candidate"),
        ClientMessage::Candidate { candidate: Some(c) } => match session.candidate(c).await {
            Ok(()) => ok(req, "candidate"),
            Err(e) => sfu_error(req, &e),
        },
        ClientMessage::Publish { mid, name, layers } => {
            match session.publish(mid, name, layers).await {
                Ok(()) => ok(req, "publish"),
                Err(e) => sfu_error(req, &e),
            }
        }
        ClientMessage::Unpublish { track } => match session.unpublish(track).await {
            Ok(()) => ok(req, "unpublish"),
            Err(e) => sfu_error(req, &e),
        },
        ClientMessage::Subscribe {
            target,
            mid,
            layer,
            max_width,
            max_height,
        } => {
            let prefs = LayerPrefs {
                layer,
                max_width,
                max_height,
            };
            let r = match target {
                SubscribeTarget::Track(track) => session.subscribe(track, mid, prefs).await,
                SubscribeTarget::Publisher { identity, kind } => {
                    session
                        .subscribe_publisher(identity, kind, mid, prefs)
                        .await
                }
            };
            match r {
                Ok(()) => ok(req, "subscribe"),
                Err(e) => sfu_error(req, &e),
            }
        }
        ClientMessage::Unsubscribe { track } => match session.unsubscribe(track).await {
            Ok(()) => ok(req, "unsubscribe"),
            Err(e) => sfu_error(req, &e),
        },
        ClientMessage::Mute { track, muted } => {
            if !role.can_publish() {
                sfu_error(req, &SfuError::Forbidden(role.as_str(), "mute tracks"))
            } else {
                match session.mute(track, muted).await {
                    Ok(()) => ok(req, "mute"),
                    Err(e) => sfu_error(req, &e),
                }
            }
        }
        ClientMessage::Leave => return Reply::Leave,
        ClientMessage::Ping => json!({"type": "pong", "req": req}).to_string(),
    };
    Reply::Send(out)
}
