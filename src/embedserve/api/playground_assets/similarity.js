// Similarity: sentences embedded with POST /v1/embeddings; their cosine matrix as a heatmap with
// values, and their vectors' first two principal components as a labelled map.

import { post } from "./api.js";
import { heatmap, scatter } from "./charts.js";
import { cosineMatrix, pca2 } from "./linalg.js";
import { Work, busy, el, clear, lines } from "./ui.js";

const SAMPLE = [
  "A man is playing a guitar.",
  "Someone strums an acoustic guitar on stage.",
  "A chef is slicing vegetables in the kitchen.",
  "The cook chops onions and carrots.",
  "The stock market fell sharply today.",
  "Shares dropped as investors sold.",
];

export function init() {
  const form = document.getElementById("similarity-form");
  const texts = document.getElementById("similarity-texts");
  const work = new Work("similarity");
  texts.value = SAMPLE.join("\n");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const sentences = lines(texts);
    const model = document.getElementById("similarity-model").value || undefined;
    busy(form.querySelector("button[type=submit]"), work, `Embedding ${sentences.length} sentences…`, async () => {
      if (sentences.length < 2) throw new Error("paste at least two sentences, one per line");
      const answer = await post("v1/embeddings", { model, input: sentences, encoding_format: "float" });
      const vectors = answer.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
      show(sentences, vectors);
      return `${sentences.length} sentences, ${vectors[0].length} dimensions, ${answer.usage.prompt_tokens} tokens (${answer.model})`;
    });
  });
}

function show(sentences, vectors) {
  const labels = sentences.map((_, i) => `S${i + 1}`);
  const titles = sentences.map((s, i) => `S${i + 1}: ${s}`);
  heatmap(document.getElementById("similarity-heatmap"), cosineMatrix(vectors), labels, titles);
  const { points, explained } = pca2(vectors);
  const share = explained.map((e) => `${(e * 100).toFixed(0)}%`).join(" and ");
  scatter(document.getElementById("similarity-map"), points, labels, titles, `PCA map of ${sentences.length} sentences (components explain ${share} of the variance)`);
  document.getElementById("similarity-map").append(el("p", { class: "hint", text: `PC1 and PC2 explain ${share} of the variance` }));
  const legend = clear(document.getElementById("similarity-legend"));
  sentences.forEach((s, i) => legend.append(el("li", {}, el("b", {}, labels[i]), " ", s)));
}
