/**
 * tokenwire.js: the browser side of tokenwire's WebSocket protocol (docs/protocol.md),
 * as a small ES module with no dependencies. The chat page at `/` is built on it;
 * other web apps import it from `/static/tokenwire.js` (docs/clients.md).
 *
 * What it promises: each answer's events arrive exactly once and in `seq` order, across
 * dropped links (it reconnects and resumes from the last `seq` it delivered) and page
 * reloads (`attach` with compact hydration shows the answer so far at once). A
 * credential travels as the `bearer.<token>` subprotocol, never in the URL.
 *
 * @example
 * import { TokenwireClient } from "/static/tokenwire.js";
 * const client = new TokenwireClient({ token: sessionStorage.getItem("token") });
 * await client.connect();
 * const answer = client.stream("Write a haiku about sockets");
 * for await (const event of answer) {
 *   if (event.event_type === "chunk") output.textContent += event.data.chunk;
 * }
 */

/**
 * One server event: the protocol's envelope.
 * @typedef {object} TokenwireEvent
 * @property {string} event_type  `stream_start`, `typing_indicator`, `metadata`, `chunk`,
 *   `token`, `progress`, `tool_call_start`, `tool_call_delta`, `tool_call_end`, `error`,
 *   `stream_end` or `connection_status`
 * @property {Record<string, any>} data  the event's fields (docs/protocol.md, "Server events")
 * @property {number} timestamp  seconds since the epoch
 * @property {string|null} request_id
 * @property {string|null} session_id
 * @property {number|null} seq  the event's place in its request, from 1; null outside one
 */

/**
 * What `stream` sends besides the prompt (the `ai_request` fields, docs/protocol.md).
 * @typedef {object} StreamOptions
 * @property {string} [requestId]  default: a fresh random id
 * @property {string} [conversationId]  the server keeps the conversation's history
 * @property {Record<string, any>} [config]  `provider`, `routing_strategy`, `max_tokens`, ...
 * @property {Record<string, any>} [streamConfig]  `granularity`, `progress_every`
 * @property {Array<{role: string, content: any}>} [messages]
 */

/**
 * One of the user's requests, as `listRequests` gives them.
 * @typedef {object} RequestSummary
 * @property {string} request_id
 * @property {string} status  `running`, or the `stream_end` status
 * @property {number} started
 * @property {string|null} conversation_id
 */

/** `connecting`, `open`, `reconnecting`, `unauthorized` or `closed`. @typedef {string} ConnectionState */

/** The server refused the credential (or wants one): ask the user for another. */
export class AuthenticationRequired extends Error {
  constructor(message = "this server needs a valid credential") {
    super(message);
    this.name = "AuthenticationRequired";
  }
}

const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000];
const TEXT_EVENTS = new Set(["chunk", "token"]);

