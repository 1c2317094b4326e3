// The conversation: events (live from a run's stream, or stored in a session) as list items.
// Every text from the model, tools or users goes in with textContent (dom.js), never as HTML.

import { costText, h, pretty, shortId, usageText } from "./dom.js";

function speaker(event) {
  return event.branch ? `${event.author} [${event.branch}]` : event.author;
}

function argumentsOf(call) {
  const raw = call.function?.arguments ?? "{}";
  try {
    const parsed = JSON.parse(raw);
    return parsed && typeof parsed === "object" && !Array.isArray(parsed) ? parsed : {};
  } catch (_) {
    return {};
  }
}

export class Transcript {
  /**
   * @param {HTMLElement} list the <ol>
   * @param {object} actions onTrace(invocationId), onConfirm(invocationId, decisions)
   */
  constructor(list, actions) {
    this.list = list;
    this.actions = actions;
    this.clear();
  }

  clear() {
    this.list.replaceChildren();
    this.streaming = new Map(); // "invocation|author|branch" -> text element
    this.toolCalls = new Map(); // call id -> list item
    this.pendingUser = null;
    this.runsShown = new Set();
  }

  add(item) {
    this.list.append(item);
    item.scrollIntoView?.({ block: "nearest" });
    return item;
  }

  note(text, kind = "note") {
    return this.add(h("li", { class: `item ${kind}` }, text));
  }

  /** The user's message as sent, before the run's own `message` event confirms it. */
  userPending(text) {
    this.pendingUser = this.add(
      h("li", { class: "item msg user pending" },
        h("div", { class: "who" }, "you"),
        h("p", { class: "text" }, text)),
    );
  }

  /** A header per run in a session's history: its ID and a button to open its trace. */
  runHeader(invocationId) {
    if (this.runsShown.has(invocationId)) return;
    this.runsShown.add(invocationId);
    this.add(h("li", { class: "item run-header", dataset: { invocation: invocationId } },
      h("span", {}, `run ${shortId(invocationId)}`),
      h("button", {
        type: "button",
        class: "link",
        "aria-label": `Open the trace of run ${shortId(invocationId)}`,
        onclick: () => this.actions.onTrace(invocationId),
      }, "Trace")));
  }

  /** Show one event. `live` is false for a session's stored history. */
  show(event, { live = true, actionable = live } = {}) {
    switch (event.type) {
      case "message.delta": return this.delta(event);
      case "message": return this.message(event);
      case "tool.result": return this.toolResult(event);
      case "state.update":
        return this.note(`${speaker(event)} updated state: ${Object.keys(event.state_delta || {}).join(", ")}`);
      case "error":
        return this.add(h("li", { class: "item error", role: "alert" },
          h("strong", {}, `error (${event.error?.type ?? "unknown"}) from ${speaker(event)}: `),
          event.error?.message ?? ""));
      case "run.paused": return this.paused(event, actionable);
      case "run.queued":
        return this.note(`waiting: run ${shortId(event.waiting_for)} holds this session`);
      case "run.restarted":
        this.discardStreaming(event.invocation_id);
        return this.note(`the worker restarted the run (attempt ${event.attempt}); the reply streams again`);
      case "agent.transfer":
        return this.add(h("li", { class: "item transfer" },
          `${speaker(event)} handed the conversation to ${event.to_agent}`));
      case "memory.injected": return this.memory(event);
      case "runner.completion": return this.completion(event);
      default:
        return this.note(`${event.type} from ${speaker(event)}`);
    }
  }

  streamKey(event) {
    return `${event.invocation_id}|${event.author}|${event.branch ?? ""}`;
  }

  delta(event) {
    const key = this.streamKey(event);
    let text = this.streaming.get(key);
    if (!text) {
      text = h("p", { class: "text" });
      this.add(h("li", { class: "item msg agent streaming", dataset: { author: event.author } },
        h("div", { class: "who" }, speaker(event)), text));
      this.streaming.set(key, text);
    }
    text.textContent += event.delta;
  }

  discardStreaming(invocationId) {
    for (const [key, text] of this.streaming) {
      if (key.startsWith(`${invocationId}|`)) {
        text.closest("li")?.remove();
        this.streaming.delete(key);
      }
    }
  }

  message(event) {
    const message = event.message || {};
    if (message.role === "user") {
      if (this.pendingUser) {
        this.pendingUser.classList.remove("pending");
        this.pendingUser = null;
        return;
      }
      return this.add(h("li", { class: "item msg user" },
        h("div", { class: "who" }, "you"), h("p", { class: "text" }, message.content ?? "")));
    }
    const key = this.streamKey(event);
    const streamed = this.streaming.get(key);
    this.streaming.delete(key);
    const content = typeof message.content === "string" ? message.content : "";
    if (content) {
      if (streamed) {
        streamed.textContent = content;
        streamed.closest("li").classList.remove("streaming");
      } else {
        this.add(h("li", { class: "item msg agent", dataset: { author: event.author } },
          h("div", { class: "who" }, speaker(event)), h("p", { class: "text" }, content)));
      }
    } else if (streamed) {
      streamed.closest("li").remove();
    }
    for (const call of message.tool_calls || []) {
      const item = this.add(h("li", { class: "item tool", dataset: { callId: call.id } },
        h("div", { class: "who" }, `${speaker(event)} called a tool`),
        h("p", { class: "tool-name" }, h("code", {}, call.function?.name ?? "?")),
        h("pre", { class: "tool-args", "aria-label": "arguments" }, pretty(call.function?.arguments ?? ""))));
      this.toolCalls.set(call.id, item);
    }
    if (event.usage) {
      this.list.lastElementChild?.setAttribute("title", usageText(event.usage));
    }
  }

