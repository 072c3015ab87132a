// The page's link builder and payload readers (app/static/explorer-core.js) against values worked out here:
// the link keeps every value but null (a 0 is a value), writes numbers as Python's permalink.encode does
// (%.6g, whole floats without a point), and the readers turn payload fields into the numbers and words
// the page shows, zeros included. Run: node --test tests/js/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const core = require("../../app/static/explorer-core.js");
const fixture = name => JSON.parse(readFileSync(new URL(`./fixtures/${name}.json`, import.meta.url)));

test("linkQuery keeps every zero and empty value; only null and undefined are left out", () => {
  const names = ["seed", "cfg_scale", "sg_scale", "cfg_interval_lo", "temperature", "remask_eta", "class_name",
    "order", "draft_steps"];
  const vals = [0, 0, 0.0, 0, -0, 0, "", null, undefined];
  const q = new URLSearchParams(core.linkQuery(names, vals));
  assert.deepEqual([...q.keys()], names.slice(0, 7));
  for (const n of names.slice(0, 6)) assert.equal(q.get(n), "0", n);
  assert.equal(q.get("class_name"), "");
});

test("linkQuery writes numbers as Python's f'{x:.6g}' (whole floats as ints) between 1e-4 and 1e6", () => {
  // [value, what permalink.encode writes], the right column from Python 3
  const table = [[0.1234567, "0.123457"], [2.5, "2.5"], [0.05, "0.05"], [12.3456789, "12.3457"],
    [0.000123456, "0.000123456"], [-0.5, "-0.5"], [0.3333333333, "0.333333"], [49.99999, "50"],
    [7.0000001, "7"], [3.0, "3"], [123456.7, "123457"], [0, "0"], [16, "16"], [4.5, "4.5"]];
  const names = table.map((_, i) => `x${i}`);
  const q = new URLSearchParams(core.linkQuery(names, table.map(r => r[0])));
  table.forEach(([x, want], i) => assert.equal(q.get(names[i]), want, String(x)));
});

test("linkQuery: outside 1e-4 .. 1e6 the text differs from Python's but reads back to the same number", () => {
  // Python writes 1e-07, 5e-05 and 1.23457e+06
  const table = [[1e-7, 1e-7], [5e-5, 5e-5], [1234567.8, 1234570], [-0.00001234567, -0.0000123457]];
  const q = new URLSearchParams(core.linkQuery(table.map((_, i) => `y${i}`), table.map(r => r[0])));
  table.forEach(([x, want], i) => assert.equal(parseFloat(q.get(`y${i}`)), want, String(x)));
});

test("tokenAt of a remasking run, recomputed from the masks of every step", () => {
  const d = fixture("unmask-remask");
  const withRev = { when: d.panels[0].when[0], masked: d.masked, mfirst: d.first, rev: d.revisions };
  const masksOnly = { when: d.panels[0].when[0], masked: d.masked, mfirst: d.first };
  let revisedSeen = 0;
  for (let k = 0; k < d.n; k++) {
    const j = k - d.first;
    if (j < 0) continue;
    for (let i = 0; i < d.L; i++) {
      const masked = d.masked[j][i] === "1";
      let committedBefore = false;
      for (let q = 0; q < j; q++) committedBefore ||= d.masked[q][i] === "0";
      const wasMasked = j > 0 ? d.masked[j - 1][i] === "1" : d.first === 0;
      const want = { masked, now: !masked && wasMasked, revised: masked && committedBefore, step: k + 1 };
      revisedSeen += want.revised;
      assert.deepEqual(core.tokenAt(masksOnly, k, i), want, `step ${k + 1}, token ${i}`);
      if (j > 0 || d.first === 0) assert.deepEqual(core.tokenAt(withRev, k, i), want, `step ${k + 1}, token ${i} (rev)`);
    }
  }
  assert.ok(revisedSeen > 0, "the fixture re-masks some committed token");
});

test("unmaskDetail: cumulative reveals as a percentage of L, the guidance named, zeros as zeros", () => {
  const step = (revealed, cfg, sg, nfe) => ({ t: 0.5, s: 0.25, cfg, sg, passes: 2, nfe, ms: 12.4, revealed });
  // each step record carries the tokens still masked after it (app/payload.py StepRecord): L minus the reveals so far
  const masked = d => { let c = 0; for (const s of d.steps) { c += s.revealed; s.masked = d.L - c; } return d; };
  const d = masked({ L: 16, steps: [step(3, 3, 0, 2), step(5, 0, 0.5, 3), step(0, 2.5, 1.5, 5), step(8, 0, 0, 6)] });
  const texts = d.steps.map((_, k) => core.unmaskDetail(d, k));
  // cumulative 3, 8, 8, 16 of 16: 19%, 50%, 50%, 100%
  assert.match(texts[0], /^t 0\.500 → s 0\.250 · CFG ×3 · revealed 3 \(19% of 16 tokens\) · NFE so far 2 · 12 ms$/);
  assert.match(texts[1], / · no CFG \+ self-guidance 0\.5 · revealed 5 \(50% of 16 tokens\) · /);
  assert.match(texts[2], / · CFG ×2\.5 \+ self-guidance 1\.5 · revealed 0 \(50% of 16 tokens\) · NFE so far 5 · /);
  assert.match(texts[3], / · no CFG · revealed 8 \(100% of 16 tokens\) · /);
  const done = masked({ L: 4, steps: [step(4, 0, 0, 1), step(0, 0, 0, 2)] });
  assert.match(core.unmaskDetail(done, 1), /revealed 0: every token was already revealed, yet the step ran \(2 passes\)/);
  const branched = { ...d, branched_from: 2 };
  assert.match(core.unmaskDetail(branched, 1), /from the parent run \(branched after step 2\)$/);
  assert.doesNotMatch(core.unmaskDetail(branched, 2), /parent run/);
});

test("anatomyTokenText: position from the grid, rank + 1, the key as minus the score, zeros printed", () => {
  const n = 16, zeros = Array(n).fill(0);
  const d = {
    grid: 4, step: 3, order: "random", order_kind: "priority", order_fixed: false, headline: "CFG ×3",
    count: { masked: 5 },
    tokens: { masked: zeros.map((_, i) => i < 5), revealed: zeros.map((_, i) => i < 2),
      rank: zeros.map((_, i) => (i < 5 ? 4 - i : -1)), score: zeros.map((_, i) => (i < 5 ? -0.25 * i : null)),
      noise: zeros.slice(), delta: zeros.slice(), unc: zeros.slice() },
  };
  // token 1: row 0, column 1, revealed, rank 3 (0-based) -> 4 of 5, key 0.25
  assert.equal(core.anatomyTokenText(d, 1),
    "token (0, 1) · revealed at this step · random key 0.250 → rank 4 of 5 · CFG ×3 · |Δ| guidance 0.00 · uncertainty 0.00");
  // token 0: score 0 (a key of 0 is a value, not a missing one)
  assert.match(core.anatomyTokenText(d, 0), /random key 0\.00 → rank 5 of 5/);
  assert.match(core.anatomyTokenText({ ...d, order: "margin", order_kind: "score" }, 4),
    /^token \(1, 0\) · stays masked · margin score -1\.00 \+ Gumbel noise 0\.00 → rank 1 of 5/);
  assert.match(core.anatomyTokenText({ ...d, order: "halton", order_fixed: true }, 2), /halton order: fixed rank 3 of 5/);
  assert.equal(core.anatomyTokenText(d, 9), "token (2, 1) · committed before step 3: kept");
});
