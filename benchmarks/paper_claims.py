"""The paper's claims measured on our models: FD against NFE per setting.

    python benchmarks/paper_claims.py --num-samples 10000                       # shipped models, writes
                                                                                 # assets/results/claims.{json,md}
    python benchmarks/paper_claims.py --random-init --num-samples 50 --out-dir /tmp/claims   # pipeline smoke run

Settings (each point: N class-balanced samples scored by the shipped classifier, see emigm.eval.scoring):
- sampling schedule linear / cosine / exp at 4, 8, 16, 32 steps (no CFG);
- head solver DDPM-100 vs DPM-Solver++ at 4, 8, 14 head steps;
- no CFG, CFG at every step, CFG in intervals, with pass counts;
- CFG with mask (fmnist-emigm) vs fake class (fmnist-emigm-fakecfg) over scales;
- continuous eMIGM vs discrete MaskGIT (fmnist-maskgit) at equal NFE;
- self-guidance on MaskGIT (its module shipped in assets/fmnist-maskgit/self-guidance): plain vs guided
  at the same steps and at equal NFE, the scale s in {0, 0.5, 1, 2, 3}, and FD / accuracy / precision /
  recall over the Gumbel temperature of the confidence order with and without it.
Each claim is then stated as "holds" or "does not hold here" from the numbers, with no tuning.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emigm.core.config import to_dict  # noqa: E402
from emigm.core.fileio import ASSETS_DIR  # noqa: E402
from emigm.core.guidance import GuidanceConfig  # noqa: E402
from emigm.eval.scoring import evaluate_generator  # noqa: E402
from emigm.io.loading import load_pipeline, random_pipeline  # noqa: E402
from emigm.sample.sampler import SamplerConfig  # noqa: E402

BASE = SamplerConfig(num_steps=16, schedule="exp", draft=False)
CFG = 3.0
# MaskGIT's sampler: cosine schedule, exact counts, most confident first with linearly annealed Gumbel noise
MASKGIT = SamplerConfig(num_steps=16, schedule="cosine", count_rule="exact", order="confidence", draft=False)
MASKGIT_NAME = "fmnist-maskgit"


def load(name: str, random_init: bool, device):
    if random_init:
        gen = random_pipeline(name, device)
        if name == MASKGIT_NAME:  # an untrained module, for the pipeline test
            from emigm.nn.smoother import Smoother, config_for
            gen.smoother = Smoother(config_for(gen.model)).to(device).eval()
        return gen
    return load_pipeline(name, device)


def suite(available: set[str], emigm: str = "fmnist-emigm", steps_list: tuple[int, ...] = (4, 8, 16, 32),
          head_steps: tuple[int, ...] = (4, 8, 14), null_scales: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)
          ) -> list[tuple[str, str, str, SamplerConfig, GuidanceConfig]]:
    """(claim, label, model, sampler, guidance) rows; `emigm` names the continuous model."""
    rows = []
    for sched in ("linear", "cosine", "exp"):
        for steps in steps_list:
            rows.append(("schedule", f"{sched} S={steps}", emigm, replace(BASE, schedule=sched, num_steps=steps),
                         GuidanceConfig()))
    for hs in head_steps:
        rows.append(("solver", f"dpm head={hs}", emigm, replace(BASE, head_steps=hs), GuidanceConfig()))
    rows.append(("solver", "ddpm head=100", emigm, replace(BASE, head_solver="ddpm", head_steps=100),
                 GuidanceConfig()))
    rows.append(("cfg", "no CFG", emigm, BASE, GuidanceConfig()))
    rows.append(("cfg", "CFG every step", emigm, BASE, GuidanceConfig(cfg_scale=CFG)))
    for lo, hi in ((0.1, 0.3), (0.0, 0.3), (0.1, 0.5), (0.2, 0.6)):
        rows.append(("cfg", f"CFG in ({lo}, {hi}]", emigm, BASE, GuidanceConfig(cfg_scale=CFG, cfg_interval=(lo, hi))))
    if emigm + "-fakecfg" in available:
        for scale in null_scales:
            for model in (emigm, emigm + "-fakecfg"):
                rows.append(("null", f"{model} w={scale}", model, BASE, GuidanceConfig(cfg_scale=scale)))
    if MASKGIT_NAME in available:
        for steps in (8, 16):
            rows.append(("discrete", f"maskgit S={steps}", MASKGIT_NAME, replace(MASKGIT, num_steps=steps),
                         GuidanceConfig()))
            rows.append(("discrete", f"emigm S={steps}", emigm, replace(BASE, num_steps=steps), GuidanceConfig()))
    if MASKGIT_NAME + "+sg" in available:
        for steps in (8, 16):
            for s in (0.0, 1.0):
                rows.append(("sg", f"maskgit S={steps} s={s:g}", MASKGIT_NAME, replace(MASKGIT, num_steps=steps),
                             GuidanceConfig(sg_scale=s)))
        for s in (0.5, 2.0, 3.0):
            rows.append(("sg-scale", f"maskgit S=16 s={s:g}", MASKGIT_NAME, MASKGIT, GuidanceConfig(sg_scale=s)))
        for tau in (1.0, 4.5, 10.0, 25.0):
            for s in (0.0, 1.0):
                rows.append(("sg-tau", f"maskgit S=16 tau={tau:g} s={s:g}", MASKGIT_NAME,
                             replace(MASKGIT, order_temperature=tau), GuidanceConfig(sg_scale=s)))
    return rows


def verdicts(results: list[dict]) -> list[dict]:
    by = {r["label"]: r for r in results}

    def fd(label):
        return by[label]["fd"] if label in by else None

    out = []
    few = {s: fd(f"{s} S=4") for s in ("linear", "cosine", "exp")}
    if all(v is not None for v in few.values()):
        best = min(few, key=few.get)
        out.append({"claim": "exp schedule is best at few steps (S=4)", "holds": best == "exp",
                    "numbers": {k: round(v, 3) for k, v in few.items()}})
    d8, ddpm = fd("dpm head=8"), fd("ddpm head=100")
    if d8 is not None and ddpm is not None:
        out.append({"claim": "DPM-Solver++ with 8 head steps is no worse than DDPM-100 (FD at most 10% higher)",
                    "holds": d8 <= 1.1 * ddpm, "numbers": {"dpm-8": round(d8, 3), "ddpm-100": round(ddpm, 3)}})
    every, inter = by.get("CFG every step"), by.get("CFG in (0.1, 0.3]")
    if every and inter:
        out.append({"claim": "interval CFG keeps FD (within 10%) with fewer passes",
                    "holds": inter["fd"] <= 1.1 * every["fd"] and inter["passes"] < every["passes"],
                    "numbers": {"every": [round(every["fd"], 3), every["passes"]],
                                "interval": [round(inter["fd"], 3), inter["passes"]]}})
    sg = {k: fd(f"maskgit S={k[0]} s={k[1]}") for k in ((8, "0"), (8, "1"), (16, "0"), (16, "1"))}
    if all(v is not None for v in sg.values()):
        out.append({"claim": "self-guidance (s = 1) improves FD over plain MaskGIT at the same steps (8 and 16)",
                    "holds": sg[(8, "1")] < sg[(8, "0")] and sg[(16, "1")] < sg[(16, "0")],
                    "numbers": {"S=8 plain": round(sg[(8, "0")], 3), "S=8 guided": round(sg[(8, "1")], 3),
                                "S=16 plain": round(sg[(16, "0")], 3), "S=16 guided": round(sg[(16, "1")], 3)}})
        out.append({"claim": "self-guidance improves FD at equal NFE (guided 8 steps = 16 passes vs plain 16 steps)",
                    "holds": sg[(8, "1")] < sg[(16, "0")],
                    "numbers": {"guided S=8 (16 passes)": round(sg[(8, "1")], 3),
                                "plain S=16 (16 passes)": round(sg[(16, "0")], 3)}})
        scales = {s_: fd(f"maskgit S=16 s={s_}") for s_ in ("0", "0.5", "1", "2", "3")}
        if all(v is not None for v in scales.values()):
            best = min(scales, key=scales.get)
            out.append({"claim": "the self-guidance scale s = 1 is best of {0, 0.5, 1, 2, 3}", "holds": best == "1",
                        "numbers": {f"s={k}": round(v, 3) for k, v in scales.items()}})
    taus = sorted({r["sampler"]["order_temperature"] for r in results if r["claim"] == "sg-tau"})
    if taus:
        pairs = {t: (fd(f"maskgit S=16 tau={t:g} s=0"), fd(f"maskgit S=16 tau={t:g} s=1")) for t in taus}
        better = [t for t, (p, g) in pairs.items() if p is not None and g is not None and g < p]
        out.append({"claim": "self-guidance lowers FD at every Gumbel temperature of the confidence order",
                    "holds": len(better) == len(pairs),
                    "numbers": {f"tau={t:g} {k}": round(v, 3) for t, pg in pairs.items()
                                for k, v in zip(("plain", "guided"), pg) if v is not None}})
    pairs = {}  # base model -> (best FD with mask, best FD with the fake class), over the scales measured
    for r in results:
        if r["claim"] == "null":
            base = r["model"].removesuffix("-fakecfg")
            best = pairs.setdefault(base, [None, None])
            i = int(r["model"].endswith("-fakecfg"))
            best[i] = r["fd"] if best[i] is None else min(best[i], r["fd"])
    pairs = {k: v for k, v in pairs.items() if None not in v}
    if pairs:
        one = len(pairs) == 1
        out.append({"claim": "CFG with mask beats fake class (best FD over scales)",
                    "holds": all(m < f for m, f in pairs.values()),
                    "numbers": {(kind if one else f"{base} {kind}"): round(v, 3)
                                for base, mf in pairs.items() for kind, v in zip(("mask", "fake"), mf)}})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--random-init", action="store_true", help="random-weight presets: tests the pipeline only")
    p.add_argument("--out-dir", default=str(ASSETS_DIR / "results"))
    p.add_argument("--emigm", default="fmnist-emigm", help="the continuous eMIGM model to measure")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32], help="sampling steps for the schedule scan")
    p.add_argument("--head-steps", type=int, nargs="+", default=[4, 8, 14], help="DPM-Solver++ head steps")
    p.add_argument("--null-scales", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0],
                   help="CFG scales of the mask vs fake-class comparison")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="instead of measuring, merge the claims.json of runs made with --only into --out-dir")
    p.add_argument("--note", default="", help="a paragraph stored with the results (context for readers)")
    p.add_argument("--only", default="", help="comma-separated claim groups: schedule,solver,cfg,null,discrete,"
                                              "sg,sg-scale,sg-tau")
    a = p.parse_args()
    if a.merge:
        docs = [json.loads((Path(d) / "claims.json").read_text()) for d in a.merge]
        first = docs[0]
        write(Path(a.out_dir), first["model"], first["num_samples"], first["device"], first["random_init"],
              [pt for d in docs for pt in d["points"]], a.note)
        return
    device = torch.device(a.device)
    names = (a.emigm, a.emigm + "-fakecfg", MASKGIT_NAME)
    available = set(names) if a.random_init else {n for n in names if (ASSETS_DIR / n / "config.json").is_file()}
    if a.random_init or (ASSETS_DIR / MASKGIT_NAME / "self-guidance" / "config.json").is_file():
        available.add(MASKGIT_NAME + "+sg")
    if a.emigm not in available:
        sys.exit(f"error: {a.emigm} is not shipped in assets/; train it first (see README) or pass --random-init")
    rows = suite(available, a.emigm, tuple(a.steps), tuple(a.head_steps), tuple(a.null_scales))
    if a.only:
        rows = [r for r in rows if r[0] in a.only.split(",")]
    cache: dict[str, tuple] = {}
    results = []
    print(f"{'claim':<9} {'setting':<28} {'passes':>6} {'FD':>9} {'acc':>6} {'prec':>6} {'rec':>6} {'img/s':>7}")
    for claim, label, name, sampler, guidance in rows:
        if name not in cache:
            cache[name] = load(name, a.random_init, device)
        gen = cache[name]
        r = evaluate_generator(gen, gen.tokenizer, a.num_samples, sampler, guidance, batch_size=a.batch_size,
                               floor=False)
        row = {"claim": claim, "label": label, "model": name, "nfe": r["passes"],
               "sampler": to_dict(sampler), "guidance": to_dict(guidance),
               **{k: r[k] for k in ("fd", "class_accuracy", "precision", "recall", "passes", "head_evals", "images_per_s")}}
        results.append(row)
        print(f"{claim:<9} {label:<28} {row['passes']:>6} {row['fd']:>9.3f} {row['class_accuracy']:>6.3f} "
              f"{row['precision']:>6.3f} {row['recall']:>6.3f} {row['images_per_s']:>7.1f}", flush=True)
    write(Path(a.out_dir), a.emigm, a.num_samples, str(device), a.random_init, results, a.note)


def series(point: dict) -> str:
    """The curve a point belongs to in the explorer's FD-against-NFE plot."""
    claim, sampler = point["claim"], point["sampler"]
    if claim == "schedule":
        return f"schedule {sampler['schedule']}"
    if claim == "solver":
        return f"head solver {sampler['head_solver']}"
    if claim == "cfg":
        return "CFG: none, every step, intervals"
    if claim == "null":
        return "CFG with fake class" if point["model"].endswith("-fakecfg") else "CFG with mask"
    if claim in ("sg", "sg-scale", "sg-tau"):
        return f"MaskGIT, self-guidance s={point['guidance']['sg_scale']:g}"
    return point["model"]


