// End-to-end WHIP / WHEP and simulcast in headless Debian Chromium (playwright-core over CDP),
// against a meridian node started here on ephemeral ports.
//
//   (a) WHIP publish from Chromium: a page on the node's origin takes the fake camera (and fake
//       microphone), offers sendonly VP8 + Opus (ICE gathering complete, no trickle) with
//       POST /whip and a device token, applies the 201 answer; Location, ETag, Link and
//       Content-Type are checked, the connection comes up and frames go out; PATCH (trickle)
//       with the ETag is accepted, with another ETag refused (412); /v1/rooms lists it live.
//   (b) WHEP playback in Chromium: a second page offers recvonly video + audio to
//       POST /whep?device=… with a player token and decodes the video (framesDecoded keeps
//       growing) and receives the audio; /v1/rooms counts one viewer. DELETE of the WHEP
//       resource (viewers back to 0), then of the WHIP resource (the device leaves
//       /v1/rooms); a second DELETE is 404.
//   (c) Simulcast from Chromium: a WHIP publisher sends VP8 in two layers (rid 'l' at 1/4
//       scale, rid 'h' at full 1280×720). A player on the SDK (WebSocket path) watches with
//       layer 'l' and decodes the low layer's width; asks for 'h' and decodes the high
//       layer's width (with a layer_changed event); asks for 'low' again and is back on the
//       low layer's width. A WHEP viewer of the same track decodes one of the layers.
//   (d) Simulcast over the SDK (WebSocket path): a device publishes the 1280×720 fake camera
//       with the SDK's three layers (q, h, f at 1/4, 1/2, 1) and their declared sizes; a
//       player asks with max_width 640 (decodes 640 wide, layer_changed 'h'), then
//       max_height 180 (320, 'q'), then layer 'high' (1280, 'f').
//
// Usage: node tests/browser/whip.mjs
//   MERIDIAN_BIN=path        meridian binary (default: target/release/meridian, then target/debug)
//   CHROMIUM=path            browser (default /usr/bin/chromium); never downloaded
//   WHIP_TEST_VERBOSE=1      print the pages' console and the node's log even when passing
//   WHIP_TEST_LOG=level      the node's log level (default info; e.g. debug)
// Exits 0 when every check passed, 1 otherwise; the last line is the summary.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { createHarness, sleep, waitFor } from './harness.mjs';

const CONNECT_TIMEOUT_MS = 20_000;
const FRAMES_TIMEOUT_MS = 20_000;
const ROOMS_TIMEOUT_MS = 10_000;
/** Chromium sends the higher simulcast layers once its bandwidth estimate allows. */
const LAYERS_TIMEOUT_MS = 30_000;
const LAYER_SWITCH_TIMEOUT_MS = 20_000;
const GLOBAL_TIMEOUT_MS = 240_000;

const { cleanups, consoleLines, state, log, record, startMeridian: startNode, run } = createHarness('whip');

/** Like waitFor, but resolves to null on timeout (for checks that record their own failure). */
async function waitOrNull(timeoutMs, fn, everyMs = 100) {
  return waitFor('', timeoutMs, fn, everyMs).catch(() => null);
}

// ---------------------------------------------------------------- the node

function startMeridian(dir) {
  return startNode(dir, { logLevel: process.env.WHIP_TEST_LOG || 'info' });
}

async function devToken(base, room, identity, role) {
  const u = new URL('v1/dev-token', base);
  u.search = new URLSearchParams({ room, identity, role }).toString();
  const r = await fetch(u);
  if (!r.ok) throw new Error(`GET ${u}: ${r.status} ${await r.text()}`);
  return (await r.json()).token;
}

async function rooms(base) {
  const r = await fetch(new URL('v1/rooms', base));
  if (!r.ok) throw new Error(`GET /v1/rooms: ${r.status}`);
  return (await r.json()).devices;
}

async function roomEntry(base, room, device) {
  return (await rooms(base)).find((d) => d.room === room && d.device === device) ?? null;
}

