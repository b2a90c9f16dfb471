//! WHIP (RFC 9725) publishing and WHEP playback: one HTTP POST carries the client's SDP offer
//! and returns the answer, so OBS, GStreamer or a browser can publish or watch without the
//! WebSocket protocol.
//!
//! - `POST /whip` (Bearer token with role `device`): every audio/video m-line the client sends
//!   becomes a published track in the token's room.
//! - `POST /whep[?device=IDENTITY]` (Bearer token, role `player` or `viewer`): each recvonly
//!   m-line is subscribed to a track of the same kind published by that device (by default the
//!   first device of the room that publishes one).
//! - The answer's `Location` is the session resource: `PATCH` it with
//!   `application/trickle-ice-sdpfrag` to trickle candidates (`If-Match` with its `ETag`), and
//!   `DELETE` it to end the session. The session also ends when ICE times out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::Router;
use meridian_relay::net::Session;
use meridian_relay::sfu::layer::LayerPrefs;
use meridian_relay::sfu::{Notice, Role as SfuRole};
use serde::Deserialize;

use crate::state::{unix_now, Signaling};
use crate::token::Role;

/// Sessions created over WHIP/WHEP, by resource id.
#[derive(Default)]
pub struct Resources {
    map: Mutex<HashMap<String, Resource>>,
}

struct Resource {
    session: Arc<Session>,
    /// The session's entry in the cluster directory, for as long as the resource lives.
    _record: meridian_geo::SessionGuard,
    etag: String,
    /// The client's ICE ufrag from its offer (a PATCH with another one is an ICE restart).
    ufrag: String,
}

/// The largest SDP body accepted.
const MAX_SDP: usize = 64 * 1024;

pub fn routes() -> Router<Arc<Signaling>> {
    Router::new()
        .route("/whip", post(whip).options(options))
        .route("/whep", post(whep).options(options))
        .route("/whip/{id}", patch(trickle).delete(end).options(options))
        .route("/whep/{id}", patch(trickle).delete(end).options(options))
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link"),
    );
    r
}

fn problem(status: StatusCode, code: &'static str, message: &str) -> Response {
    metrics::counter!("meridian_signaling_errors_total", "code" => code).increment(1);
    let mut r = (status, format!("{code}: {message}\n")).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    cors(r)
}

async fn options() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert("accept-post", HeaderValue::from_static("application/sdp"));
    cors(r)
}

/// The token's claims, or the HTTP refusal.
#[allow(clippy::result_large_err)] // an early-return response, built once per request
fn authorize(st: &Signaling, headers: &HeaderMap) -> Result<crate::token::Claims, Response> {
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer <token>",
        ));
    };
    let Some(token) = auth.strip_prefix("Bearer ").map(str::trim) else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "expected Authorization: Bearer <token>",
        ));
    };
    st.verifier
        .verify(token, unix_now(), None)
        .map_err(|e| problem(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()))
}

#[allow(clippy::result_large_err)] // an early-return response, built once per request
fn sdp_body(headers: &HeaderMap, body: &Bytes, want: &str) -> Result<String, Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with(want) {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            &format!("expected Content-Type: {want}, got {ct:?}"),
        ));
    }
    if body.len() > MAX_SDP {
        return Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("body of {} bytes is over {MAX_SDP}", body.len()),
        ));
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| problem(StatusCode::BAD_REQUEST, "bad_sdp", "the body is not UTF-8"))
}

/// The (kind, mid, direction) of each audio/video m-line of an SDP.
fn media_lines(sdp: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, String, String)> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            if let Some(c) = cur.take() {
                out.push(c);
            }
            let kind = m.split_whitespace().next().unwrap_or("").to_string();
            cur = Some((kind, String::new(), "sendrecv".into()));
        } else if let Some(c) = cur.as_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                c.1 = mid.to_string();
            } else if matches!(
                line,
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
            ) {
                c.2 = line[2..].to_string();
            }
        }
    }
    out.extend(cur);
    out.retain(|(k, _, _)| k == "audio" || k == "video");
    out
}

