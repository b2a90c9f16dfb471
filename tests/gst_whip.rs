//! GStreamer interop: an independent WebRTC stack publishes to meridian over WHIP and a WHEP
//! player watches it through the SFU.
//!
//! The publisher is GStreamer's `webrtcbin` (libnice ICE, the OpenSSL-based dtls plugin,
//! libsrtp), driven by `tests/gst/whip_publish.py` under Debian's `/usr/bin/python3`:
//! `videotestsrc ! vp8enc|openh264enc ! rtp…pay ! webrtcbin`, its offer POSTed to `/whip` with a
//! device token. GStreamer 1.22 has no WHIP element of its own (`whipsink` is in
//! gst-plugins-rs, which Debian 12 does not ship), hence the script.
//!
//! - By default webrtcbin's DTLS certificate is the one GStreamer's dtls plugin generates: RSA.
//!   The test checks that from the certificate the DTLS transport reports (its public key
//!   algorithm is rsaEncryption) and that the offer's `a=fingerprint` is that certificate's
//!   SHA-256, so a publisher that silently used another key type, or a fingerprint that is not
//!   the certificate's, fails the test.
//! - The `ecdsa` tests replace that certificate with an ECDSA P-256 one: when only the RSA
//!   tests fail, the fault is in meridian's handling of RSA DTLS peers.
//! - The player is str0m over UDP (as in `tests/whip_whep.rs`); it must receive real frames
//!   from the encoder, key frames included (VP8: key frame bit, start code and the 320x240
//!   size the pipeline encodes; H.264: SPS, PPS and IDR NAL units, constrained baseline).
//! - Then the publisher's WHIP resource is DELETEd: the device and its track leave the room
//!   and no more media reaches the player.
//!
//! Every wait is bounded; the publisher stops when its stdin closes, on SIGTERM, or after
//! `--seconds`. Without GStreamer (see `scripts/test.sh` for the Debian packages) the tests fail
//! and say what is missing.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{ChildGuard, HttpResponse, Node, NodeOptions, TempDir};
use meridian_signaling::token::Role;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Debian's python, which has `gi` (python3-gi); another `python3` on PATH may not.
const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gst/whip_publish.py");
/// What the publisher needs (the list in scripts/test.sh).
const PACKAGES: &str = "gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
     gstreamer1.0-plugins-bad gstreamer1.0-nice gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
     gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 python3-gi python3-cryptography";
const ROOM: &str = "gst-room";
const DEVICE: &str = "gst-rig";
/// Frames the player must receive, and the bound on waiting for them.
const WANT_FRAMES: usize = 30;
const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);

/// rsaEncryption (1.2.840.113549.1.1.1) and id-ecPublicKey (1.2.840.10045.2.1), DER contents.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// One publisher and one node at a time: each test encodes video and runs two WebRTC peers,
/// and the machine may have two cores.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Codec {
    Vp8,
    H264,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cert {
    /// webrtcbin's own certificate, which must be RSA.
    Rsa,
    /// An ECDSA P-256 certificate put in its place (the control).
    Ecdsa,
}

/// webrtcbin's own certificate is RSA; meridian accepts its offer and ICE connects.
#[test]
fn gst_webrtcbin_rsa_offer_is_answered_and_ice_connects() {
    run(Codec::Vp8, Cert::Rsa, false);
}

#[test]
fn gst_webrtcbin_rsa_publishes_vp8_over_whip() {
    run(Codec::Vp8, Cert::Rsa, true);
}

#[test]
fn gst_webrtcbin_rsa_publishes_h264_over_whip() {
    run(Codec::H264, Cert::Rsa, true);
}

#[test]
fn gst_webrtcbin_ecdsa_publishes_vp8_over_whip() {
    run(Codec::Vp8, Cert::Ecdsa, true);
}

#[test]
fn gst_webrtcbin_ecdsa_publishes_h264_over_whip() {
    run(Codec::H264, Cert::Ecdsa, true);
}

