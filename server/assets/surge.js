// surge.js: a dependency-free browser client for Surge (ES module).
//
//   import { Surge } from "/surge.js";
//   const surge = new Surge("ws://" + location.host + "/ws", { onStatus: (s) => ... });
//   surge.subscribe("clinic:42", (data, meta) => ...);
//   surge.subscribe("user/8812", (data, meta) => ..., { token, refreshToken });
//   surge.joinRoom("sale", { onPosition: (p) => ..., onAdmitted: (a) => ... });
//
// A private channel's subscription ends when its token expires. Give
// `refreshToken: async (channel) => newToken` (asking your backend) and
// surge.js refreshes shortly before expiry, and resubscribes (recovering
// what was missed) if the server ended it anyway.
//
// It keeps one WebSocket, resubscribes after every reconnect, and recovers
// what it missed from each channel's last offset (dropping duplicates), so a
// page never shows stale slots and never misses a booking confirmation.
// See docs/browser-client.md.

// Close codes after which reconnecting cannot help: the client broke the
// protocol, and a retry loop would only hammer the server.
const FATAL_CODES = new Set([1002, 1003, 1007, 1008, 1009]);

// Refresh this long before a token expires (or at 90% of its life if that
// is sooner), so a slow backend still answers in time.
const REFRESH_MARGIN_MS = 60000;

// A server that drains for a restart closes with 1012 and a reason like
// "restarting; reconnect in 2s".
const SERVICE_RESTART = 1012;

/** The reconnect delay in milliseconds a close reason carries, or null. */
function reconnectHintMs(reason) {
  const m = /reconnect in (\d+)s$/.exec(reason || "");
  return m ? Number(m[1]) * 1000 : null;
}

/** A token's expiry in Unix milliseconds ("SCOPE.EXPIRY.SIG"), or null. */
function tokenExpiryMs(token) {
  const expiry = Number((token || "").split(".")[1]);
  return Number.isFinite(expiry) && expiry > 0 ? expiry * 1000 : null;
}

export class Surge {
  /**
   * @param {string} url ws:// or wss:// URL of the server's /ws endpoint.
   * @param {object} [options]
   * @param {(status: string, info?: object) => void} [options.onStatus]
   *   "connecting", "live", "reconnecting" ({inSeconds, attempt, code}), "failed" ({code, reason}).
   * @param {number} [options.baseDelayMs=500]  first backoff window.
   * @param {number} [options.maxDelayMs=30000] backoff ceiling.
   * @param {number} [options.healthyAfterMs=10000] a connection must stay up this
   *   long before the backoff resets: resetting on open is how reconnect storms repeat.
   */
  constructor(url, options = {}) {
    this.url = url;
    this.onStatus = options.onStatus || (() => {});
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 30000;
    this.healthyAfterMs = options.healthyAfterMs ?? 10000;
    this.channels = new Map(); // name -> {callbacks:Set, token, refreshToken, refreshTimer, epoch, off}
    this.rooms = new Map(); // waiting room name -> {ticket, storageKey, callbacks}
    this.attempt = 0;
    this.ws = null;
    this.closed = false;
    this.retryTimer = null;
    this.healthyTimer = null;
    this.connect();
  }

  /** Subscribes `callback(data, meta)` to `channel`; returns an unsubscribe function.
   *  meta: {channel, off, epoch, snapshot}. A snapshot is the channel's last value
   *  (on first subscribe, or when history could not fill a gap): treat it as the truth. */
  subscribe(channel, callback, { token, refreshToken } = {}) {
    let entry = this.channels.get(channel);
    if (!entry) {
      entry = { callbacks: new Set(), token, refreshToken, refreshTimer: null, epoch: null, off: 0 };
      this.channels.set(channel, entry);
      this.sendSub(channel, entry);
    } else {
      if (token) entry.token = token;
      if (refreshToken) entry.refreshToken = refreshToken;
    }
    this.scheduleRefresh(channel, entry);
    entry.callbacks.add(callback);
    return () => this.unsubscribe(channel, callback);
  }

