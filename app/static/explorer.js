/* eMIGM Explorer, in the browser: the step player (Unmasking and Compare), the status line, the notes
   next to refused values, the permalink and disabled choices. Loaded once in the page head; gr.HTML
   components call emigmPlayer / emigmStatus / emigmNotes from their js_on_load. Scrubbing, play /
   pause, step buttons, arrow keys, the clean toggle and a token's history all run here, with no
   server call. Images are drawn at a whole multiple of their own size that fits the window (at least
   the payload's `view`), nearest-neighbour, so every image pixel is a crisp square. */
(function () {
  if (window.emigmPlayer) return; // the page may add its head twice
  const core = window.emigmCore; // app/static/explorer-core.js: what reads payloads and builds texts
  const { GAP, viridis, stepLabel } = core;
  const GREY = "#808080", ORANGE = "#E69F00", SKY = "#56B4E9", PURPLE = "#CC79A7", VERMILLION = "#D55E00", CFG_FILL = "rgba(230,159,0,0.22)";
  const drawn = (window.emigmDrawn = window.emigmDrawn || {});
  let active = null; // the player the arrow keys drive

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "style") e.style.cssText = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  const svg = (tag, attrs) => { const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v); return e; };

  function loadImage(src) {
    return new Promise((ok, fail) => { const im = new Image(); im.onload = () => ok(im); im.onerror = fail; im.src = src; });
  }

  function Player(root, trigger) {
    root.emigmPlayer = this; // for tests and benchmarks: the payload and step shown
    this.root = root; this.trigger = trigger; this.k = 0; this.timer = null; this.data = null; this.pick = null;
    this.clean = false; this.V = 0; this.width = 0;
    if (window.ResizeObserver) { // the window (or the tab becoming visible) decides the image size
      new ResizeObserver(() => {
        const w = this.root.clientWidth;
        if (!this.data || Math.abs(w - this.width) < 1) return;
        this.width = w;
        if (this.layout().V !== this.V) { this.build(); this.draw(); }
      }).observe(root);
    }
  }

  // The image size V and the Compare grid (explorer-core.js layout) for this player's box and window
  Player.prototype.layout = function () {
    const top = this.root.getBoundingClientRect().top + window.scrollY;
    return core.layout(this.data, this.root.clientWidth || 900, window.innerHeight, top);
  };

  Player.prototype.set = async function (d) {
    if (!d || !d.sprite) { this.root.replaceChildren(); this.data = null; return; }
    const img = await loadImage(d.sprite);
    const sameRun = this.data && this.data.run === d.run, wasLive = this.data && this.data.live;
    this.data = d; this.img = img;
    // a new run, a live frame, or the end of a live run: show the newest step; a redraw keeps the step
    if (!sameRun || d.live || wasLive) { this.pause(); this.k = d.n - 1; if (!sameRun) this.pick = null; }
    this.k = Math.min(this.k, d.n - 1);
    this.build();
    this.draw();
    this.root.dataset.run = d.run; this.root.dataset.n = d.n; this.root.dataset.live = d.live ? "1" : "0";
    if (!d.live) {
      drawn[d.run] = true;
      document.dispatchEvent(new CustomEvent("emigm-drawn", { detail: d.run }));
    }
  };

  Player.prototype.build = function () {
    const d = this.data, self = this, lay = this.layout(), V = (this.V = lay.V);
    this.width = this.root.clientWidth;
    const canvas = (cls, title) => el("canvas", { width: V, height: V, class: "emigm-view " + cls, title: title || "",
      style: `width:${V}px;height:${V}px` });
    this.views = [];
    const body = el("div", { class: "emigm-body" });
    if (d.kind === "unmask") {
      const p = d.panels[0];
      const fig = (cv, cap) => el("figure", { style: `width:${V}px` }, cv, el("figcaption", {}, cap));
      const cv = canvas("canvas", "click a token to see its history"), dr = canvas("draft", "click a token to see its history"), wh = canvas("when");
      const base = { col: p.cols[0], when: p.when[0], masked: d.masked, mfirst: d.first, rev: d.revisions };
      this.views.push({ cv, kind: "canvas", ...base }, { cv: dr, kind: "draft", ...base }, { cv: wh, kind: "map", ...base });
      for (const c of [cv, dr]) c.addEventListener("click", ev => self.onPick(ev, c));
      for (const c of [cv, dr, wh]) {
        c.addEventListener("mousemove", ev => self.onHover(ev, c));
        c.addEventListener("mouseleave", () => { self.tip.style.display = "none"; });
      }
      // the third view's maps, switched here with no server call: when / uncertainty / times revised
      const kinds = [["when", "when revealed"]].concat(d.unc ? [["unc", "uncertainty"]] : [], d.revisions ? [["rev", "times revised"]] : []);
      if (!kinds.some(x => x[0] === this.mapKind)) this.mapKind = "when";
      this.mapBar = el("div", { class: "emigm-colorbar" });
      const maps = el("div", { class: "emigm-maps", role: "radiogroup" }, ...kinds.map(([key, label]) => {
        const input = el("input", { type: "radio", name: "emigm-map-" + d.run, value: key });
        input.checked = key === this.mapKind;
        input.addEventListener("change", () => { self.mapKind = key; self.drawMap(); });
        return el("label", { class: "emigm-map-choice", "data-map": key }, input, label);
      }));
      this.caption = el("span", {});
      body.append(el("div", { class: "emigm-images" },
        fig(cv, this.caption), fig(dr, "draft · blue = not committed yet"), fig(wh, el("div", {}, maps, this.mapBar))));
      this.tip = el("div", { class: "emigm-tip", style: "display:none" });
      body.append(this.tip);
      this.chart = el("div", { class: "emigm-chart" });
      body.append(this.chart);
      this.history = el("div", { class: "emigm-history" }, el("span", { class: "emigm-hint" },
        d.live ? "" : "Click a token on the canvas or the draft to see its draft at every step until it was committed."));
      body.append(this.history);
    } else {
      // panels in a grid whose rows are shared (subgrid): a title that wraps moves no image
      const row = el("div", { class: "emigm-panels", style: `grid-template-columns:repeat(${lay.per}, max-content)` });
      const off = el("div", { class: "emigm-unavailable" });
      this.captions = [];
      d.panels.forEach(p => {
        if (!p.cols.length) { off.append(el("div", { class: "emigm-note" }, el("b", {}, p.title), ": ", p.note)); return; }
        const sub = el("div", { class: "emigm-psub" });
        const imgs = el("div", { class: "emigm-pimages", style: `grid-template-columns:repeat(${Math.min(lay.cols, p.cols.length)}, ${V}px)` });
        p.cols.forEach((c, b) => { const cv = canvas("canvas"); imgs.append(cv);
          self.views.push({ cv, kind: "canvas", col: c, when: p.when[b], frameOf: p.frame_of, masked: p.masked ? p.masked[b] : null, mfirst: 0 }); });
        const fd = el("div", { class: "emigm-fd", title: p.measured ? "the FD measured for this setting over many samples (assets/results/claims.json)" : "" },
          p.measured ? p.measured.text : "");
        row.append(el("div", { class: "emigm-panel", "data-key": p.key || "" }, el("div", { class: "emigm-ptitle" }, el("b", {}, p.title)), sub, imgs, fd));
        this.captions.push([p, sub]);
      });
      body.append(row);
      if (off.childElementCount) body.append(off);
    }
    // controls: first, back, play / pause, forward, last, slider, label, clean
    const btn = (txt, title, fn) => el("button", { class: "emigm-btn", title, onclick: fn, type: "button" }, txt);
    this.playBtn = btn("play", "play / pause (space)", () => self.toggle());
    this.range = el("input", { type: "range", min: 1, max: d.n, step: 1, value: this.k + 1, class: "emigm-range",
      "aria-label": "step" });
    this.range.addEventListener("input", () => self.go(parseInt(self.range.value, 10) - 1));
    this.label = el("span", { class: "emigm-label" });
    this.detail = el("div", { class: "emigm-detail" });
    const clean = el("input", { type: "checkbox", class: "emigm-clean-box" });
    clean.checked = this.clean;
    clean.addEventListener("change", () => { self.clean = clean.checked; self.draw(); });
    const bar = el("div", { class: "emigm-bar" },
      btn("|◀", "first step (Home)", () => self.go(0)), btn("◀", "step back (←)", () => self.go(self.k - 1)),
      this.playBtn, btn("▶", "step forward (→)", () => self.go(self.k + 1)), btn("▶|", "last step (End)", () => self.go(d.n - 1)),
      this.range, this.label,
      el("label", { class: "emigm-clean", title: "hide the outlines on every frame" }, clean, "clean"));
    if (d.live) for (const b of bar.querySelectorAll("button, input[type=range]")) b.disabled = true;
    this.root.replaceChildren(el("div", { class: "emigm-player", tabindex: 0 }, bar, this.detail, body));
    this.root.firstChild.addEventListener("focusin", () => { active = self; });
    this.root.firstChild.addEventListener("pointerdown", () => { active = self; });
    if (d.kind === "unmask") this.buildChart();
  };

  Player.prototype.buildChart = function () {
    const d = this.data, steps = d.steps, N = d.N, L = d.L, self = this;
    const W = Math.max(360, Math.min(3 * this.V + 2 * GAP, this.root.clientWidth || 640)), H = 150, l = 36, r = 44, t = 8, b = 24;
    const x = s => l + (s - 0.5) * (W - l - r) / N, bw = Math.max(2, 0.7 * (W - l - r) / N);
    const maxC = Math.max(1, ...steps.map(s => s.revealed));
    const y = c => t + (H - t - b) * (1 - c / maxC), yf = f => t + (H - t - b) * (1 - f);
    const g = svg("svg", { width: W, height: H, class: "emigm-svg" });
    const pts = [];
    steps.forEach((s, i) => {
      const k = i + 1, done = core.committedFraction(d, i);
      if (s.cfg) g.append(svg("rect", { x: x(k) - (W - l - r) / N / 2, y: t, width: (W - l - r) / N, height: H - t - b, fill: CFG_FILL }));
      const rect = svg("rect", { x: x(k) - bw / 2, y: y(s.revealed), width: bw, height: H - b - y(s.revealed), fill: "#0072B2", class: "emigm-barstep" });
      const tip = svg("title", {});
      tip.textContent = `${stepLabel(k, N)}\nrevealed ${s.revealed} tokens (${Math.round(100 * done)}% committed after it)` +
        `${s.revealed === 0 ? " · nothing was left to reveal" : ""}\n${s.passes} pass${s.passes > 1 ? "es" : ""}` +
        `${s.cfg ? ` (CFG ×${s.cfg})` : ""}${s.sg ? ` (self-guidance ${s.sg})` : ""}\n${Math.round(s.ms)} ms`;
      rect.append(tip); rect.addEventListener("click", () => self.go(i));
      g.append(rect);
      if (s.sg) g.append(svg("circle", { cx: x(k), cy: t + 4, r: 3, fill: PURPLE }));
      pts.push(`${x(k)},${yf(done)}`);
    });
    g.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#D55E00", "stroke-width": 2 }));
    const axis = (x1, y1, x2, y2) => g.append(svg("line", { x1, y1, x2, y2, stroke: "#888" }));
    axis(l, H - b, W - r, H - b); axis(l, t, l, H - b); axis(W - r, t, W - r, H - b);
    const text = (xx, yy, s, anchor, color) => { const e = svg("text", { x: xx, y: yy, "font-size": 11, "text-anchor": anchor || "middle", fill: color || "#444" }); e.textContent = s; g.append(e); };
    text(l - 4, y(maxC) + 4, String(maxC), "end"); text(l - 4, H - b + 4, "0", "end");
    text(W - r + 4, t + 8, "100%", "start", "#D55E00"); text(W - r + 4, H - b, "0%", "start", "#D55E00");
    const every = Math.ceil(N / 16);
    for (let k = 1; k <= N; k += every) text(x(k), H - b + 14, String(k));
    this.cursor = svg("line", { y1: t, y2: H - b, stroke: "#000", "stroke-dasharray": "3,3", "stroke-width": 1.5 });
    g.append(this.cursor);
    this.xOf = x;
    const nfe = steps.length ? steps[steps.length - 1].nfe : 0;
    const legend = el("div", { class: "emigm-legend" },
      el("span", { class: "sw", style: "background:#0072B2" }), "tokens revealed per step ",
      el("span", { class: "sw", style: "background:#D55E00;height:3px" }), "share committed ",
      el("span", { class: "sw", style: `background:${CFG_FILL}` }), "CFG step (+1 pass) ",
      el("span", { class: "sw", style: `background:${PURPLE};border-radius:50%` }), "self-guidance (+1 pass) · ",
      el("b", {}, d.complete ? `NFE ${nfe} = ${N} × ${(nfe / N).toPrecision(3)}` : `NFE ${nfe} so far`));
    this.chart.replaceChildren(legend, g, ...this.costChart(x, W, l, r));
  };

  // Runs on an oracle model: under the reveal counts, each step's cost in nats (the library's numbers,
  // payload field `cost`): a KL for value-independent orders, a dependence cost otherwise.
  Player.prototype.costChart = function (x, W, l, r) {
    const c = this.data.cost, N = this.data.N, self = this;
    if (!c) return [];
    const what = c.measure === "KL" ? "KL (nats)" : "dependence cost (nats)";
    if (!c.per_step) return [el("div", { class: "emigm-legend emigm-cost-note" }, `Sampler's ${what}: ${c.note}`)];
    const H = 90, t = 6, b = 18, bw = Math.max(2, 0.7 * (W - l - r) / N);
    const top = Math.max(...c.per_step.map(v => Math.abs(v))), zero = !(top > 1e-6), maxV = zero ? 1 : top;
    const y = v => t + (H - t - b) * (1 - Math.max(0, v) / maxV);
    const g = svg("svg", { width: W, height: H, class: "emigm-svg emigm-cost" });
    c.per_step.forEach((v, i) => {
      const k = i + 1, rect = svg("rect", { x: x(k) - bw / 2, y: y(v), width: bw, height: H - b - y(v), fill: "#CC79A7", class: "emigm-coststep" });
      const tip = svg("title", {});
      tip.textContent = `${stepLabel(k, N)}\n${c.measure} ${v.toFixed(3)} nats` +
        (c.effective ? `\nposterior before the step: ≈ ${c.effective[i].toFixed(1)} training images` : "");
      rect.append(tip); rect.addEventListener("click", () => self.go(i));
      g.append(rect);
    });
    const line = (x1, y1, x2, y2) => g.append(svg("line", { x1, y1, x2, y2, stroke: "#888" }));
    line(l, H - b, W - r, H - b); line(l, t, l, H - b); line(W - r, t, W - r, H - b);
    if (c.effective) {  // the posterior's effective number of training images before each step, log scale
      const maxE = Math.max(2, ...c.effective), ye = e => t + (H - t - b) * (1 - Math.log(Math.max(1, e)) / Math.log(maxE));
      g.append(svg("polyline", { points: c.effective.map((e, i) => `${x(i + 1)},${ye(e)}`).join(" "), fill: "none", stroke: "#009E73", "stroke-width": 2 }));
      const e = svg("text", { x: W - r + 4, y: t + 8, "font-size": 11, "text-anchor": "start", fill: "#009E73" }); e.textContent = String(Math.round(maxE)); g.append(e);
      const o = svg("text", { x: W - r + 4, y: H - b, "font-size": 11, "text-anchor": "start", fill: "#009E73" }); o.textContent = "1"; g.append(o);
    }
    const label = (xx, yy, s, anchor) => { const e = svg("text", { x: xx, y: yy, "font-size": 11, "text-anchor": anchor, fill: "#444" }); e.textContent = s; g.append(e); };
    label(l - 4, t + 8, zero ? "" : maxV.toPrecision(2), "end"); label(l - 4, H - b + 4, "0", "end");
    const every = Math.ceil(N / 16);
    for (let k = 1; k <= N; k += every) label(x(k), H - b + 14, String(k), "middle");
    const legend = el("div", { class: "emigm-legend" },
      el("span", { class: "sw", style: "background:#CC79A7" }), `sampler's ${what} per step · `,
      el("b", {}, zero ? "every step 0 nats (to float error)" : `total ${c.total.toFixed(2)} nats`), " ",
      ...(c.effective ? [el("span", { class: "sw", style: "background:#009E73;height:3px" }), "training images the posterior still weighs (log scale) "] : []),
      el("br", {}), c.note);
    return [legend, g];
  };

  // Outlines (this step's reveals, the draft's uncommitted tokens, the picked token) are drawn unless
  // the clean toggle is on, or this is the last step of a finished run: the finished image, clean.
  Player.prototype.outlined = function (k) {
    const d = this.data;
    return !this.clean && !(d.complete && k === d.n - 1);
  };

  // A token's state at player step k (explorer-core.js tokenAt)
  Player.prototype.tokenAt = function (v, k, i) { return core.tokenAt(v, k, i); };

  Player.prototype.drawMap = function () {
    const v = this.views.find(x => x.kind === "map");
    if (v) this.drawView(v, this.k);
  };

  Player.prototype.drawView = function (v, k) {
    const d = this.data, cv = v.cv, ctx = cv.getContext("2d"), V = cv.width, g = d.grid, c = V / g, step = k + 1;
    ctx.imageSmoothingEnabled = false;
    if (v.kind === "map") {
      ctx.fillStyle = "#f2f2f2"; ctx.fillRect(0, 0, V, V);
      const kind = this.mapKind, row = k - d.first;
      const vals = kind === "unc" ? d.unc[row] : kind === "rev" ? d.revisions[row] : null;
      const top = kind === "unc" ? (this.uncMax = this.uncMax || Math.max(1e-9, ...d.unc.flat())) :
        kind === "rev" ? Math.max(1, ...d.revisions.flat()) : d.N;
      for (let i = 0; i < g * g; i++) {
        const w = v.when[i], x = (i % g) * c + 0.5, y = Math.floor(i / g) * c + 0.5;
        let f = null;
        if (kind === "when") { if (w >= 1 && w <= step) f = d.N > 1 ? (w - 1) / (d.N - 1) : 1; }
        else if (kind === "unc") { if (vals[i] > 0) f = vals[i] / top; }
        else if (vals[i] > 0) f = vals[i] / top;
        if (f !== null) { ctx.fillStyle = viridis(f); ctx.fillRect(x, y, c - 1, c - 1); }
      }
      const lo = kind === "when" ? "1" : "0", hi = kind === "when" ? String(d.N) : kind === "unc" ? top.toPrecision(2) : String(top);
      const what = kind === "when" ? "step revealed" : kind === "unc" ? `uncertainty: ${d.unc_label}` : "times re-masked after commit";
      this.mapBar.replaceChildren(el("span", {}, lo), el("i", {}), el("span", {}, hi), el("small", { class: "emigm-mapwhat" }, what));
      cv.dataset.map = kind;
      return;
    }
    const row = k - d.first, px = d.px, lines = this.outlined(k);
    ctx.drawImage(this.img, v.col * px, row * px, px, px, 0, 0, V, V);
    const lw = Math.max(2, Math.round(c / 8));
    for (let i = 0; i < g * g; i++) {
      const x = (i % g) * c, y = Math.floor(i / g) * c, st = this.tokenAt(v, k, i), masked = st.masked;
      if (v.kind === "canvas") {
        if (masked) { ctx.fillStyle = GREY; ctx.fillRect(x, y, c, c); }
        if (masked && st.revised && lines) { ctx.strokeStyle = VERMILLION; ctx.lineWidth = lw; ctx.strokeRect(x + lw / 2, y + lw / 2, c - lw, c - lw); }
        else if (!masked && st.now && lines) { ctx.strokeStyle = ORANGE; ctx.lineWidth = lw; ctx.strokeRect(x + lw / 2, y + lw / 2, c - lw, c - lw); }
      } else if (masked && lines) { ctx.strokeStyle = SKY; ctx.lineWidth = Math.max(1, lw / 2); ctx.strokeRect(x + 0.5, y + 0.5, c - 1, c - 1); }
    }
    if (this.pick && lines && d.kind === "unmask") {
      const [r, cc] = this.pick; ctx.strokeStyle = PURPLE; ctx.lineWidth = lw; ctx.strokeRect(cc * c + lw / 2, r * c + lw / 2, c - lw, c - lw);
    }
  };

  Player.prototype.draw = function () {
    const d = this.data, k = this.k, N = d.N;
    for (const v of this.views) this.drawView(v, k);
    this.range.value = k + 1;
    const finished = d.complete && k === d.n - 1;
    this.label.textContent = stepLabel(k + 1, N) + (d.live ? " · sampling…" : d.n < N ? ` (stopped: ${d.n} sampled)` : finished ? " · finished" : "");
    this.root.dataset.k = k;
    this.root.dataset.clean = this.outlined(k) ? "0" : "1";
    if (d.kind === "unmask") {
      this.detail.textContent = core.unmaskDetail(d, k);
      this.caption.textContent = finished ? "canvas · the finished image" :
        this.outlined(k) ? "canvas · grey = masked · orange = revealed now" + (d.masked ? " · vermillion = revised after commit" : "") :
        "canvas · grey = masked";
      if (this.cursor) { const xx = this.xOf(k + 1); this.cursor.setAttribute("x1", xx); this.cursor.setAttribute("x2", xx); }
    } else {
      this.detail.textContent = "same seed and the same reveal rule in every panel" + (d.live ? " · the panels fill in step by step" : "");
      for (const [p, sub] of this.captions) sub.textContent = core.panelCaption(d, p, k);
    }
  };

  Player.prototype.go = function (k) {
    if (!this.data || this.data.live) return;
    this.k = Math.max(0, Math.min(this.data.n - 1, k));
    this.draw();
  };
  Player.prototype.pause = function () { if (this.timer) clearInterval(this.timer); this.timer = null; if (this.playBtn) this.playBtn.textContent = "play"; };
  Player.prototype.toggle = function () {
    if (this.timer) return this.pause();
    if (!this.data || this.data.live) return;
    if (this.k >= this.data.n - 1) this.go(0); // at the end, play restarts; otherwise it resumes
    const self = this, ms = Math.max(120, Math.min(450, 6000 / this.data.n));
    this.playBtn.textContent = "pause";
    this.timer = setInterval(() => { if (self.k >= self.data.n - 1) return self.pause(); self.go(self.k + 1); }, ms);
  };

  // hover: the numbers of the token under the cursor, from the payload (no server call)
  Player.prototype.onHover = function (ev, cv) {
    const d = this.data; if (!d || !this.tip) return;
    const rect = cv.getBoundingClientRect(), g = d.grid, k = this.k, v = this.views[0];
    const c = Math.min(g - 1, Math.floor((ev.clientX - rect.left) / rect.width * g));
    const r = Math.min(g - 1, Math.floor((ev.clientY - rect.top) / rect.height * g)), i = r * g + c, row = k - d.first;
    const st = this.tokenAt(v, k, i), w = v.when[i];
    const parts = [`token (${r}, ${c})`, st.masked ? (st.revised ? "revised after commit: masked again" : "masked") :
      st.now ? `revealed at this step (${k + 1})` : `committed (revealed at step ${w})`];
    if (d.unc && d.unc[row]) parts.push(d.unc[row][i] > 0 ? `uncertainty ${d.unc[row][i].toPrecision(3)} (${d.unc_label})` : "uncertainty: committed before this step");
    if (d.revisions && d.revisions[row]) parts.push(`re-masked ${d.revisions[row][i]}× so far`);
    const text = parts.join(" · ");
    this.tip.textContent = text; this.root.dataset.hover = text;
    const box = this.root.getBoundingClientRect();
    this.tip.style.cssText = `display:block;left:${ev.clientX - box.left + 14}px;top:${ev.clientY - box.top + 14}px`;
  };

  Player.prototype.onPick = function (ev, cv) {
    const d = this.data; if (!d || d.live) return;
    const rect = cv.getBoundingClientRect(), g = d.grid;
    const c = Math.min(g - 1, Math.floor((ev.clientX - rect.left) / rect.width * g));
    const r = Math.min(g - 1, Math.floor((ev.clientY - rect.top) / rect.height * g));
    this.pick = [r, c]; this.draw(); this.showHistory(r, c);
    if (this.trigger) this.trigger("select", { index: [r, c], value: null, selected: true });
  };

  Player.prototype.showHistory = function (r, c) {
    const d = this.data, g = d.grid, px = d.px, cell = px / g, when = d.panels[0].when[0][r * g + c];
    const last = when ? when - 1 : d.n - 1, S = 64, tiles = [];
    for (let k = 0; k <= last; k++) {
      const cv = el("canvas", { width: S, height: S }), ctx = cv.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(this.img, c * cell, (k - d.first) * px + r * cell, cell, cell, 0, 0, S, S);
      const committed = when && k === last;
      if (committed) { ctx.strokeStyle = ORANGE; ctx.lineWidth = 4; ctx.strokeRect(2, 2, S - 4, S - 4); }
      tiles.push(el("figure", { class: "emigm-tile", onclick: () => this.go(k) }, cv,
        el("figcaption", {}, `step ${k + 1}${committed ? " ✓" : ""}`)));
    }
    this.history.replaceChildren(
      el("div", { class: "emigm-hint" }, `Token (${r}, ${c}): its draft at each step` +
        (when ? `, committed at ${stepLabel(when, d.N)} (outlined).` : ", still masked when the run stopped.")),
      el("div", { class: "emigm-tiles" }, ...tiles));
  };

  document.addEventListener("keydown", ev => {
    const t = ev.target; if (!active || !active.data || !active.root.isConnected || active.root.offsetParent === null) return;
    if (t && (t.tagName === "INPUT" && t.type !== "range" && t.type !== "checkbox" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    const keys = { ArrowLeft: () => active.go(active.k - 1), ArrowRight: () => active.go(active.k + 1), Home: () => active.go(0),
      End: () => active.go(active.data.n - 1), " ": () => active.toggle() };
    if (t && t.type === "range" && ev.key !== " ") return; // the slider moves itself
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });

  window.emigmPlayer = function (element, props, trigger, watch) {
    const root = element.querySelector(".emigm-root") || element;
    const p = new Player(root, trigger);
    if (!active) active = p;
    p.set(props.value);
    if (watch) watch("value", () => p.set(props.value));
  };

  // ------------------------------------------------------------------ an opened step (the lab)

  // The opened step: each guidance branch's prediction decoded, where guidance acted, why these tokens,
  // the uncertainty, and the canvas after the step on which tokens are chosen for an intervention.
  // Hover shows a token's numbers; choosing tokens happens here; only a diffusion-head token's path
  // (a click on a map) asks the server.
  function Anatomy(root, trigger) {
    root.emigmAnatomy = this; this.root = root; this.trigger = trigger; this.data = null; this.sel = new Set();
  }
  Anatomy.prototype.set = async function (d) {
    if (!d || !d.sprite) { this.root.replaceChildren(); this.data = null; delete this.root.dataset.step; return; }
    const img = await loadImage(d.sprite), pimg = d.path && d.path.sprite ? await loadImage(d.path.sprite) : null;
    if (!this.data || this.data.step !== d.step || this.data.model !== d.model) this.sel = new Set();
    this.data = d; this.img = img; this.pimg = pimg;
    this.build();
    this.root.dataset.step = d.step; this.root.dataset.run = d.run;
    drawn[d.run] = true;
    document.dispatchEvent(new CustomEvent("emigm-drawn", { detail: d.run }));
  };
  Anatomy.prototype.tokenText = function (i) { return core.anatomyTokenText(this.data, i); };
  Anatomy.prototype.build = function () {
    const d = this.data, self = this, V = d.view, g = d.grid, L = d.L, t = d.tokens;
    const canvas = kind => el("canvas", { width: V, height: V, class: "emigm-view", "data-view": kind, style: `width:${V}px;height:${V}px` });
    const fig = (cv, cap) => el("figure", { style: `width:${V}px` }, cv, el("figcaption", {}, cap));
    const cell = V / g, tip = el("div", { class: "emigm-tip", style: "display:none" });
    const at = (ev, cv) => { const b = cv.getBoundingClientRect();
      return Math.min(g - 1, Math.floor((ev.clientY - b.top) / b.height * g)) * g + Math.min(g - 1, Math.floor((ev.clientX - b.left) / b.width * g)); };
    const hover = cv => {
      cv.addEventListener("mousemove", ev => { const i = at(ev, cv), text = self.tokenText(i), box = self.root.getBoundingClientRect();
        tip.textContent = text; self.root.dataset.hover = text;
        tip.style.cssText = `display:block;left:${ev.clientX - box.left + 14}px;top:${ev.clientY - box.top + 14}px`; });
      cv.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    };
    const branch = d.branches.map((b, j) => {
      const cv = canvas("branch-" + b.name), ctx = cv.getContext("2d");
      ctx.imageSmoothingEnabled = false; ctx.drawImage(this.img, j * d.px, 0, d.px, d.px, 0, 0, V, V); hover(cv);
      return fig(cv, b.title);
    });
    const paint = (cv, value, outline) => { // value(i) in [0, 1] or null (committed before the step)
      const ctx = cv.getContext("2d"); ctx.fillStyle = "#f2f2f2"; ctx.fillRect(0, 0, V, V);
      for (let i = 0; i < L; i++) {
        const f = value(i), x = (i % g) * cell, y = Math.floor(i / g) * cell;
        if (f !== null) { ctx.fillStyle = viridis(f); ctx.fillRect(x + 0.5, y + 0.5, cell - 1, cell - 1); }
        if (outline && outline(i)) { const lw = Math.max(2, Math.round(cell / 8)); ctx.strokeStyle = ORANGE; ctx.lineWidth = lw; ctx.strokeRect(x + lw / 2, y + lw / 2, cell - lw, cell - lw); }
      }
    };
    const top = a => Math.max(1e-12, ...a.map(x => x || 0));
    const dmax = top(t.delta), umax = top(t.unc), M = Math.max(1, d.count.masked);
    const delta = canvas("delta"), why = canvas("why"), unc = canvas("unc"), after = canvas("after");
    paint(delta, i => t.masked[i] ? (t.delta[i] || 0) / dmax : null);
    paint(why, i => t.masked[i] ? 1 - t.rank[i] / Math.max(1, M - 1) : null, i => t.revealed[i]);
    paint(unc, i => t.masked[i] ? (t.unc[i] || 0) / umax : null);
    for (const cv of [delta, why, unc]) { hover(cv);
      if (!d.discrete) { cv.title = "click a token that was masked to see its denoising path"; cv.addEventListener("click", ev => {
        const i = at(ev, cv); if (self.trigger) self.trigger("select", { index: [Math.floor(i / g), i % g], value: null, selected: true }); }); } }
    hover(after);
    this.afterCv = after;
    after.addEventListener("click", ev => { const i = at(ev, after); if (self.sel.has(i)) self.sel.delete(i); else self.sel.add(i); self.drawAfter(); self.syncSelection(); });
    this.selLine = el("div", { class: "emigm-hint emigm-asel" });
    const guided = d.guidance === "none" ? " (no guidance at this step: the branches coincide)" : "";
    const rows = [
      el("div", { class: "emigm-ahead" }, el("b", {}, `${stepLabel(d.step, d.N)}`), ` · ${d.headline} · order ${d.order} · count rule ${d.count_rule} · guidance ${d.guidance}${guided}`),
      el("div", { class: "emigm-images" }, ...branch),
      el("div", { class: "emigm-images" },
        fig(delta, `where guidance acted: ${d.delta_label} (max ${dmax.toPrecision(2)})`),
        fig(why, "why these tokens: brighter = earlier in this step's order · orange = revealed"),
        fig(unc, `uncertainty: ${d.unc_label} (max ${umax.toPrecision(2)})`),
        fig(after, `after step ${d.step}: click tokens to choose them for an intervention`)),
      this.selLine, tip];
    if (d.path) rows.push(this.buildPath());
    this.root.replaceChildren(el("div", { class: "emigm-anatomy-body" }, ...rows));
    this.drawAfter(); this.syncSelection(false);
  };
  Anatomy.prototype.drawAfter = function () {
    const d = this.data, cv = this.afterCv, ctx = cv.getContext("2d"), V = cv.width, g = d.grid, cell = V / g;
    const j = d.branches.findIndex(b => b.name === d.draft_branch), lw = Math.max(2, Math.round(cell / 8));
    ctx.imageSmoothingEnabled = false; ctx.drawImage(this.img, j * d.px, 0, d.px, d.px, 0, 0, V, V);
    for (let i = 0; i < d.L; i++) {
      const x = (i % g) * cell, y = Math.floor(i / g) * cell;
      if (d.tokens.after[i]) { ctx.fillStyle = GREY; ctx.fillRect(x, y, cell, cell); }
      if (this.sel.has(i)) { ctx.strokeStyle = PURPLE; ctx.lineWidth = lw; ctx.strokeRect(x + lw / 2, y + lw / 2, cell - lw, cell - lw); }
    }
  };
  // the chosen tokens go into the intervention's tokens box (as typed there: row:col, ...)
  Anatomy.prototype.syncSelection = function (write = true) {
    const g = this.data.grid, list = [...this.sel].sort((a, b) => a - b).map(i => `${Math.floor(i / g)}:${i % g}`).join(", ");
    this.root.dataset.sel = list;
    this.selLine.textContent = core.selectionText(this.data, this.sel);
    if (!write) return;
    const box = document.querySelector("#int-tokens textarea, #int-tokens input");
    if (box) { box.value = list; box.dispatchEvent(new Event("input", { bubbles: true })); }
  };
  Anatomy.prototype.buildPath = function () {
    const d = this.data, p = d.path;
    if (p.note) return el("div", { class: "emigm-note emigm-path" }, p.note);
    const vals = p.values, S = vals.length, C = vals[0].length, W = 420, H = 160, l = 40, r = 10, tp = 10, b = 24;
    const lo = Math.min(...vals.flat()), hi = Math.max(...vals.flat()), span = Math.max(1e-9, hi - lo);
    const x = j => l + j * (W - l - r) / Math.max(1, S - 1), y = v => tp + (H - tp - b) * (1 - (v - lo) / span);
    const g = svg("svg", { width: W, height: H, class: "emigm-svg emigm-pathplot" });
    const colors = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"];
    for (let ch = 0; ch < C; ch++) {
      g.append(svg("polyline", { points: vals.map((row, j) => `${x(j)},${y(row[ch])}`).join(" "), fill: "none", stroke: colors[ch % colors.length], "stroke-width": 1.6 }));
    }
    const text = (xx, yy, s, anchor) => { const e = svg("text", { x: xx, y: yy, "font-size": 11, "text-anchor": anchor || "middle", fill: "#444" }); e.textContent = s; g.append(e); };
    g.append(svg("line", { x1: l, y1: H - b, x2: W - r, y2: H - b, stroke: "#888" })); g.append(svg("line", { x1: l, y1: tp, x2: l, y2: H - b, stroke: "#888" }));
    for (let j = 0; j < S; j++) text(x(j), H - b + 14, j === 0 ? "noise" : String(j));
    text(l - 4, tp + 8, hi.toPrecision(2), "end"); text(l - 4, H - b, lo.toPrecision(2), "end");
    // each tile: the token and one token around it, so its change is large enough to see (outlined)
    const crop = core.pathCrop(d, p.token), S2 = Math.max(72, Math.round(crop.size * 24 / crop.cell));
    const k = S2 / crop.size, strip = el("div", { class: "emigm-tiles" });
    for (let j = 0; j < S; j++) {
      const cv = el("canvas", { width: S2, height: S2, "data-crop": `${crop.x},${crop.y},${crop.size}` }), ctx = cv.getContext("2d");
      ctx.imageSmoothingEnabled = false; ctx.drawImage(this.pimg, j * d.px + crop.x, crop.y, crop.size, crop.size, 0, 0, S2, S2);
      ctx.strokeStyle = PURPLE; ctx.lineWidth = 2; ctx.strokeRect(crop.tx * k + 1, crop.ty * k + 1, crop.cell * k - 2, crop.cell * k - 2);
      strip.append(el("figure", { class: "emigm-tile" }, cv, el("figcaption", {}, p.captions[j])));
    }
    return el("div", { class: "emigm-path" },
      el("div", { class: "emigm-hint" }, `Token (${p.token[0]}, ${p.token[1]}) inside the diffusion head at step ${d.step}: its ${C} channels at each ` +
        `point of the solver (${p.solver}${p.revealed ? ", revealed at this step" : ", a draft: still masked after this step"}), and the image ` +
        "decoded with it, around the token (outlined)."),
      g, strip);
  };
  window.emigmAnatomy = function (element, props, trigger, watch) {
    const root = element.querySelector(".emigm-anatomy") || element;
    const a = new Anatomy(root, trigger);
    a.set(props.value);
    if (watch) watch("value", () => a.set(props.value));
  };

  // ------------------------------------------------------------------ the guided tour

  const TOUR = [
    ["#run-btn", "1 · Run", "Pick a class and a seed and press Run: the sampler starts from an all-masked image and reveals it token by token."],
    ["#player .emigm-images", "2 · Scrub", "The canvas (grey = still masked, orange = revealed at this step), the model's draft of every token, and a map. Scrub with the slider or the arrow keys: it all replays in your browser."],
    ["#player .emigm-maps", "3 · Maps", "Switch the map: when each token was revealed, how unsure the model is about each still-masked token, how often a token was revised (remasking runs). Hover any token for its numbers."],
    ["#open-step-btn", "4 · Open a step", "Open the step shown in the player: what the conditional, null and smoothed branches predicted, where guidance changed the prediction, and why these tokens were revealed."],
    ["#intervene-btn", "5 · Intervene", "Choose tokens on the opened step, erase them (or fix a code), and resume with the same random streams: both runs side by side, and the step where they part."],
    [() => [...document.querySelectorAll("button[role=tab]")].find(b => b.textContent.trim().startsWith("Compare")), "6 · Compare",
      "Compare along any axis on one seed (guidance, schedule, steps, order, head, remasking, temperature), with the measured FD under every panel whose setting was measured."],
  ];
  window.emigmTour = function () {
    document.querySelector(".emigm-tour")?.remove();
    let i = 0, lit = null;
    const box = el("div", { class: "emigm-tour", role: "dialog", "aria-label": "guided tour" });
    const close = () => { if (lit) lit.classList.remove("emigm-tour-lit"); box.remove(); document.removeEventListener("keydown", key); };
    const key = ev => { if (ev.key === "Escape") close(); };
    const show = () => {
      const [sel, title, text] = TOUR[i], target = typeof sel === "function" ? sel() : document.querySelector(sel);
      if (lit) lit.classList.remove("emigm-tour-lit");
      lit = target || null;
      if (lit) { lit.classList.add("emigm-tour-lit"); lit.scrollIntoView({ block: "center", behavior: "instant" }); }
      box.dataset.step = i + 1;
      box.replaceChildren(el("b", {}, title), el("p", {}, text),
        el("div", { class: "emigm-tour-bar" },
          el("span", {}, `${i + 1} of ${TOUR.length}`),
          el("button", { type: "button", class: "emigm-btn", "data-act": "back", onclick: () => { if (i > 0) { i--; show(); } } }, "back"),
          i < TOUR.length - 1 ? el("button", { type: "button", class: "emigm-btn", "data-act": "next", onclick: () => { i++; show(); } }, "next")
            : el("button", { type: "button", class: "emigm-btn", "data-act": "done", onclick: close }, "done"),
          el("button", { type: "button", class: "emigm-btn", "data-act": "skip", onclick: close }, "skip the tour")));
    };
    document.body.append(box);
    document.addEventListener("keydown", key);
    show();
  };

  // ------------------------------------------------------------------ notes next to refused values

  // notes: {control: message} for the controls whose elem_id is prefix + control; replaces the notes
  // of that prefix
  function placeNotes(prefix, notes) {
    for (const old of document.querySelectorAll(`.emigm-field-note[data-prefix="${prefix}"]`)) old.remove();
    for (const [name, msg] of Object.entries(notes || {})) {
      const block = document.getElementById(prefix + name);
      if (!block) continue;
      block.after(el("div", { class: "emigm-field-note", "data-prefix": prefix, "data-for": name, role: "alert" }, msg));
    }
  }

  window.emigmNotes = function (element, props, watch) {
    const root = element.querySelector(".emigm-notes") || element, prefix = root.dataset.prefix || "ctl-";
    const show = () => placeNotes(prefix, props.value || {});
    show();
    if (watch) watch("value", show);
  };

  // ------------------------------------------------------------------ the status line

  const WAIT_MS = 1500, QUIET_MS = 5000; // "waiting for the sampler" after this; "no news" after that
  window.emigmStatus = function (element, props, watch) {
    const root = element.querySelector(".emigm-status") || element, prefix = root.dataset.prefix || "ctl-";
    let since = performance.now(), text = "", phase = "";
    const render = () => {
      let extra = "";
      const quiet = performance.now() - since;
      if (phase === "waiting" && quiet > WAIT_MS)
        extra = ` for ${Math.round(quiet / 1000)} s: the sampler runs one request at a time and another run ` +
          "(this tab's, another tab's or another person's) is using it";
      else if (phase === "running" && quiet > QUIET_MS) extra = ` · no news from the server for ${Math.round(quiet / 1000)} s`;
      root.dataset.phase = phase; root.className = "emigm-status phase-" + phase;
      root.innerHTML = ""; root.append(el("span", { class: "dot" }), ...renderBold(text + extra));
    };
    const show = () => {
      const v = props.value || {}; phase = v.phase || ""; text = v.text || ""; since = performance.now();
      if (phase === "done" || phase === "stopped") {
        if (!drawn[v.run]) { phase = "rendering"; text = "Rendering… " + text; }
        else text = (v.phase === "done" ? "Ready: " : "") + text;
        if (v.phase === "done" && drawn[v.run]) phase = "ready";
      }
      if (v.phase === "error") placeNotes(prefix, v.notes || {});
      else if (root.dataset.clear && (v.phase === "done" || v.phase === "running")) placeNotes(prefix, {});
      render();
    };
    root.emigmWait = () => { phase = "waiting"; text = "**Starting…** waiting for the sampler"; since = performance.now(); render(); };
    setInterval(() => { if (phase === "waiting" || phase === "running") render(); }, 1000);
    document.addEventListener("emigm-drawn", e => { if ((props.value || {}).run === e.detail) show(); });
    show();
    if (watch) watch("value", show);
  };
  // a button's js: its request is on its way; the status says so until the server answers
  window.emigmWaiting = function (statusId) {
    const root = document.querySelector(`#${statusId} .emigm-status`);
    if (root && root.emigmWait) root.emigmWait();
  };

  function renderBold(text) { // **bold** spans only
    return text.split(/(\*\*[^*]+\*\*)/).map(s => s.startsWith("**") ? el("b", {}, s.slice(2, -2)) : document.createTextNode(s));
  }

  // ------------------------------------------------------------------ the permalink

  // the permalink of the controls' values: this page's address and the query of explorer-core.js linkQuery
  window.emigmLink = function (names, vals) {
    return `${location.origin}${location.pathname}?${core.linkQuery(names, vals)}`;
  };

  // A number typed into a slider's box stays as typed: Gradio would clamp it into the slider's range
  // when the box loses focus; the server refuses it instead, with a note next to the box.
  document.addEventListener("blur", ev => {
    const t = ev.target;
    if (t instanceof HTMLInputElement && t.type === "number" && t.closest(".sidebar")) ev.stopImmediatePropagation();
  }, true);

  // Disabled choices: a radio option whose label ends with ⊘ cannot be picked; its reason is in the
  // control's info line and in the option's tooltip.
  function disableMarked(scope) {
    for (const label of scope.querySelectorAll("label")) {
      const input = label.querySelector("input[type=radio]");
      if (!input) continue;
      const off = (label.textContent || "").includes("⊘");
      if (input.disabled !== off) input.disabled = off;
      label.classList.toggle("emigm-off", off); label.setAttribute("aria-disabled", off ? "true" : "false");
      const info = label.closest(".block")?.querySelector(".info-text")?.textContent || "";
      if (off) label.title = info.split(" · ").filter(s => s.startsWith("⊘ " + input.value)).join(" ") || "unavailable for this model";
      else if (label.title) label.removeAttribute("title");
    }
  }
  // Svelte may re-enable the input when it redraws the radio group: a click on a marked option is
  // stopped before it reaches it, whatever its disabled flag says
  document.addEventListener("click", ev => {
    const label = ev.target instanceof Element && ev.target.closest("label.emigm-off");
    if (label) { ev.preventDefault(); ev.stopPropagation(); }
  }, true);
  const observer = new MutationObserver(() => disableMarked(document));
  const watchPage = () => { observer.observe(document.body, { childList: true, subtree: true, characterData: true }); disableMarked(document); };
  // Gradio may add this script after DOMContentLoaded
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", watchPage); else watchPage();
})();