/// Publishes with `codec` and `cert`; with `media`, a WHEP player must get the frames (else
/// the test ends once webrtcbin's ICE is connected).
fn run(codec: Codec, cert: Cert, media: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: the GStreamer publisher needs Debian's python3 with python3-gi \
         (./scripts/test.sh installs it; by hand: apt-get install {PACKAGES})"
    );
    let node = Node::start_meridian(&NodeOptions::default());
    let http = node.ready.http.expect("signaling listener");
    let sfu = node.ready.sfu_udp.expect("SFU UDP listener");
    let tmp = TempDir::new("gst-whip");
    let token = common::mint_token(DEVICE, ROOM, Role::Device, 600);
    let mut publisher = Publisher::spawn(http, &token, codec, cert, tmp.path());

    // The offer, the certificate behind it, and the 201 answer.
    let cert_der = b64(&publisher.wait_for("CERT", Duration::from_secs(20)));
    let offer = String::from_utf8(b64(&publisher.wait_for("OFFER", Duration::from_secs(20))))
        .expect("offer is UTF-8");
    let (oid, key) = public_key(&cert_der).unwrap_or_else(|| {
        panic!(
            "the certificate webrtcbin reports is not DER X.509: {}",
            hex(&cert_der)
        )
    });
    match cert {
        Cert::Rsa => {
            assert_eq!(
                oid,
                OID_RSA,
                "webrtcbin's DTLS certificate is expected to be RSA (GStreamer's dtls plugin \
                 generates RSA keys); its public key algorithm OID is {}",
                hex(oid)
            );
            let bits = rsa_modulus_bits(key).expect("RSAPublicKey in the certificate");
            assert!(bits >= 1024, "RSA modulus of {bits} bits");
            eprintln!("webrtcbin's DTLS certificate: RSA, {bits}-bit modulus");
        }
        Cert::Ecdsa => assert_eq!(oid, OID_EC, "the replaced certificate is ECDSA"),
    }
    let offered = fingerprints(&offer);
    assert_eq!(
        offered,
        vec![sha256_hex(&cert_der)],
        "the offer's a=fingerprint is the SHA-256 of the certificate webrtcbin's DTLS transport \
         uses\n{offer}"
    );
    assert!(
        offer.contains(match codec {
            Codec::Vp8 => "VP8/90000",
            Codec::H264 => "H264/90000",
        }),
        "{offer}"
    );
    let location = publisher.wait_for("READY", Duration::from_secs(20));
    assert!(location.starts_with("/whip/"), "Location: {location}");
    let answer = String::from_utf8(b64(&publisher.wait_for("ANSWER", Duration::from_secs(5))))
        .expect("answer is UTF-8");
    // The session is in the room now; its track once the media connection is up.
    assert!(
        device_tracks(http).is_some(),
        "the WHIP device is listed in {ROOM}"
    );

    let mut player = None;
    if media {
        // ICE, DTLS and SRTP with webrtcbin: it reports the node's certificate once DTLS is up.
        let peer_cert = b64(&publisher.wait_for("PEER-CERT", Duration::from_secs(20)));
        assert_eq!(
            fingerprints(&answer),
            vec![sha256_hex(&peer_cert)],
            "the certificate webrtcbin got in the handshake is the one the answer names"
        );
        publisher.wait_for_line("CONNECTION connected", Duration::from_secs(20));
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let tracks = device_tracks(http);
            if tracks.as_ref().is_some_and(|t| t.len() == 1) {
                break;
            }
            assert!(
                Instant::now() < until,
                "5 s after connecting, the WHIP device publishes {tracks:?}; expected one track"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        // A WHEP player watches the device through the SFU.
        let mut p = Player::whep(http, sfu, codec);
        let deadline = Instant::now() + MEDIA_TIMEOUT;
        while (p.frames.len() < WANT_FRAMES || p.keyframes() == 0) && Instant::now() < deadline {
            p.step(Duration::from_millis(20));
            publisher.check_alive();
        }
        assert!(p.connected, "the WHEP player connected to the SFU");
        assert!(
            p.frames.len() >= WANT_FRAMES && p.keyframes() > 0,
            "within {MEDIA_TIMEOUT:?} the player got {} frames ({} key frames) from webrtcbin; \
             wanted {WANT_FRAMES} with a key frame\npublisher said:\n{}",
            p.frames.len(),
            p.keyframes(),
            publisher.transcript()
        );
        p.check_frames();
        eprintln!(
            "WHEP player: {} {codec:?} frames, {} key frames",
            p.frames.len(),
            p.keyframes()
        );
        player = Some(p);
    } else {
        // libnice may go from checking to completed with no connected in between. What DTLS
        // does next is not this test's business (the media tests check it).
        let ice =
            publisher.wait_for_any(&["ICE connected", "ICE completed"], Duration::from_secs(20));
        eprintln!("webrtcbin: {ice}");
    }

    // DELETE the WHIP resource: the device and its track leave, media stops.
    let r = request(http, "DELETE", &location, &[], "");
    assert_eq!(r.status, 200, "DELETE {location}: {}", r.body);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = player.as_mut() {
            p.step(Duration::from_millis(10));
        }
        let tracks = device_tracks(http);
        if tracks.is_none() {
            break;
        }
        assert!(
            Instant::now() < until,
            "5 s after DELETE the device is still in the room with tracks {tracks:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(mut p) = player {
        // Let what was in flight arrive, then no frame more.
        p.run_for(Duration::from_millis(300));
        let before = p.frames.len();
        p.run_for(Duration::from_millis(700));
        assert_eq!(
            p.frames.len(),
            before,
            "the player still receives frames after the publisher's resource was deleted"
        );
        let r = request(http, "DELETE", &p.location, &[], "");
        assert_eq!(r.status, 200, "DELETE {}: {}", p.location, r.body);
    }
    let r = request(http, "DELETE", &location, &[], "");
    assert_eq!(r.status, 404, "the resource is gone: {}", r.body);

    if media {
        // The publisher stops cleanly when its stdin closes. (Without media, its peer
        // connection may have failed and ended it already.)
        publisher.close_stdin();
        let why = publisher.wait_for("EXIT", Duration::from_secs(10));
        assert_eq!(why, "stdin closed");
        let status = publisher.proc.wait_timeout(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "publisher exit status {status:?}\n{}",
            publisher.transcript()
        );
    }
    drop(publisher);
    drop(node);
}

