"""Command line: `python -m emigm COMMAND ...`. Bad input prints one line and exits with code 2."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from emigm.cli.args import FLOAT, INT
from emigm.cli.train import register as register_training
from emigm.core import distributed as dist
from emigm.core.config import MAX_TOKENS, to_dict
from emigm.core.devices import resolve_device
from emigm.core.fields import FieldError, check_number, describe, field_names
from emigm.core.fileio import write_text
from emigm.core.guidance import GuidanceConfig
from emigm.core.labels import parse_class
from emigm.core.presets import PRESETS
from emigm.core.seeds import check_seed, parse_seed
from emigm.core.statedict import CheckpointError
from emigm.eval.claims import CLAIMS_FILE, CLASSIFIER_FILE, NOT_MEASURED, ClaimsFile
from emigm.eval.modelcard import model_card
from emigm.eval.sampler_error import require_oracle, sampler_error
from emigm.eval.scoring import check_request, evaluate_generator
from emigm.io.exports import resolve_export
from emigm.io.fingerprint import fingerprint
from emigm.io.hub import is_hub_id
from emigm.io.hub import resolve as hub_resolve
from emigm.io.imaging import save_grid
from emigm.io.loading import load_pipeline, random_pipeline
from emigm.io.runs import OVERWRITE_FLAG, check_output
from emigm.io.pictures import Picture, encode_picture, fmnist_picture, masked_view, read_picture
from emigm.nn.budget import MAX_IMAGES, MAX_SAMPLES, check_sampling_size
from emigm.nn.oracle import check_eps as check_oracle_eps
from emigm.nn.oracle import check_sigma as check_oracle_sigma
from emigm.sample.capabilities import check_capabilities, suggested_guidance, suggested_settings
from emigm.sample.checks import check_finite
from emigm.sample.inpaint import MASK_SPEC_HELP as MASK_SPEC
from emigm.sample.inpaint import MaskError, add_ring, check_mask, inpaint_state, painted_count, parse_mask, steps_for
from emigm.sample.options import AnatomyOptions
from emigm.sample.orders import painted_priority, parse_reveal_order
from emigm.sample.sampler import SamplerConfig, sample_steps
from emigm.sample.steps import step_table
from emigm.sample.trace import trace_dict
from emigm.train.classifier import train_classifier
from emigm.train.tokenizer import TokenizerTrainConfig, train_tokenizer

EXIT_USAGE = 2
REVEAL_HELP = ("with --order fixed: a painted reveal order, row-major token indices I,J,... revealed first in that "
               "order (the others after them in raster order)")


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


class ArgParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad argument raises CliError (exit 2, no usage dump)."""

    def error(self, message: str):
        raise CliError(message)


# ----------------------------------------------------------------------------- shared options


# options whose default, where a model is loaded, is what that model runs with unless told otherwise:
# the rule it was trained for (emigm.sample.capabilities.suggested_settings) and its suggested guidance
# (suggested_guidance), the same defaults as the explorer's; what each default is, for the help text
MODEL_RULE = {"schedule": "its training schedule: exp for eMIGM, cosine for MaskGIT",
              "count_rule": "binomial for eMIGM, exact for MaskGIT",
              "order": "random for eMIGM, confidence for MaskGIT",
              "cfg_scale": "the model's suggested guidance, 3",
              "cfg_interval": "the model's suggested guidance, (0.1, 0.3]"}


def add_field_args(p: argparse.ArgumentParser, cls, title: str, model_rule: bool = False) -> None:
    """One option per option field of the dataclass `cls` (emigm.core.fields): its CLI spelling, type,
    default and help, with the valid choices or range in the help text. With `model_rule`, the
    MODEL_RULE options default to None: "what the loaded model runs with" (see sampler_configs)."""
    import typing


    g = p.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for name, default, spec in describe(cls):
        flag = spec.cli or "--" + name.replace("_", "-")
        tp = hints[name]
        extra = f" ({', '.join(repr(n) if n == '' else n for n in spec.names())})" if spec.choices is not None \
            else f" {spec.range_text()}" if spec.low is not None or spec.high is not None else ""
        said = f"default {default!r}"
        if model_rule and name in MODEL_RULE:
            default, said = None, f"default: the rule the model was trained for ({MODEL_RULE[name]})"
        kw = dict(dest=name, default=default, help=f"{spec.help}{extra}; {said}")
        if typing.get_origin(tp) is tuple:
            g.add_argument(flag, nargs=spec.nargs, type=FLOAT, metavar=("T_LO", "T_HI")[:spec.nargs], **kw)
        elif tp in (int, float):
            g.add_argument(flag, type=INT if tp is int else FLOAT, **kw)
        else:
            g.add_argument(flag, **kw)


