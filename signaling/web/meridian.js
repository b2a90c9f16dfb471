// meridian.js: the browser SDK for a meridian node (signaling protocol v1).
//
// An ES module with no dependencies and no build step; the node serves it at /sdk/meridian.js.
//
//   import { connect } from '/sdk/meridian.js';
//   const client = await connect({ url: 'https://relay.example', token, role: 'player' });
//   const watch = await client.watch('device-1', { videoElement: document.querySelector('video') });
//   await client.sendControl({ type: 'key', code: 'Space', down: true });
//
// The model (docs/signaling.md): one WebSocket for signaling and ONE RTCPeerConnection per
// client. The client always offers and the node (ICE-lite) only answers, so there is never
// glare; every change of transceivers is followed by a new offer, and offers are queued so
// only one is in flight. Two data channels are created before the first offer: "controls"
// (ordered, reliable, sequenced and acknowledged by the node) and "input" (unordered, no
// retransmissions, latest-wins).
//
// When the WebSocket closes or ICE fails the client reconnects by itself (exponential backoff
// with jitter), joins again with `resume_from` (the last room sequence number it saw, so the
// node replays what was missed), publishes its tracks again, subscribes again to what it was
// watching, and resends control messages the node has not acknowledged, with their original
// ids (the node drops duplicates and acknowledges them again).

export const PROTOCOL_VERSION = 1;

const REQUEST_TIMEOUT_MS = 10_000;
const JOIN_TIMEOUT_MS = 10_000;
/** After the answer, ICE+DTLS must connect within this or the client reconnects. */
const MEDIA_CONNECT_TIMEOUT_MS = 20_000;
/** An ICE 'disconnected' state that lasts this long is treated as a failure. */
const ICE_DISCONNECTED_GRACE_MS = 5_000;
/** Signaling keepalive: a ping this often; no pong within REQUEST_TIMEOUT_MS means dead. */
const PING_INTERVAL_MS = 20_000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;
const BACKOFF_JITTER = 0.3;
/** A connection that stayed up this long resets the backoff to its minimum. */
const STABLE_AFTER_MS = 10_000;
/** Consecutive 4001 (unauthorized) closes after which a token function is not retried. */
const MAX_UNAUTHORIZED = 3;
/** stats(): rates are measured over at least this long. */
const RATE_MIN_INTERVAL_MS = 500;
/** Measuring one region (STUN, then the HTTP fallback) gives up after this long. */
const MEASURE_TIMEOUT_MS = 2_000;
/** A reconnect measures again when the last measurement is older than this. */
const MEASURE_MAX_AGE_MS = 60_000;
/** A node that failed this client is skipped for this long when choosing where to reconnect. */
const FAILED_NODE_TTL_MS = 30_000;
/** A reconnect waits this long for a fresh token before re-joining with the last one. */
const TOKEN_WAIT_MS = 2_000;
/** The first reconnect after a connection that worked waits 0 to this (spread over clients). */
const FIRST_RETRY_MAX_MS = 100;
/** A join follows at most this many redirects (the node closes a longer chain with 4011). */
const MAX_REDIRECTS = 3;

/** WebSocket close codes the node uses (docs/signaling.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  TOO_BIG: 1009,
  UNAUTHORIZED: 4001,
  JOIN_REQUIRED: 4002,
  UNSUPPORTED_VERSION: 4005,
  RATE_LIMITED: 4008,
  MEDIA_FAILED: 4010,
  REDIRECT_LOOP: 4011,
  REDIRECT: 4302,
});

/** An error from the node: `code` is the documented error code (or a close code). */
export class MeridianError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'MeridianError';
    this.code = code;
    Object.assign(this, extra);
  }
}

// ------------------------------------------------------------------ helpers

/** The node's base URL (http(s), ending in '/') from what the caller gave. */
function baseUrl(url) {
  const u = new URL(url ?? globalThis.location?.href ?? 'http://127.0.0.1:7880/', globalThis.location?.href);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  if (u.protocol === 'wss:') u.protocol = 'https:';
  // A URL that points at the WebSocket endpoint itself: strip it back to the base.
  u.pathname = u.pathname.replace(/v1\/ws\/?$/, '');
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  u.search = '';
  u.hash = '';
  return u;
}

function wsUrl(base) {
  const u = new URL('v1/ws', base);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

// ---------------------------------------------------------------- measuring regions

/** `host:port` (or `[v6]:port`) → a `stun:` URL. */
function stunUrl(endpoint) {
  if (typeof endpoint !== 'string' || !/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(endpoint)) return null;
  return `stun:${endpoint}`;
}

/**
 * The round trip to a STUN server, in ms: the time an RTCPeerConnection takes from starting
 * to gather to its server-reflexive candidate (one Binding request and its response). Null
 * when the browser yields none within `timeoutMs` (it drops a server-reflexive candidate equal
 * to a host candidate, as on one machine without NAT).
 */
function stunRtt(endpoint, timeoutMs) {
  const url = stunUrl(endpoint);
  if (!url || typeof RTCPeerConnection === 'undefined') return Promise.resolve(null);
  return new Promise((resolve) => {
    let pc;
    try {
      pc = new RTCPeerConnection({ iceServers: [{ urls: url }] });
    } catch {
      resolve(null);
      return;
    }
    let t0 = 0;
    let done = false;
    const finish = (v) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      pc.onicecandidate = null;
      pc.close();
      resolve(v);
    };
    const timer = setTimeout(() => finish(null), timeoutMs);
    pc.onicecandidate = (e) => {
      if (!e.candidate) finish(null); // gathering ended without one
      else if (e.candidate.type === 'srflx') finish(performance.now() - t0);
    };
    pc.createDataChannel('probe');
    pc.createOffer()
      .then((offer) => {
        t0 = performance.now();
        return pc.setLocalDescription(offer);
      })
      .catch(() => finish(null));
  });
}

/** The lowest of three `GET /v1/ping` round trips after a warm-up (TCP/TLS set-up not counted). */
async function httpRtt(signaling, timeoutMs) {
  let url;
  try {
    url = new URL('v1/ping', baseUrl(signaling)).href;
  } catch {
    return null;
  }
  const deadline = performance.now() + timeoutMs;
  const once = async () => {
    const left = deadline - performance.now();
    if (left <= 0) throw new Error('timeout');
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), left);
    const t0 = performance.now();
    try {
      const r = await fetch(url, { cache: 'no-store', mode: 'cors', signal: ctl.signal });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      return performance.now() - t0;
    } finally {
      clearTimeout(t);
    }
  };
  try {
    await once();
    let best = Infinity;
    for (let i = 0; i < 3; i++) best = Math.min(best, await once());
    return best;
  } catch {
    return null;
  }
}

/**
 * Measures the RTT to every healthy region that the node at `url` lists (`GET /v1/regions`):
 * STUN to the region's first node (the media path), or timing `GET /v1/ping` on its
 * signaling URL where the browser yields no server-reflexive candidate. Resolves to
 * `[{region, rttMs, method: 'stun'|'http', node, signaling}]` (`signaling`: the URL of the
 * region's node to join), nearest first; regions that answered
 * neither are left out. With fewer than two regions listed there is nothing to choose and it
 * resolves to [] without measuring.
 */