def write(out: Path, model: str, num_samples: int, device: str, random_init: bool, results: list[dict],
          note: str = "") -> None:
    """claims.json (points + verdicts, the format the explorer's Results tab reads) and claims.md."""
    results = [dict(r, setting=series(r)) for r in results]
    claims = [dict(v, evidence=json.dumps(v["numbers"])) for v in verdicts(results)]
    doc = {"model": model, "num_samples": num_samples, "device": device, "random_init": random_init,
           "date": time.strftime("%Y-%m-%d"), "note": note, "points": results, "claims": claims}
    out.mkdir(parents=True, exist_ok=True)
    (out / "claims.json").write_text(json.dumps(doc, indent=2))
    lines = ["# The paper's claims on our models", "",
             f"Model {model}; {num_samples} samples per point; device {device}"
             + (", RANDOM WEIGHTS (pipeline test)" if random_init else ""), "",
             *([note, ""] if note else []),
             "| claim | holds here? | numbers |", "|---|---|---|"]
    for v in doc["claims"]:
        lines.append(f"| {v['claim']} | {'holds' if v['holds'] else 'does not hold here'} | {json.dumps(v['numbers'])} |")
    lines += ["", "| group | setting | model | passes | FD | class acc | precision | recall |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['claim']} | {r['label']} | {r['model']} | {r['passes']} | {r['fd']:.3f} | "
                     f"{r['class_accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    (out / "claims.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'claims.json'} and {out / 'claims.md'}")


if __name__ == "__main__":
    main()