def add_sampler_args(p: argparse.ArgumentParser, model_rule: bool = False) -> None:
    add_field_args(p, SamplerConfig, "sampler", model_rule)
    add_field_args(p, GuidanceConfig, "guidance", model_rule)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Which model to load: --checkpoint (export, shipped name or official .pth [+ --vae]) or
    --preset NAME --random-init."""

    p.add_argument("--checkpoint", default="", help="an export folder, a shipped model name, or an official "
                                                     "eMIGM / MAR .pth checkpoint")
    p.add_argument("--vae", default="", help="the KL-16 VAE (kl16.ckpt) for official ImageNet checkpoints")
    p.add_argument("--preset", default="", help=f"with --random-init: {', '.join(PRESETS)}")
    p.add_argument("--random-init", action="store_true")


def sampler_configs(a: argparse.Namespace, draft: bool = False, model=None):
    """(SamplerConfig, GuidanceConfig) from the parsed option fields. Options left unset (None: the
    MODEL_RULE ones) take what `model` runs with unless told otherwise (the rule it was trained for and
    its suggested guidance, emigm.sample.capabilities), or, before a model is loaded, the field defaults
    (so that every given value is checked before anything is loaded)."""
    import dataclasses

    def values(cls, rule):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        out = {}
        for n in field_names(cls):
            v = getattr(a, n)
            v = rule.get(n, defaults[n]) if v is None else v
            out[n] = tuple(v) if isinstance(v, list) else v
        return out

    sampler = SamplerConfig(**values(SamplerConfig, suggested_settings(model) if model is not None else {}),
                            draft=draft)
    guidance = GuidanceConfig(**values(GuidanceConfig, suggested_guidance(model) if model is not None else {}))
    return sampler, guidance


def reveal_order(a: argparse.Namespace, sampler: SamplerConfig, num_tokens: int):
    """--reveal-order I,J,... -> the (L,) priority of order fixed (the listed tokens first, then raster), or None."""
    if not a.reveal_order:
        return None
    if sampler.order != "fixed":
        raise CliError(f"--reveal-order goes with --order fixed (got --order {sampler.order})")
    return painted_priority(parse_reveal_order(a.reveal_order, num_tokens), num_tokens)


def load_for_sampling(a: argparse.Namespace, device):
    """--checkpoint SOURCE [--vae kl16.ckpt], or --preset NAME --random-init -> emigm.io.loading.Pipeline."""

    if a.checkpoint and (a.preset or a.random_init):
        raise CliError("give either --checkpoint or --preset NAME --random-init, not both")
    if a.vae and not a.checkpoint:
        raise CliError("--vae goes with an official ImageNet checkpoint: --checkpoint FILE.pth --vae kl16.ckpt")
    if a.checkpoint:
        return load_pipeline(a.checkpoint, device, vae=getattr(a, "vae", ""))
    if not a.preset:
        raise CliError("give --checkpoint NAME_OR_PATH, or --preset NAME --random-init")
    if not a.random_init:
        raise CliError(f"--preset {a.preset} has no trained weights here: add --random-init, or use --checkpoint")
    return random_pipeline(a.preset, device, seed=a.seed)


# ----------------------------------------------------------------------------- commands


def cmd_schedule(a: argparse.Namespace) -> None:
    check_number("--tokens", a.tokens, 1, MAX_TOKENS, integer=True)
    sampler, guidance = sampler_configs(a)
    table = step_table(sampler, guidance, a.tokens)
    if a.json:
        print(json.dumps(table.as_dict(), indent=2))
        return
    g = guidance
    print(f"schedule {sampler.schedule}, {sampler.num_steps} steps, {a.tokens} tokens, count rule {sampler.count_rule}"
          + (f", CFG {g.cfg_scale} in ({g.cfg_interval[0]}, {g.cfg_interval[1]}]" if g.cfg_scale != 1.0 else ", no CFG")
          + (f", self-guidance {g.sg_scale} in ({g.sg_interval[0]}, {g.sg_interval[1]}]" if g.sg_scale > 0 else ""))
    print("tokens revealed per step as the sampler plans them (at least one, at most the masked count minus "
          "one per later step; mean and 5-95 % range, "
          + (f"over {table.draws} seeds" if table.draws else "exact") + "), "
          "beside the schedule's L x (gamma(t) - gamma(s)), which ignores both rules")
    print(f"{'step':>4} {'t':>8} {'s':>8} {'revealed':>9} {'5-95 %':>8} {'L x dgamma':>11} {'masked after':>12} "
          f"{'cfg':>4} {'sg':>4} {'passes':>6} {'total':>6}")
    for r in table.rows:
        band = f"{r.planned_lo}" if r.planned_lo == r.planned_hi else f"{r.planned_lo}-{r.planned_hi}"
        print(f"{r.step:>4} {r.t:>8.4f} {r.s:>8.4f} {r.planned_mean:>9.2f} {band:>8} {r.expected_revealed:>11.2f} "
              f"{r.planned_masked_after:>12.1f} {'yes' if r.cfg else '':>4} {'yes' if r.sg else '':>4} {r.passes:>6} "
              f"{r.cumulative_passes:>6}")
    print(f"CFG steps: {table.cfg_steps}; self-guidance steps: {table.sg_steps}; transformer passes: "
          f"{table.passes} ({sampler.num_steps} x {table.nfe_per_step:.3g})")


def cmd_claims(a: argparse.Namespace) -> None:
    """The measured claims, each with its numbers only when measured on the files in use."""
    cf = ClaimsFile.read(a.file or CLAIMS_FILE)
    if cf.doc is None:
        raise CliError(cf.problem or "no measured results")
    current = cf.current_fingerprints()
    if a.checkpoint:  # compare with these files instead of the shipped ones of that name
        folder = resolve_export(a.checkpoint)
        classifier = CLASSIFIER_FILE if CLASSIFIER_FILE.is_file() else None
        current[folder.name] = fingerprint(folder, classifier)
    rows = cf.claims(current)
    if a.model:
        rows = [(c, ok) for c, ok in rows if a.model in cf.claim_models(c)]
        if not rows:
            raise CliError(f"--model {a.model}: no claim of {cf.path.name} rests on it; models there: "
                           + ", ".join(cf.doc["fingerprints"]))
    if a.json:
        print(json.dumps([{"id": c.get("id"), "claim": c.get("claim"), "models": cf.claim_models(c),
                           "measured_on_these_weights": ok, "verdict": c.get("verdict") if ok else NOT_MEASURED,
                           "evidence": c.get("evidence") if ok else None} for c, ok in rows], indent=2))
        return
    sets = cf.doc.get("seed_sets") or []
    print(f"{cf.path.name}: measured {cf.doc.get('date', '?')}, {cf.doc.get('num_samples')} samples x "
          f"{len(sets)} seed sets" + ("" if cf.doc.get("complete", True) else
                                      f", partial ({len(cf.doc.get('pending') or [])} settings pending)"))
    for c, ok in rows:
        print(f"- {c.get('claim')}: " + (f"{c.get('verdict')} ({c.get('evidence')})" if ok else NOT_MEASURED))


def cmd_sample(a: argparse.Namespace) -> None:
    import torch


    # everything that needs no model is checked first, and the outputs before the work
    check_number("--num-images", a.num_images, 1, MAX_IMAGES, integer=True)
    a.seed = parse_seed("--seed", a.seed, a.num_images)
    sampler, guidance = sampler_configs(a)
    anatomy = None
    if a.anatomy:
        if not a.trace:
            raise CliError("--anatomy is written into the trace: give --trace FILE.json")
        anatomy = AnatomyOptions(a.uncertainty_draws, tuple(a.path_token) if a.path_token else None)
    elif a.path_token or a.uncertainty_draws != AnatomyOptions.uncertainty_draws:
        raise CliError("--uncertainty-draws and --path-token go with --anatomy")
    device = resolve_device(a.device)
    out = check_output(a.out, "--out", (".png",), overwrite=a.overwrite)
    if a.trace:
        trace = check_output(a.trace, "--trace", overwrite=a.overwrite)
        if trace.resolve() == out.resolve():
            raise CliError(f"--out and --trace are the same file ({a.out}); give two names")
    gen = load_for_sampling(a, device)
    sampler, guidance = sampler_configs(a, draft=anatomy is not None, model=gen.model)
    names, label = gen.class_names, gen.label
    every = str(a.class_).lower() == "all"
    classes = list(range(len(names))) if every else [parse_class(a.class_, names)]
    total = a.num_images * len(classes)
    if every:
        check_number("--num-images x classes", total, 1, MAX_IMAGES, integer=True)
        check_seed("--seed", a.seed, total)
    check_capabilities(gen.model, sampler, guidance, gen.smoother)
    check_sampling_size(gen.cfg, total, sampler, guidance, device, f"--num-images {total}")
    labels = torch.tensor([c for c in classes for _ in range(a.num_images)], dtype=torch.long)
    seeds = [a.seed + i for i in range(total)]
    start = time.perf_counter()
    fixed = reveal_order(a, sampler, gen.model.num_tokens)
    states = list(s.to("cpu") for s in sample_steps(gen, labels, seeds, sampler, guidance, anatomy=anatomy,
                                                    fixed_order=fixed))
    elapsed = time.perf_counter() - start
    last = states[-1]
    chunk = 256  # decode in chunks: a decoder's activations for thousands of images at once do not fit
    images = torch.cat([gen.decode(last.tokens[i:i + chunk]).cpu() for i in range(0, total, chunk)])
    check_finite(label, last.tokens, images, states=states)  # before anything is written
    save_grid(images, out, cols=a.num_images if every else None)
    what = (f"{a.num_images} per class, a row per class" if every
            else f"{a.num_images} image(s) of class {classes[0]} ({names[classes[0]]})")
    print(f"wrote {a.out}: {what} from {label}; "
          f"{last.passes} transformer passes, {last.head_evals} head evaluations, {elapsed:.2f} s")
    if len(set(last.image_steps.tolist())) > 1:  # an adaptive order: the NFE ledger per image
        print(f"steps per image: {', '.join(map(str, last.image_steps.tolist()))}; transformer passes per image: "
              f"{', '.join(map(str, last.image_passes.tolist()))}")
    if a.trace:
        doc = trace_dict(states, label, {"class_name": "all" if every else names[classes[0]],
                                         "seconds": round(elapsed, 4)})
        write_text(trace, json.dumps(doc))
        print(f"wrote {a.trace}")


def cmd_inpaint(a: argparse.Namespace) -> None:
    import torch

    check_number("--num-images", a.num_images, 1, MAX_IMAGES, integer=True)
    a.seed = parse_seed("--seed", a.seed, a.num_images)
    if (a.image is None) == (a.test_index is None):
        raise CliError("give one image: --image PATH (PNG or JPEG) or --test-index N (Fashion-MNIST test set)")
    if a.image is not None and a.class_ is None:
        raise CliError("--image needs --class NAME_OR_ID: the model is class-conditional and a file has no label")
    check_number("--ring", a.ring, 0, 6, integer=True)
    given_steps = a.num_steps
    a.num_steps = a.num_steps if a.num_steps is not None else 16
    sampler_configs(a)  # every given value checked before anything is read or loaded
    out = check_output(a.out, "--out", (".png",), overwrite=a.overwrite)
    if a.trace:
        trace = check_output(a.trace, "--trace", overwrite=a.overwrite)
        if trace.resolve() == out.resolve():
            raise CliError(f"--out and --trace are the same file ({a.out}); give two names")
    device = resolve_device(a.device)
    gen = load_for_sampling(a, device)
    tok = gen.tokenizer
    L = gen.model.num_tokens
    mask = parse_mask(a.mask, L)
    if a.ring and not bool(mask.any()):
        raise MaskError("--ring needs a painted region to go around: the mask paints no token")
    mask = add_ring(mask, a.ring)
    check_mask(mask)
    a.num_steps = steps_for(painted_count(mask), given_steps)
    sampler, guidance = sampler_configs(a, draft=True, model=gen.model)
    size = dict(size=tok.image_size, channels=tok.channels)
    picture: Picture = (fmnist_picture(a.test_index, a.data_path or None, **size) if a.test_index is not None
                        else read_picture(a.image, **size))
    names = gen.class_names
    label = parse_class(a.class_, names) if a.class_ is not None else picture.label
    check_capabilities(gen.model, sampler, guidance, gen.smoother)
    B = a.num_images
    check_sampling_size(gen.cfg, B, sampler, guidance, device, f"--num-images {B}")
    tokens = encode_picture(gen, picture)
    tokens = tokens.expand(B, *tokens.shape[1:]).clone()
    labels = torch.full((B,), label, dtype=torch.long)
    seeds = [a.seed + i for i in range(B)]
    init = inpaint_state(tokens, mask.to(tokens.device), labels, seeds, sampler, guidance)
    fixed = reveal_order(a, sampler, L)
    start = time.perf_counter()
    states = list(s.to("cpu") for s in sample_steps(gen, labels, seeds, sampler, guidance, init=init,
                                                    fixed_order=fixed))
    elapsed = time.perf_counter() - start
    last = states[-1]
    results = gen.decode(last.tokens).cpu()
    recon = gen.decode(tokens[:1]).cpu()
    check_finite(gen.label, last.tokens, results, states=states)  # before anything is written
    original = picture.tensor()
    if original.shape[1] != results.shape[1]:
        original = original.expand(-1, results.shape[1], -1, -1)
    row = torch.cat([original, recon, masked_view(recon, mask, tok.grid), results])
    save_grid(row, out, cols=row.shape[0])
    for note in picture.notes:
        print(f"note: {picture.what}: {note}")
    print(f"wrote {a.out}: original | reconstruction | masked | {B} result(s) of {picture.what} as class {label} "
          f"({names[label]}), {int(mask.sum())} of {L} tokens painted (mask {a.mask}, ring {a.ring}), "
          f"{sampler.num_steps} steps from {gen.label}; {last.passes} transformer passes, {elapsed:.2f} s")
    if a.trace:
        extra = {"class_name": names[label], "seconds": round(elapsed, 4),
                 "inpaint": {"source": picture.what, "notes": list(picture.notes), "mask": a.mask, "ring": a.ring,
                             "painted": mask.nonzero().flatten().tolist()}}
        write_text(trace, json.dumps(trace_dict(states, gen.label, extra)))
        print(f"wrote {a.trace}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    """Also under torchrun (`torchrun --nproc-per-node K -m emigm evaluate ...`): every rank samples its
    share of the N seeds, rank 0 scores them all and prints (emigm.eval.scoring)."""
    check_number("--num-samples", a.num_samples, 1, MAX_SAMPLES, integer=True)
    check_number("--batch-size", a.batch_size, 1, MAX_IMAGES, integer=True)
    a.seed = parse_seed("--seed", a.seed, a.num_samples)
    device = resolve_device(a.device, dist.info_from_env().local_rank)
    sampler, guidance = sampler_configs(a)
    gen = load_for_sampling(a, device)
    sampler, guidance = sampler_configs(a, model=gen.model)
    label = gen.label
    check_request(gen.model, a.num_samples, sampler, guidance, a.batch_size, a.seed,
                  ("--num-samples", "--batch-size", "--seed"))
    info = dist.init_from_env(device.type)
    try:
        r = evaluate_generator(gen, gen.tokenizer, a.num_samples, sampler, guidance, a.data_path or None,
                               a.classifier or None, a.batch_size, a.seed)
    finally:
        dist.cleanup()
    if not info.is_main:
        return
    r = {"model": label, "sampler": to_dict(sampler), "guidance": to_dict(guidance), **r}
    if a.json:
        print(json.dumps(r, indent=2))
        return
    fl = r["floor"]
    ranks = f" on {r['ranks']} ranks" if r["ranks"] > 1 else ""
    print(f"{label}: {a.num_samples} samples{ranks}, {r['passes']} passes ({sampler.num_steps} x "
          f"{r['passes'] / sampler.num_steps:.3g}), {r['head_evals']} head evals, {r['images_per_s']:.1f} img/s")
    print(f"{'':<10} {'FD':>8} {'class acc':>10} {'precision':>10} {'recall':>8} {'seam ratio':>11}")
    for name, row in (("samples", r), ("real data", fl)):
        print(f"{name:<10} {row['fd']:>8.3f} {row['class_accuracy']:>10.3f} {row['precision']:>10.3f} "
              f"{row['recall']:>8.3f} {row['seam_ratio']:>11.3f}")


def cmd_sampler_error(a: argparse.Namespace) -> None:
    """The sampler's exact error on an oracle model (emigm.eval.sampler_error); prints, writes nothing."""
    check_number("--num-samples", a.num_samples, 1, MAX_SAMPLES, integer=True)
    check_number("--batch-size", a.batch_size, 1, MAX_IMAGES, integer=True)
    a.seed = parse_seed("--seed", a.seed, a.num_samples)
    if a.eps is not None and a.sigma is not None:
        raise CliError("give --eps (fmnist-oracle, codes) or --sigma (fmnist-oracle-kl, latents), not both")
    kernel = a.eps if a.eps is not None else a.sigma
    if a.eps is not None:
        check_oracle_eps(a.eps, "--eps")
    if a.sigma is not None:
        check_oracle_sigma(a.sigma, "--sigma")
    sampler, guidance = sampler_configs(a)
    if a.random_init or a.preset:
        raise CliError("the sampler's exact error needs an oracle model: --checkpoint fmnist-oracle or "
                       "fmnist-oracle-kl")
    device = resolve_device(a.device)
    if not a.checkpoint:
        raise CliError("give --checkpoint fmnist-oracle or fmnist-oracle-kl")
    gen = load_pipeline(a.checkpoint, device, kernel=kernel)
    require_oracle(gen)
    if (a.eps is not None and not gen.model.discrete) or (a.sigma is not None and gen.model.discrete):
        raise CliError(f"{'--eps' if a.eps is not None else '--sigma'} is not the kernel of {gen.label}: "
                       "--eps goes with the code oracle, --sigma with the latent oracle")
    sampler, guidance = sampler_configs(a, model=gen.model)
    check_capabilities(gen.model, sampler, guidance, gen.smoother)
    r = sampler_error(gen, a.num_samples, sampler, guidance, seed=a.seed, batch_size=a.batch_size,
                      fd=not a.no_fd, data_root=a.data_path or None, classifier=a.classifier or None)
    r = {"sampler": to_dict(sampler), "guidance": to_dict(guidance), "kernel": gen.model.kernel, **r}
    if a.json:
        print(json.dumps(r, indent=2))
        return
    what = "KL" if r["kl_nats"] is not None else "dependence cost (not a KL)"
    value, se = (r["kl_nats"], r["kl_se"]) if r["kl_nats"] is not None else (r["dependence_cost_nats"],
                                                                             r["dependence_cost_se"])
    print(f"{r['model']}: {a.num_samples} samples, {sampler.num_steps} steps, {sampler.schedule}, "
          f"{sampler.count_rule}, {sampler.order}: {what} {value:.3f} +- {se:.3f} nats per image")
    print(f"log p(x | c): samples {r['log_p']:.2f} +- {r['log_p_se']:.2f}, exact {r['exact_log_p']:.2f} "
          f"+- {r['exact_log_p_se']:.2f}" + (f"; FD {r['fd']:.2f}, exact {r['exact_fd']:.2f}" if "fd" in r else ""))
    print(f"{'step':>4} {'revealed':>9} {'nats':>9} {'se':>7} {'eff. refs':>10}")
    for k, (m, s_, n, e) in enumerate(zip(r["per_step"], r["per_step_se"], r["revealed_per_step"],
                                        r["effective_refs_per_step"])):
        print(f"{k + 1:>4} {n:>9.2f} {m:>9.3f} {s_:>7.3f} {e:>10.1f}")
    if "note" in r:
        print(r["note"])