/// The `Link` headers advertising the node's TURN (RFC 9725 §4.6).
fn ice_links(st: &Signaling, identity: &str, exp: u64, host: Option<&str>) -> Vec<HeaderValue> {
    let servers = st.ice.for_session(identity, unix_now(), exp, host);
    let mut out = Vec::new();
    for s in servers.as_array().into_iter().flatten() {
        let (user, cred) = (
            s["username"].as_str().unwrap_or(""),
            s["credential"].as_str().unwrap_or(""),
        );
        for url in s["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str())
        {
            let v = format!(
                "<{url}>; rel=\"ice-server\"; username=\"{user}\"; credential=\"{cred}\"; credential-type=\"password\""
            );
            if let Ok(h) = HeaderValue::from_str(&v) {
                out.push(h);
            }
        }
    }
    out
}

#[derive(Deserialize)]
struct WhepQuery {
    device: Option<String>,
}

async fn whip(
    State(st): State<Arc<Signaling>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match authorize(&st, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if claims.role != Role::Device {
        return problem(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("WHIP publishes; a {} token may not", claims.role.as_str()),
        );
    }
    let sdp = match sdp_body(&headers, &body, "application/sdp") {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !media_lines(&sdp)
        .iter()
        .any(|(_, _, d)| d == "sendonly" || d == "sendrecv")
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the offer sends no audio or video",
        );
    }
    let query = uri.query().map(str::to_string);
    start(
        &st,
        &headers,
        claims,
        SfuRole::Device,
        sdp,
        ("whip", query),
        None,
    )
    .await
}

async fn whep(
    State(st): State<Arc<Signaling>>,
    uri: axum::http::Uri,
    Query(q): Query<WhepQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match authorize(&st, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let role = match claims.role {
        Role::Player => SfuRole::Player,
        Role::Viewer => SfuRole::Viewer,
        Role::Device => {
            return problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "WHEP plays; use a player or viewer token",
            )
        }
    };
    let sdp = match sdp_body(&headers, &body, "application/sdp") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let query = uri.query().map(str::to_string);
    start(
        &st,
        &headers,
        claims,
        role,
        sdp,
        ("whep", query),
        Some(q.device),
    )
    .await
}

/// 307 to the node that is the room's home, when it is not this one (the same POST, body and
/// headers, at the other node's URL). Browsers drop `Authorization` on a redirect to another
/// origin; the SDK uses the WebSocket `redirect` instead.
async fn home_redirect(
    st: &Signaling,
    room: &str,
    kind: &str,
    query: Option<&str>,
) -> Option<Response> {
    let placement = st.dir.place(room, &[], false);
    let node = if placement.here {
        match st.dir.claim(room).await {
            meridian_geo::Home::Here => return None,
            meridian_geo::Home::Elsewhere(node) => *node,
        }
    } else {
        placement.node
    };
    metrics::counter!("meridian_route_redirects_total", "reason" => "room_home").increment(1);
    let target = match query {
        Some(q) => node.url(&format!("/{kind}?{q}")),
        None => node.url(&format!("/{kind}")),
    };
    let mut r = (
        StatusCode::TEMPORARY_REDIRECT,
        format!(
            "room {room:?} is served by node {} ({}): {target}\n",
            node.id, node.region
        ),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&target) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Some(cors(r))
}

async fn start(
    st: &Arc<Signaling>,
    headers: &HeaderMap,
    claims: crate::token::Claims,
    role: SfuRole,
    sdp: String,
    (kind, query): (&'static str, Option<String>),
    watch: Option<Option<String>>,
) -> Response {
    if !st.accepting() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "going_away",
            "the node is draining",
        );
    }
    if let Some(r) = home_redirect(st, &claims.room, kind, query.as_deref()).await {
        return r;
    }
    let Ok(mut session) = st.sfu.join(&claims.room, &claims.sub, role, None).await else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "going_away",
            "the node is stopping",
        );
    };
    if let Some(device) = watch {
        // Bind each recvonly m-line to a track of the same kind from the chosen device.
        let tracks: Vec<_> = session
            .tracks
            .iter()
            .filter(|t| device.as_deref().is_none_or(|d| t.publisher == d))
            .cloned()
            .collect();
        let Some(publisher) = tracks.first().map(|t| t.publisher.clone()) else {
            let what = device.map_or("any device".to_string(), |d| format!("device {d:?}"));
            return problem(
                StatusCode::NOT_FOUND,
                "unknown_track",
                &format!("{what} publishes nothing in room {:?}", claims.room),
            );
        };
        let mut used = Vec::new();
        for (k, mid, dir) in media_lines(&sdp) {
            if dir != "recvonly" && dir != "sendrecv" {
                continue;
            }
            let Some(t) = tracks
                .iter()
                .find(|t| t.publisher == publisher && t.kind == k && !used.contains(&t.id))
            else {
                continue;
            };
            used.push(t.id.clone());
            if let Err(e) = session
                .subscribe(t.id.clone(), mid, LayerPrefs::default())
                .await
            {
                return problem(StatusCode::BAD_REQUEST, e.code(), &e.to_string());
            }
        }
        if used.is_empty() {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_sdp",
                "the offer has no recvonly m-line matching the device's tracks",
            );
        }
    }
    let ufrag = ice_ufrag(&sdp).unwrap_or_default();
    let answer = match session.offer(sdp).await {
        Ok(a) => a,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
    };
    let id = format!("{:032x}", rand::random::<u128>());
    let etag = format!("\"{:016x}\"", rand::random::<u64>());
    let (_, closed) = tokio::sync::mpsc::unbounded_channel();
    let notices = std::mem::replace(&mut session.notices, closed);
    let record = st.dir.session(
        session.id.to_string(),
        &claims.room,
        &claims.sub,
        role.as_str(),
    );
    let session = Arc::new(session);
    if let Ok(mut m) = st.resources.map.lock() {
        m.insert(
            id.clone(),
            Resource {
                _record: record,
                session,
                etag: etag.clone(),
                ufrag,
            },
        );
    }
    watch_session(st.clone(), id.clone(), notices, claims.exp);
    metrics::counter!("meridian_signaling_sessions_total", "api" => kind).increment(1);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let mut r = (StatusCode::CREATED, answer).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/{kind}/{id}")) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    for link in ice_links(st, &claims.sub, claims.exp, host) {
        h.append(header::LINK, link);
    }
    cors(r)
}