export async function measureRegions(url, { timeoutMs = MEASURE_TIMEOUT_MS } = {}) {
  const res = await fetch(new URL('v1/regions', baseUrl(url)), { cache: 'no-store' });
  if (!res.ok) throw new MeridianError('http', `GET /v1/regions: HTTP ${res.status}`, { status: res.status });
  const body = await res.json();
  const regions = Array.isArray(body?.regions) ? body.regions : [];
  // One region is no choice; do not spend a measurement on it.
  if (regions.length < 2) return [];
  const one = async (r) => {
    const node = Array.isArray(r?.nodes) ? r.nodes[0] : null;
    if (typeof r?.region !== 'string' || !node) return null;
    const stun = Array.isArray(node.stun) ? node.stun[0] : null;
    let rtt = stun ? await stunRtt(stun, timeoutMs) : null;
    let method = 'stun';
    if (rtt == null && typeof node.signaling === 'string') {
      rtt = await httpRtt(node.signaling, timeoutMs);
      method = 'http';
    }
    if (rtt == null) return null;
    const best = bestNode(r.nodes);
    return {
      region: r.region,
      rttMs: Math.round(rtt * 10) / 10,
      method,
      node: best?.id ?? node.id ?? null,
      signaling: typeof best?.signaling === 'string' ? best.signaling : null,
    };
  };
  const measured = (await Promise.all(regions.map(one))).filter(Boolean);
  measured.sort((a, b) => a.rttMs - b.rttMs);
  return measured;
}

/** The node of a region to join: the least loaded one not overloaded (the node decides in the end). */
function bestNode(nodes) {
  let best = null;
  for (const n of nodes) {
    if (!n || n.overloaded === true || typeof n.signaling !== 'string') continue;
    if (!best || (n.sessions ?? 0) < (best.sessions ?? 0)) best = n;
  }
  return best;
}

/** Exponential backoff with ±30 % jitter: 250 ms doubling up to 10 s. */
export function backoffDelay(attempt) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(attempt, 16));
  const jitter = 1 + (Math.random() * 2 - 1) * BACKOFF_JITTER;
  return Math.round(base * jitter);
}

/** Lists the node's devices: GET /v1/rooms. */
export async function listRooms(url) {
  const r = await fetch(new URL('v1/rooms', baseUrl(url)), { cache: 'no-store' });
  if (!r.ok) throw await httpError(r);
  return r.json();
}

/**
 * A development token from GET /v1/dev-token (only nodes with signaling.dev_tokens on hand
 * these out). Resolves to {token, room, identity, role, expires}.
 */
export async function devToken(url, { room, identity, role } = {}) {
  const u = new URL('v1/dev-token', baseUrl(url));
  if (room != null) u.searchParams.set('room', room);
  if (identity != null) u.searchParams.set('identity', identity);
  if (role != null) u.searchParams.set('role', role);
  const r = await fetch(u, { cache: 'no-store' });
  if (!r.ok) throw await httpError(r);
  return r.json();
}

async function httpError(r) {
  let code = `http_${r.status}`;
  let message = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    if (body?.error?.code) code = body.error.code;
    if (body?.error?.message) message = body.error.message;
  } catch {
    // not JSON: keep the status line
  }
  return new MeridianError(code, message, { status: r.status });
}

/** Sets the receiver-side low-latency hints where the browser has them. */
function lowLatency(receiver) {
  try {
    if ('jitterBufferTarget' in receiver) receiver.jitterBufferTarget = 0; // ms (standard)
  } catch {
    // older browsers throw on 0
  }
  try {
    if ('playoutDelayHint' in receiver) receiver.playoutDelayHint = 0; // s (Chromium)
  } catch {
    // not supported
  }
}

/** A MediaStream from a stream, a track, or a list of tracks. */
function toTracks(source) {
  if (!source) return [];
  if (typeof MediaStream !== 'undefined' && source instanceof MediaStream) return source.getTracks();
  if (Array.isArray(source)) return source;
  return [source];
}

// ------------------------------------------------------------------ the client

/**
 * A client of one meridian node, in one room. An EventTarget; every event's `detail` carries
 * its data, and `client.on(type, fn)` calls `fn(detail)`.
 *
 * Events:
 *   state        {state, reason?, delayMs?}  'connecting' | 'joined' | 'connected' |
 *                'reconnecting' | 'closed'
 *   joined       the `joined` message (again after each reconnect)
 *   reconnecting {reason, node, region}      the connection that worked was lost (once per
 *                outage): the client re-homes on the next region of its ranking by itself
 *   resumed      {node, region, downMs}      media flows again after `reconnecting`; the
 *                session resumed (messages replayed, watches and publications restored)
 *   measured     {regions}                   the RTT to each region, before a join ranks them
 *   redirect     {url, node, region, reason, rttMs} the session belongs on another node; the
 *                client joins there by itself
 *   participant  {action: 'joined'|'left', participant: {id, identity, role}}
 *   track        {identity, kind, track (MediaStreamTrack), info, stream} a remote track arrived
 *   published    {track, mid, kind}          one of our tracks is live under id `track`
 *   track_published / track_unpublished / track_muted / track_stalled / layer_changed /
 *   subscribed / unsubscribed                 the node's events, as sent
 *   message      {seq, from, data}           a control message (sequenced, reliable)
 *   input        {from, data}                an input message (unsequenced, lossy)
 *   gap          {from, to}                  messages the node no longer had to replay
 *   error        MeridianError               an asynchronous error (requests reject instead)
 */