def cmd_train_tokenizer(a: argparse.Namespace) -> None:
    if a.max_steps is not None and a.max_steps < 1:
        raise CliError(f"--max-steps must be >= 1, got {a.max_steps}")
    defaults = {"kl": dict(steps=3600, lr=2e-3), "vq": dict(steps=1700, lr=2e-3)}[a.kind] if a.kind in ("kl", "vq") else {}
    cfg = TokenizerTrainConfig(kind=a.kind, steps=a.steps or defaults.get("steps", 1),
                               batch_size=a.batch_size, lr=a.lr or defaults.get("lr", 1.0),
                               seed=parse_seed("--seed", a.seed),
                               latent_channels=a.latent_channels, kl_weight=a.kl_weight,
                               codebook_size=a.codebook_size)
    out = a.out or str(Path("runs") / f"fmnist-{a.kind}")
    run_dir = a.run_dir or str(Path("runs") / f"tokenizer-{Path(out).name}")
    m = train_tokenizer(cfg, out, run_dir, a.data_path or None, device=resolve_device(a.device),
                        max_steps=a.max_steps, overwrite=a.overwrite)
    if not m:
        print(f"stopped at step {a.max_steps} of {cfg.steps}; re-run the same command to continue ({run_dir})")
        return
    extra = (f", codebook use {m['codebook_used']:.1%}, perplexity {m['perplexity']:.0f}" if a.kind == "vq" else "")
    print(f"wrote {out}: test PSNR {m['psnr']:.2f} dB, seam ratio {m['seam_ratio']:.3f} "
          f"(data {m['seam_ratio_data']:.3f}){extra}, {m['train_seconds']:.0f} s")