/// The WHIP device's published tracks per `GET /v1/rooms`, or `None` when it is not listed.
fn device_tracks(http: SocketAddr) -> Option<Vec<String>> {
    let (status, body) = common::http_get(http, "/v1/rooms").expect("GET /v1/rooms");
    assert_eq!(status, 200, "{body}");
    let rooms: serde_json::Value = serde_json::from_str(&body).expect("rooms JSON");
    let dev = rooms["devices"]
        .as_array()?
        .iter()
        .find(|d| d["device"] == DEVICE && d["room"] == ROOM)?;
    Some(
        dev["tracks"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

// ---- the GStreamer publisher ----------------------------------------------------------------

struct Publisher {
    proc: ChildGuard,
    /// The write end of the script's stdin: dropping it tells the script to stop.
    stdin: Option<fs::File>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
}

/// A pipe whose two ends close on exec (the child gets its end through dup2).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fresh descriptors into `fds`; nothing else owns them.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: as above, the descriptors are open and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Publisher {
    fn spawn(http: SocketAddr, token: &str, codec: Codec, cert: Cert, dir: &Path) -> Publisher {
        let (stdin_r, stdin_w) = pipe();
        let (stdout_r, stdout_w) = pipe();
        let stderr = dir.join("publisher.stderr");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(SCRIPT)
            .arg("--endpoint")
            .arg(format!("http://{http}/whip"))
            .arg("--codec")
            .arg(match codec {
                Codec::Vp8 => "vp8",
                Codec::H264 => "h264",
            })
            .arg("--dtls-cert")
            .arg(match cert {
                Cert::Rsa => "rsa",
                Cert::Ecdsa => "ecdsa",
            })
            .arg("--seconds")
            .arg("90")
            .env("WHIP_TOKEN", token)
            // GStreamer's own errors only, from the DTLS connection (OpenSSL's reason for a
            // failed handshake) and webrtcbin; no plugin path or proxy from the environment
            // (the script ignores proxies anyway).
            .env("GST_DEBUG", "dtlsconnection:1,webrtcbin:1")
            .env("GST_DEBUG_NO_COLOR", "1")
            .env_remove("GST_PLUGIN_PATH")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::from(stdin_r))
            .stdout(Stdio::from(stdout_w))
            .stderr(fs::File::create(&stderr).expect("publisher stderr file"));
        // The child's ends of the pipes go with `cmd`, so its stdout ends when it exits.
        let proc = ChildGuard::spawn(cmd, "gst whip_publish.py");
        let (tx, lines) = mpsc::channel();
        let out = fs::File::from(stdout_r);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Publisher {
            proc,
            stdin: Some(fs::File::from(stdin_w)),
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Everything the script said, its payloads shortened (SDP decoded), and its stderr.
    fn transcript(&self) -> String {
        let mut s = String::new();
        for l in &self.seen {
            let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
            match word {
                "OFFER" | "ANSWER" => {
                    let sdp = base64::engine::general_purpose::STANDARD
                        .decode(rest)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_else(|_| rest.to_string());
                    s.push_str(&format!("  {word}:\n"));
                    for sl in sdp.lines() {
                        s.push_str(&format!("    {sl}\n"));
                    }
                }
                "CERT" | "PEER-CERT" => s.push_str(&format!("  {word} ({} base64)\n", rest.len())),
                _ => s.push_str(&format!("  {l}\n")),
            }
        }
        let err = fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        if !tail.is_empty() {
            s.push_str("  stderr (last lines):\n");
            for l in tail.into_iter().rev() {
                s.push_str(&format!("    {l}\n"));
            }
        }
        s
    }

    fn fail(&mut self, what: &str) -> ! {
        // What it says right after (the failure's cause) is worth the wait: bounded, 1.5 s.
        let end = Instant::now() + Duration::from_millis(1500);
        while let Ok(line) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        let status = self.proc.try_wait();
        let mut hint = String::new();
        let err = fs::read_to_string(&self.stderr).unwrap_or_default();
        if err.contains("ModuleNotFoundError")
            || err.contains("Namespace")
            || self.seen.iter().any(|l| l.contains("elements missing"))
        {
            hint = format!(
                "\nGStreamer or its Python bindings are missing: ./scripts/test.sh installs \
                 them; by hand: apt-get install {PACKAGES}"
            );
        }
        if self.seen.iter().any(|l| l == "DTLS failed") {
            let cert = self
                .seen
                .iter()
                .find_map(|l| l.strip_prefix("CERT "))
                .map(b64)
                .and_then(|d| public_key(&d).map(|(oid, _)| oid.to_vec()));
            let kind = match cert.as_deref() {
                Some(OID_RSA) => "RSA",
                Some(OID_EC) => "ECDSA",
                _ => "unknown",
            };
            hint.push_str(&format!(
                "\nThe DTLS handshake between webrtcbin (OpenSSL, {kind} certificate) and meridian \
                 failed after ICE connected. If only the RSA tests fail (the ECDSA control \
                 passes), meridian's DTLS does not accept RSA peers."
            ));
        }
        panic!(
            "GStreamer publisher: {what} (process: {})\npublisher said:\n{}{hint}",
            status.map_or("running".to_string(), |s| s.to_string()),
            self.transcript()
        );
    }

    /// The next line, bounded; failure lines end the test with the transcript.
    /// The next line, bounded. Unless `tolerant`, a failure line (ERROR, DTLS failed, EXIT)
    /// ends the test with the transcript.
    fn next_line(&mut self, deadline: Instant, waiting_for: &str, tolerant: bool) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) if tolerant => {
                self.seen.push(line.clone());
                line
            }
            Ok(line) => {
                self.seen.push(line.clone());
                if line.starts_with("ERROR") || line == "DTLS failed" {
                    self.fail(&format!("failed while waiting for {waiting_for}"));
                }
                if line.starts_with("EXIT") && waiting_for != "EXIT" {
                    self.fail(&format!("stopped while waiting for {waiting_for}"));
                }
                line
            }
            Err(mpsc::RecvTimeoutError::Timeout) => self.fail(&format!("no {waiting_for} in time")),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.proc.wait_timeout(Duration::from_secs(2));
                self.fail(&format!("exited while waiting for {waiting_for}"))
            }
        }
    }

    /// Waits for a line `WORD rest` and returns `rest`.
    fn wait_for(&mut self, word: &str, within: Duration) -> String {
        if let Some(rest) = self
            .seen
            .iter()
            .find_map(|l| l.strip_prefix(word)?.strip_prefix(' '))
        {
            return rest.to_string();
        }
        let deadline = Instant::now() + within;
        loop {
            let line = self.next_line(deadline, word, false);
            if let Some(rest) = line.strip_prefix(word).and_then(|r| r.strip_prefix(' ')) {
                return rest.to_string();
            }
        }
    }

    fn wait_for_line(&mut self, want: &str, within: Duration) {
        if self.seen.iter().any(|l| l == want) {
            return;
        }
        let deadline = Instant::now() + within;
        while self.next_line(deadline, want, false) != want {}
    }

    /// Waits for any of `want`, whatever else happens meanwhile (failures included).
    fn wait_for_any(&mut self, want: &[&str], within: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| want.contains(&l.as_str())) {
            return l.clone();
        }
        let what = want.join(" or ");
        let deadline = Instant::now() + within;
        loop {
            let line = self.next_line(deadline, &what, true);
            if want.contains(&line.as_str()) {
                return line;
            }
        }
    }

    /// Fails the test if the publisher reported an error or stopped meanwhile.
    fn check_alive(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line.clone());
            if line.starts_with("ERROR") || line.starts_with("EXIT") || line.ends_with(" failed") {
                self.fail("gave up while streaming");
            }
        }
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Closing stdin asks the script to stop; the ChildGuard then SIGTERMs what is left.
        self.stdin.take();
    }
}