export class Client extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} [opts.url]  the node's base URL (http(s)://host:port/), default: this page's
   * @param {string|function(): (string|Promise<string>)} opts.token  an access token, or a
   *        function returning one (called on every (re)connect, so it can fetch a fresh token)
   * @param {'device'|'player'|'viewer'} [opts.role]  what the token says (checked on join)
   * @param {'all'|'relay'} [opts.iceTransportPolicy]  'relay': media only through the node's TURN
   * @param {number} [opts.resumeFrom]  the last room sequence number seen (e.g. before a reload)
   * @param {boolean} [opts.reconnect]  default true
   * @param {boolean} [opts.measure]  default true: in a cluster, measure the RTT to each region
   *        before joining and let the node place the session on the nearest (following its
   *        redirect); false joins the node `url` names
   * @param {Array<{region: string, rttMs: number}>} [opts.regions]  a ranking measured
   *        elsewhere, sent as is instead of measuring
   * @param {function(...any)} [opts.log]  debug log
   */
  constructor(opts = {}) {
    super();
    if (!opts.token) throw new TypeError('connect: a token (or a function returning one) is required');
    /** The node the client was given; every fresh connection starts here. */
    this.entryBase = baseUrl(opts.url);
    /** The node the session is on (after redirects). */
    this.base = this.entryBase;
    this.wsUrl = wsUrl(this.base);
    this._measure = opts.measure !== false;
    /** The last measurement: [{region, rttMs, method, node}], nearest first. */
    this.regions = Array.isArray(opts.regions) ? opts.regions.filter((r) => typeof r?.region === 'string' && Number.isFinite(r?.rttMs)) : null;
    // A ranking given by the application is used as is; otherwise measured before the first
    // join and again at a reconnect once older than MEASURE_MAX_AGE_MS.
    this._measure = this._measure && !this.regions;
    this._measuredAt = null;
    /** Where the node placed the session: {node, region, reason, rttMs, redirects}. */
    this.placement = null;
    this._token = opts.token;
    this._wantRole = opts.role ?? null;
    this._policy = opts.iceTransportPolicy === 'relay' ? 'relay' : 'all';
    this._reconnect = opts.reconnect !== false;
    this._log = typeof opts.log === 'function' ? opts.log : () => {};

    /** 'idle' | 'connecting' | 'joined' | 'connected' | 'reconnecting' | 'closed' */
    this.state = 'idle';
    this.identity = null;
    this.participantId = null;
    this.role = null;
    this.room = null;
    this.iceServers = [];
    /** Other participants in the room, by participant id. */
    this.participants = new Map();
    /** Tracks published in the room (by others), by track id. */
    this.tracks = new Map();

    // One "generation" per connection attempt: callbacks of an older one are ignored.
    this._gen = 0;
    this._ws = null;
    this._pc = null;
    this._controls = null;
    this._input = null;
    this._timers = new Set();
    this._reqSeq = 0;
    this._pending = new Map(); // req -> {resolve, reject, timer}
    this._attempt = 0;
    this._unauthorized = 0;
    this._connectedAt = 0;
    /** Signaling base URLs (href) that failed this client → when (performance.now()). */
    this._failed = new Map();
    /** The token of the last join (re-used for a re-home while the token source is away). */
    this._lastToken = null;
    /** When media last stopped on a connection that had it (for `reconnecting`/`resumed`). */
    this._lostAt = null;
    this._everJoined = false;
    this._closed = false;

    // Negotiation queue: at most one offer in flight; requests made meanwhile coalesce.
    this._negWanted = false;
    this._negLoop = null;

    /** @type {Publication[]} */
    this._publications = [];
    /** @type {Map<string, Watch>} by publisher identity */
    this._watches = new Map();

    // Control messages. Ids must be unique per identity for as long as the node remembers
    // them (it drops a repeated (identity, id) as a resend), also across page reloads that
    // reuse an identity: so they start from the clock, not from 1.
    this._nextMsgId = Date.now() * 1000;
    this._unacked = new Map(); // id -> {id, text, resolve, reject}
    /** The highest room sequence number received; resumed from after a reconnect. */
    this.lastSeq = Number.isInteger(opts.resumeFrom) ? opts.resumeFrom : null;
    this._firstAckSeq = null;

    this.ready = new Promise((resolve, reject) => {
      this._readyResolve = resolve;
      this._readyReject = reject;
    });
    this.ready.catch(() => {}); // an unobserved failure is reported through 'state' too
  }

  /** Subscribes `fn(detail, event)` to `type`; returns a function that unsubscribes. */
  on(type, fn) {
    const h = (e) => fn(e.detail, e);
    this.addEventListener(type, h);
    return () => this.removeEventListener(type, h);
  }

  /** Connects (once); resolves when the node accepted the join. */
  start() {
    if (this.state === 'idle') this._open();
    return this.ready;
  }

  /** Leaves the room and stops reconnecting. */
  close(reason = 'closed by the application') {
    if (this._closed) return;
    this._closed = true;
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      try {
        ws.send(JSON.stringify({ type: 'leave' }));
      } catch {
        // closing anyway
      }
    }
    this._gen++;
    this._teardown(reason);
    for (const m of this._unacked.values()) m.reject(new MeridianError('closed', reason));
    this._unacked.clear();
    for (const p of this._publications) p._reject?.(new MeridianError('closed', reason));
    this._readyReject(new MeridianError('closed', reason));
    this._setState('closed', { reason });
  }

  /** GET /v1/rooms on this client's node. */
  listRooms() {
    return listRooms(this.base);
  }

  // ---------------------------------------------------------------- publishing (devices)

  /**
   * Publishes a MediaStream (or tracks). Resolves to the Publications once the node has
   * announced them (each gets its track id). They are published again after a reconnect.
   * @param {MediaStream|MediaStreamTrack|MediaStreamTrack[]} source
   * @param {{name?: string, simulcast?: boolean}} [opts]
   */
  async publish(source, opts = {}) {
    const role = this.role ?? this._wantRole;
    if (role && role !== 'device') throw new MeridianError('forbidden', `a ${role} may not publish`);
    const stream = typeof MediaStream !== 'undefined' && source instanceof MediaStream ? source : null;
    const tracks = toTracks(source);
    if (!tracks.length) throw new TypeError('publish: no tracks');
    const pubs = tracks.map((t) => new Publication(this, t, stream, opts));
    this._publications.push(...pubs);
    if (this._pc) {
      const gen = this._gen;
      for (const p of pubs) this._addPublication(p);
      this._negotiate().catch((e) => this._negotiationFailed(gen, e));
    }
    return Promise.all(pubs.map((p) => p.ready));
  }

  /** Publishes the camera (and microphone, unless `audio: false`). */
  async publishCamera({ video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } }, audio = true, name = 'camera', simulcast = false } = {}) {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video, audio });
    } catch (e) {
      if (!audio) throw e;
      stream = await navigator.mediaDevices.getUserMedia({ video, audio: false }); // no microphone
    }
    for (const t of stream.getVideoTracks()) if ('contentHint' in t) t.contentHint = 'motion';
    await this.publish(stream, { name, simulcast });
    return stream;
  }

  /** Publishes the screen (the browser asks the user which one; needs a user gesture). */
  async publishScreen({ frameRate = 30, audio = false, name = 'screen', simulcast = false } = {}) {
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate }, audio });
    // Screens are mostly text: keep it sharp rather than smooth.
    for (const t of stream.getVideoTracks()) if ('contentHint' in t) t.contentHint = 'detail';
    await this.publish(stream, { name, simulcast });
    return stream;
  }

  /** Publishes what is drawn on a canvas, at `fps` frames per second. */
  async publishCanvas(canvas, fps = 30, { name = 'canvas', simulcast = false } = {}) {
    const stream = canvas.captureStream(fps);
    await this.publish(stream, { name, simulcast });
    return stream;
  }

  /** Stops publishing one publication (or all when none is given). */
  async unpublish(pub) {
    const list = pub ? [pub] : [...this._publications];
    for (const p of list) {
      this._publications = this._publications.filter((x) => x !== p);
      if (p.trackId) this._send({ type: 'unpublish', track: p.trackId });
      if (p.transceiver && this._pc) {
        try {
          p.transceiver.direction = 'inactive';
          await p.transceiver.sender.replaceTrack(null);
        } catch {
          // the connection is gone
        }
      }
      p.transceiver = null;
    }
    if (this._pc) await this._negotiate();
  }

  /** Tells the room a publication is muted (the node stops forwarding it) or not. */
  async setMuted(pub, muted) {
    pub.muted = !!muted;
    pub.track.enabled = !muted;
    if (pub.trackId) await this._request({ type: 'mute', track: pub.trackId, muted: !!muted });
  }

  // ---------------------------------------------------------------- watching (players, viewers)

  /**
   * Receives a device's video (and audio, if it publishes any). `target` is the device's
   * identity or one of its track ids. The watch lasts across reconnects of either side: when
   * the device publishes again its new tracks are picked up.
   * @param {string} target
   * @param {{layer?: string, maxWidth?: number, maxHeight?: number, videoElement?: HTMLVideoElement,
   *          audio?: boolean, video?: boolean}} [opts]
   * @returns {Promise<Watch>}
   */
  async watch(target, opts = {}) {
    const info = this.tracks.get(target);
    const identity = info ? info.publisher : target;
    let w = this._watches.get(identity);
    if (!w) {
      w = new Watch(this, identity, opts);
      this._watches.set(identity, w);
    } else {
      w._setOptions(opts);
    }
    w._attach();
    this._syncWatch(w);
    return w;
  }

  // ---------------------------------------------------------------- data channels

  /**
   * Sends a control message (reliable, ordered, sequenced by the node) to the room's device
   * (from a player) or to its players (from a device). Resolves to {id, seq} when the node
   * acknowledges it. Until then it is kept and, after a reconnect, sent again with the same
   * id. Rejects on an error from the node or when the client is closed.
   */
  sendControl(data) {
    if (this._closed) return Promise.reject(new MeridianError('closed', 'the client is closed'));
    const id = this._nextMsgId++;
    const text = JSON.stringify({ id, data });
    return new Promise((resolve, reject) => {
      this._unacked.set(id, { id, text, resolve, reject });
      const ch = this._controls;
      // When the channel is not open, the message goes out when it (re)opens.
      if (ch && ch.readyState === 'open') ch.send(text);
    });
  }

  /**
   * Sends an input message: unordered, never retransmitted, not sequenced; for state that a
   * newer message replaces (analog sticks, pointer position). Returns false when it could
   * not be sent now (it is dropped, not queued).
   */
  sendInput(data) {
    const ch = this._input;
    if (!ch || ch.readyState !== 'open') return false;
    // Under congestion, dropping is better than queueing stale input behind fresh input.
    if (ch.bufferedAmount > 64 * 1024) return false;
    ch.send(JSON.stringify({ data }));
    return true;
  }

  /** Control messages sent but not acknowledged yet. */
  get unackedCount() {
    return this._unacked.size;
  }

  // ---------------------------------------------------------------- statistics

  /**
   * Connection statistics from RTCPeerConnection.getStats():
   *   rttMs, bitrateKbps {in, out} (since the previous call), packetLoss (fraction lost since
   *   the previous call), packetsLost (total), relayed (the selected candidate pair goes
   *   through a TURN relay), localCandidateType, remoteCandidateType, framesDecoded,
   *   framesDropped, framesPerSecond, frameWidth, frameHeight, jitterBufferMs, framesSent,
   *   connectionState; and where the session is: region, node, route {reason, rttMs,
   *   redirects} (how the node placed it) and regions (the last measurement,
   *   [{region, rttMs, method}], nearest first, or null when none was made).
   */
  async stats() {
    const pc = this._pc;
    const out = {
      state: this.state,
      connectionState: pc?.connectionState ?? 'closed',
      rttMs: null,
      bitrateKbps: { in: 0, out: 0 },
      packetLoss: 0,
      packetsLost: 0,
      relayed: false,
      localCandidateType: null,
      remoteCandidateType: null,
      framesDecoded: 0,
      framesDropped: 0,
      framesPerSecond: null,
      frameWidth: null,
      frameHeight: null,
      jitterBufferMs: null,
      framesSent: 0,
      region: this.placement?.region ?? null,
      node: this.placement?.node ?? null,
      route: this.placement ? { reason: this.placement.reason, rttMs: this.placement.rttMs, redirects: this.placement.redirects } : null,
      regions: this.regions ? this.regions.map((r) => ({ region: r.region, rttMs: r.rttMs, method: r.method ?? 'given' })) : null,
    };
    if (!pc) return out;
    const report = await pc.getStats();
    let transport = null;
    let pair = null;
    let received = 0;
    let jbDelay = 0;
    let jbCount = 0;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) transport = s;
      if (s.type === 'inbound-rtp') {
        out.packetsLost += s.packetsLost ?? 0;
        received += s.packetsReceived ?? 0;
        if (s.kind === 'video') {
          out.framesDecoded += s.framesDecoded ?? 0;
          out.framesDropped += s.framesDropped ?? 0;
          if (s.framesPerSecond != null) out.framesPerSecond = s.framesPerSecond;
          if (s.frameWidth != null) out.frameWidth = s.frameWidth;
          if (s.frameHeight != null) out.frameHeight = s.frameHeight;
          jbDelay += s.jitterBufferDelay ?? 0;
          jbCount += s.jitterBufferEmittedCount ?? 0;
        }
      }
      if (s.type === 'outbound-rtp' && s.kind === 'video') out.framesSent += s.framesSent ?? 0;
    });
    if (transport) pair = report.get(transport.selectedCandidatePairId);
    if (!pair) {
      // Browsers without transport.selectedCandidatePairId mark the pair itself.
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
      });
    }
    if (jbCount > 0) out.jitterBufferMs = Math.round((jbDelay / jbCount) * 1000);
    let bytesIn = 0;
    let bytesOut = 0;
    if (pair) {
      const local = report.get(pair.localCandidateId);
      const remote = report.get(pair.remoteCandidateId);
      out.localCandidateType = local?.candidateType ?? null;
      out.remoteCandidateType = remote?.candidateType ?? null;
      out.relayed = out.localCandidateType === 'relay' || out.remoteCandidateType === 'relay';
      if (pair.currentRoundTripTime != null) out.rttMs = Math.round(pair.currentRoundTripTime * 1000);
      bytesIn = pair.bytesReceived ?? 0;
      bytesOut = pair.bytesSent ?? 0;
    }
    // The transport's byte counters survive a change of the selected pair; a pair's do not.
    if (transport?.bytesReceived != null) {
      bytesIn = transport.bytesReceived;
      bytesOut = transport.bytesSent ?? bytesOut;
    }
    // Rates over the time since the previous sample of this connection. Samples closer than
    // RATE_MIN_INTERVAL_MS reuse the last rates: the browser caches getStats() briefly, so two
    // quick calls (an overlay and an application, say) would otherwise measure zero.
    const now = performance.now();
    const prev = this._prevStats;
    if (prev && prev.pc === pc && now - prev.at < RATE_MIN_INTERVAL_MS) {
      out.bitrateKbps = { ...prev.rates.bitrateKbps };
      out.packetLoss = prev.rates.packetLoss;
      return out;
    }
    if (prev && prev.pc === pc) {
      const dt = (now - prev.at) / 1000;
      out.bitrateKbps = {
        in: Math.max(0, Math.round(((bytesIn - prev.bytesIn) * 8) / dt / 1000)),
        out: Math.max(0, Math.round(((bytesOut - prev.bytesOut) * 8) / dt / 1000)),
      };
      const dLost = Math.max(0, out.packetsLost - prev.lost);
      const dRecv = Math.max(0, received - prev.received);
      out.packetLoss = dLost + dRecv > 0 ? dLost / (dLost + dRecv) : 0;
    }
    const rates = { bitrateKbps: { ...out.bitrateKbps }, packetLoss: out.packetLoss };
    this._prevStats = { pc, at: now, bytesIn, bytesOut, lost: out.packetsLost, received, rates };
    return out;
  }

  // ================================================================ internals

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, extra = {}) {
    if (this.state === state && !extra.reason) return;
    this.state = state;
    this._log('state', state, extra);
    this._emit('state', { state, ...extra });
  }

  _setTimer(fn, ms) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _clearTimer(t) {
    if (t == null) return;
    clearTimeout(t);
    this._timers.delete(t);
  }

  /** Sends a message without waiting for its reply. */
  _send(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  /** Sends a request and resolves to its reply (the message with the same `req`). */
  _request(msg, timeoutMs = REQUEST_TIMEOUT_MS) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new MeridianError('not_connected', 'the signaling connection is not open'));
    }
    const req = ++this._reqSeq;
    return new Promise((resolve, reject) => {
      const timer = this._setTimer(() => {
        this._pending.delete(req);
        reject(new MeridianError('timeout', `no reply to ${msg.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(req, { resolve, reject, timer, type: msg.type });
      ws.send(JSON.stringify({ ...msg, req }));
    });
  }

  // ---------------------------------------------------------------- connection lifecycle

  /**
   * Opens a connection: after measuring, to the best-ranked region's node (or the entry node
   * when there is no ranking with a node URL), or, following a `redirect`, to the node it
   * names with the same token.
   */
  async _open(redirect = null) {
    if (this._closed) return;
    const gen = ++this._gen;
    if (!redirect) this._setState(this._everJoined ? 'reconnecting' : 'connecting');
    const stale = this._measuredAt == null || performance.now() - this._measuredAt > MEASURE_MAX_AGE_MS;
    if (!redirect && this._measure && stale) {
      try {
        const measured = await measureRegions(this.entryBase);
        // Nothing measured (one region, or none answered): join where we are, unranked.
        if (measured.length >= 1) {
          this.regions = measured;
          this._measuredAt = performance.now();
          this._emit('measured', { regions: measured });
          this._log('measured', measured);
        }
      } catch (e) {
        this._log(`measuring regions failed (joining ${this.entryBase.host} unranked): ${e.message ?? e}`);
      }
      if (gen !== this._gen || this._closed) return;
    }
    if (!redirect) {
      this.base = this._nextBase();
      this.wsUrl = wsUrl(this.base);
    }
    const redirects = redirect?.redirects ?? 0;
    let token;
    let tokenError = null;
    try {
      if (redirect) token = redirect.token;
      else if (typeof this._token !== 'function') token = this._token;
      else if (!this._lastToken) token = await this._token();
      // With a token in hand, a token source that hangs (its host died) does not hold up
      // the re-home for long.
      else token = await Promise.race([this._token(), new Promise((_, rej) => setTimeout(() => rej(new Error(`no token within ${TOKEN_WAIT_MS} ms`)), TOKEN_WAIT_MS))]);
    } catch (e) {
      if (gen !== this._gen) return;
      tokenError = e;
      // The token source is away (it may have been served by the node that just died): the
      // last token, while it is valid for a while yet, gets us re-homed meanwhile.
      if (this._lastToken && this.expires && this.expires * 1000 > Date.now() + 5_000) {
        this._log(`could not get a fresh token (${e.message ?? e}); re-joining with the last one`);
        token = this._lastToken;
      }
    }
    if (token == null) {
      if (gen !== this._gen) return;
      const e = tokenError ?? new Error('the token function returned nothing');
      // Refused (an HTTP 4xx, e.g. dev tokens turned off): asking again will not help.
      if (e?.status >= 400 && e.status < 500) return this._fatal(e instanceof MeridianError ? e : new MeridianError('token', String(e.message ?? e)));
      this._retry(gen, `could not get a token: ${e.message ?? e}`);
      return;
    }
    if (gen !== this._gen || this._closed) return;
    let ws;
    try {
      ws = new WebSocket(this.wsUrl);
    } catch (e) {
      this._retry(gen, `WebSocket: ${e.message ?? e}`);
      return;
    }
    this._ws = ws;
    const joinTimer = this._setTimer(() => {
      if (gen === this._gen) this._retry(gen, `no joined reply within ${JOIN_TIMEOUT_MS} ms`);
    }, JOIN_TIMEOUT_MS);
    ws.onopen = () => {
      if (gen !== this._gen) return;
      const join = { type: 'join', token, v: PROTOCOL_VERSION };
      // Without the regions whose node failed us: a node that has not yet seen the death
      // must not send us back there.
      const ranked = (this.regions ?? []).filter((r) => !this._hasFailed(r.signaling));
      if (ranked.length) join.regions = ranked.slice(0, 32).map((r) => ({ region: r.region, rtt_ms: r.rttMs }));
      if (redirects) join.redirects = redirects;
      // Resume after the last message received; a client that has received none but has
      // sent some resumes from just before its first acknowledged one (its sequence number
      // shows where the room was while we were connected). With neither, nothing is replayed.
      if (this.lastSeq != null) join.resume_from = this.lastSeq;
      else if (this._firstAckSeq != null) join.resume_from = Math.max(0, this._firstAckSeq - 1);
      this._request(join, JOIN_TIMEOUT_MS)
        .then((reply) => {
          this._clearTimer(joinTimer);
          if (gen !== this._gen) return;
          if (reply.type === 'redirect') return this._followRedirect(gen, reply, token, redirects);
          this._lastToken = token;
          this._onJoined(gen, reply);
        })
        .catch(() => {
          // a close or timeout is handled by onclose / joinTimer
        });
    };
    ws.onmessage = (e) => {
      if (gen !== this._gen) return;
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      this._onSignal(gen, msg);
    };
    ws.onerror = () => {}; // a close event follows
    ws.onclose = (e) => {
      this._clearTimer(joinTimer);
      if (gen !== this._gen) return;
      this._onWsClose(gen, e);
    };
  }

  /** Whether the node at `url` failed this client within FAILED_NODE_TTL_MS. */
  _hasFailed(url) {
    if (!url) return false;
    let href;
    try {
      href = baseUrl(url).href;
    } catch {
      return false;
    }
    const at = this._failed.get(href);
    return at != null && performance.now() - at < FAILED_NODE_TTL_MS;
  }

  /**
   * Where to (re)connect: the best-ranked region's node that has not failed this client (it
   * answers `joined` without a redirect hop), else the entry node when it has not failed,
   * else, everything having failed, the known nodes in turn.
   */
  _nextBase() {
    const all = [];
    for (const r of this.regions ?? []) {
      try {
        if (r.signaling) all.push(baseUrl(r.signaling));
      } catch {
        // not a URL: skipped
      }
    }
    all.push(this.entryBase);
    const fresh = all.find((b) => !this._hasFailed(b.href));
    return fresh ?? all[this._attempt % all.length];
  }

  /** A `redirect` reply to `join`: the session belongs on another node; join there. */
  _followRedirect(gen, msg, token, redirects) {
    let base;
    try {
      base = baseUrl(msg.url);
      if (!/^wss?:$/.test(new URL(msg.url).protocol)) throw new Error('not a ws:// or wss:// URL');
    } catch (e) {
      return this._retry(gen, `redirect to ${JSON.stringify(msg.url)}: ${e.message ?? e}`);
    }
    if (redirects + 1 > MAX_REDIRECTS) return this._retry(gen, `redirected more than ${MAX_REDIRECTS} times`);
    this._log('redirect', msg);
    this._emit('redirect', { url: msg.url, node: msg.node, region: msg.region, reason: msg.reason, rttMs: msg.rtt_ms ?? null });
    this._gen++; // the redirected socket's close (4302) is not a failure
    this._teardown(`redirected to ${msg.node}`);
    this.base = base;
    this.wsUrl = msg.url;
    this._open({ token, redirects: redirects + 1 });
  }

  _onWsClose(gen, e) {
    const code = e.code;
    const reason = e.reason || `WebSocket closed (${code})`;
    this._log('ws close', code, reason);
    if (code === CloseCode.UNAUTHORIZED) {
      this._unauthorized++;
      // A fixed token will not get better; a token function might (an expired token).
      if (typeof this._token !== 'function' || this._unauthorized >= MAX_UNAUTHORIZED) {
        return this._fatal(new MeridianError('unauthorized', reason, { closeCode: code }));
      }
    }
    if (code === CloseCode.UNSUPPORTED_VERSION || code === CloseCode.JOIN_REQUIRED) {
      return this._fatal(new MeridianError(code === CloseCode.UNSUPPORTED_VERSION ? 'unsupported_version' : 'join_required', reason, { closeCode: code }));
    }
    if (code === CloseCode.NORMAL && this._closed) return;
    this._retry(gen, reason);
  }

  /** A failure reconnecting cannot fix. */
  _fatal(err) {
    this._emit('error', err);
    this._readyReject(err);
    this._closed = true;
    this._gen++;
    this._teardown(err.message);
    for (const m of this._unacked.values()) m.reject(err);
    this._unacked.clear();
    this._setState('closed', { reason: err.message, code: err.code });
  }

  /** Drops the current connection and schedules the next attempt (backoff with jitter). */
  _retry(gen, reason) {
    if (gen !== this._gen || this._closed) return;
    this._gen++; // every callback of the failed attempt is now stale
    this._teardown(reason);
    if (!this._reconnect) {
      this._closed = true;
      this._readyReject(new MeridianError('disconnected', reason));
      this._setState('closed', { reason });
      return;
    }
    if (this.base) this._failed.set(this.base.href, performance.now());
    const wasConnected = this._connectedAt > 0;
    if (wasConnected && this._lostAt == null) {
      // Once per outage, however many attempts it takes.
      this._lostAt = performance.now();
      this._emit('reconnecting', { reason, node: this.placement?.node ?? null, region: this.placement?.region ?? null });
    }
    if (this._connectedAt && performance.now() - this._connectedAt > STABLE_AFTER_MS) this._attempt = 0;
    this._connectedAt = 0;
    // The first retry after a connection that worked goes (almost) at once: its relay died
    // or drained, and the next region is known.
    const delayMs = wasConnected ? Math.floor(Math.random() * FIRST_RETRY_MAX_MS) : backoffDelay(this._attempt);
    this._attempt++;
    this._setState('reconnecting', { reason, delayMs });
    this._setTimer(() => this._open(), delayMs);
  }

  /** Closes the WebSocket and the peer connection; keeps what must survive a reconnect. */
  _teardown(reason) {
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    const err = new MeridianError('disconnected', reason);
    for (const p of this._pending.values()) p.reject(err);
    this._pending.clear();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(CloseCode.NORMAL);
      } catch {
        // already closed
      }
    }
    const pc = this._pc;
    this._pc = null;
    this._controls = null;
    this._input = null;
    this._negWanted = false;
    this._negLoop = null;
    if (pc) {
      pc.onicecandidate = pc.onconnectionstatechange = pc.ontrack = null;
      pc.close();
    }
    for (const p of this._publications) {
      p.transceiver = null;
      p.announced = false;
    }
    for (const w of this._watches.values()) w._dropAll();
  }

  _onJoined(gen, msg) {
    if (this._wantRole && msg.role !== this._wantRole) {
      this._log(`the token's role is ${msg.role}, not ${this._wantRole}`);
    }
    this._unauthorized = 0;
    this._everJoined = true;
    this.identity = msg.identity;
    this.participantId = msg.participant;
    this.role = msg.role;
    this.room = msg.room;
    this.expires = msg.expires;
    this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    this.placement = {
      node: msg.node ?? null,
      region: msg.region ?? null,
      reason: msg.route?.reason ?? 'local',
      rttMs: msg.route?.rtt_ms ?? null,
      redirects: msg.route?.redirects ?? 0,
    };
    // The room as it is now; tell the application who came and went while we were away.
    const before = this.participants;
    this.participants = new Map((msg.participants ?? []).map((p) => [p.id, p]));
    for (const [id, p] of before) if (!this.participants.has(id)) this._emit('participant', { action: 'left', participant: p });
    for (const [id, p] of this.participants) if (!before.has(id)) this._emit('participant', { action: 'joined', participant: p });
    this.tracks = new Map((msg.tracks ?? []).map((t) => [t.id, t]));
    this._setState('joined');
    this._emit('joined', msg);
    this._readyResolve(this);

    if (msg.role !== 'device' && this._publications.length) {
      // Published before the join, under a token that turned out not to allow it.
      const err = new MeridianError('forbidden', `a ${msg.role} may not publish`);
      for (const p of this._publications) p._reject(err);
      this._publications = [];
    }
    this._createPeerConnection(gen);
    for (const p of this._publications) this._addPublication(p);
    for (const w of this._watches.values()) this._syncWatch(w, false);
    // The first offer always goes out, even with no media: it carries the data channels.
    this._negotiate().catch((e) => this._negotiationFailed(gen, e));
    this._startKeepalive(gen);
  }

  _startKeepalive(gen) {
    const tick = () => {
      if (gen !== this._gen) return;
      this._request({ type: 'ping' })
        .then(() => {
          if (gen === this._gen) this._setTimer(tick, PING_INTERVAL_MS);
        })
        .catch((e) => {
          if (gen === this._gen && e.code === 'timeout') this._retry(gen, 'the node stopped answering pings');
        });
    };
    this._setTimer(tick, PING_INTERVAL_MS);
  }

  _createPeerConnection(gen) {
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this._policy,
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
    });
    this._pc = pc;
    pc.onicecandidate = (e) => {
      if (gen !== this._gen || !e.candidate || !e.candidate.candidate) return;
      // The node is ICE-lite: it learns our address from our checks, so candidates are only
      // a hint. mDNS names (*.local) mean nothing to it: skip them.
      if (/\s[0-9a-f-]+\.local\s/i.test(e.candidate.candidate)) return;
      this._send({ type: 'candidate', candidate: e.candidate.candidate, sdpMid: e.candidate.sdpMid });
    };
    let iceTimer = null;
    pc.onconnectionstatechange = () => {
      if (gen !== this._gen) return;
      const s = pc.connectionState;
      this._log('pc', s);
      if (s === 'connected') {
        this._clearTimer(iceTimer);
        iceTimer = null;
        this._clearTimer(this._mediaTimer);
        this._connectedAt = performance.now();
        this._setState('connected');
        if (this._lostAt != null) {
          const downMs = Math.round(performance.now() - this._lostAt);
          this._lostAt = null;
          this._emit('resumed', { node: this.placement?.node ?? null, region: this.placement?.region ?? null, downMs });
        }
      } else if (s === 'failed') {
        this._retry(gen, 'ICE/DTLS failed');
      } else if (s === 'disconnected') {
        // Often transient (a lost path that ICE restores): give it a moment.
        iceTimer ??= this._setTimer(() => {
          if (gen === this._gen && pc.connectionState !== 'connected') this._retry(gen, 'ICE disconnected');
        }, ICE_DISCONNECTED_GRACE_MS);
      }
    };
    // Create the data channels before the first offer so it negotiates SCTP.
    this._controls = pc.createDataChannel('controls', { ordered: true });
    this._input = pc.createDataChannel('input', { ordered: false, maxRetransmits: 0 });
    this._controls.onopen = () => {
      if (gen !== this._gen) return;
      // Everything not acknowledged yet, in id order, with the ids it had: the node
      // acknowledges those it already has without delivering them twice.
      for (const id of [...this._unacked.keys()].sort((a, b) => a - b)) this._controls.send(this._unacked.get(id).text);
      this._emit('channel', { label: 'controls', open: true });
    };
    this._controls.onmessage = (e) => {
      if (gen === this._gen) this._onControls(e.data);
    };
    this._input.onmessage = (e) => {
      if (gen !== this._gen) return;
      try {
        const m = JSON.parse(e.data);
        this._emit('input', { from: m.from, data: m.data });
      } catch {
        // not JSON: ignore
      }
    };
  }

  _onControls(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (m.error) {
      const { id, code, message } = m.error;
      const err = new MeridianError(code, message, { id });
      const pending = id != null ? this._unacked.get(id) : null;
      if (pending) {
        this._unacked.delete(id);
        pending.reject(err);
      } else {
        this._emit('error', err);
      }
    } else if ('ack' in m) {
      if (this._firstAckSeq == null && Number.isInteger(m.seq)) this._firstAckSeq = m.seq;
      const pending = this._unacked.get(m.ack);
      if (pending) {
        this._unacked.delete(m.ack);
        pending.resolve({ id: m.ack, seq: m.seq });
      }
    } else if (m.gap) {
      this._emit('gap', m.gap);
    } else if (Number.isInteger(m.seq)) {
      // The latest, not the largest: a room the node discarded (everyone gone for minutes)
      // starts again at 1. No duplicates to filter: the node replays only what follows the
      // resume point, and a session delivers each message once.
      this.lastSeq = m.seq;
      this._emit('message', { seq: m.seq, from: m.from, data: m.data });
    }
  }

  _onSignal(gen, msg) {
    if (msg.req != null && this._pending.has(msg.req)) {
      const p = this._pending.get(msg.req);
      this._pending.delete(msg.req);
      this._clearTimer(p.timer);
      if (msg.type === 'error') p.reject(new MeridianError(msg.code, msg.message, { request: p.type }));
      else p.resolve(msg);
      return;
    }
    switch (msg.type) {
      case 'error':
        this._emit('error', new MeridianError(msg.code, msg.message));
        break;
      case 'participant_joined':
        this.participants.set(msg.participant.id, msg.participant);
        this._emit('participant', { action: 'joined', participant: msg.participant });
        break;
      case 'participant_left': {
        const p = this.participants.get(msg.id) ?? { id: msg.id, identity: msg.identity };
        this.participants.delete(msg.id);
        this._emit('participant', { action: 'left', participant: p });
        break;
      }
      case 'track_published': {
        this.tracks.set(msg.track.id, msg.track);
        this._emit('track_published', msg);
        const w = this._watches.get(msg.track.publisher);
        if (w) this._syncWatch(w);
        break;
      }
      case 'track_unpublished': {
        this.tracks.delete(msg.track);
        this._emit('track_unpublished', msg);
        for (const w of this._watches.values()) w._drop(msg.track);
        break;
      }
      case 'track_muted': {
        const t = this.tracks.get(msg.track);
        if (t) t.muted = msg.muted;
        this._emit('track_muted', msg);
        break;
      }
      case 'published': {
        const p = this._publications.find((x) => x.transceiver && x.transceiver.mid === msg.mid);
        if (p) p._published(msg.track);
        this._emit('published', { track: msg.track, mid: msg.mid, kind: p?.kind });
        break;
      }
      case 'disconnected':
        // The node ended the media session; a 4010 close follows and triggers the reconnect.
        this._log('media session ended by the node:', msg.reason);
        this._emit('disconnected', msg);
        break;
      default:
        // connected, subscribed, unsubscribed, layer_changed, track_stalled, pong, ok, …
        this._emit(msg.type, msg);
    }
  }

  // ---------------------------------------------------------------- negotiation

  /** Queues an offer/answer round; resolves when no more rounds are wanted. */
  _negotiate() {
    this._negWanted = true;
    if (!this._negLoop) {
      const gen = this._gen;
      this._negLoop = (async () => {
        try {
          while (this._negWanted && gen === this._gen) {
            this._negWanted = false;
            await this._offerOnce(gen);
          }
        } finally {
          if (gen === this._gen) this._negLoop = null;
        }
      })();
    }
    return this._negLoop;
  }

  async _offerOnce(gen) {
    const pc = this._pc;
    if (!pc || gen !== this._gen) return;
    const stale = () => gen !== this._gen;
    await pc.setLocalDescription(await pc.createOffer());
    if (stale()) return;
    // setLocalDescription gave every new transceiver its mid: say what each one is for,
    // before the offer (requests on the WebSocket are handled in order).
    const side = [];
    for (const p of this._publications) {
      if (p.transceiver && !p.announced && p.transceiver.mid != null) {
        p.announced = true;
        side.push(this._request({ type: 'publish', mid: p.transceiver.mid, ...p._declaration() }).catch((e) => p._reject?.(e)));
      }
    }
    for (const w of this._watches.values()) {
      for (const s of w.subs.values()) {
        if (!s.announced && s.transceiver.mid != null) {
          s.announced = true;
          side.push(this._request({ type: 'subscribe', track: s.track, mid: s.transceiver.mid, ...w._prefs() }).catch((e) => {
            if (stale()) return;
            this._emit('error', e);
            w._drop(s.track);
          }));
        }
      }
    }
    const answer = await this._request({ type: 'offer', sdp: pc.localDescription.sdp });
    if (stale()) return;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    await Promise.all(side);
    if (!stale() && pc.connectionState !== 'connected') {
      this._clearTimer(this._mediaTimer);
      this._mediaTimer = this._setTimer(() => {
        if (gen === this._gen && pc.connectionState !== 'connected') this._retry(gen, `media did not connect within ${MEDIA_CONNECT_TIMEOUT_MS} ms`);
      }, MEDIA_CONNECT_TIMEOUT_MS);
    }
  }

  _negotiationFailed(gen, e) {
    if (gen !== this._gen) return;
    this._emit('error', e instanceof MeridianError ? e : new MeridianError('negotiation_failed', String(e?.message ?? e)));
    this._retry(gen, `negotiation failed: ${e?.message ?? e}`);
  }

  _addPublication(p) {
    const init = { direction: 'sendonly', streams: p.stream ? [p.stream] : [] };
    if (p.kind === 'video' && p.simulcast) init.sendEncodings = p._encodings();
    p.transceiver = this._pc.addTransceiver(p.track, init);
    p.announced = false;
    try {
      // A remote control session prefers fluid motion to sharpness when bandwidth is short.
      const params = p.transceiver.sender.getParameters();
      if (p.kind === 'video' && params.encodings?.length) {
        params.degradationPreference = p.track.contentHint === 'detail' ? 'maintain-resolution' : 'maintain-framerate';
        p.transceiver.sender.setParameters(params).catch(() => {});
      }
    } catch {
      // not supported
    }
  }

  /** Subscribes to the watched device's tracks that have no transceiver yet. */
  _syncWatch(w, negotiate = true) {
    if (!this._pc) return; // done after the next join
    let added = false;
    for (const t of this.tracks.values()) {
      if (t.publisher !== w.identity || w.subs.has(t.id) || !w._wants(t.kind)) continue;
      const transceiver = this._pc.addTransceiver(t.kind, { direction: 'recvonly' });
      lowLatency(transceiver.receiver);
      w._add(t, transceiver);
      added = true;
    }
    if (added && negotiate) {
      const gen = this._gen;
      this._negotiate().catch((e) => this._negotiationFailed(gen, e));
    }
  }
}

// ------------------------------------------------------------------ publications and watches

/** One track this client publishes. */
export class Publication {
  constructor(client, track, stream, opts) {
    this.client = client;
    this.track = track;
    this.kind = track.kind;
    this.stream = stream;
    this.name = opts.name ?? track.kind;
    this.simulcast = !!opts.simulcast;
    this.muted = false;
    /** The node's id for this track (changes after a reconnect). */
    this.trackId = null;
    this.transceiver = null;
    this.announced = false;
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {});
  }

  get mid() {
    return this.transceiver?.mid ?? null;
  }

  _published(trackId) {
    this.trackId = trackId;
    this._resolve(this);
    if (this.muted) this.client._send({ type: 'mute', track: trackId, muted: true });
  }

  /** Simulcast: three layers, a quarter, half and full size. */
  _encodings() {
    return [
      { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 200_000 },
      { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 700_000 },
      { rid: 'f', maxBitrate: 2_500_000 },
    ];
  }

  /** The body of the `publish` message (without mid). */
  _declaration() {
    const d = { name: this.name };
    if (this.kind === 'video' && this.simulcast) {
      const s = this.track.getSettings?.() ?? {};
      const size = (div) => (s.width && s.height ? { width: Math.round(s.width / div), height: Math.round(s.height / div) } : {});
      d.layers = [
        { rid: 'q', ...size(4) },
        { rid: 'h', ...size(2) },
        { rid: 'f', ...size(1) },
      ];
    }
    return d;
  }
}

