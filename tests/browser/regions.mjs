// End-to-end: measured routing across three regions, in headless Debian Chromium.
//
// Three `meridian serve` nodes (regions a, b, c) on 127.0.1.1, 127.0.2.1 and 127.0.3.1 share
// one real redis-server. Each sits behind its own `meridian bench shim` on 127.0.N.2 (the
// node advertises the shim's addresses, as behind a 1:1 NAT) adding 40, 25 and 3 ms one way,
// so region c is the nearest. Then:
//
//   (a) node a's /v1/regions lists the three regions;
//   (b) `meridian device`, pointed at node a, measures, is redirected and publishes on c;
//   (c) the player page served by node a lists the device (with region c) from a's
//       cluster-wide room list, and playing it, the SDK measures every region (c nearest),
//       joins c directly (the room's home) and decodes video; its stats show region c and
//       the ranking;
//   (d) an SDK client for a room that has no home yet is placed on c by RTT ('nearest'),
//       joining c directly, without a redirect;
//   (e) an SDK client given a ranking without node URLs joins a, is redirected to the
//       room's home c and follows it with no action from the page;
//   (f) the trunk (nodes b and c run one; a does not): a second `meridian device` publishes
//       on b (room homed there); the player page plays it, the SDK joins its nearest region c,
//       which serves the room over the trunk: it decodes b's video, and 20 controls it sends
//       are acknowledged in order and reach the device on b once each, in order;
//   (g) failover: node c is killed (SIGKILL) under that player; the SDK emits one
//       `reconnecting` and one `resumed`, decodes b's video again from another region, and
//       its controls reach the device once each, in order.
//
// Usage: node tests/browser/regions.mjs
//   MERIDIAN_BIN=path       meridian binary (default: target/release/meridian, then target/debug)
//   CHROMIUM=path           browser (default /usr/bin/chromium); never downloaded
//   REDIS_SERVER=path       default: redis-server on PATH
//   REGIONS_TEST_VERBOSE=1  print the pages' console and the nodes' logs even when passing
// Exits 0 when every check passed, 1 otherwise; the last line is the summary.

import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { createHarness, meridianBin, readLog, sleep, waitFor } from './harness.mjs';

const GLOBAL_TIMEOUT_MS = 180_000;
const FRAMES_TIMEOUT_MS = 30_000;
/** One-way delay each shim adds, per region: c is the nearest, then b, then a. */
const REGIONS = [
  { region: 'a', n: 1, delayMs: 40, trunk: false },
  { region: 'b', n: 2, delayMs: 25, trunk: true },
  { region: 'c', n: 3, delayMs: 3, trunk: true },
];
const TRUNK_CONTROLS = 20;

const { cleanups, consoleLines, state, log, record, startMeridian, run } = createHarness('regions');

/** A port free for TCP and UDP on `host` (probed by binding port 0, then released). */
async function freePort(host, udp = false) {
  if (udp) {
    const s = dgram.createSocket('udp4');
    await new Promise((res, rej) => s.bind(0, host, res).once('error', rej));
    const { port } = s.address();
    await new Promise((res) => s.close(res));
    return port;
  }
  const srv = net.createServer();
  await new Promise((res, rej) => srv.listen(0, host, res).once('error', rej));
  const { port } = srv.address();
  await new Promise((res) => srv.close(res));
  return port;
}

/** Spawns a child whose output goes to `logPath`; it is stopped (SIGTERM, then SIGKILL) at cleanup. */
function spawnLogged(label, cmd, args, logPath) {
  const out = fs.openSync(logPath, 'w');
  const child = spawn(cmd, args, { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  child.exitInfo = null;
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve((child.exitInfo = { code, signal }))));
  child.on('error', (e) => (child.exitInfo = { code: null, signal: null, error: String(e) }));
  state.logs.push([label, logPath]);
  cleanups.push(async () => {
    if (child.exitInfo) return;
    child.kill('SIGTERM');
    if (!(await Promise.race([child.exited, sleep(5_000).then(() => null)]))) {
      child.kill('SIGKILL');
      await Promise.race([child.exited, sleep(5_000)]);
    }
  });
  return child;
}

