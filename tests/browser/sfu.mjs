// End-to-end: the node's own pages and SDK in headless Debian Chromium (playwright-core over
// CDP), against a meridian node started here on ephemeral ports.
//
//   (a) /device?room=r1&name=dev1 publishes Chromium's fake camera;
//   (b) a player (/?room=r1) sees dev1 listed live, clicks it, and decodes video (frames keep
//       coming);
//   (c) the player sends 20 control messages; the device gets all 20, in order; a key press
//       on the player reaches the device as key down + key up; an input message gets through;
//   (d) (b) and (c) again with a second player on ?relay=1 (iceTransportPolicy 'relay', via the
//       node's own TURN), whose stats must say relayed;
//   (e) the first player's signaling connection is cut: it reconnects by itself, video
//       decodes again, and 10 controls sent while it was away arrive once each, in order;
//   (f) the device's connection is cut: it publishes again under new track ids, both players
//       follow it and decode again, and a control message from the device reaches both.
//
// Usage: node tests/browser/sfu.mjs
//   MERIDIAN_BIN=path   meridian binary (default: target/release/meridian, then target/debug)
//   CHROMIUM=path       browser (default /usr/bin/chromium); never downloaded
//   SFU_TEST_VERBOSE=1  print the pages' console and the node's log even when passing
// Exits 0 when every check passed, 1 otherwise; the last line is the summary.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { createHarness, sleep, waitFor } from './harness.mjs';

const LIST_TIMEOUT_MS = 20_000;
const FRAMES_TIMEOUT_MS = 20_000;
const MESSAGE_TIMEOUT_MS = 10_000;
const RECONNECT_TIMEOUT_MS = 20_000;
const CONTROLS = 20;
const GLOBAL_TIMEOUT_MS = 180_000;

const { cleanups, consoleLines, state, log, record, startMeridian, run } = createHarness('sfu');

// ---------------------------------------------------------------- page helpers

