// The console's wiring: API key, app and session choice, the chat, runs, the trace panel.

import { Api, ApiError, storedKey, storeKey } from "./api.js";
import { costText, h, shortId, usageText } from "./dom.js";
import { TraceView } from "./trace.js";
import { Transcript } from "./transcript.js";

const $ = (id) => document.getElementById(id);
const APP_STORAGE = "agent-runner-console-app";

const ui = {
  keyForm: $("key-form"), keyInput: $("key-input"), keyForget: $("key-forget"),
  notice: $("notice"), appSelect: $("app-select"), newSession: $("new-session"),
  refreshSessions: $("refresh-sessions"), sessionList: $("session-list"),
  sessionLabel: $("session-label"), runStatus: $("run-status"), transcript: $("transcript"),
  composer: $("composer"), input: $("composer-input"), send: $("send"), cancel: $("cancel-run"),
  tracePanel: $("trace-panel"), traceClose: $("trace-close"),
};

const state = {
  api: null,
  app: null,
  sessionId: null,
  running: null, // invocation ID of the run being followed
  abort: null,
};

function say(text, kind = "info") {
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
}

function newSessionId() {
  return `web-${crypto.randomUUID().slice(0, 8)}`;
}

const transcript = new Transcript(ui.transcript, {
  onTrace: (invocationId) => openTrace(invocationId),
  onConfirm: (invocationId, decisions) => confirm(invocationId, decisions),
});

const traceView = new TraceView(
  { graph: $("trace-graph"), detail: $("step-detail"), summary: $("trace-summary") },
  { onFeedback: (invocationId, stepId, kind, content) => state.api.feedback(invocationId, stepId, kind, content) },
);

// --- connecting -------------------------------------------------------------------------

function setConnected(connected) {
  for (const control of [ui.appSelect, ui.newSession, ui.refreshSessions, ui.input, ui.send]) {
    control.disabled = !connected;
  }
  ui.keyForget.hidden = !connected;
  ui.input.placeholder = connected
    ? "Type a message (Enter sends, Shift+Enter for a new line)"
    : "Connect with an API key first";
  if (!connected) ui.cancel.disabled = true;
}

async function connect(key) {
  const api = new Api(key);
  say("connecting...");
  let apps;
  try {
    apps = (await api.apps()).apps;
  } catch (error) {
    setConnected(false);
    if (error instanceof ApiError && error.status === 401) storeKey("");
    say(`Not connected: ${error.message}`, "error");
    return;
  }
  state.api = api;
  storeKey(key);
  ui.keyInput.value = "";
  ui.appSelect.replaceChildren(...apps.map((app) => h("option", { value: app }, app)));
  const remembered = sessionStorage.getItem(APP_STORAGE);
  ui.appSelect.value = apps.includes(remembered) ? remembered : apps[0];
  setConnected(true);
  say("Connected.");
  await chooseApp(ui.appSelect.value);
  ui.input.focus();
}

function forget() {
  storeKey("");
  state.api = null;
  state.abort?.abort();
  setConnected(false);
  ui.sessionList.replaceChildren();
  transcript.clear();
  say("Key forgotten. Enter an API key to connect.");
  ui.keyInput.focus();
}

// --- apps and sessions ------------------------------------------------------------------

async function chooseApp(app) {
  state.app = app;
  sessionStorage.setItem(APP_STORAGE, app);
  startSession(newSessionId());
  await loadSessions();
}

function startSession(sessionId) {
  state.abort?.abort();
  state.sessionId = sessionId;
  state.running = null;
  transcript.clear();
  ui.sessionLabel.textContent = `session ${sessionId} · app ${state.app}`;
  statusParts = null;
  ui.runStatus.replaceChildren(h("span", { class: "muted" }, "No run yet."));
  ui.cancel.disabled = true;
  ui.send.disabled = !state.api;
  markCurrentSession();
}

