// The player page (/): lists the node's devices, watches the one clicked in a low-latency
// player, and sends keyboard and gamepad input to it.
//
// URL parameters:
//   room=R     only list devices in room R
//   relay=1    media only through the node's TURN (iceTransportPolicy 'relay')
//   name=N     this player's identity (default: a random one)
//   token=T    an access token to use instead of asking the node for a dev token
//
// For tests and the console, `window.meridianPlayer` holds the client, the watch and the
// messages received.

import { Client, devToken, listRooms } from '../sdk/meridian.js';

const params = new URLSearchParams(location.search);
const ROOM_FILTER = params.get('room');
const RELAY = params.get('relay') === '1';
const FIXED_TOKEN = params.get('token');
const IDENTITY = params.get('name') || `player-${crypto.getRandomValues(new Uint32Array(1))[0].toString(16)}`;
const BASE = new URL('./', location.href).href; // the node (pages are served by it)
const REFRESH_MS = 2000;
const STATS_MS = 1000;
/** Analog sticks: values closer to 0 than this count as 0. */
const DEADZONE = 0.08;
/** Stick state is re-sent this often while off-center (input messages may be lost). */
const AXES_REFRESH_MS = 100;

const $ = (id) => document.getElementById(id);
const els = {
  state: $('state'),
  error: $('error'),
  devices: $('devices'),
  empty: $('empty'),
  stage: $('stage'),
  video: $('video'),
  stats: $('stats'),
  statsToggle: $('stats-toggle'),
  unmute: $('unmute'),
  deviceLog: $('device-log'),
};

/** What the page is doing, for tests and the console. */
const player = {
  identity: IDENTITY,
  relay: RELAY,
  client: null,
  watch: null,
  device: null,
  /** Control messages received from the device, in order: {seq, from, data}. */
  messages: [],
  lastStats: null,
  stats: () => player.client?.stats() ?? Promise.resolve(null),
};
window.meridianPlayer = player;

function showError(e) {
  els.error.textContent = e ? String(e.message ?? e) : '';
  if (e) console.warn('meridian:', e);
}

// ---------------------------------------------------------------- the device list

/**
 * One list entry per device, keyed by room and identity. Entries are updated in place and
 * only what changed is touched: replacing or moving elements under the pointer every refresh
 * would make clicks miss (a click needs its press and release on the same element).
 */
const entries = new Map();

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function setAttr(el, name, value) {
  if (el.getAttribute(name) !== value) el.setAttribute(name, value);
}

function span(className) {
  return Object.assign(document.createElement('span'), { className });
}

async function refreshDevices() {
  let devices;
  try {
    ({ devices } = await listRooms(BASE));
  } catch (e) {
    showError(`listing devices: ${e.message ?? e}`);
    return;
  }
  if (ROOM_FILTER) devices = devices.filter((d) => d.room === ROOM_FILTER);
  // Live devices first, then by room and name.
  devices.sort((a, b) => Number(b.live) - Number(a.live) || a.room.localeCompare(b.room) || a.device.localeCompare(b.device));
  const order = [];
  for (const d of devices) {
    const key = `${d.room}\u0000${d.device}`;
    let e = entries.get(key);
    if (!e) {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.device = d.device;
      button.dataset.room = d.room;
      button.addEventListener('click', () => watchDevice(d.room, d.device));
      e = { li, button, dot: span('dot'), name: span('name'), meta: span('meta') };
      e.name.textContent = d.device;
      button.append(e.dot, e.name, e.meta);
      li.append(button);
      entries.set(key, e);
    }
    e.seen = true;
    const watching = player.device?.room === d.room && player.device?.device === d.device;
    setAttr(e.button, 'data-live', String(d.live));
    setAttr(e.button, 'aria-pressed', String(watching));
    setAttr(e.dot, 'class', `dot${d.live ? ' live' : ''}`);
    const kbps = Math.round(d.bitrate_bps / 1000);
    setText(e.meta, `room ${d.room} · ${d.live ? 'live' : 'offline'} · ${d.viewers} watching · ${kbps} kbit/s`);
    order.push(e.li);
  }
  for (const [key, e] of entries) {
    if (e.seen) {
      e.seen = false;
    } else {
      e.li.remove();
      entries.delete(key);
    }
  }
  // Reorder only when the order changed.
  const now = [...els.devices.children];
  if (now.length !== order.length || now.some((li, i) => li !== order[i])) els.devices.append(...order);
  els.empty.classList.toggle('hidden', entries.size > 0);
}

