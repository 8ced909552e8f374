// Jobs: fine-tuning jobs (GET /v1/fine_tuning/jobs), one job's progress, loss curve and metrics
// before and after (GET .../jobs/{id} and .../events), starting one from pasted pairs (POST) and
// cancelling one (POST .../cancel). While the panel is open and a job is queued or running, it
// is read again every second.

import { get, post } from "./api.js";
import { lineChart } from "./charts.js";
import { Work, busy, el, clear, fixed } from "./ui.js";

const POLL_MS = 1000;
const ACTIVE = new Set(["queued", "running"]);
const TOPICS = [
  ["how do I reset my password", "Open settings, choose security and press reset password."],
  ["where is my invoice", "Invoices are listed under billing in your account."],
  ["can I change my username", "Usernames can be changed once a month from the profile page."],
  ["how do I delete my account", "Account deletion is under settings, privacy, delete account."],
  ["what payment methods are accepted", "We accept cards, bank transfers and PayPal."],
  ["how long does shipping take", "Orders arrive within three to five working days."],
  ["can I return an item", "Items can be returned within thirty days for a full refund."],
  ["is there a student discount", "Students get fifteen percent off with a valid student card."],
  ["how do I contact support", "Write to support from the help page or use the chat."],
  ["do you ship abroad", "We ship to most countries in Europe and North America."],
  ["how do I track my order", "A tracking link is emailed as soon as the parcel leaves."],
  ["what is the warranty", "Every device has a two year warranty."],
];
const SAMPLE = [...TOPICS, ...TOPICS.map(([q, a]) => [`${q}?`, a.toLowerCase()])].map(([q, a]) => `${q}\t${a}`).join("\n");

let selected = null;
let timer = null;
let visible = false;
let work;

function jobRow(job) {
  const progress = el("progress", { max: 100, value: job.progress || 0, "aria-label": `progress of job ${job.id}` });
  return el("tr", { dataset: { job: job.id, status: job.status } },
    el("td", {}, el("button", { type: "button", class: "link", onclick: () => select(job.id) }, job.id.slice(0, 8))),
    el("td", {}, job.model),
    el("td", {}, job.method ? job.method.type : "–"),
    el("td", { class: `status ${job.status}` }, job.status),
    el("td", {}, progress, ` ${fixed(job.progress || 0, 0)}%`),
    el("td", { class: "num" }, job.loss === null ? "–" : fixed(job.loss, 4)),
    el("td", {}, job.fine_tuned_model || "–"));
}