/** What `client.watch()` returns: a device's tracks, as one MediaStream. */
export class Watch {
  constructor(client, identity, opts) {
    this.client = client;
    this.identity = identity;
    /** track id -> {track, kind, info, transceiver, announced} */
    this.subs = new Map();
    this.stream = new MediaStream();
    this._setOptions(opts);
  }

  _setOptions(opts) {
    this.opts = { ...(this.opts ?? { audio: true, video: true }), ...opts };
    this.videoElement = this.opts.videoElement ?? this.videoElement ?? null;
  }

  _wants(kind) {
    return kind === 'audio' ? this.opts.audio !== false : this.opts.video !== false;
  }

  _prefs() {
    const p = {};
    if (this.opts.layer != null) p.layer = String(this.opts.layer);
    if (this.opts.maxWidth != null) p.max_width = Math.round(this.opts.maxWidth);
    if (this.opts.maxHeight != null) p.max_height = Math.round(this.opts.maxHeight);
    return p;
  }

  /** The received tracks right now. */
  get tracks() {
    return this.stream.getTracks();
  }

  /** Changes the simulcast layer / size preferences (no renegotiation). */
  async setPreferences({ layer, maxWidth, maxHeight } = {}) {
    this._setOptions({ layer, maxWidth, maxHeight });
    const reqs = [];
    for (const s of this.subs.values()) {
      if (s.announced && s.kind === 'video') {
        reqs.push(this.client._request({ type: 'subscribe', track: s.track, mid: s.transceiver.mid, ...this._prefs() }));
      }
    }
    await Promise.all(reqs);
  }

