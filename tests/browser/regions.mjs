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
//       follows the redirect to c and decodes video; its stats show region c and the ranking;
//   (d) an SDK client for a room that has no home yet is placed on c by RTT ('nearest'),
//       with one redirect event and no action from the page.
//
// Usage: node tests/browser/regions.mjs
//   MERIDIAN_BIN=path       meridian binary (default: target/release/meridian, then target/debug)
//   CHROMIUM=path           browser (default /usr/bin/chromium); never downloaded
//   REDIS_SERVER=path       default: redis-server on PATH
//   REGIONS_TEST_VERBOSE=1  print the pages' console and the nodes' logs even when passing
// Exits 0 when every check passed, 1 otherwise; the last line is the summary.

import { spawn } from 'node:child_process';
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
  { region: 'a', n: 1, delayMs: 40 },
  { region: 'b', n: 2, delayMs: 25 },
  { region: 'c', n: 3, delayMs: 3 },
];

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
async function startRegion(tmp, r, redisUrl, apiSecret) {
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
  const regions = [];
  for (const r of REGIONS) regions.push(await startRegion(tmp, r, redisUrl, apiSecret));
  const [a] = regions;
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
  record('(c) the session was redirected once, to the room\'s home', s.route?.redirects === 1 && s.route?.reason === 'room_home', JSON.stringify(s.route));

  // (d) a room without a home: placed by RTT alone.
  const d = await page.evaluate(async () => {
    const { Client, devToken } = await import('/sdk/meridian.js');
    const redirects = [];
    const client = new Client({
      url: location.origin,
      role: 'player',
      token: async () => (await devToken(location.origin, { room: 'empty-room', identity: 'p-d', role: 'player' })).token,
    });
    client.on('redirect', (r) => redirects.push(r));
    await Promise.race([client.start(), new Promise((_, rej) => setTimeout(() => rej(new Error('no join within 15 s')), 15_000))]);
    const st = await client.stats();
    client.close();
    return { region: st.region, node: st.node, route: st.route, redirects };
  });
  record('(d) a client for a room with no home is placed on the nearest region', d.region === 'c' && d.route?.reason === 'nearest' && d.redirects.length === 1 && d.redirects[0].region === 'c', JSON.stringify(d));

  record('the device kept streaming throughout', !device.exitInfo, device.exitInfo ? JSON.stringify(device.exitInfo) : 'running');
}

run(main, { timeoutMs: GLOBAL_TIMEOUT_MS, verboseEnv: 'REGIONS_TEST_VERBOSE' });