def cmd_train_classifier(a: argparse.Namespace) -> None:
    r = train_classifier(a.data_path or None, a.out, epochs=a.epochs, batch_size=a.batch_size,
                         seed=parse_seed("--seed", a.seed),
                         device=resolve_device(a.device), overwrite=a.overwrite)
    print(f"wrote {a.out}: test accuracy {r['test_accuracy']:.4f}")


def cmd_model_card(a: argparse.Namespace) -> None:
    """Print (or write with --out) the model card of an export, shipped name, tokenizer or classifier."""
    if a.out:
        check_output(a.out, "--out", (".md",), overwrite=a.overwrite)
    text = model_card(load_source(a.source))
    if a.out:
        write_text(a.out, text)
        print(f"wrote {a.out}")
    else:
        sys.stdout.write(text)


def cmd_site(a: argparse.Namespace) -> None:
    """The static site of curated runs. It is built by the explorer's package (app/site.py: the player,
    its payloads and the lessons live there, above the library), looked up by name at run time so the
    library never imports the app."""
    try:
        site = importlib.import_module("app.site")
    except ImportError as e:
        raise CliError(f"the static site is built by the explorer's package `app`, which is not importable "
                       f"here ({e}); run from the repository or install it with pip install .") from None
    site.check_out(a.out)  # refused before any model is loaded
    record = site.build(a.out)
    print(f"wrote {a.out}: {len(record['runs'])} runs ({', '.join(r['key'] for r in record['runs'])}), "
          f"{record['bytes'] / 2**20:.2f} MB; open index.html, or publish the folder as it is")


