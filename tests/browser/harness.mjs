// What the node-serving browser tests (sfu.mjs, whip.mjs) share: result recording, bounded
// waits, cleanups run in reverse, starting a meridian node on ephemeral loopback ports and
// waiting for its ready file, and the run wrapper (global timeout, signals, summary, exit code).

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const READY_TIMEOUT_MS = 20_000;

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it returns something truthy; throws after `timeoutMs`. */
export async function waitFor(what, timeoutMs, fn, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export function readLog(p) {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

export function meridianBin() {
  if (process.env.MERIDIAN_BIN) return process.env.MERIDIAN_BIN;
  for (const p of ['target/release/meridian', 'target/debug/meridian']) {
    const full = path.join(REPO, p);
    if (fs.existsSync(full)) return full;
  }
  throw new Error('no meridian binary: build it (cargo build --release) or set MERIDIAN_BIN');
}

/** One test run's state; `tag` prefixes its log lines and names it in the summary. */
export function createHarness(tag) {
  const results = []; // { name, ok, detail }
  const cleanups = []; // run in reverse on exit
  const consoleLines = []; // the pages' console, printed on failure
  // `node`: the node whose log is printed on failure; `logs`: more [label, path] to print.
  const state = { node: null, logs: [] };

  const log = (...a) => console.log(`[${tag}]`, ...a);

  function record(name, ok, detail = '') {
    results.push({ name, ok, detail });
    console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? ` — ${detail}` : ''}`);
    return ok;
  }

  /**
   * Starts a node in `dir`: TURN (UDP+TCP, REST credentials, loopback peers allowed), the SFU
   * on UDP, signaling with dev tokens, all on ephemeral loopback ports — or, with `host` and
   * `ports` ({signaling, turn, sfu}), on those. `apiSecret` signs tokens (nodes of one cluster
   * share it); `publicIp` is the SFU's advertised address (`sfu.public_ip`, e.g. a shim's);
   * `extra` lines are appended to the config (a [cluster] section, say).
   */
  async function startMeridian(dir, { logLevel = 'info', host = '127.0.0.1', ports = {}, apiSecret = null, extra = [], publicIp = null, name = `${tag}-browser-test` } = {}) {
    const config = path.join(dir, 'meridian.toml');
    const at = (port) => `${host}:${port ?? 0}`;
    fs.writeFileSync(
      config,
      [
        '[node]', `name = "${name}"`, '',
        '[log]', `level = "${logLevel}"`, '',
        '[admin]', 'listen = "127.0.0.1:0"', '',
        '[turn]', `realm = "meridian-${tag}-test"`, `udp = ["${at(ports.turn)}"]`, `tcp = ["${at()}"]`,
        `relay_ipv4 = "${host}"`, '',
        // REST credentials: the node mints per-session TURN credentials for `joined` and for
        // the WHIP/WHEP answers' Link headers.
        '[auth]', `rest_secrets = ["${randomBytes(16).toString('hex')}"]`, '',
        '[security]', 'allow_peers = ["127.0.0.0/8"]', '',
        '[drain]', 'deadline_secs = 1', '',
        '[signaling]', `listen = "${at(ports.signaling)}"`, 'dev_tokens = true',
        `api_keys = [{ key = "k", secret = "${apiSecret ?? randomBytes(16).toString('hex')}" }]`, '',
        '[sfu]', `udp = "${at(ports.sfu)}"`, 'tcp = []', ...(publicIp ? [`public_ip = "${publicIp}"`] : []), '',
        ...extra, '',
      ].join('\n'),
    );
    const readyFile = path.join(dir, 'ready.json');
    const logPath = path.join(dir, 'meridian.log');
    const bin = meridianBin();
    log(`starting ${bin} serve --config ${config}`);
    const out = fs.openSync(logPath, 'w');
    const child = spawn(bin, ['serve', '--config', config, '--ready-file', readyFile], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    child.exitInfo = null;
    child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve((child.exitInfo = { code, signal }))));
    child.on('error', (e) => (child.exitInfo = { code: null, signal: null, error: String(e) }));
    cleanups.push(async () => {
      if (child.exitInfo) return;
      child.kill('SIGTERM');
      if (!(await Promise.race([child.exited, sleep(10_000).then(() => null)]))) {
        log('meridian ignored SIGTERM for 10 s; killing it');
        child.kill('SIGKILL');
        await Promise.race([child.exited, sleep(5_000)]);
      }
    });
    const ready = await waitFor('the meridian ready file', READY_TIMEOUT_MS, () => {
      if (child.exitInfo) throw new Error(`meridian exited before ready: ${JSON.stringify(child.exitInfo)}\n${readLog(logPath)}`);
      if (!fs.existsSync(readyFile)) return null;
      return JSON.parse(fs.readFileSync(readyFile, 'utf8')); // written atomically
    }, 20);
    if (!ready.http) throw new Error(`the ready file names no signaling listener ("http"): ${JSON.stringify(ready)}`);
    return { child, logPath, config, ready, base: `http://${ready.http}/` };
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

  /**
   * Runs `main` under a global timeout, cleans up, prints the pages' console and the node's
   * log on failure (or when `verboseEnv` is 1), and exits 0 only if every check passed.
   */
  async function run(main, { timeoutMs, verboseEnv }) {
    const globalTimer = setTimeout(async () => {
      record(`${tag} browser test finished in time`, false, `still running after ${timeoutMs} ms`);
      await cleanup();
      process.exit(1);
    }, timeoutMs);
    globalTimer.unref();
    for (const sig of ['SIGINT', 'SIGTERM']) {
      process.on(sig, async () => {
        await cleanup();
        process.exit(130);
      });
    }
    const started = Date.now();
    try {
      await main();
    } catch (e) {
      record(`${tag} browser test ran`, false, e.stack || String(e));
    }
    const failed = results.filter((r) => !r.ok).length;
    if (failed || !results.length || process.env[verboseEnv] === '1') {
      console.log(`---- page console (last 200 lines) ----\n${consoleLines.slice(-200).join('\n')}\n---- end ----`);
      if (state.node) console.log(`---- meridian output ----\n${readLog(state.node.logPath).slice(-20000)}\n---- end ----`);
      for (const [label, p] of state.logs) console.log(`---- ${label} ----\n${readLog(p).slice(-20000)}\n---- end ----`);
    }
    await cleanup();
    clearTimeout(globalTimer);
    const passed = results.length - failed;
    console.log(`${tag} browser: ${passed} passed, ${failed} failed in ${Math.round((Date.now() - started) / 1000)} s${failed ? ` (first failure: ${results.find((r) => !r.ok).name})` : ''}`);
    process.exit(failed || !results.length ? 1 : 0);
  }

  return { results, cleanups, consoleLines, state, log, record, startMeridian, run };
}
