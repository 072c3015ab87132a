/* eMIGM Explorer, the page's pure functions: they read the payloads Python sends (app/payload.py) and
   build the texts and numbers the views show, with no DOM. Loaded in the page head before explorer.js
   (as window.emigmCore) and by Node's test runner (tests/js/, `node --test`). */
(function (root, factory) {
  const core = factory();
  if (typeof module === "object" && module.exports) module.exports = core; else root.emigmCore = core;
})(typeof self !== "undefined" ? self : this, function () {
  const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
  const GAP = 10; // px between views and panels

  function viridis(x) { // x in [0, 1]
    const p = Math.max(0, Math.min(1, x)) * (VIRIDIS.length - 1), i = Math.floor(p), f = p - i;
    if (i >= VIRIDIS.length - 1) return VIRIDIS[VIRIDIS.length - 1];
    const a = VIRIDIS[i], b = VIRIDIS[i + 1], h = (s, o) => parseInt(s.substr(o, 2), 16);
    const c = [1, 3, 5].map(o => Math.round(h(a, o) + f * (h(b, o) - h(a, o))));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  const stepLabel = (k, N) => `step ${k} of ${N}`;

  // The query of permalink.encode: floats as %.6g, whole ones without a point; null values left out.
  function linkQuery(names, vals) {
    const q = new URLSearchParams();
    names.forEach((n, i) => {
      const v = vals[i];
      if (v === null || v === undefined) return;
      q.append(n, typeof v === "number" ? (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)))) : String(v));
    });
    return q.toString();
  }

  // The image size V (a whole multiple of the image's own size, at least d.view) of a player payload in
  // a box W wide whose top is `top` px down a window H high; for Compare also the grid: panels per row
  // and image columns per panel.
  function layout(d, W, H, top) {
    const px = d.px, min = d.view;
    const fit = x => Math.floor(x / px) * px;
    if (d.kind === "unmask") { // three views in a row, the bar and the chart below them on one screen
      const w = fit((W - 2 * GAP - 6) / 3), h = fit(H - top - 300);
      return { V: Math.max(min, Math.min(w, h)) };
    }
    const live = d.panels.filter(p => p.cols.length), P = Math.max(1, live.length);
    const B = Math.max(1, ...live.map(p => p.cols.length)), cols = B === 1 ? 1 : 2, rowsIn = Math.ceil(B / cols);
    const widthOf = V => cols * V + (cols - 1) * 4;
    let most = P; // panels per row: as many as fit at the smallest size
    while (most > 1 && most * widthOf(min) + (most - 1) * GAP > W) most--;
    const rows = Math.ceil(P / most), per = Math.ceil(P / rows);
    const w = fit(((W - (per - 1) * GAP) / per - (cols - 1) * 4) / cols);
    const h = fit(((H - top - 40) / rows - 64) / rowsIn);
    return { V: Math.max(min, Math.min(w, h)), per, cols };
  }

  // A token's state at player step k in view v ({when, frameOf, masked, mfirst, rev} of one image):
  // masked, revealed at this step, revised after commit (masked again after it was committed: remasking
  // runs carry the mask of every step)
  function tokenAt(v, k, i) {
    const fi = v.frameOf ? v.frameOf[k] : k, step = fi + 1, w = v.when[i];
    const j = fi - (v.mfirst || 0), ms = v.masked && j >= 0 ? v.masked[j] : null;
    if (!ms) return { masked: w === 0 || w > step, now: w === step, revised: false, step };
    const masked = ms[i] === "1", prev = j > 0 ? v.masked[j - 1] : null;
    let revised = false;
    if (masked && v.rev && v.rev[j]) revised = v.rev[j][i] > 0;
    else if (masked) for (let q = 0; q < j && !revised; q++) revised = v.masked[q][i] === "0";
    return { masked, now: !masked && (prev ? prev[i] === "1" : fi === 0 || w === step), revised, step };
  }

  // The share of the tokens committed after step k of an Unmasking payload (with remasking a token may
  // be revealed, re-masked and revealed again: the reveals do not add up to it)
  function committedFraction(d, k) {
    return (d.L - d.steps[k].masked) / d.L;
  }

  // The line above the Unmasking views at player step k of payload d
  function unmaskDetail(d, k) {
    const s = d.steps[k], L = d.L, done = committedFraction(d, k);
    const guide = [s.cfg ? `CFG ×${s.cfg}` : "no CFG", s.sg ? `self-guidance ${s.sg}` : ""].filter(Boolean).join(" + ");
    const revealed = s.revealed === 0 && done === 1
      ? `revealed 0: every token was already revealed, yet the step ran (${s.passes} pass${s.passes > 1 ? "es" : ""})`
      : `revealed ${s.revealed} (${Math.round(100 * done)}% of ${L} tokens)`;
    return `t ${s.t.toFixed(3)} → s ${s.s.toFixed(3)} · ${guide} · ${revealed} · NFE so far ${s.nfe} · ${Math.round(s.ms)} ms` +
      (d.branched_from && k < d.branched_from ? ` · from the parent run (branched after step ${d.branched_from})` : "");
  }

  // The caption of Compare panel p at player step k of payload d
  function panelCaption(d, p, k) {
    const fi = p.frame_of ? p.frame_of[k] : k, s = p.steps[Math.min(fi, p.steps.length - 1)];
    const own = d.same_steps === false ? `${stepLabel(fi + 1, p.N)} · ` : "";
    return d.live ? `NFE ${s.nfe} so far` : `${own}NFE ${s.nfe} of ${p.nfe} · ${p.ms} ms in all`;
  }

  // The hover text of token i of an opened step (an AnatomyPayload): why it ranks where it does, in
  // the words of its order's kind in the library's registry (d.order_kind, d.order_fixed)
  function anatomyTokenText(d, i) {
    const t = d.tokens, g = d.grid, r = Math.floor(i / g), c = i % g, parts = [`token (${r}, ${c})`];
    const num = (x, p) => x === null || x === undefined ? "–" : Number(x).toPrecision(p || 3);
    if (!t.masked[i]) parts.push(`committed before step ${d.step}: kept`);
    else {
      parts.push(t.revealed[i] ? "revealed at this step" : "stays masked");
      const M = d.count.masked, rank = `rank ${t.rank[i] + 1} of ${M}`;
      if (d.order_kind === "score")
        parts.push(`${d.order} score ${num(t.score[i])} + Gumbel noise ${num(t.noise[i])} → ${rank}`);
      else if (d.order_kind === "adaptive") parts.push(`${d.order} score ${num(t.score[i])} → ${rank}`);
      else if (!d.order_fixed) parts.push(`${d.order} key ${num(-t.score[i])} → ${rank}`);
      else parts.push(`${d.order} order: fixed ${rank}`);
      parts.push(`${d.headline}`);
      parts.push(`|Δ| guidance ${num(t.delta[i])}`, `uncertainty ${num(t.unc[i])}`);
    }
    if (t.halton) parts.push(`Halton rank ${t.halton[i]}`);
    return parts.join(" · ");
  }

  // The part of an image a denoising-path tile shows (image pixels): the token's cell with one cell
  // around it (shifted inside the image at its edges), so one token's change is large enough to see;
  // tx, ty: where the token's cell lies in it
  function pathCrop(d, token) {
    const cell = d.px / d.grid, size = Math.min(d.px, 3 * cell), [r, c] = token;
    const x = Math.max(0, Math.min(d.px - size, (c - 1) * cell)), y = Math.max(0, Math.min(d.px - size, (r - 1) * cell));
    return { x, y, size, cell, tx: c * cell - x, ty: r * cell - y };
  }

  // The line under an opened step for the tokens chosen for an intervention (token indices): which, and
  // a warning for those still masked after the step (erasing them would change nothing)
  function selectionText(d, chosen) {
    const g = d.grid, name = i => `${Math.floor(i / g)}:${i % g}`, sorted = [...chosen].sort((a, b) => a - b);
    if (!sorted.length) return "Click tokens on the last view to choose them for an intervention (below).";
    const masked = sorted.filter(i => d.tokens.after[i]);
    return `chosen for an intervention: ${sorted.map(name).join(", ")}` + (masked.length ?
      ` · ⚠ ${masked.map(name).join(", ")} still masked after step ${d.step} (grey): erasing ${masked.length > 1 ? "them" : "it"} changes nothing` : "");
  }

  return { GAP, viridis, stepLabel, linkQuery, layout, tokenAt, committedFraction, pathCrop, selectionText, unmaskDetail, panelCaption, anatomyTokenText };
});
