// Hybrid: what a sparse or multi-vector model makes of a query and a document (POST /v1/encodings).
// Sparse: each side's heaviest terms with their weights, the terms both share marked, and the
// lexical score (the dot product of the two weight vectors). Multi-vector: for each query token,
// the document token its vector is closest to, and the MaxSim score those best matches add up to.
//
// Token labels for the vectors come from POST /tokenize (with the model's query / document prompt)
// and are lined up with the vectors the way the model's `kind` (GET /model/info: how its outputs
// are computed) keeps its tokens: BGE-M3 drops the first (CLS); a ColBERT-style multi-vector model
// cuts a query to its fixed length and pads it with [MASK] (query expansion), and cuts a document
// to its maximum length before leaving punctuation out (its skiplist); any other keeps them all.
// Where the counts still differ, vectors are numbered instead. The similarities are the model's,
// whatever the labels.

import { post, hasTask } from "./api.js";
import { bar } from "./charts.js";
import { cosine } from "./linalg.js";
import { Work, busy, el, clear, fixed } from "./ui.js";

const TOP_TERMS = 20;
const PUNCTUATION = /^[\p{P}\p{S}]+$/u;

// The first `length` tokens, the closing special token kept (a tokenizer truncates inside it).
function cut(tokens, length) {
  if (tokens.length <= length) return tokens;
  const last = tokens[tokens.length - 1];
  return last.special ? [...tokens.slice(0, length - 1), last] : tokens.slice(0, length);
}

export function alignTokens(tokens, count, kind, side) {
  let kept = tokens;
  if (kind === "bge-m3" && tokens.length && tokens[0].special) kept = tokens.slice(1);
  if (kind === "multi-vector" && side === "query") {
    kept = cut(tokens, count);
    kept = kept.concat(Array.from({ length: count - kept.length }, () => ({ text: "[MASK]" })));
  }
  if (kind === "multi-vector" && side === "document") {
    const skip = (list) => list.filter((t) => t.special || !PUNCTUATION.test(t.text));
    for (let length = tokens.length; length > 0 && skip(kept).length !== count; length--) kept = cut(tokens, length);
    kept = skip(kept);
  }
  if (kept.length === count) return kept.map((t) => t.text);
  return Array.from({ length: count }, (_, i) => `#${i + 1}`);
}

async function tokensOf(model, text, promptName) {
  try {
    return (await post("tokenize", { model, inputs: text, prompt_name: promptName }))[0];
  } catch {
    return (await post("tokenize", { model, inputs: text }))[0]; // a model without that prompt
  }
}

function termTable(id, caption, sparse, other) {
  const terms = sparse.indices.map((index, i) => ({ index, weight: sparse.values[i], text: sparse.tokens[i] }));
  terms.sort((a, b) => b.weight - a.weight);
  const top = terms.slice(0, TOP_TERMS);
  const hi = top.length ? top[0].weight : 1;
  const table = el("table", { id, class: "terms" },
    el("caption", {}, `${caption}: ${terms.length} terms${terms.length > TOP_TERMS ? `, the ${TOP_TERMS} heaviest` : ""}`),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "term"), el("th", { scope: "col" }, "weight"), el("th", { scope: "col" }, ""))));
  const body = el("tbody");
  for (const t of top) {
    const shared = other.has(t.index);
    body.append(el("tr", { class: shared ? "shared" : "", dataset: { term: t.text, weight: t.weight } },
      el("td", {}, el("code", {}, t.text), shared ? el("span", { class: "tag" }, " in both") : ""),
      el("td", { class: "num" }, fixed(t.weight, 4)),
      el("td", { class: "barcell" }, bar(t.weight / hi, shared ? "hot" : ""))));
  }
  table.append(body);
  return table;
}