/// Ends the resource when the SFU ends its session (ICE timeout), the node stops, or the
/// token expires.
fn watch_session(
    st: Arc<Signaling>,
    id: String,
    mut notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    exp: u64,
) {
    tokio::spawn(async move {
        let expiry = tokio::time::sleep(std::time::Duration::from_secs(
            exp.saturating_sub(unix_now()),
        ));
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                n = notices.recv() => match n {
                    Some(Notice::Disconnected { .. }) | None => break,
                    Some(_) => {}
                },
                _ = &mut expiry => break,
            }
        }
        if let Ok(mut m) = st.resources.map.lock() {
            m.remove(&id);
        }
    });
}

fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_string())
}

async fn trickle(
    State(st): State<Arc<Signaling>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, etag, ufrag) = match st.resources.map.lock().ok().and_then(|m| {
        m.get(&id)
            .map(|r| (r.session.clone(), r.etag.clone(), r.ufrag.clone()))
    }) {
        Some(x) => x,
        None => {
            return problem(
                StatusCode::NOT_FOUND,
                "unknown_session",
                "no such WHIP/WHEP session",
            )
        }
    };
    if let Some(want) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        if want != "*" && want != etag {
            return problem(
                StatusCode::PRECONDITION_FAILED,
                "etag_mismatch",
                &format!("If-Match {want} does not match the session's ETag {etag}"),
            );
        }
    }
    let frag = match sdp_body(&headers, &body, "application/trickle-ice-sdpfrag") {
        Ok(s) => s,
        Err(r) => return r,
    };
    if frag
        .lines()
        .any(|l| l.starts_with("a=ice-ufrag:") || l.starts_with("a=ice-pwd:"))
    {
        // Trickle repeats the session's credentials; a different ufrag is an ICE restart.
        let restart = frag
            .lines()
            .filter_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .any(|u| u.trim() != ufrag);
        if restart {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ice_restart_unsupported",
                "ICE restarts are not supported; start a new session",
            );
        }
    }
    for line in frag.lines().map(str::trim) {
        if let Some(c) = line.strip_prefix("a=candidate:") {
            if let Err(e) = session.candidate(format!("candidate:{c}")).await {
                return problem(StatusCode::BAD_REQUEST, e.code(), &e.to_string());
            }
        }
    }
    cors(StatusCode::NO_CONTENT.into_response())
}

async fn end(State(st): State<Arc<Signaling>>, Path(id): Path<String>) -> Response {
    let removed = st.resources.map.lock().ok().and_then(|mut m| m.remove(&id));
    match removed {
        // Dropping the last reference to the session leaves the room.
        Some(_) => cors(StatusCode::OK.into_response()),
        None => problem(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no such WHIP/WHEP session",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_media_lines() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        assert_eq!(
            media_lines(sdp),
            vec![
                ("audio".to_string(), "0".to_string(), "recvonly".to_string()),
                ("video".to_string(), "1".to_string(), "sendonly".to_string())
            ]
        );
    }
}