  toolResult(event) {
    const message = event.message || {};
    const body = event.error
      ? h("pre", { class: "tool-result failed" }, `${event.error.type}: ${event.error.message}`)
      : h("pre", { class: "tool-result" }, pretty(message.content ?? ""));
    const label = h("div", { class: "who" }, `result of ${message.name ?? "the tool"}`);
    const call = this.toolCalls.get(message.tool_call_id);
    if (call) {
      call.append(label, body);
      call.classList.add("done");
    } else {
      this.add(h("li", { class: "item tool done" }, label, body));
    }
  }

  paused(event, actionable) {
    const calls = event.requested_confirmations || [];
    const decisions = {};
    const item = h("li", { class: "item confirm", role: "group", "aria-label": "Confirmation needed" },
      h("div", { class: "who" }, `${speaker(event)} asks you to confirm`));
    const status = h("p", { class: "confirm-status", role: "status" });
    const send = () => {
      if (Object.keys(decisions).length < calls.length) {
        status.textContent = `${Object.keys(decisions).length} of ${calls.length} answered`;
        return;
      }
      for (const button of item.querySelectorAll("button, input, textarea")) button.disabled = true;
      status.textContent = "sending your answer...";
      this.actions.onConfirm(event.invocation_id, decisions).then(
        () => { status.textContent = "answered; the run goes on"; },
        (error) => {
          status.textContent = `not sent: ${error.message}`;
          for (const button of item.querySelectorAll("button, input, textarea")) button.disabled = false;
        },
      );
    };
    for (const call of calls) {
      const args = argumentsOf(call);
      const editable = (event.editable_params || {})[call.id] || [];
      const inputs = {};
      const fieldset = h("fieldset", { class: "confirm-call" },
        h("legend", {}, h("code", {}, call.function?.name ?? "?")),
        h("pre", { class: "tool-args", "aria-label": "arguments" }, pretty(call.function?.arguments ?? "")));
      for (const name of editable) {
        const id = `edit-${call.id}-${name}`.replace(/[^A-Za-z0-9_-]/g, "_");
        inputs[name] = h("input", { id, type: "text", value: JSON.stringify(args[name] ?? null) });
        fieldset.append(h("div", { class: "field" },
          h("label", { for: id }, `${name} (JSON)`), inputs[name]));
      }
      const choose = (approved) => () => {
        if (approved && editable.length) {
          const edited = { ...args };
          try {
            for (const [name, input] of Object.entries(inputs)) edited[name] = JSON.parse(input.value);
          } catch (error) {
            status.textContent = `an edited value is not JSON: ${error.message}`;
            return;
          }
          const changed = JSON.stringify(edited) !== JSON.stringify(args);
          decisions[call.id] = changed ? { arguments: edited } : true;
        } else {
          decisions[call.id] = approved;
        }
        for (const button of fieldset.querySelectorAll("button")) {
          button.setAttribute("aria-pressed", String(button.dataset.approve === String(approved)));
        }
        send();
      };
      if (actionable) {
        fieldset.append(h("div", { class: "actions" },
          h("button", { type: "button", class: "approve", dataset: { approve: "true" },
            "aria-pressed": "false", onclick: choose(true) }, "Approve"),
          h("button", { type: "button", class: "refuse", dataset: { approve: "false" },
            "aria-pressed": "false", onclick: choose(false) }, "Refuse")));
      }
      item.append(fieldset);
    }
    if (actionable) item.append(status);
    else item.append(h("p", { class: "muted" }, "(answered or no longer waiting)"));
    this.add(item);
    item.querySelector("button.approve")?.focus();
  }

  memory(event) {
    const items = event.items || [];
    if (!items.length) return this.note(`${speaker(event)} searched its memory: nothing relevant`);
    const list = h("ul", { class: "memory-items" },
      items.map((item) => h("li", {}, `${item.kind} ${item.id}: ${item.text}`)));
    return this.add(h("li", { class: "item note memory" },
      `${speaker(event)} was told ${items.length} item${items.length === 1 ? "" : "s"} from memory:`, list));
  }

  completion(event) {
    for (const key of [...this.streaming.keys()]) {
      if (key.startsWith(`${event.invocation_id}|`)) this.streaming.delete(key);
    }
    const cost = costText(event.cost);
    this.add(h("li", { class: `item completion status-${event.status}` },
      h("span", { class: "badge" }, event.status),
      ` run ${shortId(event.invocation_id)} · ${usageText(event.usage)}`,
      cost ? ` · cost ${cost}` : null,
      event.error ? h("span", { class: "error-text" }, ` · ${event.error.type}: ${event.error.message}`) : null,
      " ",
      h("button", {
        type: "button",
        class: "link open-trace",
        "aria-label": `Open the trace of run ${shortId(event.invocation_id)}`,
        onclick: () => this.actions.onTrace(event.invocation_id),
      }, "Open trace")));
  }
}