/** The sum of one Prometheus counter over its label sets (0 when absent). */
async function metric(adminAddr, name) {
  try {
    const text = await (await fetch(`http://${adminAddr}/metrics`)).text();
    let sum = 0;
    for (const line of text.split('\n')) {
      if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.split(/\s+/).at(-1)) || 0;
    }
    return sum;
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------- the test page

// Put by playwright into a document loaded from the node (see openPage), so fetch('/whip')
// is same-origin and the SDK is imported from the node itself.
const PAGE_HTML = String.raw`<!doctype html>
<html><head><meta charset="utf-8"><title>whip test</title></head>
<body>
<script type="module">
  import * as sdk from '/sdk/meridian.js';
  window.sdk = sdk;
  window.sdkLoaded = true;
</script>
<script>
  'use strict';
  const sessions = {};
  window.sessions = sessions;

  function deadline(ms, what) {
    return new Promise((_, rej) => setTimeout(() => rej(new Error('timed out after ' + ms + ' ms: ' + what)), ms));
  }

  function iceGathered(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return Promise.race([
      new Promise((res) => pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') res(); })),
      deadline(ms, 'ICE gathering'),
    ]);
  }

  /** Only VP8 (and its RTX) on a video transceiver, so every layer is VP8. */
  function preferVp8(transceiver) {
    const caps = RTCRtpSender.getCapabilities('video');
    if (!caps || !transceiver.setCodecPreferences) return;
    const codecs = caps.codecs.filter((c) => /^video\/(VP8|rtx)$/i.test(c.mimeType));
    transceiver.setCodecPreferences(codecs);
  }

  /** The layers' sizes are what the test checks: under CPU load, lower the frame rate instead. */
  async function keepResolution(sender) {
    try {
      const p = sender.getParameters();
      p.degradationPreference = 'maintain-resolution';
      await sender.setParameters(p);
    } catch (e) {
      console.warn('degradationPreference: ' + e);
    }
  }

  function headersOf(r) {
    const h = {};
    r.headers.forEach((v, k) => { h[k] = h[k] ? h[k] + ', ' + v : v; });
    return h;
  }

  /** POSTs the complete offer to url with the token; applies a 201 answer. */
  async function exchange(pc, url, token) {
    await pc.setLocalDescription();
    await iceGathered(pc, 10000);
    const offer = pc.localDescription.sdp;
    const r = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: 'Bearer ' + token },
      body: offer,
      signal: AbortSignal.timeout(10000),
    });
    const body = await r.text();
    const out = { status: r.status, headers: headersOf(r), body, offer };
    if (r.status === 201) await pc.setRemoteDescription({ type: 'answer', sdp: body });
    return out;
  }

  /** WHIP: publishes the fake camera (and microphone), optionally as simulcast. */
  window.whipPublish = async ({ label, token, width, height, audio, encodings }) => {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { exact: width }, height: { exact: height }, frameRate: { ideal: 30 } },
      audio: !!audio,
    });
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    const video = stream.getVideoTracks()[0];
    const init = { direction: 'sendonly', streams: [stream] };
    if (encodings) init.sendEncodings = encodings;
    const tv = pc.addTransceiver(video, init);
    preferVp8(tv);
    await keepResolution(tv.sender);
    for (const a of stream.getAudioTracks()) pc.addTransceiver(a, { direction: 'sendonly', streams: [stream] });
    const res = await exchange(pc, '/whip', token);
    sessions[label] = { pc, stream, ...res };
    return { ...res, settings: video.getSettings() };
  };

  /** WHEP: a recvonly video (+ audio) offer, the video played in a <video>. */
  window.whepPlay = async ({ label, token, device, audio }) => {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    if (audio) pc.addTransceiver('audio', { direction: 'recvonly' });
    const el = document.createElement('video');
    el.muted = true;
    el.autoplay = true;
    el.playsInline = true;
    document.body.append(el);
    pc.ontrack = (e) => {
      if (e.track.kind === 'video') {
        el.srcObject = new MediaStream([e.track]);
        el.play().catch(() => {});
      }
    };
    const url = '/whep' + (device ? '?device=' + encodeURIComponent(device) : '');
    const res = await exchange(pc, url, token);
    sessions[label] = { pc, el, ...res };
    return res;
  };

  window.pcState = (label) => sessions[label]?.pc.connectionState ?? 'none';

  /** outbound-rtp video per rid, and the selected pair. */
  window.outbound = async (label) => {
    const report = await sessions[label].pc.getStats();
    const out = { state: sessions[label].pc.connectionState, layers: {}, audioPackets: 0 };
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out.layers[s.rid ?? '-'] = {
          framesSent: s.framesSent ?? 0, frameWidth: s.frameWidth ?? 0, frameHeight: s.frameHeight ?? 0,
          bytesSent: s.bytesSent ?? 0, active: s.active, limit: s.qualityLimitationReason,
          encoder: s.encoderImplementation,
        };
      }
      if (s.type === 'outbound-rtp' && s.kind === 'audio') out.audioPackets += s.packetsSent ?? 0;
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') out.availableOutgoingBitrate = s.availableOutgoingBitrate;
    });
    return out;
  };

  /** inbound-rtp of a WHEP session. */
  window.inbound = async (label) => {
    const report = await sessions[label].pc.getStats();
    const out = { state: sessions[label].pc.connectionState, framesDecoded: 0, frameWidth: 0, frameHeight: 0, audioPackets: 0, codec: null };
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out.framesDecoded += s.framesDecoded ?? 0;
        out.frameWidth = s.frameWidth ?? out.frameWidth;
        out.frameHeight = s.frameHeight ?? out.frameHeight;
        if (s.codecId) out.codec = report.get(s.codecId)?.mimeType ?? null;
      }
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audioPackets += s.packetsReceived ?? 0;
    });
    return out;
  };

  /** A PATCH (trickle) on a session's resource. */
  window.patch = async ({ label, etag, frag }) => {
    const r = await fetch(sessions[label].headers.location, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', ...(etag ? { 'If-Match': etag } : {}) },
      body: frag,
      signal: AbortSignal.timeout(10000),
    });
    return { status: r.status, body: await r.text() };
  };

  /** DELETE of a session's resource; closes its peer connection. */
  window.end = async (label) => {
    const s = sessions[label];
    const r = await fetch(s.headers.location, { method: 'DELETE', signal: AbortSignal.timeout(10000) });
    const again = await fetch(s.headers.location, { method: 'DELETE', signal: AbortSignal.timeout(10000) });
    s.pc.close();
    s.stream?.getTracks().forEach((t) => t.stop());
    return { status: r.status, again: again.status };
  };

  /** The SDK's device path: the fake camera at width×height as three simulcast layers. */
  window.sdkPublish = async ({ token, width, height }) => {
    const client = new window.sdk.Client({ url: location.origin + '/', token, role: 'device', log: (...a) => console.log('sdk device:', ...a) });
    await Promise.race([client.start(), deadline(15000, 'the SDK device to join')]);
    const stream = await Promise.race([
      client.publishCamera({ video: { width: { exact: width }, height: { exact: height }, frameRate: { ideal: 30 } }, audio: false, simulcast: true }),
      deadline(20000, 'the SDK device to publish'),
    ]);
    const pub = client._publications[0];
    await keepResolution(pub.transceiver.sender);
    window.device = { client, stream, pub };
    return { trackId: pub.trackId, declared: pub._declaration(), settings: stream.getVideoTracks()[0].getSettings() };
  };

  /** outbound-rtp video per rid of the SDK device. */
  window.deviceOutbound = async () => {
    const report = await window.device.client._pc.getStats();
    const layers = {};
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') layers[s.rid ?? '-'] = { framesSent: s.framesSent ?? 0, frameWidth: s.frameWidth ?? 0, bytesSent: s.bytesSent ?? 0, limit: s.qualityLimitationReason };
    });
    return layers;
  };

  /** The SDK's player path: watch a device with a layer preference. */
  window.sdkWatch = async ({ token, device, layer, maxWidth, maxHeight }) => {
    const client = new window.sdk.Client({ url: location.origin + '/', token, role: 'player', log: (...a) => console.log('sdk:', ...a) });
    const events = [];
    for (const t of ['layer_changed', 'subscribed', 'error', 'state', 'disconnected']) {
      client.on(t, (d) => events.push({ type: t, detail: d instanceof Error ? { code: d.code, message: d.message } : d, at: performance.now() }));
    }
    await Promise.race([client.start(), deadline(15000, 'the SDK client to join')]);
    const el = document.createElement('video');
    el.muted = true;
    document.body.append(el);
    const watch = await client.watch(device, { layer, maxWidth, maxHeight, videoElement: el, audio: false });
    window.player = { client, watch, events, el };
    return { tracks: [...client.tracks.values()] };
  };
</script>
</body></html>`;

async function openPage(context, base, label) {
  const page = await context.newPage();
  page.on('console', (m) => consoleLines.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${label}] pageerror: ${e.stack || e}`));
  page.on('response', (r) => {
    if (r.status() >= 400) consoleLines.push(`[${label}] HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  // A document of the node's own (so the page's origin and address space are the node's:
  // Chromium's local-network-access checks let it reach the node's WebSocket), then the
  // test page's content in it.
  await page.goto(base + 'v1/rooms', { timeout: 30_000 });
  await page.setContent(PAGE_HTML, { timeout: 30_000 });
  await page.waitForFunction(() => window.sdkLoaded === true, null, { timeout: 10_000 });
  return page;
}

/** framesDecoded > 0 on a WHEP session, then growing over 1 s samples; bounded. */
async function waitForDecoding(page, label) {
  const t0 = Date.now();
  const stats = () => page.evaluate((l) => window.inbound(l), label);
  const first = await waitFor(`${label}: a decoded video frame`, FRAMES_TIMEOUT_MS, async () => {
    const s = await stats();
    return s.framesDecoded > 0 ? s : null;
  }, 250);
  const firstMs = Date.now() - t0;
  const deadline = t0 + FRAMES_TIMEOUT_MS;
  let a = first.framesDecoded;
  for (;;) {
    await sleep(1000); // a sampling interval, not a synchronization
    const s = await stats();
    if (s.framesDecoded > a) return { firstMs, before: a, after: s.framesDecoded, stats: s };
    if (Date.now() > deadline) throw new Error(`${label}: framesDecoded stuck at ${s.framesDecoded}`);
    a = s.framesDecoded;
  }
}

function sdpLines(sdp, re) {
  return sdp.split(/\r?\n/).filter((l) => re.test(l));
}

// ---------------------------------------------------------------- (a) + (b)

async function whipWhep(base, node, context) {
  const ROOM = 'whip1';
  const DEVICE = 'whip-cam';
  // The routes themselves, from Node (no browser): OPTIONS, and POST without a token.
  {
    const r = await fetch(new URL('whip', base), { method: 'OPTIONS' });
    record('OPTIONS /whip', r.status === 204 && r.headers.get('accept-post') === 'application/sdp', `${r.status}, Accept-Post ${r.headers.get('accept-post')}`);
    const u = await fetch(new URL('whip', base), { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: 'v=0\r\n' });
    record('POST /whip without a token is 401', u.status === 401 && /bearer/i.test(u.headers.get('www-authenticate') ?? ''), `${u.status}, WWW-Authenticate ${u.headers.get('www-authenticate')}`);
  }

  // (a) publish.
  const pubPage = await openPage(context, base, 'whip');
  const deviceToken = await devToken(base, ROOM, DEVICE, 'device');
  const t0 = Date.now();
  const pub = await pubPage.evaluate((a) => window.whipPublish(a), { label: 'pub', token: deviceToken, width: 640, height: 480, audio: true });
  const h = pub.headers;
  record('(a) POST /whip answers 201 with an SDP answer', pub.status === 201 && (h['content-type'] ?? '').startsWith('application/sdp') && pub.body.startsWith('v=0'),
    `${pub.status} ${h['content-type']}${pub.status !== 201 ? `: ${pub.body.slice(0, 300)}` : ''}; camera ${pub.settings.width}×${pub.settings.height}`);
  if (pub.status !== 201) throw new Error('WHIP publish failed; nothing else to test in (a)/(b)');
  const locOk = /^\/whip\/[0-9a-f]{32}$/.test(h.location ?? '');
  record('(a) Location is the session resource /whip/<id>', locOk, `Location ${h.location}`);
  record('(a) ETag is a quoted entity tag', /^"[^"]+"$/.test(h.etag ?? ''), `ETag ${h.etag}`);
  const turnUdp = node.ready.turn_udp?.[0];
  const links = h.link ?? '';
  record('(a) Link headers advertise the node\'s TURN', /rel="ice-server"/.test(links) && (!turnUdp || links.includes(`turn:${turnUdp}?transport=udp`)) && /username="[^"]+"/.test(links) && /credential="[^"]+"/.test(links),
    links.replace(/credential="[^"]*"/g, 'credential="…"').slice(0, 300));
  const answerMedia = sdpLines(pub.body, /^m=|^a=(sendonly|recvonly|sendrecv|inactive)$|^a=ice-lite/);
  record('(a) the answer is ICE-lite and receives both m-lines', answerMedia.includes('a=ice-lite') && answerMedia.filter((l) => l === 'a=recvonly').length === 2, answerMedia.join(' | '));

  const connected = await waitOrNull(CONNECT_TIMEOUT_MS, () => pubPage.evaluate(() => window.pcState('pub') === 'connected'));
  record('(a) the WHIP peer connection connects', !!connected, `after ${Date.now() - t0} ms (state ${await pubPage.evaluate(() => window.pcState('pub'))})`);
  const sending = await waitOrNull(FRAMES_TIMEOUT_MS, async () => {
    const s = await pubPage.evaluate(() => window.outbound('pub'));
    const v = Object.values(s.layers)[0];
    return v && v.framesSent > 30 && s.audioPackets > 50 ? s : null;
  }, 250);
  record('(a) Chromium sends video and audio', !!sending, sending ? JSON.stringify(sending.layers) + ` audio packets ${sending.audioPackets}` : JSON.stringify(await pubPage.evaluate(() => window.outbound('pub'))));

  // Trickle: PATCH with the session's ETag (a candidate line from the offer, and the end of
  // candidates) is accepted; with another ETag it is refused.
  const cand = sdpLines(pub.offer, /^a=candidate:/).find((l) => !/\.local /.test(l) && / udp /i.test(l));
  const ufrag = sdpLines(pub.offer, /^a=ice-ufrag:/)[0];
  const pwd = sdpLines(pub.offer, /^a=ice-pwd:/)[0];
  const frag = [ufrag, pwd, 'm=video 9 UDP/TLS/RTP/SAVPF 0', 'a=mid:0', ...(cand ? [cand] : []), 'a=end-of-candidates', ''].join('\r\n');
  const p1 = await pubPage.evaluate((a) => window.patch(a), { label: 'pub', etag: h.etag, frag });
  record('(a) PATCH (trickle) with the ETag is 204', p1.status === 204, `${p1.status} ${p1.body.trim()}${cand ? '' : ' (no non-mDNS candidate to trickle)'}`);
  const p2 = await pubPage.evaluate((a) => window.patch(a), { label: 'pub', etag: '"not-the-etag"', frag });
  record('(a) PATCH with another ETag is 412', p2.status === 412, `${p2.status} ${p2.body.trim()}`);

  const entry = await waitOrNull(ROOMS_TIMEOUT_MS, async () => {
    const d = await roomEntry(base, ROOM, DEVICE);
    return d?.live && d.tracks.length === 2 ? d : null;
  }, 200);
  record('(a) /v1/rooms lists the WHIP device live with 2 tracks', !!entry, JSON.stringify(entry ?? (await roomEntry(base, ROOM, DEVICE))));

  // (b) WHEP playback of it.
  const playPage = await openPage(context, base, 'whep');
  const playerToken = await devToken(base, ROOM, 'whep-viewer', 'player');
  const t1 = Date.now();
  const play = await playPage.evaluate((a) => window.whepPlay(a), { label: 'play', token: playerToken, device: DEVICE, audio: true });
  const ph = play.headers;
  record('(b) POST /whep?device= answers 201', play.status === 201 && (ph['content-type'] ?? '').startsWith('application/sdp'),
    `${play.status} ${ph['content-type']}${play.status !== 201 ? `: ${play.body.slice(0, 300)}` : ''}`);
  if (play.status !== 201) throw new Error('WHEP play failed');
  record('(b) Location is /whep/<id>, with an ETag', /^\/whep\/[0-9a-f]{32}$/.test(ph.location ?? '') && /^"[^"]+"$/.test(ph.etag ?? ''), `Location ${ph.location}, ETag ${ph.etag}`);
  const answerDirs = sdpLines(play.body, /^a=(sendonly|recvonly|sendrecv|inactive)$/);
  record('(b) the answer sends on both m-lines', answerDirs.length === 2 && answerDirs.every((d) => d === 'a=sendonly'), answerDirs.join(' '));
  try {
    const f = await waitForDecoding(playPage, 'play');
    const s = f.stats;
    record('(b) Chromium decodes the WHEP video', true,
      `first frame ${f.firstMs} ms after the POST (${Date.now() - t1} ms in all); framesDecoded ${f.before} → ${f.after} in 1 s; ${s.frameWidth}×${s.frameHeight} ${s.codec}`);
    record('(b) the decoded size is the camera\'s', s.frameWidth === pub.settings.width && s.frameHeight === pub.settings.height, `${s.frameWidth}×${s.frameHeight} vs ${pub.settings.width}×${pub.settings.height}`);
  } catch (e) {
    record('(b) Chromium decodes the WHEP video', false, `${e.message}; ${JSON.stringify(await playPage.evaluate(() => window.inbound('play')))}`);
  }
  const audio = await waitOrNull(FRAMES_TIMEOUT_MS, async () => {
    const s = await playPage.evaluate(() => window.inbound('play'));
    return s.audioPackets > 50 ? s : null;
  }, 250);
  record('(b) Chromium receives the WHEP audio', !!audio, `audio packets ${audio?.audioPackets ?? (await playPage.evaluate(() => window.inbound('play'))).audioPackets}`);
  const viewing = await waitOrNull(ROOMS_TIMEOUT_MS, async () => {
    const d = await roomEntry(base, ROOM, DEVICE);
    return d?.viewers === 1 ? d : null;
  }, 200);
  record('(b) /v1/rooms counts 1 viewer', !!viewing, JSON.stringify(viewing ?? (await roomEntry(base, ROOM, DEVICE))));

  // DELETE the WHEP resource, then the WHIP resource.
  const e1 = await playPage.evaluate(() => window.end('play'));
  record('(b) DELETE /whep/<id> is 200, then 404', (e1.status === 200 || e1.status === 204) && e1.again === 404, `${e1.status}, again ${e1.again}`);
  const noViewers = await waitOrNull(ROOMS_TIMEOUT_MS, async () => {
    const d = await roomEntry(base, ROOM, DEVICE);
    return d?.viewers === 0 ? d : null;
  }, 200);
  record('(b) after the WHEP DELETE the device has 0 viewers', !!noViewers, JSON.stringify(noViewers ?? (await roomEntry(base, ROOM, DEVICE))));
  const e2 = await pubPage.evaluate(() => window.end('pub'));
  record('(b) DELETE /whip/<id> is 200, then 404', (e2.status === 200 || e2.status === 204) && e2.again === 404, `${e2.status}, again ${e2.again}`);
  const gone = await waitOrNull(ROOMS_TIMEOUT_MS, async () => !(await roomEntry(base, ROOM, DEVICE)), 200);
  record('(b) after the WHIP DELETE the device is gone from /v1/rooms', !!gone, JSON.stringify(await roomEntry(base, ROOM, DEVICE)));
  await playPage.close();
  await pubPage.close();
}

/** Probes of the SDK player on `page` (window.player from sdkWatch). */
function playerProbe(page) {
  const stats = () => page.evaluate(() => window.player.client.stats());
  const events = () => page.evaluate(() => window.player.events.filter((e) => e.type !== 'state'));
  /** Waits until the player decodes frames `width` wide and keeps decoding at it; bounded. */
  async function decodesWidth(width, timeoutMs) {
    const t = Date.now();
    const s = await waitOrNull(timeoutMs, async () => {
      const x = await stats();
      return x.frameWidth === width && x.framesDecoded > 0 ? x : null;
    }, 250);
    if (!s) return { ok: false, ms: Date.now() - t, stats: await stats() };
    // Still decoding, at that width, a few frames later.
    const more = await waitOrNull(5_000, async () => {
      const x = await stats();
      return x.framesDecoded > s.framesDecoded + 5 && x.frameWidth === width ? x : null;
    }, 250);
    return { ok: !!more, ms: Date.now() - t, stats: more ?? (await stats()), before: s.framesDecoded };
  }
  return { stats, events, decodesWidth };
}

// ---------------------------------------------------------------- (c) simulcast

async function simulcast(base, node, context) {
  const ROOM = 'sim1';
  const DEVICE = 'sim-cam';
  const W = 1280;
  const H = 720;
  const encodings = [
    { rid: 'l', scaleResolutionDownBy: 4 },
    // Bounded so the node's bandwidth estimate for the player (1.5 Mbit/s to start) fits it.
    { rid: 'h', scaleResolutionDownBy: 1, maxBitrate: 1_000_000 },
  ];
  const LOW_W = W / 4;
  const pubPage = await openPage(context, base, 'sim-pub');
  const token = await devToken(base, ROOM, DEVICE, 'device');
  const pub = await pubPage.evaluate((a) => window.whipPublish(a), { label: 'sim', token, width: W, height: H, audio: false, encodings });
  record('(c) simulcast WHIP publish answers 201', pub.status === 201, `${pub.status}${pub.status !== 201 ? `: ${pub.body.slice(0, 300)}` : ''}; camera ${pub.settings.width}×${pub.settings.height}`);
  if (pub.status !== 201) throw new Error('simulcast WHIP publish failed');
  const sim = sdpLines(pub.body, /^a=(simulcast|rid):/);
  record('(c) the answer accepts both rids', sim.some((l) => /^a=simulcast:recv l;h$/.test(l)) && sim.includes('a=rid:l recv') && sim.includes('a=rid:h recv'), sim.join(' | '));
  record('(c) the camera runs at 1280×720', pub.settings.width === W && pub.settings.height === H, `${pub.settings.width}×${pub.settings.height}`);

  // Both layers going out of Chromium, at their sizes.
  const t0 = Date.now();
  const both = await waitOrNull(LAYERS_TIMEOUT_MS, async () => {
    const s = await pubPage.evaluate(() => window.outbound('sim'));
    const { l, h } = s.layers;
    return l?.frameWidth === LOW_W && h?.frameWidth === W && l.framesSent > 10 && h.framesSent > 10 ? s : null;
  }, 250);
  const last = both ?? (await pubPage.evaluate(() => window.outbound('sim')));
  record('(c) Chromium sends both layers (l 320 wide, h 1280 wide)', !!both, `after ${Date.now() - t0} ms: ${JSON.stringify(last)}`);
  if (!both) throw new Error('Chromium does not send both simulcast layers; cannot test layer choice');

  // The node sees both layers on the track.
  const entry = await waitOrNull(ROOMS_TIMEOUT_MS, async () => {
    const d = await roomEntry(base, ROOM, DEVICE);
    return d?.live ? d : null;
  }, 200);
  record('(c) /v1/rooms lists the simulcast device live', !!entry, JSON.stringify(entry));

  // A WHEP viewer of the simulcast track (no layer preference there: the node picks one).
  const whepPage = await openPage(context, base, 'sim-whep');
  const vtoken = await devToken(base, ROOM, 'sim-whep', 'viewer');
  const play = await whepPage.evaluate((a) => window.whepPlay(a), { label: 'simplay', token: vtoken, device: DEVICE, audio: false });
  if (play.status === 201) {
    try {
      const f = await waitForDecoding(whepPage, 'simplay');
      record('(c) a WHEP viewer decodes the simulcast track', [LOW_W, W].includes(f.stats.frameWidth),
        `${f.stats.frameWidth}×${f.stats.frameHeight}; framesDecoded ${f.before} → ${f.after} in 1 s`);
    } catch (e) {
      record('(c) a WHEP viewer decodes the simulcast track', false, `${e.message}; ${JSON.stringify(await whepPage.evaluate(() => window.inbound('simplay')))}`);
    }
    await whepPage.evaluate(() => window.end('simplay'));
  } else {
    record('(c) a WHEP viewer decodes the simulcast track', false, `POST /whep: ${play.status} ${play.body.slice(0, 300)}`);
  }
  await whepPage.close();

  // A player on the SDK path watches with layer 'l'.
  const playPage = await openPage(context, base, 'sim-player');
  const ptoken = await devToken(base, ROOM, 'sim-player', 'player');
  const w = await playPage.evaluate((a) => window.sdkWatch(a), { token: ptoken, device: DEVICE, layer: 'l' });
  const track = w.tracks.find((t) => t.publisher === DEVICE && t.kind === 'video');
  record('(c) the player sees the track with layers l and h', !!track && JSON.stringify([...track.layers].sort()) === '["h","l"]', JSON.stringify(track));
  const { stats, events, decodesWidth } = playerProbe(playPage);

  const low = await decodesWidth(LOW_W, FRAMES_TIMEOUT_MS);
  record(`(c) with layer 'l' the player decodes ${LOW_W} wide`, low.ok,
    `after ${low.ms} ms: ${low.stats.frameWidth}×${low.stats.frameHeight}, framesDecoded ${low.before ?? 0} → ${low.stats.framesDecoded}, in ${low.stats.bitrateKbps.in} kbit/s`);
  const ev1 = await waitOrNull(5_000, async () => (await events()).find((e) => e.type === 'layer_changed' && e.detail.layer === 'l'));
  record("(c) layer_changed 'l' arrives", !!ev1, JSON.stringify(await events()));

  // Ask for the high layer.
  const nEvents = (await events()).length;
  await playPage.evaluate(() => window.player.watch.setPreferences({ layer: 'h' }));
  const high = await decodesWidth(W, LAYER_SWITCH_TIMEOUT_MS);
  record(`(c) after asking for 'h' the player decodes ${W} wide`, high.ok,
    `after ${high.ms} ms: ${high.stats.frameWidth}×${high.stats.frameHeight}, framesDecoded → ${high.stats.framesDecoded}, in ${high.stats.bitrateKbps.in} kbit/s; publisher ${JSON.stringify((await pubPage.evaluate(() => window.outbound('sim'))).layers)}`);
  const ev2 = await waitOrNull(5_000, async () => (await events()).slice(nEvents).find((e) => e.type === 'layer_changed' && e.detail.layer === 'h'));
  record("(c) layer_changed 'h' arrives", !!ev2, JSON.stringify((await events()).slice(nEvents)));

  // And back down by rank.
  const nEvents2 = (await events()).length;
  await playPage.evaluate(() => window.player.watch.setPreferences({ layer: 'low' }));
  const back = await decodesWidth(LOW_W, LAYER_SWITCH_TIMEOUT_MS);
  record(`(c) after asking for 'low' the player decodes ${LOW_W} wide again`, back.ok,
    `after ${back.ms} ms: ${back.stats.frameWidth}×${back.stats.frameHeight}, framesDecoded → ${back.stats.framesDecoded}`);
  const ev3 = await waitOrNull(5_000, async () => (await events()).slice(nEvents2).find((e) => e.type === 'layer_changed' && e.detail.layer === 'l'));
  record("(c) layer_changed 'l' arrives again", !!ev3, JSON.stringify((await events()).slice(nEvents2)));
  const errs = (await events()).filter((e) => e.type === 'error' || e.type === 'disconnected');
  record('(c) the player got no error events', errs.length === 0, JSON.stringify(errs));
  log(`layer switches counted by the node: ${await metric(node.ready.admin, 'meridian_sfu_layer_switches_total')}`);

  await playPage.evaluate(() => window.player.client.close());
  const e = await pubPage.evaluate(() => window.end('sim'));
  record('(c) DELETE of the simulcast WHIP resource is 200', e.status === 200 || e.status === 204, String(e.status));
  await playPage.close();
  await pubPage.close();
}

// ---------------------------------------------------------------- (d) simulcast over the SDK

async function sdkSimulcast(base, node, context) {
  const ROOM = 'sim2';
  const DEVICE = 'sdk-cam';
  const devPage = await openPage(context, base, 'sdk-device');
  const token = await devToken(base, ROOM, DEVICE, 'device');
  const pub = await devPage.evaluate((a) => window.sdkPublish(a), { token, width: 1280, height: 720 });
  const sizes = Object.fromEntries((pub.declared.layers ?? []).map((l) => [l.rid, l.width]));
  record('(d) the SDK device publishes three layers with declared sizes', !!pub.trackId && sizes.q === 320 && sizes.h === 640 && sizes.f === 1280,
    `track ${pub.trackId}, camera ${pub.settings.width}×${pub.settings.height}, declared ${JSON.stringify(pub.declared.layers)}`);
  const t0 = Date.now();
  const all = await waitOrNull(LAYERS_TIMEOUT_MS, async () => {
    const l = await devPage.evaluate(() => window.deviceOutbound());
    return l.q?.frameWidth === 320 && l.h?.frameWidth === 640 && l.f?.frameWidth === 1280 && l.f.framesSent > 10 ? l : null;
  }, 250);
  record('(d) Chromium sends all three layers (320, 640, 1280 wide)', !!all, `after ${Date.now() - t0} ms: ${JSON.stringify(all ?? (await devPage.evaluate(() => window.deviceOutbound())))}`);
  if (!all) throw new Error('Chromium does not send all three simulcast layers; cannot test layer choice');

  const playPage = await openPage(context, base, 'sdk-player');
  const ptoken = await devToken(base, ROOM, 'sdk-player', 'player');
  const w = await playPage.evaluate((a) => window.sdkWatch(a), { token: ptoken, device: DEVICE, maxWidth: 640 });
  const track = w.tracks.find((t) => t.publisher === DEVICE && t.kind === 'video');
  record('(d) the player sees the track with layers q, h and f', !!track && JSON.stringify([...track.layers].sort()) === '["f","h","q"]', JSON.stringify(track));
  const { events, decodesWidth } = playerProbe(playPage);
  const layerEvent = (from, rid) => waitOrNull(5_000, async () => (await events()).slice(from).find((e) => e.type === 'layer_changed' && e.detail.layer === rid));

  const steps = [
    { prefs: null, label: 'max_width 640', width: 640, rid: 'h' },
    { prefs: { maxHeight: 180 }, label: 'max_height 180', width: 320, rid: 'q' },
    { prefs: { layer: 'high' }, label: "layer 'high'", width: 1280, rid: 'f' },
  ];
  for (const step of steps) {
    const n = (await events()).length;
    if (step.prefs) await playPage.evaluate((p) => window.player.watch.setPreferences(p), step.prefs);
    const r = await decodesWidth(step.width, step.prefs ? LAYER_SWITCH_TIMEOUT_MS : FRAMES_TIMEOUT_MS);
    record(`(d) with ${step.label} the player decodes ${step.width} wide`, r.ok,
      `after ${r.ms} ms: ${r.stats.frameWidth}×${r.stats.frameHeight}, framesDecoded → ${r.stats.framesDecoded}, in ${r.stats.bitrateKbps.in} kbit/s`);
    const ev = await layerEvent(n, step.rid);
    record(`(d) layer_changed '${step.rid}' arrives`, !!ev, JSON.stringify((await events()).slice(n)));
  }
  const errs = (await events()).filter((e) => e.type === 'error' || e.type === 'disconnected');
  record('(d) the player got no error events', errs.length === 0, JSON.stringify(errs));
  await playPage.evaluate(() => window.player.client.close());
  await devPage.evaluate(() => window.device.client.close());
  await playPage.close();
  await devPage.close();
}

// ---------------------------------------------------------------- main

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-whip-'));
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true, maxRetries: 5 }));
  const node = await startMeridian(tmp);
  state.node = node;
  const { base } = node;
  log(`node: signaling ${base}, sfu ${node.ready.sfu_udp}, admin ${node.ready.admin}`);

  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage',
    // A camera and microphone without either, and no permission prompt.
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
    // Host candidates on loopback too (the node's SFU listens on 127.0.0.1 here).
    '--allow-loopback-in-peer-connection',
    // Background pages (several share one browser) keep full-rate timers.
    '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
  ];
  const userDataDir = fs.mkdtempSync(path.join(tmp, 'chromium-profile-'));
  log(`launching ${executablePath}`);
  const context = await chromium.launchPersistentContext(userDataDir, { executablePath, headless: true, args, timeout: 60_000 });
  cleanups.push(() => context.close().catch(() => {}));

  for (const [name, fn] of [['(a)+(b) WHIP publish, WHEP playback', whipWhep], ['(c) simulcast over WHIP', simulcast], ['(d) simulcast over the SDK', sdkSimulcast]]) {
    try {
      await fn(base, node, context);
    } catch (e) {
      record(`${name} ran to the end`, false, e.stack || String(e));
    }
  }
  if (node.child.exitInfo) record('meridian still running at the end', false, JSON.stringify(node.child.exitInfo));
  // For the record (not checks): what the SFU dropped and switched.
  try {
    const text = await (await fetch(`http://${node.ready.admin}/metrics`)).text();
    const lines = text.split('\n').filter((l) => /^meridian_sfu_(dropped|disconnects|layer_switches|keyframe_requests|forwarded_rtp)_total/.test(l));
    log(`node metrics:\n  ${lines.join('\n  ')}`);
  } catch (e) {
    log(`metrics: ${e}`);
  }
}

await run(main, { timeoutMs: GLOBAL_TIMEOUT_MS, verboseEnv: 'WHIP_TEST_VERBOSE' });