// ---- the WHEP player (str0m) ------------------------------------------------------------------

struct Player {
    rtc: Rtc,
    sock: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    codec: Codec,
    connected: bool,
    /// The payload of every frame received (depacketized by str0m).
    frames: Vec<Vec<u8>>,
    location: String,
}

impl Player {
    fn whep(http: SocketAddr, server: SocketAddr, codec: Codec) -> Player {
        let builder = Rtc::builder().clear_codecs();
        let mut rtc = match codec {
            Codec::Vp8 => builder.enable_vp8(true),
            Codec::H264 => builder.enable_h264(true),
        }
        .build(Instant::now());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().expect("player offer");
        let auth = format!(
            "Bearer {}",
            common::mint_token("gst-watcher", ROOM, Role::Viewer, 600)
        );
        let r = request(
            http,
            "POST",
            &format!("/whep?device={DEVICE}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/sdp"),
            ],
            &offer.to_sdp_string(),
        );
        assert_eq!(r.status, 201, "WHEP POST: {}", r.body);
        let location = r.header("location").expect("WHEP Location").to_string();
        rtc.sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&r.body).expect("WHEP answer SDP"),
            )
            .expect("accept WHEP answer");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("player socket");
        sock.connect(server).expect("connect player socket");
        let local = sock.local_addr().expect("player address");
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("host candidate"));
        Player {
            rtc,
            sock,
            server,
            local,
            codec,
            connected: false,
            frames: Vec::new(),
            location,
        }
    }

    /// Drains str0m's output, then waits up to `max` for one datagram or the next timeout.
    fn step(&mut self, max: Duration) {
        let next = loop {
            match self.rtc.poll_output().expect("player poll_output") {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = self.sock.send(&t.contents);
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::MediaData(m)) => self.frames.push(m.data.to_vec()),
                Output::Event(_) => {}
            }
        };
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(max)
            .max(Duration::from_millis(1));
        let _ = self.sock.set_read_timeout(Some(wait));
        let mut buf = [0u8; 2048];
        let input = match self.sock.recv(&mut buf) {
            Ok(n) => match buf[..n].try_into() {
                Ok(contents) => Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source: self.server,
                        destination: self.local,
                        contents,
                    },
                ),
                Err(_) => Input::Timeout(Instant::now()),
            },
            Err(_) => Input::Timeout(Instant::now()),
        };
        self.rtc.handle_input(input).expect("player handle_input");
    }

    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step(Duration::from_millis(10));
        }
    }

    fn keyframes(&self) -> usize {
        let key = match self.codec {
            Codec::Vp8 => vp8_keyframe,
            Codec::H264 => h264_keyframe,
        };
        self.frames.iter().filter(|f| key(f)).count()
    }

    /// The frames are what the pipeline encodes.
    fn check_frames(&self) {
        match self.codec {
            Codec::Vp8 => {
                // RFC 6386 §9.1: a key frame's tag has bit 0 clear, then the start code and
                // the 14-bit width and height.
                let key = self
                    .frames
                    .iter()
                    .find(|f| vp8_keyframe(f))
                    .expect("a VP8 key frame");
                let d = key;
                assert_eq!(&d[3..6], &[0x9d, 0x01, 0x2a], "VP8 key frame start code");
                let w = u16::from_le_bytes([d[6], d[7]]) & 0x3fff;
                let h = u16::from_le_bytes([d[8], d[9]]) & 0x3fff;
                assert_eq!(
                    (w, h),
                    (320, 240),
                    "the key frame is the pipeline's 320x240"
                );
                let inter = self.frames.iter().filter(|f| !vp8_keyframe(f)).count();
                assert!(inter > 0, "inter frames too");
            }
            Codec::H264 => {
                let types: Vec<Vec<u8>> = self.frames.iter().map(|f| nal_types(f)).collect();
                let idr = types
                    .iter()
                    .position(|t| t.contains(&5))
                    .expect("an access unit with an IDR slice (NAL type 5)");
                assert!(
                    types[idr].contains(&7) && types[idr].contains(&8),
                    "SPS (7) and PPS (8) come with the IDR: NAL types {:?}",
                    types[idr]
                );
                let sps = nal_units(&self.frames[idr])
                    .into_iter()
                    .find(|n| n.first().is_some_and(|b| b & 0x1f == 7))
                    .expect("SPS");
                assert_eq!(
                    sps.get(1),
                    Some(&66),
                    "profile_idc 66 (baseline) as the pipeline encodes"
                );
                assert!(
                    types.iter().any(|t| t.contains(&1)),
                    "non-IDR slices (NAL type 1) too: {types:?}"
                );
                for t in &types {
                    assert!(
                        t.iter().all(|n| (1..=23).contains(n)),
                        "only single NAL unit types in depacketized access units: {t:?}"
                    );
                }
            }
        }
    }
}