// ---------------------------------------------------------------- watching

async function watchDevice(room, device) {
  showError(null);
  if (player.client) {
    releaseKeys();
    player.client.close('switched to another device');
  }
  player.device = { room, device };
  player.messages = [];
  els.deviceLog.replaceChildren();
  for (const e of entries.values()) e.button.setAttribute('aria-pressed', String(e.button.dataset.room === room && e.button.dataset.device === device));

  const client = new Client({
    url: BASE,
    role: 'player',
    iceTransportPolicy: RELAY ? 'relay' : 'all',
    // Called on every (re)connect, so a reconnect after the token expired gets a fresh one.
    token: async () => FIXED_TOKEN ?? (await devToken(BASE, { room, identity: IDENTITY, role: 'player' })).token,
    log: (...a) => console.debug('[meridian]', ...a),
  });
  player.client = client;
  player.watch = null;
  client.on('state', ({ state, reason, delayMs }) => {
    if (client !== player.client) return;
    let text = `${device}: ${state}`;
    if (state === 'reconnecting' && delayMs != null) text += ` in ${delayMs} ms (${reason})`;
    else if (state === 'closed' && reason) text += ` (${reason})`;
    els.state.textContent = text;
  });
  client.on('error', (e) => {
    if (client === player.client) showError(`${e.code}: ${e.message}`);
  });
  client.on('message', (m) => {
    player.messages.push(m);
    const li = document.createElement('li');
    li.value = m.seq;
    li.textContent = JSON.stringify(m.data);
    els.deviceLog.append(li);
    while (els.deviceLog.children.length > 200) els.deviceLog.firstChild.remove();
  });
  client.on('track', ({ kind }) => {
    if (kind === 'audio') els.unmute.classList.remove('hidden');
  });
  try {
    await client.start();
  } catch (e) {
    showError(e.code === 'dev_tokens_disabled' ? 'This node hands out no dev tokens: open this page with ?token=…' : e);
    return;
  }
  player.watch = await client.watch(device, { videoElement: els.video });
  els.stage.focus();
}

els.unmute.addEventListener('click', () => {
  els.video.muted = !els.video.muted;
  els.unmute.textContent = els.video.muted ? 'Unmute' : 'Mute';
  els.video.play().catch(() => {});
});

// ---------------------------------------------------------------- stats overlay

let statsVisible = true;
els.stats.classList.remove('hidden');
els.statsToggle.addEventListener('click', () => {
  statsVisible = !statsVisible;
  els.stats.classList.toggle('hidden', !statsVisible);
});

async function refreshStats() {
  const c = player.client;
  if (!c) return;
  const s = await c.stats().catch(() => null);
  if (!s || c !== player.client) return;
  player.lastStats = s;
  const size = s.frameWidth ? `${s.frameWidth}×${s.frameHeight}` : '–';
  const path = s.localCandidateType ? `${s.relayed ? 'relayed (TURN)' : 'direct'} · ${s.localCandidateType}→${s.remoteCandidateType}` : 'no path yet';
  const where = s.region ? `region ${s.region} · node ${s.node} · ${s.route?.reason ?? 'local'}${s.regions?.length ? ` (measured ${s.regions.map((r) => `${r.region} ${Math.round(r.rttMs)} ms`).join(', ')})` : ''}` : null;
  els.stats.textContent = [
    ...(where ? [where] : []),
    `${c.state} · RTT ${s.rttMs ?? '–'} ms`,
    `in ${s.bitrateKbps.in} kbit/s · out ${s.bitrateKbps.out} kbit/s`,
    `loss ${(s.packetLoss * 100).toFixed(1)} % (${s.packetsLost} total)`,
    path,
    `frames decoded ${s.framesDecoded} · ${s.framesPerSecond ?? '–'} fps · ${size}`,
    `jitter buffer ${s.jitterBufferMs ?? '–'} ms`,
  ].join('\n');
}