/** A redis-server on a free loopback port, answering PING. */
async function startRedis(dir) {
  const port = await freePort('127.0.0.1');
  const bin = process.env.REDIS_SERVER || 'redis-server';
  const child = spawnLogged('redis-server', bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], path.join(dir, 'redis.log'));
  await waitFor('redis-server to answer PING', 10_000, async () => {
    if (child.exitInfo) throw new Error(`redis-server exited: ${JSON.stringify(child.exitInfo)}\n${readLog(path.join(dir, 'redis.log'))}`);
    return new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.setTimeout(500, () => s.destroy());
      s.on('connect', () => s.write('PING\r\n'));
      s.on('data', (d) => {
        s.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
      s.on('error', () => resolve(false));
      s.on('close', () => resolve(false));
    });
  }, 50);
  return `redis://127.0.0.1:${port}`;
}

/** One region: its shim on 127.0.N.2 in front of its node on 127.0.N.1, same ports. */
async function startRegion(tmp, r, redisUrl, apiSecret, pki) {
  const nodeHost = `127.0.${r.n}.1`;
  const shimHost = `127.0.${r.n}.2`;
  const ports = { signaling: await freePort(nodeHost), turn: await freePort(nodeHost, true), sfu: await freePort(nodeHost, true) };
  const dir = fs.mkdtempSync(path.join(tmp, `region-${r.region}-`));
  const shimReady = path.join(dir, 'shim.json');
  const map = (p) => `${shimHost}:${p}=${nodeHost}:${p}`;
  const shim = spawnLogged(`shim ${r.region}`, meridianBin(), [
    'bench', 'shim', '--tcp', map(ports.signaling), '--udp', map(ports.turn), '--udp', map(ports.sfu),
    '--delay-ms', String(r.delayMs), '--ready-file', shimReady,
  ], path.join(dir, 'shim.log'));
  await waitFor(`the shim of region ${r.region}`, 10_000, () => {
    if (shim.exitInfo) throw new Error(`shim exited: ${JSON.stringify(shim.exitInfo)}\n${readLog(path.join(dir, 'shim.log'))}`);
    return fs.existsSync(shimReady);
  }, 20);
  const node = await startMeridian(dir, {
    name: `node-${r.region}`,
    host: nodeHost,
    ports,
    apiSecret,
    publicIp: shimHost,
    extra: [
      '[cluster]', `region = "${r.region}"`, `directory = "${redisUrl}"`, 'key_prefix = "browser-regions"',
      `public_signaling_url = "http://${shimHost}:${ports.signaling}"`, `public_stun = ["${shimHost}:${ports.turn}"]`,
      ...(r.trunk ? [
        '[trunk]', `listen = "${nodeHost}:${await freePort(nodeHost, true)}"`,
        `ca = ${JSON.stringify(path.join(pki, 'ca.pem'))}`,
        `cert = ${JSON.stringify(path.join(pki, `node-${r.region}.pem`))}`,
        `key = ${JSON.stringify(path.join(pki, `node-${r.region}.key`))}`,
      ] : []),
    ],
  });
  state.logs.push([`node ${r.region}`, node.logPath]);
  return { ...r, node, ports, dir, url: `http://${shimHost}:${ports.signaling}/` };
}

