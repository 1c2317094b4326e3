// A run's trace as a graph: one row per depth (a step sits one row below its deepest parent),
// each step a button, the parent links drawn as SVG lines behind them. No layout library:
// traces are small (tens of steps), and a layered layout reads top to bottom like the run.

import { clear, costText, h, pretty, usageText } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

/** Depth of every step: 0 for roots, else 1 + the deepest known parent. */
export function levels(steps) {
  const byId = new Map(steps.map((step) => [step.step_id, step]));
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (start) => {
    // iterative DFS so a long chain cannot overflow the stack; a cycle counts as a root
    const stack = [start];
    while (stack.length) {
      const step = stack[stack.length - 1];
      if (depth.has(step.step_id)) { stack.pop(); continue; }
      visiting.add(step.step_id);
      const parents = (step.parent_ids || []).map((id) => byId.get(id)).filter(Boolean);
      const pending = parents.filter((p) => !depth.has(p.step_id) && !visiting.has(p.step_id));
      if (pending.length) { stack.push(...pending); continue; }
      const known = parents.filter((p) => depth.has(p.step_id)).map((p) => depth.get(p.step_id));
      depth.set(step.step_id, known.length ? Math.max(...known) + 1 : 0);
      visiting.delete(step.step_id);
      stack.pop();
    }
    return depth.get(start.step_id);
  };
  for (const step of steps) depthOf(step);
  return depth;
}

export function stepTitle(step) {
  switch (step.kind) {
    case "model_call": return `model call${step.agent ? ` · ${step.agent}` : ""}`;
    case "tool_call": return `tool · ${step.tool_name ?? "?"}${step.error ? " (failed)" : ""}`;
    case "transfer": return `transfer → ${step.to_agent ?? "?"}`;
    case "conclusion": return "conclusion";
    case "feedback": return `feedback${step.data?.kind ? ` · ${step.data.kind}` : ""}`;
    default: return step.kind.replace("_", " ");
  }
}

export class TraceView {
  /**
   * @param {object} elements graph, detail, summary containers
   * @param {object} actions onFeedback(invocationId, stepId, kind, content) -> Promise
   */
  constructor(elements, actions) {
    this.elements = elements;
    this.actions = actions;
    this.trace = null;
    this.observer = new ResizeObserver(() => this.drawEdges());
    this.observer.observe(elements.graph);
  }

  show(trace) {
    this.trace = trace;
    const { graph, summary } = this.elements;
    const cost = costText(trace.cost);
    summary.textContent = `run ${trace.invocation_id} · ${trace.status} · ${trace.agent ?? ""} · ` +
      `${usageText(trace.usage)}${cost ? ` · cost ${cost}` : ""} · ${trace.steps.length} steps`;
    clear(graph);
    const depth = levels(trace.steps);
    const rows = [];
    for (const step of trace.steps) {
      const level = depth.get(step.step_id) ?? 0;
      while (rows.length <= level) {
        rows.push(h("div", { class: "trace-level", role: "list", "aria-label": `depth ${rows.length}` }));
      }
      rows[level].append(h("div", { role: "listitem" },
        h("button", {
          type: "button",
          class: `step kind-${step.kind}${step.error ? " failed" : ""}`,
          dataset: { stepId: step.step_id },
          "aria-label": `${stepTitle(step)} (step ${step.step_id})`,
          onclick: () => this.select(step.step_id),
        },
        h("span", { class: "step-kind" }, stepTitle(step)),
        h("span", { class: "step-id" }, step.step_id))));
    }
    this.svg = document.createElementNS(SVG, "svg");
    this.svg.setAttribute("class", "trace-edges");
    this.svg.setAttribute("aria-hidden", "true");
    graph.append(this.svg, ...rows);
    this.drawEdges();
    clear(this.elements.detail);
    this.elements.detail.append(h("p", { class: "muted" }, "Choose a step to see it and give feedback."));
  }

  drawEdges() {
    if (!this.trace || !this.svg) return;
    const { graph } = this.elements;
    // measure without the old drawing, which would otherwise keep the graph as large as it was
    this.svg.setAttribute("width", "0");
    this.svg.setAttribute("height", "0");
    const box = graph.getBoundingClientRect();
    this.svg.setAttribute("width", String(graph.scrollWidth));
    this.svg.setAttribute("height", String(graph.scrollHeight));
    this.svg.replaceChildren();
    const anchor = (stepId) => graph.querySelector(`button.step[data-step-id="${CSS.escape(stepId)}"]`);
    for (const step of this.trace.steps) {
      const child = anchor(step.step_id);
      for (const parentId of step.parent_ids || []) {
        const parent = anchor(parentId);
        if (!child || !parent) continue;
        const from = parent.getBoundingClientRect();
        const to = child.getBoundingClientRect();
        const line = document.createElementNS(SVG, "line");
        line.setAttribute("x1", String(from.left + from.width / 2 - box.left + graph.scrollLeft));
        line.setAttribute("y1", String(from.bottom - box.top + graph.scrollTop));
        line.setAttribute("x2", String(to.left + to.width / 2 - box.left + graph.scrollLeft));
        line.setAttribute("y2", String(to.top - box.top + graph.scrollTop));
        this.svg.append(line);
      }
    }
  }

