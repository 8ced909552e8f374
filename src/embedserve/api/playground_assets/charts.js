// Inline SVG charts drawn here: a heatmap with values, a labelled scatter, a line chart, sparklines
// and bars. Every chart scales with its container (viewBox), so it stays readable on a phone.

import { svg, el, clear, fixed } from "./ui.js";

const LOW = [244, 246, 251];
const HIGH = [31, 78, 153];
const NEGATIVE = [194, 87, 26];

function mix(a, b, t) {
  return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * t)).join(",")})`;
}

// -1..1: orange through white to blue.
export function colour(value) {
  const t = Math.max(-1, Math.min(1, value));
  return t >= 0 ? mix(LOW, HIGH, t) : mix(LOW, NEGATIVE, -t);
}

export function heatmap(container, matrix, labels, titles) {
  const n = matrix.length;
  const cell = 52;
  const margin = 36;
  const size = margin + n * cell;
  const chart = svg("svg", { viewBox: `0 0 ${size} ${size}`, class: "heatmap", role: "img", "aria-label": `Cosine similarity of ${n} sentences` });
  labels.forEach((label, i) => {
    chart.append(
      svg("text", { x: margin + i * cell + cell / 2, y: margin - 10, class: "axis", "text-anchor": "middle" }, label),
      svg("text", { x: margin - 6, y: margin + i * cell + cell / 2 + 4, class: "axis", "text-anchor": "end" }, label),
    );
  });
  matrix.forEach((row, i) => row.forEach((value, j) => {
    const x = margin + j * cell;
    const y = margin + i * cell;
    chart.append(svg("g", { class: "cell", dataset: { row: i, col: j, value } },
      svg("title", {}, `${titles[i]}\n${titles[j]}\ncosine ${fixed(value, 4)}`),
      svg("rect", { x, y, width: cell - 2, height: cell - 2, rx: 3, fill: colour(value) }),
      svg("text", { x: x + cell / 2 - 1, y: y + cell / 2 + 4, "text-anchor": "middle", class: value > 0.55 || value < -0.55 ? "on-dark" : "on-light" }, fixed(value, 2)),
    ));
  }));
  clear(container).append(chart);
}

// points: [[x, y], ...] with a label each.
export function scatter(container, points, labels, titles, caption) {
  const width = 420;
  const height = 320;
  const pad = 34;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const span = (vs) => { const lo = Math.min(...vs, 0); const hi = Math.max(...vs, 0); return [lo, hi - lo || 1]; };
  const [x0, xw] = span(xs);
  const [y0, yw] = span(ys);
  const px = (v) => pad + ((v - x0) / xw) * (width - 2.6 * pad); // room on the right for a label
  const py = (v) => height - pad - ((v - y0) / yw) * (height - 2 * pad);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "scatter", role: "img", "aria-label": caption });
  chart.append(
    svg("line", { x1: pad, x2: width - pad, y1: py(0), y2: py(0), class: "zero" }),
    svg("line", { x1: px(0), x2: px(0), y1: pad, y2: height - pad, class: "zero" }),
    svg("text", { x: width - pad, y: height - 8, class: "axis", "text-anchor": "end" }, "PC1"),
    svg("text", { x: 8, y: pad - 12, class: "axis" }, "PC2"),
  );
  points.forEach((p, i) => {
    chart.append(svg("g", { class: "point", dataset: { label: labels[i], x: p[0], y: p[1] } },
      svg("title", {}, titles[i]),
      svg("circle", { cx: px(p[0]), cy: py(p[1]), r: 5 }),
      svg("text", { x: px(p[0]) + 8, y: py(p[1]) - 6, class: "label" }, labels[i]),
    ));
  });
  clear(container).append(chart);
}

// A line over (x, y) points with its range on each axis; `yLabel` names the values.
export function lineChart(container, xs, ys, { xLabel, yLabel }) {
  const width = 480;
  const height = 220;
  const pad = 40;
  clear(container);
  if (!ys.length) { container.append(el("p", { class: "hint", text: `no ${yLabel} yet` })); return; }
  const [xlo, xhi] = [Math.min(...xs), Math.max(...xs)];
  const [ylo, yhi] = [Math.min(...ys), Math.max(...ys)];
  const px = (v) => pad + ((v - xlo) / (xhi - xlo || 1)) * (width - 2 * pad);
  const py = (v) => height - pad - ((v - ylo) / (yhi - ylo || 1)) * (height - 2 * pad);
  const path = xs.map((x, i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(ys[i]).toFixed(1)}`).join(" ");
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "line-chart", role: "img", "aria-label": `${yLabel} by ${xLabel}: from ${fixed(ys[0])} to ${fixed(ys[ys.length - 1])}` },
    svg("rect", { x: pad, y: pad / 2, width: width - 2 * pad, height: height - 1.5 * pad, class: "frame" }),
    svg("path", { d: path, class: "line" }),
    ...xs.map((x, i) => svg("circle", { cx: px(x), cy: py(ys[i]), r: 3, class: "dot" }, svg("title", {}, `${xLabel} ${x}: ${fixed(ys[i], 4)}`))),
    svg("text", { x: pad - 4, y: py(yhi) + 4, class: "axis", "text-anchor": "end" }, fixed(yhi, 2)),
    svg("text", { x: pad - 4, y: py(ylo) + 4, class: "axis", "text-anchor": "end" }, fixed(ylo, 2)),
    svg("text", { x: px(xlo), y: height - pad / 2 + 8, class: "axis", "text-anchor": "middle" }, String(xlo)),
    svg("text", { x: px(xhi), y: height - pad / 2 + 8, class: "axis", "text-anchor": "middle" }, String(xhi)),
    svg("text", { x: width / 2, y: height - 4, class: "axis", "text-anchor": "middle" }, xLabel),
    svg("text", { x: 4, y: 12, class: "axis" }, yLabel),
  );
  container.append(chart);
}

export function sparkline(values, label) {
  const width = 160;
  const height = 36;
  const hi = Math.max(...values, 1e-9);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / hi) * (height - 4)).toFixed(1)}`).join(" ");
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img", "aria-label": label, preserveAspectRatio: "none" },
    svg("polyline", { points }));
}

// A horizontal bar, `share` of the full width (0..1).
export function bar(share, className = "") {
  const w = Math.max(0, Math.min(1, share)) * 100;
  return svg("svg", { viewBox: "0 0 100 10", class: `hbar ${className}`, preserveAspectRatio: "none", "aria-hidden": "true" },
    svg("rect", { x: 0, y: 0, width: w, height: 10 }));
}