// ---------------------------------------------------------------- keyboard

/** Keys held down (by code), so they are released if focus leaves the player. */
const held = new Map();

/** {type:'key', down, key, code} plus the modifiers that are held (shift, ctrl, alt, meta: true). */
function keyMessage(e, down) {
  const m = { type: 'key', down, key: e.key, code: e.code };
  if (e.shiftKey) m.shift = true;
  if (e.ctrlKey) m.ctrl = true;
  if (e.altKey) m.alt = true;
  if (e.metaKey) m.meta = true;
  return m;
}

function sendControl(data) {
  player.client?.sendControl(data).catch((e) => showError(`control not delivered: ${e.message ?? e}`));
}

els.stage.addEventListener('keydown', (e) => {
  if (!player.client || e.key === 'Tab') return; // Tab still moves focus out
  e.preventDefault(); // no scrolling on arrows and space
  if (e.key === 'Escape') return els.stage.blur();
  if (e.repeat || held.has(e.code)) return; // the device sees one down and one up
  held.set(e.code, e);
  sendControl(keyMessage(e, true));
});

els.stage.addEventListener('keyup', (e) => {
  if (!player.client || !held.has(e.code)) return;
  e.preventDefault();
  held.delete(e.code);
  sendControl(keyMessage(e, false));
});

function releaseKeys() {
  for (const e of held.values()) sendControl(keyMessage(e, false));
  held.clear();
}
els.stage.addEventListener('blur', releaseKeys);

// ---------------------------------------------------------------- gamepads

/** Per gamepad index: last button states and when its stick state was last sent. */
const pads = new Map();
let polling = false;

function pollGamepads() {
  const list = navigator.getGamepads ? [...navigator.getGamepads()].filter(Boolean) : [];
  if (!list.length) {
    polling = false;
    return;
  }
  const now = performance.now();
  for (const gp of list) {
    let st = pads.get(gp.index);
    if (!st) {
      st = { buttons: gp.buttons.map(() => false), axes: null, sentAt: 0, restSends: 0 };
      pads.set(gp.index, st);
    }
    // Buttons: every press and release is a control message (reliable, in order).
    gp.buttons.forEach((b, i) => {
      if (b.pressed !== st.buttons[i]) {
        st.buttons[i] = b.pressed;
        if (player.client) sendControl({ type: 'button', pad: gp.index, button: i, pressed: b.pressed, value: b.value });
      }
    });
    // Sticks: latest-wins input messages, sent on change and refreshed while off-center.
    const axes = gp.axes.map((v) => (Math.abs(v) < DEADZONE ? 0 : Math.round(v * 1000) / 1000));
    const atRest = axes.every((v) => v === 0);
    const changed = !st.axes || axes.some((v, i) => Math.abs(v - st.axes[i]) >= 0.01);
    if (changed) st.restSends = 0;
    // At rest, the centered state goes out a few times (it may be lost), then nothing.
    const due = changed || (!atRest && now - st.sentAt >= AXES_REFRESH_MS) || (atRest && st.restSends < 3 && now - st.sentAt >= 30);
    if (due && player.client && player.client.sendInput({ type: 'axes', pad: gp.index, axes })) {
      st.axes = axes;
      st.sentAt = now;
      if (atRest) st.restSends++;
    }
  }
  requestAnimationFrame(pollGamepads);
}

function startPolling() {
  if (polling) return;
  polling = true;
  requestAnimationFrame(pollGamepads);
}
window.addEventListener('gamepadconnected', startPolling);
window.addEventListener('gamepaddisconnected', (e) => pads.delete(e.gamepad.index));

// ---------------------------------------------------------------- start

refreshDevices();
setInterval(refreshDevices, REFRESH_MS);
setInterval(refreshStats, STATS_MS);