  /** Arranges for a new token shortly before this one expires. */
  scheduleRefresh(channel, entry) {
    clearTimeout(entry.refreshTimer);
    const expiry = tokenExpiryMs(entry.token);
    if (!entry.refreshToken || expiry === null) return;
    const left = expiry - Date.now();
    // At least a second apart: a token that is already (nearly) expired
    // must not turn into a loop of refreshes.
    const wait = Math.max(1000, left - Math.min(REFRESH_MARGIN_MS, left * 0.1));
    entry.refreshTimer = setTimeout(() => this.refresh(channel, entry, false), wait);
  }

  /** Asks the page for a new token; sends it as a refresh, or (after the
   *  server ended the subscription) subscribes again with it. */
  async refresh(channel, entry, ended) {
    let token;
    try {
      token = await entry.refreshToken(channel);
    } catch (e) {
      console.warn("surge: token refresh failed", channel, e);
      return;
    }
    if (this.channels.get(channel) !== entry || !token) return;
    entry.token = token;
    if (ended) this.sendSub(channel, entry);
    else this.send({ op: "refresh", ch: channel, token });
    this.scheduleRefresh(channel, entry);
  }

  /** Removes `callback` (or all callbacks) from `channel`. */
  unsubscribe(channel, callback) {
    const entry = this.channels.get(channel);
    if (!entry) return;
    if (callback) entry.callbacks.delete(callback);
    if (!callback || entry.callbacks.size === 0) {
      clearTimeout(entry.refreshTimer);
      this.channels.delete(channel);
      this.send({ op: "unsub", ch: channel });
    }
  }

  /** Joins the waiting room `name` (docs/waiting-room.md). The ticket is kept in
   *  sessionStorage, so a reload or a reconnect (to any server) keeps the place.
   *  onPosition({position, etaSeconds, opensAt}): position is null before the opening.
   *  onAdmitted({token, expires}): take the token to the booking backend; a reload
   *  before it expires gets the same admission again.
   *  onError({code, message}): "unknown_room" or "room_closed" (the join ends).
   *  Returns a function that stops listening (the place stays until the grace period). */
  joinRoom(name, { onPosition = () => {}, onAdmitted = () => {}, onError = () => {} } = {}) {
    const storageKey = "surge.ticket." + name;
    const room = { ticket: sessionGet(storageKey), storageKey, onPosition, onAdmitted, onError };
    this.rooms.set(name, room);
    this.sendJoin(name, room);
    return () => this.rooms.delete(name);
  }

  sendJoin(name, room) {
    const cmd = { op: "join", room: name };
    if (room.ticket) cmd.ticket = room.ticket;
    this.send(cmd);
  }

  /** A frame about a waiting room; false if it is not one of ours. */
  onRoomMessage(msg) {
    const room = this.rooms.get(msg.room);
    if (!room) return false;
    const call = (fn, arg) => {
      try {
        fn(arg);
      } catch (e) {
        console.error("surge: room callback failed", e);
      }
    };
    if (msg.op === "queued") {
      if (msg.ticket) {
        room.ticket = msg.ticket;
        sessionSet(room.storageKey, msg.ticket);
      }
      call(room.onPosition, { position: msg.position, etaSeconds: msg.eta_s, opensAt: msg.opens_at ?? null });
    } else if (msg.op === "admitted") {
      this.rooms.delete(msg.room);
      call(room.onAdmitted, { token: msg.token, expires: msg.expires });
    } else if (msg.op === "error" && (msg.code === "ticket_expired" || msg.code === "bad_ticket") && room.ticket) {
      // The stored place is gone (away past the grace period, or a ticket of
      // an earlier room of that name): join again at the back.
      room.ticket = null;
      sessionSet(room.storageKey, null);
      this.sendJoin(msg.room, room);
    } else if (msg.op === "error") {
      this.rooms.delete(msg.room);
      call(room.onError, { code: msg.code, message: msg.message });
    }
    return true;
  }

