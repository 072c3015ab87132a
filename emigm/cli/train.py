"""The `train` and `export` commands of `python -m emigm`, and their dotted config overrides
(`--train.steps 100`, `--data.path=/x`). Library code lives in emigm.train.generator / emigm.train.trainer; this
module only parses, checks and reports."""
from __future__ import annotations

import argparse

from emigm.cli.args import INT
from emigm.core import distributed as dist
from emigm.core.config import apply_overrides, to_json
from emigm.core.devices import resolve_device
from emigm.core.presets import PRESETS, get_preset
from emigm.eval.modelcard import write_model_card
from emigm.io.loading import load_pipeline
from emigm.io.runs import OVERWRITE_FLAG, export_checkpoint
from emigm.nn.smoother import check_base
from emigm.train.generator import train
from emigm.train.smoother import smoother_run, train_smoother
from emigm.train.trainer import micro_batch_size


def parse_overrides(rest: list[str], parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """["--train.steps", "100", "--data.path=/x"] -> [("train.steps", "100"), ("data.path", "/x")]."""
    pairs, i = [], 0
    while i < len(rest):
        tok = rest[i]
        key, eq, value = tok[2:].partition("=")
        if not tok.startswith("--") or "." not in key:
            parser.error(f"unrecognized argument {tok!r}; config overrides look like --train.steps 100")
        if not eq:
            if i + 1 >= len(rest):
                parser.error(f"config override {tok} needs a value")
            value, i = rest[i + 1], i + 1
        pairs.append((key.replace("-", "_"), value))
        i += 1
    return pairs


def accept_overrides(parser: argparse.ArgumentParser) -> None:
    """Make `parser` collect unknown trailing `--a.b VALUE` pairs into args.overrides (argparse has no
    wildcard options; the top-level parser would otherwise reject them)."""
    known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, rest = known(args, namespace)
        ns.overrides = parse_overrides(rest, parser)
        return ns, []

    parser.parse_known_args = parse_known_args


def cmd_train(args: argparse.Namespace) -> None:
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    cfg = apply_overrides(get_preset(args.preset), getattr(args, "overrides", []))
    if args.dry_run:
        micro_batch_size(cfg.train, dist.info_from_env().world_size)
        print(to_json(cfg))
        return
    out = train(cfg, args.out_dir or None, args.max_steps, device=args.device, progress=not args.no_progress)
    if not dist.info_from_env().is_main:
        return
    _report(out, cfg.train.steps)


def _report(out: dict, steps: int, export_hint: str = "") -> None:
    """The one line a finished (or already finished) training run prints."""
    export = f", export {out['export_dir']}{export_hint}" if out["export_dir"] else ""
    if out["steps_run"] == 0:
        print(f"{out['run_dir']}: already at step {out['step']} of {steps}; nothing to train{export}")
        return
    print(f"{out['run_dir']}: step {out['step']}, loss {out['final_loss']:.4f}, "
          f"{out['images_per_s']:.1f} images/s on {out['device']}{export}")


def cmd_train_smoother(args: argparse.Namespace) -> None:
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    device = resolve_device(args.device)
    gen = load_pipeline(args.base, device)
    overrides = getattr(args, "overrides", [])
    # the recipe sets other fields (official: loss_positions replaced) before the overrides apply
    recipe = str(dict(overrides).get("smoother.recipe", "ours"))
    run = apply_overrides(smoother_run(gen, recipe=recipe), overrides)

    check_base(gen.model, run.smoother, "the self-guidance smoother")  # overrides must still fit the base
    if args.dry_run:
        print(to_json(run))
        return
    run_dir = args.out_dir or f"{run.train.out_dir}/{run.name}"
    out = train_smoother(gen, run, run_dir, device=device, max_steps=args.max_steps, progress=not args.no_progress)
    _report(out, run.train.steps, " (copy it to <base export>/self-guidance/ to use it)")


def cmd_export(args: argparse.Namespace) -> None:
    if not args.out.strip():
        raise ValueError("--out is empty: give the export folder")
    out = export_checkpoint(args.source, args.out, overwrite=args.overwrite)
    write_model_card(out)
    print(f"wrote {out} (with its model card, README.md)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train --preset NAME [--a.b VALUE ...] [--dry-run] [--out-dir DIR] [--device D]
    [--max-steps N]` and `export RUN_OR_CKPT --out DIR` to the CLI's subparsers."""

    e = subparsers.add_parser("export", help="write an inference export from a training checkpoint")
    e.add_argument("source", help="a run folder (its newest checkpoint) or a ckpt-*.pt file")
    e.add_argument("--out", required=True, help="export folder (model.safetensors + config.json)")
    e.add_argument(OVERWRITE_FLAG, action="store_true", help="replace an earlier export in --out")
    e.set_defaults(func=cmd_export)

    p = subparsers.add_parser("train", help="train or resume a run (one process, or torchrun)",
                              description="Train a preset; trailing --section.key VALUE pairs override "
                                          "the config. Re-running the same command resumes.")
    p.add_argument("--preset", required=True, help=f"{', '.join(PRESETS)}")
    p.add_argument("--out-dir", default="", help="run folder (default: {train.out_dir}/{name})")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-steps", type=INT, default=None,
                   help="stop at this step (>= 1; checkpointed; resumable) without changing train.steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train, overrides=[])
    accept_overrides(p)

    p = subparsers.add_parser("train-smoother", aliases=["train-sg"],
                              help="train a self-guidance smoother on a frozen base model",
                              description="Train the self-guidance smoother of a base export with the "
                                          "error-token task; --smoother.KEY / --train.KEY VALUE override "
                                          "the run. Re-running the same command resumes.")
    p.add_argument("--base", required=True, help="the base model: a shipped name or an export folder")
    p.add_argument("--out-dir", default="", help="run folder (default: {train.out_dir}/BASE-sg)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved run config as JSON and exit")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-steps", type=INT, default=None, help="stop at this step (>= 1; resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_smoother, overrides=[])
    accept_overrides(p)
