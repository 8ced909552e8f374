// Models: every loaded model as GET /model/info describes it, and loading / unloading one
// (POST /model/load, POST /model/unload: the admin scope when keys are on).

import { post } from "./api.js";
import { Work, busy, el, clear, fixed, mib } from "./ui.js";

const HEADINGS = ["model (kind)", "tasks", "runs on", "fidelity to fp32 (mean / min cosine)", "memory", "dimensions", "max tokens", "loaded in", ""];

function fidelity(m) {
  const f = m.fidelity;
  return f ? `${fixed(f.mean_cosine, 4)} / ${fixed(f.min_cosine, 4)}` : "–";
}

function row(m, isDefault, unload) {
  const dims = [m.dimensions ? String(m.dimensions) : "", m.multivector_dimensions ? `${m.multivector_dimensions} per token` : ""].filter(Boolean).join(", ") || "–";
  return el("tr", { dataset: { model: m.model_name } },
    el("th", { scope: "row", class: "name" }, m.model_name, isDefault ? el("span", { class: "tag" }, " default") : "",
      el("span", { class: "kind" }, m.kind || "")),
    el("td", { class: "tasks" }, (m.tasks || []).join(", ")),
    el("td", { class: "nowrap" }, [m.backend, m.dtype, m.device].filter(Boolean).join(" · ")),
    el("td", { class: "num", title: m.fidelity ? `${m.fidelity.mode} against ${m.fidelity.reference}, ${m.fidelity.samples} samples` : "" }, fidelity(m)),
    el("td", { class: "num", title: `weights ${mib(m.weights_bytes)}` }, mib(m.resident_memory_bytes)),
    el("td", { class: "num" }, dims),
    el("td", { class: "num" }, m.max_seq_length ?? "–"),
    el("td", { class: "num" }, m.load_seconds === undefined ? "–" : `${fixed(m.load_seconds, 1)} s`),
    el("td", {}, el("button", { type: "button", class: "small", "aria-label": `Unload ${m.model_name}`, onclick: (e) => unload(e.currentTarget, m.model_name) }, "Unload")));
}

export function init(state, refreshModels) {
  const work = new Work("models");
  const table = document.getElementById("models-table");
  const form = document.getElementById("load-form");
  const name = document.getElementById("load-name");

  const unload = (button, model) => busy(button, work, `Unloading ${model}…`, async () => {
    const answer = await post(`model/unload?model_name=${encodeURIComponent(model)}`);
    await refreshModels();
    return answer.message ? `${answer.message}: ${model}` : `unloaded ${model}`;
  });

  state.listeners.push(() => {
    if (state.error) work.show(state.error);
    else work.hideError();
    clear(table).append(
      el("caption", {}, `${state.models.length} model${state.models.length === 1 ? "" : "s"} loaded`),
      el("thead", {}, el("tr", {}, ...HEADINGS.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...state.models.map((m) => row(m, m.model_name === state.default, unload))));
    table.parentElement.scrollLeft = 0; // a narrow screen scrolls the table; a new list starts at its left
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const model = name.value.trim();
    busy(form.querySelector("button[type=submit]"), work, `Loading ${model}… (a model from the Hub downloads first)`, async () => {
      if (!model) throw new Error("type the name of a model to load");
      const answer = await post(`model/load?model_name=${encodeURIComponent(model)}`);
      await refreshModels();
      return answer.message;
    });
  });
  const refresh = document.getElementById("models-refresh");
  refresh.addEventListener("click", () => busy(refresh, work, "Reading /model/info…", async () => { await refreshModels(); return "refreshed"; }));
}
