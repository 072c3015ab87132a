// The page's pure functions (app/static/explorer-core.js) on real payloads (tests/js/fixtures, written by
// tests/js/make_fixtures.py from the explorer's builders). Run: node --test tests/js/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const core = require("../../app/static/explorer-core.js");
const fixture = name => JSON.parse(readFileSync(new URL(`./fixtures/${name}.json`, import.meta.url)));

test("linkQuery writes the query of permalink.encode: whole floats without a point, %.6g, nulls left out", () => {
  const q = core.linkQuery(["model", "seed", "cfg_scale", "cfg_interval_lo", "class_name", "order"],
    ["test-tiny", 3, 3.0, 0.1234567, "T-shirt/top", null]);
  assert.equal(q, "model=test-tiny&seed=3&cfg_scale=3&cfg_interval_lo=0.123457&class_name=T-shirt%2Ftop");
});

test("stepLabel says step k of N", () => {
  assert.equal(core.stepLabel(3, 16), "step 3 of 16");
});

test("viridis runs from dark purple to yellow and clamps", () => {
  assert.equal(core.viridis(0), "rgb(68,1,84)");
  assert.equal(core.viridis(1), "#fde725");
  assert.equal(core.viridis(-5), core.viridis(0));
  assert.equal(core.viridis(7), core.viridis(1));
});

test("tokenAt of a run without remasking reads the when map", () => {
  const d = fixture("unmask"), when = d.panels[0].when[0], v = { when, mfirst: 0 };
  for (let k = 0; k < d.n; k++) {
    for (let i = 0; i < d.L; i++) {
      const st = core.tokenAt(v, k, i);
      assert.equal(st.masked, when[i] === 0 || when[i] > k + 1);
      assert.equal(st.now, when[i] === k + 1);
      assert.equal(st.revised, false);
    }
  }
});

test("tokenAt of a remasking run reads the mask of every step", () => {
  const d = fixture("unmask-remask"), v = { when: d.panels[0].when[0], masked: d.masked, mfirst: d.first, rev: d.revisions };
  for (let k = 0; k < d.n; k++) {
    for (let i = 0; i < d.L; i++) assert.equal(core.tokenAt(v, k, i).masked, d.masked[k][i] === "1", `step ${k + 1}, token ${i}`);
  }
});

test("unmaskDetail gives t, s, guidance, the reveals and the passes of a step", () => {
  const d = fixture("unmask"), s = d.steps[0];
  const text = core.unmaskDetail(d, 0);
  assert.match(text, new RegExp(`^t ${s.t.toFixed(3)} → s ${s.s.toFixed(3)}`));
  assert.match(text, new RegExp(`revealed ${s.revealed} \\(\\d+% of ${d.L} tokens\\)`));
  assert.match(text, new RegExp(`NFE so far ${s.nfe}`));
  const last = core.unmaskDetail(d, d.n - 1);
  assert.match(last, /\(100% of 16 tokens\)|every token was already revealed/);
});

test("panelCaption of runs with different steps names each panel's own step", () => {
  const d = fixture("compare-steps"), [short, long] = d.panels;
  assert.equal(d.same_steps, false);
  assert.equal(core.panelCaption(d, short, d.n - 1), `step ${short.N} of ${short.N} · NFE ${short.nfe} of ${short.nfe} · ${short.ms} ms in all`);
  assert.match(core.panelCaption(d, long, 0), /^step 1 of 8 · /);
  assert.match(core.panelCaption(d, short, 1), /^step 1 of 4 · /); // step 2 of 8 is the same fraction: step 1 of 4
});

test("layout: images at least the payload's view, in whole multiples of the image size", () => {
  const d = fixture("compare-steps");
  const lay = core.layout(d, 1100, 900, 200);
  assert.equal(lay.V % d.px, 0);
  assert.ok(lay.V >= d.view);
  assert.equal(lay.cols, 2); // two seeds per panel
  const narrow = core.layout(d, 500, 900, 200);
  assert.equal(narrow.per, 1);
  const u = fixture("unmask"), big = core.layout(u, 1100, 900, 150);
  assert.equal(big.V % u.px, 0);
  assert.ok(big.V >= u.view && 3 * big.V + 2 * core.GAP <= 1100);
});