  /** Stops watching. */
  async stop() {
    const c = this.client;
    c._watches.delete(this.identity);
    for (const id of [...this.subs.keys()]) {
      if (this.subs.get(id).announced) c._send({ type: 'unsubscribe', track: id });
      this._drop(id);
    }
    if (c._pc) await c._negotiate().catch(() => {});
  }

  _add(info, transceiver) {
    this.subs.set(info.id, { track: info.id, kind: info.kind, info, transceiver, announced: false });
    // A recvonly transceiver's receiver track exists from the start (muted until media flows).
    const track = transceiver.receiver.track;
    this._replaceStream([...this.stream.getTracks().filter((t) => t.kind !== track.kind), track]);
    this.client._emit('track', { identity: this.identity, kind: info.kind, track, info, stream: this.stream });
  }

  /** The device stopped publishing `trackId` (or we stopped watching it). */
  _drop(trackId) {
    const s = this.subs.get(trackId);
    if (!s) return;
    this.subs.delete(trackId);
    const track = s.transceiver.receiver.track;
    // The transceiver is not reused (the node starts a new stream on a fresh one); it goes
    // inactive at the next negotiation.
    try {
      if (this.client._pc && s.transceiver.direction !== 'stopped') s.transceiver.direction = 'inactive';
    } catch {
      // closed
    }
    if (this.stream.getTracks().includes(track)) this._replaceStream(this.stream.getTracks().filter((t) => t !== track));
  }

  /** The connection is gone: every subscription is made again after the next join. */
  _dropAll() {
    this.subs.clear();
    if (this.stream.getTracks().length) this._replaceStream([]);
  }

  /**
   * A new MediaStream for every change of tracks: media elements reliably pick up a new
   * srcObject, not always a track added to the stream they already play.
   */
  _replaceStream(tracks) {
    this.stream = new MediaStream(tracks);
    this._attach();
  }

  _attach() {
    const v = this.videoElement;
    if (!v) return;
    v.autoplay = true;
    v.playsInline = true;
    if (v.srcObject !== this.stream) v.srcObject = this.stream;
    if (this.stream.getTracks().length) v.play?.().catch(() => {});
  }
}

/**
 * Connects to a node and resolves to the Client once its join was accepted.
 * @param {ConstructorParameters<typeof Client>[0]} opts
 */
export async function connect(opts) {
  const client = new Client(opts);
  await client.start();
  return client;
}

export default { connect, Client, listRooms, devToken, measureRegions, backoffDelay, CloseCode, MeridianError };