  select(stepId) {
    const step = this.trace.steps.find((s) => s.step_id === stepId);
    if (!step) return;
    for (const button of this.elements.graph.querySelectorAll("button.step")) {
      button.setAttribute("aria-pressed", String(button.dataset.stepId === stepId));
    }
    const detail = clear(this.elements.detail);
    const facts = [
      ["step", step.step_id],
      ["kind", step.kind],
      ["agent", step.agent],
      ["branch", step.branch],
      ["model", step.model],
      ["after", (step.parent_ids || []).join(", ") || null],
      ["usage", step.usage ? usageText(step.usage) : null],
      ["cost", costText(step.cost)],
      ["started", step.started_at],
      ["ended", step.ended_at],
    ].filter(([, value]) => value !== null && value !== undefined && value !== "");
    detail.append(
      h("h3", {}, stepTitle(step)),
      h("dl", { class: "facts" }, facts.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])),
    );
    for (const field of ["reply", "content", "tool_calls", "arguments", "result", "error", "data", "messages"]) {
      if (step[field] === undefined || step[field] === null) continue;
      detail.append(h("details", { open: field !== "messages" },
        h("summary", {}, field), h("pre", {}, pretty(step[field]))));
    }
    if (step.kind !== "feedback" && step.kind !== "memory_write") detail.append(this.feedbackForm(step));
  }

  feedbackForm(step) {
    const invocationId = this.trace.invocation_id;
    const result = h("div", { class: "feedback-result", role: "status", "aria-live": "polite" });
    const comment = h("textarea", { id: "correction-input", rows: "2", maxlength: "4000" });
    const send = (kind, content) => async () => {
      const text = content();
      if (!text) {
        result.replaceChildren(h("span", { class: "error-text" },
          "Type the correction first: what the agent should have done."));
        comment.focus();
        return;
      }
      for (const control of form.querySelectorAll("button, textarea")) control.disabled = true;
      result.replaceChildren("sending feedback...");
      try {
        const answer = await this.actions.onFeedback(invocationId, step.step_id, kind, text);
        result.replaceChildren(...feedbackAnswer(kind, answer));
      } catch (error) {
        result.replaceChildren(h("span", { class: "error-text" }, `feedback not stored: ${error.message}`));
      } finally {
        for (const control of form.querySelectorAll("button, textarea")) control.disabled = false;
      }
    };
    const typed = () => comment.value.trim();
    const form = h("section", { class: "feedback", "aria-label": "Feedback on this step" },
      h("h4", {}, "Feedback"),
      h("label", { for: "correction-input" }, "Comment or correction (what should have happened)"),
      comment,
      h("div", { class: "actions" },
        h("button", { type: "button", class: "thumb up", "aria-label": "Thumbs up: this step was right",
          onclick: send("positive", () => typed() || `Keep doing this: ${describe(step)}`) }, "Thumbs up"),
        h("button", { type: "button", class: "thumb down", "aria-label": "Thumbs down: this step was wrong",
          onclick: send("negative", () => typed() || `This step was wrong: ${describe(step)}`) }, "Thumbs down"),
        h("button", { type: "button", class: "send-correction", onclick: send("correction", typed) },
          "Send correction")),
      result);
    return form;
  }
}

/** One line saying what a step did, for feedback given without words. */
export function describe(step) {
  const cut = (text) => (text.length > 300 ? `${text.slice(0, 300)}...` : text);
  switch (step.kind) {
    case "tool_call":
      return cut(`call ${step.tool_name} with ${JSON.stringify(step.arguments ?? {})}`);
    case "model_call":
      if (step.reply) return cut(`answer "${step.reply}"`);
      return cut(`call ${(step.tool_calls || []).map((c) => c.function?.name ?? c.name).join(", ")}`);
    case "conclusion": return cut(`conclude "${step.content ?? ""}"`);
    case "transfer": return `hand the conversation to ${step.to_agent}`;
    default: return `the ${step.kind.replace("_", " ")} step ${step.step_id}`;
  }
}

/** What the gateway answered to feedback: the experience it created, if any. */
function feedbackAnswer(kind, answer) {
  const experience = answer?.experience;
  if (!experience) {
    return [h("p", {}, `${kind} feedback stored; no experience was created for it.`)];
  }
  return [
    h("p", {}, `${kind} feedback stored; it created this experience:`),
    h("dl", { class: "facts experience" },
      h("dt", {}, "id"), h("dd", {}, experience.id ?? experience.item_id ?? ""),
      h("dt", {}, "when"), h("dd", {}, experience.condition ?? ""),
      h("dt", {}, "rule"), h("dd", {}, experience.rule ?? ""),
      h("dt", {}, "confidence"), h("dd", {}, String(experience.confidence ?? "")),
      h("dt", {}, "scope"), h("dd", {}, experience.scope ?? "")),
  ];
}
