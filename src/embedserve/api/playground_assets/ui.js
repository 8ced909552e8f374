// Small DOM helpers. Text from people and from the API only ever goes in as text nodes or
// attribute values, never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
export const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

export function lines(textarea) {
  return textarea.value.split("\n").map((s) => s.trim()).filter(Boolean);
}

export function fixed(value, digits = 3) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

export function mib(bytes) {
  return bytes === null || bytes === undefined ? "–" : `${(bytes / 1048576).toFixed(1)} MiB`;
}

// A panel's progress and errors: a <progress> (indeterminate, or n of total), a status line read
// out by screen readers, and an alert box holding the API's own message.
export class Work {
  constructor(name) {
    this.root = document.querySelector(`.work[data-for="${name}"]`);
    this.bar = el("progress", { class: "bar", hidden: true });
    this.status = el("p", { class: "work-status", role: "status", "aria-live": "polite" });
    this.error = el("p", { class: "error", role: "alert", hidden: true });
    this.root.append(this.bar, this.status, this.error);
  }
  hideError() {
    this.error.hidden = true;
    this.error.textContent = "";
  }
  start(label, total) {
    this.hideError();
    this.bar.hidden = false;
    this.root.setAttribute("aria-busy", "true");
    if (total) { this.bar.max = total; this.bar.value = 0; } else this.bar.removeAttribute("value");
    this.status.textContent = label;
  }
  step(done, label) {
    this.bar.value = done;
    if (label) this.status.textContent = label;
  }
  done(label = "") {
    this.bar.hidden = true;
    this.root.removeAttribute("aria-busy");
    this.status.textContent = label;
  }
  fail(err) {
    this.done("");
    this.show(err);
  }
  show(err) {
    this.error.hidden = false;
    this.error.textContent = err && err.status !== undefined ? err.toString() : String(err && err.message ? err.message : err);
  }
}

// Runs `task` with the button disabled (one run at a time) and the panel's progress shown; the
// task may return a line to leave in the status. An error shows the API's message.
export async function busy(button, work, label, task) {
  button.disabled = true;
  work.start(label);
  try {
    work.done((await task()) || "");
  } catch (err) {
    work.fail(err);
  } finally {
    button.disabled = false;
  }
}

// Fills a <select> with the models having any of the tasks in its data-tasks, keeping the choice.
export function fillModels(select, models, preferred) {
  const wanted = (select.dataset.tasks || "").split(" ").filter(Boolean);
  const fit = models.filter((m) => !wanted.length || wanted.some((t) => (m.tasks || []).includes(t)));
  const kept = select.value;
  clear(select);
  for (const m of fit) select.append(el("option", { value: m.model_name, text: `${m.model_name} (${(m.tasks || []).join(", ")})` }));
  if (!fit.length) select.append(el("option", { value: "", text: "no loaded model can do this" }));
  const names = fit.map((m) => m.model_name);
  select.value = names.includes(kept) ? kept : names.includes(preferred) ? preferred : names[0] || "";
  return fit;
}
