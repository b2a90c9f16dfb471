// Browser interop: headless Debian Chromium (driven by playwright-core over CDP) uses a
// meridian node as its TURN server.
//
//   (a) an RTCPeerConnection gathers relay candidates over turn: UDP, turn: TCP and, when the
//       node lists a TLS listener in its ready file, turns: (TLS, self-signed certificate
//       made here with openssl; Chromium runs with --ignore-certificate-errors);
//   (b) two RTCPeerConnections in one page, iceTransportPolicy 'relay', connect through the
//       node and echo data-channel messages (N sent, N echoed, bounded time), once per
//       transport.
//
// Usage: node tests/browser/turn.mjs
//   MERIDIAN_BIN=path      meridian binary (default: target/debug/meridian, then release)
//   MERIDIAN_TEST_BACKEND=coturn   run coturn's turnserver instead (checks this script)
//   CHROMIUM=path          browser (default /usr/bin/chromium); never downloaded
//   BROWSER_TEST_TLS=0     do not configure a TLS listener
// Exits 0 when every check passed, 1 otherwise.

import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import { createSocket } from 'node:dgram';
import { connect as tcpConnect } from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const USER = 'browser';
const PASSWORD = 'browser-pass-123';
const REALM = 'meridian-browser';
const READY_TIMEOUT_MS = 20_000;
const GATHER_TIMEOUT_MS = 15_000;
const CONNECT_TIMEOUT_MS = 20_000;
const MESSAGES = 50;
const GLOBAL_TIMEOUT_MS = 180_000;

const results = []; // { name, ok, detail }
const cleanups = []; // run in reverse on exit
let tmpRoot;

function log(...a) {
  console.log('[browser]', ...a);
}

