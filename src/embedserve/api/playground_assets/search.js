// Search and rerank: one query, pasted documents, a ranked column per way the loaded models can
// rank them, side by side. What ranks is read from each model's tasks:
//   score        -> its cross-encoder scores        (POST /v1/rerank)
//   multivector  -> MaxSim of its token vectors     (POST /v1/rerank)
//   embed        -> cosine of its vectors           (POST /v1/rerank; beside MaxSim or a cross-encoder,
//                                                    also from POST /v1/embeddings)
//   sparse       -> dot product of its term weights (POST /v1/encodings)

import { post, hasTask } from "./api.js";
import { bar } from "./charts.js";
import { cosine } from "./linalg.js";
import { Work, el, clear, lines, fixed } from "./ui.js";

const QUERY = "How do I keep my sourdough starter alive?";
const DOCUMENTS = [
  "Feed the starter equal weights of flour and water every day and keep it at room temperature.",
  "Sourdough bread needs a long, slow fermentation for its sour taste.",
  "The football match was postponed because of heavy rain.",
  "A neglected starter can be revived with a few days of regular feeding.",
  "Store bought yeast works faster than a wild starter.",
];

export function rankers(models) {
  const out = [];
  for (const m of models) {
    const name = m.model_name;
    const late = hasTask(m, "multivector");
    if (hasTask(m, "score")) out.push({ model: name, method: "cross-encoder", route: "/v1/rerank" });
    else if (late) out.push({ model: name, method: "MaxSim", route: "/v1/rerank" });
    else if (hasTask(m, "embed")) out.push({ model: name, method: "cosine", route: "/v1/rerank" });
    if (hasTask(m, "embed") && (late || hasTask(m, "score"))) out.push({ model: name, method: "cosine", route: "/v1/embeddings" });
    if (hasTask(m, "sparse")) out.push({ model: name, method: "sparse dot product", route: "/v1/encodings" });
  }
  return out;
}

const key = (r) => `${r.model}|${r.route}`;

// Scores in the documents' order.
async function scores(ranker, query, documents) {
  const { model } = ranker;
  if (ranker.route === "/v1/rerank") {
    const answer = await post("v1/rerank", { model, query, documents, return_documents: false });
    const out = new Array(documents.length);
    for (const r of answer.results) out[r.index] = r.relevance_score;
    return out;
  }
  if (ranker.route === "/v1/embeddings") {
    const [q, d] = await Promise.all([
      post("v1/embeddings", { model, input: [query], input_type: "query" }),
      post("v1/embeddings", { model, input: documents, input_type: "document" }),
    ]);
    const qv = q.data[0].embedding;
    return d.data.sort((a, b) => a.index - b.index).map((item) => cosine(qv, item.embedding));
  }
  const body = (input, inputType) => ({ model, input, outputs: ["sparse"], input_type: inputType });
  const [q, d] = await Promise.all([post("v1/encodings", body([query], "query")), post("v1/encodings", body(documents, "document"))]);
  const weights = new Map(q.data[0].sparse.indices.map((id, i) => [id, q.data[0].sparse.values[i]]));
  return d.data.sort((a, b) => a.index - b.index)
    .map((item) => item.sparse.indices.reduce((sum, id, i) => sum + (weights.get(id) || 0) * item.sparse.values[i], 0));
}

function column(ranker) {
  return el("section", { class: "ranking", dataset: { model: ranker.model, method: ranker.method, route: ranker.route }, "aria-busy": "true" },
    el("h3", {}, ranker.model),
    el("p", { class: "method" }, `${ranker.method} · ${ranker.route}`),
    el("p", { class: "hint", text: "ranking…" }));
}

function fill(section, documents, values) {
  section.removeAttribute("aria-busy");
  section.querySelector(".hint").remove();
  const order = values.map((v, i) => i).sort((a, b) => values[b] - values[a] || a - b);
  const hi = Math.max(...values);
  const lo = Math.min(...values);
  const list = el("ol", { class: "ranked" });
  for (const i of order) {
    list.append(el("li", { dataset: { index: i, score: values[i] } },
      el("span", { class: "badge", title: documents[i] }, `D${i + 1}`),
      el("span", { class: "doc", title: documents[i] }, documents[i]),
      el("span", { class: "score" }, fixed(values[i], 4)),
      bar(hi > lo ? 0.08 + (0.92 * (values[i] - lo)) / (hi - lo) : 1))); // the column's range, lowest a sliver
  }
  section.append(list);
}

export function init(state) {
  const form = document.getElementById("search-form");
  const work = new Work("search");
  const box = document.getElementById("search-rankers");
  document.getElementById("search-query").value = QUERY;
  document.getElementById("search-docs").value = DOCUMENTS.join("\n");
  state.listeners.push(() => {
    const before = new Set([...box.querySelectorAll("input:not(:checked)")].map((i) => i.value));
    for (const node of [...box.children]) if (node.tagName !== "LEGEND") node.remove();
    const found = rankers(state.models);
    if (!found.length) box.append(el("p", { class: "hint", text: "no loaded model can rank" }));
    found.forEach((r, i) => {
      const id = `ranker-${i}`;
      box.append(el("span", { class: "check" },
        el("input", { type: "checkbox", id, value: key(r), checked: !before.has(key(r)) }),
        el("label", { for: id }, `${r.model} · ${r.method} (${r.route})`)));
    });
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    const query = document.getElementById("search-query").value.trim();
    const documents = lines(document.getElementById("search-docs"));
    const chosen = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
    const todo = rankers(state.models).filter((r) => chosen.has(key(r)));
    const results = clear(document.getElementById("search-results"));
    if (!query || !documents.length || !todo.length) {
      work.show(new Error("give a query, at least one document (one per line) and at least one way to rank"));
      return;
    }
    button.disabled = true;
    work.start(`Ranking ${documents.length} documents 0 / ${todo.length} ways…`, todo.length);
    let done = 0;
    const failures = [];
    await Promise.all(todo.map(async (ranker) => {
      const section = column(ranker);
      results.append(section);
      try {
        fill(section, documents, await scores(ranker, query, documents));
      } catch (err) {
        section.removeAttribute("aria-busy");
        section.querySelector(".hint").replaceWith(el("p", { class: "error", role: "alert" }, err.toString()));
        failures.push(err);
      }
      done += 1;
      work.step(done, `Ranking ${documents.length} documents ${done} / ${todo.length} ways…`);
    }));
    work.done(`${documents.length} documents ranked ${todo.length - failures.length} ways` + (failures.length ? `, ${failures.length} failed` : ""));
    button.disabled = false;
  });
}
