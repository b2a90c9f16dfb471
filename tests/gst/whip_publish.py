#!/usr/bin/python3
"""A GStreamer WHIP publisher for meridian's interop test (tests/gst_whip.rs).

    WHIP_TOKEN=<device token> /usr/bin/python3 tests/gst/whip_publish.py \
        --endpoint http://127.0.0.1:7880/whip [--codec vp8|h264] [--dtls-cert rsa|ecdsa] \
        [--seconds 60]

Builds  videotestsrc ! encoder ! RTP payloader ! webrtcbin  (a sendonly video transceiver),
creates the offer, waits for ICE gathering to complete, POSTs the offer to the WHIP endpoint
with `Authorization: Bearer $WHIP_TOKEN`, applies the 201 answer and streams until its stdin
closes, SIGTERM, or --seconds pass. Nothing but webrtcbin speaks WebRTC here: its ICE is
libnice, its DTLS is GStreamer's dtls plugin (OpenSSL), its SRTP is libsrtp.

The network stays on loopback: libnice gathers host candidates on 127.0.0.1 only (UDP, no
ICE-TCP), UPnP is off, there are no STUN or TURN servers, and HTTP proxies are ignored.

--dtls-cert ecdsa replaces webrtcbin's own DTLS certificate (RSA, made by GStreamer's dtls
plugin) by an ECDSA P-256 one, to tell a DTLS certificate problem from any other.

Run it with Debian's /usr/bin/python3 (python3-gi); another python3 on PATH may lack `gi`.
Debian packages: gstreamer1.0-plugins-{base,good,bad} gstreamer1.0-nice gir1.2-gstreamer-1.0
gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 python3-gi
python3-cryptography (scripts/test.sh installs them).

Status goes to stdout, one line each, so the test can wait on them:

    CERT <base64 DER>        the DTLS certificate webrtcbin uses (from its DTLS transport)
    OFFER <base64 SDP>       the offer as POSTed (after ICE gathering)
    ANSWER <base64 SDP>      the endpoint's 201 answer, applied
    READY <location>         right after ANSWER: the Location of the WHIP resource
    ICE <state>              webrtcbin's ice-connection-state
    DTLS <state>             the DTLS transport's state
    PEER-CERT <base64 DER>   the node's DTLS certificate, once DTLS is connected
    CONNECTION <state>       webrtcbin's connection-state
    ERROR <text>             and exit status 1
    EXIT <why>               a clean stop
"""

import argparse
import base64
import datetime
import hashlib
import os
import signal
import sys
import threading
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

PIPELINES = {
    # VP8: key frames at least every 30 frames (1 s), so a late subscriber gets one soon.
    "vp8": (
        "videotestsrc is-live=true pattern=ball "
        "! video/x-raw,width=320,height=240,framerate=30/1 "
        "! videoconvert ! queue "
        "! vp8enc deadline=1 keyframe-max-dist=30 target-bitrate=300000 error-resilient=1 "
        "! rtpvp8pay pt=96 picture-id-mode=15-bit mtu=1200 "
        "! application/x-rtp,media=video,encoding-name=VP8,clock-rate=90000,payload=96 "
        "! webrtcbin name=webrtc bundle-policy=max-bundle"
    ),
    # H.264 constrained baseline (openh264), SPS/PPS before every IDR.
    "h264": (
        "videotestsrc is-live=true pattern=ball "
        "! video/x-raw,width=320,height=240,framerate=30/1 "
        "! videoconvert ! queue "
        "! openh264enc gop-size=30 bitrate=300000 complexity=low "
        "! h264parse config-interval=-1 "
        "! video/x-h264,profile=constrained-baseline,stream-format=byte-stream,alignment=au "
        "! rtph264pay pt=102 config-interval=-1 aggregate-mode=zero-latency mtu=1200 "
        "! application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload=102,"
        "packetization-mode=(string)1,profile-level-id=(string)42e01f "
        "! webrtcbin name=webrtc bundle-policy=max-bundle"
    ),
}


_SAY = threading.Lock()


def say(*words):
    # GStreamer calls back from its own threads: one whole line at a time.
    with _SAY:
        print(" ".join(str(w) for w in words), flush=True)


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def pem_certificate_der(pem):
    """The DER of the first CERTIFICATE block of a PEM string (the key is left out)."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if not pem or begin not in pem:
        return None
    body = pem.split(begin, 1)[1].split(end, 1)[0]
    return base64.b64decode("".join(body.split()))


def ecdsa_pem():
    """A fresh self-signed ECDSA P-256 certificate and its key, PEM, certificate first."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gst-whip-ecdsa")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def sha256_fingerprint(der):
    return ":".join("%02X" % b for b in hashlib.sha256(der).digest())


