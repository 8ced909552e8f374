// The little linear algebra the page needs: cosines, dot products, a 2-D PCA.

export function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export function norm(a) {
  return Math.sqrt(dot(a, a));
}

export function cosine(a, b) {
  const n = norm(a) * norm(b);
  return n === 0 ? 0 : dot(a, b) / n;
}

export function cosineMatrix(vectors) {
  const unit = vectors.map((v) => { const n = norm(v) || 1; return v.map((x) => x / n); });
  return unit.map((a) => unit.map((b) => dot(a, b)));
}

// The first two principal components of the rows, by power iteration on XᵀX (never formed:
// each step is X·v then Xᵀ·that), the second kept orthogonal to the first. Returns each row's
// [x, y] and the share of variance each component explains.
export function pca2(rows, iterations = 300) {
  const n = rows.length;
  const d = n ? rows[0].length : 0;
  if (n === 0) return { points: [], explained: [0, 0] };
  const mean = new Array(d).fill(0);
  for (const r of rows) for (let j = 0; j < d; j++) mean[j] += r[j] / n;
  const x = rows.map((r) => r.map((v, j) => v - mean[j]));
  const total = x.reduce((s, r) => s + dot(r, r), 0);
  const components = [];
  const variances = [];
  for (let c = 0; c < 2; c++) {
    let v = Array.from({ length: d }, (_, j) => Math.sin(j + 1 + c)); // fixed start: the same map every time
    let lambda = 0;
    for (let it = 0; it < iterations; it++) {
      const xv = x.map((r) => dot(r, v));
      let w = new Array(d).fill(0);
      for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) w[j] += x[i][j] * xv[i];
      for (const u of components) { const p = dot(w, u); w = w.map((wj, j) => wj - p * u[j]); }
      const size = norm(w);
      if (size < 1e-12) { v = w; lambda = 0; break; }
      const next = w.map((wj) => wj / size);
      const moved = Math.abs(Math.abs(dot(next, v)) - 1);
      v = next;
      lambda = size;
      if (moved < 1e-12) break;
    }
    components.push(norm(v) ? v : new Array(d).fill(0));
    variances.push(lambda);
  }
  const points = x.map((r) => components.map((u) => dot(r, u)));
  for (let c = 0; c < 2; c++) { // a sign people can compare between runs: the farthest point on the right/top
    let far = 0;
    for (const p of points) if (Math.abs(p[c]) > Math.abs(far)) far = p[c];
    if (far < 0) for (const p of points) p[c] = -p[c];
  }
  return { points, explained: variances.map((v) => (total > 0 ? v / total : 0)) };
}
