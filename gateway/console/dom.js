// Building DOM nodes without innerHTML: every string becomes a text node, so text from the
// model, the tools or the user can never become markup.

/**
 * h("p", {class: "x", onclick: fn, "aria-label": "y"}, "text", childNode, ...)
 * Attributes starting with "on" are listeners; `hidden`/`disabled` booleans are properties;
 * children that are null/undefined/false are skipped; strings and numbers become text nodes.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

export function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

/** Pretty JSON of a value for a <pre> (strings that hold JSON are decoded first). */
export function pretty(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch (_) {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

/** "prompt 12 · completion 3 · total 15 tokens · 1 model call" */
export function usageText(usage) {
  if (!usage) return "no usage";
  const calls = usage.model_calls ?? 0;
  return `prompt ${usage.prompt_tokens ?? 0} · completion ${usage.completion_tokens ?? 0} · ` +
    `total ${usage.total_tokens ?? 0} tokens · ${calls} model call${calls === 1 ? "" : "s"}`;
}

export function costText(cost) {
  return typeof cost === "number" ? `$${cost.toFixed(6).replace(/0+$/, "").replace(/\.$/, ".0")}` : null;
}