def load_source(source: str) -> str:
    """A Hub reference resolved to its local folder (emigm.io.hub), anything else as given."""
    return str(hub_resolve(source)) if is_hub_id(source) else source


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    prog = "emigm" if os.path.basename(sys.argv[0]) in ("emigm", "emigm.exe") else "python -m emigm"  # as typed
    p = ArgParser(prog=prog, description="eMIGM: masked image generation")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgParser)

    s = sub.add_parser("schedule", help="per-step reveal counts and transformer passes (no model)")
    add_sampler_args(s)
    s.add_argument("--tokens", type=INT, default=256, help="number of tokens L")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_schedule)

    s = sub.add_parser("sample", help="sample images and write a grid PNG (+ a JSON trace)")
    add_model_args(s)
    s.add_argument("--class", dest="class_", default="0", help="class id or name, or all (--num-images per class, a row each)")
    s.add_argument("--seed", default="0", help="seed in [0, 2^63 - 1] (ASCII digits)")
    s.add_argument("--num-images", type=INT, default=4)
    s.add_argument("--out", default="samples.png")
    s.add_argument("--trace", default="")
    s.add_argument(OVERWRITE_FLAG, action="store_true", help="replace an existing --out / --trace file")
    s.add_argument("--anatomy", action="store_true",
                   help="record each step's anatomy in the --trace (scores, Gumbel noise, ranks, reveal "
                        "probability, expected and drawn counts, uncertainty); costs extra head work")
    s.add_argument("--uncertainty-draws", type=int, default=AnatomyOptions.uncertainty_draws,
                   help="with --anatomy: head draws K behind a diffusion head's uncertainty [2, 32]")
    s.add_argument("--path-token", type=int, nargs=2, default=None, metavar=("IMAGE", "POSITION"),
                   help="with --anatomy: record this token's denoising path through the head's solver")
    s.add_argument("--device", default="auto")
    s.add_argument("--reveal-order", default="", help=REVEAL_HELP)
    add_sampler_args(s, model_rule=True)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("inpaint", help="regenerate the painted tokens of an image, keep the others exactly")
    add_model_args(s)
    s.add_argument("--image", default=None, help="a PNG or JPEG, converted to the model's size (28 x 28 grayscale)")
    s.add_argument("--test-index", type=INT, default=None, help="a Fashion-MNIST test image, 0..9999")
    s.add_argument("--data.path", dest="data_path", default="", help="Fashion-MNIST folder")
    s.add_argument("--mask", required=True, help=f"the tokens to regenerate: {MASK_SPEC}")
    s.add_argument("--ring", type=INT, default=0, help="grow the painted region by K tokens (MAGE masks one ring "
                                                       "more: border tokens record the mask); default 0")
    s.add_argument("--class", dest="class_", default=None, help="class id or name the model is conditioned on "
                                                                "(default: the test image's class)")
    s.add_argument("--seed", default="0", help="seed in [0, 2^63 - 1] (ASCII digits); image i gets seed + i")
    s.add_argument("--num-images", type=INT, default=1, help="results with seeds seed..seed+N-1")
    s.add_argument("--out", default="inpaint.png")
    s.add_argument("--trace", default="")
    s.add_argument(OVERWRITE_FLAG, action="store_true", help="replace an existing --out / --trace file")
    s.add_argument("--device", default="auto")
    s.add_argument("--reveal-order", default="", help=REVEAL_HELP)
    add_sampler_args(s, model_rule=True)
    s.set_defaults(func=cmd_inpaint, num_steps=None)

    s = sub.add_parser("evaluate", help="FD / class accuracy / precision / recall of N samples")
    add_model_args(s)
    s.add_argument("--num-samples", type=INT, default=10000)
    s.add_argument("--batch-size", type=INT, default=250)
    s.add_argument("--seed", default="0", help="seed in [0, 2^63 - 1] (ASCII digits)")
    s.add_argument("--data.path", dest="data_path", default="", help="Fashion-MNIST folder")
    s.add_argument("--classifier", default="", help="classifier folder (default: assets/classifier)")
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true")
    add_sampler_args(s, model_rule=True)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sampler-error", help="the sampler's exact error (KL in nats, per step) on an oracle model")
    add_model_args(s)
    s.add_argument("--num-samples", type=INT, default=1000)
    s.add_argument("--batch-size", type=INT, default=100)
    s.add_argument("--seed", default="0", help="seed in [0, 2^63 - 1] (ASCII digits)")
    s.add_argument("--eps", type=FLOAT, default=None, help="the code oracle's kernel eps in (0, 1) (default: its own)")
    s.add_argument("--sigma", type=FLOAT, default=None, help="the latent oracle's kernel sigma > 0 (default: its own)")
    s.add_argument("--no-fd", action="store_true", help="skip the FD of the samples and of exact samples")
    s.add_argument("--data.path", dest="data_path", default="", help="Fashion-MNIST folder")
    s.add_argument("--classifier", default="", help="classifier folder (default: assets/classifier)")
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true")
    add_sampler_args(s, model_rule=True)
    s.set_defaults(func=cmd_sampler_error)

    s = sub.add_parser("claims", help="the paper's claims measured on the shipped models: numbers only for the "
                                      "weights they were measured on")
    s.add_argument("--model", default="", help="only the claims that rest on this model")
    s.add_argument("--checkpoint", default="", help="an export folder: compare its files (instead of the shipped "
                                                    "ones of the same name) with those measured")
    s.add_argument("--file", default="", help="a claims.json (default: assets/results/claims.json)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_claims)

    s = sub.add_parser("train-tokenizer", help="train a small tokenizer for 28x28 images: the KL "
                                               "autoencoder (continuous latents) or the VQ-VAE (codes)")
    s.add_argument("--kind", default="kl", help="kl (continuous, fmnist-kl) or vq (discrete, fmnist-vq)")
    s.add_argument("--data.path", dest="data_path", default="", help="Fashion-MNIST folder")
    s.add_argument("--out", default="", help="export folder (default runs/fmnist-KIND; shipped assets are never "
                                              "overwritten)")
    s.add_argument("--run-dir", default="", help="training state for resuming (default runs/tokenizer-NAME)")
    s.add_argument(OVERWRITE_FLAG, action="store_true", help="replace an earlier export in --out")
    s.add_argument("--steps", type=INT, default=0, help="optimiser steps (default: kl 3600, vq 1700)")
    s.add_argument("--max-steps", type=INT, default=None, help="stop early at this step (resumable)")
    s.add_argument("--batch-size", type=INT, default=64)
    s.add_argument("--lr", type=FLOAT, default=0.0, help="peak learning rate (default 2e-3)")
    s.add_argument("--latent-channels", type=INT, default=4, help="kl: channels per latent token")
    s.add_argument("--kl-weight", type=FLOAT, default=1e-4, help="kl: weight of the KL term")
    s.add_argument("--codebook-size", type=INT, default=512, help="vq: number of codes")
    s.add_argument("--seed", default="0", help="seed in [0, 2^63 - 1] (ASCII digits)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_train_tokenizer)

    s = sub.add_parser("train-classifier", help="train the Fashion-MNIST classifier behind FD / accuracy")
    s.add_argument("--data.path", dest="data_path", default="", help="Fashion-MNIST folder")
    s.add_argument("--out", default="runs/classifier", help="output folder (shipped assets are never overwritten)")
    s.add_argument(OVERWRITE_FLAG, action="store_true", help="replace an earlier classifier in --out")
    s.add_argument("--epochs", type=INT, default=6)
    s.add_argument("--batch-size", type=INT, default=256)
    s.add_argument("--seed", default="0", help="seed in [0, 2^63 - 1] (ASCII digits)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_train_classifier)

    s = sub.add_parser("site", help="write the static site: the curated runs replayed in any browser, no server")
    s.add_argument("--out", required=True, help="the site's folder: new, empty, or an earlier site (replaced)")
    s.set_defaults(func=cmd_site)

    s = sub.add_parser("model-card", help="print the model card (README.md, Hub front matter) of an export, a "
                                          "shipped name, a tokenizer or the classifier")
    s.add_argument("source", help="export folder, shipped name (fmnist-emigm, fmnist-kl, classifier, ...) or "
                                  "hf:OWNER/NAME")
    s.add_argument("--out", default="", help="write it to this .md file instead of printing it")
    s.add_argument(OVERWRITE_FLAG, action="store_true", help="replace an existing --out file")
    s.set_defaults(func=cmd_model_card)


    register_training(sub)
    for s in sub.choices.values():
        s.set_defaults(option_names=option_names(s))
    return p


def option_names(p: argparse.ArgumentParser) -> dict[str, str]:
    """{dest: the option as typed} for the options of one command (num_steps -> --steps)."""
    return {a.dest: a.option_strings[-1] for a in p._actions if a.option_strings and a.dest != "help"}


def _os_message(e: OSError) -> str:
    """An OSError as one line: our own (WriteError, FileNotFoundError with a message) as they are,
    the system's as "PATH: reason"."""
    if e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or \
        "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        args.func(args)
    except FieldError as e:  # named as the user typed it: --steps, not num_steps
        return _fail(e.named(getattr(args, "option_names", {}).get(e.field, e.field)))
    except (CliError, ValueError, CheckpointError) as e:
        return _fail(str(e))
    except OSError as e:  # WriteError and FileNotFoundError included
        return _fail(_os_message(e))
    except (MemoryError, RuntimeError) as e:  # a last net: the size checks should have refused first
        if not _out_of_memory(e):
            raise
        return _fail(f"out of memory: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}; use a "
                     "smaller model, batch or image count")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _fail(message: str) -> int:
    """Print `message` as one line `error: ...` on stderr; the exit code for bad input."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip()) or "invalid input"
    print(f"error: {text}", file=sys.stderr)
    return EXIT_USAGE
