/* eMIGM Explorer: the token grid a learner paints on (app/components.py PaintGrid). Two brushes:
   "mask" paints the tokens an inpainting run regenerates (click toggles, drag paints the same way), and
   "order" paints a reveal order (click the tokens in the order they should be revealed, or drag across
   them; a click on a numbered token takes it and every later one off). What is painted is written into
   two text controls (elem ids in the payload: the mask spec "tokens:I,J,..." and the reveal order
   "I,J,..."), so the server, the value checks and the permalink read them like any typed value.
   Payload: {grid, image (data URL), painted: [i], order: [i], mode, mask_id, order_id}. */
(function () {
  if (window.emigmPaint) return;

  function setText(id, value) {
    const box = document.querySelector(`#${id} textarea, #${id} input`);
    if (!box || box.value === value) return;
    box.value = value;
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function PaintGrid(root, props) {
    root.emigmPaint = this;
    this.root = root; this.props = props; this.down = false; this.brush = true;
    this.painted = new Set(); this.order = [];
    const stop = () => { if (this.down) { this.down = false; this.publish(); } };
    window.addEventListener("pointerup", stop);
    window.addEventListener("pointercancel", stop);
  }

  PaintGrid.prototype.load = function (v) {
    this.v = v || {};
    this.painted = new Set(this.v.painted || []);
    this.order = (this.v.order || []).slice();
    this.mode = this.v.mode || this.mode || "mask";
    this.build();
  };

  PaintGrid.prototype.build = function () {
    const v = this.v, g = v.grid || 0, root = this.root;
    root.innerHTML = "";
    if (!g) { root.textContent = v.text || "Pick an image to paint its tokens."; return; }
    const bar = document.createElement("div");
    bar.className = "emigm-paint-bar";
    for (const [mode, label] of [["mask", "paint the mask"], ["order", "paint a reveal order"]]) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = label; b.dataset.mode = mode;
      b.className = "emigm-paint-mode" + (this.mode === mode ? " selected" : "");
      b.setAttribute("aria-pressed", this.mode === mode ? "true" : "false");
      b.addEventListener("click", () => { this.mode = mode; this.build(); });
      bar.append(b);
    }
    const clear = document.createElement("button");
    clear.type = "button"; clear.className = "emigm-paint-clear";
    clear.textContent = this.mode === "mask" ? "clear the mask" : "clear the order";
    clear.addEventListener("click", () => {
      if (this.mode === "mask") this.painted.clear(); else this.order = [];
      this.draw(); this.publish();
    });
    bar.append(clear);
    const board = document.createElement("div");
    board.className = "emigm-paint-board";
    board.style.gridTemplateColumns = `repeat(${g}, 1fr)`;
    if (v.image) board.style.backgroundImage = `url(${v.image})`;
    this.cells = [];
    for (let i = 0; i < g * g; i++) {
      const c = document.createElement("div");
      c.className = "emigm-paint-cell"; c.dataset.token = String(i);
      c.title = `token ${i} (row ${Math.floor(i / g)}, column ${i % g})`;
      c.addEventListener("pointerdown", ev => { ev.preventDefault(); this.start(i); });
      c.addEventListener("pointerenter", () => { if (this.down) this.apply(i); });
      board.append(c); this.cells.push(c);
    }
    board.addEventListener("pointerdown", ev => { if (ev.target.releasePointerCapture) ev.target.releasePointerCapture(ev.pointerId); });
    const note = document.createElement("div");
    note.className = "emigm-paint-note";
    root.append(bar, board, note);
    this.note = note;
    this.draw();
  };

  PaintGrid.prototype.start = function (i) {
    this.down = true;
    if (this.mode === "mask") { this.brush = !this.painted.has(i); this.apply(i); return; }
    const at = this.order.indexOf(i);
    if (at >= 0) { this.order = this.order.slice(0, at); this.down = false; this.draw(); this.publish(); return; }
    this.apply(i);
  };

  PaintGrid.prototype.apply = function (i) {
    if (this.mode === "mask") { if (this.brush) this.painted.add(i); else this.painted.delete(i); }
    else if (!this.order.includes(i)) this.order.push(i);
    this.draw();
  };

  PaintGrid.prototype.draw = function () {
    const rank = new Map(this.order.map((t, j) => [t, j + 1]));
    this.cells.forEach((c, i) => {
      c.classList.toggle("painted", this.painted.has(i));
      c.textContent = rank.has(i) ? String(rank.get(i)) : "";
      c.classList.toggle("ordered", rank.has(i));
    });
    this.root.dataset.painted = [...this.painted].sort((a, b) => a - b).join(",");
    this.root.dataset.order = this.order.join(",");
    this.root.dataset.mode = this.mode;
    const n = this.painted.size, g = this.v.grid;
    this.note.textContent = this.mode === "mask"
      ? `${n} of ${g * g} tokens painted: the run regenerates these and keeps the others exactly. Click to toggle a token, drag to paint.`
      : `${this.order.length} tokens in the reveal order (order "fixed": these first, in this order, then the rest row by row). Click a numbered token to take it and the later ones off.`;
  };

  PaintGrid.prototype.publish = function () {
    const v = this.v;
    const painted = [...this.painted].sort((a, b) => a - b);
    if (v.mask_id) setText(v.mask_id, painted.length ? "tokens:" + painted.join(",") : "");
    if (v.order_id) setText(v.order_id, this.order.join(","));
  };

  window.emigmPaint = function (element, props, watch) {
    const root = element.querySelector(".emigm-paint") || element;
    const grid = root.emigmPaint || new PaintGrid(root, props);
    grid.load(props.value);
    if (watch) watch("value", () => grid.load(props.value));
  };
})();
