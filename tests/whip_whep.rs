//! WHIP publish watched over WHEP: a str0m publisher POSTs its offer to /whip with a Bearer
//! token, a str0m player POSTs a recvonly offer to /whep, and H.264 frames flow from one to the
//! other through the SFU. The resource URL takes trickle PATCHes (ETag-checked) and DELETE.
//! Refusals get the documented HTTP statuses.

mod common;

use std::time::{Duration, Instant};

use common::str0m_peer::{h264_access_unit, request, write_frame, Peer};
use common::{Node, NodeOptions, API_KEY, API_SECRET};
use meridian_signaling::token::{Role, TokenIssuer};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Rtc};

fn token(identity: &str, role: Role) -> String {
    TokenIssuer::new(API_KEY, API_SECRET.as_bytes())
        .unwrap()
        .mint(identity, "whip-room", role, common::unix_now(), 600)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publish_is_watched_over_whep() {
    let node = Node::start_meridian(&NodeOptions::default());
    let http = node.ready.http.unwrap();
    let server = node.ready.sfu_udp.unwrap();

    // WHIP publish.
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    let mut api = rtc.sdp_api();
    let mid: Mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let auth = format!("Bearer {}", token("whip-rig", Role::Device));
    let r = request(
        http,
        "POST",
        "/whip",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/sdp"),
        ],
        &offer.to_sdp_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    let location = r.header("location").expect("Location").to_string();
    let etag = r.header("etag").expect("ETag").to_string();
    assert!(location.starts_with("/whip/"), "{location}");
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("link") && v.contains("rel=\"ice-server\"")),
        "TURN advertised in Link headers"
    );
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&r.body).unwrap())
        .unwrap();
    let mut publisher = Peer::new(server, rtc).await;
    let cand = Candidate::host(publisher.local, "udp").unwrap();
    publisher.rtc.add_local_candidate(cand.clone());

    // Trickle: a wrong ETag is refused, the right one accepted.
    let frag = format!("a={}\r\n", cand.to_sdp_string());
    let r = request(
        http,
        "PATCH",
        &location,
        &[
            ("Content-Type", "application/trickle-ice-sdpfrag"),
            ("If-Match", "\"nope\""),
        ],
        &frag,
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    let r = request(
        http,
        "PATCH",
        &location,
        &[
            ("Content-Type", "application/trickle-ice-sdpfrag"),
            ("If-Match", &etag),
        ],
        &frag,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);

    let deadline = Instant::now() + Duration::from_secs(10);
    while !publisher.connected && Instant::now() < deadline {
        publisher.step(Duration::from_millis(20)).await;
    }
    assert!(publisher.connected, "WHIP publisher connected");

    // WHEP playback.
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let auth_p = format!("Bearer {}", token("watcher", Role::Viewer));
    let r = request(
        http,
        "POST",
        "/whep?device=whip-rig",
        &[
            ("Authorization", &auth_p),
            ("Content-Type", "application/sdp"),
        ],
        &offer.to_sdp_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let whep_location = r.header("location").unwrap().to_string();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&r.body).unwrap())
        .unwrap();
    let mut player = Peer::new(server, rtc).await;
    let c = Candidate::host(player.local, "udp").unwrap();
    player.rtc.add_local_candidate(c);

    let au = h264_access_unit();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0u64;
    while player.frames < 20 && Instant::now() < deadline {
        if publisher.connected {
            write_frame(&mut publisher, mid, n, &au);
            n += 1;
        }
        publisher.step(Duration::from_millis(5)).await;
        player.step(Duration::from_millis(5)).await;
    }
    assert!(player.connected, "WHEP player connected");
    assert!(
        player.frames >= 20,
        "WHEP player received {} frames",
        player.frames
    );

    // DELETE ends the sessions; the resource is gone afterwards.
    let r = request(http, "DELETE", &whep_location, &[], "").await;
    assert_eq!(r.status, 200);
    let r = request(http, "DELETE", &location, &[], "").await;
    assert_eq!(r.status, 200);
    let r = request(http, "DELETE", &location, &[], "").await;
    assert_eq!(r.status, 404);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let rooms =
            meridian_bench::client::signal::http_get_json(&format!("http://{http}"), "/v1/rooms")
                .await
                .unwrap();
        if rooms["devices"].as_array().is_some_and(|d| d.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the WHIP device left the room: {rooms}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn whip_and_whep_refusals() {
    let node = Node::start_meridian(&NodeOptions::default());
    let http = node.ready.http.unwrap();
    let sdp_ct = ("Content-Type", "application/sdp");
    let r = request(http, "POST", "/whip", &[sdp_ct], "v=0\r\n").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = request(
        http,
        "POST",
        "/whip",
        &[sdp_ct, ("Authorization", "Bearer garbage")],
        "v=0\r\n",
    )
    .await;
    assert_eq!(r.status, 401);
    let player = format!("Bearer {}", token("p", Role::Player));
    let r = request(
        http,
        "POST",
        "/whip",
        &[sdp_ct, ("Authorization", &player)],
        "v=0\r\n",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let device = format!("Bearer {}", token("d", Role::Device));
    let r = request(
        http,
        "POST",
        "/whip",
        &[("Content-Type", "text/plain"), ("Authorization", &device)],
        "v=0\r\n",
    )
    .await;
    assert_eq!(r.status, 415);
    let r = request(
        http,
        "POST",
        "/whip",
        &[sdp_ct, ("Authorization", &device)],
        "v=0\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "an offer with no media: {}", r.body);
    let r = request(
        http,
        "POST",
        "/whep",
        &[sdp_ct, ("Authorization", &device)],
        "v=0\r\n",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = request(
        http,
        "POST",
        "/whep?device=nobody",
        &[sdp_ct, ("Authorization", &player)],
        "v=0\r\n",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = request(
        http,
        "PATCH",
        "/whip/0000",
        &[("Content-Type", "application/trickle-ice-sdpfrag")],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    let r = request(http, "OPTIONS", "/whip", &[], "").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("accept-post")
        .is_some_and(|v| v.contains("application/sdp")));
}