function markCurrentSession() {
  for (const button of ui.sessionList.querySelectorAll("button")) {
    button.setAttribute("aria-current", String(button.dataset.sessionId === state.sessionId));
  }
}

async function loadSessions() {
  let listing;
  try {
    listing = await state.api.sessions(state.app);
  } catch (error) {
    say(`Sessions not loaded: ${error.message}`, "error");
    return;
  }
  const items = listing.sessions.map((session) => h("li", {},
    h("button", {
      type: "button",
      class: "session",
      dataset: { sessionId: session.session_id },
      onclick: () => openSession(session.session_id),
    },
    h("span", { class: "session-id" }, session.session_id),
    h("span", { class: "muted" }, ` ${session.event_count} events · ${new Date(session.updated_at).toLocaleString()}`))));
  ui.sessionList.replaceChildren(...(items.length ? items : [h("li", { class: "muted" }, "No sessions yet.")]));
  markCurrentSession();
}

async function openSession(sessionId) {
  startSession(sessionId);
  let history;
  try {
    history = await state.api.history(state.app, sessionId);
  } catch (error) {
    say(`History not loaded: ${error.message}`, "error");
    return;
  }
  const events = history.events;
  const last = events[events.length - 1];
  const pausedRun = last && (last.type === "run.paused" ||
    (last.type === "runner.completion" && last.status === "paused")) ? last.invocation_id : null;
  for (const event of events) {
    transcript.runHeader(event.invocation_id);
    transcript.show(event, { live: false, actionable: event.invocation_id === pausedRun });
  }
  say(`Session ${sessionId}: ${events.length} stored events.`);
}

// --- runs -------------------------------------------------------------------------------

let statusParts = null; // {invocationId, badge, text} of the run the status bar shows

function showRunStatus(invocationId, status, detail = {}) {
  if (statusParts?.invocationId !== invocationId) {
    // built once per run, so a focused button keeps its focus while events arrive
    statusParts = { invocationId, badge: h("span", {}), text: h("span", {}) };
    ui.runStatus.replaceChildren(statusParts.badge, statusParts.text, " ",
      h("button", {
        type: "button",
        class: "link status-trace",
        "aria-label": `Open the trace of run ${shortId(invocationId)}`,
        onclick: () => openTrace(invocationId),
      }, "Trace"));
  }
  const cost = costText(detail.cost);
  statusParts.badge.className = `badge status-${status}`;
  statusParts.badge.textContent = status;
  statusParts.text.textContent = [
    ` run ${shortId(invocationId)}`,
    detail.author ? ` · ${detail.author} is speaking` : "",
    detail.usage ? ` · ${usageText(detail.usage)}` : "",
    cost ? ` · cost ${cost}` : "",
  ].join("");
}

async function follow(invocationId) {
  state.abort?.abort();
  const abort = new AbortController();
  state.abort = abort;
  state.running = invocationId;
  ui.cancel.disabled = false;
  ui.send.disabled = true;
  showRunStatus(invocationId, "queued");
  let author = null;
  try {
    const completion = await state.api.follow(invocationId, {
      signal: abort.signal,
      onEvent: (event) => {
        if (event.author && event.author !== "user" && event.author !== "agent-runner") {
          author = event.branch ? `${event.author} [${event.branch}]` : event.author;
        }
        transcript.show(event);
        if (event.type === "runner.completion") {
          showRunStatus(invocationId, event.status, { usage: event.usage, cost: event.cost });
        } else if (event.type === "run.queued") {
          showRunStatus(invocationId, "queued");
        } else {
          showRunStatus(invocationId, "running", { author });
        }
      },
      onReset: (info) => {
        transcript.note(info.first_seq === null
          ? "The run's events expired; showing the session's stored history instead."
          : `Events ${info.missed_from_seq}-${info.first_seq - 1} are no longer held; reload the session for them.`, "error");
        if (info.first_seq === null) openSession(state.sessionId);
      },
      onState: (connection) => {
        if (connection === "reconnecting") say("Connection dropped; resuming the run's events...");
        else if (connection === "connected") say("");
      },
    });
    if (completion === null && !abort.signal.aborted) {
      const run = await state.api.run(invocationId);
      showRunStatus(invocationId, run.status, run.completion || {});
    }
  } catch (error) {
    if (!abort.signal.aborted) say(`The run's events stopped: ${error.message}`, "error");
  } finally {
    if (state.running === invocationId) {
      state.running = null;
      ui.cancel.disabled = true;
      ui.send.disabled = !state.api;
    }
  }
  if (!abort.signal.aborted) loadSessions();
}