function record(name, ok, detail = '') {
  results.push({ name, ok, detail });
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? ` — ${detail}` : ''}`);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(what, timeoutMs, fn, everyMs = 10) {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; ; i++) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------- child processes

function spawnGuarded(cmd, args, logPath) {
  const out = fs.openSync(logPath, 'w');
  const child = spawn(cmd, args, { stdio: ['ignore', out, out], detached: false });
  fs.closeSync(out);
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.exitInfo = null;
  child.exited.then((info) => (child.exitInfo = info));
  child.on('error', (e) => {
    child.exitInfo = { code: null, signal: null, error: e };
  });
  cleanups.push(async () => {
    if (child.exitInfo) return;
    child.kill('SIGTERM');
    const done = await Promise.race([child.exited, sleep(10_000).then(() => null)]);
    if (!done) {
      log(`${cmd} ignored SIGTERM for 10 s; killing it`);
      child.kill('SIGKILL');
      await Promise.race([child.exited, sleep(5_000)]);
    }
  });
  return child;
}

function readLog(p) {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------- TLS material

function makeSelfSignedCert(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const r = spawnSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ],
    { encoding: 'utf8', timeout: 30_000 },
  );
  if (r.status !== 0) throw new Error(`openssl failed: ${r.stderr || r.error}`);
  return { cert, key };
}

// ---------------------------------------------------------------- servers

function meridianBin() {
  if (process.env.MERIDIAN_BIN) return process.env.MERIDIAN_BIN;
  for (const p of ['target/debug/meridian', 'target/release/meridian']) {
    const full = path.join(REPO, p);
    if (fs.existsSync(full)) return full;
  }
  throw new Error('no meridian binary: build it (cargo build) or set MERIDIAN_BIN');
}

async function startMeridian(dir, tls) {
  const lines = [
    '[node]', 'name = "browser-test"', '',
    '[log]', 'level = "debug"', '',
    '[admin]', 'listen = "127.0.0.1:0"', '',
    '[turn]', `realm = "${REALM}"`, 'udp = ["127.0.0.1:0"]', 'tcp = ["127.0.0.1:0"]',
  ];
  if (tls) lines.push('tls = ["127.0.0.1:0"]', `tls_cert = "${tls.cert}"`, `tls_key = "${tls.key}"`);
  lines.push(
    'relay_ipv4 = "127.0.0.1"', '',
    '[auth]', `users = [{ username = "${USER}", password = "${PASSWORD}" }]`, '',
    '[security]', 'allow_peers = ["127.0.0.0/8", "::1/128"]', '',
    '[drain]', 'deadline_secs = 1', '',
    // The signaling API and the SFU also listen; ephemeral ports keep runs independent.
    '[signaling]', 'listen = "127.0.0.1:0"', '',
    '[sfu]', 'udp = "127.0.0.1:0"', 'tcp = []', '',
  );
  const config = path.join(dir, 'meridian.toml');
  fs.writeFileSync(config, lines.join('\n'));
  const readyFile = path.join(dir, 'ready.json');
  const logPath = path.join(dir, 'meridian.log');
  const bin = meridianBin();
  log(`starting ${bin} serve --config ${config}`);
  const child = spawnGuarded(bin, ['serve', '--config', config, '--ready-file', readyFile], logPath);
  const ready = await waitFor('meridian ready file', READY_TIMEOUT_MS, () => {
    if (child.exitInfo) {
      throw new Error(`meridian exited before ready: ${JSON.stringify(child.exitInfo)}\n${readLog(logPath)}`);
    }
    if (!fs.existsSync(readyFile)) return null;
    return JSON.parse(fs.readFileSync(readyFile, 'utf8')); // written atomically
  }, 5);
  return {
    name: 'meridian',
    udp: ready.turn_udp?.[0],
    tcp: ready.turn_tcp?.[0],
    tls: ready.turn_tls?.[0],
    logPath,
    child,
  };
}

function freePort() {
  // A port free on TCP and UDP a moment ago (coturn cannot bind port 0).
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => {
        const u = createSocket('udp4');
        u.once('error', () => resolve(freePort()));
        u.bind(port, '127.0.0.1', () => u.close(() => resolve(port)));
      });
    });
    srv.on('error', reject);
  });
}

function stunAnswers(addr) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const req = Buffer.alloc(20);
    req.writeUInt16BE(0x0001, 0);
    req.writeUInt32BE(0x2112a442, 4);
    for (let i = 8; i < 20; i++) req[i] = Math.floor(Math.random() * 256);
    const t = setTimeout(() => {
      s.close();
      resolve(false);
    }, 100);
    s.on('message', (m) => {
      clearTimeout(t);
      s.close();
      resolve(m.length >= 20 && m.readUInt16BE(0) === 0x0101);
    });
    s.send(req, port, host);
  });
}

function tcpAccepts(addr) {
  const i = addr.lastIndexOf(':');
  return new Promise((resolve) => {
    const c = tcpConnect({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)) });
    const t = setTimeout(() => {
      c.destroy();
      resolve(false);
    }, 200);
    c.on('connect', () => {
      clearTimeout(t);
      c.destroy();
      resolve(true);
    });
    c.on('error', () => {
      clearTimeout(t);
      resolve(false);
    });
  });
}

async function startCoturn(dir, tls) {
  const port = await freePort();
  const tlsPort = await freePort();
  const relayMin = 30000 + ((port % 20000) >> 6) * 64;
  const logPath = path.join(dir, 'coturn.log');
  const args = [
    '-n', '--no-cli', '--no-dtls', '--log-file=stdout', '--simple-log', '--fingerprint',
    '--listening-ip=127.0.0.1', '--relay-ip=127.0.0.1', `--listening-port=${port}`,
    `--min-port=${relayMin}`, `--max-port=${relayMin + 63}`, `--realm=${REALM}`,
    `--pidfile=${path.join(dir, 'turnserver.pid')}`, `--userdb=${path.join(dir, 'turndb')}`,
    '--lt-cred-mech', `--user=${USER}:${PASSWORD}`, '--allow-loopback-peers',
  ];
  if (tls) args.push(`--tls-listening-port=${tlsPort}`, `--cert=${tls.cert}`, `--pkey=${tls.key}`);
  else args.push('--no-tls');
  log(`starting turnserver on ${port}${tls ? ` (TLS ${tlsPort})` : ''}`);
  const child = spawnGuarded('turnserver', args, logPath);
  const addr = `127.0.0.1:${port}`;
  const tlsAddr = tls ? `127.0.0.1:${tlsPort}` : undefined;
  await waitFor('coturn to answer', READY_TIMEOUT_MS, async () => {
    if (child.exitInfo) throw new Error(`turnserver exited: ${JSON.stringify(child.exitInfo)}\n${readLog(logPath)}`);
    return (await stunAnswers(addr)) && (await tcpAccepts(addr)) && (!tlsAddr || (await tcpAccepts(tlsAddr)));
  });
  return { name: 'coturn', udp: addr, tcp: addr, tls: tlsAddr, logPath, child };
}

// ---------------------------------------------------------------- page code

// Runs in the page: gathers candidates for one iceServers entry.
async function gatherInPage({ iceServer, timeoutMs }) {
  const pc = new RTCPeerConnection({ iceServers: [iceServer], iceTransportPolicy: 'relay' });
  const candidates = [];
  const errors = [];
  pc.onicecandidateerror = (e) => errors.push(`${e.url || ''} ${e.errorCode} ${e.errorText}`.trim());
  const done = new Promise((resolve) => {
    pc.onicecandidate = (e) => {
      if (!e.candidate) return resolve('complete');
      candidates.push({
        candidate: e.candidate.candidate,
        type: e.candidate.type,
        address: e.candidate.address,
        port: e.candidate.port,
        relayProtocol: e.candidate.relayProtocol ?? null,
        url: e.candidate.url ?? null,
      });
    };
  });
  pc.createDataChannel('gather');
  await pc.setLocalDescription(await pc.createOffer());
  const how = await Promise.race([done, new Promise((r) => setTimeout(() => r('timeout'), timeoutMs))]);
  pc.close();
  return { how, candidates, errors };
}

// Runs in the page: two peers through the TURN server, relay only; echo N messages.
async function echoInPage({ iceServer, messages, timeoutMs }) {
  const cfg = { iceServers: [iceServer], iceTransportPolicy: 'relay' };
  const a = new RTCPeerConnection(cfg);
  const b = new RTCPeerConnection(cfg);
  const errors = [];
  const gathered = { a: 0, b: 0 };
  let rejectNoCandidates;
  const noCandidates = new Promise((_, rej) => (rejectNoCandidates = rej));
  noCandidates.catch(() => {});
  for (const [name, pc, other] of [['a', a, b], ['b', b, a]]) {
    pc.onicecandidate = (e) => {
      if (!e.candidate) {
        // Gathering finished: without a relay candidate nothing can connect; fail fast.
        if (gathered[name] === 0) rejectNoCandidates(new Error(`peer ${name} gathered no relay candidate`));
        return;
      }
      gathered[name]++;
      other.addIceCandidate(e.candidate).catch((err) => errors.push(`${name} addIceCandidate: ${err}`));
    };
    pc.onicecandidateerror = (e) => errors.push(`${name} ${e.url || ''} ${e.errorCode} ${e.errorText}`.trim());
  }
  b.ondatachannel = (e) => {
    const ch = e.channel;
    ch.onmessage = (m) => ch.send(m.data); // the echo
  };
  const ch = a.createDataChannel('echo', { ordered: true });
  const echoed = [];
  let resolveAll;
  const allEchoed = new Promise((r) => (resolveAll = r));
  ch.onmessage = (m) => {
    echoed.push(m.data);
    if (echoed.length === messages) resolveAll();
  };
  const opened = new Promise((r) => (ch.onopen = r));
  const started = performance.now();
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  const timeout = (what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), timeoutMs));
  let result;
  try {
    await Promise.race([opened, noCandidates, timeout('data channel open')]);
    const openMs = Math.round(performance.now() - started);
    for (let i = 0; i < messages; i++) ch.send(`message ${i}`);
    await Promise.race([allEchoed, timeout(`${messages} echoes (got ${echoed.length})`)]);
    const inOrder = echoed.every((m, i) => m === `message ${i}`);
    // Which candidate pair carried the data?
    let pair = null;
    const stats = await a.getStats();
    let transport = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) transport = s;
    });
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && ((transport && s.id === transport.selectedCandidatePairId) || (!transport && s.nominated && s.state === 'succeeded'))) {
        const l = stats.get(s.localCandidateId);
        const r = stats.get(s.remoteCandidateId);
        pair = {
          local: l && { type: l.candidateType, address: l.address, port: l.port, relayProtocol: l.relayProtocol },
          remote: r && { type: r.candidateType, address: r.address, port: r.port },
        };
      }
    });
    result = { ok: true, openMs, totalMs: Math.round(performance.now() - started), echoed: echoed.length, inOrder, pair, errors };
  } catch (e) {
    result = { ok: false, error: String(e), echoed: echoed.length, iceState: a.iceConnectionState, errors };
  }
  a.close();
  b.close();
  return result;
}

// ---------------------------------------------------------------- main

async function main() {
  tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-browser-'));
  cleanups.push(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

  const backend = process.env.MERIDIAN_TEST_BACKEND === 'coturn' ? 'coturn' : 'meridian';
  const wantTls = process.env.BROWSER_TEST_TLS !== '0';
  const tls = wantTls ? makeSelfSignedCert(tmpRoot) : null;
  const server = backend === 'coturn' ? await startCoturn(tmpRoot, tls) : await startMeridian(tmpRoot, tls);
  log(`${server.name}: udp=${server.udp} tcp=${server.tcp} tls=${server.tls ?? '(none)'}`);

  // A tiny page server, so the page has a real (secure-context) origin.
  const http = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>meridian TURN test</title><p>meridian TURN test</p>');
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise((r) => http.close(r)));
  const pageUrl = `http://127.0.0.1:${http.address().port}/`;

  const userDataDir = fs.mkdtempSync(path.join(tmpRoot, 'chromium-profile-'));
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage',
  ];
  if (server.tls) args.push('--ignore-certificate-errors');
  log(`launching ${executablePath}`);
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args,
    timeout: 60_000,
  });
  cleanups.push(() => context.close().catch(() => {}));
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => log(`page console: ${m.text()}`));
  await page.goto(pageUrl, { timeout: 30_000 });
  log(`browser ${context.browser()?.version() ?? '(persistent context)'}; page ${pageUrl}`);

  const transports = [
    ['udp', server.udp && { urls: `turn:${server.udp}?transport=udp`, username: USER, credential: PASSWORD }],
    ['tcp', server.tcp && { urls: `turn:${server.tcp}?transport=tcp`, username: USER, credential: PASSWORD }],
    ['tls', server.tls && { urls: `turns:${server.tls}?transport=tcp`, username: USER, credential: PASSWORD }],
  ];

  for (const [name, iceServer] of transports) {
    if (!iceServer) {
      if (name === 'tls') log(`SKIP turns: (TLS): the ${server.name} ready file lists no TLS listener`);
      else record(`gather ${name}`, false, 'no listener of this kind in the ready file');
      continue;
    }
    const t0 = Date.now();
    const g = await page.evaluate(gatherInPage, { iceServer, timeoutMs: GATHER_TIMEOUT_MS });
    const relays = g.candidates.filter((c) => c.type === 'relay');
    const good = relays.filter((c) => c.address === '127.0.0.1' && c.port > 0);
    const protoOk = relays.every((c) => c.relayProtocol == null || c.relayProtocol === name);
    record(
      `(a) ${iceServer.urls} gathers a relay candidate`,
      good.length > 0 && protoOk,
      `${relays.length} relay candidate(s) ${JSON.stringify(relays.map((c) => `${c.address}:${c.port}/${c.relayProtocol}`))}, ` +
        `gathering ${g.how} in ${Date.now() - t0} ms${g.errors.length ? `, errors: ${JSON.stringify(g.errors)}` : ''}`,
    );
  }

  for (const [name, iceServer] of transports) {
    if (!iceServer) continue;
    const t0 = Date.now();
    const r = await page.evaluate(echoInPage, { iceServer, messages: MESSAGES, timeoutMs: CONNECT_TIMEOUT_MS });
    const relayed = r.pair?.local?.type === 'relay' && r.pair?.remote?.type === 'relay';
    record(
      `(b) two peers via ${iceServer.urls}, relay only, ${MESSAGES} data-channel echoes`,
      r.ok && r.echoed === MESSAGES && r.inOrder && relayed,
      r.ok
        ? `open in ${r.openMs} ms, ${r.echoed}/${MESSAGES} echoed in order=${r.inOrder} in ${r.totalMs} ms, pair ${JSON.stringify(r.pair)}`
        : `${r.error}; echoed ${r.echoed}; ice ${r.iceState}; errors ${JSON.stringify(r.errors)} (${Date.now() - t0} ms)`,
    );
  }

  if (server.child.exitInfo) record(`${server.name} still running at the end`, false, JSON.stringify(server.child.exitInfo));
  return server;
}

async function cleanup() {
  while (cleanups.length) {
    const f = cleanups.pop();
    try {
      await f();
    } catch (e) {
      log(`cleanup: ${e}`);
    }
  }
}

const globalTimer = setTimeout(async () => {
  record('browser test finished in time', false, `still running after ${GLOBAL_TIMEOUT_MS} ms`);
  await cleanup();
  process.exit(1);
}, GLOBAL_TIMEOUT_MS);
globalTimer.unref();

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    await cleanup();
    process.exit(130);
  });
}

let server;
try {
  server = await main();
} catch (e) {
  record('browser test ran', false, e.stack || String(e));
}
const failed = results.filter((r) => !r.ok).length;
if ((failed || !results.length) && server) {
  console.log(`---- ${server.name} output ----\n${readLog(server.logPath).slice(-20000)}\n---- end ----`);
}
await cleanup();
clearTimeout(globalTimer);
const passed = results.length - failed;
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed || !results.length ? 1 : 0);