class Publisher:
    def __init__(self, args):
        self.args = args
        self.token = os.environ.get("WHIP_TOKEN", "")
        self.loop = GLib.MainLoop()
        self.status = 0
        self.posted = False
        self.dtls = None
        self.pipe = Gst.parse_launch(PIPELINES[args.codec])
        self.webrtc = self.pipe.get_by_name("webrtc")
        self.restrict_ice()
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::ice-connection-state", self.on_state, "ICE")
        self.webrtc.connect("notify::connection-state", self.on_state, "CONNECTION")
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_bus_error)

    def restrict_ice(self):
        """Host candidates on 127.0.0.1 over UDP only; no UPnP, STUN or TURN."""
        # GStreamer 1.22's webrtcbin keeps its ICE object floating: the first wrapper sinks
        # it and would unref (free) it when collected, so the wrappers live as long as we do.
        self.ice = ice = self.webrtc.get_property("ice-agent")
        ice.set_property("ice-tcp", False)
        self.agent = agent = ice.get_property("agent")
        agent.set_property("upnp", False)
        addr = Nice.Address.new()
        if not addr.set_from_string("127.0.0.1") or not agent.add_local_address(addr):
            self.fail("could not restrict libnice to 127.0.0.1")

    def fail(self, text):
        say("ERROR", " ".join(str(text).split()))
        self.status = 1
        self.loop.quit()

    def stop(self, why):
        say("EXIT", why)
        self.loop.quit()

    # -- negotiation --------------------------------------------------------------------

    def on_negotiation_needed(self, element):
        # Publish only: the pipeline's one video transceiver sends.
        t = element.emit("get-transceiver", 0)
        if t is None:
            GLib.idle_add(self.fail, "webrtcbin has no transceiver")
            return
        t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, element, None)
        element.emit("create-offer", None, promise)

    def on_offer_created(self, promise, element, _):
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            GLib.idle_add(self.fail, "create-offer failed: %s" % reply)
            return
        if self.args.dtls_cert == "ecdsa":
            offer = self.use_ecdsa_certificate(offer)
            if offer is None:
                return
        element.emit("set-local-description", offer, Gst.Promise.new())
        GLib.idle_add(self.report_certificate)

    def use_ecdsa_certificate(self, offer):
        """Replaces webrtcbin's own (RSA) DTLS certificate by an ECDSA one.

        The transport exists once an offer was created. webrtcbin 1.22 computes the offer's
        fingerprint over the whole PEM it reads back (certificate and key alike), so the
        offer's a=fingerprint is rewritten to the certificate's own SHA-256."""
        dtls = self.dtls_transport()
        if dtls is None:
            GLib.idle_add(self.fail, "no DTLS transport after create-offer")
            return None
        pem = ecdsa_pem()
        dtls.set_property("certificate", pem)
        # Setting it makes dtlsdec a new DTLS connection, but dtlsdec hooks its callbacks
        # (peer certificate, SRTP keys) to its connection only on NULL -> READY, which it has
        # passed: take it down and up again.
        it = self.webrtc.iterate_recurse()
        while True:
            res, el = it.next()
            if res != Gst.IteratorResult.OK:
                break
            if el.get_factory() is not None and el.get_factory().get_name() == "dtlsdec":
                el.set_state(Gst.State.NULL)
                el.sync_state_with_parent()
        fingerprint = "a=fingerprint:sha-256 " + sha256_fingerprint(pem_certificate_der(pem))
        lines = [
            fingerprint if line.startswith("a=fingerprint:") else line
            for line in offer.sdp.as_text().split("\r\n")
        ]
        ok, msg = GstSdp.SDPMessage.new_from_text("\r\n".join(lines))
        if ok != GstSdp.SDPResult.OK:
            GLib.idle_add(self.fail, "could not rewrite the offer's fingerprint")
            return None
        return GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, msg)

    def dtls_transport(self):
        t = self.webrtc.emit("get-transceiver", 0)
        sender = t.get_property("sender") if t is not None else None
        return sender.get_property("transport") if sender is not None else None

    def report_certificate(self):
        dtls = self.dtls_transport()
        if dtls is None:
            self.fail("webrtcbin has no DTLS transport after set-local-description")
            return False
        der = pem_certificate_der(dtls.get_property("certificate"))
        if der is None:
            self.fail("the DTLS transport reports no certificate")
            return False
        say("CERT", b64(der))
        self.dtls = dtls
        dtls.connect("notify::state", self.on_dtls_state)
        self.maybe_post()
        return False

    def on_gathering(self, element, _pspec):
        GLib.idle_add(self.maybe_post)

    def maybe_post(self):
        gathered = (
            self.webrtc.get_property("ice-gathering-state")
            == GstWebRTC.WebRTCICEGatheringState.COMPLETE
        )
        if self.posted or self.dtls is None or not gathered:
            return False
        self.posted = True
        desc = self.webrtc.get_property("local-description")
        sdp = desc.sdp.as_text()
        say("OFFER", b64(sdp))
        try:
            status, location, answer = self.post(sdp)
        except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
            self.fail("POST %s: %s" % (self.args.endpoint, e))
            return False
        if status != 201:
            self.fail("POST %s answered %d: %s" % (self.args.endpoint, status, answer))
            return False
        if not location:
            self.fail("201 without a Location header")
            return False
        ok, parsed = GstSdp.SDPMessage.new_from_text(answer)
        if ok != GstSdp.SDPResult.OK:
            self.fail("the answer is not SDP: %r" % answer)
            return False
        remote = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, parsed)
        promise = Gst.Promise.new_with_change_func(self.on_answer_applied, location, answer)
        self.webrtc.emit("set-remote-description", remote, promise)
        return False

    def on_answer_applied(self, promise, location, answer):
        promise.wait()
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            GLib.idle_add(self.fail, "set-remote-description: %s" % reply.get_value("error"))
            return
        say("ANSWER", b64(answer))
        say("READY", location)

    def post(self, sdp):
        req = urllib.request.Request(
            self.args.endpoint,
            data=sdp.encode(),
            method="POST",
            headers={
                "Content-Type": "application/sdp",
                "Authorization": "Bearer " + self.token,
            },
        )
        # Loopback only: never through an HTTP proxy from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=10) as r:
                return r.status, r.headers.get("Location"), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, None, " ".join(e.read().decode(errors="replace").split())

    # -- state ----------------------------------------------------------------------------

    def on_state(self, element, pspec, what):
        value = element.get_property(pspec.name)
        say(what, value.value_nick)
        if what == "CONNECTION" and value == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            GLib.idle_add(self.fail, "the peer connection failed")

    def on_dtls_state(self, dtls, _pspec):
        state = dtls.get_property("state")
        say("DTLS", state.value_nick)
        if state == GstWebRTC.WebRTCDTLSTransportState.CONNECTED:
            der = pem_certificate_der(dtls.get_property("remote-certificate"))
            if der is not None:
                say("PEER-CERT", b64(der))

    def on_bus_error(self, _bus, msg):
        err, debug = msg.parse_error()
        self.fail("%s: %s (%s)" % (msg.src.get_name(), err.message, debug))

    # -- main -----------------------------------------------------------------------------

    def on_stdin(self, _fd, _cond):
        # Anything but data (EOF, HUP): the test is done with us.
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data:
            self.stop("stdin closed")
            return False
        return True

    def run(self):
        if not self.token:
            say("ERROR", "WHIP_TOKEN is not set")
            return 1
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, self.stop, "SIGTERM")
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, self.stop, "SIGINT")
        GLib.io_add_watch(
            sys.stdin.fileno(),
            GLib.PRIORITY_DEFAULT,
            GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
            self.on_stdin,
        )
        GLib.timeout_add_seconds(self.args.seconds, self.stop, "time is up")
        if self.pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            say("ERROR", "the pipeline did not start")
            return 1
        if self.status == 0:
            self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return self.status


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="the WHIP endpoint URL")
    p.add_argument("--codec", choices=sorted(PIPELINES), default="vp8")
    p.add_argument("--seconds", type=int, default=60, help="stop after this long")
    p.add_argument(
        "--dtls-cert",
        choices=("rsa", "ecdsa"),
        default="rsa",
        help="rsa: webrtcbin's own certificate (GStreamer's dtls plugin makes an RSA one); "
        "ecdsa: replace it by a fresh ECDSA P-256 one (python3-cryptography)",
    )
    args = p.parse_args()
    Gst.init(None)
    missing = [
        f
        for f in ("webrtcbin", "rtpbin", "nicesrc", "dtlsenc", "srtpenc", "videotestsrc")
        + ("videoconvert",)
        + (
            ("vp8enc", "rtpvp8pay")
            if args.codec == "vp8"
            else ("openh264enc", "h264parse", "rtph264pay")
        )
        if Gst.ElementFactory.find(f) is None
    ]
    if missing:
        say("ERROR", "GStreamer elements missing:", " ".join(missing))
        return 1
    return Publisher(args).run()


if __name__ == "__main__":
    sys.exit(main())