async function send(text) {
  if (!state.api || !text.trim()) return;
  transcript.userPending(text);
  let submitted;
  try {
    submitted = await state.api.submit(state.app, state.sessionId, text);
  } catch (error) {
    transcript.note(`Not sent: ${error.message}`, "error");
    return;
  }
  await follow(submitted.invocation_id);
}

async function confirm(invocationId, decisions) {
  const submitted = await state.api.confirm(invocationId, decisions);
  follow(submitted.invocation_id);
}

// --- the trace panel --------------------------------------------------------------------

let traceShown = null; // the invocation whose trace the panel shows
let traceTimer = null;

async function openTrace(invocationId, { refresh = false } = {}) {
  clearTimeout(traceTimer);
  traceShown = invocationId;
  ui.tracePanel.hidden = false;
  if (!refresh) {
    $("trace-summary").textContent = `loading the trace of run ${invocationId}...`;
    $("trace-graph").replaceChildren();
    $("step-detail").replaceChildren();
  }
  let trace;
  try {
    trace = await state.api.trace(invocationId);
  } catch (error) {
    if (!refresh) {
      $("trace-summary").textContent = `No trace: ${error.message}`;
      ui.traceClose.focus();
    }
    return;
  }
  if (traceShown !== invocationId || ui.tracePanel.hidden) return;
  const selected = $("trace-graph").querySelector('button.step[aria-pressed="true"]')?.dataset.stepId;
  traceView.show(trace);
  if (selected) traceView.select(selected);
  else if (!refresh) ui.tracePanel.querySelector("button.step")?.focus();
  // A run still going: show its steps as they are written.
  if (trace.status === "running") {
    traceTimer = setTimeout(() => openTrace(invocationId, { refresh: true }), 1500);
  }
}

// --- events -----------------------------------------------------------------------------

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (key) connect(key);
  else say("Enter an API key first.", "error");
});
ui.keyForget.addEventListener("click", forget);
ui.appSelect.addEventListener("change", () => chooseApp(ui.appSelect.value));
ui.newSession.addEventListener("click", () => { startSession(newSessionId()); ui.input.focus(); });
ui.refreshSessions.addEventListener("click", loadSessions);
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.running) {
    // One run at a time in the page: the next message would hide this run's stream.
    say("A run is going on: wait for its answer, or stop it first.", "error");
    return;
  }
  const text = ui.input.value;
  ui.input.value = "";
  send(text);
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.cancel.addEventListener("click", async () => {
  if (!state.running) return;
  try {
    await state.api.cancel(state.running);
    say("Asked the run to stop.");
  } catch (error) {
    say(`Not stopped: ${error.message}`, "error");
  }
});
ui.traceClose.addEventListener("click", () => {
  clearTimeout(traceTimer);
  ui.tracePanel.hidden = true;
  ui.input.focus();
});

// `agent-runner dev` prints the console's URL with its key in the fragment (never sent to the
// server): keep it for this tab and take it out of the address bar and history.
const fragmentKey = new URLSearchParams(location.hash.slice(1)).get("key");
if (fragmentKey) {
  storeKey(fragmentKey);
  history.replaceState(null, "", location.pathname + location.search);
}

setConnected(false);
if (storedKey()) connect(storedKey());
else say("Enter an API key to connect.");
