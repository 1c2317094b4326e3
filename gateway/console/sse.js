// Server-sent events over fetch(), resumable with Last-Event-ID.
//
// The browser's EventSource cannot send an Authorization header, and an API key in the URL
// would end up in access logs; so the console reads the gateway's text/event-stream with
// fetch() and parses it here (the WHATWG "event stream interpretation"). On a dropped
// connection it reconnects with `Last-Event-ID: <last seq seen>`, as EventSource would: the
// gateway replays exactly the events after it. A 204 means the run already completed.

/** Parse an event stream incrementally. feed() takes text chunks; complete messages go to
 * onMessage({event, data, id}); `retry:` values go to onRetry(ms). */
export class EventStreamParser {
  constructor(onMessage, onRetry = () => {}) {
    this.onMessage = onMessage;
    this.onRetry = onRetry;
    this.reset();
  }

  /** Forget a half-read message (a new connection starts clean). */
  reset() {
    this.buffer = "";
    this.eventType = "";
    this.data = [];
    this.lastId = null;
  }

  feed(chunk) {
    this.buffer += chunk;
    // A line ends at \r\n, \n or \r; keep a trailing \r until we know what follows it.
    const pattern = /\r\n|\n|\r(?!$)/;
    let match;
    while ((match = pattern.exec(this.buffer)) !== null) {
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length > 0) {
        this.onMessage({ event: this.eventType || "message", data: this.data.join("\n"), id: this.lastId });
      }
      this.eventType = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment: the gateway's keep-alive
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.eventType = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.onRetry(Number(value));
  }
}

/**
 * Read a run's events until its runner.completion, reconnecting after a dropped connection.
 *
 * @param {string} url the run's events URL (/v1/runs/{id}/events)
 * @param {object} options
 *   headers: the auth headers; onEvent(event): each event once, in seq order;
 *   onReset(info): the gateway's `reset` message (events were trimmed or expired);
 *   onState(text): "connected", "reconnecting" ...; signal: an AbortSignal;
 *   maxRetries: reconnections in a row without a new event before giving up (default 20;
 *   the wait grows from the server's `retry:` delay to five times it).
 * @returns {Promise<object|null>} the completion event, or null if the stream ended without one
 */
export async function followRun(url, options) {
  const { headers, onEvent, onReset = () => {}, onState = () => {}, signal } = options;
  const maxRetries = options.maxRetries ?? 20;
  let lastSeq = null;
  let retryMs = 2000;
  let failures = 0;
  let completion = null;
  let expired = false;

  const parser = new EventStreamParser(
    (message) => {
      if (message.event === "reset") {
        const info = JSON.parse(message.data);
        if (info.first_seq === null || info.first_seq === undefined) expired = true;
        onReset(info);
        return;
      }
      if (message.event !== "message") return;
      const event = JSON.parse(message.data);
      if (lastSeq !== null && event.seq <= lastSeq) return; // already shown
      lastSeq = event.seq;
      failures = 0;
      onEvent(event);
      if (event.type === "runner.completion") completion = event;
    },
    (ms) => { retryMs = ms; },
  );

  while (completion === null && !expired) {
    const requestHeaders = { ...headers, Accept: "text/event-stream" };
    if (lastSeq !== null) requestHeaders["Last-Event-ID"] = String(lastSeq);
    let response;
    try {
      onState(lastSeq === null ? "connecting" : "reconnecting");
      response = await fetch(url, { headers: requestHeaders, signal, cache: "no-store" });
    } catch (error) {
      if (signal?.aborted) throw error;
      response = null;
    }
    if (response !== null && response.status === 204) return completion; // nothing after lastSeq
    if (response !== null && !response.ok) {
      const problem = await errorMessage(response);
      throw new Error(problem);
    }
    if (response !== null) {
      onState("connected");
      parser.reset();
      try {
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.feed(value);
          if (completion !== null || expired) break;
        }
      } catch (error) {
        if (signal?.aborted) throw error;
      }
    }
    if (completion !== null || expired) break;
    failures += 1;
    if (failures > maxRetries) {
      throw new Error(`the event stream kept dropping (${maxRetries} reconnections); reload the session.`);
    }
    onState("reconnecting");
    await sleep(retryMs * Math.min(failures, 5), signal); // 1x, 2x, ... 5x the server's delay
  }
  return completion;
}

/** The gateway's JSON error message of a response, or its status line. */
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") return body.error.message;
  } catch (_) {
    // not JSON: fall through
  }
  return `HTTP ${response.status} ${response.statusText}`;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("aborted", "AbortError"));
    }, { once: true });
  });
}