/// RFC 6386 §9.1: the frame tag's bit 0 is clear on key frames (which are at least 10 bytes).
fn vp8_keyframe(d: &[u8]) -> bool {
    d.len() >= 10 && d[0] & 1 == 0
}

/// An access unit with an IDR slice.
fn h264_keyframe(d: &[u8]) -> bool {
    nal_types(d).contains(&5)
}

/// The NAL units of an Annex B access unit (empty if it does not start with a start code).
fn nal_units(d: &[u8]) -> Vec<&[u8]> {
    if !(d.starts_with(&[0, 0, 1]) || d.starts_with(&[0, 0, 0, 1])) {
        return Vec::new();
    }
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= d.len() {
        if d[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(d.len(), |&n| n - 3);
        while end > s && d[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            out.push(&d[s..end]);
        }
    }
    out
}

fn nal_types(d: &[u8]) -> Vec<u8> {
    nal_units(d).iter().map(|n| n[0] & 0x1f).collect()
}

// ---- certificates ---------------------------------------------------------------------------

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_else(|e| panic!("bad base64 from the publisher ({e}): {s}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(der: &[u8]) -> String {
    let d = str0m::crypto::from_feature_flags()
        .sha256_provider
        .sha256(der);
    d.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `a=fingerprint:sha-256` values of an SDP (upper-case hex).
fn fingerprints(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .filter_map(|f| {
            let (alg, v) = f.split_once(' ')?;
            alg.eq_ignore_ascii_case("sha-256")
                .then(|| v.trim().to_ascii_uppercase())
        })
        .collect()
}

/// One DER element at the start of `b`: (tag, contents, what follows).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        l0 as usize
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize);
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// An X.509 certificate's subjectPublicKeyInfo: (algorithm OID contents, public key bits).
fn public_key(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, c, _) = der(cert)? else {
        return None;
    };
    let (0x30, mut tbs, _) = der(c)? else {
        return None;
    };
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2; // [0] version
    }
    for _ in 0..5 {
        tbs = der(tbs)?.2; // serialNumber, signature, issuer, validity, subject
    }
    let (0x30, spki, _) = der(tbs)? else {
        return None;
    };
    let (0x30, alg, rest) = der(spki)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    let (0x03, key, _) = der(rest)? else {
        return None;
    };
    Some((oid, key))
}

/// The modulus size of an RSAPublicKey inside a BIT STRING's contents.
fn rsa_modulus_bits(key: &[u8]) -> Option<usize> {
    let (0x30, seq, _) = der(key.get(1..)?)? else {
        return None;
    };
    let (0x02, n, _) = der(seq)? else {
        return None;
    };
    let n = &n[n.iter().position(|&b| b != 0)?..];
    Some(n.len() * 8 - n[0].leading_zeros() as usize)
}

// ---- HTTP -------------------------------------------------------------------------------------

/// One HTTP/1.1 request (Connection: close), bounded in time.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = common::http_request_bytes(addr, method, path, headers, body);
    s.write_all(&req)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: no response: {e}"));
    HttpResponse::parse(&raw)
}
