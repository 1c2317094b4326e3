// The gateway's HTTP API as the console uses it: the same routes as any other client
// (docs/gateway.md), with the user's API key as a bearer token.

import { errorMessage, followRun } from "./sse.js";

const KEY_STORAGE = "agent-runner-console-key";

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function storeKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** An error the gateway answered; `status` is the HTTP status (0: no answer). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const segment = encodeURIComponent;

export class Api {
  constructor(key) {
    this.key = key;
  }

  get headers() {
    return { Authorization: `Bearer ${this.key}` };
  }

  async request(method, path, body) {
    const init = { method, headers: { ...this.headers, Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, `the gateway did not answer (${error.message}); is it running?`);
    }
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response.status === 204 ? null : response.json();
  }

  apps() { return this.request("GET", "/v1/apps"); }

  sessions(app) { return this.request("GET", `/v1/sessions/${segment(app)}`); }

  history(app, sessionId) {
    return this.request("GET", `/v1/sessions/${segment(app)}/${segment(sessionId)}`);
  }

  submit(app, sessionId, message) {
    return this.request("POST", "/v1/runs", { app_name: app, session_id: sessionId, message });
  }

  run(invocationId) { return this.request("GET", `/v1/runs/${segment(invocationId)}`); }

  cancel(invocationId) {
    return this.request("POST", `/v1/runs/${segment(invocationId)}/cancel`);
  }

  confirm(invocationId, toolConfirmations) {
    return this.request("POST", `/v1/runs/${segment(invocationId)}/confirmations`, {
      tool_confirmations: toolConfirmations,
    });
  }

  trace(invocationId) { return this.request("GET", `/v1/runs/${segment(invocationId)}/trace`); }

  feedback(invocationId, stepId, kind, content) {
    const body = { step_id: stepId, kind };
    if (content) body.content = content;
    return this.request("POST", `/v1/runs/${segment(invocationId)}/feedback`, body);
  }

  /** Follow a run's events (see sse.js followRun); resolves with its completion. */
  follow(invocationId, options) {
    return followRun(`/v1/runs/${segment(invocationId)}/events`, { ...options, headers: this.headers });
  }
}
