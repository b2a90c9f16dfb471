// The device page (/device): publishes a camera, a screen or a canvas test pattern into a room
// and shows the controls players send it.
//
// URL parameters:
//   room=R          the room (default "demo")
//   name=N          this device's identity (default "device-1")
//   source=camera|screen|canvas   what to publish (default camera; canvas when the camera
//                   cannot be opened)
//   audio=0         no microphone with the camera
//   simulcast=1     publish video in three simulcast layers
//   token=T         an access token to use instead of asking the node for a dev token
//
// For tests and the console, `window.meridianDevice` holds the client and what was received.

import { Client, devToken } from '../sdk/meridian.js';

const params = new URLSearchParams(location.search);
const ROOM = params.get('room') || 'demo';
const NAME = params.get('name') || 'device-1';
const SOURCE = params.get('source') || 'camera';
const AUDIO = params.get('audio') !== '0';
const SIMULCAST = params.get('simulcast') === '1';
const FIXED_TOKEN = params.get('token');
const BASE = new URL('./', location.href).href;
const LOG_LINES = 500;

const $ = (id) => document.getElementById(id);
const els = {
  name: $('name'),
  state: $('state'),
  error: $('error'),
  source: $('source'),
  preview: $('preview'),
  share: $('share'),
  players: $('players'),
  controls: $('controls'),
  input: $('input'),
  sayForm: $('say-form'),
  say: $('say'),
};

const device = {
  room: ROOM,
  name: NAME,
  client: null,
  source: null,
  /** Control messages received, in order: {seq, from, data}. */
  received: [],
  /** The latest input messages (bounded): {from, data}. */
  inputs: [],
  players: 0,
  publications: [],
};
window.meridianDevice = device;

function showError(e) {
  els.error.textContent = e ? String(e.message ?? e) : '';
  if (e) console.warn('meridian:', e);
}

// ---------------------------------------------------------------- media sources

/** An animated test pattern: colour bars, a moving block, a clock and a frame counter. */
function testPattern(fps = 30) {
  const canvas = document.createElement('canvas');
  canvas.width = 1280;
  canvas.height = 720;
  const g = canvas.getContext('2d');
  const bars = ['#c0c0c0', '#c0c000', '#00c0c0', '#00c000', '#c000c0', '#c00000', '#0000c0'];
  let frame = 0;
  setInterval(() => {
    const { width: w, height: h } = canvas;
    bars.forEach((c, i) => {
      g.fillStyle = c;
      g.fillRect((i * w) / bars.length, 0, w / bars.length + 1, h * 0.7);
    });
    g.fillStyle = '#111';
    g.fillRect(0, h * 0.7, w, h * 0.3);
    const x = ((frame * 8) % (w + 120)) - 120;
    g.fillStyle = '#fff';
    g.fillRect(x, h * 0.72, 120, h * 0.12);
    g.font = '48px ui-monospace, monospace';
    g.fillText(`${NAME}  ${new Date().toISOString().slice(11, 23)}  #${frame}`, 24, h * 0.95);
    frame++;
  }, 1000 / fps);
  return canvas;
}

async function openSource() {
  if (SOURCE === 'screen') {
    // Screen capture needs a user gesture.
    els.share.classList.remove('hidden');
    await new Promise((resolve) => els.share.addEventListener('click', resolve, { once: true }));
    els.share.classList.add('hidden');
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 30 }, audio: false });
    for (const t of stream.getVideoTracks()) t.contentHint = 'detail';
    return { kind: 'screen', stream };
  }
  if (SOURCE !== 'canvas') {
    try {
      const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video, audio: AUDIO });
      } catch (e) {
        if (!AUDIO) throw e;
        stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
      }
      for (const t of stream.getVideoTracks()) t.contentHint = 'motion';
      return { kind: 'camera', stream };
    } catch (e) {
      showError(`no camera (${e.name ?? e}): publishing a test pattern`);
    }
  }
  return { kind: 'canvas', stream: testPattern(30).captureStream(30) };
}

// ---------------------------------------------------------------- the client

/** A control message as one short line: keys and buttons in words, anything else as JSON. */
function describe(data) {
  if (data?.type === 'key') {
    const mods = ['ctrl', 'alt', 'shift', 'meta'].filter((m) => data[m]);
    return `key ${[...mods, data.code || data.key].join('+')} ${data.down ? 'down' : 'up'}`;
  }
  if (data?.type === 'button') return `pad ${data.pad} button ${data.button} ${data.pressed ? 'pressed' : 'released'}`;
  return JSON.stringify(data);
}

function updatePlayers() {
  const c = device.client;
  device.players = c ? [...c.participants.values()].filter((p) => p.role === 'player').length : 0;
  els.players.textContent = String(device.players);
}

async function main() {
  els.name.textContent = `${NAME} in ${ROOM}`;
  const client = new Client({
    url: BASE,
    role: 'device',
    token: async () => FIXED_TOKEN ?? (await devToken(BASE, { room: ROOM, identity: NAME, role: 'device' })).token,
    log: (...a) => console.debug('[meridian]', ...a),
  });
  device.client = client;
  client.on('state', ({ state, reason, delayMs }) => {
    let text = state;
    if (state === 'reconnecting' && delayMs != null) text += ` in ${delayMs} ms (${reason})`;
    else if (state === 'closed' && reason) text += ` (${reason})`;
    els.state.textContent = text;
  });
  client.on('error', (e) => showError(`${e.code}: ${e.message}`));
  client.on('participant', updatePlayers);
  client.on('joined', updatePlayers);
  client.on('message', (m) => {
    device.received.push(m);
    const li = document.createElement('li');
    li.value = m.seq;
    li.textContent = `${m.from}: ${describe(m.data)}`;
    els.controls.append(li); // newest last
    while (els.controls.children.length > LOG_LINES) els.controls.firstChild.remove();
    li.scrollIntoView({ block: 'nearest' });
  });
  client.on('input', (m) => {
    device.inputs.push(m);
    if (device.inputs.length > 100) device.inputs.shift();
    els.input.textContent = `${m.from}: ${JSON.stringify(m.data)}`;
  });
  client.on('gap', (g) => showError(`control messages ${g.from}–${g.to} were lost while disconnected`));

  const source = await openSource();
  device.source = source.kind;
  els.source.textContent = source.kind;
  els.preview.srcObject = source.stream;
  // Publishing before start() puts the tracks into the first offer.
  const published = client.publish(source.stream, { name: source.kind, simulcast: SIMULCAST });
  try {
    await client.start();
    device.publications = await published;
  } catch (e) {
    showError(e.code === 'dev_tokens_disabled' ? 'This node hands out no dev tokens: open this page with ?token=…' : e);
  }
}

els.sayForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = els.say.value.trim();
  if (!text || !device.client) return;
  els.say.value = '';
  device.client.sendControl({ type: 'text', text }).catch((err) => showError(err));
});

main().catch(showError);