/** A random id of the protocol's alphabet (crypto.randomUUID needs a secure context). */
export function newId(prefix = "r") {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return prefix + "-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The WebSocket endpoint of the server that served this page. */
export function defaultUrl(where = globalThis.location) {
  const scheme = where.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${where.host}/ws/ai-stream`;
}

/**
 * The events of one answer, as an async iterator that ends after its `stream_end` (or
 * after the `error` of a request refused before it started).
 */
export class AnswerStream {
  /** @param {TokenwireClient} client @param {string} requestId */
  constructor(client, requestId) {
    this.client = client;
    this.requestId = requestId;
    /** The last `seq` delivered: a resume asks for what follows it. */
    this.lastSeq = 0;
    this.started = false;
    this.done = false;
    /** @type {TokenwireEvent[]} */
    this._queue = [];
    /** @type {((r: IteratorResult<TokenwireEvent>) => void)[]} */
    this._waiting = [];
    /** @type {object|null} the `ai_request` to send again if the server never had it */
    this._request = null;
    this._compact = false;
  }

  /** Stop this answer (`cancel_request`); its `stream_end` says `cancelled`. */
  cancel() {
    this.client.cancel(this.requestId);
  }

  /** @param {TokenwireEvent} event */
  _deliver(event) {
    if (this.done) return;
    if (event.seq != null) {
      if (event.seq <= this.lastSeq) return; // already delivered before a reconnect
      this.lastSeq = event.seq;
      this.started = true;
    }
    const final = event.event_type === "stream_end" || (event.event_type === "error" && event.seq == null);
    this._push(event);
    if (final) this._finish();
  }

  _push(event) {
    const waiter = this._waiting.shift();
    if (waiter) waiter({ value: event, done: false });
    else this._queue.push(event);
  }

  _finish() {
    this.done = true;
    this.client._forget(this);
    for (const waiter of this._waiting.splice(0)) waiter({ value: undefined, done: true });
  }

  /** @returns {Promise<IteratorResult<TokenwireEvent>>} */
  next() {
    if (this._queue.length) return Promise.resolve({ value: this._queue.shift(), done: false });
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this._waiting.push(resolve));
  }

  /** Leaving a `for await` early stops reading, not the answer (`cancel` does that). */
  return() {
    this._queue.length = 0;
    if (!this.done) this._finish();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

/**
 * A connection to tokenwire that reconnects by itself and resumes every answer it
 * follows. Dispatches `state` events (`event.detail`: the {@link ConnectionState}).
 */
export class TokenwireClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url]  the full WebSocket URL; default: this page's server
   * @param {string|null} [options.token]  a credential, sent as the `bearer.` subprotocol
   * @param {string|null} [options.userId]  who you are when the server has auth off
   * @param {boolean} [options.reconnect]  reconnect after a lost link (default true)
   */
  constructor({ url = defaultUrl(), token = null, userId = null, reconnect = true } = {}) {
    super();
    this.url = url;
    this.token = token;
    this.userId = userId;
    this.reconnect = reconnect;
    /** @type {ConnectionState} */
    this.state = "closed";
    /** @type {WebSocket|null} */
    this._ws = null;
    /** @type {Map<string, AnswerStream>} */
    this._streams = new Map();
    /** @type {object[]} frames waiting for an open socket */
    this._outbox = [];
    this._attempt = 0;
    this._timer = null;
    this._opened = null;
    this._listWaiters = [];
    this._wanted = false;
  }

  /** Open the connection; resolves once the server said `connected`. Rejects with
   * {@link AuthenticationRequired} when the server refuses the credential. */
  connect() {
    this._wanted = true;
    if (this.state === "open") return Promise.resolve();
    if (!this._opened) {
      this._opened = {};
      this._opened.promise = new Promise((resolve, reject) => Object.assign(this._opened, { resolve, reject }));
      this._opened.promise.catch(() => {}); // callers that do not await it see no unhandled rejection
    }
    if (!this._ws) this._open(); // else the socket on its way will settle it
    return this._opened.promise;
  }

  /** Close on purpose (code 1000): the server cancels the answers only this client follows. */
  close() {
    this._wanted = false;
    clearTimeout(this._timer);
    if (this._ws) this._ws.close(1000);
    this._setState("closed");
  }

  /**
   * Ask for an answer to `prompt`.
   * @param {string} prompt
   * @param {StreamOptions} [options]
   * @returns {AnswerStream}
   */
  stream(prompt, options = {}) {
    const requestId = options.requestId || newId();
    const request = { type: "ai_request", request_id: requestId };
    if (prompt) request.prompt = prompt;
    if (options.messages) request.messages = options.messages;
    if (options.conversationId) request.conversation_id = options.conversationId;
    if (options.config) request.config = options.config;
    if (options.streamConfig) request.stream_config = options.streamConfig;
    const answer = new AnswerStream(this, requestId);
    answer._request = request;
    this._streams.set(requestId, answer);
    this._send(request);
    return answer;
  }

  /**
   * Follow a request started elsewhere (another tab, before a reload): its events from
   * `lastSeq` on; from 0, the text so far comes as one compacted `chunk` (`compact`
   * asks for that form from a later `lastSeq` too).
   * @param {string} requestId
   * @param {{lastSeq?: number, compact?: boolean}} [options]
   * @returns {AnswerStream}
   */
  attach(requestId, { lastSeq = 0, compact = false } = {}) {
    const answer = new AnswerStream(this, requestId);
    answer.lastSeq = lastSeq;
    answer._compact = compact;
    this._streams.set(requestId, answer);
    this._send(this._resumeOf(answer));
    return answer;
  }

  /** Stop an answer; sent once the link is up if it is down now. @param {string} requestId */
  cancel(requestId) {
    this._send({ type: "cancel_request", request_id: requestId });
  }

  /** The user's running and kept requests, newest first. @returns {Promise<RequestSummary[]>} */
  listRequests() {
    return new Promise((resolve) => {
      this._listWaiters.push(resolve);
      this._send({ type: "list_requests" });
    });
  }

  // -- the socket ---------------------------------------------------------------------

  _open() {
    clearTimeout(this._timer);
    this._setState(this._attempt ? "reconnecting" : "connecting");
    const url = this.userId ? `${this.url}?user_id=${encodeURIComponent(this.userId)}` : this.url;
    let ws;
    try {
      ws = this.token ? new WebSocket(url, [`bearer.${this.token}`]) : new WebSocket(url);
    } catch (error) {
      // A credential with characters a subprotocol cannot carry: it cannot be right.
      this._unauthorized(new AuthenticationRequired(`unusable credential: ${error.message}`));
      return;
    }
    this._ws = ws;
    let greeted = false;
    ws.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (!greeted && event.event_type === "connection_status" && event.data.status === "connected") {
        greeted = true;
        this._greeted();
      }
      this._route(event);
    };
    ws.onclose = (close) => {
      if (this._ws !== ws) return;
      this._ws = null;
      if (!this._wanted) return;
      if (close.code === 1008) {
        this._unauthorized(new AuthenticationRequired("the credential expired or was refused"));
      } else if (!greeted) {
        this._refusedBeforeOpen();
      } else {
        this._later();
      }
    };
  }

  _greeted() {
    this._attempt = 0;
    this._setState("open");
    // Resume every answer still followed, then send what waited for the link.
    const waiting = this._outbox.splice(0);
    for (const answer of this._streams.values()) {
      if (!waiting.some((f) => f.request_id === answer.requestId && f.type !== "cancel_request")) {
        this._ws.send(JSON.stringify(this._resumeOf(answer)));
      }
    }
    for (const frame of waiting) this._ws.send(JSON.stringify(frame));
    if (this._opened) {
      this._opened.resolve();
      this._opened = null;
    }
  }

  /** A handshake that failed: a browser hides its HTTP status, so ask an HTTP endpoint
   * whether the credential is the reason. */
  async _refusedBeforeOpen() {
    let status = 0;
    try {
      status = (await fetch(new URL("/v1/models", httpUrl(this.url)), { headers: authorization(this.token) })).status;
    } catch {
      // the server is unreachable: keep trying
    }
    if (!this._wanted) return;
    if (status === 401) this._unauthorized(new AuthenticationRequired());
    else this._later();
  }

  _unauthorized(error) {
    this._setState("unauthorized");
    if (this._opened) {
      this._opened.reject(error);
      this._opened = null;
    }
  }

  _later() {
    if (!this.reconnect) {
      this._setState("closed");
      for (const answer of [...this._streams.values()]) answer._finish();
      return;
    }
    const delay = RECONNECT_DELAYS_MS[Math.min(this._attempt, RECONNECT_DELAYS_MS.length - 1)];
    this._attempt += 1;
    this._setState("reconnecting");
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
  }

  _send(frame) {
    if (this.state === "open" && this._ws) {
      this._ws.send(JSON.stringify(frame));
      return;
    }
    this._outbox.push(frame);
    if (!this._wanted) this.connect(); // asking implies connecting
  }

  _resumeOf(answer) {
    // Nothing of it seen yet (a reloaded page): the text so far at once, as one chunk.
    const compact = answer._compact || answer.lastSeq === 0;
    return { type: "resume", request_id: answer.requestId, last_seq: answer.lastSeq, compact };
  }

  /** @param {TokenwireEvent} event */
  _route(event) {
    if (event.event_type === "connection_status") {
      if (event.data.status === "request_list") {
        for (const resolve of this._listWaiters.splice(0)) resolve(event.data.requests);
      }
      this.dispatchEvent(new CustomEvent("status", { detail: event }));
      return;
    }
    const answer = event.request_id ? this._streams.get(event.request_id) : undefined;
    if (!answer) return;
    if (event.event_type === "error" && event.seq == null && this._neverArrived(answer, event)) return;
    answer._deliver(event);
  }

  /** A resume of a request the server never received (the link fell while the
   * `ai_request` was on its way): send that request again, once. */
  _neverArrived(answer, event) {
    if (event.data.error_type !== "unknown_request" || answer.started || !answer._request) return false;
    const request = answer._request;
    answer._request = null;
    this._send(request);
    return true;
  }

  _forget(answer) {
    if (this._streams.get(answer.requestId) === answer) this._streams.delete(answer.requestId);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }
}

/**
 * The providers a request may name, and `auto` (GET /v1/models).
 * @param {{token?: string|null, base?: string}} [options]
 * @returns {Promise<Array<{id: string, auto?: boolean}>>}
 */
export async function listModels({ token = null, base = globalThis.location.origin } = {}) {
  const response = await fetch(new URL("/v1/models", base), { headers: authorization(token) });
  if (response.status === 401) throw new AuthenticationRequired();
  if (!response.ok) throw new Error(`GET /v1/models: HTTP ${response.status}`);
  return (await response.json()).data;
}

/** The routing strategies a request may ask for (`config.routing_strategy`). */
export const ROUTING_STRATEGIES = Object.freeze([
  "intelligent",
  "performance_based",
  "cost_optimized",
  "reliability_based",
  "round_robin",
]);

function authorization(token) {
  return token ? { authorization: `Bearer ${token}` } : {};
}

function httpUrl(wsUrl) {
  return wsUrl.replace(/^ws/, "http");
}