function metricsTable(metrics) {
  const before = metrics.before || {};
  const after = metrics.after || {};
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])];
  if (!names.length) return el("p", { class: "hint", text: "No held-out metrics (fewer than 20 pairs, or not measured yet)." });
  return el("table", { class: "metrics" },
    el("caption", {}, "Held-out retrieval, before and after training"),
    el("thead", {}, el("tr", {}, ...["metric", "before", "after", "change"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...names.map((n) => el("tr", { dataset: { metric: n } },
      el("th", { scope: "row" }, n),
      el("td", { class: "num" }, fixed(before[n], 4)),
      el("td", { class: "num" }, fixed(after[n], 4)),
      el("td", { class: "num" }, n in before && n in after ? `${after[n] >= before[n] ? "+" : ""}${fixed(after[n] - before[n], 4)}` : "–")))));
}

function showDetail(job, events) {
  const box = clear(document.getElementById("job-detail"));
  const steps = events.filter((e) => e.type === "progress" && e.data.loss !== undefined && e.data.loss !== null);
  const total = job.total_steps ? ` of ${job.total_steps}` : "";
  const chart = el("div", { class: "chart", id: "job-loss" });
  box.append(
    el("h3", {}, `Job ${job.id}`),
    el("p", { class: "summary", dataset: { status: job.status } },
      `${job.status} · ${job.method.type} fine-tuning of ${job.model}`,
      job.fine_tuned_model ? ` → ${job.fine_tuned_model}` : "",
      ` · step ${job.trained_steps}${total} · epoch ${fixed(job.epoch, 2)} · ${job.training_pairs} pairs`),
    el("div", { class: "progress-line" },
      el("progress", { id: "job-progress", max: 100, value: job.progress || 0, "aria-label": "training progress" }),
      el("span", {}, ` ${fixed(job.progress || 0, 0)}%`)),
    job.error ? el("p", { class: "error", role: "alert" }, job.error.message) : "",
    el("div", { class: "results two" },
      el("figure", {}, el("figcaption", {}, "Training loss"), chart),
      el("div", {}, metricsTable(job.metrics))),
    el("details", {}, el("summary", {}, `Events (${events.length})`),
      el("ol", { class: "events" }, ...events.map((e) => el("li", { class: e.level }, e.message)))));
  lineChart(chart, steps.map((e) => e.data.step), steps.map((e) => e.data.loss), { xLabel: "step", yLabel: "loss" });
  if (ACTIVE.has(job.status)) {
    box.append(el("button", { type: "button", onclick: (e) => busy(e.currentTarget, work, "Cancelling…", async () => {
      await post(`v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/cancel`);
      await refresh();
      return "cancelled";
    }) }, "Cancel job"));
  }
}

async function refresh() {
  const list = await get("v1/fine_tuning/jobs?limit=20");
  const table = clear(document.getElementById("jobs-table"));
  table.append(
    el("caption", {}, list.data.length ? `${list.data.length} most recent jobs` : "No fine-tuning jobs yet"),
    el("thead", {}, el("tr", {}, ...["job", "base", "method", "status", "progress", "loss", "result"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...list.data.map(jobRow)));
  let active = list.data.some((j) => ACTIVE.has(j.status));
  if (selected) {
    const id = encodeURIComponent(selected);
    const [job, events] = await Promise.all([get(`v1/fine_tuning/jobs/${id}`), get(`v1/fine_tuning/jobs/${id}/events`)]);
    showDetail(job, events.data);
    active = active || ACTIVE.has(job.status);
    if (ACTIVE.has(job.status)) work.start(`Job ${job.id.slice(0, 8)} ${job.status}: ${fixed(job.progress || 0, 0)}%`, 100);
    if (ACTIVE.has(job.status)) work.step(job.progress || 0);
    else work.done(`Job ${job.id.slice(0, 8)} ${job.status}`);
  }
  return active;
}

function poll() {
  clearTimeout(timer);
  timer = null;
  if (!visible) return;
  refresh().then((active) => {
    if (active && visible) timer = setTimeout(poll, POLL_MS);
  }, (err) => work.fail(err));
}

function select(id) {
  selected = id;
  poll();
}

export function shown(on) {
  visible = on;
  if (on) poll();
  else clearTimeout(timer);
}

export function init() {
  work = new Work("jobs");
  const form = document.getElementById("job-form");
  document.getElementById("job-pairs").value = SAMPLE;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const suffix = document.getElementById("job-name").value.trim();
    const body = {
      model: document.getElementById("job-base").value,
      training_data: document.getElementById("job-pairs").value,
      method: document.getElementById("job-method").value,
      hyperparameters: {
        n_epochs: Number(document.getElementById("job-epochs").value),
        batch_size: Number(document.getElementById("job-batch").value),
      },
    };
    if (suffix) body.suffix = suffix;
    busy(form.querySelector("button[type=submit]"), work, "Creating the job…", async () => {
      const job = await post("v1/fine_tuning/jobs", body);
      select(job.id);
      return `Job ${job.id.slice(0, 8)} ${job.status}`;
    });
  });
  const again = document.getElementById("jobs-refresh");
  again.addEventListener("click", () => busy(again, work, "Reading the jobs…", async () => { await refresh(); }));
}
