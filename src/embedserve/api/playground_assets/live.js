// Live: requests per second, queue depth, batch sizes and tokens per second, read from
// GET /metrics (Prometheus text) every second while the panel is open. Rates are the change
// between two readings; this panel's own /metrics requests (and the page's files) are left out.

import { get, post } from "./api.js";
import { sparkline } from "./charts.js";
import { Work, el, clear, fixed } from "./ui.js";

const POLL_MS = 1000;
const HISTORY = 60;
const BURST = 64;
const CARDS = [
  ["requests_per_second", "Requests / s", 1],
  ["queue_depth", "Queue depth", 0],
  ["batch_size", "Mean batch size", 1],
  ["tokens_per_second", "Tokens / s", 0],
];

let visible = false;
let paused = false;
let timer = null;
let last = null;
let pollFailed = false;
const history = Object.fromEntries(CARDS.map(([name]) => [name, []]));
let work;

// Prometheus' text format: `name{label="value",...} number` per line.
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[key] = value.replace(/\\(.)/g, "$1");
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function reading(samples) {
  const sum = (name, keep = () => true) => samples.filter((s) => s.name === name && keep(s.labels)).reduce((a, s) => a + s.value, 0);
  const traffic = (labels) => labels.route !== "/metrics" && !String(labels.route).startsWith("/playground");
  const perModel = {};
  for (const s of samples) {
    if (!s.labels.model) continue;
    const m = (perModel[s.labels.model] ||= { depth: 0, batches: 0, inputs: 0, tokens: 0 });
    if (s.name === "embedserve_queue_depth") m.depth += s.value;
    if (s.name === "embedserve_batch_size_count") m.batches += s.value;
    if (s.name === "embedserve_batch_size_sum") m.inputs += s.value;
    if (s.name === "embedserve_input_tokens_total") m.tokens += s.value;
  }
  return {
    at: performance.now(),
    requests: sum("embedserve_requests_total", traffic),
    depth: sum("embedserve_queue_depth"),
    batches: sum("embedserve_batch_size_count"),
    inputs: sum("embedserve_batch_size_sum"),
    tokens: sum("embedserve_input_tokens_total"),
    perModel,
  };
}

function render(now, rates) {
  const cards = clear(document.getElementById("live-cards"));
  for (const [name, title, digits] of CARDS) {
    const values = history[name];
    const current = values.length ? values[values.length - 1] : 0;
    cards.append(el("div", { class: "card", dataset: { metric: name, value: current } },
      el("h3", {}, title),
      el("p", { class: "big" }, fixed(current, digits)),
      sparkline(values.length ? values : [0], `${title}, the last ${values.length} seconds`)));
  }
  const table = clear(document.getElementById("live-models"));
  table.append(
    el("caption", {}, `Since the server started: ${fixed(now.requests, 0)} requests, ${fixed(now.batches, 0)} batches, ${fixed(now.tokens, 0)} tokens`),
    el("thead", {}, el("tr", {}, ...["model", "queue depth", "batches", "mean batch size", "tokens"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...Object.entries(now.perModel).map(([model, m]) => el("tr", { dataset: { model } },
      el("th", { scope: "row" }, model),
      el("td", { class: "num" }, fixed(m.depth, 0)),
      el("td", { class: "num" }, fixed(m.batches, 0)),
      el("td", { class: "num" }, m.batches ? fixed(m.inputs / m.batches, 1) : "–"),
      el("td", { class: "num" }, fixed(m.tokens, 0))))));
  if (rates) work.done(`Updated ${new Date().toLocaleTimeString()}`);
}

async function sample() {
  const now = reading(parseMetrics(await get("metrics", { text: true })));
  let rates = null;
  if (last) {
    const seconds = Math.max((now.at - last.at) / 1000, 1e-3);
    const batches = now.batches - last.batches;
    rates = {
      requests_per_second: Math.max(0, now.requests - last.requests) / seconds,
      queue_depth: now.depth,
      batch_size: batches > 0 ? (now.inputs - last.inputs) / batches : 0,
      tokens_per_second: Math.max(0, now.tokens - last.tokens) / seconds,
    };
    for (const [name, value] of Object.entries(rates)) {
      history[name].push(value);
      if (history[name].length > HISTORY) history[name].shift();
    }
  }
  last = now;
  render(now, rates);
}

function poll() {
  clearTimeout(timer);
  timer = null;
  if (!visible || paused) return;
  sample().then(() => {
    if (pollFailed) work.hideError();
    pollFailed = false;
  }, (err) => {
    pollFailed = true;
    work.fail(err);
  }).finally(() => {
    if (visible && !paused) timer = setTimeout(poll, POLL_MS);
  });
}

export function shown(on) {
  visible = on;
  last = null; // a rate over the time the panel was hidden would say nothing
  if (on) poll();
  else clearTimeout(timer);
}

export function init() {
  work = new Work("live");
  const pause = document.getElementById("live-pause");
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    last = null;
    poll();
  });
  const form = document.getElementById("live-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    const model = document.getElementById("live-burst-model").value || undefined;
    button.disabled = true;
    let done = 0;
    const failures = [];
    await Promise.all(Array.from({ length: BURST }, (_, i) =>
      post("v1/embeddings", { model, input: `burst request ${i}: the quick brown fox jumps over the lazy dog` })
        .catch((err) => failures.push(err))
        .finally(() => { done += 1; })));
    button.disabled = false;
    if (failures.length) work.show(failures[0]);
    else work.done(`${done} requests answered`);
  });
}