  /** Closes for good: no reconnect. */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.healthyTimer);
    if (this.ws) this.ws.close(1000, "bye");
  }

  connect() {
    if (this.closed) return;
    this.onStatus("connecting", { attempt: this.attempt });
    let opened = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.onStatus("live");
      // Reset the backoff only once this connection has proved healthy.
      this.healthyTimer = setTimeout(() => { this.attempt = 0; }, this.healthyAfterMs);
      for (const [name, entry] of this.channels) this.sendSub(name, entry);
      for (const [name, room] of this.rooms) this.sendJoin(name, room);
    };
    ws.onmessage = (event) => this.onMessage(event.data);
    ws.onclose = (event) => {
      clearTimeout(this.healthyTimer);
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.closed) return;
      if (FATAL_CODES.has(event.code)) {
        this.onStatus("failed", { code: event.code, reason: event.reason });
        return;
      }
      // Browsers do not expose the HTTP status of a refused upgrade (a 503
      // with Retry-After when the server is full): a close before open is
      // treated as "busy" and backs off like any other failure.
      this.scheduleReconnect(event.code, opened, event.reason);
    };
  }

  scheduleReconnect(code, opened, reason) {
    this.attempt += 1;
    // A drain: come back after the server's hint plus up to as much again at
    // random, so the pages it closed together do not return together. It
    // spread its closes over its drain window; this spreads each step's.
    const hint = code === SERVICE_RESTART ? reconnectHintMs(reason) : null;
    if (hint !== null) {
      const delay = hint + Math.random() * hint;
      this.onStatus("reconnecting", { inSeconds: Math.ceil(delay / 1000), attempt: this.attempt, code, wasOpen: opened });
      this.retryTimer = setTimeout(() => this.connect(), delay);
      return;
    }
    // Full jitter: a random delay in [0, min(cap, base * 2^attempt)], so that
    // thousands of pages dropped together do not come back together.
    const window = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(this.attempt, 16));
    // "Too slow" (4000) and "no pong" (4001) mean the network hiccuped; come
    // back quickly, but never before a small random delay.
    const delay = Math.random() * (code === 4000 || code === 4001 ? Math.min(window, 2000) : window);
    this.onStatus("reconnecting", { inSeconds: Math.ceil(delay / 1000), attempt: this.attempt, code, wasOpen: opened });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  sendSub(name, entry) {
    const cmd = { op: "sub", ch: name };
    if (entry.token) cmd.token = entry.token;
    // Recover from the last offset seen; with no epoch yet, ask with an empty
    // one: the answer is the last value as a snapshot.
    if (entry.off > 0 || entry.epoch) cmd.since = { epoch: entry.epoch || "", off: entry.off };
    this.send(cmd);
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.room !== undefined && this.onRoomMessage(msg)) return;
    if (msg.op === "error") {
      const ended = this.channels.get(msg.ch);
      if (msg.code === "token_expired" && ended && ended.refreshToken) {
        this.refresh(msg.ch, ended, true);
        return;
      }
      console.warn("surge:", msg.ch, msg.code, msg.message);
      // The server could not load the channel's history just now (its
      // Redis is unreachable): nothing was subscribed, so ask again after
      // a short, jittered delay, from where we were.
      const waiting = msg.code === "unavailable" && this.channels.get(msg.ch);
      if (waiting) {
        const delay = 500 + Math.random() * 2000;
        setTimeout(() => {
          const entry = this.channels.get(msg.ch);
          if (entry) this.sendSub(msg.ch, entry);
        }, delay);
      }
      return;
    }
    if (msg.op) return; // subscribed / unsubscribed / refreshed
    const entry = this.channels.get(msg.ch);
    if (!entry) return;
    if (typeof msg.off === "number") {
      const sameEpoch = entry.epoch === msg.epoch;
      if (!msg.snap && sameEpoch && msg.off <= entry.off) return; // a duplicate
      entry.epoch = msg.epoch;
      entry.off = msg.off;
    }
    const meta = { channel: msg.ch, off: msg.off, epoch: msg.epoch, snapshot: !!msg.snap };
    for (const cb of entry.callbacks) {
      try {
        cb(msg.data, meta);
      } catch (e) {
        console.error("surge: subscriber callback failed", e);
      }
    }
  }
}

// sessionStorage can be missing or refuse (private windows, storage off):
// the room then works without surviving a reload.
function sessionGet(key) {
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

function sessionSet(key, value) {
  try {
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch {
    // see sessionGet
  }
}