function sparseView(query, doc) {
  const q = new Map(query.indices.map((id, i) => [id, query.values[i]]));
  const d = new Map(doc.indices.map((id, i) => [id, doc.values[i]]));
  let score = 0;
  for (const [id, w] of q) if (d.has(id)) score += w * d.get(id);
  return el("section", { class: "hybrid-part" },
    el("h3", {}, "Sparse terms"),
    el("p", { class: "summary", dataset: { lexical: score } }, `Lexical score (dot product of the weights): ${fixed(score, 4)}`),
    el("div", { class: "results two" },
      el("div", { class: "scroll" }, termTable("hybrid-query-terms", "Query", query, d)),
      el("div", { class: "scroll" }, termTable("hybrid-doc-terms", "Document", doc, q))));
}

function multivectorView(queryVectors, docVectors, queryLabels, docLabels, served) {
  const body = el("tbody");
  let sum = 0;
  queryVectors.forEach((qv, i) => {
    let best = -Infinity;
    let at = 0;
    docVectors.forEach((dv, j) => { const s = cosine(qv, dv); if (s > best) { best = s; at = j; } });
    sum += best;
    body.append(el("tr", { dataset: { queryToken: queryLabels[i], docToken: docLabels[at], sim: best } },
      el("td", {}, el("code", {}, queryLabels[i])),
      el("td", {}, el("code", {}, docLabels[at])),
      el("td", { class: "num" }, fixed(best, 4)),
      el("td", { class: "barcell" }, bar((best + 1) / 2))));
  });
  const mean = queryVectors.length ? sum / queryVectors.length : 0;
  return el("section", { class: "hybrid-part" },
    el("h3", {}, "Token-to-token best matches (MaxSim)"),
    el("p", { class: "summary", dataset: { sum, mean } },
      `Sum of best matches ${fixed(sum, 4)}, mean ${fixed(mean, 4)} over ${queryVectors.length} query vectors and ${docVectors.length} document vectors`,
      served === null ? "" : `; the server's MaxSim (/v1/rerank): ${fixed(served, 4)}`),
    el("div", { class: "scroll" }, el("table", { id: "hybrid-matches", class: "matches" },
      el("thead", {}, el("tr", {}, ...["query token", "best document token", "similarity", ""].map((h) => el("th", { scope: "col" }, h)))),
      body)));
}

export function init(state) {
  const form = document.getElementById("hybrid-form");
  const work = new Work("hybrid");
  document.getElementById("hybrid-query").value = "what do learned sparse models weigh?";
  document.getElementById("hybrid-doc").value = "Learned sparse retrieval models weigh each vocabulary term by its importance to the text.";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = document.getElementById("hybrid-model").value;
    const query = document.getElementById("hybrid-query").value.trim();
    const doc = document.getElementById("hybrid-doc").value.trim();
    const model = state.models.find((m) => m.model_name === name);
    const out = clear(document.getElementById("hybrid-results"));
    busy(form.querySelector("button[type=submit]"), work, "Encoding the query and the document…", async () => {
      if (!model) throw new Error("no loaded model has sparse or multi-vector outputs");
      if (!query || !doc) throw new Error("give a query and a document");
      const outputs = ["sparse", "multivector"].filter((t) => hasTask(model, t));
      const encode = (input, inputType) => post("v1/encodings", { model: name, input, outputs, input_type: inputType, sparse: { return_tokens: true } });
      const [q, d] = await Promise.all([encode(query, "query"), encode(doc, "document")]);
      if (outputs.includes("sparse")) out.append(sparseView(q.data[0].sparse, d.data[0].sparse));
      if (outputs.includes("multivector")) {
        const [qt, dt, served] = await Promise.all([
          tokensOf(name, query, "query"), tokensOf(name, doc, "document"),
          post("v1/rerank", { model: name, query, documents: [doc], return_documents: false }).then((r) => r.results[0].relevance_score, () => null),
        ]);
        const qv = q.data[0].multivector;
        const dv = d.data[0].multivector;
        out.append(multivectorView(qv, dv, alignTokens(qt, qv.length, model.kind, "query"), alignTokens(dt, dv.length, model.kind, "document"), served));
      }
      return `${name}: ${outputs.join(" and ")} outputs, ${q.usage.prompt_tokens + d.usage.prompt_tokens} tokens`;
    });
  });
}