async function openPage(context, url, label) {
  const page = await context.newPage();
  page.on('console', (m) => consoleLines.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${label}] pageerror: ${e.stack || e}`));
  page.on('response', (r) => {
    if (r.status() >= 400) consoleLines.push(`[${label}] HTTP ${r.status()} ${r.url()}`);
  });
  await page.goto(url, { timeout: 30_000 });
  return page;
}

/** Waits until the player's video decodes: framesDecoded > 0, then growing over 1 s. */
async function waitForFrames(page, label) {
  const t0 = Date.now();
  const stats = () => page.evaluate(() => window.meridianPlayer.stats());
  const first = await waitFor(`${label}: a decoded video frame`, FRAMES_TIMEOUT_MS, async () => {
    const s = await stats();
    return s && s.framesDecoded > 0 ? s : null;
  }, 250);
  const firstMs = Date.now() - t0;
  // Frames must keep coming: two samples a second apart, bounded by the same deadline.
  const deadline = t0 + FRAMES_TIMEOUT_MS;
  let a = first.framesDecoded;
  for (;;) {
    await sleep(1000);
    const s = await stats();
    if (s.framesDecoded > a) return { firstMs, before: a, after: s.framesDecoded, stats: s };
    if (Date.now() > deadline) throw new Error(`${label}: framesDecoded stuck at ${s.framesDecoded}`);
    a = s.framesDecoded;
  }
}

/** Sends `n` control messages {type:'test', tag, i} from a player; resolves to the acks. */
async function sendControls(page, tag, n) {
  return page.evaluate(
    async ({ tag, n, timeoutMs }) => {
      const c = window.meridianPlayer.client;
      const acks = Promise.all(Array.from({ length: n }, (_, i) => c.sendControl({ type: 'test', tag, i })));
      const timeout = new Promise((_, rej) => setTimeout(() => rej(new Error(`no acks after ${timeoutMs} ms (${c.unackedCount} unacked)`)), timeoutMs));
      return Promise.race([acks, timeout]);
    },
    { tag, n, timeoutMs: MESSAGE_TIMEOUT_MS },
  );
}

/** The test messages with `tag` the device page received, in arrival order. */
async function receivedOnDevice(device, tag) {
  return device.evaluate((tag) => window.meridianDevice.received.filter((m) => m.data?.type === 'test' && m.data.tag === tag), tag);
}

/** Checks that the device got exactly messages 0..n-1 with `tag`, once each, in order. */
async function checkDelivered(device, tag, n, from) {
  const got = await waitFor(`the device to receive ${n} messages "${tag}"`, MESSAGE_TIMEOUT_MS, async () => {
    const r = await receivedOnDevice(device, tag);
    return r.length >= n ? r : null;
  }).catch(async (e) => {
    const r = await receivedOnDevice(device, tag);
    throw new Error(`${e.message}; got ${r.length}: ${JSON.stringify(r.map((m) => m.data.i))}`);
  });
  await sleep(300); // a duplicate would arrive right behind
  const all = await receivedOnDevice(device, tag);
  const order = all.map((m) => m.data.i);
  const inOrder = all.length === n && order.every((v, i) => v === i);
  const seqUp = all.every((m, i) => i === 0 || m.seq > all[i - 1].seq);
  const fromOk = all.every((m) => m.from === from);
  return { ok: inOrder && seqUp && fromOk, detail: `${all.length}/${n} received, order ${inOrder ? 'ok' : JSON.stringify(order)}, seq ${all[0]?.seq}…${all.at(-1)?.seq}${seqUp ? '' : ' NOT increasing'}${fromOk ? '' : `, from ${JSON.stringify([...new Set(all.map((m) => m.from))])}`}`, got };
}

/** (b) + (c) for one player page. */
async function playerChecks(label, device, url, context, expectRelayed) {
  const page = await openPage(context, url, label);
  const t0 = Date.now();
  const button = 'button[data-device="dev1"][data-room="r1"][data-live="true"]';
  await page.waitForSelector(button, { timeout: LIST_TIMEOUT_MS });
  record(`(${label}) dev1 is listed live`, true, `after ${Date.now() - t0} ms`);
  await page.click(button);
  await waitFor(`${label}: the click on dev1 to start watching`, 5_000, () => page.evaluate(() => !!window.meridianPlayer.client));
  const identity = await page.evaluate(() => window.meridianPlayer.identity);

  const f = await waitForFrames(page, label);
  const s = f.stats;
  record(
    `(${label}) video decodes`,
    true,
    `first frame after ${f.firstMs} ms; framesDecoded ${f.before} → ${f.after} in 1 s; ${s.frameWidth}×${s.frameHeight}, ` +
      `rtt ${s.rttMs} ms, in ${s.bitrateKbps.in} kbit/s, path ${s.localCandidateType}→${s.remoteCandidateType}`,
  );
  if (expectRelayed != null) {
    record(
      `(${label}) stats say relayed=${expectRelayed}`,
      s.relayed === expectRelayed,
      `relayed=${s.relayed}, local ${s.localCandidateType}, remote ${s.remoteCandidateType}`,
    );
  }

  // (c) controls, in order, exactly once.
  const acks = await sendControls(page, label, CONTROLS);
  const acksUp = acks.every((a, i) => i === 0 || a.seq > acks[i - 1].seq);
  const d = await checkDelivered(device, label, CONTROLS, identity);
  record(`(${label}) ${CONTROLS} controls delivered in order`, d.ok && acksUp, `${d.detail}; acks ${acksUp ? 'increasing' : 'NOT increasing'}`);

  // A key press on the focused player becomes key down + key up on the device.
  await page.focus('#stage');
  await page.keyboard.press('ArrowUp');
  const keys = await waitFor(`${label}: ArrowUp down+up on the device`, MESSAGE_TIMEOUT_MS, async () => {
    const k = await device.evaluate(
      (id) => window.meridianDevice.received.filter((m) => m.from === id && m.data?.type === 'key' && m.data.code === 'ArrowUp').map((m) => m.data.down),
      identity,
    );
    return k.length >= 2 ? k : null;
  });
  record(`(${label}) keyboard reaches the device`, keys[0] === true && keys[1] === false && keys.length === 2, `ArrowUp: ${JSON.stringify(keys)}`);

  // Input messages are lossy by design: send until one arrives (bounded).
  const inputOk = await waitFor(`${label}: an input message on the device`, MESSAGE_TIMEOUT_MS, async () => {
    await page.evaluate(() => window.meridianPlayer.client.sendInput({ type: 'axes', pad: 0, axes: [0.5, -0.25] }));
    return device.evaluate((id) => window.meridianDevice.inputs.some((m) => m.from === id && m.data?.type === 'axes'), identity);
  }, 100);
  record(`(${label}) input reaches the device`, inputOk === true);
  return { page, identity };
}

// ---------------------------------------------------------------- main

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-sfu-'));
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const node = await startMeridian(tmp);
  state.node = node;
  const { base } = node;
  log(`node: signaling ${base}, sfu ${node.ready.sfu_udp}, turn ${node.ready.turn_udp} / ${node.ready.turn_tcp}`);

  // The pages and the SDK come from the node itself.
  for (const [p, type] of [['', 'text/html'], ['device', 'text/html'], ['sdk/meridian.js', 'application/javascript']]) {
    const r = await fetch(base + p);
    const ct = r.headers.get('content-type') ?? '';
    const cc = r.headers.get('cache-control') ?? '';
    record(`GET /${p} is served`, r.ok && ct.startsWith(type) && cc === 'no-cache', `${r.status} ${ct}; cache-control ${cc}`);
  }

  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage',
    // A camera without a camera, and no permission prompt.
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

  // (a) the device publishes the fake camera.
  const device = await openPage(context, `${base}device?room=r1&name=dev1`, 'device');
  const pub = await waitFor('the device to publish and connect', 20_000, () =>
    device.evaluate(() => {
      const d = window.meridianDevice;
      return d?.client?.state === 'connected' && d.publications.length > 0 && d.publications.every((p) => p.trackId)
        ? { source: d.source, tracks: d.publications.map((p) => `${p.kind}:${p.trackId}`) }
        : null;
    }),
  );
  record('(a) the device publishes', pub.source === 'camera', `source ${pub.source}, tracks ${pub.tracks.join(', ')}`);

  // (b) + (c): a player on the direct path.
  const p1 = await playerChecks('b', device, `${base}?room=r1`, context, false);
  const players1 = await waitFor('the device to count 1 player', MESSAGE_TIMEOUT_MS, () => device.evaluate(() => window.meridianDevice.players === 1));
  record('(b) the device shows 1 player', players1 === true);

  // (d): a second player, relay only (the node's own TURN, from `joined`'s ice_servers).
  const p2 = await playerChecks('d', device, `${base}?room=r1&relay=1`, context, true);
  const players2 = await waitFor('the device to count 2 players', MESSAGE_TIMEOUT_MS, () => device.evaluate(() => window.meridianDevice.players === 2));
  record('(d) the device shows 2 players', players2 === true);

  // (e) the first player loses its signaling connection (and with it its session): it
  // reconnects by itself; controls sent meanwhile are kept and delivered once, in order.
  const t0 = Date.now();
  await p1.page.evaluate(() => {
    const c = window.meridianPlayer.client;
    window.__states = [];
    c.on('state', ({ state }) => window.__states.push(state));
    c._ws.close(4000, 'test: cut the connection');
    // Sent while disconnected: queued until the controls channel is open again.
    window.__outage = Promise.all(Array.from({ length: 10 }, (_, i) => c.sendControl({ type: 'test', tag: 'e', i })));
  });
  await waitFor('player b to reconnect', RECONNECT_TIMEOUT_MS, () =>
    p1.page.evaluate(() => window.__states.includes('reconnecting') && window.meridianPlayer.client.state === 'connected'),
  );
  const reconnectMs = Date.now() - t0;
  const f = await waitForFrames(p1.page, 'e');
  record('(e) player b reconnects and decodes again', true, `connected again after ${reconnectMs} ms; framesDecoded ${f.before} → ${f.after}`);
  await p1.page.evaluate((ms) => Promise.race([window.__outage, new Promise((_, rej) => setTimeout(() => rej(new Error('outage controls not acked')), ms))]), MESSAGE_TIMEOUT_MS);
  const d = await checkDelivered(device, 'e', 10, p1.identity);
  record('(e) 10 controls sent during the outage delivered once, in order', d.ok, d.detail);

  // (f) the device loses its connection: it publishes again (new track ids) and both players
  // follow it to the new tracks; then a message from the device reaches both players.
  const oldTracks = await device.evaluate(() => window.meridianDevice.publications.map((p) => p.trackId));
  const t1 = Date.now();
  await device.evaluate(() => window.meridianDevice.client._ws.close(4000, 'test: cut the connection'));
  const newTracks = await waitFor('the device to publish again', RECONNECT_TIMEOUT_MS, () =>
    device.evaluate((old) => {
      const d = window.meridianDevice;
      const ids = d.publications.map((p) => p.trackId);
      return d.client.state === 'connected' && ids.every((id) => id && !old.includes(id)) ? ids : null;
    }, oldTracks),
  );
  for (const [label, page] of [['b', p1.page], ['d', p2.page]]) {
    await waitFor(`player ${label} to subscribe to the new tracks`, RECONNECT_TIMEOUT_MS, () =>
      page.evaluate((ids) => ids.every((id) => window.meridianPlayer.watch.subs.has(id)), newTracks),
    );
    const g = await waitForFrames(page, `f/${label}`);
    record(`(f) player ${label} follows the reconnected device`, true, `tracks ${oldTracks.join(',')} → ${newTracks.join(',')}; decoding again ${Date.now() - t1} ms after the cut (framesDecoded ${g.before} → ${g.after})`);
  }
  const ack = await device.evaluate(() => window.meridianDevice.client.sendControl({ type: 'test', tag: 'f', i: 0 }));
  for (const [label, page] of [['b', p1.page], ['d', p2.page]]) {
    const got = await waitFor(`player ${label} to receive the device's message`, MESSAGE_TIMEOUT_MS, () =>
      page.evaluate(() => {
        const m = window.meridianPlayer.messages.filter((x) => x.data?.tag === 'f');
        return m.length ? m : null;
      }),
    ).catch(() => []);
    await sleep(300); // a duplicate would arrive right behind
    const all = await page.evaluate(() => window.meridianPlayer.messages.filter((x) => x.data?.tag === 'f'));
    if (all.length > got.length) got.push(...all.slice(got.length));
    record(`(f) player ${label} receives a control from the device`, got.length === 1 && got[0].seq === ack.seq && got[0].from === 'dev1', JSON.stringify(got));
  }

  // Across both reconnects, the device never saw a message twice.
  const seqs = await device.evaluate(() => window.meridianDevice.received.map((m) => m.seq));
  const dup = seqs.filter((v, i) => i > 0 && v <= seqs[i - 1]);
  record('the device received every message once, in sequence order', dup.length === 0, `${seqs.length} messages${dup.length ? `; out of order or repeated: ${JSON.stringify(dup)}` : ''}`);

  if (node.child.exitInfo) record('meridian still running at the end', false, JSON.stringify(node.child.exitInfo));
}

await run(main, { timeoutMs: GLOBAL_TIMEOUT_MS, verboseEnv: 'SFU_TEST_VERBOSE' });