test("anatomyTokenText words a token's rank by its order's kind, read from the payload", () => {
  const d = fixture("anatomy"), t = d.tokens;
  const i = t.masked.findIndex((m, j) => m && t.revealed[j]);
  assert.equal(d.order_kind, "priority");
  assert.equal(d.order_fixed, false);
  assert.match(core.anatomyTokenText(d, i), new RegExp(`${d.order} key .* → rank ${t.rank[i] + 1} of ${d.count.masked}`));
  const scored = { ...d, order: "some-score", order_kind: "score" };
  assert.match(core.anatomyTokenText(scored, i), /some-score score .* \+ Gumbel noise .* → rank/);
  const adaptive = { ...d, order: "some-adaptive", order_kind: "adaptive" };
  assert.match(core.anatomyTokenText(adaptive, i), /some-adaptive score [^+]* → rank/);
  const fixed = { ...d, order: "some-fixed", order_fixed: true };
  assert.match(core.anatomyTokenText(fixed, i), /some-fixed order: fixed rank/);
  const kept = t.masked.findIndex(m => !m);
  assert.match(core.anatomyTokenText(d, kept), new RegExp(`committed before step ${d.step}: kept`));
});

test("the anatomy payload names the branch that is the run's draft among its branches", () => {
  const d = fixture("anatomy");
  assert.ok(d.branches.some(b => b.name === d.draft_branch));
});

test("defect 3: with remasking the share revealed is the share committed after the step, never over 100%", () => {
  const d = fixture("unmask-remask");
  const sum = d.steps.reduce((a, s) => a + s.revealed, 0);
  assert.ok(sum > d.L, "the fixture re-reveals tokens (revealed counts add up to more than L)");
  for (let k = 0; k < d.n; k++) {
    const committed = [...d.masked[k]].filter(c => c === "0").length;
    assert.equal(core.committedFraction(d, k), committed / d.L, `step ${k + 1}`);
    const pct = Number(core.unmaskDetail(d, k).match(/\((\d+)% of/)[1]);
    assert.equal(pct, Math.round(100 * committed / d.L), `step ${k + 1}`);
  }
});

test("defect 4: a denoising-path tile shows the token with one token around it, inside the image", () => {
  const d = { px: 28, grid: 7 }, cell = 4;
  const mid = core.pathCrop(d, [3, 2]);
  assert.deepEqual(mid, { x: 4, y: 8, size: 12, cell, tx: 4, ty: 4 });
  const corner = core.pathCrop(d, [0, 6]);
  assert.deepEqual(corner, { x: 16, y: 0, size: 12, cell, tx: 8, ty: 0 });
  for (const [r, c] of [[0, 0], [6, 6], [3, 3]]) {
    const k = core.pathCrop(d, [r, c]);
    assert.ok(k.x >= 0 && k.y >= 0 && k.x + k.size <= d.px && k.y + k.size <= d.px);
    assert.equal(k.x + k.tx, c * cell); assert.equal(k.y + k.ty, r * cell);
  }
});

test("defect 4: no Halton rank for a token of a run that does not reveal in Halton order", () => {
  const d = fixture("anatomy"), i = d.tokens.masked.findIndex(m => m);
  assert.notEqual(d.order, "halton");
  assert.doesNotMatch(core.anatomyTokenText(d, i), /Halton/);
});

test("defect 5: choosing a token that is still masked after the opened step says erasing it changes nothing", () => {
  const d = fixture("anatomy"), t = d.tokens, g = d.grid;
  const masked = t.after.findIndex(m => m), committed = t.after.findIndex(m => !m);
  const name = i => `${Math.floor(i / g)}:${i % g}`;
  assert.doesNotMatch(core.selectionText(d, new Set([committed])), /still masked/);
  const both = core.selectionText(d, new Set([committed, masked]));
  assert.match(both, new RegExp(`⚠ ${name(masked)} still masked after step ${d.step} .*changes nothing`));
  assert.match(core.selectionText(d, new Set()), /Click tokens/);
});
