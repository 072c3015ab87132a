"""Training: loss falls, exact resume, DDP on gloo, run-folder errors, CLI dry run, weight-decay groups,
and the export round trip. CPU only, tiny presets on the synthetic dataset."""
from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from emigm.cli import main as cli
from emigm.core.config import RunConfig, apply_overrides
from emigm.core.presets import get_preset
from emigm.core.statedict import CheckpointError, load_torch
from emigm.data.stream import DataStream, Share
from emigm.io.exports import load_export
from emigm.io.runs import list_checkpoints
from emigm.nn.model import MaskedGenerator
from emigm.sample.sampler import SamplerConfig, sample
from emigm.tokenize.vqvae import VQVAE, VQVAEConfig, save_vqvae
from emigm.train.generator import train
from emigm.train.optim import lr_at, param_groups, training_schedule


def tiny(preset: str = "test-tiny", vq_path: str = "", **overrides) -> RunConfig:
    """A tiny preset with dotted overrides (underscores for dots: train__steps=4). The VQ preset is
    moved to 16 px / stride 4 to fit the small VQ-VAE (its stride is fixed at 4)."""
    pairs = [("data.limit", 16), ("train.log_every", 1), ("train.ckpt_every", 100)]
    if preset == "test-tiny-vq":
        pairs += [("tokenizer.path", vq_path), ("tokenizer.image_size", 16), ("tokenizer.stride", 4),
                  ("data.image_size", 16)]
    pairs += [(k.replace("__", "."), v) for k, v in overrides.items()]
    return apply_overrides(get_preset(preset), pairs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine a second
    thread makes every step several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vq_path(tmp_path_factory) -> str:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VQVAE(VQVAEConfig(image_size=16, hidden=8, res_hidden=4, num_res_blocks=1, codebook_size=16,
                                  codebook_dim=4))
    path = tmp_path_factory.mktemp("vq") / "vq.safetensors"
    save_vqvae(model.eval(), str(path))
    return str(path)


def run(cfg: RunConfig, out_dir, max_steps: int | None = None) -> dict:
    return train(cfg, out_dir, max_steps, device="cpu", command="pytest", progress=False)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def assert_same_tree(a, b, where: str = "") -> None:
    """Exact (bitwise) equality of nested dicts / lists of tensors and plain values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN here


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    cfg = tiny(data__limit=32, train__steps=40, train__batch_size=16, train__blr=0.05, train__ckpt_every=20)
    return run(cfg, tmp_path_factory.mktemp("run") / "tiny")


def test_loss_falls_and_run_folder(trained: dict) -> None:
    rows = metrics(trained["run_dir"])
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert set(rows[0]) == {"step", "loss", "lr", "grad_norm", "images_per_s", "elapsed"}
    first, last = [r["loss"] for r in rows[:8]], [r["loss"] for r in rows[-8:]]
    assert sum(last) / 8 < 0.7 * sum(first) / 8, (first, last)
    names = sorted(os.listdir(trained["run_dir"]))
    assert names == [".lock", "checksums.json", "ckpt-0000020.pt", "ckpt-0000040.pt", "config.json", "export", "metrics.jsonl"]
    assert json.loads(open(os.path.join(trained["run_dir"], "config.json")).read())["train"]["steps"] == 40


def test_export_is_the_ema_and_samples(trained: dict) -> None:
    model, cfg, meta = load_export(trained["export_dir"])
    ck = load_torch(os.path.join(trained["run_dir"], "ckpt-0000040.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["ema"][k]), k
    assert not all(torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"])
    assert meta["steps"] == 40 and meta["command"] == "pytest" and meta["device"] == "cpu"
    assert meta["final_loss"] == pytest.approx(trained["final_loss"]) and meta["images_per_s"] > 0
    state = sample(model, [0, 3], [0, 1], SamplerConfig(num_steps=4, head_steps=2))
    assert state.tokens.shape == (2, 16, 4) and not state.mask_after.any()


@pytest.mark.parametrize("preset,extra", [("test-tiny", {"train__grad_accum": 2}),
                                          ("test-tiny-vq", {"train__lr_schedule": "cosine"})])
def test_resume_is_bit_identical(tmp_path, vq_path, preset: str, extra: dict) -> None:
    # 16 images, batch 8: two steps per epoch, so the resume also crosses an epoch boundary
    cfg = tiny(preset, vq_path, train__steps=4, **extra)
    whole = run(cfg, tmp_path / "whole")
    first = run(cfg, tmp_path / "split", max_steps=2)
    assert first["step"] == 2 and first["export_dir"] is None
    assert [s for s, _ in list_checkpoints(tmp_path / "split")] == [2]
    second = run(cfg, tmp_path / "split")
    assert second["resumed_from"].endswith("ckpt-0000002.pt") and second["step"] == 4
    a = load_torch(tmp_path / "whole" / "ckpt-0000004.pt")
    b = load_torch(tmp_path / "split" / "ckpt-0000004.pt")
    for key in ("model", "ema", "optimizer", "rng", "data", "step", "config", "loss"):
        assert_same_tree(a[key], b[key], key)
    assert a["data"] == {"epoch": 1, "index": 16}
    assert [r["loss"] for r in metrics(tmp_path / "whole")] == [r["loss"] for r in metrics(tmp_path / "split")]
    assert whole["final_loss"] == second["final_loss"]
    if preset == "test-tiny-vq":  # the categorical export samples too
        model, _, _ = load_export(second["export_dir"])
        tokens = sample(model, [1], [0], SamplerConfig(num_steps=3)).tokens
        assert tokens.shape == (1, 16) and tokens.dtype == torch.int64


def test_grad_checkpointing_changes_nothing(tmp_path) -> None:
    plain = run(tiny(train__steps=2), tmp_path / "plain")
    ckpt = run(tiny(train__steps=2, backbone__grad_checkpointing=True), tmp_path / "ckpt")
    assert_same_tree(plain["model"].state_dict(), ckpt["model"].state_dict())


def test_corrupt_checkpoint_is_named(tmp_path) -> None:
    cfg = tiny(train__steps=4, train__ckpt_every=1)
    run(cfg, tmp_path, max_steps=2)
    newest = tmp_path / "ckpt-0000002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"ckpt-0000002\.pt.*ckpt-0000001\.pt"):
        run(cfg, tmp_path)
    newest.rename(tmp_path / "broken.pt")  # as the message suggests: resume from the previous one
    out = run(cfg, tmp_path, max_steps=2)
    assert out["resumed_from"].endswith("ckpt-0000001.pt") and out["step"] == 2
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2]  # the stale step-2 line was replaced


def test_config_mismatch_is_refused(tmp_path) -> None:
    cfg = tiny(train__steps=2)
    run(cfg, tmp_path, max_steps=1)
    changed = apply_overrides(cfg, [("train.blr", 0.5), ("masking.t_min", 0.3)])
    with pytest.raises(ValueError, match=r"masking\.t_min.*train\.blr"):
        run(changed, tmp_path)
    longer = run(apply_overrides(cfg, [("train.steps", 3)]), tmp_path)  # steps may grow
    assert longer["step"] == 3 and longer["resumed_from"].endswith("ckpt-0000001.pt")
    with pytest.raises(ValueError, match="past the requested train.steps"):
        run(cfg, tmp_path)


def test_batch_split_is_validated(tmp_path) -> None:
    with pytest.raises(ValueError, match="not divisible by world size 1 x grad_accum 3"):
        run(tiny(train__grad_accum=3), tmp_path)
    assert not tmp_path.joinpath("config.json").exists()


# ----------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    cfg = tiny(data__limit=32, train__steps=3, train__ckpt_every=2)
    # Each rank gets its own folder: rank 0 writes the run; rank 1's folder must stay absent.
    out = run(cfg, os.path.join(root, "run" if rank == 0 else f"rank{rank}-run"))
    torch.save({"model": out["model"].state_dict(), "ema": out["ema"], "loss": out["final_loss"]},
               os.path.join(root, f"state{rank}.pt"))


@pytest.mark.slow  # two spawned processes: ~10 s; the default run keeps it
def test_ddp_two_processes_keep_replicas_identical(tmp_path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (torch.load(tmp_path / f"state{r}.pt") for r in (0, 1))
    assert_same_tree(s0, s1)
    assert not (tmp_path / "rank1-run").exists()
    assert sorted(os.listdir(tmp_path / "run")) == [".lock", "checksums.json", "ckpt-0000002.pt", "ckpt-0000003.pt",
                                                    "config.json", "export", "metrics.jsonl"]
    ck = load_torch(tmp_path / "run" / "ckpt-0000003.pt")
    assert_same_tree(ck["model"], s0["model"])
    assert ck["rng"]["world_size"] == 2 and len(ck["rng"]["train"]) == 2
    assert not torch.equal(ck["rng"]["train"][0], ck["rng"]["train"][1])  # ranks draw different masks
    init = MaskedGenerator(get_preset("test-tiny")).state_dict()
    assert not torch.equal(init["z_proj.weight"], s0["model"]["z_proj.weight"])


def test_ranks_split_each_global_batch() -> None:
    data = [(torch.full((1,), float(i)), torch.tensor(i)) for i in range(20)]
    one = DataStream(data, Share(8), seed=3)
    ranks = [DataStream(data, Share(8, 2, r, 2), seed=3) for r in range(2)]
    for _ in range(5):  # crosses two epoch ends (20 // 8 = 2 steps per epoch)
        whole = one.next_step()[0][1]
        parts = [torch.cat([y for _, y in s.next_step()]) for s in ranks]
        assert sorted(torch.cat(parts).tolist()) == sorted(whole.tolist())
        assert torch.equal(parts[0], whole[0::2])
    assert one.position == ranks[0].position == {"epoch": 2, "index": 8}
    resumed = DataStream(data, Share(8), seed=3, epoch=2, index=8)
    workers = DataStream(data, Share(8), seed=3, epoch=2, index=8, num_workers=1)
    expected = one.next_step()[0][1]
    assert torch.equal(resumed.next_step()[0][1], expected)
    assert torch.equal(workers.next_step()[0][1], expected)  # loader workers see indices, no randomness


# ----------------------------------------------------------------------------- pieces


def test_cli_registers_train_and_export() -> None:
    commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    assert {"train", "export"} <= set(commands)


def test_dry_run_prints_the_resolved_config(capsys) -> None:
    code = cli.main(["train", "--preset", "test-tiny", "--dry-run", "--train.steps", "7", "--data.limit=5",
                     "--masking.label-drop", "0.2"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["train"]["steps"] == 7 and doc["data"]["limit"] == 5 and doc["masking"]["label_drop"] == 0.2
    assert doc["name"] == "test-tiny"
    assert cli.main(["train", "--preset", "test-tiny", "--dry-run", "--train.nope", "1"]) == 2
    assert "train.nope" in capsys.readouterr().err
    assert cli.main(["train", "--preset", "test-tiny", "--dry-run", "stray"]) == 2
    assert cli.main(["train", "--preset", "test-tiny", "--dry-run", "--train.batch_size", "7",
                        "--train.grad_accum", "2"]) == 2


@pytest.mark.parametrize("preset", ["test-tiny", "test-tiny-vq"])
def test_weight_decay_groups(preset: str) -> None:
    cfg = get_preset(preset)
    model = MaskedGenerator(cfg)
    decay, skip = param_groups(model, 0.02)
    assert decay["weight_decay"] == 0.02 and skip["weight_decay"] == 0.0
    assert len(decay["names"]) + len(skip["names"]) == len(list(model.parameters()))
    params = dict(model.named_parameters())
    for name in decay["names"]:
        assert params[name].ndim >= 2 and not name.endswith(".bias")
        assert not name.startswith(("diffloss.", "token_head."))
    assert "encoder_blocks.0.attn.qkv.weight" in decay["names"] and "class_emb.weight" in decay["names"]
    head = [n for n in params if n.startswith(("diffloss.", "token_head."))]
    assert head and set(head) <= set(skip["names"])
    assert {"encoder_norm.weight", "z_proj_ln.bias", "encoder_blocks.0.mlp.fc1.bias"} <= set(skip["names"])


def test_lr_schedule() -> None:
    t = get_preset("test-tiny").train  # blr 1e-3, batch 8, warm-up 2, 20 steps
    peak = 1e-3 * 8 / 256
    s = training_schedule(t)
    assert lr_at(0, s) == pytest.approx(peak / 2) and lr_at(1, s) == pytest.approx(peak)
    assert lr_at(19, s) == pytest.approx(peak)
    cos = training_schedule(apply_overrides(t, [("lr_schedule", "cosine"), ("min_lr", 1e-6)]))
    assert lr_at(2, cos) == pytest.approx(peak) and lr_at(11, cos) == pytest.approx((peak + 1e-6) / 2)
    assert lr_at(20, cos) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        training_schedule(dataclasses.replace(t, lr_schedule="linear"))


def test_export_from_a_checkpoint_before_the_end(tmp_path):
    from emigm.cli.main import main
    from emigm.io.exports import load_export

    cfg = tiny(train__steps=6, train__ckpt_every=2)
    train(cfg, tmp_path / "run", max_steps=2, progress=False)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 0
    model, got, meta = load_export(tmp_path / "exp")
    assert got == cfg and meta["steps"] == 2 and meta["planned_steps"] == 6
    assert main(["export", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x")]) == 2