async function openPage(context, url, label) {
  const page = await context.newPage();
  page.on('console', (m) => consoleLines.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${label}] pageerror: ${e.stack || e}`));
  await page.goto(url, { timeout: 30_000 });
  return page;
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-regions-'));
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const redisUrl = await startRedis(tmp);
  const apiSecret = randomBytes(16).toString('hex');
  // The trunk's cluster CA and the certificates of the nodes that run one.
  const pki = path.join(tmp, 'pki');
  const certs = spawnSync(meridianBin(), ['trunk-cert', '--dir', pki, ...REGIONS.filter((r) => r.trunk).flatMap((r) => ['--node', `node-${r.region}`])], { encoding: 'utf8' });
  if (certs.status !== 0) throw new Error(`meridian trunk-cert failed: ${certs.stderr}`);
  const regions = [];
  for (const r of REGIONS) regions.push(await startRegion(tmp, r, redisUrl, apiSecret, pki));
  const [a, b, c] = regions;
  log(`regions: ${regions.map((r) => `${r.region} ${r.url} (+${r.delayMs} ms each way)`).join(', ')}`);

  // (a) node a knows the whole cluster.
  const listed = await waitFor('node a to list three regions', 10_000, async () => {
    const body = await fetch(`${a.url}v1/regions`).then((r) => r.json()).catch(() => null);
    const names = (body?.regions ?? []).map((r) => r.region);
    return names.length === 3 ? body : null;
  });
  const stunOf = Object.fromEntries(listed.regions.map((r) => [r.region, r.nodes[0].stun[0]]));
  record('(a) node a lists regions a, b, c with the shims\' STUN endpoints', REGIONS.every((r) => stunOf[r.region]?.startsWith(`127.0.${r.n}.2:`)), JSON.stringify(stunOf));

  // (b) the device simulator, given node a, measures and lands on c.
  const deviceLog = path.join(tmp, 'device.log');
  const device = spawnLogged('meridian device', meridianBin(), [
    'device', '--url', a.url, '--room', 'r9', '--name', 'rig-c', '--config', a.node.config, '--bitrate-kbps', '600', '--seconds', '150',
  ], deviceLog);
  const joinedLine = await waitFor('the device to publish', 20_000, () => {
    if (device.exitInfo) throw new Error(`meridian device exited: ${JSON.stringify(device.exitInfo)}\n${readLog(deviceLog)}`);
    const text = readLog(deviceLog);
    return text.includes('media connected') ? text.split('\n').find((l) => l.includes('joined room')) : null;
  });
  record('(b) meridian device measured and was placed on region c', /on node node-c in region c \(nearest/.test(joinedLine), joinedLine);

  // (c) the player page on node a.
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage', '--autoplay-policy=no-user-gesture-required',
    // Host candidates on loopback (everything here is on 127.0.0.0/8).
    '--allow-loopback-in-peer-connection',
    '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
  ];
  const userDataDir = fs.mkdtempSync(path.join(tmp, 'chromium-profile-'));
  const context = await chromium.launchPersistentContext(userDataDir, { executablePath, headless: true, args, timeout: 60_000 });
  cleanups.push(() => context.close().catch(() => {}));

  const page = await openPage(context, `${a.url}?room=r9`, 'player');
  const button = 'button[data-device="rig-c"][data-room="r9"][data-live="true"]';
  await page.waitForSelector(button, { timeout: 20_000 });
  const rooms = await fetch(`${a.url}v1/rooms`).then((r) => r.json());
  const entry = rooms.devices.find((d) => d.device === 'rig-c');
  record('(c) node a lists the device on c', entry?.region === 'c' && entry?.node === 'node-c', JSON.stringify(entry));
  await page.click(button);
  const t0 = Date.now();
  await waitFor('the player to connect', FRAMES_TIMEOUT_MS, () => page.evaluate(() => window.meridianPlayer.client?.state === 'connected'), 50);
  const connectedMs = Date.now() - t0;
  const s = await waitFor('the player to decode video', FRAMES_TIMEOUT_MS, async () => {
    const st = await page.evaluate(() => window.meridianPlayer.stats());
    return st && st.framesDecoded > 5 ? st : null;
  }, 250);
  record('(c) the player decodes the device\'s video', true, `media connected after ${connectedMs} ms, framesDecoded ${s.framesDecoded} after ${Date.now() - t0} ms, ${s.frameWidth}×${s.frameHeight}, media RTT ${s.rttMs} ms`);
  const ranking = (s.regions ?? []).map((r) => `${r.region} ${r.rttMs} ms (${r.method})`).join(', ');
  record('(c) the SDK\'s stats show region c', s.region === 'c' && s.node === 'node-c', `region ${s.region}, node ${s.node}, route ${JSON.stringify(s.route)}`);
  const order = (s.regions ?? []).map((r) => r.region).join('');
  record('(c) the SDK measured every region, c nearest, then b, then a', order === 'cba', ranking || 'no measurement');
  const byRegion = Object.fromEntries((s.regions ?? []).map((r) => [r.region, r.rttMs]));
  // Each shim adds 2 × its one-way delay; the measurement must see at least that and not much more.
  const plausible = REGIONS.every((r) => byRegion[r.region] >= 2 * r.delayMs && byRegion[r.region] < 2 * r.delayMs + 60);
  record('(c) each measured RTT matches its emulated path', plausible, ranking);
  record('(c) the SDK joined the room\'s home c directly (no redirect hop)', s.route?.redirects === 0 && s.route?.reason === 'room_home', JSON.stringify(s.route));

  // (d) a room without a home: placed by RTT alone.
  const d = await joinOnce(page, { room: 'empty-room', identity: 'p-d' });
  record('(d) a client for a room with no home is placed on the nearest region, joined directly', d.region === 'c' && d.route?.reason === 'nearest' && d.redirects.length === 0, JSON.stringify(d));

  // (e) a ranking given by the application (no node URLs) that puts a first: the SDK joins
  // the entry node a, which redirects it to the room's home c; the SDK follows by itself.
  const e = await joinOnce(page, { room: 'r9', identity: 'p-e', regions: [{ region: 'a', rttMs: 1 }, { region: 'c', rttMs: 2 }] });
  record('(e) joined through a, the SDK followed one redirect to the room\'s home c', e.region === 'c' && e.route?.redirects === 1 && e.route?.reason === 'room_home' && e.redirects.length === 1 && e.redirects[0].region === 'c', JSON.stringify(e));

  // (f) the trunk: a device homed on b, the player served by its nearest node c.
  const deviceBLog = path.join(tmp, 'device-b.log');
  const deviceB = spawnLogged('meridian device (b)', meridianBin(), [
    'device', '--url', b.url, '--room', 'rf', '--name', 'rig-b', '--config', b.node.config, '--bitrate-kbps', '400', '--seconds', '150', '--no-measure',
  ], deviceBLog);
  const joinedB = await waitFor('the device on b to publish', 20_000, () => {
    if (deviceB.exitInfo) throw new Error(`meridian device (b) exited: ${JSON.stringify(deviceB.exitInfo)}\n${readLog(deviceBLog)}`);
    const text = readLog(deviceBLog);
    return text.includes('media connected') ? text.split('\n').find((l) => l.includes('joined room')) : null;
  });
  record('(f) the second device publishes on b', /on node node-b/.test(joinedB), joinedB);
  await waitFor('node c to list the device on b', 10_000, async () => {
    const body = await fetch(`${c.url}v1/rooms`).then((r) => r.json()).catch(() => null);
    return (body?.devices ?? []).some((d) => d.device === 'rig-b' && d.node === 'node-b');
  });
  const pf = await openPage(context, `${c.url}?room=rf`, 'player-f');
  const buttonB = 'button[data-device="rig-b"][data-room="rf"][data-live="true"]';
  await pf.waitForSelector(buttonB, { timeout: 20_000 });
  await pf.click(buttonB);
  const tf = Date.now();
  const sf = await waitFor('the trunked player to decode video', FRAMES_TIMEOUT_MS, async () => {
    const st = await pf.evaluate(() => window.meridianPlayer.stats());
    return st && st.framesDecoded > 5 ? st : null;
  }, 250);
  record('(f) the player on c decodes the video of the device on b', sf.region === 'c' && sf.node === 'node-c' && sf.route?.redirects === 0,
    `region ${sf.region}, node ${sf.node}, route ${JSON.stringify(sf.route)}, framesDecoded ${sf.framesDecoded} after ${Date.now() - tf} ms`);
  const acks = await pf.evaluate((n) => Promise.race([
    Promise.all(Array.from({ length: n }, (_, i) => window.meridianPlayer.client.sendControl({ type: 'test', tag: 'f', i }))),
    new Promise((_, rej) => setTimeout(() => rej(new Error('controls not acknowledged within 15 s')), 15_000)),
  ]), TRUNK_CONTROLS);
  const seqs = acks.map((a) => a.seq);
  record(`(f) ${TRUNK_CONTROLS} controls acknowledged in order by the room's home`, seqs.length === TRUNK_CONTROLS && seqs.every((v, i) => i === 0 || v > seqs[i - 1]), JSON.stringify(seqs));
  const got = await waitFor('the device on b to print the controls', 10_000, () => {
    const is = readLog(deviceBLog).split('\n').flatMap((l) => {
      try {
        const v = JSON.parse(l);
        return v.channel === 'controls' && v.message?.data?.tag === 'f' ? [v.message.data.i] : [];
      } catch {
        return [];
      }
    });
    return is.length >= TRUNK_CONTROLS ? is : null;
  });
  record(`(f) the device on b got each control once, in order`, JSON.stringify(got) === JSON.stringify([...Array(TRUNK_CONTROLS).keys()]), JSON.stringify(got));

  record('the device kept streaming throughout', !device.exitInfo, device.exitInfo ? JSON.stringify(device.exitInfo) : 'running');

  // (g) failover: node c dies (SIGKILL) under the player. The SDK re-homes on its next
  // region by itself — one `reconnecting`, one `resumed` — decodes the video again, and its
  // controls reach the device.
  await pf.evaluate(() => {
    window.__failover = [];
    const client = window.meridianPlayer.client;
    for (const ev of ['reconnecting', 'resumed']) client.on(ev, (d) => window.__failover.push({ ev, ...d }));
  });
  const before = (await pf.evaluate(() => window.meridianPlayer.stats())).framesDecoded;
  c.node.child.kill('SIGKILL');
  const tg = Date.now();
  const resumed = await waitFor('the SDK to resume after node c died', 20_000, async () => {
    const evs = await pf.evaluate(() => window.__failover);
    return evs.some((e) => e.ev === 'resumed') ? evs : null;
  }, 50);
  const sg = await waitFor('the re-homed player to decode video again', FRAMES_TIMEOUT_MS, async () => {
    const st = await pf.evaluate(() => window.meridianPlayer.stats());
    return st && st.node !== 'node-c' && st.framesDecoded > before + 10 ? st : null;
  }, 100);
  const evs = resumed.map((e) => e.ev).join(',');
  record('(g) node c killed: the SDK emitted one reconnecting and one resumed, and decodes again on another region',
    evs === 'reconnecting,resumed' && sg.node !== 'node-c',
    `events ${JSON.stringify(resumed)}, now on ${sg.node} (${sg.region}), framesDecoded ${before} → ${sg.framesDecoded}, ${Date.now() - tg} ms after the kill`);
  const acksG = await pf.evaluate((n) => Promise.race([
    Promise.all(Array.from({ length: n }, (_, i) => window.meridianPlayer.client.sendControl({ type: 'test', tag: 'g', i }))),
    new Promise((_, rej) => setTimeout(() => rej(new Error('controls not acknowledged within 15 s')), 15_000)),
  ]), TRUNK_CONTROLS);
  const gotG = await waitFor('the device on b to print the controls sent after the re-home', 10_000, () => {
    const is = readLog(deviceBLog).split('\n').flatMap((l) => {
      try {
        const v = JSON.parse(l);
        return v.channel === 'controls' && v.message?.data?.tag === 'g' ? [v.message.data.i] : [];
      } catch {
        return [];
      }
    });
    return is.length >= TRUNK_CONTROLS ? is : null;
  });
  record('(g) after the re-home, controls are acknowledged and reach the device once each, in order',
    acksG.length === TRUNK_CONTROLS && JSON.stringify(gotG) === JSON.stringify([...Array(TRUNK_CONTROLS).keys()]), JSON.stringify(gotG));

}

/** One SDK client in `page` joins `room` (with the application's `regions` ranking, if any) and leaves: where it was placed and the redirects it followed. */
function joinOnce(page, { room, identity, regions }) {
  return page.evaluate(async ({ room, identity, regions }) => {
    const { Client, devToken } = await import('/sdk/meridian.js');
    const redirects = [];
    const client = new Client({
      url: location.origin,
      role: 'player',
      ...(regions ? { regions } : {}),
      token: async () => (await devToken(location.origin, { room, identity, role: 'player' })).token,
    });
    client.on('redirect', (r) => redirects.push(r));
    await Promise.race([client.start(), new Promise((_, rej) => setTimeout(() => rej(new Error('no join within 15 s')), 15_000))]);
    const st = await client.stats();
    client.close();
    return { region: st.region, node: st.node, route: st.route, redirects };
  }, { room, identity, regions: regions ?? null });
}

run(main, { timeoutMs: GLOBAL_TIMEOUT_MS, verboseEnv: 'REGIONS_TEST_VERBOSE' });
